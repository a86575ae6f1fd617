"""dicomd.testing: the in-memory node and client, and the value helpers for plugin tests."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import CTImageStorage, generate_uid
from twisted.internet import defer, task
from zope.interface import implementer

from dicomd import uids
from dicomd.client import AssociationRejected, ClientSettings, storage_contexts
from dicomd.interfaces import (
    ACCEPT,
    AssociationRequest,
    FindQuery,
    IAssociationValidator,
    IFindHandler,
    IStoreHandler,
    ReceivedInstance,
    Rejection,
)
from dicomd.part10 import read_header
from dicomd.testing import (
    TEST_AE_TITLE,
    TEST_HOST,
    MemoryNode,
    NotFiredError,
    find_query,
    received_instance,
    result_of,
)
from dicomd.ul.fsm import State

ROOT = Path(__file__).resolve().parent.parent
CT = get_testdata_file("CT_small.dcm")


@implementer(IStoreHandler)
class Recorder:
    """Remembers each instance and the data set in its file, while the file is there."""

    def __init__(self) -> None:
        self.instances: list[ReceivedInstance] = []
        self.datasets: list[Dataset] = []

    def store(self, instance: ReceivedInstance) -> int:
        self.instances.append(instance)
        self.datasets.append(dcmread(instance.path))
        return 0x0000


@implementer(IFindHandler)
class Answers:
    """Answers every query with the same matches, and remembers the queries."""

    find_models = (uids.STUDY_ROOT_FIND, uids.MODALITY_WORKLIST_FIND)

    def __init__(self, *matches: Dataset) -> None:
        self.matches = matches
        self.queries: list[FindQuery] = []

    def find(self, query: FindQuery) -> list[Dataset]:
        self.queries.append(query)
        return list(self.matches)


def ct_image(**attributes: object) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.PatientName = "Doe^Jane"
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


# -- the node and its clients -------------------------------------------------


def test_echo_then_release() -> None:
    node = MemoryNode(ae_title="ARCHIVE")
    association = node.associate()
    (connection,) = node.connections
    assert connection.association is association
    assert connection.acceptor.calling_ae_title == TEST_AE_TITLE
    assert connection.acceptor.called_ae_title == "ARCHIVE"
    assert connection.acceptor.peer_host == TEST_HOST
    assert node.result(association.echo()) == 0x0000
    assert node.result(association.release()) is None
    assert connection.server.machine.state is State.STA1


def test_connect_waits_for_a_flush() -> None:
    node = MemoryNode()
    connection = node.connect()
    with pytest.raises(NotFiredError):
        result_of(connection.association.established)
    assert node.result(connection.association.established) is connection.association


def test_store_reaches_the_handler(tmp_path: Path) -> None:
    recorder = Recorder()
    node = MemoryNode([recorder], storage_path=tmp_path)
    association = node.associate([CTImageStorage], calling_ae_title="MODALITY")
    ds = ct_image(PatientID="42")
    stored = node.result(association.store(ds))
    assert (stored.status, stored.sop_instance_uid) == (0x0000, ds.SOPInstanceUID)
    ((instance,), (received,)) = recorder.instances, recorder.datasets
    assert (instance.calling_ae_title, instance.called_ae_title) == ("MODALITY", "DICOMD")
    assert (instance.sop_class_uid, instance.sop_instance_uid) == (
        CTImageStorage,
        ds.SOPInstanceUID,
    )
    assert instance.transfer_syntax == uids.EXPLICIT_VR_LITTLE_ENDIAN
    assert instance.path.parent == tmp_path / ".incoming"
    assert not instance.path.exists()  # no handler kept it
    assert received == ds
    assert received.file_meta.SourceApplicationEntityTitle == "MODALITY"


def test_store_of_a_file_as_it_is(tmp_path: Path) -> None:
    recorder = Recorder()
    node = MemoryNode([recorder], storage_path=tmp_path)
    header = read_header(CT)
    association = node.associate(storage_contexts([(header.sop_class_uid, header.transfer_syntax)]))
    assert node.result(association.store(CT)).status == 0x0000
    ((instance,),) = (recorder.instances,)
    assert instance.transfer_syntax == header.transfer_syntax
    assert instance.size == header.data_set_length
    assert recorder.datasets[0] == dcmread(CT)


def test_a_handler_waiting_on_the_clock(tmp_path: Path) -> None:
    @implementer(IStoreHandler)
    class Slow:
        def store(self, instance: ReceivedInstance) -> defer.Deferred[int]:
            return task.deferLater(node.clock, 0.5, lambda: 0xB000)  # a warning, later

    node = MemoryNode([Slow()], storage_path=tmp_path)
    association = node.associate([CTImageStorage])
    stored = association.store(ct_image())
    with pytest.raises(NotFiredError):
        node.result(stored)
    node.advance(0.5)
    assert result_of(stored).status == 0xB000


def test_find_through_a_handler() -> None:
    match = Dataset()
    match.PatientID, match.PatientName, match.StudyDate = "7", "Roe^Richard", "20240102"
    answers = Answers(match)
    node = MemoryNode([answers])
    association = node.associate([uids.STUDY_ROOT_FIND])
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.PatientID = ""
    identifier.StudyDate = "20240101-"
    found = node.result(association.find(uids.STUDY_ROOT_FIND, identifier))
    assert found.status == 0x0000
    ((answer,),) = (found.matches,)
    assert (answer.PatientID, answer.StudyDate, answer.QueryRetrieveLevel) == (
        "7",
        "20240102",
        "STUDY",
    )
    assert "PatientName" not in answer  # not asked for
    ((query,),) = (answers.queries,)
    assert (query.model, query.level) == (uids.STUDY_ROOT_FIND, "STUDY")
    assert (query.calling_ae_title, query.called_ae_title, query.peer_host) == (
        TEST_AE_TITLE,
        "DICOMD",
        TEST_HOST,
    )
    assert query.identifier.StudyDate == "20240101-"


def test_a_wrong_called_ae_title_is_rejected() -> None:
    node = MemoryNode()
    with pytest.raises(AssociationRejected) as rejected:
        node.associate(called_ae_title="ELSEWHERE")
    assert (rejected.value.result, rejected.value.source, rejected.value.reason) == (1, 1, 7)


def test_a_validator_plugin_decides() -> None:
    @implementer(IAssociationValidator)
    class OnlyFrom:
        def validate(self, request: AssociationRequest) -> object:
            if request.peer_host == "10.0.0.1":
                return ACCEPT
            return Rejection(2, 1, 1, "not from there")

    node = MemoryNode([OnlyFrom()])
    with pytest.raises(AssociationRejected) as rejected:
        node.associate()
    assert (rejected.value.result, rejected.value.reason) == (2, 1)
    assert node.result(node.associate(host="10.0.0.1").echo()) == 0x0000


def test_settings_win_over_ae_titles() -> None:
    node = MemoryNode()
    association = node.associate(settings=ClientSettings("DICOMD", "OTHER", max_pdu_length=4096))
    assert node.connections[0].acceptor.calling_ae_title == "OTHER"
    assert association.settings.max_pdu_length == 4096


def test_a_store_handler_needs_a_folder() -> None:
    with pytest.raises(TypeError, match="storage_path"):
        MemoryNode([Recorder()])


def test_contexts_are_syntaxes_or_presentation_contexts() -> None:
    node = MemoryNode()
    mixed = [
        uids.VERIFICATION,
        *storage_contexts([(CTImageStorage, uids.IMPLICIT_VR_LITTLE_ENDIAN)]),
    ]
    with pytest.raises(TypeError, match="not both"):
        node.connect(mixed)


# -- result_of ----------------------------------------------------------------


def test_result_of_a_fired_deferred() -> None:
    d = defer.succeed("value")
    assert result_of(d) == "value"
    assert result_of(d) == "value"  # the Deferred keeps its result


def test_result_of_a_failed_deferred_raises_its_error() -> None:
    with pytest.raises(ValueError, match="broken"):
        result_of(defer.fail(ValueError("broken")))


def test_result_of_a_waiting_deferred() -> None:
    d: defer.Deferred[int] = defer.Deferred()
    with pytest.raises(NotFiredError, match="has not fired"):
        result_of(d)
    d.errback(ValueError("later"))  # asking too early changes nothing
    with pytest.raises(ValueError, match="later"):
        result_of(d)


# -- received_instance --------------------------------------------------------


def test_received_instance_is_a_part10_file_of_the_data_set(tmp_path: Path) -> None:
    ds = ct_image(PatientID="42")
    instance = received_instance(ds, tmp_path / "in", calling_ae_title="MODALITY")
    assert instance.path.parent == tmp_path / "in"
    assert (instance.sop_class_uid, instance.sop_instance_uid) == (
        CTImageStorage,
        ds.SOPInstanceUID,
    )
    assert instance.transfer_syntax == uids.EXPLICIT_VR_LITTLE_ENDIAN
    assert (instance.calling_ae_title, instance.called_ae_title) == ("MODALITY", "DICOMD")
    assert (instance.peer_host, instance.peer_port) == (TEST_HOST, 50000)
    read = dcmread(instance.path)
    assert read == ds
    meta = read.file_meta
    assert meta.MediaStorageSOPClassUID == CTImageStorage
    assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert meta.TransferSyntaxUID == uids.EXPLICIT_VR_LITTLE_ENDIAN
    assert meta.SourceApplicationEntityTitle == "MODALITY"
    header = read_header(instance.path)
    assert header.data_set_length == instance.size


def test_received_instance_in_another_syntax(tmp_path: Path) -> None:
    ds = ct_image()
    instance = received_instance(ds, tmp_path, transfer_syntax=uids.IMPLICIT_VR_LITTLE_ENDIAN)
    read = dcmread(instance.path)
    assert read.file_meta.TransferSyntaxUID == uids.IMPLICIT_VR_LITTLE_ENDIAN
    assert read == ds


def test_received_instance_keeps_the_syntax_of_a_file(tmp_path: Path) -> None:
    ds = dcmread(CT)
    instance = received_instance(ds, tmp_path)
    assert instance.transfer_syntax == ds.file_meta.TransferSyntaxUID
    assert dcmread(instance.path) == ds


def test_received_instance_needs_the_uids(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="SOPInstanceUID"):
        received_instance(Dataset(), tmp_path)


# -- find_query ---------------------------------------------------------------


def test_find_query_from_keywords() -> None:
    query = find_query({"PatientID": "", "StudyDate": "20240101-"}, level="study")
    assert (query.model, query.level) == (uids.STUDY_ROOT_FIND, "STUDY")
    assert query.identifier.QueryRetrieveLevel == "STUDY"
    assert (query.identifier.PatientID, query.identifier.StudyDate) == ("", "20240101-")
    assert (query.calling_ae_title, query.called_ae_title, query.peer_host) == (
        TEST_AE_TITLE,
        "DICOMD",
        TEST_HOST,
    )


def test_find_query_reads_the_level_and_copies_the_identifier() -> None:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "SERIES "
    identifier.Modality = "CT"
    query = find_query(identifier, model=uids.PATIENT_ROOT_FIND, calling_ae_title="VIEWER")
    assert (query.model, query.level, query.calling_ae_title) == (
        uids.PATIENT_ROOT_FIND,
        "SERIES",
        "VIEWER",
    )
    query.identifier.Modality = "MR"
    assert identifier.Modality == "CT"


def test_find_query_is_hierarchical_unless_told_relational() -> None:
    identifier = {"QueryRetrieveLevel": "IMAGE", "StudyInstanceUID": "1.2.3"}
    assert find_query(identifier).relational is False
    assert find_query(identifier, relational=True).relational is True


def test_a_worklist_query_has_no_level() -> None:
    query = find_query({"PatientID": "1"}, model=uids.MODALITY_WORKLIST_FIND)
    assert query.level == ""
    assert "QueryRetrieveLevel" not in query.identifier


def test_find_query_refuses_two_levels() -> None:
    with pytest.raises(ValueError, match="SERIES"):
        find_query({"QueryRetrieveLevel": "SERIES"}, level="STUDY")


# -- the README's example -----------------------------------------------------


def test_the_readme_example_is_the_test_module() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Testing your plugin\n", 1)[1]
    block = re.search(r"^```python\n(.*?)^```$", section, re.DOTALL | re.MULTILINE)
    assert block is not None, "README.md: no python block under 'Testing your plugin'"
    example = (ROOT / "tests" / "test_plugin_example.py").read_text(encoding="utf-8")
    assert block.group(1) == example

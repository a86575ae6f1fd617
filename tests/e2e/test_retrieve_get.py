"""C-GET against the real daemon: the instances come back on the requester's own association.

The archive is built as for the C-MOVE tests (``test_retrieve_move``), in a
daemon of this module's own.  The requester proposes the SCP role for storage
SOP classes (SCP/SCU Role Selection, PS3.7 D.3.3.4) and the daemon sends the
C-STORE sub-operations on the contexts it accepted for them.

dcmtk's ``getscu`` proposes some 120 storage SOP classes, each with the
uncompressed syntaxes only; ``+B`` writes each data set exactly as it came
off the wire.  pynetdicom proposes either its ``StoragePresentationContexts``
or one context per SOP class and syntax, with roles built by ``build_role``,
and keeps the raw data set bytes of every C-STORE it is sent; it also reads
the identifier of the final response (the Failed SOP Instance UID List),
which ``getscu`` 3.6.7 does not: after a final response carrying one,
getscu reports "Association Release Failed" and aborts, so its exit status
is only asserted where the final status is Success.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import CTImageStorage, RTDoseStorage
from pynetdicom import StoragePresentationContexts, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelGet,
)

from tests.support.daemons import RunningDaemon
from tests.support.datasets import dataset_bytes
from tests.support.dcmtk import run_dcmtk
from tests.support.processes import LOCALHOST

from .test_retrieve_move import (
    BULK_SIZE,
    CANCELLED,
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
    LEVEL_ERRORS,
    PENDING,
    SUCCESS,
    WARNING,
    Archive,
    ArchiveContent,
    Instance,
    Received,
    RetrieveResponse,
    assert_delivered_as_sent,
    assert_every_sub_operation_failed,
    assert_progress,
    assert_serves,
    assert_success,
    associated,
    collect,
    dcmtk_responses,
    identifier,
    image_identifier,
    keys,
    pynetdicom_response,
    retrieve_ae,
    start_archive,
    study_identifier,
    uids_of,
)

pytestmark = pytest.mark.usefixtures("report_module_daemons")

PATIENT_ROOT = PatientRootQueryRetrieveInformationModelGet
STUDY_ROOT = StudyRootQueryRetrieveInformationModelGet
GET_MODELS = {"-P": PATIENT_ROOT, "-S": STUDY_ROOT}


@pytest.fixture(scope="module")
def archive(
    tmp_path_factory: pytest.TempPathFactory, module_daemons: list[RunningDaemon]
) -> Archive:
    # as stored: each instance goes back as the archive keeps it, or fails
    # (decompressing for the requester is test_retrieve_transcode's)
    overrides = {"retrieve": {"transcode": "as-stored"}}
    return start_archive(tmp_path_factory.mktemp("get"), module_daemons, overrides)


# --------------------------------------------------------------------------------------------
# The requesters


def getscu(
    archive: Archive, model: str, query: Sequence[str], folder: Path
) -> tuple[subprocess.CompletedProcess[str], list[RetrieveResponse], dict[str, Path]]:
    """Run getscu into ``folder``: its output, the responses, and SOP Instance UID -> file."""
    folder.mkdir()
    daemon = archive.daemon
    got = run_dcmtk(
        "getscu", "-d", model, "+B", "-od", str(folder), "-aec", daemon.ae_title,
        *(arg for key in query for arg in ("-k", key)),
        LOCALHOST, str(daemon.port),
        timeout=60,
    )  # fmt: skip
    received = {
        str(dcmread(path, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID): path
        for path in folder.iterdir()
    }
    return got, dcmtk_responses(got.stdout + got.stderr, "C-GET RSP"), received


StorageContexts = Sequence[tuple[str, Sequence[str]]]
"""The storage contexts a requester proposes: (SOP class, transfer syntaxes)."""


def storage_contexts_of(instances: Iterable[Instance]) -> StorageContexts:
    """One context for each SOP class and syntax among ``instances``, proposing only that."""
    pairs = dict.fromkeys((i.sop_class_uid, i.transfer_syntax) for i in instances)
    return [(sop_class, [syntax]) for sop_class, syntax in pairs]


def pynetdicom_storage_contexts() -> StorageContexts:
    return [(cx.abstract_syntax, cx.transfer_syntax) for cx in StoragePresentationContexts]


@contextmanager
def requester(
    archive: Archive,
    storage: StorageContexts,
    scp_roles: Iterable[str],
    store_delay: float = 0.0,
) -> Iterator[tuple[Association, dict[str, Received]]]:
    """A pynetdicom association proposing both C-GET models, Verification and ``storage``,
    taking the SCP role for ``scp_roles``; the dict fills with what the daemon stores to it."""
    ae = retrieve_ae("GETTER", (PATIENT_ROOT, STUDY_ROOT))
    for abstract_syntax, syntaxes in storage:
        ae.add_requested_context(abstract_syntax, list(syntaxes))
    roles = [build_role(sop_class, scp_role=True) for sop_class in dict.fromkeys(scp_roles)]
    received: dict[str, Received] = {}

    def store(event: Any) -> int:
        request = event.request
        received[str(request.AffectedSOPInstanceUID)] = Received(
            str(request.AffectedSOPInstanceUID),
            str(event.context.transfer_syntax),
            request.DataSet.getvalue(),
            request.MoveOriginatorApplicationEntityTitle,
            request.MoveOriginatorMessageID,
        )
        time.sleep(store_delay)
        return SUCCESS

    handlers = [(evt.EVT_C_STORE, store)]
    with associated(archive, ae, ext_neg=roles, evt_handlers=handlers) as assoc:
        yield assoc, received


def assert_received_as_sent(received: dict[str, Received], expected: Sequence[Instance]) -> None:
    """Exactly ``expected`` came back, each in its own syntax with the bytes first sent, and
    none named a Move Originator (that is for C-MOVE's sub-operations only)."""
    assert set(received) == uids_of(expected)
    for instance in expected:
        arrived = received[instance.sop_instance_uid]
        assert arrived.transfer_syntax == instance.transfer_syntax, instance.path.name
        assert arrived.data_set == dataset_bytes(instance.path), instance.path.name
        assert arrived.move_originator_ae_title is None
        assert arrived.move_originator_message_id is None


# --------------------------------------------------------------------------------------------
# getscu


Selection = Callable[[ArchiveContent], tuple[str, list[str], list[Instance]]]
GETS: dict[str, Selection] = {
    "study": lambda c: ("-S", keys("STUDY", StudyInstanceUID=c.second[0].study_uid), c.second),
    "series": lambda c: (
        "-S",
        keys(
            "SERIES",
            StudyInstanceUID=c.ct_series[0].study_uid,
            SeriesInstanceUID=c.ct_series[0].series_uid,
        ),
        c.ct_series,
    ),
    "image": lambda c: (
        "-P",
        keys(
            "IMAGE",
            PatientID=c.ct_series[1].patient_id,
            StudyInstanceUID=c.ct_series[1].study_uid,
            SeriesInstanceUID=c.ct_series[1].series_uid,
            SOPInstanceUID=c.ct_series[1].sop_instance_uid,
        ),
        [c.ct_series[1]],
    ),
    "patient": lambda c: ("-P", keys("PATIENT", PatientID=c.bulk[0].patient_id), c.bulk),
}


@pytest.mark.parametrize("selection", GETS.values(), ids=GETS.keys())
def test_getscu_gets_every_instance_as_archived(archive, tmp_path, selection):
    model, query, expected = selection(archive.content)
    got, responses, received = getscu(archive, model, query, tmp_path / "got")
    assert got.returncode == 0, got.stdout[-3000:]
    assert_success(responses, len(expected))
    assert_delivered_as_sent(archive, received, expected)


def test_getscu_counts_instances_it_offered_no_syntax_for_as_failed(archive, tmp_path):
    """getscu offers no compressed syntax: the compressed instances of the mixed study cannot
    go back as they are, and on a node configured ``retrieve.transcode: as-stored`` each
    counts as a failed sub-operation."""
    mixed = archive.content.mixed
    uncompressed = [instance for instance in mixed if instance.uncompressed]
    failed = len(mixed) - len(uncompressed)
    _, responses, received = getscu(
        archive, "-S", keys("STUDY", StudyInstanceUID=mixed[0].study_uid), tmp_path / "got"
    )
    assert_progress(responses, len(mixed))
    assert responses[-1] == RetrieveResponse(WARNING, None, len(uncompressed), failed, 0)
    assert_delivered_as_sent(archive, received, uncompressed)


# --------------------------------------------------------------------------------------------
# pynetdicom


def test_pynetdicom_get_with_its_storage_contexts_counts_down_to_success(archive):
    expected = archive.content.bulk
    query = identifier(
        "STUDY", PatientID=expected[0].patient_id, StudyInstanceUID=expected[0].study_uid
    )
    classes = [cx.abstract_syntax for cx in StoragePresentationContexts]
    with requester(archive, pynetdicom_storage_contexts(), classes) as (assoc, received):
        result = collect(assoc.send_c_get(query, PATIENT_ROOT))
    assert_success(result.responses, len(expected))
    assert_received_as_sent(received, expected)


def test_pynetdicom_get_with_a_context_per_syntax_gets_compressed_instances_as_archived(archive):
    expected = archive.content.mixed
    classes = [instance.sop_class_uid for instance in expected]
    with requester(archive, storage_contexts_of(expected), classes) as (assoc, received):
        result = collect(assoc.send_c_get(study_identifier(expected), STUDY_ROOT))
    assert_success(result.responses, len(expected))
    assert_received_as_sent(received, expected)


def test_an_instance_of_a_sop_class_the_requester_did_not_propose_fails_with_b000(archive):
    mixed = archive.content.mixed
    [omitted] = [instance for instance in mixed if instance.sop_class_uid == RTDoseStorage]
    proposed = [instance for instance in mixed if instance is not omitted]
    classes = [instance.sop_class_uid for instance in proposed]
    with requester(archive, storage_contexts_of(proposed), classes) as (assoc, received):
        result = collect(assoc.send_c_get(study_identifier(mixed), STUDY_ROOT))
        assert_serves(assoc)
    assert_progress(result.responses, len(mixed))
    assert result.final == RetrieveResponse(WARNING, None, len(proposed), 1, 0)
    assert result.failed_uids == [omitted.sop_instance_uid]
    assert_received_as_sent(received, proposed)


def test_a_requester_that_takes_no_scp_role_is_sent_nothing(archive):
    """It proposed the storage contexts but not the SCP role: no C-STORE may go to it."""
    expected = archive.content.second
    with requester(archive, storage_contexts_of(expected), []) as (assoc, received):
        result = collect(assoc.send_c_get(study_identifier(expected), STUDY_ROOT))
        assert_serves(assoc)
    assert received == {}
    assert result.responses[:-1] == [
        RetrieveResponse(PENDING, remaining, 0, len(expected) - remaining, 0)
        for remaining in range(len(expected) - 1, 0, -1)
    ]
    assert sorted(result.failed_uids) == sorted(uids_of(expected))
    assert_every_sub_operation_failed(result.final, len(expected))


def test_a_cancelled_get_leaves_its_association_serving(archive):
    bulk = archive.content.bulk
    responses = []
    storage, classes = storage_contexts_of(bulk), [CTImageStorage]
    with requester(archive, storage, classes, store_delay=0.05) as (assoc, received):
        for status, _ in assoc.send_c_get(study_identifier(bulk), STUDY_ROOT, msg_id=3):
            responses.append(pynetdicom_response(status))
            if len(responses) == 1:
                assoc.send_c_cancel(3, query_model=STUDY_ROOT)
        assert_serves(assoc)
        cancelled_with = set(received)
        again = collect(assoc.send_c_get(image_identifier(bulk[-1]), STUDY_ROOT, msg_id=4))
    *pending, final = responses
    assert [response.status for response in pending] == [PENDING] * len(pending)
    assert final.status == CANCELLED
    assert (final.failed, final.warning) == (0, 0)
    assert 1 <= final.completed < BULK_SIZE
    assert final.completed + final.remaining == BULK_SIZE
    assert len(cancelled_with) == final.completed
    assert_success(again.responses, 1)
    assert bulk[-1].sop_instance_uid in received


@pytest.mark.parametrize("level_error", LEVEL_ERRORS.values(), ids=LEVEL_ERRORS.keys())
def test_an_identifier_that_does_not_fit_the_model_is_refused_with_a900(archive, level_error):
    root, query = level_error(archive.content)
    classes = [instance.sop_class_uid for instance in archive.content.everything]
    storage = storage_contexts_of(archive.content.everything)
    with requester(archive, storage, classes) as (assoc, received):
        result = collect(assoc.send_c_get(query, GET_MODELS[root]))
        assert_serves(assoc)
    assert [response.status for response in result.responses] == [
        IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS
    ]
    assert received == {}

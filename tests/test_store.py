"""The storage service in memory: streaming to disk, the handler chain, statuses."""

from __future__ import annotations

import dataclasses
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from twisted.internet import defer
from twisted.logger import capturedLogs, formatEvent
from zope.interface import implementer

from dicomd import uids
from dicomd.config import Store, default_config
from dicomd.dimse.command import Command, CommandField
from dicomd.dimse.datasets import encode_dataset
from dicomd.interfaces import IStoreHandler, Kept, ReceivedInstance
from dicomd.part10 import INCOMING_FOLDER, PREAMBLE, file_meta
from dicomd.ul.pdu import AAbort, PresentationContextRQ, encode_pdata
from tests.wire import EXPLICIT, IMPLICIT, Peer, request

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
PRIVATE_SOP_CLASS = "1.2.3.4.5.6.7.8.9"


@implementer(IStoreHandler)
class Recorder:
    """A store handler that writes down what it saw and answers what it is told to."""

    def __init__(self, answer: object = 0x0000, keep_to: Path | None = None) -> None:
        self.answer = answer
        self.keep_to = keep_to
        self.seen: list[tuple[ReceivedInstance, bytes]] = []

    def store(self, instance: ReceivedInstance) -> object:
        self.seen.append((instance, instance.path.read_bytes()))
        if isinstance(self.answer, Exception):
            raise self.answer
        if self.keep_to is not None:
            target = self.keep_to / f"{instance.sop_instance_uid}.dcm"
            instance.path.rename(target)
            return Kept(self.answer, target)
        return self.answer


def node(tmp_path: Path, *handlers: object, unknown: bool = False) -> Peer:
    config = dataclasses.replace(
        default_config(),
        storage_path=tmp_path,
        store=Store(accept_unknown_sop_classes=unknown),
    )
    return Peer(config, plugins=handlers)


def ct_contexts(*syntaxes: str) -> tuple[PresentationContextRQ, ...]:
    return (
        PresentationContextRQ(1, uids.VERIFICATION, (IMPLICIT,)),
        PresentationContextRQ(3, CT_STORAGE, syntaxes or (EXPLICIT, IMPLICIT)),
    )


def store_command(instance_uid: str = "1.2.3.4", message_id: int = 1) -> Command:
    return Command(
        command_field=CommandField.C_STORE_RQ,
        message_id=message_id,
        affected_sop_class_uid=CT_STORAGE,
        affected_sop_instance_uid=instance_uid,
        priority=0,
        command_data_set_type=0x0001,
    )


def data_set_bytes() -> bytes:
    """The data set of a real CT file, encoded explicit VR little endian."""
    return encode_dataset(dcmread(get_testdata_file("CT_small.dcm")), EXPLICIT)


def send_in_odd_pieces(peer: Peer, context_id: int, command: Command, data: bytes) -> None:
    """The command, then the data set in fragments of 1, 3, 7, 997... bytes: any split is legal."""
    peer.send(encode_pdata(context_id, 0x03, command.encode()))
    sizes = [1, 3, 7, 997, 4093]
    offset, index = 0, 0
    while offset < len(data):
        size = sizes[index % len(sizes)]
        piece = data[offset : offset + size]
        offset += size
        index += 1
        peer.send(encode_pdata(context_id, 0x02 if offset >= len(data) else 0x00, piece))


def test_a_data_set_split_anywhere_lands_as_a_part10_file_with_its_bytes_unchanged(
    tmp_path: Path,
) -> None:
    handler = Recorder()
    peer = node(tmp_path, handler)
    ac = peer.associate(request(contexts=ct_contexts()))
    assert [c.result for c in ac.presentation_contexts] == [0, 0]
    data = data_set_bytes()
    send_in_odd_pieces(peer, 3, store_command("1.2.3.4", 9), data)

    (response,) = peer.responses()
    assert response.command_field == CommandField.C_STORE_RSP
    assert response.status == 0x0000
    assert response.message_id_being_responded_to == 9
    assert response.affected_sop_instance_uid == "1.2.3.4"
    assert response.affected_sop_class_uid == CT_STORAGE

    ((instance, content),) = handler.seen
    assert content.startswith(PREAMBLE)
    assert content.endswith(data)
    assert instance.size == len(data)
    assert (instance.calling_ae_title, instance.called_ae_title) == ("ECHOSCU", "DICOMD")
    assert instance.transfer_syntax == EXPLICIT
    meta = dcmread(BytesIO(content)).file_meta
    assert meta.MediaStorageSOPClassUID == CT_STORAGE
    assert meta.MediaStorageSOPInstanceUID == "1.2.3.4"
    assert meta.TransferSyntaxUID == EXPLICIT
    assert meta.ImplementationClassUID == uids.IMPLEMENTATION_CLASS_UID
    assert meta.SourceApplicationEntityTitle == "ECHOSCU"
    # Nobody kept it, so nothing is left behind.
    assert list((tmp_path / INCOMING_FOLDER).iterdir()) == []


def test_a_kept_file_stays_where_the_handler_put_it(tmp_path: Path) -> None:
    kept = tmp_path / "kept"
    kept.mkdir()
    peer = node(tmp_path, Recorder(keep_to=kept))
    peer.associate(request(contexts=ct_contexts()))
    peer.send_command(3, store_command("5.6.7"), data_set_bytes())
    assert peer.responses()[0].status == 0x0000
    assert (kept / "5.6.7.dcm").read_bytes().endswith(data_set_bytes())


def test_the_chain_goes_on_after_a_warning_and_stops_at_a_failure(tmp_path: Path) -> None:
    warning = Dataset()
    warning.Status = 0xB000
    warning.ErrorComment = "coerced"
    first, second, third = Recorder(warning), Recorder(0xA900), Recorder()
    peer = node(tmp_path, first, second, third)
    peer.associate(request(contexts=ct_contexts()))
    peer.send_command(3, store_command(), data_set_bytes())
    (response,) = peer.responses()
    assert response.status == 0xA900
    assert (len(first.seen), len(second.seen), len(third.seen)) == (1, 1, 0)


def test_a_warning_reaches_the_peer_with_its_comment(tmp_path: Path) -> None:
    warning = Dataset()
    warning.Status = 0xB000
    warning.ErrorComment = "duplicate SOP Instance UID; first copy kept"
    peer = node(tmp_path, Recorder(warning), Recorder())
    peer.associate(request(contexts=ct_contexts()))
    peer.send_command(3, store_command(), data_set_bytes())
    (response,) = peer.responses()
    assert (response.status, response.error_comment) == (
        0xB000,
        "duplicate SOP Instance UID; first copy kept",
    )


@pytest.mark.parametrize(
    ("error", "status"),
    [(OSError(28, "No space left on device"), 0xA700), (ValueError("bad value"), 0xC000)],
)
def test_handler_exceptions_map_to_statuses_and_the_association_stays_up(
    tmp_path: Path, error: Exception, status: int
) -> None:
    peer = node(tmp_path, Recorder(error))
    peer.associate(request(contexts=ct_contexts()))
    peer.send_command(3, store_command(), data_set_bytes())
    (response,) = peer.responses()
    assert response.status == status
    assert response.error_comment
    peer.send_command(
        1,
        Command(
            command_field=CommandField.C_ECHO_RQ,
            message_id=2,
            affected_sop_class_uid=uids.VERIFICATION,
        ),
    )
    assert peer.responses()[0].status == 0x0000


def test_a_handler_may_answer_later(tmp_path: Path) -> None:
    later: defer.Deferred[int] = defer.Deferred()
    peer = node(tmp_path, Recorder(later))
    peer.associate(request(contexts=ct_contexts()))
    peer.send_command(3, store_command(), data_set_bytes())
    assert peer.responses() == []
    later.callback(0x0000)
    assert peer.responses()[0].status == 0x0000


def test_an_abort_mid_instance_leaves_nothing(tmp_path: Path) -> None:
    handler = Recorder()
    peer = node(tmp_path, handler)
    peer.associate(request(contexts=ct_contexts()))
    data = data_set_bytes()
    peer.send(encode_pdata(3, 0x03, store_command().encode()))
    peer.send(encode_pdata(3, 0x00, data[:1000]))
    assert len(list((tmp_path / INCOMING_FOLDER).iterdir())) == 1
    peer.send(AAbort(0, 0).encode())
    assert list((tmp_path / INCOMING_FOLDER).iterdir()) == []
    assert handler.seen == []


def test_a_lost_connection_mid_instance_leaves_nothing(tmp_path: Path) -> None:
    peer = node(tmp_path, Recorder())
    peer.associate(request(contexts=ct_contexts()))
    peer.send(encode_pdata(3, 0x03, store_command().encode()))
    peer.send(encode_pdata(3, 0x00, data_set_bytes()[:1000]))
    peer.protocol.connectionLost()
    assert list((tmp_path / INCOMING_FOLDER).iterdir()) == []


def test_an_unwritable_storage_folder_answers_out_of_resources(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"")
    handler = Recorder()
    peer = node(blocker, handler)
    peer.associate(request(contexts=ct_contexts()))
    peer.send_command(3, store_command(), data_set_bytes())
    (response,) = peer.responses()
    assert response.status == 0xA700
    assert handler.seen == []


def test_a_store_without_instance_uid_cannot_be_understood(tmp_path: Path) -> None:
    handler = Recorder()
    peer = node(tmp_path, handler)
    peer.associate(request(contexts=ct_contexts()))
    peer.send_command(
        3, dataclasses.replace(store_command(), affected_sop_instance_uid=None), data_set_bytes()
    )
    (response,) = peer.responses()
    assert response.status == 0xC000
    assert handler.seen == []


@pytest.mark.parametrize(
    ("instance_uid", "status"),
    [("1." + "2" * 63, 0x0117), ("1.2.3.4x", 0x0117), ("1.2.03.4", 0x0000)],
)
def test_a_sop_instance_uid_that_breaks_the_uid_rules_is_an_invalid_object_instance(
    tmp_path: Path, instance_uid: str, status: int
) -> None:
    handler = Recorder()
    peer = node(tmp_path, handler)
    peer.associate(request(contexts=ct_contexts()))
    peer.send_command(3, store_command(instance_uid), data_set_bytes())
    (response,) = peer.responses()
    assert response.status == status
    assert len(handler.seen) == (status == 0x0000)
    assert list((tmp_path / INCOMING_FOLDER).glob("*")) == []


def test_compressed_syntaxes_are_accepted_for_storage_only(tmp_path: Path) -> None:
    peer = node(tmp_path, Recorder())
    ac = peer.associate(
        request(
            contexts=(
                PresentationContextRQ(1, uids.VERIFICATION, (JPEG_BASELINE,)),
                PresentationContextRQ(3, CT_STORAGE, (JPEG_BASELINE,)),
                PresentationContextRQ(5, CT_STORAGE, (JPEG_BASELINE, IMPLICIT)),
            )
        )
    )
    answers = [(c.result, c.transfer_syntax) for c in ac.presentation_contexts]
    assert answers == [(4, JPEG_BASELINE), (0, JPEG_BASELINE), (0, IMPLICIT)]


def test_storage_is_served_only_with_a_store_handler() -> None:
    peer = Peer()
    ac = peer.associate(request(contexts=ct_contexts()))
    assert [c.result for c in ac.presentation_contexts] == [0, 3]


@pytest.mark.parametrize(("unknown", "result"), [(True, 0), (False, 3)])
def test_unknown_sop_classes_are_stored_when_configured(
    tmp_path: Path, unknown: bool, result: int
) -> None:
    peer = node(tmp_path, Recorder(), unknown=unknown)
    ac = peer.associate(
        request(contexts=(PresentationContextRQ(1, PRIVATE_SOP_CLASS, (IMPLICIT,)),))
    )
    assert ac.presentation_contexts[0].result == result


@pytest.mark.parametrize(
    ("instance_uid", "source_ae"), [("1.2.3.4", "ECHOSCU"), ("1.2.3.45", ""), ("1.2", "A")]
)
def test_file_meta_is_what_pydicom_writes(instance_uid: str, source_ae: str) -> None:
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = CT_STORAGE
    meta.MediaStorageSOPInstanceUID = instance_uid
    meta.TransferSyntaxUID = JPEG_BASELINE
    meta.ImplementationClassUID = uids.IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = uids.IMPLEMENTATION_VERSION_NAME
    if source_ae:
        meta.SourceApplicationEntityTitle = source_ae
    expected = BytesIO()
    write_file_meta_info(expected, meta, enforce_standard=True)
    assert file_meta(CT_STORAGE, instance_uid, JPEG_BASELINE, source_ae) == expected.getvalue()


@pytest.mark.parametrize(
    "broken",
    [lambda whole: whole[:-3], lambda whole: whole + b"abc"],
    ids=["cut short", "stray bytes"],
)
def test_a_data_set_that_is_not_whole_is_refused_and_not_kept(tmp_path: Path, broken) -> None:
    handler = Recorder()
    peer = node(tmp_path, handler)
    peer.associate(request(contexts=ct_contexts()))
    peer.send_command(3, store_command(), broken(data_set_bytes()))
    (response,) = peer.responses()
    assert response.status == 0xC000
    assert response.error_comment.startswith("not whole: ")
    assert handler.seen == []
    assert list((tmp_path / INCOMING_FOLDER).glob("*")) == []


def test_a_store_whose_command_announces_no_data_set_cannot_be_understood(tmp_path: Path) -> None:
    handler = Recorder()
    peer = node(tmp_path, handler)
    peer.associate(request(contexts=ct_contexts()))
    peer.send_command(3, dataclasses.replace(store_command(), command_data_set_type=0x0101))
    (response,) = peer.responses()
    assert (response.status, response.error_comment) == (0xC000, "C-STORE-RQ without a data set")
    assert handler.seen == []


def test_a_full_disk_is_one_log_line_and_a_handler_fault_keeps_its_traceback(
    tmp_path: Path,
) -> None:
    for error, tracebacks in ((OSError(28, "No space left on device"), 0), (ValueError("x"), 1)):
        peer = node(tmp_path, Recorder(error))
        peer.associate(request(contexts=ct_contexts()))
        with capturedLogs() as events:
            peer.send_command(3, store_command(), data_set_bytes())
        assert len([event for event in events if "log_failure" in event]) == tracebacks
        assert any("Recorder" in formatEvent(event) for event in events)

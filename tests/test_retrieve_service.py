"""C-GET and C-MOVE in memory: role selection, sub-operations over the wire, counts, statuses."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.test.iosim import FakeTransport, connect
from zope.interface import implementer

from dicomd import uids
from dicomd.app import node_factory
from dicomd.client import (
    ClientSettings,
    RetrieveProgress,
    RetrieveResult,
    retrieve_contexts,
)
from dicomd.config import Destination
from dicomd.dimse.command import Command, CommandField
from dicomd.dimse.datasets import decode_dataset, encode_dataset
from dicomd.interfaces import FindQuery, IRetrieveSource, RetrieveItem
from dicomd.part10 import read_header
from dicomd.scu.connect import requestor_protocol
from dicomd.ul.pdu import PresentationContextRQ, RoleSelection
from tests.wire import EXPLICIT, Peer, bare_config, request

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
CT = Path(get_testdata_file("CT_small.dcm"))
MR = Path(get_testdata_file("MR_small.dcm"))


@implementer(IRetrieveSource)
class Files:
    """A retrieve source over a fixed list of files."""

    retrieve_models = (uids.STUDY_ROOT_MOVE, uids.STUDY_ROOT_GET)

    def __init__(self, *paths: Path, allow: bool = True) -> None:
        self.paths = paths
        self.allow = allow
        self.queries: list[FindQuery] = []

    def instances(self, query: FindQuery) -> list[RetrieveItem]:
        self.queries.append(query)
        items = []
        for path in self.paths:
            header = read_header(path)
            items.append(
                RetrieveItem(
                    path, header.sop_class_uid, header.sop_instance_uid, header.transfer_syntax
                )
            )
        return items

    def may_move(self, query: FindQuery, destination: str) -> bool:
        return self.allow


def node(source: Files, **destinations: Destination) -> Peer:
    return Peer(bare_config(destinations=destinations), plugins=(source,))


def get_association(peer: Peer, scp_classes: tuple[str, ...] = (CT_IMAGE,)) -> dict[str, int]:
    """Associate proposing C-GET and CT/MR storage; take the SCP role for ``scp_classes``."""
    syntaxes = (EXPLICIT, uids.IMPLICIT_VR_LITTLE_ENDIAN)
    contexts = (
        PresentationContextRQ(1, uids.STUDY_ROOT_GET, (EXPLICIT,)),
        PresentationContextRQ(3, CT_IMAGE, syntaxes),
        PresentationContextRQ(5, MR_IMAGE, syntaxes),
        PresentationContextRQ(7, uids.STUDY_ROOT_MOVE, (EXPLICIT,)),
    )
    roles = tuple(
        RoleSelection(uid, False, True) for uid in (CT_IMAGE, MR_IMAGE) if uid in scp_classes
    )
    ac = peer.associate(request(contexts=contexts, role_selections=roles))
    answered = {role.sop_class_uid: role.scp_role for role in ac.user_information.role_selections}
    assert answered == dict.fromkeys(scp_classes, True)
    return {c.abstract_syntax: c.context_id for c in contexts}


def retrieve_command(field: int, model: str, message_id: int = 7, **fields: object) -> Command:
    return Command(
        command_field=field,
        message_id=message_id,
        affected_sop_class_uid=model,
        priority=0,
        command_data_set_type=0x0001,
        **fields,  # type: ignore[arg-type]
    )


def study_identifier(level: str = "STUDY") -> bytes:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    identifier.StudyInstanceUID = "1.2.3"
    return encode_dataset(identifier, EXPLICIT)


def answer_stores(peer: Peer, status: int = 0x0000) -> list[tuple[Command, bytes | None]]:
    """Answer every C-STORE-RQ the node sent; return every message seen."""
    messages = peer.messages()
    respond_to_stores(peer, messages, status)
    return messages


def respond_to_stores(
    peer: Peer, messages: list[tuple[Command, bytes | None]], status: int = 0x0000
) -> None:
    for command, _ in messages:
        if command.command_field == CommandField.C_STORE_RQ:
            response = Command(
                command_field=CommandField.C_STORE_RSP,
                message_id_being_responded_to=command.message_id,
                affected_sop_class_uid=command.affected_sop_class_uid,
                affected_sop_instance_uid=command.affected_sop_instance_uid,
                status=status,
            )
            peer.send_command(3 if command.affected_sop_class_uid == CT_IMAGE else 5, response)


def run_get(peer: Peer, status: int = 0x0000) -> list[tuple[Command, bytes | None]]:
    seen = []
    for _ in range(10):
        messages = answer_stores(peer, status)
        seen += messages
        if any(
            m[0].command_field == CommandField.C_GET_RSP and m[0].status != 0xFF00 for m in messages
        ):
            break
    return seen


def test_c_get_sends_each_instance_back_as_it_is_then_success() -> None:
    peer = node(Files(CT, CT))
    get_association(peer)
    peer.send_command(
        1, retrieve_command(CommandField.C_GET_RQ, uids.STUDY_ROOT_GET), study_identifier()
    )
    seen = run_get(peer)
    stores = [(c, d) for c, d in seen if c.command_field == CommandField.C_STORE_RQ]
    assert len(stores) == 2
    header = read_header(CT)
    original = CT.read_bytes()[header.data_set_offset :]
    for command, data in stores:
        assert command.affected_sop_instance_uid == header.sop_instance_uid
        assert data == original  # explicit VR LE both sides: no conversion
    responses = [c for c, _ in seen if c.command_field == CommandField.C_GET_RSP]
    assert [(r.status, r.number_of_remaining_suboperations) for r in responses] == [
        (0xFF00, 1),
        (0x0000, None),
    ]
    assert (
        responses[-1].number_of_completed_suboperations,
        responses[-1].number_of_failed_suboperations,
    ) == (2, 0)


@implementer(IRetrieveSource)
class Fetched:
    """A retrieve source whose instances are fetched into spool files, as from object
    storage: ``keys`` maps each to the file it comes from, or to None when it is gone."""

    retrieve_models = (uids.STUDY_ROOT_MOVE, uids.STUDY_ROOT_GET)

    def __init__(self, spool: Path, *keys: Path | None) -> None:
        self.spool = spool
        self.keys = keys
        self.spooled: list[Path] = []

    def instances(self, query: FindQuery) -> list[RetrieveItem]:
        header = read_header(CT)
        return [
            RetrieveItem(
                None,
                header.sop_class_uid,
                f"{header.sop_instance_uid}.{number}",
                header.transfer_syntax,
                fetch=lambda key=key: defer.maybeDeferred(self._fetch, key),
            )
            for number, key in enumerate(self.keys)
        ]

    def _fetch(self, key: Path | None) -> Path:
        if key is None:
            raise FileNotFoundError("no such object")
        spooled = self.spool / f"{len(self.spooled)}.dcm"
        spooled.write_bytes(key.read_bytes())
        self.spooled.append(spooled)
        return spooled

    def may_move(self, query: FindQuery, destination: str) -> bool:
        return True


def test_an_instance_fetched_first_is_sent_from_its_spool_file_then_removed(
    tmp_path: Path,
) -> None:
    """Object storage: each instance is brought into a spool file, sent, and the file goes;
    one that cannot be fetched is a failed sub-operation, and the others still go."""
    source = Fetched(tmp_path, CT, None, CT)
    peer = node(source)
    get_association(peer)
    peer.send_command(
        1, retrieve_command(CommandField.C_GET_RQ, uids.STUDY_ROOT_GET), study_identifier()
    )
    seen = run_get(peer)
    stores = [(c, d) for c, d in seen if c.command_field == CommandField.C_STORE_RQ]
    header = read_header(CT)
    assert [data for _, data in stores] == [CT.read_bytes()[header.data_set_offset :]] * 2
    final = [c for c, _ in seen if c.command_field == CommandField.C_GET_RSP][-1]
    assert (final.status, final.number_of_completed_suboperations) == (0xB000, 2)
    assert final.number_of_failed_suboperations == 1
    assert len(source.spooled) == 2
    assert not any(path.exists() for path in source.spooled)


def test_an_instance_the_requester_cannot_take_counts_as_failed() -> None:
    peer = node(Files(CT, MR))
    get_association(peer, scp_classes=(CT_IMAGE,))  # no SCP role for MR
    peer.send_command(
        1, retrieve_command(CommandField.C_GET_RQ, uids.STUDY_ROOT_GET), study_identifier()
    )
    seen = run_get(peer)
    final, data = [(c, d) for c, d in seen if c.command_field == CommandField.C_GET_RSP][-1]
    assert final.status == 0xB000
    assert (final.number_of_completed_suboperations, final.number_of_failed_suboperations) == (1, 1)
    failed = decode_dataset(data, EXPLICIT).FailedSOPInstanceUIDList
    assert failed == dcmread(MR).SOPInstanceUID


def test_failure_statuses_of_the_requester_are_counted() -> None:
    peer = node(Files(CT))
    get_association(peer)
    peer.send_command(
        1, retrieve_command(CommandField.C_GET_RQ, uids.STUDY_ROOT_GET), study_identifier()
    )
    seen = run_get(peer, status=0xA700)
    final = [c for c, _ in seen if c.command_field == CommandField.C_GET_RSP][-1]
    assert (final.status, final.number_of_failed_suboperations) == (0xA702, 1)


def test_c_cancel_stops_between_instances_with_fe00() -> None:
    peer = node(Files(CT, CT, CT))
    get_association(peer)
    peer.send_command(
        1, retrieve_command(CommandField.C_GET_RQ, uids.STUDY_ROOT_GET, 9), study_identifier()
    )
    first = peer.messages()
    assert [c.command_field for c, _ in first] == [CommandField.C_STORE_RQ]
    cancel = Command(command_field=CommandField.C_CANCEL_RQ, message_id_being_responded_to=9)
    peer.send_command(1, cancel)
    respond_to_stores(peer, first)  # the cancel arrived while the first was on its way
    seen = run_get(peer)
    final = [c for c, _ in seen if c.command_field == CommandField.C_GET_RSP][-1]
    assert final.status == 0xFE00
    assert final.number_of_completed_suboperations == 1
    assert final.number_of_remaining_suboperations == 2


@pytest.mark.parametrize(("level", "status"), [("PATIENT", 0xA900), ("FRAME", 0xA900)])
def test_a_level_outside_the_model_is_a900(level: str, status: int) -> None:
    source = Files(CT)
    peer = node(source)
    get_association(peer)
    peer.send_command(
        1, retrieve_command(CommandField.C_GET_RQ, uids.STUDY_ROOT_GET), study_identifier(level)
    )
    ((final, _),) = peer.messages()
    assert final.status == status
    assert source.queries == []


def test_a_move_to_an_unknown_destination_is_a801() -> None:
    peer = node(Files(CT))
    get_association(peer)
    move = retrieve_command(
        CommandField.C_MOVE_RQ, uids.STUDY_ROOT_MOVE, move_destination="NOWHERE"
    )
    peer.send_command(7, move, study_identifier())
    ((final, _),) = peer.messages()
    assert final.command_field == CommandField.C_MOVE_RSP
    assert final.status == 0xA801
    assert "NOWHERE" in final.error_comment


def test_the_policy_may_refuse_with_0124() -> None:
    peer = node(Files(CT, allow=False), STORESCP=Destination("STORESCP", "127.0.0.1", 1))
    get_association(peer)
    move = retrieve_command(
        CommandField.C_MOVE_RQ, uids.STUDY_ROOT_MOVE, move_destination="STORESCP"
    )
    peer.send_command(7, move, study_identifier())
    ((final, _),) = peer.messages()
    assert final.status == 0x0124


# -- our own client as the requester, in memory -----------------------------------------------


def client_pair(source: Files, scp_roles: tuple[str, ...], contexts):
    clock = Clock()
    server = node_factory(bare_config(), [source], clock=clock).buildProtocol(None)
    client, association = requestor_protocol(
        clock, ClientSettings("DICOMD", "GETSCU"), contexts, scp_roles
    )
    pump = connect(
        server, FakeTransport(server, isServer=True), client, FakeTransport(client, isServer=False)
    )
    pump.flush()
    return pump, association


def fired(d):
    outcome: list[object] = []
    d.addBoth(outcome.append)
    assert outcome, "the Deferred has not fired"
    return outcome[0]


def test_client_get_keeps_each_instance_as_sent(tmp_path: Path) -> None:
    contexts = retrieve_contexts(uids.STUDY_ROOT_GET, [CT_IMAGE])
    pump, association = client_pair(Files(CT), (CT_IMAGE,), contexts)
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = "1.2.3"
    progress: list[RetrieveProgress] = []
    got = association.get(uids.STUDY_ROOT_GET, identifier, tmp_path, progress.append)
    pump.flush()
    result = fired(got)
    assert isinstance(result, RetrieveResult), result
    assert (result.status, result.completed, result.failed) == (0x0000, 1, 0)
    header = read_header(CT)
    (kept,) = tmp_path.glob("*.dcm")
    assert kept.name == f"{header.sop_instance_uid}.dcm"
    kept_header = read_header(kept)
    assert (
        kept.read_bytes()[kept_header.data_set_offset :]
        == (CT.read_bytes()[header.data_set_offset :])
    )


def test_client_move_reports_the_failure_status_as_a_result() -> None:
    contexts = retrieve_contexts(uids.STUDY_ROOT_MOVE)
    pump, association = client_pair(Files(CT), (), contexts)
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = "1.2.3"
    moved = association.move(uids.STUDY_ROOT_MOVE, identifier, "NOWHERE")
    pump.flush()
    result = fired(moved)
    assert (result.status, result.completed) == (0xA801, 0)
    assert "NOWHERE" in result.error_comment


@implementer(IRetrieveSource)
class Datasets:
    """A retrieve source that holds data sets, not files."""

    retrieve_models = (uids.STUDY_ROOT_GET,)

    def instances(self, query: FindQuery) -> list[RetrieveItem]:
        ds = dcmread(CT)
        return [RetrieveItem(None, ds.SOPClassUID, ds.SOPInstanceUID, EXPLICIT, dataset=ds)]

    def may_move(self, query: FindQuery, destination: str) -> bool:
        return True


def test_client_get_of_data_sets_hands_each_file_to_the_callback(tmp_path: Path) -> None:
    contexts = retrieve_contexts(uids.STUDY_ROOT_GET, [CT_IMAGE])
    pump, association = client_pair(Datasets(), (CT_IMAGE,), contexts)  # type: ignore[arg-type]
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = "1.2.3"
    handed: list[Path] = []

    def keep(path: Path) -> int:
        handed.append(path)
        return 0xB000  # a warning, to see it counted

    got = association.get(uids.STUDY_ROOT_GET, identifier, tmp_path, on_instance=keep)
    pump.flush()
    result = fired(got)
    assert (result.status, result.completed, result.warning) == (0xB000, 0, 1)
    (path,) = handed
    assert dcmread(path).PatientName == dcmread(CT).PatientName


# -- the retrieve source's answers in every style ----------------------------------------------


@implementer(IRetrieveSource)
class Policy(Files):
    """A retrieve source whose ``may_move`` answers directly, with a Deferred, or fails."""

    def __init__(self, answer: object, *paths: Path) -> None:
        super().__init__(*paths)
        self.answer = answer

    def may_move(self, query: FindQuery, destination: str) -> object:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


MAY_MOVE_ANSWERS = {
    "False": (lambda: False, 0x0124),
    "succeed(False)": (lambda: defer.succeed(False), 0x0124),
    "fail": (lambda: defer.fail(ValueError("policy store down")), 0xA701),
    "raise": (lambda: ValueError("policy store down"), 0xA701),
}


@pytest.mark.parametrize(("answer", "status"), MAY_MOVE_ANSWERS.values(), ids=MAY_MOVE_ANSWERS)
def test_may_move_is_waited_for_in_every_style(answer: Callable[[], object], status: int) -> None:
    source = Policy(answer(), CT)
    peer = node(source, STORESCP=Destination("STORESCP", "127.0.0.1", 1))
    get_association(peer)
    move = retrieve_command(
        CommandField.C_MOVE_RQ, uids.STUDY_ROOT_MOVE, move_destination="STORESCP"
    )
    peer.send_command(7, move, study_identifier())
    ((final, _),) = peer.messages()
    assert final.status == status
    assert source.queries == []  # refused before the source was asked for instances


def test_may_move_answering_true_later_lets_the_get_proceed() -> None:
    later: defer.Deferred[bool] = defer.Deferred()
    peer = node(Policy(later, CT))
    get_association(peer)
    peer.send_command(
        1, retrieve_command(CommandField.C_GET_RQ, uids.STUDY_ROOT_GET), study_identifier()
    )
    assert peer.messages() == []  # still waiting for the policy
    later.callback(True)
    seen = run_get(peer)
    final = [c for c, _ in seen if c.command_field == CommandField.C_GET_RSP][-1]
    assert (final.status, final.number_of_completed_suboperations) == (0x0000, 1)


# -- concurrent C-GETs on one association ---------------------------------------------------


def test_concurrent_gets_keep_their_own_folder_and_callback(tmp_path: Path) -> None:
    contexts = retrieve_contexts(uids.STUDY_ROOT_GET, [CT_IMAGE, MR_IMAGE])
    pump, association = client_pair(Files(CT), (CT_IMAGE, MR_IMAGE), contexts)
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = "1.2.3"
    first_folder, second_folder = tmp_path / "first", tmp_path / "second"
    first_folder.mkdir()
    second_folder.mkdir()
    handed: dict[str, list[Path]] = {"first": [], "second": []}

    def to(name: str):
        return lambda path: handed[name].append(path)

    first = association.get(uids.STUDY_ROOT_GET, identifier, first_folder, on_instance=to("first"))
    second = association.get(
        uids.STUDY_ROOT_GET, identifier, second_folder, on_instance=to("second")
    )
    pump.flush()
    assert [fired(first).completed, fired(second).completed] == [1, 1]
    name = f"{read_header(CT).sop_instance_uid}.dcm"
    assert handed == {"first": [first_folder / name], "second": [second_folder / name]}
    assert [p.name for p in first_folder.iterdir()] == [name]
    assert [p.name for p in second_folder.iterdir()] == [name]


def test_a_get_callback_may_answer_with_a_deferred(tmp_path: Path) -> None:
    contexts = retrieve_contexts(uids.STUDY_ROOT_GET, [CT_IMAGE])
    pump, association = client_pair(Files(CT), (CT_IMAGE,), contexts)
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = "1.2.3"
    decided: defer.Deferred[int] = defer.Deferred()
    got = association.get(uids.STUDY_ROOT_GET, identifier, tmp_path, on_instance=lambda _: decided)
    pump.flush()
    assert not got.called  # the C-STORE waits for the callback's answer
    decided.callback(0xA700)
    pump.flush()
    result = fired(got)
    assert (result.status, result.failed) == (0xA702, 1)

"""``dicomd store``'s C-STORE of one file, against an in-memory node that answers when the
test says: what each answer counts as, and which failures stop the association's share.

Against real peers (dcmtk, pynetdicom, the daemon) the whole command is
tested in ``tests/e2e/test_cli_store.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet import defer
from zope.interface import implementer

from dicomd.cli.network import CommandFailed, Peer
from dicomd.cli.store import Instance, Tally, _send_one, find_instances, propose_for
from dicomd.client import ClientAssociation, ClientSettings
from dicomd.interfaces import IStoreHandler, ReceivedInstance
from dicomd.testing import TEST_HOST, MemoryNode
from tests.support.datasets import copies_of, write_ct_files


@implementer(IStoreHandler)
class HeldAnswers:
    """Keeps every instance's answer back until the test gives it."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self.held: list[defer.Deferred[int]] = []

    def store(self, instance: ReceivedInstance) -> defer.Deferred[int]:
        self.received.append(instance.sop_instance_uid)
        answer: defer.Deferred[int] = defer.Deferred()
        self.held.append(answer)
        return answer


class Sending:
    """CT files, and an association with a `MemoryNode` that accepts their kind alone."""

    def __init__(self, tmp_path: Path, count: int) -> None:
        write_ct_files(tmp_path / "ct", count)
        self.instances, _skipped = find_instances([str(tmp_path / "ct")])
        self.handler = HeldAnswers()
        self.node = MemoryNode([self.handler], storage_path=tmp_path / "node")
        self.association: ClientAssociation = self.node.associate(propose_for(self.instances))
        self.peer = Peer(TEST_HOST, 11112, ClientSettings(self.node.ae_title))
        self.tally = Tally()

    def send(self, instance: Instance) -> defer.Deferred[None]:
        sent = defer.ensureDeferred(_send_one(self.association, self.peer, instance, self.tally))
        self.node.flush()
        return sent

    def answer(self, status: int) -> None:
        self.handler.held.pop(0).callback(status)
        self.node.flush()


def test_each_answer_counts_by_its_status(tmp_path: Path) -> None:
    sending = Sending(tmp_path, 3)
    for instance, status in zip(sending.instances, (0x0000, 0xB000, 0xA700), strict=True):
        sent = sending.send(instance)
        assert not sent.called  # the file's outcome waits for the peer's answer
        sending.answer(status)
        assert sent.called
    assert (sending.tally.stored, sending.tally.warnings) == (1, 1)
    [(path, reason)] = sending.tally.failures
    assert path == sending.instances[2].path
    assert "out of resources" in reason.lower()
    assert sending.tally.ok is False


def test_a_file_of_a_kind_the_peer_did_not_accept_fails_alone(tmp_path: Path) -> None:
    sending = Sending(tmp_path, 1)
    [plan] = copies_of("rtplan.dcm", tmp_path / "rt", 1)
    [rt_instance], _skipped = find_instances([str(plan)])
    failed = sending.send(rt_instance)
    stored = sending.send(sending.instances[0])
    sending.answer(0x0000)
    assert failed.called and stored.called
    [(path, reason)] = sending.tally.failures
    assert (path, sending.tally.stored) == (plan, 1)
    assert reason.startswith(f"not accepted by {sending.peer}: RT Plan Storage in")


def test_an_abort_while_a_file_is_in_flight_fails_it_and_stops_the_share(tmp_path: Path) -> None:
    sending = Sending(tmp_path, 2)
    sending.send(sending.instances[0])
    sending.answer(0x0000)
    in_flight = sending.send(sending.instances[1])
    sending.node.connections[0].acceptor.abort()
    sending.node.flush()
    with pytest.raises(CommandFailed, match="abort"):
        in_flight.result.raiseException()
    in_flight.addErrback(lambda _: None)
    assert sending.tally.stored == 1
    assert [path for path, _reason in sending.tally.failures] == [sending.instances[1].path]


def test_files_are_found_with_their_kind_and_size_and_the_rest_skipped(tmp_path: Path) -> None:
    [ct] = write_ct_files(tmp_path / "send" / "ct", 1)
    [plan] = copies_of("rtplan.dcm", tmp_path / "send" / "rt", 1)
    (tmp_path / "send" / "notes.txt").write_text("not DICOM")
    instances, skipped = find_instances([str(tmp_path / "send")])
    assert [(i.path, i.size, i.header.sop_class_uid) for i in instances] == [
        (ct, ct.stat().st_size, "1.2.840.10008.5.1.4.1.1.2"),
        (plan, plan.stat().st_size, "1.2.840.10008.5.1.4.1.1.481.5"),
    ]
    [(path, reason)] = skipped
    assert path == tmp_path / "send" / "notes.txt"
    assert reason.startswith("not a DICOM file")

"""The requestor against our own acceptor, both in memory (twisted.test.iosim)."""

from __future__ import annotations

import dataclasses
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
    AssociationAborted,
    AssociationRejected,
    ClientAssociation,
    ClientSettings,
    NoAcceptedContext,
    StoreResult,
    propose,
)
from dicomd.config import default_config
from dicomd.dimse.association import MemorySink
from dicomd.dimse.command import CommandField
from dicomd.dimse.datasets import decode_dataset, encode_dataset
from dicomd.interfaces import IStoreHandler, ReceivedInstance
from dicomd.node.registry import ServiceRegistry
from dicomd.node.services.echo import VerificationService
from dicomd.part10 import read_header
from dicomd.scu.connect import requestor_protocol
from dicomd.ul.fsm import State
from tests.wire import bare_config


def pair(settings: ClientSettings, contexts=None):
    clock = Clock()
    config = bare_config()
    server = node_factory(config, clock=clock).buildProtocol(None)
    client, association = requestor_protocol(
        clock, settings, contexts or propose([uids.VERIFICATION])
    )
    pump = connect(
        server, FakeTransport(server, isServer=True), client, FakeTransport(client, isServer=False)
    )
    return clock, pump, server, association


def result(d):
    outcome: list[object] = []
    d.addBoth(outcome.append)
    assert outcome, "the Deferred has not fired"
    return outcome[0]


def test_echo_then_release() -> None:
    _, pump, server, association = pair(ClientSettings("DICOMD", "SCU"))
    pump.flush()
    assert isinstance(result(association.established), ClientAssociation)
    assert association.peer_max_pdu_length == default_config().limits.max_pdu_length
    echo = association.echo()
    pump.flush()
    assert result(echo) == 0x0000
    released = association.release()
    pump.flush()
    assert result(released) is None
    assert association.machine.state is State.STA1
    assert server.machine.state is State.STA1  # the requestor closed the connection


def test_rejection_carries_result_source_and_reason() -> None:
    _, pump, _, association = pair(ClientSettings("ELSEWHERE", "SCU"))
    pump.flush()
    failure = result(association.established)
    assert failure.check(AssociationRejected)
    assert (failure.value.result, failure.value.source, failure.value.reason) == (1, 1, 7)


def test_no_context_for_an_operation() -> None:
    contexts = propose(["1.2.840.10008.5.1.4.1.1.2"])
    _, pump, _, association = pair(ClientSettings("DICOMD", "SCU"), contexts)
    pump.flush()
    assert result(association.echo()).check(NoAcceptedContext)


def test_abort_fails_what_is_outstanding() -> None:
    _, pump, server, association = pair(ClientSettings("DICOMD", "SCU"))
    pump.flush()
    released = association.release()
    server.machine.abort_request()
    pump.flush()
    failure = result(released)
    assert failure.check(AssociationAborted)
    assert failure.value.source == 0


def test_acse_timeout_aborts_a_silent_acceptor() -> None:
    settings = dataclasses.replace(ClientSettings("DICOMD", "SCU"), acse_timeout=5)
    clock = Clock()
    from twisted.internet.testing import StringTransport

    client, association = requestor_protocol(clock, settings, propose([uids.VERIFICATION]))
    transport = StringTransport()
    client.makeConnection(transport)
    assert transport.value()[:1] == b"\x01"  # the A-ASSOCIATE-RQ went out
    clock.advance(6)
    assert result(association.established).check(AssociationAborted)
    assert transport.value().endswith(bytes.fromhex("07000000000400000000"))


# -- C-STORE and C-FIND against our acceptor, in memory -----------------------------------------


@implementer(IStoreHandler)
class Keeper:
    """Keeps what it receives in memory, to compare bytes."""

    def __init__(self) -> None:
        self.received: list[tuple[str, str, bytes]] = []

    def store(self, instance: ReceivedInstance) -> int:
        content = instance.path.read_bytes()
        offset = read_header(instance.path).data_set_offset
        self.received.append(
            (instance.sop_instance_uid, instance.transfer_syntax, content[offset:])
        )
        return 0


class FakeFind:
    """A C-FIND SCP for the test: three matches, or pending until cancelled."""

    abstract_syntaxes = frozenset({uids.STUDY_ROOT_FIND})
    transfer_syntaxes = None
    operations = frozenset({CommandField.C_FIND_RQ})

    def __init__(self, hold: bool = False) -> None:
        self.hold = hold
        self.identifiers: list[Dataset] = []
        self.cancelled = False

    def open_sink(self, association, context, command) -> MemorySink:
        return MemorySink()

    def handle(self, association, request) -> None:
        syntax = request.context.transfer_syntax
        association.on_cancel(
            request.command.message_id, lambda: self._cancel(association, request)
        )
        self.identifiers.append(decode_dataset(request.data, syntax))
        for number in range(3):
            match = Dataset()
            match.PatientID = f"P{number}"
            association.respond(request, 0xFF00, encode_dataset(match, syntax))
        if not self.hold:
            association.respond(request, 0x0000)

    def _cancel(self, association, request) -> None:
        self.cancelled = True
        association.respond(request, 0xFE00)


def store_pair(tmp_path: Path, settings: ClientSettings, contexts, find=None):
    keeper = Keeper()
    config = dataclasses.replace(default_config(), storage_path=tmp_path)
    clock = Clock()
    factory = node_factory(config, [keeper], clock=clock)
    if find is not None:
        registry = ServiceRegistry([VerificationService(), find], config.transfer_syntaxes)
        factory.settings = dataclasses.replace(factory.settings, services=registry)
    server = factory.buildProtocol(None)
    client, association = requestor_protocol(clock, settings, contexts)
    pump = connect(
        server, FakeTransport(server, isServer=True), client, FakeTransport(client, isServer=False)
    )
    pump.flush()
    return pump, association, keeper


CT = get_testdata_file("CT_small.dcm")
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def test_store_streams_a_file_as_it_is(tmp_path: Path) -> None:
    settings = dataclasses.replace(ClientSettings("DICOMD", "SCU"), max_pdu_length=4096)
    contexts = propose([CT_IMAGE], [uids.EXPLICIT_VR_LITTLE_ENDIAN])
    pump, association, keeper = store_pair(tmp_path, settings, contexts)
    # The acceptor announces its own maximum; make ours the smaller to see fragmentation.
    association.peer_max_pdu_length = 4096
    stored = association.store(CT)
    pump.flush()
    outcome = result(stored)
    assert outcome == StoreResult(0, "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322", None)
    header = read_header(CT)
    original = Path(CT).read_bytes()[header.data_set_offset :]
    ((uid, syntax, data),) = keeper.received
    assert (uid, syntax, data) == (header.sop_instance_uid, header.transfer_syntax, original)


def test_store_converts_between_uncompressed_syntaxes(tmp_path: Path) -> None:
    contexts = propose([CT_IMAGE], [uids.IMPLICIT_VR_LITTLE_ENDIAN])
    pump, association, keeper = store_pair(tmp_path, ClientSettings("DICOMD", "SCU"), contexts)
    stored = association.store(CT)
    pump.flush()
    assert result(stored).status == 0
    ((_, syntax, data),) = keeper.received
    assert syntax == uids.IMPLICIT_VR_LITTLE_ENDIAN
    assert decode_dataset(data, syntax) == dcmread(CT)


def test_store_of_a_dataset(tmp_path: Path) -> None:
    contexts = propose([CT_IMAGE])
    pump, association, keeper = store_pair(tmp_path, ClientSettings("DICOMD", "SCU"), contexts)
    ds = dcmread(CT)
    stored = association.store(ds)
    pump.flush()
    assert result(stored).status == 0
    ((_, syntax, data),) = keeper.received
    assert decode_dataset(data, syntax).PatientName == ds.PatientName


def test_a_compressed_file_needs_its_own_syntax(tmp_path: Path) -> None:
    contexts = propose([CT_IMAGE])
    _, association, _ = store_pair(tmp_path, ClientSettings("DICOMD", "SCU"), contexts)
    jpeg = get_testdata_file("JPEG-lossy.dcm")
    failure = result(association.store(jpeg))
    assert failure.check(NoAcceptedContext)
    assert "1.2.840.10008.1.2.4.51" in failure.getErrorMessage()


def test_find_streams_matches_then_the_final_status(tmp_path: Path) -> None:
    find = FakeFind()
    contexts = propose([uids.STUDY_ROOT_FIND])
    pump, association, _ = store_pair(tmp_path, ClientSettings("DICOMD", "SCU"), contexts, find)
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.PatientID = ""
    seen: list[str] = []
    operation = association.find(
        uids.STUDY_ROOT_FIND, identifier, on_match=lambda m: seen.append(m.PatientID)
    )
    pump.flush()
    outcome = result(operation)
    assert outcome.status == 0
    assert [m.PatientID for m in outcome.matches] == seen == ["P0", "P1", "P2"]
    assert find.identifiers[0].QueryRetrieveLevel == "STUDY"


def test_find_can_be_cancelled(tmp_path: Path) -> None:
    contexts = propose([uids.STUDY_ROOT_FIND])
    find = FakeFind(hold=True)
    pump, association, _ = store_pair(tmp_path, ClientSettings("DICOMD", "SCU"), contexts, find)
    operation = association.find(uids.STUDY_ROOT_FIND, Dataset())
    pump.flush()
    assert not operation.called
    operation.cancel()
    assert result(operation).check(defer.CancelledError)
    pump.flush()
    assert find.cancelled  # the C-CANCEL reached the peer
    assert association.in_flight == 0  # and its FE00 closed the request quietly


def test_requests_beyond_the_window_wait_their_turn(tmp_path: Path) -> None:
    settings = dataclasses.replace(ClientSettings("DICOMD", "SCU"), max_operations=4)
    pump, association, _ = store_pair(tmp_path, settings, propose([uids.VERIFICATION]))
    assert association.max_outstanding == 1  # our acceptor performs one at a time
    echoes = [association.echo() for _ in range(3)]
    assert association.in_flight == 1
    pump.flush()
    assert [result(d) for d in echoes] == [0, 0, 0]


def test_every_public_name_is_the_one_its_module_defines() -> None:
    """`dicomd.client` imports each name when first asked for: the same object as its home's."""
    import dicomd.client
    from dicomd.dimse import errors, sending
    from dicomd.scu import connect, operations, requestor
    from dicomd.ul import pdu, tls

    homes = (errors, sending, connect, operations, requestor, uids, pdu, tls)
    for name in dicomd.client.__all__:
        value = getattr(dicomd.client, name)
        original = "Requestor" if name == "ClientAssociation" else name
        assert any(getattr(home, original, None) is value for home in homes), name
    assert set(dicomd.client.__all__) <= set(dir(dicomd.client))


def test_a_name_the_client_does_not_have_is_an_attribute_error() -> None:
    import dicomd.client

    with pytest.raises(AttributeError, match="has no attribute 'Associate'"):
        dicomd.client.Associate  # noqa: B018

"""The acceptor over an in-memory transport: negotiation, DIMSE, release, aborts, timers."""

from __future__ import annotations

import dataclasses
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from dicomd import uids
from dicomd.app import node_factory
from dicomd.config import CallingAE, Config, default_config
from dicomd.dimse.command import Command, CommandField
from dicomd.interfaces import ACCEPT, IAssociationValidator, Rejection
from dicomd.ul.fsm import State
from dicomd.ul.pdu import (
    AAbort,
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    AbortSource,
    AReleaseRP,
    AReleaseRQ,
    AsyncOperationsWindow,
    PresentationContextRQ,
    UserIdentityRQ,
    decode,
    encode_pdata,
)
from tests.wire import EXPLICIT, IMPLICIT, Peer, bare_config, request

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def echo_command(message_id: int = 1) -> Command:
    return Command(
        command_field=CommandField.C_ECHO_RQ,
        message_id=message_id,
        affected_sop_class_uid=uids.VERIFICATION,
    )


def configured(**changes: object) -> Config:
    return bare_config(**changes)


def test_echo_release_and_close() -> None:
    peer = Peer()
    assert peer.protocol.transport is peer.transport
    ac = peer.associate()
    assert [(c.context_id, c.result, c.transfer_syntax) for c in ac.presentation_contexts] == [
        (1, 0, IMPLICIT)
    ]
    info = ac.user_information
    assert info.max_length == default_config().limits.max_pdu_length
    assert info.implementation_class_uid == uids.IMPLEMENTATION_CLASS_UID
    assert info.implementation_version_name == uids.IMPLEMENTATION_VERSION_NAME

    peer.send_command(1, echo_command(7))
    (response,) = peer.responses()
    assert response.command_field == CommandField.C_ECHO_RSP
    assert response.message_id_being_responded_to == 7
    assert response.status == 0x0000
    assert response.affected_sop_class_uid == uids.VERIFICATION
    assert not response.has_data_set

    peer.send(AReleaseRQ().encode())
    assert peer.received() == [AReleaseRP()]
    peer.clock.advance(default_config().timeouts.artim + 1)
    assert peer.closed


def test_tcp_nodelay_is_set() -> None:
    transport = StringTransport()
    nodelay: list[bool] = []
    transport.setTcpNoDelay = nodelay.append  # type: ignore[method-assign]
    factory = node_factory(bare_config(), clock=Clock())
    factory.buildProtocol(None).makeConnection(transport)
    assert nodelay == [True]


def test_contexts_follow_our_preference_and_say_why_they_are_refused() -> None:
    peer = Peer()
    ac = peer.associate(
        request(
            contexts=(
                PresentationContextRQ(1, uids.VERIFICATION, (IMPLICIT, EXPLICIT)),
                PresentationContextRQ(3, CT_STORAGE, (IMPLICIT,)),
                PresentationContextRQ(5, uids.VERIFICATION, ("1.2.840.10008.1.2.4.50",)),
            )
        )
    )
    results = [(c.context_id, c.result) for c in ac.presentation_contexts]
    assert results == [(1, 0), (3, 3), (5, 4)]
    assert ac.presentation_contexts[0].transfer_syntax == EXPLICIT


def test_async_window_is_answered_and_an_identity_nobody_checked_is_not_confirmed() -> None:
    peer = Peer()
    ac = peer.associate(
        request(
            async_operations_window=AsyncOperationsWindow(5, 5),
            user_identity_rq=UserIdentityRQ(2, True, b"user", b"secret"),
        )
    )
    assert ac.user_information.async_operations_window == AsyncOperationsWindow(1, 1)
    assert ac.user_information.user_identity_ac is None  # no authenticator is configured


def test_wrong_called_ae_is_rejected_permanently() -> None:
    peer = Peer()
    peer.send(request(called="SOMEONE").encode())
    assert peer.received() == [AAssociateRJ(1, 1, 7)]
    peer.clock.advance(default_config().timeouts.artim + 1)
    assert peer.closed


def test_calling_ae_allow_list_with_host() -> None:
    access = dataclasses.replace(
        default_config().access, calling_aes=(CallingAE("ECHOSCU", "10.1.1.1"),)
    )
    peer = Peer(configured(access=access))
    peer.send(request().encode())
    assert peer.received() == [AAssociateRJ(1, 1, 3)]
    peer = Peer(configured(access=access), host="10.1.1.1")
    peer.associate()


def test_association_limit_rejects_transient() -> None:
    config = configured(limits=dataclasses.replace(default_config().limits, max_associations=1))
    first = Peer(config)
    first.associate()
    second_transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40001))
    second = first.factory.buildProtocol(second_transport.getPeer())
    second.makeConnection(second_transport)
    second.dataReceived(request().encode())
    assert decode(second_transport.value()) == AAssociateRJ(2, 3, 2)
    # Once the first association is gone, there is room again.
    first.protocol.connectionLost()
    third_transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40002))
    third = first.factory.buildProtocol(third_transport.getPeer())
    third.makeConnection(third_transport)
    third.dataReceived(request().encode())
    assert isinstance(decode(third_transport.value()), AAssociateAC)


@implementer(IAssociationValidator)
class Answering:
    def __init__(self, answer: object) -> None:
        self.answer = answer
        self.seen: list[object] = []

    def validate(self, req: object) -> object:
        self.seen.append(req)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def peer_with_validator(validator: object) -> Peer:
    return Peer(configured(), plugins=(validator,))


def test_plugin_validator_sees_the_request_and_may_reject() -> None:
    validator = Answering(Rejection(1, 1, 3))
    peer = peer_with_validator(validator)
    peer.send(request(user_identity_rq=UserIdentityRQ(1, False, b"alice")).encode())
    assert peer.received() == [AAssociateRJ(1, 1, 3)]
    (seen,) = validator.seen
    assert (seen.calling_ae_title, seen.called_ae_title, seen.peer_host) == (
        "ECHOSCU",
        "DICOMD",
        "127.0.0.1",
    )
    assert seen.user_identity.primary_field == b"alice"
    assert seen.presentation_contexts[0].abstract_syntax == uids.VERIFICATION


def test_a_raising_validator_rejects_with_no_reason_and_the_node_goes_on() -> None:
    peer = peer_with_validator(Answering(RuntimeError("boom")))
    peer.send(request().encode())
    assert peer.received() == [AAssociateRJ(1, 1, 1)]


def test_a_validator_may_answer_later() -> None:
    later: defer.Deferred[object] = defer.Deferred()
    peer = peer_with_validator(Answering(later))
    peer.send(request().encode())
    assert peer.received() == []
    assert peer.protocol.machine.state is State.STA3
    later.callback(ACCEPT)
    assert isinstance(peer.received()[0], AAssociateAC)


def test_unsupported_operation_gets_unrecognized_operation_status() -> None:
    peer = Peer()
    peer.associate()
    find = Command(
        command_field=CommandField.C_FIND_RQ,
        message_id=3,
        affected_sop_class_uid=uids.VERIFICATION,
        priority=0,
        command_data_set_type=0x0001,
    )
    peer.send_command(1, find, b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ")
    (response,) = peer.responses()
    assert response.command_field == CommandField.C_FIND_RSP
    assert response.status == 0x0211
    assert response.message_id_being_responded_to == 3


def test_unknown_command_field_aborts() -> None:
    peer = Peer()
    peer.associate()
    peer.send_command(1, Command(command_field=0x0999, message_id=1))
    assert peer.received() == [AAbort(2, 6)]


def test_pdv_on_a_context_that_was_not_accepted_aborts() -> None:
    peer = Peer()
    peer.associate(
        request(
            contexts=(
                PresentationContextRQ(1, uids.VERIFICATION, (IMPLICIT,)),
                PresentationContextRQ(3, CT_STORAGE, (IMPLICIT,)),
            )
        )
    )
    peer.send_command(3, echo_command())
    assert peer.received() == [AAbort(2, 6)]
    assert peer.protocol.machine.state is State.STA13
    peer.clock.advance(default_config().timeouts.artim + 1)
    assert peer.closed


def test_pdata_over_our_maximum_aborts_before_its_body_arrives() -> None:
    peer = Peer()
    peer.associate()
    too_long = default_config().limits.max_pdu_length + 1
    peer.send(struct.pack(">BBL", 4, 0, too_long))
    assert peer.received() == [AAbort(2, 6)]


def test_a_length_of_four_gigabytes_allocates_nothing() -> None:
    peer = Peer()
    peer.send(struct.pack(">BBL", 1, 0, 0xFFFFFFFF) + b"\x00" * 10)
    assert peer.received() == [AAbort(2, 6)]
    assert len(peer.protocol._buffer) == 0


def test_unknown_pdu_type_aborts_with_unrecognized_pdu() -> None:
    peer = Peer()
    peer.send(b"\x99\x00\x00\x00\x00\x02ab")
    assert peer.received() == [AAbort(2, 1)]
    peer.send(b"more garbage is ignored")
    assert peer.received() == []


def test_outgoing_pdata_is_fragmented_to_the_peers_maximum() -> None:
    peer = Peer()
    peer.associate(request(max_length=4096))
    acceptor = peer.protocol.user
    acceptor.send(1, Command(command_field=CommandField.C_FIND_RSP, status=0xFF00), b"x" * 20000)
    pdus = peer.received()
    assert len(pdus) >= 20000 // 4096 + 1  # the data set alone needs five
    assert all(len(pdu.encode()) - 6 <= 4096 for pdu in pdus)
    data = b"".join(v.data for pdu in pdus for v in pdu.pdvs if not v.is_command)
    assert data == b"x" * 20000


def test_artim_drops_a_silent_connection() -> None:
    peer = Peer()
    peer.clock.advance(default_config().timeouts.artim - 0.1)
    assert not peer.closed
    peer.clock.advance(0.2)
    assert peer.closed
    assert peer.received() == []


def test_idle_association_is_aborted() -> None:
    peer = Peer()
    peer.associate()
    idle = default_config().timeouts.network_idle
    peer.clock.advance(idle - 1)
    peer.send_command(1, echo_command())  # activity resets the timer
    peer.responses()
    peer.clock.advance(idle - 1)
    assert peer.received() == []
    peer.clock.advance(2)
    assert peer.received() == [AAbort(2, 0)]


def test_artim_after_an_idle_abort_drops_the_connection_whatever_is_unsent() -> None:
    """A peer that stopped reading leaves our A-ABORT behind the answers it did not take: a
    graceful close would wait for it for ever, holding the association and its work."""
    peer = Peer()
    peer.associate()
    peer.clock.advance(default_config().timeouts.network_idle + 1)
    assert peer.received() == [AAbort(2, 0)]
    assert not peer.transport.disconnected
    peer.clock.advance(default_config().timeouts.artim + 1)
    assert peer.transport.disconnected  # aborted, not waiting for the buffer to drain


def test_incomplete_data_set_hits_the_dimse_timeout() -> None:
    peer = Peer()
    peer.associate()
    command = Command(
        command_field=CommandField.C_FIND_RQ,
        message_id=1,
        affected_sop_class_uid=uids.VERIFICATION,
        command_data_set_type=0x0001,
    )
    peer.send(encode_pdata(1, 0x03, command.encode()))
    peer.clock.advance(default_config().timeouts.dimse + 1)
    assert peer.received() == [AAbort(2, 0)]


def test_peer_abort_closes() -> None:
    peer = Peer()
    peer.associate()
    peer.send(AAbort(0, 0).encode())
    assert peer.closed
    assert peer.protocol.user.ended.called


valid_pdus = st.sampled_from(
    [
        request().encode(),
        AReleaseRQ().encode(),
        AAbort(0, 0).encode(),
        encode_pdata(1, 3, echo_command().encode()),
    ]
)


@st.composite
def hostile_streams(draw: st.DrawFn) -> bytes:
    base = draw(valid_pdus)
    kind = draw(st.sampled_from(["random", "truncated", "mutated"]))
    if kind == "random":
        return draw(st.binary(min_size=1, max_size=300))
    if kind == "truncated":
        return base[: draw(st.integers(0, len(base) - 1))]
    at = draw(st.integers(0, len(base) - 1))
    return base[:at] + bytes([draw(st.integers(0, 255))]) + base[at + 1 :]


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(stream=hostile_streams(), split=st.integers(1, 64))
def test_hostile_bytes_never_raise_and_any_answer_is_a_valid_pdu(stream: bytes, split: int) -> None:
    peer = Peer()
    for start in range(0, len(stream), split):
        peer.send(stream[start : start + split])
    answers = peer.received()
    for answer in answers:
        assert isinstance(answer, (AAbort, AAssociateAC, AAssociateRJ))
    aborts = [a for a in answers if isinstance(a, AAbort)]
    if aborts:
        assert aborts[-1].source == 2
        peer.clock.advance(default_config().timeouts.artim + 1)
        assert peer.closed


# -- peer text that an answer would echo ------------------------------------------------------


def with_calling_ae(raw: bytes, calling: bytes) -> bytes:
    """An encoded A-ASSOCIATE-RQ whose Calling AE Title field (bytes 26-41) holds ``calling``."""
    return raw[:26] + calling.ljust(16, b" ") + raw[42:]


@pytest.mark.parametrize("calling", [b"ECH\xd6SCU", b"TAB\tBED", b"    "])
def test_a_calling_ae_title_that_cannot_be_echoed_is_rejected(calling: bytes) -> None:
    peer = Peer()
    peer.send(with_calling_ae(request().encode(), calling))
    assert peer.received() == [AAssociateRJ(1, 1, 3)]
    peer.clock.advance(default_config().timeouts.artim + 1)
    assert peer.closed


@pytest.mark.parametrize("max_length", [1, 7])
def test_a_maximum_length_no_pdv_fits_into_is_rejected(max_length: int) -> None:
    peer = Peer()
    peer.send(request(max_length=max_length).encode())
    assert peer.received() == [AAssociateRJ(1, 1, 1)]


def test_the_smallest_maximum_length_still_gets_its_echo_answered() -> None:
    peer = Peer()
    peer.associate(request(max_length=8))
    peer.send_command(1, Command(command_field=CommandField.C_ECHO_RQ, message_id=1,
                                 affected_sop_class_uid=uids.VERIFICATION))  # fmt: skip
    assert [(r.command_field, r.status) for r in peer.responses()] == [(0x8030, 0x0000)]


def test_a_rejected_context_whose_syntax_is_no_uid_gets_the_default_syntax() -> None:
    contexts = (
        PresentationContextRQ(1, uids.VERIFICATION, (IMPLICIT,)),
        PresentationContextRQ(3, "1.2.3.4", ("1.2.9",)),
    )
    peer = Peer()
    peer.send(request(contexts=contexts).encode().replace(b"1.2.9", b"1.2.\xff"))
    [ac] = peer.received()
    rejected = ac.presentation_contexts[1]
    assert (rejected.result, rejected.transfer_syntax) == (3, IMPLICIT)


def test_a_command_uid_that_cannot_be_echoed_aborts_with_invalid_parameter() -> None:
    peer = Peer()
    peer.associate()
    echo = Command(command_field=CommandField.C_ECHO_RQ, message_id=1,
                   affected_sop_class_uid="1.2.840.10008.1.1")  # fmt: skip
    encoded = echo.encode().replace(b"1.2.840.10008.1.1", b"1.2.840.10008.1.\xff")
    peer.send(encode_pdata(1, 0x03, encoded))
    assert peer.received() == [AAbort(AbortSource.SERVICE_PROVIDER, 6)]


def test_a_command_set_that_never_ends_is_aborted_at_the_limit() -> None:
    peer = Peer(bare_config(limits=dataclasses.replace(default_config().limits,
                                                       max_command_length=4096)))  # fmt: skip
    peer.associate()
    for _ in range(3):
        peer.send(encode_pdata(1, 0x01, b"\x00" * 1024))  # command fragments, none the last
    assert peer.received() == []
    peer.send(encode_pdata(1, 0x01, b"\x00" * 1026))
    assert peer.received() == [AAbort(AbortSource.SERVICE_PROVIDER, 6)]


def test_a_trickled_pdu_is_aborted_when_its_deadline_passes() -> None:
    peer = Peer()
    peer.associate()
    dimse = default_config().timeouts.dimse
    partial = encode_pdata(1, 0x03, b"\x00" * 1000)
    peer.send(partial[:10])
    for byte in range(10, 10 + int(dimse) - 1):  # a byte a second: the idle timer never fires
        peer.clock.advance(1)
        peer.send(partial[byte : byte + 1])
    assert peer.received() == []
    peer.clock.advance(1.5)
    assert peer.received() == [AAbort(AbortSource.SERVICE_PROVIDER, 0)]


def test_whole_pdus_never_start_the_deadline() -> None:
    peer = Peer()
    peer.associate()
    echo = Command(command_field=CommandField.C_ECHO_RQ, message_id=1,
                   affected_sop_class_uid=uids.VERIFICATION)  # fmt: skip
    for _ in range(3):
        peer.send_command(1, echo)
        peer.clock.advance(default_config().timeouts.dimse)
    assert [r.status for r in peer.responses()] == [0x0000, 0x0000, 0x0000]
    assert not peer.closed


def answer_from(factory: object, host: str, rq: AAssociateRQ) -> object:
    """The node's answer to ``rq`` on a new connection from ``host``."""
    transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
    protocol = factory.buildProtocol(transport.getPeer())  # type: ignore[attr-defined]
    protocol.makeConnection(transport)
    protocol.dataReceived(rq.encode())
    return decode(transport.value())


def limited(**changes: int) -> object:
    limits = dataclasses.replace(default_config().limits, max_associations=4, **changes)
    return node_factory(bare_config(limits=limits), clock=Clock())


def test_one_host_at_its_limit_leaves_room_for_another_host() -> None:
    factory = limited(max_associations_per_host=2)
    flood = [answer_from(factory, "10.0.0.1", request()) for _ in range(3)]
    assert [type(answer) for answer in flood] == [AAssociateAC, AAssociateAC, AAssociateRJ]
    assert flood[2] == AAssociateRJ(2, 3, 2)
    assert isinstance(answer_from(factory, "10.0.0.2", request()), AAssociateAC)


def test_one_calling_ae_at_its_limit_leaves_room_for_another() -> None:
    factory = limited(max_associations_per_calling_ae=1)
    assert isinstance(answer_from(factory, "10.0.0.1", request()), AAssociateAC)
    assert answer_from(factory, "10.0.0.2", request()) == AAssociateRJ(2, 3, 2)
    other = dataclasses.replace(request(), calling_ae_title="OTHERSCU")
    assert isinstance(answer_from(factory, "10.0.0.2", other), AAssociateAC)

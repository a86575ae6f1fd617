"""The requestor against our own acceptor, both in memory (twisted.test.iosim)."""

from __future__ import annotations

import dataclasses

import pytest
from twisted.internet.task import Clock
from twisted.test.iosim import FakeTransport, connect

from dicomd import uids
from dicomd.client import (
    AssociationAborted,
    AssociationRejected,
    ClientAssociation,
    ClientSettings,
    NoAcceptedContext,
    propose,
    requestor_protocol,
)
from dicomd.config import default_config
from dicomd.fsm import State
from dicomd.server import DicomServerFactory


def pair(settings: ClientSettings, contexts=None):
    clock = Clock()
    config = default_config()
    server = DicomServerFactory(config, reactor=clock).buildProtocol(None)
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
    with pytest.raises(NoAcceptedContext):
        association.echo()


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

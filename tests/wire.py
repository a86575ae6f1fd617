"""A node under test seen from the wire: an in-memory peer for protocol tests."""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterator
from functools import partial

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from dicomd import uids
from dicomd.app import node_factory
from dicomd.config import Config, default_config
from dicomd.dimse.command import Command
from dicomd.dimse.messages import MessageAssembler, cut, message_pdus
from dicomd.ul.pdu import (
    AAssociateAC,
    AAssociateRQ,
    PDataTF,
    PresentationContextRQ,
    UserInformation,
    decode,
)

IMPLICIT = uids.IMPLICIT_VR_LITTLE_ENDIAN
EXPLICIT = uids.EXPLICIT_VR_LITTLE_ENDIAN


def fragment(
    context_id: int, command: bytes, data: bytes | None, max_pdu_length: int
) -> Iterator[bytes]:
    """The P-DATA-TF PDUs that carry one DIMSE message whose data set is in memory, as the
    outbox sends them (`message_pdus`).

    ``max_pdu_length`` is the peer's maximum length received, the bound on
    each PDU's length field; 0 means no limit (data then leaves in pieces of
    ``UNLIMITED_PIECE``).  See `message_pdus`.
    """
    if data is None:
        return message_pdus(context_id, command, None, max_pdu_length)
    return message_pdus(context_id, command, partial(cut, data), max_pdu_length)


def request(
    called: str = "DICOMD",
    contexts: tuple[PresentationContextRQ, ...] = (
        PresentationContextRQ(1, uids.VERIFICATION, (IMPLICIT,)),
    ),
    max_length: int = 16384,
    **info: object,
) -> AAssociateRQ:
    return AAssociateRQ(called, "ECHOSCU", contexts, UserInformation(max_length=max_length, **info))


def bare_config(**changes: object) -> Config:
    """The default configuration without plugins: a node that serves Verification only."""
    return dataclasses.replace(default_config(), **{"plugins": (), **changes})


class Peer:
    """One connection to a node, seen from the wire."""

    def __init__(
        self,
        config: Config | None = None,
        host: str = "127.0.0.1",
        plugins: tuple[object, ...] = (),
    ) -> None:
        self.clock = Clock()
        self.factory = node_factory(config or bare_config(), plugins, clock=self.clock)
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
        self.protocol = self.factory.buildProtocol(self.transport.getPeer())
        self.protocol.makeConnection(self.transport)
        self.last_command: tuple[Command, bytes | None] | None = None

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def received(self) -> list[object]:
        """Decode and take every PDU the node wrote since the last call."""
        data = self.transport.value()
        self.transport.clear()
        pdus = []
        while data:
            (length,) = struct.unpack(">L", data[2:6])
            pdus.append(decode(data[: 6 + length]))
            data = data[6 + length :]
        return pdus

    def associate(self, rq: AAssociateRQ | None = None) -> AAssociateAC:
        self.send((rq or request()).encode())
        (ac,) = self.received()
        assert isinstance(ac, AAssociateAC)
        return ac

    def send_command(self, context_id: int, command: Command, data: bytes | None = None) -> None:
        for pdu in fragment(context_id, command.encode(), data, 16384):
            self.send(pdu)

    def responses(self) -> list[Command]:
        return [command for command, _ in self.messages()]

    def messages(self) -> list[tuple[Command, bytes | None]]:
        """Every DIMSE message the node sent since the last call: (command, data set bytes)."""
        assembler = MessageAssembler()
        messages: list[tuple[Command, bytes | None]] = []
        chunks: list[bytes] = []
        for pdu in self.received():
            assert isinstance(pdu, PDataTF), pdu
            for pdv in pdu.pdvs:
                for event in assembler.feed(pdv.context_id, pdv.control, pdv.data):
                    if hasattr(event, "command"):
                        messages.append((event.command, None))
                    else:
                        chunks.append(event.data)
                        if event.last:
                            messages[-1] = (messages[-1][0], b"".join(chunks))
                            chunks = []
        if messages:
            self.last_command = messages[-1]
        return messages

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting

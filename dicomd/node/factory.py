"""The acceptor node: a Twisted factory that turns connections into associations."""

from __future__ import annotations

import dataclasses

from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from dicomd.interfaces import (
    ACCEPT,
    REJECT_LOCAL_LIMIT,
    Accept,
    AssociationRequest,
    IAssociationValidator,
    Rejection,
)
from dicomd.node.acceptor import Acceptor, AcceptorSettings
from dicomd.ul.fsm import State
from dicomd.ul.protocol import UpperLayerProtocol

# States in which a connection holds, or is about to hold, an association.
_ASSOCIATED = frozenset(
    {
        State.STA3,
        State.STA6,
        State.STA7,
        State.STA8,
        State.STA9,
        State.STA10,
        State.STA11,
        State.STA12,
    }
)


class _NodeProtocol(UpperLayerProtocol):
    """An acceptor connection that keeps its factory's count of connections right."""

    factory: DicomServerFactory

    def connectionMade(self) -> None:
        self.factory.connections.add(self)
        super().connectionMade()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.connections.discard(self)
        super().connectionLost(reason)


@implementer(IAssociationValidator)
class ConcurrencyLimit:
    """Rejects associations beyond ``limit`` at once (transient, 3, 2).

    ``connections`` is the live set of the factory's connections; the request
    being validated is one of them.
    """

    def __init__(self, connections: set[UpperLayerProtocol], limit: int) -> None:
        self.connections = connections
        self.limit = limit

    def validate(self, request: AssociationRequest) -> Accept | Rejection:
        active = sum(1 for p in self.connections if p.machine.state in _ASSOCIATED)
        return REJECT_LOCAL_LIMIT if active > self.limit else ACCEPT


class DicomServerFactory(Factory):
    """Builds one acceptor protocol per connection, sharing the node's settings.

    ``settings`` is ready-made: the AE title, the services and the validators.
    Unless ``max_associations`` is None, a ``ConcurrencyLimit`` on this
    factory's connections is asked before those validators.  ``artim_timeout``
    and ``idle_timeout`` are the seconds of PS3.8's ARTIM timer and of a
    connection with no traffic.
    """

    log = Logger()

    def __init__(
        self,
        settings: AcceptorSettings,
        clock: IReactorTime,
        *,
        max_associations: int | None,
        artim_timeout: float,
        idle_timeout: float,
    ) -> None:
        self.clock = clock
        self.artim_timeout = artim_timeout
        self.idle_timeout = idle_timeout
        self.connections: set[UpperLayerProtocol] = set()
        if max_associations is not None:
            limit = ConcurrencyLimit(self.connections, max_associations)
            settings = dataclasses.replace(settings, validators=(limit, *settings.validators))
        self.settings = settings

    def buildProtocol(self, addr: IAddress) -> UpperLayerProtocol:
        protocol = _NodeProtocol(
            lambda p: Acceptor(self.settings, p),
            self.clock,
            requestor=False,
            max_pdu_length=self.settings.max_pdu_length,
            artim_timeout=self.artim_timeout,
            idle_timeout=self.idle_timeout,
            pdu_timeout=self.settings.dimse_timeout,
        )
        protocol.factory = self
        return protocol

"""The acceptor node: a Twisted factory that turns connections into associations."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from dicomd import metrics
from dicomd.interfaces import (
    ACCEPT,
    REJECT_LOCAL_LIMIT,
    Accept,
    AssociationRequest,
    IAssociationValidator,
    Rejection,
)
from dicomd.node.acceptor import Acceptor, AcceptorSettings
from dicomd.node.auditing import AssociationAudit
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
        admission = self.factory.admission
        if admission is not None:
            admission.left(self.user.peer_host, self.user.peer_port)
        trail = self.factory.settings.audit
        if self.tls_failure is not None and trail is not None and trail.enabled:
            AssociationAudit(trail, self.user.peer_host).tls_refused(self.tls_failure)


@dataclass(frozen=True, slots=True)
class AssociationLimits:
    """How many associations the node holds at once: in all, from one host, for one calling AE.

    The per-host and per-AE limits lie below the total, so that a few peers
    that associate and idle cannot lock every other peer out.
    """

    total: int
    per_host: int
    per_calling_ae: int


class Admission(Protocol):
    """Limits held somewhere else (the parent of worker processes): it validates each
    association first, and hears when one ends."""

    def validate(self, request: AssociationRequest) -> Deferred[Accept | Rejection]: ...

    def left(self, host: str, port: int) -> None: ...


@implementer(IAssociationValidator)
class ConcurrencyLimit:
    """Rejects an association beyond one of ``limits`` (transient: result 2, source 3, reason 2).

    ``connections`` is the live set of the factory's connections; the request
    being validated is one of them.
    """

    def __init__(self, connections: set[UpperLayerProtocol], limits: AssociationLimits) -> None:
        self.connections = connections
        self.limits = limits

    def validate(self, request: AssociationRequest) -> Accept | Rejection:
        held: list[Acceptor] = [
            p.user  # type: ignore[misc]
            for p in self.connections
            if p.machine.state in _ASSOCIATED
        ]
        passed = limit_passed(
            self.limits,
            [(a.peer_host, a.calling_ae_title) for a in held],
            request.peer_host,
            request.calling_ae_title,
        )
        if passed is None:
            return ACCEPT
        metrics.limit_hit(passed.limit)
        return _over(passed.message)


class PassedLimit(NamedTuple):
    """The limit an association would go past: its configuration key, and why in words."""

    limit: str
    message: str


def limit_passed(
    limits: AssociationLimits, held: Sequence[tuple[str, str]], host: str, calling: str
) -> PassedLimit | None:
    """The first of ``limits`` that the associations ``held`` (host, calling AE title), the
    one being decided among them, go past; None when they keep to all three."""
    if len(held) > limits.total:
        return PassedLimit("max_associations", f"more than {limits.total} associations")
    if sum(1 for peer, _ in held if peer == host) > limits.per_host:
        return PassedLimit(
            "max_associations_per_host", f"more than {limits.per_host} associations from {host}"
        )
    if sum(1 for _, title in held if title == calling) > limits.per_calling_ae:
        return PassedLimit(
            "max_associations_per_calling_ae",
            f"more than {limits.per_calling_ae} associations for {calling}",
        )
    return None


def _over(what: str) -> Rejection:
    return dataclasses.replace(REJECT_LOCAL_LIMIT, message=f"local limit exceeded: {what}")


class DicomServerFactory(Factory):
    """Builds one acceptor protocol per connection, sharing the node's settings.

    ``settings`` is ready-made: the AE title, the services and the validators.
    Unless ``limits`` is None, a ``ConcurrencyLimit`` on this factory's
    connections is asked before those validators; an ``admission`` is asked
    instead, when the limits are held across processes.  ``artim_timeout``
    and ``idle_timeout`` are the seconds of PS3.8's ARTIM timer and of a
    connection with no traffic.
    """

    log = Logger()

    def __init__(
        self,
        settings: AcceptorSettings,
        clock: IReactorTime,
        *,
        limits: AssociationLimits | None,
        artim_timeout: float,
        idle_timeout: float,
        admission: Admission | None = None,
    ) -> None:
        self.clock = clock
        self.artim_timeout = artim_timeout
        self.idle_timeout = idle_timeout
        self.connections: set[UpperLayerProtocol] = set()
        self.admission = admission
        first: IAssociationValidator | Admission | None = admission
        if first is None and limits is not None:
            first = ConcurrencyLimit(self.connections, limits)
        if first is not None:
            settings = dataclasses.replace(settings, validators=(first, *settings.validators))
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

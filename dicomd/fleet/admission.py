"""The node's association limits, held across its worker processes.

Each worker asks the parent before it accepts an association (`Admit`) and
tells it when one ends (`Leave`); the parent counts every worker's
associations in one `Admissions` and answers with the same rules a single
process applies (`dicomd.node.factory.ConcurrencyLimit`): in all, from one
host, for one calling AE.  The question goes over an AMP connection the
parent made for each worker; it costs a local round trip per association,
not per message.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.protocols import amp
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
from dicomd.node.factory import AssociationLimits


class Admit(amp.Command):
    """May the worker accept this association?  An empty refusal means yes."""

    arguments = [  # noqa: RUF012 (the attribute AMP reads)
        (b"key", amp.Unicode()),
        (b"host", amp.Unicode()),
        (b"calling", amp.Unicode()),
    ]
    response = [(b"refusal", amp.Unicode())]  # noqa: RUF012


class Leave(amp.Command):
    """The association admitted under ``key`` has ended."""

    arguments = [(b"key", amp.Unicode())]  # noqa: RUF012
    response = []  # noqa: RUF012
    requiresAnswer = False


@dataclass(frozen=True, slots=True)
class _Held:
    host: str
    calling: str


class Admissions:
    """Every worker's associations, counted against ``limits``; the parent's book."""

    def __init__(self, limits: AssociationLimits) -> None:
        self.limits = limits
        self._held: dict[tuple[int, str], _Held] = {}

    def admit(self, worker: int, key: str, host: str, calling: str) -> str:
        """Admit and count the association, or say which limit it would pass ("" = admitted)."""
        held = self._held.values()
        limits = self.limits
        if len(self._held) >= limits.total:
            return f"more than {limits.total} associations"
        if sum(1 for h in held if h.host == host) >= limits.per_host:
            return f"more than {limits.per_host} associations from {host}"
        if sum(1 for h in held if h.calling == calling) >= limits.per_calling_ae:
            return f"more than {limits.per_calling_ae} associations for {calling}"
        self._held[(worker, key)] = _Held(host, calling)
        return ""

    def leave(self, worker: int, key: str) -> None:
        self._held.pop((worker, key), None)

    def forget(self, worker: int) -> None:
        """A worker that ended took its associations with it."""
        for held in [held for held in self._held if held[0] == worker]:
            del self._held[held]

    def held(self) -> int:
        return len(self._held)


class AdmissionServer(amp.AMP):
    """The parent's end of one worker's control connection."""

    def __init__(self, admissions: Admissions, worker: int) -> None:
        super().__init__()
        self.admissions = admissions
        self.worker = worker

    @Admit.responder
    def admit(self, key: str, host: str, calling: str) -> dict[str, str]:
        return {"refusal": self.admissions.admit(self.worker, key, host, calling)}

    @Leave.responder
    def leave(self, key: str) -> dict[str, Any]:
        self.admissions.leave(self.worker, key)
        return {}

    def connectionLost(self, reason: Failure) -> None:
        self.admissions.forget(self.worker)
        super().connectionLost(reason)


@implementer(IAssociationValidator)
class SharedLimit:
    """A worker's validator: the parent decides, from every worker's associations.

    ``control`` is the worker's AMP connection to the parent.  An association
    is known by its peer's host and port while it lasts; `left` tells the
    parent it ended.  With the parent gone, nothing more is admitted.
    """

    log = Logger()

    def __init__(self, control: amp.AMP) -> None:
        self.control = control
        self._admitted: set[str] = set()

    def validate(self, request: AssociationRequest) -> defer.Deferred[Accept | Rejection]:
        key = f"{request.peer_host}:{request.peer_port}"
        d = self.control.callRemote(
            Admit, key=key, host=request.peer_host, calling=request.calling_ae_title
        )

        def answered(response: dict[str, str]) -> Accept | Rejection:
            refusal = response["refusal"]
            if refusal:
                return dataclasses.replace(
                    REJECT_LOCAL_LIMIT, message=f"local limit exceeded: {refusal}"
                )
            self._admitted.add(key)
            return ACCEPT

        def unreachable(failure: Failure) -> Rejection:
            self.log.warn("the node's parent process did not answer: {why}", why=failure.value)
            return dataclasses.replace(
                REJECT_LOCAL_LIMIT, message="local limit exceeded: the parent is gone"
            )

        return d.addCallbacks(answered, unreachable)

    def left(self, host: str, port: int) -> None:
        """The connection from ``host``:``port`` ended; release its admission if it had one."""
        key = f"{host}:{port}"
        if key in self._admitted:
            self._admitted.discard(key)
            self.control.callRemote(Leave, key=key)

"""The node's association limits, held across its worker processes.

Each worker asks the parent before it accepts an association (`Admit`) and
tells it when one ends (`Leave`); the parent counts every worker's
associations in one `Admissions` and answers with the same rules a single
process applies (`dicomd.node.factory.ConcurrencyLimit`): in all, from one
host, for one calling AE.  Likewise a worker takes a turn from the parent
before it opens an association to a C-MOVE destination with
``max_associations`` (`TakeTurn`), and gives it back when that ends
(`GiveTurn`).  The questions go over an AMP connection the parent made for
each worker; they cost a local round trip per association, not per message.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Final

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.protocols import amp
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
from dicomd.node.factory import AssociationLimits, PassedLimit, limit_passed

ADMIT_DEADLINE: Final = 10.0
"""Seconds a worker waits for the parent's decision on an association before it refuses it."""


class Admit(amp.Command):
    """May the worker accept this association?  An empty refusal means yes."""

    arguments = [  # noqa: RUF012 (the attribute AMP reads)
        (b"key", amp.Unicode()),
        (b"host", amp.Unicode()),
        (b"calling", amp.Unicode()),
    ]
    response = [(b"refusal", amp.Unicode()), (b"limit", amp.Unicode())]  # noqa: RUF012
    """``limit``: the configuration key of the limit a refusal is for."""


class Leave(amp.Command):
    """The association admitted under ``key`` has ended."""

    arguments = [(b"key", amp.Unicode())]  # noqa: RUF012
    response = []  # noqa: RUF012
    requiresAnswer = False


class TakeTurn(amp.Command):
    """Answered once the worker may open an association to ``destination``."""

    arguments = [(b"destination", amp.Unicode()), (b"most", amp.Integer())]  # noqa: RUF012
    response = []  # noqa: RUF012


class GiveTurn(amp.Command):
    """The worker's association to ``destination`` has ended."""

    arguments = [(b"destination", amp.Unicode())]  # noqa: RUF012
    response = []  # noqa: RUF012
    requiresAnswer = False


class DestinationTurns:
    """Every worker's associations to each destination, at most its ``max_associations``.

    A worker is known here, as in `Admissions`, by a number the parent never gives again
    (a replaced worker's turns are not its replacement's).
    """

    def __init__(self) -> None:
        self._semaphores: dict[str, defer.DeferredSemaphore] = {}
        self._held: dict[tuple[int, str], int] = {}
        self._gone: set[int] = set()

    def take(self, worker: int, destination: str, most: int) -> defer.Deferred[None]:
        semaphore = self._semaphores.setdefault(destination, defer.DeferredSemaphore(most))

        def granted(_: object) -> None:
            if worker in self._gone:  # it ended while it waited: the turn goes on at once
                semaphore.release()
                return
            key = (worker, destination)
            self._held[key] = self._held.get(key, 0) + 1

        return semaphore.acquire().addCallback(granted)

    def give(self, worker: int, destination: str) -> None:
        key = (worker, destination)
        if self._held.get(key, 0) > 0:
            self._held[key] -= 1
            self._semaphores[destination].release()

    def forget(self, worker: int) -> None:
        """A worker that ended gives back every turn it held, and any it waits for."""
        self._gone.add(worker)
        for (holder, destination), count in list(self._held.items()):
            if holder == worker:
                del self._held[(holder, destination)]
                for _ in range(count):
                    self._semaphores[destination].release()

    def held(self, destination: str) -> int:
        return sum(count for (_, name), count in self._held.items() if name == destination)


@dataclass(frozen=True, slots=True)
class _Held:
    host: str
    calling: str


class Admissions:
    """Every worker's associations, counted against ``limits``; the parent's book."""

    def __init__(self, limits: AssociationLimits) -> None:
        self.limits = limits
        self._held: dict[tuple[int, str], _Held] = {}

    def admit(self, worker: int, key: str, host: str, calling: str) -> PassedLimit | None:
        """Admit and count the association (None), or say which limit it would pass: the
        rules of a daemon of one process (`limit_passed`)."""
        held = [(h.host, h.calling) for h in self._held.values()]
        passed = limit_passed(self.limits, [*held, (host, calling)], host, calling)
        if passed is not None:
            return passed
        self._held[(worker, key)] = _Held(host, calling)
        return None

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

    def __init__(self, admissions: Admissions, turns: DestinationTurns, worker: int) -> None:
        super().__init__()
        self.admissions = admissions
        self.turns = turns
        self.worker = worker

    @TakeTurn.responder
    def take_turn(self, destination: str, most: int) -> defer.Deferred[dict[str, Any]]:
        return self.turns.take(self.worker, destination, most).addCallback(lambda _: {})

    @GiveTurn.responder
    def give_turn(self, destination: str) -> dict[str, Any]:
        self.turns.give(self.worker, destination)
        return {}

    @Admit.responder
    def admit(self, key: str, host: str, calling: str) -> dict[str, str]:
        passed = self.admissions.admit(self.worker, key, host, calling)
        if passed is None:
            return {"refusal": "", "limit": ""}
        return {"refusal": passed.message, "limit": passed.limit}

    @Leave.responder
    def leave(self, key: str) -> dict[str, Any]:
        self.admissions.leave(self.worker, key)
        return {}

    def connectionLost(self, reason: Failure) -> None:
        self.admissions.forget(self.worker)
        self.turns.forget(self.worker)
        super().connectionLost(reason)


@implementer(IAssociationValidator)
class SharedLimit:
    """A worker's validator: the parent decides, from every worker's associations.

    ``control`` is the worker's AMP connection to the parent.  An association
    is known by its peer's host and port while it lasts; `left` tells the
    parent it ended.  A connection may end while the parent decides (a peer
    that sends its request and resets): its admission, when it comes, is
    given back at once, or the parent would count it for ever.  With the
    parent gone, or silent for `ADMIT_DEADLINE` seconds (stopped, stalled),
    nothing is admitted: connections would otherwise wait on it, unlimited.
    """

    log = Logger()

    def __init__(self, control: amp.AMP, clock: IReactorTime) -> None:
        self.control = control
        self.clock = clock
        self._deciding: set[str] = set()
        self._admitted: set[str] = set()

    def validate(self, request: AssociationRequest) -> defer.Deferred[Accept | Rejection]:
        key = f"{request.peer_host}:{request.peer_port}"
        self._deciding.add(key)
        d = self.control.callRemote(
            Admit, key=key, host=request.peer_host, calling=request.calling_ae_title
        )
        d.addTimeout(ADMIT_DEADLINE, self.clock)

        def answered(response: dict[str, str]) -> Accept | Rejection:
            still_connected = key in self._deciding
            self._deciding.discard(key)
            refusal = response["refusal"]
            if refusal:
                metrics.limit_hit(response["limit"])
                return _refused(refusal)
            if not still_connected:
                self.control.callRemote(Leave, key=key)
                return _refused("the peer left while it was decided")
            self._admitted.add(key)
            return ACCEPT

        def unreachable(failure: Failure) -> Rejection:
            self._deciding.discard(key)
            if failure.check(defer.TimeoutError):
                # should the parent admit it after all, it hears this after that
                self.control.callRemote(Leave, key=key)
                self.log.warn(
                    "the node's parent process did not decide within {seconds:.0f} s;"
                    " {calling} at {key} refused",
                    seconds=ADMIT_DEADLINE,
                    calling=request.calling_ae_title,
                    key=key,
                )
                return _refused("the parent did not answer in time")
            self.log.warn("the node's parent process did not answer: {why}", why=failure.value)
            return _refused("the parent is gone")

        return d.addCallbacks(answered, unreachable)

    def left(self, host: str, port: int) -> None:
        """The connection from ``host``:``port`` ended; release its admission if it had one."""
        key = f"{host}:{port}"
        self._deciding.discard(key)
        if key in self._admitted:
            self._admitted.discard(key)
            self.control.callRemote(Leave, key=key)


def _refused(why: str) -> Rejection:
    return dataclasses.replace(REJECT_LOCAL_LIMIT, message=f"local limit exceeded: {why}")


class SharedTurns:
    """A destination's turns in a worker: the parent keeps them for every worker."""

    def __init__(self, control: amp.AMP, destination: str, most: int) -> None:
        self.control = control
        self.destination = destination
        self.most = most

    def acquire(self) -> defer.Deferred[object]:
        return self.control.callRemote(TakeTurn, destination=self.destination, most=self.most)

    def release(self) -> None:
        self.control.callRemote(GiveTurn, destination=self.destination)

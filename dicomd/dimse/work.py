"""Where work that takes more than a few milliseconds runs: never on the reactor thread.

Converting an instance to another transfer syntax, reading a whole data set
into memory or parsing a large identifier can take seconds; done in the
reactor thread it would stall every association of the node.  An association
hands such work to its `Worker`, which answers with a Deferred.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from twisted.internet import defer
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool

_T = TypeVar("_T")


class Worker(Protocol):
    """Runs a blocking function somewhere that does not hold up the reactor."""

    def run(self, function: Callable[..., _T], *args: Any) -> defer.Deferred[_T]: ...


class ThreadWorker:
    """Runs the work in the reactor's thread pool."""

    def __init__(self, reactor: IReactorThreads) -> None:
        self.reactor = reactor

    def run(self, function: Callable[..., _T], *args: Any) -> defer.Deferred[_T]:
        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), function, *args)


class InlineWorker:
    """Runs the work at once, in the caller's thread: for a reactor without threads.

    `twisted.internet.task.Clock` and the in-memory nodes of `dicomd.testing`
    have no thread pool; their tests drive the protocol step by step and want
    the work done when they advance.
    """

    def run(self, function: Callable[..., _T], *args: Any) -> defer.Deferred[_T]:
        return defer.maybeDeferred(function, *args)


def worker_for(reactor: object) -> Worker:
    """The reactor's thread pool when it has one, else the work inline."""
    if IReactorThreads.providedBy(reactor):
        return ThreadWorker(reactor)  # type: ignore[arg-type]
    return InlineWorker()

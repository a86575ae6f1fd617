"""The archive's C-FIND matches as the find service takes them: an async iterator over pages.

`ArchiveQuery.pages` reads a query's matches a page at a time, blocking;
this is its reactor side.  Each page is read in the archive's threads, one
read of a query at a time, and the next page is read while the service sends
this one, so a query holds two pages at most however many entities match,
and a peer that does not read its answers has no more read for it.

A query's read of the index ends as soon as its last page is read, or when
its iteration is closed (``aclose``: the find service closes it when the peer
cancels or leaves), or when the archive stops.  While the peer is slow to
take its answers, the read lets go of its snapshot of the index once it has
held it `SNAPSHOT_SECONDS` (the next page starts a new read where it left),
so that a slow peer never holds back the index's checkpoints for longer.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from pydicom import Dataset
from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from dicomd.archive.query import FindPages
from dicomd.interfaces import IAnswerEncoder, IEncodedMatches, Unavailable

_T = TypeVar("_T")

InThreads = Callable[..., Deferred[Any]]
"""Runs a blocking call in the archive's threads: ``(function, *args) -> Deferred``; raises
`NotRunning` when the archive is not running."""


class NotRunning(Unavailable):
    """The archive is not running (not yet, or no longer): it takes no work, and when it
    stops it closes every query's read itself."""


Match = Dataset | bytes
"""A match as a Dataset, or as the bytes of its answer (`PagedMatches.encoded`)."""


@implementer(IEncodedMatches)
class PagedMatches:
    """The matches of one query, for ``async for``; ``aclose`` ends the read early.

    For the reactor thread.  ``in_threads`` runs the blocking page reads;
    ``clock`` times how long a read keeps its snapshot.  The matches are
    Datasets, or with an ``encoder`` the answers it encodes of them, made in
    the archive's threads as each page is read (`encoded`).
    """

    log = Logger()

    def __init__(
        self,
        pages: FindPages,
        in_threads: InThreads,
        clock: IReactorTime,
        encoder: IAnswerEncoder | None = None,
    ) -> None:
        self.pages = pages
        self._in_threads = in_threads
        self._clock = clock
        self._encoder = encoder
        self._one_at_a_time = DeferredLock()
        self._matches: deque[Match] = deque()
        self._next_page: Deferred[list[Match]] | None = None
        self._letting_go: IDelayedCall | None = None
        self._closed = False

    def encoded(self, encoder: IAnswerEncoder) -> PagedMatches:
        """The same matches, as ``encoder`` encodes them (``IEncodedMatches``); for a query
        whose reading has not begun, which is then read only through what this answers."""
        if self.pages.read or self._next_page is not None:
            raise RuntimeError("the matches are being read already")
        return PagedMatches(self.pages, self._in_threads, self._clock, encoder)

    def __aiter__(self) -> PagedMatches:
        return self

    async def __anext__(self) -> Match:
        if not self._matches:
            if self._closed or (self._next_page is None and self.pages.done):
                raise StopAsyncIteration
            if self._next_page is None:
                self._next_page = self._read_page()
            page = await self._next_page
            self._next_page = None
            if not page:
                raise StopAsyncIteration
            self._matches.extend(page)
            if not self.pages.done:
                self._next_page = self._read_page()  # while this page goes out
        return self._matches.popleft()

    async def aclose(self) -> None:
        """End the read: drop the matches not taken, end the query's statement and
        hand its connection back once any page being read is read.  Never fails."""
        if self._closed:
            return
        self._closed = True
        self._matches.clear()
        self._stop_letting_go()
        if self._next_page is not None:
            self._next_page.addErrback(lambda _: None)  # nobody wants that page now
            self._next_page = None
        if self.pages.closed:
            return
        try:
            await self._serially(self.pages.close)
        except NotRunning:
            pass  # the archive is stopping: it closes the read once its threads are done
        except Exception:
            self.log.failure("could not close a query's read of the index")

    def _read_page(self) -> Deferred[list[Match]]:
        reading = self._serially(_read_and_close_when_done, self.pages, self._encoder)
        reading.addCallback(self._after_page)
        return reading

    def _after_page(self, page: list[Match]) -> list[Match]:
        """A page was read: its read may keep its snapshot only so long."""
        self._stop_letting_go()
        left = self.pages.snapshot_left()
        if left is not None and not self._closed:
            snapshot = self.pages.snapshots
            self._letting_go = self._clock.callLater(left, self._let_go, snapshot)
        return page

    def _let_go(self, snapshot: int) -> None:
        self._letting_go = None
        releasing = self._serially(self.pages.release, snapshot)
        releasing.addErrback(self._not_released)

    def _not_released(self, failure: Failure) -> None:
        if not failure.check(NotRunning):  # else the archive is stopping: it closes the read
            self.log.failure("could not end a query's read of the index", failure)

    def _stop_letting_go(self) -> None:
        if self._letting_go is not None and self._letting_go.active():
            self._letting_go.cancel()
        self._letting_go = None

    def _serially(self, function: Callable[..., _T], *args: Any) -> Deferred[_T]:
        """``function`` in the archive's threads once the query's previous call has ended."""
        return self._one_at_a_time.run(self._in_threads, function, *args)


def _read_and_close_when_done(pages: FindPages, encoder: IAnswerEncoder | None) -> list[Match]:
    """Blocking: the next page; the query hands its connection back as soon as the last is read."""
    page = pages.page(encoder)
    if pages.done:
        pages.close()
    return page

"""A C-FIND's matches read from the archive index a page at a time (`FindPages`): the pages,
the connection of its own a query reads on and when it is handed back, and the snapshot a read
holds and lets go.  The tests that take the ``index`` fixture and no SQLite file run against
PostgreSQL too (tests/e2e/test_postgres_find_paging.py).

How the archive serves these pages on the reactor is in test_archive_service.py.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from pathlib import Path

import pytest
from pydicom import Dataset
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThreadPool
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.trial import unittest

from dicomd.archive import ArchiveHandler
from dicomd.archive.dialects import dialect_of
from dicomd.archive.index import ArchiveIndex
from dicomd.archive.matches import NotRunning, PagedMatches
from dicomd.archive.query import IDLE_READERS, ArchiveQuery, FindPages, QueryClosed
from dicomd.dimse.datasets import decode_dataset
from dicomd.interfaces import FindQuery
from dicomd.node.services.answers import AnswerForm
from dicomd.testing import MemoryNode
from dicomd.uids import EXPLICIT_VR_LITTLE_ENDIAN, STUDY_ROOT_FIND, VERIFICATION
from tests.support.archive import LargeIndex, is_closed
from tests.test_archive_service import until

LARGE = LargeIndex(studies=2, series_per_study=2, instances_per_series=50, patients=1)
PAGE = 64


@pytest.fixture
def index(tmp_path: Path) -> Iterator[ArchiveIndex]:
    index = ArchiveIndex(tmp_path / "index.sqlite")
    index.open()
    LARGE.write(index)
    yield index
    index.close()


class Connections:
    """``ArchiveIndex.connect_reader``, keeping every connection it opened."""

    def __init__(self, index: ArchiveIndex) -> None:
        self.index = index
        self.opened: list[sqlite3.Connection] = []

    def __call__(self) -> sqlite3.Connection:
        connection = self.index.connect_reader()
        self.opened.append(connection)
        return connection


def every_image() -> FindQuery:
    """A relational IMAGE query naming no key: every instance of the archive."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE"
    identifier.SOPInstanceUID = ""
    return FindQuery(
        identifier, STUDY_ROOT_FIND, "IMAGE", "FINDSCU", "DICOMD", "127.0.0.1", relational=True
    )


def reads_to_the_end(page_rows: int) -> int:
    """How many pages it takes to read every match and learn that there are no more."""
    return LARGE.instances // page_rows + 1


def read_all(pages: FindPages) -> list[list[Dataset]]:
    return list(iter(pages.page, []))


def uids(matches: list[Dataset]) -> list[str]:
    return [match.SOPInstanceUID for match in matches]


def checkpoint(index: ArchiveIndex) -> tuple[int, int]:
    """A passive checkpoint of the WAL: (frames in it, frames copied into the database)."""
    connection = sqlite3.connect(index.path)
    try:
        _busy, logged, copied = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    finally:
        connection.close()
    return logged, copied


def write_something(index: ArchiveIndex) -> None:
    connection = sqlite3.connect(index.path, isolation_level=None)
    try:
        connection.execute("UPDATE patients SET PatientSex = 'F'")  # 'O' before: a change
    finally:
        connection.close()


def test_more_matches_than_a_page_come_a_page_at_a_time_as_find_has_them(
    index: ArchiveIndex,
) -> None:
    connections = Connections(index)
    query = ArchiveQuery(connections, page_rows=PAGE)
    whole = ArchiveQuery(index.connect_reader, page_rows=LARGE.instances + 1)

    pages = query.pages(every_image())
    read = read_all(pages)

    assert [len(page) for page in read] == [64, 64, 64, 8]
    assert uids([match for page in read for match in page]) == uids(whole.find(every_image()))
    assert (pages.done, pages.read, pages.snapshots) == (True, LARGE.instances, 1)
    assert pages.page() == []
    [connection] = connections.opened
    assert query.idle_connections == 0  # the read is over; close hands the connection back
    pages.close()
    assert (query.idle_connections, is_closed(connection)) == (1, False)
    query.close()
    whole.close()
    assert is_closed(connection)


def test_closing_before_the_last_page_ends_the_read_and_keeps_its_connection_for_the_next(
    index: ArchiveIndex,
) -> None:
    connections = Connections(index)
    query = ArchiveQuery(connections, page_rows=PAGE)
    pages = query.pages(every_image())
    assert len(pages.page()) == PAGE

    pages.close()
    pages.close()

    [connection] = connections.opened
    assert dialect_of(connection).is_idle(connection)  # no snapshot held
    assert query.idle_connections == 1
    with pytest.raises(QueryClosed):
        pages.page()
    assert pages.read == PAGE
    again = query.pages(every_image())
    assert len(again.page()) == PAGE
    assert (connections.opened, query.idle_connections) == ([connection], 0)
    query.close()
    assert is_closed(connection)


def test_an_engine_keeps_a_few_connections_of_ended_reads(index: ArchiveIndex) -> None:
    connections = Connections(index)
    query = ArchiveQuery(connections, page_rows=PAGE)
    reads = [query.pages(every_image()) for _ in range(IDLE_READERS + 2)]
    for pages in reads:
        pages.close()
    assert query.idle_connections == IDLE_READERS
    assert sum(is_closed(connection) for connection in connections.opened) == 2
    query.close()
    assert all(is_closed(connection) for connection in connections.opened)


def test_each_query_reads_on_a_connection_of_its_own_closed_with_the_engine(
    index: ArchiveIndex,
) -> None:
    connections = Connections(index)
    query = ArchiveQuery(connections, page_rows=PAGE)
    first, second = query.pages(every_image()), query.pages(every_image())
    first.page()
    second.page()
    assert len(connections.opened) == 2

    query.close()

    assert all(is_closed(connection) for connection in connections.opened)
    assert first.closed and second.closed


def test_an_identifier_that_does_not_fit_opens_no_connection(index: ArchiveIndex) -> None:
    connections = Connections(index)
    query = ArchiveQuery(connections)
    hierarchical = every_image()
    hierarchical = FindQuery(
        hierarchical.identifier,
        hierarchical.model,
        hierarchical.level,
        "FINDSCU",
        "DICOMD",
        "127.0.0.1",
    )
    with pytest.raises(ValueError, match="needs SeriesInstanceUID"):
        query.pages(hierarchical)
    assert connections.opened == []


def test_a_read_holds_back_the_checkpoint_until_it_lets_go_of_its_snapshot(
    index: ArchiveIndex,
) -> None:
    query = ArchiveQuery(index.connect_reader, page_rows=PAGE)
    pages = query.pages(every_image())
    first = pages.page()
    write_something(index)

    logged, copied = checkpoint(index)
    assert copied < logged  # the frames written since the read began stay in the WAL

    pages.release(pages.snapshots)
    assert pages.snapshot_left() is None
    logged, copied = checkpoint(index)
    assert copied == logged

    rest = [match for page in read_all(pages) for match in page]
    assert pages.snapshots == 2  # the rest was read by a new statement
    assert uids(first + rest) == uids(query.find(every_image()))
    assert {match.PatientSex for match in rest} == {"F"}  # as the index is now
    query.close()


def test_a_release_of_a_snapshot_already_gone_ends_nothing(index: ArchiveIndex) -> None:
    query = ArchiveQuery(index.connect_reader, page_rows=PAGE, snapshot_seconds=0)
    pages = query.pages(every_image())
    pages.page()
    pages.page()  # its snapshot had expired: a second statement read this page
    assert pages.snapshots == 2

    pages.release(1)

    assert pages.snapshot_left() is not None
    query.close()


@pytest.mark.parametrize("page_rows", [1, 7, PAGE])
def test_a_read_whose_snapshot_expires_at_each_page_resumes_after_the_last_match(
    index: ArchiveIndex, page_rows: int
) -> None:
    query = ArchiveQuery(index.connect_reader, page_rows=page_rows, snapshot_seconds=0)
    pages = query.pages(every_image())
    read = read_all(pages)

    assert pages.snapshots == reads_to_the_end(page_rows)  # a statement a page
    matches = [match for page in read for match in page]
    assert matches == ArchiveQuery(index.connect_reader).find(every_image())
    query.close()


def test_find_reads_through_the_same_pages_on_the_thread_s_connection(
    index: ArchiveIndex,
) -> None:
    statements: list[str] = []

    def connect() -> sqlite3.Connection:
        connection = index.connect_reader()
        connection.set_trace_callback(statements.append)
        return connection

    tracing: Callable[[], sqlite3.Connection] = connect
    query = ArchiveQuery(tracing, page_rows=7, snapshot_seconds=0)
    assert len(query.find(every_image())) == LARGE.instances
    assert len(statements) == reads_to_the_end(7)  # a statement a page
    query.close()


# On the reactor: the archive's pages as the find service takes them (`PagedMatches`).

SERIES = LargeIndex(studies=1, series_per_study=1, instances_per_series=300, patients=1)
SERIES_UID = "1.2.826.0.1.0.0"


def in_series() -> FindQuery:
    """A hierarchical IMAGE query: every instance of the one series of ``SERIES``."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE"
    identifier.SeriesInstanceUID = SERIES_UID
    identifier.SOPInstanceUID = ""
    return FindQuery(identifier, STUDY_ROOT_FIND, "IMAGE", "FINDSCU", "DICOMD", "127.0.0.1")


async def take(matches: AsyncIterator[Dataset], count: int | None = None) -> list[Dataset]:
    """The next ``count`` matches, or all that are left."""
    taken: list[Dataset] = []
    async for match in matches:
        taken.append(match)
        if len(taken) == count:
            break
    return taken


def pumped_until(node: MemoryNode, condition: Callable[[], bool]) -> Deferred[None]:
    """Move the node's bytes on every turn of the reactor until ``condition`` holds."""

    def pumped() -> bool:
        node.flush()
        return condition()

    return until(pumped)


def archive_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if "dicomd-archive" in thread.name]


class RecordingQuery(ArchiveQuery):
    """The archive's query engine, keeping the reads it opened, so that a test can wait
    for one to be closed (``FindPages.closed``) before it looks at its connection."""

    def __init__(self, connect: Connections, page_rows: int) -> None:
        super().__init__(connect, page_rows=page_rows)
        self.opened: list[FindPages] = []

    def pages(self, query: FindQuery) -> FindPages:
        pages = super().pages(query)
        self.opened.append(pages)
        return pages


class PagedMatchesTests(unittest.TestCase):
    """The archive handler started on the real reactor, its index holding one series of
    300 instances, read 64 at a time."""

    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.folder)
        self.handler = ArchiveHandler(self.folder / "archive", threads=1, reactor=reactor)
        self.handler.startService()
        self.addCleanup(lambda: self.handler.stopService() if self.handler.running else None)
        SERIES.write(self.handler.index)
        self.connections = Connections(self.handler.index)
        self.query = RecordingQuery(self.connections, page_rows=PAGE)
        self.handler.query = self.query
        self.expected = uids(ArchiveQuery(self.handler.index.connect_reader).find(in_series()))

    def connection(self) -> sqlite3.Connection:
        """The first connection the archive opened: the first find's own."""
        return self.connections.opened[0]

    def read_ended(self) -> bool:
        """Whether the first find's read has ended: no statement, no snapshot, and its
        connection kept for the next query."""
        return (
            self.query.opened[0].closed
            and not self.connection().in_transaction
            and self.query.idle_connections == 1
        )

    @inlineCallbacks
    def test_the_next_page_is_read_while_one_is_taken_and_no_more(self):
        matches = yield self.handler.find(in_series())
        first = yield ensureDeferred(take(matches, 1))
        yield until(lambda: matches.pages.read >= 2 * PAGE)
        # One archive thread: whatever else was asked of it is done once this is.
        yield self.handler.instances(self.retrieve_one())
        self.assertEqual(matches.pages.read, 2 * PAGE)

        rest = yield ensureDeferred(take(matches))

        self.assertEqual(uids(first + rest), self.expected)
        self.assertTrue(self.read_ended())  # at the last page, without aclose

    @inlineCallbacks
    def test_encoded_matches_are_the_encoder_s_answers_made_as_pages_are_read(self):
        matches = yield self.handler.find(in_series())
        form = AnswerForm(in_series(), "DICOMD", EXPLICIT_VR_LITTLE_ENDIAN)

        encoded = yield ensureDeferred(take(matches.encoded(form)))

        self.assertEqual(len(encoded), SERIES.instances)
        answers = [decode_dataset(answer, EXPLICIT_VR_LITTLE_ENDIAN) for answer in encoded]
        self.assertEqual([answer.SOPInstanceUID for answer in answers], self.expected)
        self.assertEqual(answers[0].SeriesInstanceUID, SERIES_UID)
        self.assertTrue(self.read_ended())

    @inlineCallbacks
    def test_matches_being_read_cannot_be_read_encoded_too(self):
        matches = yield self.handler.find(in_series())
        yield ensureDeferred(take(matches, 1))

        with self.assertRaises(RuntimeError):
            matches.encoded(AnswerForm(in_series(), "DICOMD", EXPLICIT_VR_LITTLE_ENDIAN))
        yield ensureDeferred(matches.aclose())

    def retrieve_one(self) -> FindQuery:
        identifier = Dataset()
        identifier.SOPInstanceUID = self.expected[0]
        return FindQuery(identifier, STUDY_ROOT_FIND, "IMAGE", "MOVESCU", "DICOMD", "127.0.0.1")

    @inlineCallbacks
    def test_aclose_half_way_ends_the_query_s_read(self):
        matches = yield self.handler.find(in_series())
        taken = yield ensureDeferred(take(matches, PAGE + 1))

        yield ensureDeferred(matches.aclose())

        self.assertEqual(uids(taken), self.expected[: PAGE + 1])
        self.assertTrue(self.read_ended())
        self.assertLess(matches.pages.read, SERIES.instances)
        self.assertEqual((yield ensureDeferred(take(matches))), [])

    @inlineCallbacks
    def test_a_peer_that_cancels_half_way_has_the_query_s_read_ended(self):
        node = MemoryNode([self.handler], storage_path=self.folder / "node")
        association = node.associate([STUDY_ROOT_FIND, VERIFICATION])
        seen: list[Dataset] = []

        def cancel_past_the_first_page(match: Dataset) -> None:
            seen.append(match)
            if len(seen) == PAGE + 5:
                found.cancel()

        identifier = in_series().identifier
        found = association.find(STUDY_ROOT_FIND, identifier, cancel_past_the_first_page)
        outcome: list[Failure] = []
        found.addErrback(outcome.append)

        yield pumped_until(node, lambda: bool(outcome) and self.query.opened[0].closed)

        self.assertTrue(outcome[0].check(CancelledError))
        self.assertTrue(self.read_ended())
        self.assertEqual(uids(seen), self.expected[: len(seen)])
        self.assertLess(len(seen), SERIES.instances)
        echoed = association.echo()
        yield pumped_until(node, lambda: echoed.called)
        self.assertEqual(echoed.result, 0x0000)

    @inlineCallbacks
    def test_stopping_the_archive_mid_find_closes_the_query_and_leaves_no_thread(self):
        matches = yield self.handler.find(in_series())
        yield ensureDeferred(take(matches, 1))

        yield self.handler.stopService()

        self.assertTrue(is_closed(self.connection()))
        self.assertEqual(archive_threads(), [])
        with self.assertRaises(NotRunning):
            yield ensureDeferred(take(matches))
        with capturedLogs() as events:
            yield ensureDeferred(matches.aclose())
        self.assertEqual(events, [])

    @inlineCallbacks
    def test_a_read_nobody_takes_from_lets_go_of_its_snapshot_on_time(self):
        pool = ThreadPool(minthreads=1, maxthreads=1, name="snapshot-test")
        pool.start()
        self.addCleanup(pool.stop)
        clock = Clock()
        query = ArchiveQuery(self.handler.index.connect_reader, page_rows=PAGE, snapshot_seconds=0)
        self.addCleanup(query.close)
        pages = query.pages(in_series())
        matches = PagedMatches(pages, partial(deferToThreadPool, reactor, pool), clock)
        first = yield ensureDeferred(take(matches, 1))
        yield until(lambda: pages.read == 2 * PAGE)  # the second page, read ahead
        write_something(self.handler.index)
        logged, copied = checkpoint(self.handler.index)
        self.assertLess(copied, logged)

        def time_passes() -> bool:
            clock.advance(0)  # the snapshot has been held long enough
            return pages.snapshot_left() is None

        yield until(time_passes)

        logged, copied = checkpoint(self.handler.index)
        self.assertEqual(copied, logged)
        rest = yield ensureDeferred(take(matches))
        self.assertEqual(uids(first + rest), self.expected)

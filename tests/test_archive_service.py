"""The archive and print handlers as the daemon runs them: started, on the real reactor.

``twisted.trial.unittest.TestCase`` spins the global reactor until a test's
Deferred fires, which is how the thread pools hand their results back.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from pydicom import Dataset
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults, inlineCallbacks
from twisted.logger import capturedLogs, formatEvent
from twisted.trial import unittest

from dicomd.archive import ArchiveHandler, PrintHandler
from dicomd.archive.handler import Reconciliation
from dicomd.interfaces import FindQuery, Kept
from dicomd.uids import STUDY_ROOT_FIND
from tests.support.received import ct_small, kept_path, received, status_of
from tests.support.threads import HeldNames


def uid(n: int) -> str:
    return f"1.2.826.0.1.3680043.10.8.{n}"


def until(condition: Callable[[], bool]) -> Deferred[None]:
    """A Deferred that fires on the first turn of the reactor on which ``condition`` holds."""
    reached: Deferred[None] = Deferred()

    def check() -> None:
        if condition():
            reached.callback(None)
        else:
            reactor.callLater(0, check)

    check()
    return reached


class ArchiveServiceTests(unittest.TestCase):
    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.folder)
        self.archive_path = self.folder / "archive"

    def started(self, **options: object) -> ArchiveHandler:
        handler = ArchiveHandler(self.archive_path, reactor=reactor, **options)
        handler.startService()
        self.addCleanup(lambda: handler.stopService() if handler.running else None)
        return handler

    def test_store_files_instances_in_the_archive_threads(self):
        leftover = self.archive_path / ".incoming" / "from-before.part"
        leftover.parent.mkdir(parents=True)
        leftover.write_bytes(b"half an instance")
        handler = ArchiveHandler(self.archive_path, threads=4, reactor=reactor)
        handler.startService()
        self.assertTrue(handler.running)
        self.assertFalse(leftover.exists())

        instances = [
            received(self.archive_path, ct_small(SOPInstanceUID=uid(n))) for n in range(12)
        ]
        duplicate = received(self.archive_path, ct_small(SOPInstanceUID=uid(0)))

        @inlineCallbacks
        def store_all():
            answers = yield gatherResults([handler.store(instance) for instance in instances])
            again = yield handler.store(duplicate)
            yield handler.stopService()
            return answers, again

        def check(result):
            answers, again = result
            self.assertFalse(handler.running)
            self.assertTrue(all(kept_path(answer).is_file() for answer in answers))
            self.assertEqual(status_of(again)[0], 0xB000)
            self.assertTrue(duplicate.path.is_file())
            reopened = ArchiveHandler(self.archive_path)
            self.assertEqual(reopened.open(), Reconciliation(1, 0, 0, 0, 0))  # the duplicate's file
            self.assertEqual(len(list(reopened.index.paths())), 12)
            reopened.close()

        return store_all().addCallback(check)

    @inlineCallbacks
    def test_with_one_syncfs_for_all_who_wait_concurrent_stores_are_kept_whole(self):
        handler = self.started(threads=8, flush="filesystem")
        instances = [
            received(self.archive_path, ct_small(SOPInstanceUID=uid(n))) for n in range(16)
        ]
        sent = [instance.path.read_bytes() for instance in instances]

        answers = yield gatherResults([handler.store(instance) for instance in instances])

        kept = [kept_path(answer) for answer in answers]
        self.assertEqual([path.read_bytes() for path in kept], sent)
        self.assertGreater(handler.storage.durability.group.runs, 0)  # syncfs, not fsync
        yield handler.stopService()
        reopened = ArchiveHandler(self.archive_path)
        self.assertEqual(reopened.open(), Reconciliation(0, 0, 0, 0, 0))  # nothing to redo
        self.assertEqual(len(list(reopened.index.paths())), 16)
        reopened.close()

    @inlineCallbacks
    def test_two_stores_of_one_uid_at_once_keep_one_copy_and_warn_the_other(self):
        answers, instances, sent = yield self.two_at_once("keep-first")

        [kept] = [n for n, answer in enumerate(answers) if isinstance(answer, Kept)]
        self.assertEqual(
            status_of(answers[1 - kept]), (0xB000, "duplicate SOP Instance UID; first copy kept")
        )
        self.assertEqual(list(self.archive_path.rglob("*.dcm")), [answers[kept].path])
        self.assertEqual(answers[kept].path.read_bytes(), sent[kept])
        self.assertTrue(instances[1 - kept].path.is_file())  # left for the store service
        reopened = ArchiveHandler(self.archive_path)
        self.assertEqual(reopened.open().files_reindexed, 0)
        self.assertEqual(
            reopened.index.lookup(uid(1)),
            answers[kept].path.relative_to(self.archive_path).as_posix(),
        )
        reopened.close()

    @inlineCallbacks
    def test_two_stores_of_one_uid_at_once_under_reject_fail_the_second_with_0111(self):
        answers, _instances, _sent = yield self.two_at_once("reject")

        self.assertEqual(sum(isinstance(answer, Kept) for answer in answers), 1)
        [refused] = [answer for answer in answers if not isinstance(answer, Kept)]
        self.assertEqual(status_of(refused)[0], 0x0111)
        self.assertEqual(len(list(self.archive_path.rglob("*.dcm"))), 1)

    @inlineCallbacks
    def two_at_once(self, duplicates: str):
        """Two different copies of one SOP Instance UID, stored at the same time."""
        handler = self.started(duplicates=duplicates, threads=2)
        instances = [
            received(
                self.archive_path,
                ct_small(SOPInstanceUID=uid(1), InstanceNumber=n),
                calling_ae_title=f"AE{n}",
            )
            for n in (1, 2)
        ]
        sent = [instance.path.read_bytes() for instance in instances]
        answers = yield gatherResults([handler.store(instance) for instance in instances])
        yield handler.stopService()
        return answers, instances, sent

    @inlineCallbacks
    def test_stop_service_fires_after_the_instance_in_flight_is_indexed(self):
        handler = self.started()
        instance = received(self.archive_path, ct_small(SOPInstanceUID=uid(1)))
        stored = handler.store(instance)

        stopping = handler.stopService()

        self.assertNoResult(stopping)
        self.assertFalse(handler.running)
        with self.assertRaises(RuntimeError):  # no new work once stopping
            handler.store(instance)
        # When stopping fires, the store has its answer: Deferred.result holds it.
        stopping.addCallback(lambda _: (stored.called, stored.result))
        answered, answer = yield stopping
        self.assertTrue(answered)
        reopened = ArchiveHandler(self.archive_path)
        self.assertEqual(reopened.open(), Reconciliation(0, 0, 0, 0, 0))  # nothing to redo
        self.assertEqual(
            reopened.index.lookup(uid(1)),
            kept_path(answer).relative_to(self.archive_path).as_posix(),
        )
        reopened.close()

    @inlineCallbacks
    def test_concurrent_stores_share_index_commits(self):
        count = 16
        handler = self.started(threads=count)
        instances = [
            received(self.archive_path, ct_small(SOPInstanceUID=uid(n))) for n in range(count)
        ]
        commits_before = handler.index.commits
        # The first store's transaction cannot begin until every other store waits for
        # its commit: each store is one call to the archive's threads, blocked until then,
        # and all of them go into the one transaction that follows the first.
        with handler.index._write_lock:
            stored = gatherResults([handler.store(instance) for instance in instances])
            yield until(lambda: handler._writes.waiting == count - 1)
        answers = yield stored

        self.assertTrue(all(kept_path(answer).is_file() for answer in answers))
        self.assertEqual(handler.index.commits - commits_before, 2)  # not 16
        yield handler.stopService()

    test_concurrent_stores_share_index_commits.timeout = 30  # type: ignore[attr-defined]

    def test_a_query_is_answered_while_every_store_thread_waits_for_the_disk(self):
        """Stores wait in their threads for flushes; queries have threads of their own."""
        handler = self.started(threads=1)
        held = HeldNames(self.archive_path)
        handler.storage.durability = held
        storing = handler.store(received(self.archive_path, ct_small(SOPInstanceUID=uid(1))))
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = ""
        query = FindQuery(identifier, STUDY_ROOT_FIND, "STUDY", "SCU", "DICOMD", "127.0.0.1")

        async def query_then_release() -> tuple[list[object], object]:
            await until(held.flushing.is_set)
            matches = await handler.find(query)
            found = [match async for match in matches]
            held.release.set()
            return found, await storing

        def check(result: tuple[list[object], object]) -> None:
            found, stored = result
            self.assertEqual(found, [])  # the store's row is not committed yet
            self.assertEqual(status_of(stored)[0], 0x0000)

        return ensureDeferred(query_then_release()).addCallback(check)

    test_a_query_is_answered_while_every_store_thread_waits_for_the_disk.timeout = 10  # type: ignore[attr-defined]

    def test_store_before_start_is_refused(self):
        handler = ArchiveHandler(self.archive_path, reactor=reactor)
        instance = received(self.archive_path, ct_small())
        with self.assertRaises(RuntimeError):
            handler.store(instance)

    @inlineCallbacks
    def test_print_logs_one_line_and_answers_success(self):
        instance = received(self.archive_path, ct_small(), calling_ae_title="CT01")
        with capturedLogs() as events:
            answer = yield PrintHandler(reactor=reactor).store(instance)

        self.assertEqual(answer, 0x0000)  # it leaves the file where it is
        [line] = [formatEvent(event) for event in events if is_ours(event)]
        self.assertEqual(
            line,
            "C-STORE from CT01: CompressedSamples^CT1 [1CT1], study e+1, "
            f"CT CT Image Storage, Explicit VR Little Endian, {instance.size} bytes",
        )

    @inlineCallbacks
    def test_print_reports_an_unreadable_file_and_still_answers_success(self):
        instance = received(self.archive_path, ct_small(), calling_ae_title="CT01")
        instance.path.write_bytes(b"not DICOM")
        with capturedLogs() as events:
            answer = yield PrintHandler().store(instance)

        self.assertEqual(answer, 0x0000)
        [event] = [event for event in events if is_ours(event)]
        self.assertEqual(event["log_level"].name, "warn")
        self.assertIn("cannot be parsed: InvalidDicomError", formatEvent(event))


def is_ours(event: dict) -> bool:
    return event.get("log_namespace", "").startswith("dicomd.")

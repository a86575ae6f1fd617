"""The archive and print handlers as the daemon runs them: started, on the real reactor.

``twisted.trial.unittest.TestCase`` spins the global reactor until a test's
Deferred fires, which is how the thread pools hand their results back.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.logger import capturedLogs, formatEvent
from twisted.trial import unittest

from dicomd.archive import ArchiveHandler, PrintHandler
from dicomd.archive.handler import Reconciliation
from tests.test_archive_handler import ct_dataset, kept_path, received, status_of


def uid(n: int) -> str:
    return f"1.2.826.0.1.3680043.10.8.{n}"


class ArchiveServiceTests(unittest.TestCase):
    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.folder)
        self.archive_path = self.folder / "archive"

    def test_store_files_instances_in_the_archive_threads(self):
        leftover = self.archive_path / ".incoming" / "from-before.part"
        leftover.parent.mkdir(parents=True)
        leftover.write_bytes(b"half an instance")
        handler = ArchiveHandler(self.archive_path, threads=4, reactor=reactor)
        handler.startService()
        self.assertTrue(handler.running)
        self.assertFalse(leftover.exists())

        instances = [
            received(self.archive_path, ct_dataset(SOPInstanceUID=uid(n))) for n in range(12)
        ]
        duplicate = received(self.archive_path, ct_dataset(SOPInstanceUID=uid(0)))

        @inlineCallbacks
        def store_all():
            answers = yield gatherResults([handler.store(instance) for instance in instances])
            again = yield handler.store(duplicate)
            return answers, again

        def check(result):
            answers, again = result
            handler.stopService()
            self.assertFalse(handler.running)
            self.assertTrue(all(kept_path(answer).is_file() for answer in answers))
            self.assertEqual(status_of(again)[0], 0xB000)
            self.assertTrue(duplicate.path.is_file())
            reopened = ArchiveHandler(self.archive_path)
            self.assertEqual(reopened.open(), Reconciliation(1, 0, 0, 0, 0))  # the duplicate's file
            self.assertEqual(len(list(reopened.index.paths())), 12)
            reopened.close()

        return store_all().addCallback(check)

    def test_store_before_start_is_refused(self):
        handler = ArchiveHandler(self.archive_path, reactor=reactor)
        instance = received(self.archive_path, ct_dataset())
        with self.assertRaises(RuntimeError):
            handler.store(instance)

    @inlineCallbacks
    def test_print_logs_one_line_and_answers_success(self):
        instance = received(self.archive_path, ct_dataset(), calling_ae_title="CT01")
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
        instance = received(self.archive_path, ct_dataset(), calling_ae_title="CT01")
        instance.path.write_bytes(b"not DICOM")
        with capturedLogs() as events:
            answer = yield PrintHandler().store(instance)

        self.assertEqual(answer, 0x0000)
        [event] = [event for event in events if is_ours(event)]
        self.assertEqual(event["log_level"].name, "warn")
        self.assertIn("cannot be parsed: InvalidDicomError", formatEvent(event))


def is_ours(event: dict) -> bool:
    return event.get("log_namespace", "").startswith("dicomd.")

"""Flushes shared by the stores that wait for them: a caller counts only a flush begun after
it asked."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from dicomd.archive.durability import FileFlush, FilesystemFlush, GroupFlush
from tests.support.threads import eventually, in_threads


class GatedAction:
    """An action that notes each run; the first run waits for ``gate``."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.runs = 0
        self.error = error

    def __call__(self) -> None:
        self.runs += 1
        self.entered.set()
        if self.runs == 1:
            self.gate.wait()
            if self.error is not None:
                raise self.error


def test_a_lone_caller_runs_the_action_once() -> None:
    group = GroupFlush()
    runs: list[str] = []
    group.flush("folder", lambda: runs.append("run"))
    assert runs == ["run"]
    assert group.waiting == 0


def test_callers_during_a_run_wait_for_the_next_and_share_it() -> None:
    group, action = GroupFlush(), GatedAction()
    first = in_threads(lambda: group.flush("folder", action))
    assert action.entered.wait(10)
    later = in_threads(*[lambda: group.flush("folder", action)] * 6)
    eventually(lambda: group.waiting == 6)
    assert action.runs == 1  # the run going on when they asked does not count for them

    action.gate.set()

    first.results()
    later.results()
    assert action.runs == 2  # one more run served all six
    assert group.runs == 2


def test_a_failed_run_fails_every_caller_it_served_and_the_next_run_goes_on() -> None:
    group, action = GroupFlush(), GatedAction(error=OSError(5, "I/O error"))
    first = in_threads(lambda: group.flush("folder", action))
    assert action.entered.wait(10)

    action.gate.set()

    with pytest.raises(OSError, match="I/O error"):
        first.results()
    group.flush("folder", action)  # a new run, which succeeds
    assert action.runs == 2


def test_keys_flush_independently() -> None:
    group, slow = GroupFlush(), GatedAction()
    busy = in_threads(lambda: group.flush("a", slow))
    assert slow.entered.wait(10)

    runs: list[str] = []
    group.flush("b", lambda: runs.append("b"))  # does not wait for "a"

    assert runs == ["b"]
    slow.gate.set()
    busy.results()


def test_file_flush_flushes_a_file_and_its_folder(tmp_path: Path) -> None:
    received = tmp_path / "received.part"
    received.write_bytes(b"data")
    flush = FileFlush()
    flush.content(received)
    flush.names(tmp_path)
    assert flush.group.runs == 1


def test_filesystem_flush_is_one_syncfs_for_content_and_names(tmp_path: Path) -> None:
    received = tmp_path / "received.part"
    received.write_bytes(b"data")
    flush = FilesystemFlush(tmp_path)
    try:
        flush.content(received)
        flush.names(tmp_path)
    finally:
        flush.close()
    assert flush.group.runs == 2

"""Making received files and their names durable, one flush shared by every store that waits.

A store needs two things on the disk before it may answer success: the
received file's content before it is renamed into the archive (so that a
name in the archive always points at a whole file), and the new name (and
every folder made for it) before the index row is written and the peer is
answered.  Stores that arrive together ask for the same kind of flush at
the same time, and one flush can serve them all: `GroupFlush` lets the first
caller flush while the others wait, and the next flush start for all who
asked during the first.

The rule that keeps a crash safe: a caller returns only once a flush that
*started after it asked* has ended.  Everything it wrote before asking (the
file's bytes, the rename) was then in what that flush wrote out; an earlier
flush, already running when it asked, may have missed it, so it never counts.

Two ways to flush, chosen with the archive's ``flush`` option:

- ``files``: ``fdatasync`` of each received file (each its own: a file's
  flush covers only that file), then ``fsync`` of each folder that got a new
  name, one per folder for every store that waits on it;
- ``filesystem``: ``syncfs`` of the archive's file system, one for every
  store that waits, whether for file content or for names.  One call writes
  out everything dirty on that file system, so it pays where the archive has
  its own file system (or a quiet one), and costs more where other programs
  write a lot beside it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Final, Protocol

from dicomd import filesystem

FLUSHES: Final = ("files", "filesystem")


class GroupFlush:
    """One flush at a time per key, serving every caller that asked before it started.

    ``flush(key, action)`` blocks until a run of ``action`` that started after
    the call has ended, and raises what that run raised.  Callers who ask
    while a run is going on wait for it to end, then one of them runs
    ``action`` once for all of them.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._keys: dict[Hashable, _Key] = {}
        self.runs = 0
        """How many times an action ran: fewer than the calls when flushes were shared."""

    @property
    def waiting(self) -> int:
        """How many callers wait for a run that has not begun."""
        with self._condition:
            return sum(state.next.waiting for state in self._keys.values() if state.next)

    def flush(self, key: Hashable, action: Callable[[], None]) -> None:
        with self._condition:
            state = self._keys.setdefault(key, _Key())
            if state.next is None:
                state.next = _Round()
            mine = state.next
            mine.waiting += 1
            try:
                while not mine.ended:
                    if state.running is None and state.next is mine:
                        state.running, state.next = mine, None
                        self._run(mine, action)
                        state.running = None
                        self._condition.notify_all()
                    else:
                        self._condition.wait()
            finally:
                mine.waiting -= 1
                if state.running is None and state.next is None and self._keys.get(key) is state:
                    del self._keys[key]
        if mine.error is not None:
            raise mine.error

    def _run(self, round_: _Round, action: Callable[[], None]) -> None:
        """Run ``action`` without the lock held; note how it ended."""
        self._condition.release()
        try:
            action()
        except BaseException as error:  # every waiter of the round gets it
            round_.error = error
        finally:
            self._condition.acquire()
            round_.ended = True
            self.runs += 1


class _Round:
    """The callers that one run of the action serves."""

    __slots__ = ("ended", "error", "waiting")

    def __init__(self) -> None:
        self.ended = False
        self.error: BaseException | None = None
        self.waiting = 0


class _Key:
    """The run going on for a key, and the one that gathers callers for after it."""

    __slots__ = ("next", "running")

    def __init__(self) -> None:
        self.running: _Round | None = None
        self.next: _Round | None = None


class Durability(Protocol):
    """The two flushes a store waits for; blocking, for the archive's threads."""

    def content(self, path: Path) -> None:
        """``path``'s bytes are on the disk (before it is renamed into the archive)."""

    def names(self, folder: Path) -> None:
        """The entries made in ``folder`` so far are on the disk."""


class FileFlush:
    """``fdatasync`` of each file; ``fsync`` of a folder, shared by those who wait on it."""

    def __init__(self) -> None:
        self.group = GroupFlush()

    def content(self, path: Path) -> None:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(descriptor)
        finally:
            os.close(descriptor)

    def names(self, folder: Path) -> None:
        self.group.flush(folder, lambda: fsync_path(folder))


class FilesystemFlush:
    """``syncfs`` of the archive's file system, shared by every store that waits.

    A received file on another file system (the archive kept apart from
    ``storage.path``) is flushed by itself: it is then copied, not renamed.
    """

    def __init__(self, folder: Path) -> None:
        self.group = GroupFlush()
        self._descriptor = os.open(folder, os.O_RDONLY | os.O_CLOEXEC)
        self._device = os.fstat(self._descriptor).st_dev
        self._files = FileFlush()

    def content(self, path: Path) -> None:
        if os.stat(path).st_dev != self._device:
            self._files.content(path)
            return
        self.group.flush(None, self._syncfs)

    def names(self, folder: Path) -> None:
        self.group.flush(None, self._syncfs)

    def close(self) -> None:
        os.close(self._descriptor)

    def _syncfs(self) -> None:
        filesystem.syncfs(self._descriptor)


def fsync_path(path: Path) -> None:
    """Flush a file, or a folder's entries, to the disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)

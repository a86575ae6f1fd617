"""Group commit, the locks that order the archive's work, a work counter.

`GroupCommit` and `KeyedLocks` are for the archive's threads: a store runs
its whole filing (check, flush, move, index) in one call to a thread, and
blocks there while it waits for a lock or for its commit, so that it never
goes back through the reactor, nor hands over to another thread, between
its steps.  `InFlight` lives on the
reactor thread and counts the stores so that stopping can wait for them.
"""

from __future__ import annotations

import fcntl
import os
import threading
import zlib
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Final, Generic, Protocol, TypeVar

from twisted.internet.defer import Deferred, succeed

from dicomd.archive.index import Outcome

W = TypeVar("W")
T = TypeVar("T")

Commit = Callable[[Sequence[W]], Sequence[Outcome]]
"""Performs writes in one transaction, blocking; an `Outcome` for each, in order."""


class GroupCommit(Generic[W]):
    """Writes from many threads committed in batches, one batch at a time, by the writers.

    ``submit`` blocks its caller until the transaction holding its write is
    committed, then answers the write's result (or raises its error).  A
    write submitted while no commit runs is committed at once, by its own
    thread; writes submitted while a commit runs wait, and when it ends one
    of their threads commits all of them in the next transaction.  Under
    load the number of transactions follows what the disk can commit, not
    the number of writes, and no write waits for a hand-over to another
    thread: the one that commits is one that waits anyway.
    """

    def __init__(self, commit: Commit[W]) -> None:
        self._commit = commit
        self._condition = threading.Condition(threading.Lock())
        self._waiting: list[tuple[W, _Answer]] = []
        self._committing = False

    @property
    def waiting(self) -> int:
        """How many writes wait for the next transaction."""
        with self._condition:
            return len(self._waiting)

    def submit(self, write: W) -> Any:
        """Blocking: queue ``write`` and wait for the commit that holds it; its result."""
        answer = _Answer()
        with self._condition:
            self._waiting.append((write, answer))
            while not answer.ready:
                if self._committing:
                    self._condition.wait()
                    continue
                batch, self._waiting = self._waiting, []
                self._committing = True
                self._condition.release()
                try:
                    _commit_batch(self._commit, batch)
                finally:
                    self._condition.acquire()
                    self._committing = False
                    self._condition.notify_all()
        return answer.value()


class _Answer:
    """What one write came to, set by whichever thread committed it."""

    __slots__ = ("error", "ready", "result")

    def __init__(self) -> None:
        self.ready = False
        self.result: Any = None
        self.error: BaseException | None = None

    def value(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


def _commit_batch(commit: Commit[W], batch: list[tuple[W, _Answer]]) -> None:
    """Commit ``batch`` in one transaction and answer each of its writes."""
    try:
        outcomes: Sequence[Outcome] = commit([write for write, _answer in batch])
        if len(outcomes) != len(batch):  # a write left unanswered would wait for ever
            raise RuntimeError(f"the index answered {len(outcomes)} of {len(batch)} writes")
    except BaseException as error:  # every write of the batch gets it
        outcomes = [Outcome(error=error)] * len(batch)
    for (_write, answer), outcome in zip(batch, outcomes, strict=True):
        answer.result, answer.error, answer.ready = outcome.result, outcome.error, True


class InFlight:
    """Counts work in flight and tells whoever waits when none is left."""

    def __init__(self) -> None:
        self.count = 0
        self._waiters: list[Deferred[None]] = []

    def track(self, work: Deferred[T]) -> Deferred[T]:
        """Count ``work`` until its Deferred fires; answers the same Deferred."""
        self.count += 1
        return work.addBoth(self._ended)

    def ended(self) -> Deferred[None]:
        """A Deferred that fires once no work is in flight."""
        if not self.count:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        return waiter

    def _ended(self, result: T) -> T:
        self.count -= 1
        if not self.count:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(None)
        return result


class KeyedLocks:
    """A lock per key, made when first asked for and dropped when free; for threads.

    ``hold`` takes several keys in sorted order, so two holders of
    overlapping sets never deadlock.  Blocking.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, list[int]]] = {}

    def __len__(self) -> int:
        """How many keys are held or waited for."""
        return len(self._locks)

    def users(self, key: str) -> int:
        """How many threads hold ``key`` or wait for it."""
        with self._guard:
            entry = self._locks.get(key)
            return entry[1][0] if entry is not None else 0

    def hold(self, *keys: str) -> Callable[[], None]:
        """Once every key is held, the function that releases them."""
        held: list[str] = []
        try:
            for key in sorted(set(keys)):
                with self._guard:
                    lock, users = self._locks.setdefault(key, (threading.Lock(), [0]))
                    users[0] += 1
                try:
                    lock.acquire()
                except BaseException:
                    self._leave(key)
                    raise
                held.append(key)
        except BaseException:
            self._release(held)
            raise
        return partial(self._release, held)

    def _release(self, keys: list[str]) -> None:
        for key in keys:
            self._locks[key][0].release()
            self._leave(key)

    def _leave(self, key: str) -> None:
        with self._guard:
            _lock, users = self._locks[key]
            users[0] -= 1
            if not users[0]:
                del self._locks[key]


LOCK_BUCKETS: Final = 256


class ProcessLocks:
    """Locks on keys that hold across the processes sharing an archive, and across threads.

    Each key maps to one of `LOCK_BUCKETS` files in ``folder``, locked with
    ``flock``; a holder takes its buckets in sorted order, so two holders never
    deadlock, and two keys that share a bucket merely wait for each other.
    Blocking: for the archive's threads, never the reactor's.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def hold(self, *keys: str) -> Callable[[], None]:
        """Once every key is held, the function that releases them."""
        buckets = sorted({zlib.crc32(key.encode("utf-8")) % LOCK_BUCKETS for key in keys})
        held: list[int] = []
        try:
            for bucket in buckets:
                descriptor = os.open(self.folder / f"{bucket:03d}", os.O_RDWR | os.O_CREAT, 0o600)
                held.append(descriptor)
                fcntl.flock(descriptor, fcntl.LOCK_EX)
        except BaseException:
            _close_all(held)
            raise
        return partial(_close_all, held)


def _close_all(descriptors: list[int]) -> None:
    """Closing a descriptor lets go of its flock."""
    for descriptor in descriptors:
        os.close(descriptor)


class SharedLocks(Protocol):
    """Locks that hold beyond this process: `ProcessLocks` for the worker processes of one
    machine, or the index's own for the nodes sharing a database."""

    def hold(self, *keys: str) -> Callable[[], None]:
        """Once every key is held, the function that releases them."""


def hold_keys(
    thread_locks: KeyedLocks, shared_locks: SharedLocks | None, keys: tuple[str, ...]
) -> Callable[[], None]:
    """Hold ``keys`` among this process's threads, then among the processes sharing the
    archive (when there are several); the function that releases both, in reverse."""
    release = thread_locks.hold(*keys)
    if shared_locks is None:
        return release
    try:
        release_shared = shared_locks.hold(*keys)
    except BaseException:
        release()
        raise

    def release_both() -> None:
        release_shared()
        release()

    return release_both

"""Group commit on the reactor side, the locks that order the archive's work, a work counter.

They live on the reactor thread and never block it: a store waits for a lock
or for its commit as a Deferred, and the archive's threads only ever do the
blocking steps (parsing, fsync, rename, one transaction).
"""

from __future__ import annotations

import fcntl
import os
import zlib
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Final, Generic, TypeVar

from twisted.internet.defer import Deferred, DeferredLock, ensureDeferred, succeed
from twisted.python.failure import Failure

from dicomd.archive.index import Outcome

W = TypeVar("W")
T = TypeVar("T")

Commit = Callable[[Sequence[W]], Sequence[Outcome]]
"""Performs writes in one transaction, blocking; an `Outcome` for each, in order."""

Run = Callable[..., "Deferred[Any]"]
"""Runs ``function(*args)`` away from the reactor thread and answers a Deferred of its result."""


class GroupCommit(Generic[W]):
    """Writes gathered on the reactor side and committed in batches, one batch at a time.

    ``submit`` answers a Deferred that fires with the write's result once the
    transaction holding it is committed (or fails with the write's error).  A
    write submitted while no commit runs starts one at once; writes submitted
    while a commit runs wait, and all of them go into the next transaction,
    which starts as soon as that commit ends.  Under load the number of
    transactions follows what the disk can commit, not the number of writes.

    ``commit`` is the blocking transaction and ``run`` the way to run it:
    ``deferToThreadPool`` on a pool of one thread, so that the connection
    never leaves that thread.
    """

    def __init__(self, commit: Commit[W], run: Run) -> None:
        self._commit = commit
        self._run = run
        self._waiting: list[tuple[W, Deferred[Any]]] = []
        self._committing = False
        self._submitted = InFlight()

    @property
    def waiting(self) -> int:
        """How many writes wait for the next transaction."""
        return len(self._waiting)

    def submit(self, write: W) -> Deferred[Any]:
        """Queue ``write``; its Deferred fires after the commit that holds it."""
        done: Deferred[Any] = Deferred()
        self._waiting.append((write, done))
        if not self._committing:
            self._next_batch()
        return self._submitted.track(done)

    def idle(self) -> Deferred[None]:
        """A Deferred that fires once every write submitted so far is committed (or failed)."""
        return self._submitted.ended()

    def _next_batch(self) -> None:
        batch, self._waiting = self._waiting, []
        self._committing = True
        committed = self._run(self._commit, [write for write, _done in batch])
        committed.addBoth(self._committed, batch)

    def _committed(
        self, outcomes: Sequence[Outcome] | Failure, batch: list[tuple[W, Deferred[Any]]]
    ) -> None:
        if self._waiting:
            self._next_batch()
        else:
            self._committing = False
        for n, (_write, done) in enumerate(batch):
            if isinstance(outcomes, Failure):
                done.errback(outcomes)
            elif outcomes[n].error is not None:
                done.errback(outcomes[n].error)
            else:
                done.callback(outcomes[n].result)


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
    """A `DeferredLock` per key, made when first asked for and dropped when free.

    ``hold`` takes several keys in sorted order, so two holders of
    overlapping sets never deadlock.  For the reactor thread only.
    """

    def __init__(self) -> None:
        self._locks: dict[str, DeferredLock] = {}

    def __len__(self) -> int:
        """How many keys are held or waited for."""
        return len(self._locks)

    def hold(self, *keys: str) -> Deferred[Callable[[], None]]:
        """A Deferred that fires, once every key is held, with the function that releases them."""
        return ensureDeferred(self._hold(sorted(set(keys))))

    async def _hold(self, keys: list[str]) -> Callable[[], None]:
        held: list[str] = []
        try:
            for key in keys:
                lock = self._locks.get(key)
                if lock is None:
                    lock = self._locks[key] = DeferredLock()
                await lock.acquire()
                held.append(key)
        except BaseException:
            self._release(held)
            raise
        return partial(self._release, held)

    def _release(self, keys: list[str]) -> None:
        for key in keys:
            lock = self._locks[key]
            lock.release()
            if not lock.locked:
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

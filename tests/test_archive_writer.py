"""Group commit and keyed locks, driven by hand: no reactor, no thread.

`GroupCommit` is given its two collaborators: the blocking ``commit`` (here
one that records each batch, or the real index) and ``run``, which here
hands back a Deferred the test fires when it wants the commit to end.
"""

from __future__ import annotations

import fcntl
import os
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure

from dicomd.archive.index import ArchiveIndex, Outcome, adding
from dicomd.archive.writer import LOCK_BUCKETS, GroupCommit, KeyedLocks, ProcessLocks
from tests.support.received import record


class HeldCommits:
    """Runs each commit when the test says so: ``finish()`` ends the oldest one."""

    def __init__(self) -> None:
        self.running: list[tuple[Deferred[Any], Callable[[], Any]]] = []

    def __call__(self, function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        done: Deferred[Any] = Deferred()
        self.running.append((done, lambda: function(*args)))
        return done

    def finish(self) -> None:
        done, work = self.running.pop(0)
        try:
            result = work()
        except Exception:
            done.errback(Failure())
        else:
            done.callback(result)


class Recorder:
    """A blocking commit that remembers its batches: each write succeeds with its double."""

    def __init__(self, failing: frozenset[int] = frozenset()) -> None:
        self.batches: list[list[int]] = []
        self.failing = failing

    def __call__(self, writes: Sequence[int]) -> list[Outcome]:
        self.batches.append(list(writes))
        return [
            Outcome(error=ValueError(write)) if write in self.failing else Outcome(result=2 * write)
            for write in writes
        ]


def results(deferreds: list[Deferred[Any]]) -> list[Any]:
    """What the Deferreds that have fired fired with; a failure is handled once seen."""
    seen: list[Any] = []

    def note(result: Any) -> Any:
        seen.append(result)
        return None if isinstance(result, Failure) else result

    for deferred in deferreds:
        deferred.addBoth(note)
    return seen


def test_a_lone_write_commits_at_once_and_fires_after_its_commit() -> None:
    held, recorder = HeldCommits(), Recorder()
    writes = GroupCommit(recorder, held)

    done = writes.submit(21)

    assert len(held.running) == 1
    assert results([done]) == []
    held.finish()
    assert results([done]) == [42]
    assert recorder.batches == [[21]]
    assert held.running == []


def test_writes_submitted_during_a_commit_share_the_next_one() -> None:
    held, recorder = HeldCommits(), Recorder()
    writes = GroupCommit(recorder, held)
    first = writes.submit(1)
    waiting = [writes.submit(n) for n in range(2, 10)]

    assert writes.waiting == 8
    assert len(held.running) == 1  # one commit at a time
    held.finish()
    assert results([first]) == [2]
    assert results(waiting) == []
    assert len(held.running) == 1  # the next batch started when the first ended
    held.finish()

    assert recorder.batches == [[1], list(range(2, 10))]
    assert results(waiting) == [2 * n for n in range(2, 10)]


def test_a_failing_write_fails_alone() -> None:
    writes = GroupCommit(Recorder(failing=frozenset({3})), maybeDeferred)

    answers = results([writes.submit(n) for n in (2, 3, 4)])

    assert answers[0] == 4 and answers[2] == 8
    assert isinstance(answers[1], Failure) and answers[1].check(ValueError)


def test_a_commit_that_cannot_run_fails_its_whole_batch_and_the_next_goes_on() -> None:
    held = HeldCommits()

    def broken(writes: Sequence[int]) -> list[Outcome]:
        if 1 in writes:
            raise OSError(5, "disk gone")
        return [Outcome(result=write) for write in writes]

    writes = GroupCommit(broken, held)
    first = writes.submit(1)
    later = writes.submit(2)
    held.finish()
    held.finish()

    [failure] = results([first])
    assert failure.check(OSError)
    assert results([later]) == [2]


def test_idle_fires_once_every_write_is_committed() -> None:
    held = HeldCommits()
    writes = GroupCommit(Recorder(), held)
    assert results([writes.idle()]) == [None]
    writes.submit(1)
    writes.submit(2)
    idle = writes.idle()

    held.finish()
    assert results([idle]) == []
    held.finish()
    assert results([idle]) == [None]


def test_batches_through_the_real_index_count_one_commit_each(tmp_path: Path) -> None:
    index = ArchiveIndex(tmp_path / "index.sqlite")
    index.open()
    try:
        held = HeldCommits()
        writes: GroupCommit[Any] = GroupCommit(index.write, held)
        records = [record(SOPInstanceUID=f"1.2.3.{n}", path=f"{n}.dcm") for n in range(10)]
        done = [writes.submit(adding(one)) for one in records]
        while held.running:
            held.finish()

        assert results(done) == [None] * 10
        assert index.commits == 2 < len(records)
        assert len(list(index.paths())) == 10
    finally:
        index.close()


def test_a_lock_is_held_by_one_holder_at_a_time_and_dropped_when_free() -> None:
    locks = KeyedLocks()
    first = results([locks.hold("uid:1", "path:a")])
    second = locks.hold("path:a")
    other = results([locks.hold("uid:2")])

    assert len(first) == 1 and len(other) == 1
    assert results([second]) == []
    first[0]()  # release
    [release_second] = results([second])
    assert len(locks) == 2  # path:a (second) and uid:2
    release_second()
    other[0]()
    assert len(locks) == 0


def test_keys_are_taken_in_sorted_order_so_overlapping_holders_never_deadlock() -> None:
    locks = KeyedLocks()
    first = results([locks.hold("b", "a")])
    crossing = [locks.hold("a", "b"), locks.hold("b", "a")]

    first[0]()
    got = results(crossing)
    assert len(got) == 1  # one of them holds both, the other waits for "a"
    got[0]()
    assert len(results(crossing)) == 2
    results(crossing)[1]()
    assert len(locks) == 0


def test_a_key_given_twice_is_held_once() -> None:
    locks = KeyedLocks()
    [release] = results([locks.hold("a", "a")])
    release()
    assert len(locks) == 0


@pytest.mark.parametrize("count", [1, 3])
def test_waiters_get_the_lock_in_order(count: int) -> None:
    locks = KeyedLocks()
    order: list[int] = []
    releases = results([locks.hold("k")])
    for n in range(count):
        locks.hold("k").addCallback(
            lambda release, n=n: (order.append(n), releases.append(release))
        )
    for _ in range(count + 1):
        releases.pop(0)()
    assert order == list(range(count))
    assert len(locks) == 0


def bucket_of(key: str) -> int:
    return zlib.crc32(key.encode()) % LOCK_BUCKETS


def bucket_is_free(folder: Path, key: str) -> bool:
    """Whether another holder could lock ``key``'s bucket now (without waiting)."""
    descriptor = os.open(folder / f"{bucket_of(key):03d}", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(descriptor)
    return True


def test_process_locks_hold_each_keys_bucket_until_released(tmp_path: Path) -> None:
    keys = ("uid:1.2.3", "path:a/b.dcm")
    other = next(
        f"uid:{n}" for n in range(100_000) if bucket_of(f"uid:{n}") not in map(bucket_of, keys)
    )
    release = ProcessLocks(tmp_path).hold(*keys)
    assert not bucket_is_free(tmp_path, keys[0])
    assert not bucket_is_free(tmp_path, keys[1])
    assert bucket_is_free(tmp_path, other)
    release()
    assert bucket_is_free(tmp_path, keys[0])
    assert bucket_is_free(tmp_path, keys[1])


def test_process_locks_take_a_shared_bucket_once(tmp_path: Path) -> None:
    """Two keys in one bucket: locking it twice from one holder would wait on itself."""
    first = "uid:1"
    second = next(
        f"uid:{n}" for n in range(2, 100_000) if bucket_of(f"uid:{n}") == bucket_of(first)
    )
    release = ProcessLocks(tmp_path).hold(first, second)
    assert not bucket_is_free(tmp_path, first)
    release()
    assert bucket_is_free(tmp_path, second)

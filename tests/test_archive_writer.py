"""Group commit and keyed locks, as the archive's threads use them.

`GroupCommit` is given its blocking ``commit``: here one that records each
batch, or the real index.  Threads wait on events, never on time.
"""

from __future__ import annotations

import fcntl
import os
import threading
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from dicomd.archive.index import ArchiveIndex, Outcome, adding
from dicomd.archive.writer import LOCK_BUCKETS, GroupCommit, KeyedLocks, ProcessLocks
from tests.support.received import record
from tests.support.threads import eventually, in_threads


class Recorder:
    """A blocking commit that remembers its batches: each write succeeds with its double.

    With a ``gate``, the first batch waits for it (and ``entered`` tells when it began).
    """

    def __init__(
        self, failing: frozenset[int] = frozenset(), gate: threading.Event | None = None
    ) -> None:
        self.batches: list[list[int]] = []
        self.failing = failing
        self.gate = gate
        self.entered = threading.Event()

    def __call__(self, writes: Sequence[int]) -> list[Outcome]:
        self.batches.append(list(writes))
        self.entered.set()
        if self.gate is not None and len(self.batches) == 1:
            self.gate.wait()
        return [
            Outcome(error=ValueError(write)) if write in self.failing else Outcome(result=2 * write)
            for write in writes
        ]


def test_a_lone_write_commits_at_once_and_answers_its_result() -> None:
    recorder = Recorder()
    writes = GroupCommit(recorder)

    assert writes.submit(21) == 42
    assert recorder.batches == [[21]]
    assert writes.waiting == 0


def test_writes_submitted_during_a_commit_share_the_next_one() -> None:
    gate = threading.Event()
    recorder = Recorder(gate=gate)
    writes = GroupCommit(recorder)
    first = in_threads(lambda: writes.submit(1))  # commits at once, in its own thread
    assert recorder.entered.wait(10)
    waiting = in_threads(*(lambda n=n: writes.submit(n) for n in range(2, 10)))
    eventually(lambda: writes.waiting == 8)

    gate.set()

    assert first.results() == [2]
    assert waiting.results() == [2 * n for n in range(2, 10)]
    assert [sorted(batch) for batch in recorder.batches] == [[1], list(range(2, 10))]


def test_a_failing_write_fails_alone() -> None:
    writes = GroupCommit(Recorder(failing=frozenset({3})))

    assert writes.submit(2) == 4
    with pytest.raises(ValueError, match="3"):
        writes.submit(3)
    assert writes.submit(4) == 8


def test_a_commit_that_cannot_run_fails_its_batch_and_the_next_goes_on() -> None:
    def broken(batch: Sequence[int]) -> list[Outcome]:
        if 1 in batch:
            raise OSError(5, "disk gone")
        return [Outcome(result=write) for write in batch]

    writes = GroupCommit(broken)
    with pytest.raises(OSError, match="disk gone"):
        writes.submit(1)
    assert writes.submit(2) == 2


def test_a_commit_answering_too_few_writes_fails_each_of_them_rather_than_hang() -> None:
    gate = threading.Event()
    answered_one: list[list[int]] = []

    def short(batch: Sequence[int]) -> list[Outcome]:
        answered_one.append(list(batch))
        if len(answered_one) == 1:
            gate.wait()
        return [Outcome(result=batch[0])]

    writes = GroupCommit(short)
    first = in_threads(lambda: writes.submit(1))
    eventually(lambda: bool(answered_one))
    waiting = in_threads(lambda: _raised(writes.submit, 2), lambda: _raised(writes.submit, 3))
    eventually(lambda: writes.waiting == 2)
    gate.set()

    assert first.results() == [1]
    assert waiting.results() == ["the index answered 1 of 2 writes"] * 2


def _raised(function: Callable[[int], object], argument: int) -> str:
    with pytest.raises(RuntimeError) as raised:
        function(argument)
    return str(raised.value)


def test_batches_through_the_real_index_from_several_threads(tmp_path: Path) -> None:
    index = ArchiveIndex(tmp_path / "index.sqlite")
    index.open()
    writes: GroupCommit[Any] = GroupCommit(index.write)
    records = [record(SOPInstanceUID=f"1.2.3.{n}", path=f"{n}.dcm") for n in range(10)]
    with index._write_lock:  # the first write's transaction cannot begin yet
        stores = in_threads(*(lambda one=one: writes.submit(adding(one)) for one in records))
        eventually(lambda: writes.waiting == 9)

    assert stores.results() == [None] * 10
    assert index.commits == 2  # the first alone, then the nine that waited
    assert len(list(index.paths())) == 10
    index.close()


def test_a_lock_is_held_by_one_holder_at_a_time_and_dropped_when_free() -> None:
    locks = KeyedLocks()
    count = [0]

    def add_one() -> None:
        for _ in range(200):
            release = locks.hold("uid:1", "path:a")
            try:
                seen = count[0]
                os.sched_yield()  # let another thread in, if the lock did not keep it out
                count[0] = seen + 1
            finally:
                release()

    in_threads(*[add_one] * 4).results()
    assert count[0] == 800
    assert len(locks) == 0


def test_keys_are_taken_in_sorted_order_so_overlapping_holders_never_deadlock() -> None:
    locks = KeyedLocks()

    def cross(keys: tuple[str, str]) -> None:
        for _ in range(300):
            locks.hold(*keys)()

    in_threads(lambda: cross(("a", "b")), lambda: cross(("b", "a"))).results()
    assert len(locks) == 0


def test_a_key_given_twice_is_held_once() -> None:
    locks = KeyedLocks()
    release = locks.hold("a", "a")
    assert len(locks) == 1
    release()
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

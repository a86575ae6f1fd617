"""Threads for tests of code that blocks: start some, wait for a condition, collect results."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEADLINE = 10.0
"""Seconds a test waits for threads before it fails rather than hang."""


class Started:
    """Threads each running one function; `results` joins them and answers or re-raises."""

    def __init__(self, functions: tuple[Callable[[], Any], ...]) -> None:
        self._outcomes: list[tuple[bool, Any]] = [(False, None)] * len(functions)
        self._threads = [
            threading.Thread(target=self._run, args=(n, function), daemon=True)
            for n, function in enumerate(functions)
        ]
        for thread in self._threads:
            thread.start()

    def _run(self, n: int, function: Callable[[], Any]) -> None:
        try:
            self._outcomes[n] = (True, function())
        except BaseException as error:
            self._outcomes[n] = (False, error)

    def results(self) -> list[Any]:
        """Each function's result, in order, once all have returned; the first error raised."""
        for thread in self._threads:
            thread.join(DEADLINE)
            assert not thread.is_alive(), "a thread did not finish"
        for finished, outcome in self._outcomes:
            if not finished:
                raise outcome
        return [outcome for _finished, outcome in self._outcomes]


def in_threads(*functions: Callable[[], Any]) -> Started:
    """Run each function in a thread of its own, now."""
    return Started(functions)


def eventually(condition: Callable[[], bool]) -> None:
    """Wait (yielding the processor, never sleeping a set time) until ``condition`` holds."""
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        threading.Event().wait(0.001)


class HeldNames:
    """The archive's flushes (a `Durability`) with the disk left out, and the flush of the
    names in folder ``slow`` held until ``release`` is set: a store caught mid-flush."""

    def __init__(self, slow: Path) -> None:
        self.slow = slow
        self.flushing = threading.Event()
        self.release = threading.Event()
        self.events: list[str] = []

    def content(self, path: Path) -> None:
        pass

    def names(self, folder: Path) -> None:
        if folder == self.slow:
            self.flushing.set()
            assert self.release.wait(DEADLINE)
            self.events.append(f"flushed {folder.name}")

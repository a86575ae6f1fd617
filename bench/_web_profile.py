"""Where a DICOMweb server's time goes: py-spy attached to each of its processes for a phase.

``py-spy record --pid`` samples a running process from outside (no change to
the daemon, ``--nonblocking`` so that it is not paused to be read), only the
thread holding the GIL (``--gil``): a sample is Python at work, the reactor's
or one of the thread pool's; waits in epoll, on locks and in system calls
that release the GIL (reads, writes, fsync) are left out.  Each phase's
collapsed stacks are summed over the daemon's processes (the parent and its
workers) and summarised as the functions with the most samples on top of the
stack (self, any code) and dicomd's functions with the most samples anywhere
in the stack (inclusive): which of its steps the time is spent under.  py-spy
takes CPU of its own, so the figures of a profiled run are not the
benchmark's figures.
"""

from __future__ import annotations

import collections
import contextlib
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from _memory import process_tree

RATE: Final = 200
"""Samples a second, per process."""
TOP: Final = 20


def py_spy() -> str | None:
    """The py-spy command beside this interpreter (``.venv/bin/pip install py-spy``), or on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.is_file() else shutil.which("py-spy")


class Profiler:
    """Profiles of named phases of a server, as raw collapsed stacks under ``folder``."""

    def __init__(self, folder: Path, command: str) -> None:
        self.folder = folder
        self._command = command
        self.phases: list[str] = []
        self._runs = 0

    @contextlib.contextmanager
    def phase(self, name: str, root_pid: int) -> Iterator[None]:
        """Sample every process of ``root_pid``'s tree while the block runs."""
        samplers = [
            subprocess.Popen(
                [
                    self._command,
                    "record",
                    "--pid",
                    str(pid),
                    "--rate",
                    str(RATE),
                    "--nonblocking",
                    "--gil",
                    "--format",
                    "raw",
                    "--output",
                    str(self.folder / f"{name}-{self._runs}-{pid}.txt"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for pid in process_tree(root_pid)
        ]
        time.sleep(1.0)  # py-spy attaches and reads the interpreter's layout first
        try:
            yield
        finally:
            for sampler in samplers:
                sampler.send_signal(signal.SIGINT)
            for sampler in samplers:
                try:
                    sampler.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    sampler.kill()
            self._runs += 1
            if name not in self.phases:
                self.phases.append(name)

    def summary(self) -> list[str]:
        """Each phase's busiest functions, self and inclusive, as shares of its samples."""
        lines = []
        for name in self.phases:
            own: collections.Counter[str] = collections.Counter()
            anywhere: collections.Counter[str] = collections.Counter()
            total = 0
            for path in self.folder.glob(f"{name}-*-*.txt"):
                for line in path.read_text(errors="replace").splitlines():
                    stack, _, count = line.rpartition(" ")
                    if not stack or not count.isdigit():
                        continue
                    frames = stack.split(";")
                    total += int(count)
                    own[_short(frames[-1])] += int(count)
                    for frame in {_short(frame) for frame in frames if _ours(frame)}:
                        anywhere[frame] += int(count)
            lines.append(f"{name}: {total} samples holding the GIL at {RATE}/s")
            if not total:
                continue
            lines.append("  self:")
            lines += [f"    {100 * n / total:5.1f}%  {frame}" for frame, n in own.most_common(TOP)]
            lines.append("  inclusive, dicomd's functions:")
            lines += [
                f"    {100 * n / total:5.1f}%  {frame}" for frame, n in anywhere.most_common(TOP)
            ]
        return lines


def _ours(frame: str) -> bool:
    """A frame of dicomd's code (py-spy names a package's modules from its folder), but
    not of the worker's plumbing, under which every worker's sample is."""
    return " (dicomd/" in frame and " (dicomd/fleet/" not in frame


def _short(frame: str) -> str:
    """``function (path/to/module.py:12)`` as ``function (module.py)``: lines apart, one entry."""
    function, _, where = frame.partition(" (")
    module = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(module).parts
    tail = "/".join(parts[-2:]) if "dicomd" in parts or "twisted" in parts else Path(module).name
    return f"{function} ({tail})"

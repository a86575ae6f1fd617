"""Memory and CPU of a process tree, read from ``/proc``."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Final

CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants that exist now (zombies too: their CPU times still count)."""
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        for task in _listdir(Path(f"/proc/{current}/task")):
            with contextlib.suppress(OSError):
                pending += map(
                    int, Path(f"/proc/{current}/task/{task}/children").read_text().split()
                )
    return tree


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def status_kib(pid: int, field: str) -> int:
    """A ``kB`` field of ``/proc/PID/status`` (``VmRSS``, ``VmHWM``); 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def meminfo_kib(field: str) -> int:
    """A ``kB`` field of ``/proc/meminfo`` (``MemTotal``), or 0."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid``, of its reaped children and of its live or zombie descendants."""
    total_ticks = 0
    for index, member in enumerate(process_tree(pid)):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # after the command: state is fields[0], so utime..cstime (stat fields 14-17) are 11..14
        utime, stime, cutime, cstime = map(int, fields[11:15])
        total_ticks += utime + stime + (cutime + cstime if index == 0 else 0)
    return total_ticks / CLOCK_TICKS


class PeakMemory(threading.Thread):
    """Samples the resident memory of process trees every ``interval`` seconds while running.

    ``peak_kib`` is the largest sum of ``VmRSS`` over the trees of ``pids``
    seen in one sample, or the sum of the roots' own ``VmHWM`` if that is
    larger (it catches a spike between two samples of a single-process
    server).  Forked workers share pages with their parent, so for them the
    sum overstates what is really used.
    """

    def __init__(self, *pids: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True, name=f"rss-{pids[0]}")
        self.pids = pids
        self.interval = interval
        self.peak_kib = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self._sample()
            self._done.wait(self.interval)

    def _sample(self) -> None:
        trees = [member for pid in self.pids for member in process_tree(pid)]
        tree_kib = sum(status_kib(member, "VmRSS") for member in trees)
        roots_kib = sum(status_kib(pid, "VmHWM") for pid in self.pids)
        self.peak_kib = max(self.peak_kib, tree_kib, roots_kib)

    def __enter__(self) -> PeakMemory:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self.join()
        self._sample()

"""Statistics of throughput runs: one row per scenario, the typical run, why a run fails."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from _data import CTSet
from _processes import Server, last_line


@dataclass(frozen=True, slots=True)
class ThroughputRow:
    """One measured scenario of sending a set; ``problem`` is empty for a valid one.

    ``program`` names what is compared: the receiver in ``store.py``, the
    sender in ``scu.py``.  ``peak_rss_kib`` and ``cpu_seconds`` are of that
    program's processes.
    """

    data: CTSet
    concurrency: int
    program: str
    files: int
    seconds: float = 0.0
    megabytes: float = 0.0
    peak_rss_kib: int = 0
    cpu_seconds: float = 0.0
    spread: float = 0.0
    """(slowest - fastest) / median wall time of the runs behind this row."""
    services_cpu: tuple[tuple[str, float], ...] = ()
    """CPU seconds of each engine the program used beside it (PostgreSQL, moto), by name."""
    problem: str = ""

    @property
    def files_per_second(self) -> float:
        return self.files / self.seconds if self.seconds and not self.problem else 0.0

    def summary(self) -> str:
        """One progress line."""
        where = f"{self.data.name} x{self.concurrency} {self.program}"
        if self.problem:
            return f"{where}: {self.problem}"
        return f"{where}: {self.seconds:.2f} s, {self.files_per_second:.0f} files/s"

    def cells(self, *, cpu_first: bool = False) -> list[str]:
        """The table row; the peak RSS and CPU columns swap places with ``cpu_first``."""
        head = [self.data.name, str(self.concurrency), self.program, str(self.files)]
        if self.problem.startswith("unavailable"):
            return [*head, "-", "-", "-", "-", "-", "-", self.problem]
        resources = [f"{self.peak_rss_kib / 1024:.0f}", f"{self.cpu_seconds:.1f}"]
        return [
            *head,
            f"{self.seconds:.2f}",
            f"{self.spread:.0%}",
            f"{self.files / self.seconds:.0f}" if self.seconds else "-",
            f"{self.megabytes / self.seconds:.1f}" if self.seconds else "-",
            *(reversed(resources) if cpu_first else resources),
            f"FAILED: {self.problem}" if self.problem else "ok",
        ]


def typical(runs: Sequence[ThroughputRow]) -> ThroughputRow:
    """The run of median wall time, with the highest peak RSS of all; a failed run, if any.

    ``runs`` must not be empty.
    """
    failed = [row for row in runs if row.problem]
    if failed:
        return failed[0]
    by_time = sorted(runs, key=lambda row: row.seconds)
    median = by_time[len(runs) // 2]
    return dataclasses.replace(
        median,
        peak_rss_kib=max(row.peak_rss_kib for row in runs),
        spread=(by_time[-1].seconds - by_time[0].seconds) / median.seconds,
    )


def throughput_problem(
    codes: Sequence[int | None],
    logs: Sequence[Path],
    stored: int,
    expected: int,
    server: Server | Sequence[Server],
    *,
    sender: str,
    timeout: float,
    quote_senders: bool = False,
) -> str:
    """Why a scenario does not count, or ``""``; ``sender`` names the senders in the reasons.

    ``server`` is the receiver, or each node of a receiver of several.  With
    ``quote_senders``, a short count of stored files adds the senders' last lines.
    """
    problems = []
    for code, log in zip(codes, logs, strict=True):
        if code is None:
            problems.append(f"{sender} killed after {timeout:g} s")
        elif code != 0:
            problems.append(f"{sender} exit {code}: {last_line(log)}")
    if stored != expected:
        said = "; ".join(filter(None, map(last_line, logs))) if quote_senders else ""
        problems.append(f"{stored} of {expected} files stored" + (f" ({said})" if said else ""))
    servers = [server] if isinstance(server, Server) else server
    for node in servers:
        if node.process.poll() is not None:
            returncode = node.process.returncode
            problems.append(f"receiver exited ({returncode}): {last_line(node.output)}")
    return "; ".join(dict.fromkeys(problems))

"""Report formatting: progress lines, plain-text tables, and what machine the numbers are from."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

from _memory import meminfo_kib

from tests.support.processes import REPO_ROOT

if TYPE_CHECKING:
    from _stats import ThroughputRow


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table: text columns left-aligned, numbers right-aligned."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(text) for text in column) for column in zip(headers, *cells, strict=True)]
    numeric = [
        any(_is_number(row[column]) for row in cells)
        and all(_is_number(row[column]) or row[column] in _BLANKS for row in cells)
        for column in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            value.rjust(width) if is_number else value.ljust(width)
            for value, width, is_number in zip(values, widths, numeric, strict=True)
        ).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(headers), rule, *(line(row) for row in cells)])


_BLANKS: Final = frozenset({"", "-"})
"""Cells that say "no value" and do not stop a column of numbers from being right-aligned."""


def _is_number(text: str) -> bool:
    try:
        float(text.removesuffix("%"))
    except ValueError:
        return False
    return True


def report_throughput(
    rows: Sequence[ThroughputRow],
    headers: Sequence[str],
    notes: str,
    *,
    cpu_first: bool = False,
    ours: Sequence[str] = ("dicomd",),
) -> None:
    """Print the table of ``rows``, ``notes`` under it, then the files/s ratios of ``ours``.

    With one program of ours, one column per other program; with several
    (dicomd on other backends), one line per program of ours and one column
    per other program and the first of ours.
    """
    print(format_table(headers, [row.cells(cpu_first=cpu_first) for row in rows]))
    print()
    print(notes)
    print()
    rates = {(row.data.name, row.concurrency, row.program): row.files_per_second for row in rows}
    scenarios = list(dict.fromkeys((row.data.name, row.concurrency) for row in rows))

    def ratio(scenario: tuple[str, int], program: str, other: str) -> str:
        ours_rate = rates.get((*scenario, program), 0.0)
        theirs = rates.get((*scenario, other), 0.0)
        return f"{ours_rate / theirs:.2f}" if ours_rate and theirs and program != other else "-"

    programs = list(dict.fromkeys(row.program for row in rows))
    if len(ours) == 1:
        others = [p for p in programs if p != ours[0]]
        print(f"files/s ratios (above 1: {ours[0]} is faster)")
        print(
            format_table(
                ["set", "assocs", *(f"{ours[0]}/{other}" for other in others)],
                [
                    [name, str(count), *(ratio((name, count), ours[0], other) for other in others)]
                    for name, count in scenarios
                ],
            )
        )
        return
    others = [ours[0], *(p for p in programs if p not in ours)]
    print("files/s ratios: the receiver's over each other's (above 1: the receiver is faster)")
    print(
        format_table(
            ["set", "assocs", "receiver", *(f"/{other}" for other in others)],
            [
                [name, str(count), program, *(ratio((name, count), program, o) for o in others)]
                for name, count in scenarios
                for program in ours
            ],
        )
    )


def progress(text: str) -> None:
    """A line on stderr, at once."""
    print(text, file=sys.stderr, flush=True)


def since(started: float) -> str:
    """Seconds since ``time.perf_counter()`` gave ``started``, for a progress line."""
    return f"{time.perf_counter() - started:.1f} s"


def machine_summary() -> list[str]:
    """What a reader needs to compare numbers from two machines."""
    import pydicom

    import twisted

    def first_line(argv: Sequence[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        except OSError as error:
            return f"unavailable ({error.strerror})"
        return next(iter((done.stdout + done.stderr).strip().splitlines()), "?")

    try:
        import pynetdicom

        pynetdicom_version = pynetdicom.__version__
    except ImportError:
        pynetdicom_version = "not installed"
    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "?",
    )
    memory_kib = meminfo_kib("MemTotal")
    commit = first_line(["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"])
    return [
        f"machine:  {len(os.sched_getaffinity(0))} CPUs usable (nproc), {os.cpu_count()} online,"
        f" {cpu_model}, {memory_kib / 1048576:.1f} GiB RAM, {platform.platform()}",
        f"python:   {platform.python_version()} ({sys.executable})",
        f"dcmtk:    {first_line(['storescu', '--version']).strip('$ ')}",
        f"versions: twisted {twisted.__version__}, pydicom {pydicom.__version__},"
        f" pynetdicom {pynetdicom_version}, dicomd at {commit}",
        f"temp:     {tempfile.gettempdir()}",
    ]


def filesystem_of(path: Path) -> str:
    """The type and device of the file system that holds ``path``, such as ``ext4 /dev/vda``."""
    resolved = path.resolve()
    best = ("?", "?", "")
    for line in Path("/proc/mounts").read_text().splitlines():
        device, mount_point, kind = line.split()[:3]
        if resolved.is_relative_to(mount_point) and len(mount_point) >= len(best[2]):
            best = (kind, device, mount_point)
    return f"{best[0]} {best[1]}"

"""C-STORE sending throughput: ``dicomd store`` against dcmtk's storescu and pynetdicom's storescu.

Run by hand from the repository root::

    .venv/bin/python bench/scu.py [--quick] [--only dicomd,dcmtk] [--repeat 3] [--storage DIR]

The receiver is always dcmtk's ``storescp`` as ``bench/store.py`` runs it
(``--fork +B -dhl -pdu 131072``, ``TCP_NODELAY=1``), so the senders are the
only variable.  For each set of CT instances (1000 of 34 KB, 200 of 526 KB),
over 1 and 8 associations, each sender sends the whole set to a fresh
receiver with an empty folder:

- dicomd: one ``python -m dicomd.cli store --no-progress`` process, with
  ``-j 8`` for 8 associations (it shares the files out by size);
- dcmtk: ``storescu -xf <profile> CT +sd +r`` (one context, CT Image Storage
  in explicit VR little endian), one process, or 8 with one eighth each;
- pynetdicom: ``python -m pynetdicom storescu -cx -xe -r`` (the contexts the
  files need, explicit VR little endian), one process, or 8 likewise.

Wall time runs from starting the first sender to the exit of the last.  A
row counts only if every sender exited 0 and the receiver then holds every
instance; otherwise it reads FAILED with the reason.  Each scenario runs
``--repeat`` times, senders taking turns, and the table shows the run of
median time.  Sender CPU is user + system seconds of every sender process
(what the kernel accounts to reaped children); peak RSS is the largest of
any one sender process, sampled every 50 ms.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Final

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    LOCALHOST,
    CTSet,
    PeakMemory,
    Processes,
    ServerUnavailable,
    cached_ct_set,
    count_files,
    dcmtk_environment,
    dicomd_environment,
    exit_on_sigterm,
    filesystem_of,
    format_table,
    free_port,
    last_line,
    machine_summary,
    part_folders,
    scratch_folder,
    set_bytes,
    wait_until_ready,
)
from store import FULL_SETS, QUICK_SETS, RECEIVERS, SEND_TIMEOUT, STORESCU_PROFILE

CONCURRENCY: Final = (1, 8)
RECEIVER: Final = next(receiver for receiver in RECEIVERS if receiver.name == "dcmtk")
"""bench/store.py's dcmtk storescp, exactly as that benchmark runs it."""

TABLE_NOTES: Final = """\
Each row is the run of median wall time out of --repeat runs, each with a fresh receiver;
spread = (slowest - fastest) / median; one failed run fails the row.  MB = 10^6 bytes of
Part 10 files sent.  tx CPU = user + system CPU seconds of all sender processes together;
peak RSS = the largest resident set of any one sender process (sampled every 50 ms),
highest of the runs."""


@dataclass(frozen=True, slots=True)
class Sender:
    """A storage SCU as a user would run it: ``commands(port, batches, work)`` gives one argv each.

    ``batches`` are the folders each association gets; a sender that runs
    them all from one process returns one argv.
    """

    name: str
    options: str
    commands: Callable[[int, list[list[Path]], Path], list[list[str]]]
    environment: Callable[[], dict[str, str]]


def _dicomd(port: int, batches: list[list[Path]], work: Path) -> list[list[str]]:
    folders = [str(folder) for batch in batches for folder in batch]
    jobs = ["-j", str(len(batches))] if len(batches) > 1 else []
    argv = [sys.executable, "-m", "dicomd.cli", "store", "--no-progress", *jobs]
    return [[*argv, "-aec", RECEIVER.ae_title, LOCALHOST, str(port), *folders]]


def _dcmtk(port: int, batches: list[list[Path]], work: Path) -> list[list[str]]:
    profile = work / "storescu.cfg"
    profile.write_text(STORESCU_PROFILE)
    argv = ["storescu", "-aec", RECEIVER.ae_title, "-xf", str(profile), "CT", "+sd", "+r"]
    return [[*argv, LOCALHOST, str(port), *map(str, batch)] for batch in batches]


def _pynetdicom(port: int, batches: list[list[Path]], work: Path) -> list[list[str]]:
    argv = [sys.executable, "-m", "pynetdicom", "storescu", "-cx", "-xe", "-r"]
    argv += ["-aec", RECEIVER.ae_title, LOCALHOST, str(port)]
    # It takes one path; each batch is one folder (the set, or one of its 8 parts).
    return [[*argv, str(folder)] for (folder,) in batches]


SENDERS: Final = (
    Sender(
        "dicomd",
        "python -m dicomd.cli store --no-progress [-j 8] -aec STORESCP HOST PORT <folders>"
        " (one process; -j 8: 8 associations sharing the files by size)",
        _dicomd,
        dicomd_environment,
    ),
    Sender(
        "dcmtk",
        "storescu -aec STORESCP -xf <profile> CT +sd +r HOST PORT <folders>, TCP_NODELAY=1"
        " (profile: CT Image Storage in explicit VR little endian only)",
        _dcmtk,
        dcmtk_environment,
    ),
    Sender(
        "pynetdicom",
        "python -m pynetdicom storescu -cx -xe -r -aec STORESCP HOST PORT <folder>"
        " (the contexts its files need, explicit VR little endian)",
        _pynetdicom,
        lambda: dict(os.environ),
    ),
)


@dataclass(frozen=True, slots=True)
class Row:
    """One measured scenario; ``problem`` is empty for a valid one."""

    data: CTSet
    concurrency: int
    sender: str
    files: int
    seconds: float = 0.0
    megabytes: float = 0.0
    cpu_seconds: float = 0.0
    peak_rss_kib: int = 0
    spread: float = 0.0
    problem: str = ""

    @property
    def files_per_second(self) -> float:
        return self.files / self.seconds if self.seconds and not self.problem else 0.0

    def summary(self) -> str:
        where = f"{self.data.name} x{self.concurrency} {self.sender}"
        if self.problem:
            return f"{where}: {self.problem}"
        return f"{where}: {self.seconds:.2f} s, {self.files_per_second:.0f} files/s"

    def cells(self) -> list[str]:
        head = [self.data.name, str(self.concurrency), self.sender, str(self.files)]
        if self.problem.startswith("unavailable"):
            return [*head, "-", "-", "-", "-", "-", "-", self.problem]
        return [
            *head,
            f"{self.seconds:.2f}",
            f"{self.spread:.0%}",
            f"{self.files / self.seconds:.0f}" if self.seconds else "-",
            f"{self.megabytes / self.seconds:.1f}" if self.seconds else "-",
            f"{self.cpu_seconds:.1f}",
            f"{self.peak_rss_kib / 1024:.0f}",
            f"FAILED: {self.problem}" if self.problem else "ok",
        ]


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _parse(argv)
    exit_on_sigterm()
    sets = QUICK_SETS if arguments.quick else FULL_SETS
    senders = [sender for sender in SENDERS if sender.name in arguments.only]
    print("\n".join(machine_summary()))
    print()
    for sender in senders:
        print(f"{sender.name + ':':12}{sender.options}")
    print(f"receiver:   {RECEIVER.options}")
    print(f"storage:    under {arguments.storage} ({filesystem_of(arguments.storage)})")
    print()

    rows: list[Row] = []
    with Processes() as processes:
        for data in sets:
            started = time.perf_counter()
            root = cached_ct_set(data)
            _progress(f"set {data.name}: {data.count} files in {root} ({_since(started)})")
            megabytes = set_bytes(root) / 1e6
            for concurrency in CONCURRENCY:
                runs: dict[str, list[Row]] = {sender.name: [] for sender in senders}
                for _ in range(arguments.repeat):  # senders take turns, so drift hits all alike
                    for sender in senders:
                        row = _measure(
                            processes, sender, root, data, concurrency, arguments.storage
                        )
                        runs[sender.name].append(dataclasses.replace(row, megabytes=megabytes))
                        _progress(f"  {row.summary()}")
                rows += [_typical(runs[sender.name]) for sender in senders]
    _report(rows)
    return 1 if any(row.problem for row in rows) else 0


def _typical(runs: list[Row]) -> Row:
    """The run of median wall time, with the highest peak RSS of all; a failed run, if any."""
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


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few files per set, for development")
    parser.add_argument(
        "--only",
        default=",".join(sender.name for sender in SENDERS),
        type=lambda text: set(filter(None, text.split(","))),
        help="comma-separated senders to run (default: all of %(default)s)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs of each scenario; the table shows the median (default: %(default)s)",
    )
    parser.add_argument(
        "--storage",
        type=Path,
        default=Path(tempfile.gettempdir()),
        help="folder under which the receiver stores (default: %(default)s)",
    )
    arguments = parser.parse_args(argv)
    if not arguments.storage.is_dir():
        parser.error(f"--storage: {arguments.storage} is not a folder")
    if arguments.repeat < 1:
        parser.error("--repeat: at least 1")
    unknown = arguments.only - {sender.name for sender in SENDERS}
    if unknown or not arguments.only:
        parser.error(f"--only: unknown sender(s) {', '.join(sorted(unknown)) or '(none given)'}")
    return arguments


def _measure(
    processes: Processes,
    sender: Sender,
    root: Path,
    data: CTSet,
    concurrency: int,
    storage_parent: Path,
) -> Row:
    """Start a receiver, send the set over ``concurrency`` associations, check, stop it."""
    row = Row(data, concurrency, sender.name, data.count)
    with scratch_folder(f"dicomd-bench-scu-{sender.name}-", storage_parent) as work:
        storage = work / "storage"
        storage.mkdir()
        port = free_port()
        argv, env = RECEIVER.command(port, storage, work)
        receiver_output = work / "receiver.out"
        with receiver_output.open("wb") as sink:
            receiver = processes.start(argv, output=sink, env=env, cwd=work)
        try:
            try:
                wait_until_ready(receiver, port, RECEIVER.ae_title, receiver_output)
            except ServerUnavailable as error:
                return dataclasses.replace(row, problem=f"unavailable: {error}")
            commands = sender.commands(port, _batches(root, concurrency), work)
            cpu_before = _children_cpu_seconds()
            started = time.perf_counter()
            codes, logs, peak_kib = _send(processes, work, commands, sender.environment())
            seconds = time.perf_counter() - started
            cpu = _children_cpu_seconds() - cpu_before
            stored = count_files(storage, RECEIVER.stored)
            problem = _problem(codes, logs, stored, data.count, receiver, receiver_output)
        finally:
            processes.stop(receiver)
    return dataclasses.replace(
        row, seconds=seconds, cpu_seconds=cpu, peak_rss_kib=peak_kib, problem=problem
    )


def _children_cpu_seconds() -> float:
    """User + system seconds of every child reaped so far (the senders, once they exit)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _batches(root: Path, concurrency: int) -> list[list[Path]]:
    """The folders each association gets: all of them, or every ``concurrency``-th part folder."""
    if concurrency == 1:
        return [[root]]
    parts = part_folders(root)
    return [parts[index::concurrency] for index in range(concurrency)]


def _send(
    processes: Processes, work: Path, commands: list[list[str]], env: dict[str, str]
) -> tuple[list[int | None], list[Path], int]:
    """Start every command together; exit codes (None: killed at the timeout), logs, peak RSS."""
    logs = [work / f"sender-{index}.log" for index in range(len(commands))]
    started = []
    for argv, log in zip(commands, logs, strict=True):
        with log.open("wb") as sink:
            started.append(processes.start(argv, output=sink, env=env))
    deadline = time.monotonic() + SEND_TIMEOUT
    codes: list[int | None] = []
    with ExitStack() as sampling:
        samplers = [sampling.enter_context(PeakMemory(sender.pid)) for sender in started]
        for sender in started:
            try:
                codes.append(sender.wait(timeout=max(0.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                processes.stop(sender)
                codes.append(None)
    return codes, logs, max(sampler.peak_kib for sampler in samplers)


def _problem(
    codes: list[int | None],
    logs: list[Path],
    stored: int,
    expected: int,
    receiver: subprocess.Popen[bytes],
    receiver_output: Path,
) -> str:
    """Why a scenario does not count, or ``""``."""
    problems = []
    for code, log in zip(codes, logs, strict=True):
        if code is None:
            problems.append(f"sender killed after {SEND_TIMEOUT:g} s")
        elif code != 0:
            problems.append(f"sender exit {code}: {last_line(log)}")
    if stored != expected:
        said = "; ".join(filter(None, map(last_line, logs)))
        problems.append(f"{stored} of {expected} files stored" + (f" ({said})" if said else ""))
    if receiver.poll() is not None:
        problems.append(f"receiver exited ({receiver.returncode}): {last_line(receiver_output)}")
    return "; ".join(dict.fromkeys(problems))


def _report(rows: list[Row]) -> None:
    headers = [
        "set",
        "assocs",
        "sender",
        "files",
        "wall s",
        "spread",
        "files/s",
        "MB/s",
        "tx CPU s",
        "peak RSS MiB",
        "status",
    ]
    print(format_table(headers, [row.cells() for row in rows]))
    print()
    print(TABLE_NOTES)
    print()
    rates = {(row.data.name, row.concurrency, row.sender): row.files_per_second for row in rows}
    scenarios = list(dict.fromkeys((row.data.name, row.concurrency) for row in rows))

    def ratio(scenario: tuple[str, int], other: str) -> str:
        ours, theirs = rates.get((*scenario, "dicomd"), 0.0), rates.get((*scenario, other), 0.0)
        return f"{ours / theirs:.2f}" if ours and theirs else "-"

    print("files/s ratios (above 1: dicomd is faster)")
    print(
        format_table(
            ["set", "assocs", "dicomd/dcmtk", "dicomd/pynetdicom"],
            [
                [
                    name,
                    str(count),
                    ratio((name, count), "dcmtk"),
                    ratio((name, count), "pynetdicom"),
                ]
                for name, count in scenarios
            ],
        )
    )


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _since(started: float) -> str:
    return f"{time.perf_counter() - started:.1f} s"


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        _progress("interrupted: every receiver and sender was stopped")
        sys.exit(130)

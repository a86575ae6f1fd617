"""C-STORE throughput: dicomd against dcmtk's storescp and pynetdicom's storescp.

Run by hand from the repository root::

    .venv/bin/python bench/store.py [--quick] [--only dicomd,dcmtk] [--repeat 3] [--storage DIR]

The sender is always dcmtk's ``storescu``, so the receivers are the only
variable.  For each set of CT instances (many small, fewer large), each number
of concurrent associations (1 and 8) and each receiver, a fresh receiver is
started on a free port with an empty storage folder; the clock runs from the
start of the first ``storescu`` to the exit of the last.  A row counts only if
every ``storescu`` exited 0 and the receiver's folder then holds every
instance; otherwise it is printed as FAILED, with the reason.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
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
    cpu_seconds,
    dcmtk_environment,
    dicomd_command,
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
    write_dicomd_config,
)

FULL_SETS: Final = (
    CTSet(name="34 KB", count=1000, rows=128, columns=128),
    CTSet(name="526 KB", count=200, rows=512, columns=512),
)
QUICK_SETS: Final = (
    CTSet(name="34 KB", count=96, rows=128, columns=128),
    CTSet(name="526 KB", count=16, rows=512, columns=512),
)
CONCURRENCY: Final = (1, 8)
SEND_TIMEOUT: Final = 900.0
"""Seconds one scenario may take before its senders are killed and the row is FAILED."""

MAX_PDU: Final = 131072
"""The largest PDU dcmtk's storescp accepts; pynetdicom gets the same; dicomd keeps its default."""

STORESCU_PROFILE: Final = """\
[[TransferSyntaxes]]
[ExplicitLittle]
TransferSyntax1 = LittleEndianExplicit

[[PresentationContexts]]
[CTExplicitLittle]
PresentationContext1 = CTImageStorage\\ExplicitLittle

[[Profiles]]
[CT]
PresentationContexts = CTExplicitLittle
"""
"""One presentation context, CT Image Storage with explicit VR little endian only.

``storescu -xe`` would propose every uncompressed transfer syntax; the
association profile is the only way to propose exactly one.
"""

TABLE_NOTES: Final = """\
Each row is the run of median wall time out of --repeat runs, each with a fresh receiver;
spread = (slowest - fastest) / median; one failed run fails the row.  MB = 10^6 bytes of
Part 10 files sent.  Peak RSS = the receiver's process tree (sum of VmRSS sampled every
50 ms, or the server's own VmHWM), highest of the runs; forked dcmtk workers share pages,
so their sum overstates.  rx CPU = the receiver's user + system CPU seconds in the run."""

DICOMD_SETTINGS: Final = {"limits": {"max_associations": 64}, "plugins": [{"plugin": "archive"}]}


@dataclass(frozen=True, slots=True)
class Receiver:
    """A storage SCP as a user would run it for throughput.

    ``command(port, storage, work)`` gives the argv and environment; it may
    write files (a configuration) into ``work``.  ``stored`` is the glob
    pattern that matches one stored instance under ``storage``.
    """

    name: str
    ae_title: str
    stored: str
    options: str
    command: Callable[[int, Path, Path], tuple[list[str], dict[str, str]]]


def _dicomd(port: int, storage: Path, work: Path) -> tuple[list[str], dict[str, str]]:
    config = work / "dicomd.yaml"
    write_dicomd_config(config, port=port, storage=storage, extra=DICOMD_SETTINGS)
    return dicomd_command(config, work / "dicomd.log"), dicomd_environment()


def _dcmtk(port: int, storage: Path, work: Path) -> tuple[list[str], dict[str, str]]:
    argv = ["storescp", "--fork", "+B", "-dhl", "-pdu", str(MAX_PDU), "-od", str(storage)]
    return [*argv, str(port)], dcmtk_environment()


def _pynetdicom(port: int, storage: Path, work: Path) -> tuple[list[str], dict[str, str]]:
    argv = [sys.executable, "-m", "pynetdicom", "storescp", "-ba", LOCALHOST]
    return [*argv, "-pdu", str(MAX_PDU), "-od", str(storage), str(port)], dict(os.environ)


RECEIVERS: Final = (
    Receiver(
        "dicomd",
        "DICOMD",
        "*.dcm",
        "twistd -n dicomd -c <yaml>: archive plugin (fsync + SQLite index), max_associations 64,"
        " default max PDU 262144",
        _dicomd,
    ),
    Receiver(
        "dcmtk",
        "STORESCP",
        "*",
        f"storescp --fork +B -dhl -pdu {MAX_PDU} -od <dir> (a process per association,"
        " bit-preserving, no fsync), TCP_NODELAY=1",
        _dcmtk,
    ),
    Receiver(
        "pynetdicom",
        "STORESCP",
        "*",
        f"python -m pynetdicom storescp -ba 127.0.0.1 -pdu {MAX_PDU} -od <dir> (threads,"
        " decodes and re-encodes with pydicom, no fsync)",
        _pynetdicom,
    ),
)


@dataclass(frozen=True, slots=True)
class Row:
    """One measured scenario; ``problem`` is empty for a valid one."""

    data: CTSet
    concurrency: int
    receiver: str
    files: int
    seconds: float = 0.0
    megabytes: float = 0.0
    peak_rss_kib: int = 0
    cpu_seconds: float = 0.0
    spread: float = 0.0
    """(slowest - fastest) / median wall time of the runs behind this row."""
    problem: str = ""

    @property
    def files_per_second(self) -> float:
        return self.files / self.seconds if self.seconds and not self.problem else 0.0

    def summary(self) -> str:
        """One progress line."""
        where = f"{self.data.name} x{self.concurrency} {self.receiver}"
        if self.problem:
            return f"{where}: {self.problem}"
        return f"{where}: {self.seconds:.2f} s, {self.files_per_second:.0f} files/s"

    def cells(self) -> list[str]:
        head = [self.data.name, str(self.concurrency), self.receiver, str(self.files)]
        if self.problem.startswith("unavailable"):
            return [*head, "-", "-", "-", "-", "-", "-", self.problem]
        return [
            *head,
            f"{self.seconds:.2f}",
            f"{self.spread:.0%}",
            f"{self.files / self.seconds:.0f}" if self.seconds else "-",
            f"{self.megabytes / self.seconds:.1f}" if self.seconds else "-",
            f"{self.peak_rss_kib / 1024:.0f}",
            f"{self.cpu_seconds:.1f}",
            f"FAILED: {self.problem}" if self.problem else "ok",
        ]


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _parse(argv)
    exit_on_sigterm()
    sets = QUICK_SETS if arguments.quick else FULL_SETS
    receivers = [receiver for receiver in RECEIVERS if receiver.name in arguments.only]
    print("\n".join(machine_summary()))
    print()
    for receiver in receivers:
        print(f"{receiver.name + ':':12}{receiver.options}")
    print(
        "sender:     storescu -aec <AE> -xf <profile> CT +sd +r <folders>, TCP_NODELAY=1;"
        " profile = CT Image Storage with explicit VR little endian only;"
        f" 1 process with every file, or N processes with 1/N each (N = {max(CONCURRENCY)})"
    )
    print(f"dicomd yaml: {DICOMD_SETTINGS} + ae_title, listen, storage.path")
    print(f"storage:    under {arguments.storage} ({filesystem_of(arguments.storage)})")
    print()

    rows: list[Row] = []
    unavailable: dict[str, str] = {}
    with Processes() as processes, scratch_folder("dicomd-bench-store-") as work:
        profile = work / "storescu.cfg"
        profile.write_text(STORESCU_PROFILE)
        for data in sets:
            started = time.perf_counter()
            root = cached_ct_set(data)
            _progress(f"set {data.name}: {data.count} files in {root} ({_since(started)})")
            megabytes = set_bytes(root) / 1e6
            for concurrency in CONCURRENCY:
                runs: dict[str, list[Row]] = {receiver.name: [] for receiver in receivers}
                for _ in range(arguments.repeat):  # receivers take turns, so drift hits all alike
                    for receiver in receivers:
                        if receiver.name in unavailable:
                            continue
                        row = _measure(
                            processes,
                            receiver,
                            root,
                            data,
                            concurrency,
                            profile=profile,
                            storage_parent=arguments.storage,
                        )
                        row = dataclasses.replace(row, megabytes=megabytes)
                        if row.problem.startswith("unavailable"):
                            unavailable[receiver.name] = row.problem
                        runs[receiver.name].append(row)
                        _progress(f"  {row.summary()}")
                for receiver in receivers:
                    unmeasured = Row(data, concurrency, receiver.name, data.count)
                    rows.append(
                        _typical(runs[receiver.name])
                        or dataclasses.replace(unmeasured, problem=unavailable[receiver.name])
                    )
    _report(rows)
    return 1 if any(row.problem and row.receiver not in unavailable for row in rows) else 0


def _typical(runs: list[Row]) -> Row | None:
    """The run of median wall time, with the highest peak RSS of all; a failed run, if any."""
    if not runs:
        return None
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
        default=",".join(receiver.name for receiver in RECEIVERS),
        type=lambda text: set(filter(None, text.split(","))),
        help="comma-separated receivers to run (default: all of %(default)s)",
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
        help="folder under which the receivers store (default: %(default)s); /dev/shm takes"
        " the disk out of the measurement",
    )
    arguments = parser.parse_args(argv)
    if not arguments.storage.is_dir():
        parser.error(f"--storage: {arguments.storage} is not a folder")
    if arguments.repeat < 1:
        parser.error("--repeat: at least 1")
    unknown = arguments.only - {receiver.name for receiver in RECEIVERS}
    if unknown or not arguments.only:
        parser.error(f"--only: unknown receiver(s) {', '.join(sorted(unknown)) or '(none given)'}")
    return arguments


def _measure(
    processes: Processes,
    receiver: Receiver,
    root: Path,
    data: CTSet,
    concurrency: int,
    *,
    profile: Path,
    storage_parent: Path,
) -> Row:
    """Start ``receiver``, send the set over ``concurrency`` associations, check, stop it."""
    row = Row(data, concurrency, receiver.name, data.count)
    with scratch_folder(f"dicomd-bench-{receiver.name}-", storage_parent) as work:
        storage = work / "storage"
        storage.mkdir()
        port = free_port()
        argv, env = receiver.command(port, storage, work)
        server_output = work / "server.out"
        with server_output.open("wb") as sink:
            server = processes.start(argv, output=sink, env=env, cwd=work)
        try:
            try:
                wait_until_ready(server, port, receiver.ae_title, server_output)
            except ServerUnavailable as error:
                return dataclasses.replace(row, problem=f"unavailable: {error}")
            batches = _batches(root, concurrency)
            with PeakMemory(server.pid) as memory:
                cpu_before = cpu_seconds(server.pid)
                started = time.perf_counter()
                codes, logs = _send(processes, work, receiver.ae_title, port, profile, batches)
                seconds = time.perf_counter() - started
                cpu = cpu_seconds(server.pid) - cpu_before
            stored = count_files(storage, receiver.stored)
            problem = _problem(codes, logs, stored, data.count, server, server_output)
        finally:
            processes.stop(server)
    return dataclasses.replace(
        row, seconds=seconds, peak_rss_kib=memory.peak_kib, cpu_seconds=cpu, problem=problem
    )


def _batches(root: Path, concurrency: int) -> list[list[Path]]:
    """The folders each sender gets: all of them, or every ``concurrency``-th part folder."""
    if concurrency == 1:
        return [[root]]
    parts = part_folders(root)
    return [parts[index::concurrency] for index in range(concurrency)]


def _send(
    processes: Processes,
    work: Path,
    ae_title: str,
    port: int,
    profile: Path,
    batches: list[list[Path]],
) -> tuple[list[int | None], list[Path]]:
    """Start one ``storescu`` per batch together; exit codes (None: killed at the timeout)."""
    logs = [work / f"storescu-{index}.log" for index in range(len(batches))]
    senders = []
    for batch, log in zip(batches, logs, strict=True):
        argv = ["storescu", "-aec", ae_title, "-xf", str(profile), "CT", "+sd", "+r"]
        with log.open("wb") as sink:
            senders.append(
                processes.start(
                    [*argv, LOCALHOST, str(port), *map(str, batch)],
                    output=sink,
                    env=dcmtk_environment(),
                )
            )
    deadline = time.monotonic() + SEND_TIMEOUT
    codes: list[int | None] = []
    for sender in senders:
        try:
            codes.append(sender.wait(timeout=max(0.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            processes.stop(sender)
            codes.append(None)
    return codes, logs


def _problem(
    codes: list[int | None],
    logs: list[Path],
    stored: int,
    expected: int,
    server: subprocess.Popen[bytes],
    server_output: Path,
) -> str:
    """Why a scenario does not count, or ``""``."""
    problems = []
    for code, log in zip(codes, logs, strict=True):
        if code is None:
            problems.append(f"storescu killed after {SEND_TIMEOUT:g} s")
        elif code != 0:
            problems.append(f"storescu exit {code}: {last_line(log)}")
    if stored != expected:
        problems.append(f"{stored} of {expected} files stored")
    if server.poll() is not None:
        problems.append(f"receiver exited ({server.returncode}): {last_line(server_output)}")
    return "; ".join(dict.fromkeys(problems))


def _report(rows: list[Row]) -> None:
    headers = [
        "set",
        "assocs",
        "receiver",
        "files",
        "wall s",
        "spread",
        "files/s",
        "MB/s",
        "peak RSS MiB",
        "rx CPU s",
        "status",
    ]
    print(format_table(headers, [row.cells() for row in rows]))
    print()
    print(TABLE_NOTES)
    print()
    rates = {(row.data.name, row.concurrency, row.receiver): row.files_per_second for row in rows}
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

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
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _arguments import add_throughput_arguments, check_throughput_arguments
from _data import CTSet, count_files, ct_sets, split_batches
from _memory import PeakMemory, cpu_seconds
from _processes import (
    Processes,
    ServerUnavailable,
    exit_on_sigterm,
    scratch_folder,
    serving,
    wait_all,
    write_dicomd_config,
)
from _report import filesystem_of, machine_summary, progress, report_throughput
from _stats import ThroughputRow, throughput_problem, typical

from tests.support.daemons import daemon_command
from tests.support.dcmtk import dcmtk_environment
from tests.support.processes import LOCALHOST, daemon_environment

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

HEADERS: Final = (
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
)

TABLE_NOTES: Final = """\
Each row is the run of median wall time out of --repeat runs, each with a fresh receiver;
spread = (slowest - fastest) / median; one failed run fails the row.  MB = 10^6 bytes of
Part 10 files sent.  Peak RSS = the receiver's process tree (sum of VmRSS sampled every
50 ms, or the server's own VmHWM), highest of the runs; forked dcmtk workers share pages,
so their sum overstates.  rx CPU = the receiver's user + system CPU seconds in the run."""

DICOMD_SETTINGS: Final = {"limits": {"max_associations": 64}}


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


DICOMD_WORKERS: dict[str, object] = {
    "workers": os.cpu_count() or 1,
    "plugins": [{"plugin": "archive"}],
}
"""Set from --workers and --flush before any run."""


def _dicomd(port: int, storage: Path, work: Path) -> tuple[list[str], dict[str, str]]:
    config = work / "dicomd.yaml"
    write_dicomd_config(
        config, port=port, storage=storage, extra={**DICOMD_SETTINGS, **DICOMD_WORKERS}
    )
    return daemon_command(config, work / "dicomd.log"), daemon_environment()


def _dcmtk(port: int, storage: Path, work: Path) -> tuple[list[str], dict[str, str]]:
    argv = ["storescp", "--fork", "+B", "-dhl", "-pdu", str(MAX_PDU), "-od", str(storage)]
    return [*argv, str(port)], dcmtk_environment()


ORTHANC_SETTINGS: Final = {
    "Name": "ORTHANC",
    "DicomAet": "ORTHANC",
    "DicomCheckCalledAet": False,
    "HttpServerEnabled": False,
    "RemoteAccessAllowed": False,
    "SyncStorageArea": True,  # fsync each file before answering, as dicomd does
    "StorageCompression": False,
    "DicomThreadsCount": 8,  # one per association of the 8-association runs
    "MaximumPduLength": MAX_PDU,
    "Plugins": [],
}


def _orthanc(port: int, storage: Path, work: Path) -> tuple[list[str], dict[str, str]]:
    """Orthanc with its SQLite index beside (not in) the storage folder counted for files."""
    index = work / "orthanc-index"
    index.mkdir()
    config = work / "orthanc.json"
    settings = {
        **ORTHANC_SETTINGS,
        "DicomPort": port,
        "StorageDirectory": str(storage),
        "IndexDirectory": str(index),
    }
    config.write_text(json.dumps(settings, indent=2))
    return ["Orthanc", str(config)], dict(os.environ)


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
        "orthanc",
        "ORTHANC",
        "*",
        "Orthanc <json> (Debian package): SyncStorageArea true (fsync), SQLite index,"
        f" DicomThreadsCount 8, MaximumPduLength {MAX_PDU}, HTTP off",
        _orthanc,
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


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _parse(argv)
    DICOMD_WORKERS["workers"] = arguments.workers
    if arguments.flush is not None:
        DICOMD_WORKERS["plugins"] = [{"plugin": "archive", "options": {"flush": arguments.flush}}]
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
    print(f"dicomd yaml: {DICOMD_SETTINGS | DICOMD_WORKERS} + ae_title, listen, storage.path")
    print(f"storage:    under {arguments.storage} ({filesystem_of(arguments.storage)})")
    print()

    rows: list[ThroughputRow] = []
    unavailable: dict[str, str] = {}
    with Processes() as processes, scratch_folder("dicomd-bench-store-") as work:
        profile = work / "storescu.cfg"
        profile.write_text(STORESCU_PROFILE)
        for data, root, megabytes in ct_sets(sets):
            for concurrency in CONCURRENCY:
                runs: dict[str, list[ThroughputRow]] = {receiver.name: [] for receiver in receivers}
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
                        progress(f"  {row.summary()}")
                for receiver in receivers:
                    measured = runs[receiver.name]
                    rows.append(
                        typical(measured)
                        if measured
                        else ThroughputRow(
                            data,
                            concurrency,
                            receiver.name,
                            data.count,
                            problem=unavailable[receiver.name],
                        )
                    )
    report_throughput(rows, HEADERS, TABLE_NOTES)
    return 1 if any(row.problem and row.program not in unavailable for row in rows) else 0


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    names = [receiver.name for receiver in RECEIVERS]
    add_throughput_arguments(
        parser,
        names,
        "receiver",
        storage_help="folder under which the receivers store (default: %(default)s); /dev/shm"
        " takes the disk out of the measurement",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="dicomd's worker processes (default: the number of cores, %(default)s)",
    )
    parser.add_argument(
        "--flush",
        choices=("files", "filesystem"),
        help="the archive's flush option: fdatasync each file and fsync each folder, or one"
        " syncfs for every store that waits (default: the archive's own, files)",
    )
    arguments = parser.parse_args(argv)
    check_throughput_arguments(parser, arguments, names, "receiver")
    if arguments.workers < 1:
        parser.error("--workers: at least 1")
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
) -> ThroughputRow:
    """Start ``receiver``, send the set over ``concurrency`` associations, check, stop it."""
    row = ThroughputRow(data, concurrency, receiver.name, data.count)
    with scratch_folder(f"dicomd-bench-{receiver.name}-", storage_parent) as work:
        try:
            with serving(processes, receiver.command, receiver.ae_title, work) as server:
                batches = split_batches(root, concurrency)
                with PeakMemory(server.process.pid) as memory:
                    cpu_before = cpu_seconds(server.process.pid)
                    started = time.perf_counter()
                    codes, logs = _send(
                        processes, work, receiver.ae_title, server.port, profile, batches
                    )
                    seconds = time.perf_counter() - started
                    cpu = cpu_seconds(server.process.pid) - cpu_before
                stored = count_files(server.storage, receiver.stored)
                problem = throughput_problem(
                    codes,
                    logs,
                    stored,
                    data.count,
                    server,
                    sender="storescu",
                    timeout=SEND_TIMEOUT,
                )
        except ServerUnavailable as error:
            return dataclasses.replace(row, problem=f"unavailable: {error}")
    return dataclasses.replace(
        row, seconds=seconds, peak_rss_kib=memory.peak_kib, cpu_seconds=cpu, problem=problem
    )


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
    return wait_all(processes, senders, SEND_TIMEOUT), logs


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        progress("interrupted: every receiver and sender was stopped")
        sys.exit(130)

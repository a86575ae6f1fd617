"""C-STORE throughput: dicomd against dcmtk's storescp and pynetdicom's storescp.

Run by hand from the repository root::

    .venv/bin/python bench/store.py [--quick] [--only dicomd,dcmtk] [--repeat 3] [--storage DIR]
    .venv/bin/python bench/store.py --backends   # and dicomd on PostgreSQL, S3, three nodes

The sender is always dcmtk's ``storescu``, so the receivers are the only
variable.  For each set of CT instances (many small, fewer large), each number
of concurrent associations (1 and 8) and each receiver, a fresh receiver is
started on a free port with an empty storage folder; the clock runs from the
start of the first ``storescu`` to the exit of the last.  A row counts only if
every ``storescu`` exited 0 and the receiver's folder then holds every
instance; otherwise it is printed as FAILED, with the reason.

With ``--backends``, dicomd also runs as nodes of a shared archive: its index
in PostgreSQL, its instances in files or in S3 (moto's server), one node or
three sharing the database and the bucket (`_archives`); those rows count the
index's rows and the stored objects, and the engines' own CPU is shown apart.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Final

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _archives import Backends, SharedArchive, SharedEngines
from _arguments import add_throughput_arguments, check_throughput_arguments
from _data import CTSet, count_files, ct_sets, split_batches
from _memory import PeakMemory, cpu_seconds
from _processes import (
    Processes,
    Server,
    ServerUnavailable,
    exit_on_sigterm,
    scratch_folder,
    serving,
    wait_all,
    write_dicomd_config,
)
from _report import (
    filesystem_of,
    format_table,
    machine_summary,
    progress,
    report_throughput,
)
from _stats import ThroughputRow, throughput_problem, typical

from tests.support.daemons import daemon_command
from tests.support.dcmtk import dcmtk_environment
from tests.support.processes import LOCALHOST, daemon_environment

Command = Callable[..., tuple[list[str], dict[str, str]]]
"""``command(port, storage, work)`` (and ``backends=``, ``nodes=`` for a shared archive):
argv and environment of a receiver; it may write files (a configuration) into ``work``."""

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

SERVICES_NOTES: Final = """\
CPU seconds of the engines beside dicomd in the run of median wall time (their process
trees: PostgreSQL's postmaster and every connection's process, moto's server), and per
instance; dicomd's own is the table's rx CPU."""

NODES_OF_SEVERAL_WORKERS: Final = 1
"""Each of several nodes runs as one process: three nodes are already more processes than
this machine's cores, and a node per process is how they would spread over machines."""

DICOMD_SETTINGS: Final = {"limits": {"max_associations": 64}}


@dataclass(frozen=True, slots=True)
class Receiver:
    """A storage SCP as a user would run it for throughput.

    ``command`` gives the argv and environment (see `Command`).  ``stored``
    is the glob pattern that matches one stored instance under ``storage``.
    With ``archive``, it is dicomd as ``archive.nodes`` nodes of a shared
    archive, each started by ``command`` with the run's ``backends``.
    """

    name: str
    ae_title: str
    stored: str
    options: str
    command: Command
    archive: SharedArchive | None = None


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


def _dicomd_node(
    port: int, storage: Path, work: Path, *, backends: Backends, nodes: int
) -> tuple[list[str], dict[str, str]]:
    """dicomd as one of ``nodes`` nodes keeping its index (and instances) in ``backends``."""
    config = work / "dicomd.yaml"
    workers = (
        DICOMD_WORKERS if nodes == 1 else {**DICOMD_WORKERS, "workers": NODES_OF_SEVERAL_WORKERS}
    )
    extra = {**DICOMD_SETTINGS, **workers, **backends.settings(storage)}
    write_dicomd_config(config, port=port, storage=storage, extra=extra)
    environment = {**daemon_environment(), **backends.environment}
    return daemon_command(config, work / "dicomd.log"), environment


SHARED_ARCHIVES: Final = (
    Receiver(
        "dicomd-pg",
        "DICOMD",
        "*.dcm",
        "dicomd as above, index.url: its index in PostgreSQL (a database of the cluster,"
        " fsync on, over TCP), the files as above",
        _dicomd_node,
        SharedArchive(objects=False),
    ),
    Receiver(
        "dicomd-pg-s3",
        "DICOMD",
        "*.dcm",
        "dicomd as dicomd-pg, storage.url + endpoint_url: the instances in moto's S3 server"
        " (python -m moto.server), one PutObject each",
        _dicomd_node,
        SharedArchive(objects=True),
    ),
    Receiver(
        "dicomd-pg-s3-3n",
        "DICOMD",
        "*.dcm",
        f"three dicomd-pg-s3 nodes sharing the database and the bucket, each on its own port"
        f" with its own storage.path and workers: {NODES_OF_SEVERAL_WORKERS}; the senders spread"
        " over them (one association: a third of the set to each node, one after another)",
        _dicomd_node,
        SharedArchive(objects=True, nodes=3),
    ),
)
"""dicomd as nodes of a shared archive, with --backends."""


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _parse(argv)
    DICOMD_WORKERS["workers"] = arguments.workers
    if arguments.flush is not None:
        DICOMD_WORKERS["plugins"] = [{"plugin": "archive", "options": {"flush": arguments.flush}}]
    exit_on_sigterm()
    sets = QUICK_SETS if arguments.quick else FULL_SETS
    receivers = [receiver for receiver in _candidates(arguments) if receiver.name in arguments.only]
    print("\n".join(machine_summary()))
    print()
    width = max(12, *(len(receiver.name) + 2 for receiver in receivers))
    for receiver in receivers:
        print(f"{receiver.name + ':':{width}}{receiver.options}")
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
    with (
        Processes() as processes,
        SharedEngines() as engines,
        scratch_folder("dicomd-bench-store-") as work,
    ):
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
                            engines,
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
    ours = [receiver.name for receiver in receivers if receiver.name.startswith("dicomd")]
    report_throughput(rows, HEADERS, TABLE_NOTES, ours=ours or ["dicomd"])
    _report_services(rows)
    return 1 if any(row.problem and row.program not in unavailable for row in rows) else 0


def _candidates(arguments: argparse.Namespace) -> list[Receiver]:
    """The receivers the options allow: those of a shared archive only with --backends."""
    return [*RECEIVERS, *(SHARED_ARCHIVES if arguments.backends else ())]


def _report_services(rows: Sequence[ThroughputRow]) -> None:
    """The CPU of PostgreSQL and moto beside each row that used them."""
    measured = [row for row in rows if row.services_cpu and not row.problem]
    if not measured:
        return
    names = list(dict.fromkeys(name for row in measured for name, _ in row.services_cpu))
    lines = []
    for row in measured:
        seconds = dict(row.services_cpu)
        cells = [row.data.name, str(row.concurrency), row.program, f"{row.cpu_seconds:.1f}"]
        cells.append(f"{row.cpu_seconds / row.files * 1e3:.2f}")
        for name in names:
            used = seconds.get(name)
            per_file = "-" if used is None else f"{used / row.files * 1e3:.2f}"
            cells += ["-" if used is None else f"{used:.1f}", per_file]
        lines.append(cells)
    headers = ["set", "assocs", "receiver", "rx CPU s", "rx ms/file"]
    for name in names:
        headers += [f"{name} CPU s", f"{name} ms/file"]
    print()
    print(format_table(headers, lines))
    print()
    print(SERVICES_NOTES)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    names = [receiver.name for receiver in (*RECEIVERS, *SHARED_ARCHIVES)]
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
        help="dicomd's worker processes (default: the number of cores, %(default)s); each of"
        f" several nodes has {NODES_OF_SEVERAL_WORKERS}",
    )
    parser.add_argument(
        "--flush",
        choices=("files", "filesystem"),
        help="the archive's flush option: fdatasync each file and fsync each folder, or one"
        " syncfs for every store that waits (default: the archive's own, files)",
    )
    parser.add_argument(
        "--backends",
        action="store_true",
        help="also dicomd as nodes of a shared archive: "
        + ", ".join(receiver.name for receiver in SHARED_ARCHIVES)
        + " (PostgreSQL and moto, as the tests run them)",
    )
    arguments = parser.parse_args(argv)
    check_throughput_arguments(parser, arguments, names, "receiver")
    if arguments.workers < 1:
        parser.error("--workers: at least 1")
    if not arguments.backends and arguments.only & {r.name for r in SHARED_ARCHIVES}:
        parser.error("--only: the rows of a shared archive need --backends")
    return arguments


def _measure(
    processes: Processes,
    engines: SharedEngines,
    receiver: Receiver,
    root: Path,
    data: CTSet,
    concurrency: int,
    *,
    profile: Path,
    storage_parent: Path,
) -> ThroughputRow:
    """Start ``receiver`` (its nodes), send the set over ``concurrency`` associations, check,
    stop it."""
    row = ThroughputRow(data, concurrency, receiver.name, data.count)
    with scratch_folder(f"dicomd-bench-{receiver.name}-", storage_parent) as work:
        try:
            with contextlib.ExitStack() as running:
                backends = None
                command = receiver.command
                if receiver.archive is not None:
                    backends = running.enter_context(engines.for_run(work, receiver.archive))
                    nodes = receiver.archive.nodes
                    command = partial(receiver.command, backends=backends, nodes=nodes)
                servers = [
                    running.enter_context(serving(processes, command, receiver.ae_title, folder))
                    for folder in _node_folders(work, receiver)
                ]
                pids = [server.process.pid for server in servers]
                services = backends.services if backends is not None else {}
                rounds = _rounds(root, concurrency, [server.port for server in servers])
                with PeakMemory(*pids) as memory:
                    cpu_before = sum(map(cpu_seconds, pids))
                    services_before = {name: cpu_seconds(pid) for name, pid in services.items()}
                    started = time.perf_counter()
                    codes, logs = _send(processes, work, receiver.ae_title, profile, rounds)
                    seconds = time.perf_counter() - started
                    cpu = sum(map(cpu_seconds, pids)) - cpu_before
                    services_cpu = tuple(
                        (name, cpu_seconds(pid) - services_before[name])
                        for name, pid in services.items()
                    )
                stored = _stored(receiver, servers, backends)
                problem = throughput_problem(
                    codes,
                    logs,
                    stored,
                    data.count,
                    servers,
                    sender="storescu",
                    timeout=SEND_TIMEOUT,
                )
        except ServerUnavailable as error:
            return dataclasses.replace(row, problem=f"unavailable: {error}")
    return dataclasses.replace(
        row,
        seconds=seconds,
        peak_rss_kib=memory.peak_kib,
        cpu_seconds=cpu,
        services_cpu=services_cpu,
        problem=problem,
    )


def _node_folders(work: Path, receiver: Receiver) -> list[Path]:
    """The working folder of each node: ``work`` itself for a receiver of one."""
    nodes = receiver.archive.nodes if receiver.archive is not None else 1
    if nodes == 1:
        return [work]
    folders = [work / f"node-{number}" for number in range(1, nodes + 1)]
    for folder in folders:
        folder.mkdir()
    return folders


def _stored(receiver: Receiver, servers: Sequence[Server], backends: Backends | None) -> int:
    """Instances the receiver kept: its files, or for a shared archive the fewer of its index
    rows and its files or objects (an instance is kept when both are)."""
    if backends is None:
        return count_files(servers[0].storage, receiver.stored)
    if backends.storage_url is not None:
        kept = backends.objects()
    else:
        kept = sum(count_files(server.storage, receiver.stored) for server in servers)
    return min(kept, backends.rows())


Round = list[tuple[int, list[Path]]]
"""Senders started together: the port each sends to, and its folders."""


def _rounds(root: Path, concurrency: int, ports: Sequence[int]) -> list[Round]:
    """Who sends what where: rounds run one after another, the senders of a round together.

    ``concurrency`` senders share the nodes in turn.  One association and
    several nodes: a round per node, each sending its share of the set.
    """
    if concurrency == 1 and len(ports) > 1:
        shares = split_batches(root, len(ports))
        return [[(port, share)] for port, share in zip(ports, shares, strict=True)]
    batches = split_batches(root, concurrency)
    return [[(ports[index % len(ports)], batch) for index, batch in enumerate(batches)]]


def _send(
    processes: Processes,
    work: Path,
    ae_title: str,
    profile: Path,
    rounds: list[Round],
) -> tuple[list[int | None], list[Path]]:
    """Each round's ``storescu`` started together, the rounds one after another; exit codes
    (None: killed at the timeout, which counts from the start)."""
    deadline = time.monotonic() + SEND_TIMEOUT
    codes: list[int | None] = []
    logs: list[Path] = []
    for senders_of_round in rounds:
        senders = []
        for port, batch in senders_of_round:
            log = work / f"storescu-{len(logs)}.log"
            logs.append(log)
            argv = ["storescu", "-aec", ae_title, "-xf", str(profile), "CT", "+sd", "+r"]
            with log.open("wb") as sink:
                senders.append(
                    processes.start(
                        [*argv, LOCALHOST, str(port), *map(str, batch)],
                        output=sink,
                        env=dcmtk_environment(),
                    )
                )
        codes += wait_all(processes, senders, max(0.0, deadline - time.monotonic()))
    return codes, logs


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        progress("interrupted: every receiver and sender was stopped")
        sys.exit(130)

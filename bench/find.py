"""C-FIND latency of dicomd's archive at up to a million instances, and of pynetdicom's qrscp.

Run by hand from the repository root::

    .venv/bin/python bench/find.py [--instances 1000000] [--fill bulk|store] [--runs 50]
                                   [--qrscp-studies 100] [--only dicomd] [--profile]

A set of small CT studies (10 series of 10 instances, 8 by 8 pixels, two
studies per patient, four a day; see ``_find_set``) is loaded into dicomd's
archive once and kept, keyed by every parameter, so that only the first run
pays for it: by default through the archive's own indexing code, without the
network (``--fill bulk``), or through its store path by 8 ``storescu`` at once
(``--fill store``).  pynetdicom's qrscp, which stores about 100 instances a
second, gets the first ``--qrscp-studies`` studies by ``storescu``.

Four queries (an exact Patient ID, a ``DOE*`` Patient's Name, a Study Date
range, the instances of one series) are each sent ``--runs`` times by dcmtk
``findscu -S`` (one process each: start to exit, association included, as a
peer sees it) and ``--runs`` times by dicomd's own client on one association
(the C-FIND round trip alone); dicomd's query engine is also timed in this
process, without the network.  The table shows medians and 95th
percentiles; a query whose round trip misses the target gets its SQL and
SQLite's plan for it.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import json
import os
import pstats
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _data import EXPLICIT_VR_LITTLE_ENDIAN
from _find_set import (
    FindSet,
    QueryKind,
    bulk_archive,
    cache_root,
    cached_find_files,
    query_kinds,
    study_folder,
)
from _processes import (
    Processes,
    ServerUnavailable,
    exit_on_sigterm,
    last_line,
    wait_until_ready,
    write_dicomd_config,
)
from _report import format_table, machine_summary, progress, since

from tests.support.daemons import daemon_command
from tests.support.dcmtk import dcmtk_environment
from tests.support.processes import LOCALHOST, daemon_environment, free_tcp_port

STUDY_ROOT_FIND: Final = "1.2.840.10008.5.1.4.1.2.2.1"
SENDERS: Final = 8
STARTUP_TIMEOUT: Final = 1800.0
"""Seconds a server may take to answer C-ECHO: dicomd reconciles every file at start-up."""
FILL_TIMEOUT: Final = 12 * 3600.0
FIND_TIMEOUT: Final = 120.0
DEFAULT_INSTANCES: Final = 1_000_000
QUICK_INSTANCES: Final = 10_000
TARGET_ROUND_TRIP_MS: Final = 10.0
TARGET_INSTANCES: Final = 1_000_000
"""The target: a round trip p50 under 10 ms for each query, at a million instances."""
TARGET_FINDSCU_MS: Final = 20.0
"""The earlier target: findscu, start to exit, p50 under 20 ms for each study-level query."""
PROFILE_LINES: Final = 25

DICOMD_SETTINGS: Final = {"limits": {"max_associations": 64}, "plugins": [{"plugin": "archive"}]}
_RECONCILED: Final = "instances indexed; removed"
"""Words of the archive's start-up log line that says what reconciliation found."""


# --- servers -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Server:
    """A query SCP to measure, its archive kept in ``cache`` once filled."""

    name: str
    ae_title: str
    studies: int
    """How many studies of the set it holds (the first ones)."""
    bulk: bool
    """Filled without the network (dicomd only); else by ``senders`` storescu at once."""
    senders: int
    cache: Path
    notes: list[str] = field(default_factory=list)

    @property
    def stamp(self) -> Path:
        return self.cache / "filled.json"

    @property
    def database(self) -> Path:
        if self.name == "dicomd":
            return self.cache / "archive" / "index.sqlite"
        return self.cache / "instances.sqlite"

    def command(
        self, port: int, work: Path, profile: Path | None = None
    ) -> tuple[list[str], dict[str, str]]:
        """The argv and environment that serve the archive under ``cache`` on ``port``;
        dicomd under cProfile, its statistics saved to ``profile`` when it stops, if given."""
        if self.name == "dicomd":
            config = work / "dicomd.yaml"
            write_dicomd_config(
                config, port=port, storage=self.cache / "archive", extra=DICOMD_SETTINGS
            )
            argv = daemon_command(config, work / "dicomd.log")
            if profile is not None:
                at = argv.index("-n") + 1
                argv[at:at] = [f"--profile={profile}", "--profiler=cprofile", "--savestats"]
            return argv, daemon_environment()
        argv = [sys.executable, "-m", "pynetdicom", "qrscp", "-aet", self.ae_title]
        argv += ["-ba", LOCALHOST, "--port", str(port)]
        argv += ["--database-location", str(self.database)]
        argv += ["--instance-location", str(self.cache / "instances")]
        return argv, dict(os.environ)

    def indexed(self) -> int:
        """How many instances the server's own database lists."""
        table = "instances" if self.name == "dicomd" else "instance"
        connection = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True)
        try:
            return connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        finally:
            connection.close()


def _servers(spec: FindSet, qrscp_studies: int, only: set[str], bulk: bool) -> list[Server]:
    servers = []
    if "dicomd" in only:
        how = (
            "bulk-loaded through dicomd.archive.index (record_from_dataset, adding,"
            " ArchiveIndex.write in batches); every row's file is a hard link to the study's"
            " first instance, which serves C-FIND only"
            if bulk
            else f"filled by {SENDERS} storescu at once"
        )
        servers.append(
            Server(
                "dicomd",
                "DICOMD",
                spec.studies,
                bulk,
                0 if bulk else SENDERS,
                cache_root() / f"{spec.key}-dicomd{'-bulk' if bulk else ''}",
                [
                    "twistd -n dicomd -c <yaml>: archive plugin (SQLite index),"
                    f" {DICOMD_SETTINGS}; {how}"
                ],
            )
        )
    if "pynetdicom" in only:
        studies = min(qrscp_studies, spec.studies)
        notes = [
            "python -m pynetdicom qrscp -aet QRSCP -ba 127.0.0.1 --port <port> --database-location"
            " <db> --instance-location <dir>: one SQLAlchemy table of instances; filled by 1"
            " storescu"
        ]
        if studies < spec.studies:
            loaded = studies * spec.instances_per_study
            notes.append(
                f"loaded with the first {studies} studies ({loaded} instances), not all"
                f" {spec.studies}: it stores about 100 instances/s (a database commit each), so"
                f" the whole set would take about {spec.instances / 100 / 60:.0f} minutes;"
                " --qrscp-studies changes this.  The queries match the same entities in both."
            )
        notes.append(
            "answers a study-level query with one response per matching instance (no"
            " de-duplication by study): see the responses column"
        )
        servers.append(
            Server(
                "pynetdicom",
                "QRSCP",
                studies,
                False,
                1,
                cache_root() / f"{spec.key}-qrscp-{studies}",
                notes,
            )
        )
    return servers


def fill(processes: Processes, server: Server, spec: FindSet) -> dict[str, object]:
    """The record of how ``server``'s archive was filled: from its cache, or filled now.

    The record is written last, and only if the server's database then lists
    every instance: a folder without it is emptied and filled again.
    """
    if server.stamp.exists():
        return json.loads(server.stamp.read_text())
    shutil.rmtree(server.cache, ignore_errors=True)
    server.cache.mkdir(parents=True)
    expected = server.studies * spec.instances_per_study
    if server.bulk:
        how, seconds = "bulk", _fill_bulk(server, spec)
    else:
        how, seconds = f"{server.senders} storescu", _fill_by_storescu(processes, server, spec)
    indexed = server.indexed()
    if indexed != expected:
        raise ServerUnavailable(f"filling {server.name}: {indexed} of {expected} instances indexed")
    record = {
        "instances": indexed,
        "seconds": round(seconds, 1),
        "by": how,
        "filled_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    server.stamp.write_text(json.dumps(record))
    return record


def _fill_bulk(server: Server, spec: FindSet) -> float:
    archive = server.cache / "archive"
    archive.mkdir()
    started = time.perf_counter()
    step = max(spec.instances // 20, 1)

    def report(indexed: int) -> None:
        if indexed % step < spec.instances_per_study * 20 or indexed == spec.instances:
            progress(f"  bulk load: {indexed} of {spec.instances} instances ({since(started)})")

    bulk_archive(spec, archive, report)
    return time.perf_counter() - started


def _fill_by_storescu(processes: Processes, server: Server, spec: FindSet) -> float:
    """The server, started on an empty archive in its cache folder, receives the first
    ``server.studies`` studies from ``server.senders`` storescu at once."""
    files = cached_find_files(spec, server.studies)
    folders = [str(study_folder(files, study)) for study in range(server.studies)]
    with _running(processes, server) as port:
        started = time.perf_counter()
        senders = [
            processes.start(
                [
                    "storescu", "-aec", server.ae_title, "+sd", "+r", LOCALHOST, str(port),
                    *folders[index :: server.senders],
                ],
                env=dcmtk_environment(),
            )
            for index in range(server.senders)
        ]  # fmt: skip
        codes = [sender.wait(timeout=FILL_TIMEOUT) for sender in senders]
        seconds = time.perf_counter() - started
    if any(codes):
        raise ServerUnavailable(f"filling {server.name}: storescu exit codes {codes}")
    return seconds


class _running:
    """``with _running(processes, server) as port``: the server up on a free port, then stopped.

    ``started_in`` is the seconds from starting it to its first C-ECHO answer;
    for dicomd, ``reconciled`` is its start-up line about its archive, written
    ``reconciled_in`` seconds after its start.
    """

    def __init__(self, processes: Processes, server: Server, profile: Path | None = None) -> None:
        self.processes = processes
        self.server = server
        self.profile = profile
        self.work = Path(tempfile.mkdtemp(prefix=f"dicomd-bench-find-{server.name}-"))
        self.started_in = self.reconciled_in = 0.0
        self.reconciled = ""

    def __enter__(self) -> int:
        port = free_tcp_port()
        argv, env = self.server.command(port, self.work, self.profile)
        self.output = self.work / "server.out"
        started = time.perf_counter()
        with self.output.open("wb") as sink:
            self.child = self.processes.start(argv, output=sink, env=env, cwd=self.work)
        try:
            if self.server.name == "dicomd":
                self.reconciled = self._reconciliation(started + STARTUP_TIMEOUT)
                self.reconciled_in = time.perf_counter() - started
            wait_until_ready(
                self.child, port, self.server.ae_title, self.output, timeout=STARTUP_TIMEOUT
            )
        except BaseException:
            self.__exit__()
            raise
        self.started_in = time.perf_counter() - started
        return port

    def _reconciliation(self, deadline: float) -> str:
        """dicomd's log line about its archive, once written: the archive opens before the
        daemon answers, and a C-ECHO sent meanwhile waits unanswered."""
        log = self.work / "dicomd.log"
        while time.perf_counter() < deadline:
            if self.child.poll() is not None:
                raise ServerUnavailable(last_line(log) or f"exited with {self.child.returncode}")
            if log.exists():
                lines = log.read_text(errors="replace").splitlines()
                found = next((line for line in lines if _RECONCILED in line), None)
                if found is not None:
                    return found.split(" ", 2)[-1]
            time.sleep(0.1)
        raise ServerUnavailable(f"no reconciliation within {STARTUP_TIMEOUT:g} s")

    def __exit__(self, *exc_info: object) -> None:
        self.processes.stop(self.child, grace=60.0 if self.profile else 5.0)
        shutil.rmtree(self.work, ignore_errors=True)


# --- measurements ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Timing:
    server: str
    query: str
    matches: int
    responses: int
    process_ms: list[float]
    round_trip_ms: list[float] = field(default_factory=list)
    engine_ms: list[float] = field(default_factory=list)


def findscu_argv(port: int, ae_title: str, keys: dict[str, str]) -> list[str]:
    argv = ["findscu", "-S", "-aec", ae_title]
    for keyword, value in keys.items():
        argv += ["-k", f"{keyword}={value}"]
    return [*argv, LOCALHOST, str(port)]


def count_responses(port: int, ae_title: str, kind: QueryKind) -> tuple[int, int]:
    """(distinct matches, responses) of one findscu run whose answers are written to files."""
    import pydicom

    with tempfile.TemporaryDirectory() as folder:
        argv = findscu_argv(port, ae_title, kind.identifier_keys())
        done = subprocess.run(
            [*argv[:-2], "-X", "-od", folder, *argv[-2:]],
            env=dcmtk_environment(),
            capture_output=True,
            timeout=FIND_TIMEOUT,
            check=False,
        )
        if done.returncode:
            raise ServerUnavailable(f"findscu failed: {done.stderr.decode(errors='replace')}")
        answers = sorted(Path(folder).glob("rsp*.dcm"))
        matches = {pydicom.dcmread(path).get(kind.unique_key) for path in answers}
    return len(matches), len(answers)


def time_process(argv: list[str], *, check: bool = True) -> float:
    """Milliseconds from starting ``argv`` to its exit (dcmtk's environment)."""
    started = time.perf_counter()
    done = subprocess.run(argv, env=dcmtk_environment(), capture_output=True, timeout=FIND_TIMEOUT)
    elapsed = (time.perf_counter() - started) * 1000
    if check and done.returncode:
        raise ServerUnavailable(f"{argv[0]} failed: {done.stderr.decode(errors='replace')}")
    return elapsed


def time_processes(argv: list[str], runs: int, *, check: bool = True) -> list[float]:
    return [time_process(argv, check=check) for _ in range(runs)]


def time_findscu(
    server: Server, port: int, kinds: Sequence[QueryKind], runs: int
) -> tuple[tuple[str, str, list[float]], list[Timing]]:
    """echoscu against ``server`` (the floor of its findscu rows), then findscu for each
    query it holds the matches of, ``runs`` times, the queries taking turns."""
    echo = ["echoscu", "-aec", server.ae_title, LOCALHOST, str(port)]
    floor = (server.name, "C-ECHO (echoscu)", time_processes(echo, runs))
    measured = [kind for kind in kinds if server.studies >= kind.needs_studies]
    argvs = [findscu_argv(port, server.ae_title, kind.identifier_keys()) for kind in measured]
    counts = [count_responses(port, server.ae_title, kind) for kind in measured]
    times: list[list[float]] = [[] for _ in measured]
    for _ in range(runs):
        for argv, kind_times in zip(argvs, times, strict=True):
            kind_times.append(time_process(argv))
    timings = [
        Timing(server.name, kind.name, matches, responses, kind_times)
        for kind, (matches, responses), kind_times in zip(measured, counts, times, strict=True)
    ]
    return floor, timings


def identifier(kind: QueryKind) -> Any:
    from pydicom import Dataset

    dataset = Dataset()
    for keyword, value in kind.identifier_keys().items():
        setattr(dataset, keyword, value)
    return dataset


def time_round_trips(
    targets: list[tuple[str, int, str]], kinds: Sequence[QueryKind], runs: int
) -> dict[tuple[str, str], list[float]]:
    """With dicomd's client, one association per server: milliseconds of each C-FIND, from the
    request to the final response, ``runs`` times per query kind, the kinds taking turns.
    Runs the reactor once."""
    from twisted.internet import defer, reactor

    from dicomd.client import ClientSettings, associate, propose

    results: dict[tuple[str, str], list[float]] = {}
    failures: list[BaseException] = []

    async def measure_all() -> None:
        for name, port, ae_title in targets:
            settings = ClientSettings(called_ae_title=ae_title, calling_ae_title="BENCH")
            association = await associate(
                reactor, LOCALHOST, port, settings, propose([STUDY_ROOT_FIND])
            )
            try:
                identifiers = [(kind, identifier(kind)) for kind in kinds]
                for _ in range(runs):
                    for kind, query in identifiers:
                        started = time.perf_counter()
                        result = await association.find(STUDY_ROOT_FIND, query)
                        elapsed = (time.perf_counter() - started) * 1000
                        results.setdefault((name, kind.name), []).append(elapsed)
                        if result.status != 0:
                            raise ServerUnavailable(f"{name}: C-FIND status {result.status:04X}")
            finally:
                await association.release()

    def run() -> None:
        d = defer.ensureDeferred(measure_all())
        d.addErrback(lambda failure: failures.append(failure.value))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(run)
    reactor.run(installSignalHandlers=False)
    if failures:
        raise failures[0]
    return results


def _find_query(kind: QueryKind) -> Any:
    from dicomd.interfaces import FindQuery

    return FindQuery(identifier(kind), STUDY_ROOT_FIND, kind.level, "BENCH", "DICOMD", LOCALHOST)


def time_engine(database: Path, kinds: Sequence[QueryKind], runs: int) -> dict[str, list[float]]:
    """Milliseconds of dicomd's query engine alone, in this process: what the daemon's threads
    do for a query (``ArchiveQuery.pages`` read with the find service's ``AnswerForm``: SQL
    and each match's answer encoded from its row, no network), ``runs`` times per kind, the
    kinds taking turns; each kind's number of matches checked."""
    from dicomd.archive.index import ArchiveIndex
    from dicomd.archive.query import ArchiveQuery

    engine = ArchiveQuery(ArchiveIndex(database).connect_reader)
    results: dict[str, list[float]] = {kind.name: [] for kind in kinds}
    try:
        queries = [(kind, _find_query(kind)) for kind in kinds]
        for _ in range(runs):
            for kind, query in queries:
                started = time.perf_counter()
                answers = _encoded_answers(engine, query)
                results[kind.name].append((time.perf_counter() - started) * 1000)
                if len(answers) != kind.matches:
                    raise ServerUnavailable(
                        f"dicomd's engine: {len(answers)} matches to {kind.name},"
                        f" {kind.matches} expected"
                    )
    finally:
        engine.close()
    return results


def _encoded_answers(engine: Any, query: Any) -> list[bytes]:
    """The answers the daemon sends to ``query``, as its archive threads make them."""
    from dicomd.node.services.answers import AnswerForm

    form = AnswerForm(query, "DICOMD", EXPLICIT_VR_LITTLE_ENDIAN)
    pages = engine.pages(query)
    try:
        answers = [answer for page in iter(lambda: pages.page(form), []) for answer in page]
    finally:
        pages.close()
    if not all(isinstance(answer, bytes) for answer in answers):
        raise ServerUnavailable("dicomd's engine left answers to pydicom: not the fast path")
    return answers


@dataclass(frozen=True, slots=True)
class Budget:
    """Where one query's time goes, in milliseconds, measured in this process with dicomd's
    own functions: the engine (SQL and each answer encoded from its row, as the daemon's
    threads make them) and the client's decoding (``decode_dataset``); and for comparison,
    the pydicom path the answers took before (a data set per match from the engine, shaped
    and encoded with pydicom: ``ArchiveQuery.find``, ``AnswerForm.encode_match``)."""

    matches: int
    engine: float
    decode: float
    pydicom_path: float

    def lines(self, round_trip: float) -> list[str]:
        rest = round_trip - self.engine - self.decode
        each = max(self.matches, 1)
        return [
            f"{what:48} {ms:6.2f} ms  ({ms / each * 1000:5.0f} us a match)"
            for what, ms in (
                ("engine: SQL and each answer encoded from its row", self.engine),
                ("client: decode each match", self.decode),
                ("the rest: DIMSE, PDUs, sockets, reactors", rest),
                ("round trip p50", round_trip),
                ("for comparison, the engine's pydicom path", self.pydicom_path),
            )
        ]


def response_budget(database: Path, kind: QueryKind, runs: int) -> Budget:
    """`Budget` of ``kind``: the median of ``runs`` runs of each step, in the syntax
    dicomd.client proposes first and dicomd accepts."""
    from dicomd.archive.index import ArchiveIndex
    from dicomd.archive.query import ArchiveQuery
    from dicomd.dimse.datasets import decode_dataset
    from dicomd.node.services.answers import AnswerForm

    engine = ArchiveQuery(ArchiveIndex(database).connect_reader)
    query = _find_query(kind)
    form = AnswerForm(query, "DICOMD", EXPLICIT_VR_LITTLE_ENDIAN)
    steps: dict[str, list[float]] = {"engine": [], "decode": [], "pydicom": []}
    try:
        for _ in range(runs):
            started = time.perf_counter()
            answers = _encoded_answers(engine, query)
            decoded_at = time.perf_counter()
            for data in answers:
                decode_dataset(data, EXPLICIT_VR_LITTLE_ENDIAN)
            pydicom_at = time.perf_counter()
            for match in engine.find(query):
                form.encode_match(match)
            ended = time.perf_counter()
            steps["engine"].append((decoded_at - started) * 1000)
            steps["decode"].append((pydicom_at - decoded_at) * 1000)
            steps["pydicom"].append((ended - pydicom_at) * 1000)
    finally:
        engine.close()
    return Budget(len(answers), *(percentile(times, 0.5) for times in steps.values()))


def query_plan(database: Path, kind: QueryKind) -> list[str]:
    """The SQL dicomd's query compiler makes of ``kind``, its parameters, and SQLite's plan."""
    from dicomd.archive.index import ArchiveIndex
    from dicomd.archive.query import _Statement

    statement = _Statement.build(_find_query(kind), fold_names=False)
    connection = ArchiveIndex(database).connect_reader()
    try:
        rows = connection.execute(
            f"EXPLAIN QUERY PLAN {statement.sql}", statement.parameters
        ).fetchall()
    finally:
        connection.close()
    depth = {0: -1}
    lines = [f"sql: {statement.sql}", f"parameters: {list(statement.parameters)}", "plan:"]
    for node, parent, _unused, detail in rows:
        depth[node] = depth.get(parent, -1) + 1
        lines.append("  " + "  " * depth[node] + detail)
    return lines


def profile_engine(database: Path, kind: QueryKind, runs: int) -> list[str]:
    """The functions the engine spends the most time in over ``runs`` of ``kind``."""
    profiler = cProfile.Profile()
    profiler.runcall(time_engine, database, [kind], runs)
    return _top_functions(pstats.Stats(profiler))


def _top_functions(stats: pstats.Stats) -> list[str]:
    text = io.StringIO()
    stats.stream = text  # type: ignore[attr-defined]
    stats.sort_stats("tottime").print_stats(PROFILE_LINES)
    lines = text.getvalue().splitlines()
    start = next((n for n, line in enumerate(lines) if line.lstrip().startswith("ncalls")), 0)
    return [line for line in lines[start:] if line.strip()]


def percentile(values: Sequence[float], fraction: float) -> float:
    """Linear interpolation between the closest ranks (what ``numpy.percentile`` does)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1, 5, 15 min; {os.cpu_count()} CPUs)"


# --- the run -----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _parse(argv)
    exit_on_sigterm()
    spec = FindSet.of(arguments.instances)
    kinds = query_kinds(spec)
    print("\n".join(machine_summary()))
    print(f"set:      {spec.describe()}")
    print("queries:  Study Root; STUDY level returning", ", ".join(kinds[0].return_keys))
    print("          IMAGE level returning", ", ".join(kinds[-1].return_keys), "; matching:")
    for kind in kinds:
        print(f"          {kind.describe()}")
    print(
        f"timing:   findscu -S (TCP_NODELAY=1): {arguments.runs} runs, start to exit;"
        f" dicomd.client: {arguments.runs} C-FINDs on one association, request to final"
        f" response; engine: dicomd's ArchiveQuery.pages read with the find service's AnswerForm"
        f" in this process; the queries take turns"
    )
    servers = _servers(spec, arguments.qrscp_studies, arguments.only, arguments.fill == "bulk")
    for server in servers:
        for note in server.notes:
            print(f"{server.name + ':':10}{note}")
    if arguments.profile:
        print("profile:  dicomd runs under cProfile: its times are slower than without")
    print(flush=True)

    timings: list[Timing] = []
    nobody = findscu_argv(free_tcp_port(), "NOBODY", kinds[0].identifier_keys())
    floors = [
        ("-", "findscu, nobody listening", time_processes(nobody, arguments.runs, check=False))
    ]
    unavailable: dict[str, str] = {}
    profile_file = cache_root() / "find-daemon.prof" if arguments.profile else None
    if profile_file is not None:
        profile_file.unlink(missing_ok=True)
    with Processes() as processes:
        running = []
        for server in servers:
            try:
                running.append(_start(processes, server, spec, profile_file))
            except ServerUnavailable as error:
                unavailable[server.name] = str(error)
                print(f"{server.name}: unavailable: {error}", flush=True)
        load_before = _load()
        try:
            for server, _, port in running:
                floor, measured = time_findscu(server, port, kinds, arguments.runs)
                floors.append(floor)
                timings += measured
                progress(f"  {server.name}: findscu done")
            round_trips = time_round_trips(
                [(server.name, port, server.ae_title) for server, _, port in running],
                kinds,
                arguments.runs,
            )
            progress("  round trips done")
        finally:
            for _, context, _ in running:
                context.__exit__()
    dicomd = next((server for server in servers if server.name == "dicomd"), None)
    engine: dict[str, list[float]] = {}
    if dicomd is not None and "dicomd" not in unavailable:
        engine = time_engine(dicomd.database, kinds, arguments.runs)
    load_after = _load()
    timings = [
        dataclasses.replace(
            timing,
            round_trip_ms=round_trips[(timing.server, timing.query)],
            engine_ms=engine.get(timing.query, []) if timing.server == "dicomd" else [],
        )
        for timing in timings
    ]
    print(f"load:     {load_before} before the timed runs, {load_after} after")
    _report(timings, floors, arguments.runs, spec, kinds)
    if dicomd is not None and "dicomd" not in unavailable:
        _explain(timings, kinds, dicomd, arguments, profile_file)
    return 1 if "dicomd" in unavailable else 0


def _start(
    processes: Processes, server: Server, spec: FindSet, profile: Path | None
) -> tuple[Server, _running, int]:
    """Fill ``server`` if need be, start it, check it lost no row, and say so."""
    record = fill(processes, server, spec)
    rate = float(record["instances"]) / float(record["seconds"])
    print(
        f"{server.name}: {record['instances']} instances indexed; filled in {record['seconds']} s"
        f" by {record['by']} ({rate:.0f} instances/s) on {record['filled_at']},"
        f" kept in {server.cache}",
        flush=True,
    )
    context = _running(processes, server, profile if server.name == "dicomd" else None)
    port = context.__enter__()
    expected = server.studies * spec.instances_per_study
    indexed = server.indexed()
    if indexed != expected:
        context.__exit__()
        raise ServerUnavailable(f"{indexed} of {expected} instances indexed after start-up")
    if context.reconciled:
        print(f"{server.name}: {context.reconciled}", flush=True)
        print(
            f"{server.name}: reconciled {context.reconciled_in:.1f} s after its start", flush=True
        )
    print(f"{server.name}: answered C-ECHO {context.started_in:.1f} s after its start", flush=True)
    return server, context, port


def _report(
    timings: list[Timing],
    floors: list[tuple[str, str, list[float]]],
    runs: int,
    spec: FindSet,
    kinds: Sequence[QueryKind],
) -> None:
    """The table, then each target met or missed: the earlier findscu one is for study level."""
    study_level = {kind.name for kind in kinds if kind.level == "STUDY"}
    headers = [
        "server",
        "query",
        "matches",
        "responses",
        "findscu p50",
        "p95",
        "round trip p50",
        "p95",
        "engine p50",
        "p95",
    ]

    def milliseconds(times: list[float]) -> list[str]:
        if not times:
            return ["-", "-"]
        return [f"{percentile(times, 0.5):.1f}", f"{percentile(times, 0.95):.1f}"]

    rows = [
        [
            timing.server,
            timing.query,
            timing.matches,
            timing.responses,
            *milliseconds(timing.process_ms),
            *milliseconds(timing.round_trip_ms),
            *milliseconds(timing.engine_ms),
        ]
        for timing in timings
    ]
    for name, what, times in floors:
        rows.append([name, what, "-", "-", *milliseconds(times), "-", "-", "-", "-"])
    print()
    print(format_table(headers, rows))
    print(
        f"\nMilliseconds over {runs} runs each (p50 = median, p95 = 95th percentile).  findscu ="
        " one findscu process from start to exit: association, C-FIND, release.  Round trip ="
        " one C-FIND on an open association with dicomd.client, request to final response."
        "  Engine = dicomd's query engine in the benchmark's process: SQL and each match's"
        " answer encoded from its row, what the daemon does in its threads.  matches = distinct"
        " studies (or instances) answered; responses = pending responses.  'findscu, nobody"
        " listening' = starting findscu, loading its data dictionary and failing to connect:"
        " part of every findscu row.  C-ECHO = echoscu start to exit against that server: the"
        " findscu row without the query."
    )
    scale = (
        ""
        if spec.instances == TARGET_INSTANCES
        else f" (this run holds {spec.instances} instances, not {TARGET_INSTANCES})"
    )
    dicomd = [timing for timing in timings if timing.server == "dicomd"]
    startup = f" (findscu start-up alone: {percentile(floors[0][2], 0.5):.1f} ms)"
    _verdicts(
        f"round trip p50 < {TARGET_ROUND_TRIP_MS:g} ms at {TARGET_INSTANCES} instances",
        [(timing.query, timing.round_trip_ms) for timing in dicomd],
        TARGET_ROUND_TRIP_MS,
        scale,
    )
    _verdicts(
        f"findscu p50 < {TARGET_FINDSCU_MS:g} ms",
        [(timing.query, timing.process_ms) for timing in dicomd if timing.query in study_level],
        TARGET_FINDSCU_MS,
        startup,
    )


def _verdicts(target: str, times: list[tuple[str, list[float]]], limit: float, remark: str) -> None:
    for query, milliseconds in times:
        p50 = percentile(milliseconds, 0.5)
        verdict = "met" if p50 < limit else "MISSED"
        print(f"target dicomd {target}, {query}: {p50:.1f} ms, {verdict}{remark}")


def _explain(
    timings: list[Timing],
    kinds: Sequence[QueryKind],
    dicomd: Server,
    arguments: argparse.Namespace,
    profile_file: Path | None,
) -> None:
    """Where each dicomd query's round trip goes; for each that missed the target its SQL and
    plan too, and with ``--profile`` where the engine and the daemon's reactor thread spend
    their time."""
    by_name = {kind.name: kind for kind in kinds}
    missed = False
    for timing in timings:
        if timing.server != "dicomd":
            continue
        kind = by_name[timing.query]
        round_trip = percentile(timing.round_trip_ms, 0.5)
        verdict = "missed" if round_trip >= TARGET_ROUND_TRIP_MS else "met"
        print(f"\n{verdict}: {kind.describe()}: round trip p50 {round_trip:.1f} ms")
        budget = response_budget(dicomd.database, kind, arguments.runs)
        print("  where the time goes (p50 of each step, in this process, but the round trip):")
        for line in budget.lines(round_trip):
            print(f"    {line}")
        if verdict == "met":
            continue
        missed = True
        for line in query_plan(dicomd.database, kind):
            print(f"  {line}")
        if arguments.profile:
            print(f"  the engine under cProfile, {arguments.runs} runs, by own time:")
            for line in profile_engine(dicomd.database, kind, arguments.runs):
                print(f"    {line}")
    if missed and profile_file is not None and profile_file.exists():
        print(
            "\nthe daemon's reactor thread under cProfile (twistd --profile), every query of the"
            " run, by own time; the archive's threads (SQL, answers) are the engine's above:"
        )
        for line in _top_functions(pstats.Stats(str(profile_file))):
            print(f"  {line}")
    if missed and not arguments.profile:
        print("\n(--profile adds cProfile of the engine and of the daemon to this)")


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--instances",
        type=int,
        default=DEFAULT_INSTANCES,
        help="instances in dicomd's archive, a multiple of 100 (default: %(default)s)",
    )
    parser.add_argument(
        "--quick",
        dest="instances",
        action="store_const",
        const=QUICK_INSTANCES,
        help=f"--instances {QUICK_INSTANCES}, for development",
    )
    parser.add_argument(
        "--fill",
        choices=("bulk", "store"),
        default="bulk",
        help="how dicomd's archive is filled: through its indexing code, or by storescu"
        " (default: %(default)s)",
    )
    parser.add_argument(
        "--runs", type=int, default=50, help="queries of each kind (default: %(default)s)"
    )
    parser.add_argument(
        "--qrscp-studies",
        type=int,
        default=100,
        help="studies pynetdicom's qrscp is loaded with (default: %(default)s;"
        f" at least {max(kind.needs_studies for kind in query_kinds(FindSet(0)))} for every query)",
    )
    parser.add_argument(
        "--only",
        default="dicomd,pynetdicom",
        type=lambda text: set(filter(None, text.split(","))),
        help="comma-separated servers to run (default: %(default)s)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run dicomd under cProfile and profile any query that misses the target",
    )
    arguments = parser.parse_args(argv)
    try:
        FindSet.of(arguments.instances)
    except ValueError as error:
        parser.error(f"--instances: {error}")
    if arguments.runs < 2:
        parser.error("--runs: at least 2")
    if arguments.qrscp_studies < 1:
        parser.error("--qrscp-studies: at least 1")
    unknown = arguments.only - {"dicomd", "pynetdicom"}
    if unknown or not arguments.only:
        parser.error(f"--only: unknown server(s) {', '.join(sorted(unknown)) or '(none given)'}")
    return arguments


if __name__ == "__main__":
    sys.exit(main())

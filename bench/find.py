"""C-FIND latency: dicomd's archive against pynetdicom's qrscp, on 100 000 indexed instances.

Run by hand from the repository root::

    .venv/bin/python bench/find.py [--quick] [--runs 50] [--qrscp-studies 100] [--only dicomd]

A set of small CT instances (1000 studies of 10 series of 10 instances, 8 by
8 pixels, two studies per patient, one study a day) is made once and kept.
Each server is filled through its normal store path, 8 ``storescu`` at once
for dicomd, and the filled archive is kept too, keyed by every parameter, so
that only the first run pays for it.  Then, for each kind of study-level
query (an exact Patient ID, a wildcard Patient's Name, a Study Date range),
the same identifier is sent ``--runs`` times by dcmtk ``findscu -S`` (one
process each: start to exit, association included, as a peer sees it) and
``--runs`` times by dicomd's own client on one association (the C-FIND round
trip alone), and the table shows the median and 95th percentile.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Final

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _data import CT_IMAGE_STORAGE, EXPLICIT_VR_LITTLE_ENDIAN
from _processes import (
    Processes,
    ServerUnavailable,
    exit_on_sigterm,
    wait_until_ready,
    write_dicomd_config,
)
from _report import format_table, machine_summary

from tests.support.daemons import daemon_command
from tests.support.dcmtk import dcmtk_environment
from tests.support.processes import LOCALHOST, daemon_environment, free_tcp_port

STUDY_ROOT_FIND: Final = "1.2.840.10008.5.1.4.1.2.2.1"
SENDERS: Final = 8
STARTUP_TIMEOUT: Final = 300.0
"""Seconds a server may take to answer C-ECHO: dicomd reconciles 100 000 files at start-up."""
FILL_TIMEOUT: Final = 3 * 3600.0
FIND_TIMEOUT: Final = 120.0
TARGET_P50_MS: Final = 20.0

DICOMD_SETTINGS: Final = {"limits": {"max_associations": 64}, "plugins": [{"plugin": "archive"}]}
RETURN_KEYS: Final = (
    "PatientName",
    "PatientID",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
)
"""Asked for by every query: the study keys pynetdicom's qrscp knows too, so both answer alike."""


@dataclass(frozen=True, slots=True)
class FindSet:
    """Studies of series of small CT instances; patient ``n`` has studies ``2n`` and ``2n+1``."""

    studies: int
    series_per_study: int = 10
    instances_per_series: int = 10
    studies_per_patient: int = 2
    pixels: int = 8

    @property
    def instances(self) -> int:
        return self.studies * self.series_per_study * self.instances_per_series

    @property
    def key(self) -> str:
        """Names the cache folders: any parameter that changes the files changes the key."""
        return (
            f"find-v{_GENERATOR_VERSION}-{self.studies}x{self.series_per_study}"
            f"x{self.instances_per_series}-p{self.studies_per_patient}-{self.pixels}px"
        )

    def describe(self) -> str:
        return (
            f"{self.instances} instances: {self.studies} studies x {self.series_per_study} series"
            f" x {self.instances_per_series} instances, {self.pixels}x{self.pixels} pixels,"
            f" {self.studies_per_patient} studies per patient, one study a day from {FIRST_DAY}"
        )


_GENERATOR_VERSION: Final = 1
"""Bump when ``_study_files`` changes, so that cached sets and archives are made again."""
FIRST_DAY: Final = date(2020, 1, 1)


@dataclass(frozen=True, slots=True)
class QueryKind:
    name: str
    keys: tuple[tuple[str, str], ...]
    studies: int
    """How many studies match in any set of at least ``needs_studies`` studies."""
    needs_studies: int

    def identifier_keys(self) -> dict[str, str]:
        return {"QueryRetrieveLevel": "STUDY", **dict.fromkeys(RETURN_KEYS, ""), **dict(self.keys)}


def _day(study: int) -> str:
    return (FIRST_DAY + timedelta(days=study)).strftime("%Y%m%d")


QUERY_KINDS: Final = (
    QueryKind("exact PatientID", (("PatientID", "PID000012"),), 2, 26),
    QueryKind("wildcard PatientName", (("PatientName", "Bench^Patient001*"),), 20, 40),
    QueryKind("StudyDate range", (("StudyDate", f"{_day(40)}-{_day(70)}"),), 31, 71),
)
"""Chosen among the first studies, so a server loaded with fewer of them has the same matches."""

FULL_SET: Final = FindSet(studies=1000)
QUICK_SET: Final = FindSet(studies=100)


# --- the data ----------------------------------------------------------------------------------


def cached_find_set(spec: FindSet) -> Path:
    """The folder of ``spec``'s files, one subfolder per study, made once under the temp folder.

    Made in a scratch folder and renamed into place, so an interrupted run
    never leaves a half-made set that a later run would trust.
    """
    cache = _cache_root() / f"{spec.key}-files"
    if cache.is_dir():
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{cache.name}-", dir=cache.parent))
    try:
        with ProcessPoolExecutor() as pool:
            for study in range(spec.studies):
                pool.submit(_study_files, spec, study, scratch)
        scratch.rename(cache)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return cache


def study_folder(root: Path, study: int) -> Path:
    return root / f"study-{study:04d}"


def _study_files(spec: FindSet, study: int, root: Path) -> None:
    """Write the instances of one study: a CT header a scanner would write, in miniature."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.filewriter import dcmwrite
    from pydicom.uid import generate_uid

    def uid(*parts: object) -> str:
        return generate_uid(entropy_srcs=[spec.key, *map(str, parts)])

    patient = study // spec.studies_per_patient
    folder = study_folder(root, study)
    folder.mkdir()
    pixels = bytes(2 * spec.pixels * spec.pixels)
    for series in range(spec.series_per_study):
        for number in range(1, spec.instances_per_series + 1):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
            meta.MediaStorageSOPInstanceUID = uid("instance", study, series, number)
            meta.TransferSyntaxUID = EXPLICIT_VR_LITTLE_ENDIAN
            ds = Dataset()
            ds.file_meta = meta
            ds.SpecificCharacterSet = "ISO_IR 100"
            ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
            ds.SOPClassUID = CT_IMAGE_STORAGE
            ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
            ds.StudyDate = ds.SeriesDate = _day(study)
            ds.StudyTime = f"{8 + study % 10:02d}{study * 7 % 60:02d}00"
            ds.SeriesTime = f"{8 + study % 10:02d}{study * 7 % 60:02d}{series:02d}"
            ds.AccessionNumber = f"ACC{study:06d}"
            ds.Modality = "CT"
            ds.Manufacturer = "Benchmark Medical Systems"
            ds.InstitutionName = "General Hospital"
            ds.ReferringPhysicianName = "Referrer^Robert"
            ds.StudyDescription = "CT CHEST ABDOMEN PELVIS"
            ds.SeriesDescription = f"AXIAL {series + 1}"
            ds.PatientName = f"Bench^Patient{patient:04d}"
            ds.PatientID = f"PID{patient:06d}"
            ds.PatientBirthDate = f"19{50 + patient % 50:02d}0101"
            ds.PatientSex = "FO"[patient % 2]
            ds.BodyPartExamined = "CHEST"
            ds.StudyInstanceUID = uid("study", study)
            ds.SeriesInstanceUID = uid("series", study, series)
            ds.StudyID = str(study + 1)
            ds.SeriesNumber = series + 1
            ds.InstanceNumber = number
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows = ds.Columns = spec.pixels
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
            ds.PixelData = pixels
            dcmwrite(folder / f"{series:02d}-{number:03d}.dcm", ds, enforce_file_format=True)


def _cache_root() -> Path:
    return Path(tempfile.gettempdir()) / "dicomd-bench"


# --- servers -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Server:
    """A query SCP to measure, its archive kept in ``cache`` once filled."""

    name: str
    ae_title: str
    studies: int
    """How many studies of the set it holds (the first ones)."""
    senders: int
    cache: Path
    notes: list[str] = field(default_factory=list)

    @property
    def stamp(self) -> Path:
        return self.cache / "filled.json"

    def command(self, port: int, work: Path) -> tuple[list[str], dict[str, str]]:
        """The argv and environment that serve the archive under ``cache`` on ``port``."""
        if self.name == "dicomd":
            config = work / "dicomd.yaml"
            write_dicomd_config(
                config, port=port, storage=self.cache / "archive", extra=DICOMD_SETTINGS
            )
            return daemon_command(config, work / "dicomd.log"), daemon_environment()
        argv = [sys.executable, "-m", "pynetdicom", "qrscp", "-aet", self.ae_title]
        argv += ["-ba", LOCALHOST, "--port", str(port)]
        argv += ["--database-location", str(self.cache / "instances.sqlite")]
        argv += ["--instance-location", str(self.cache / "instances")]
        return argv, dict(os.environ)

    def indexed(self) -> int:
        """How many instances the server's own database lists."""
        if self.name == "dicomd":
            database, table = self.cache / "archive" / "index.sqlite", "instances"
        else:
            database, table = self.cache / "instances.sqlite", "instance"
        connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
        try:
            return connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        finally:
            connection.close()


def _servers(spec: FindSet, qrscp_studies: int, only: set[str]) -> list[Server]:
    servers = []
    if "dicomd" in only:
        servers.append(
            Server(
                "dicomd",
                "DICOMD",
                spec.studies,
                SENDERS,
                _cache_root() / f"{spec.key}-dicomd",
                [
                    "twistd -n dicomd -c <yaml>: archive plugin (SQLite index, fsync per instance),"
                    f" {DICOMD_SETTINGS}; filled by {SENDERS} storescu at once"
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
            loaded = studies * spec.instances // spec.studies
            notes.append(
                f"loaded with the first {studies} studies ({loaded} instances), not all"
                f" {spec.studies}: it stores about 100 instances/s (a database commit each), so"
                f" the whole set would take about {spec.instances / 100 / 60:.0f} minutes;"
                " --qrscp-studies changes this.  The queries match the same studies in both."
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
                1,
                _cache_root() / f"{spec.key}-qrscp-{studies}",
                notes,
            )
        )
    return servers


def fill(processes: Processes, server: Server, spec: FindSet, files: Path) -> dict[str, object]:
    """The record of how ``server``'s archive was filled: from its cache, or filled now.

    Filling goes through the server's store path: the server, started on an
    empty archive in its cache folder, receives the first ``server.studies``
    studies from ``server.senders`` storescu at once.  The record is written
    last, and only if the server's database then lists every instance: a
    folder without it is emptied and filled again.
    """
    if server.stamp.exists():
        return json.loads(server.stamp.read_text())
    shutil.rmtree(server.cache, ignore_errors=True)
    server.cache.mkdir(parents=True)
    expected = server.studies * spec.instances // spec.studies
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
    indexed = server.indexed()
    if indexed != expected:
        raise ServerUnavailable(f"filling {server.name}: {indexed} of {expected} instances indexed")
    record = {
        "instances": indexed,
        "seconds": round(seconds, 1),
        "senders": server.senders,
        "filled_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    server.stamp.write_text(json.dumps(record))
    return record


class _running:
    """``with _running(processes, server) as port``: the server up on a free port, then stopped."""

    def __init__(self, processes: Processes, server: Server) -> None:
        self.processes = processes
        self.server = server
        self.work = Path(tempfile.mkdtemp(prefix=f"dicomd-bench-find-{server.name}-"))

    def __enter__(self) -> int:
        port = free_tcp_port()
        argv, env = self.server.command(port, self.work)
        self.output = self.work / "server.out"
        with self.output.open("wb") as sink:
            self.child = self.processes.start(argv, output=sink, env=env, cwd=self.work)
        try:
            wait_until_ready(
                self.child, port, self.server.ae_title, self.output, timeout=STARTUP_TIMEOUT
            )
        except BaseException:
            self.__exit__()
            raise
        return port

    def __exit__(self, *exc_info: object) -> None:
        self.processes.stop(self.child)
        shutil.rmtree(self.work, ignore_errors=True)


# --- measurements ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Timing:
    server: str
    query: str
    matches: int
    responses: int
    process_ms: list[float]
    round_trip_ms: list[float]


def findscu_argv(port: int, ae_title: str, keys: dict[str, str]) -> list[str]:
    argv = ["findscu", "-S", "-aec", ae_title]
    for keyword, value in keys.items():
        argv += ["-k", f"{keyword}={value}"]
    return [*argv, LOCALHOST, str(port)]


def count_responses(port: int, ae_title: str, kind: QueryKind) -> tuple[int, int]:
    """(distinct studies, responses) of one findscu run whose answers are written to files."""
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
        studies = {pydicom.dcmread(path).StudyInstanceUID for path in answers}
    return len(studies), len(answers)


def time_process(argv: list[str], runs: int, *, check: bool = True) -> list[float]:
    """Milliseconds from starting ``argv`` to its exit, ``runs`` times (dcmtk's environment)."""
    env = dcmtk_environment()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run(argv, env=env, capture_output=True, timeout=FIND_TIMEOUT)
        times.append((time.perf_counter() - started) * 1000)
        if check and done.returncode:
            raise ServerUnavailable(f"{argv[0]} failed: {done.stderr.decode(errors='replace')}")
    return times


def time_round_trips(
    targets: list[tuple[str, int, str]], runs: int
) -> dict[tuple[str, str], list[float]]:
    """With dicomd's client, one association per server: milliseconds of each C-FIND, from the
    request to the final response, ``runs`` times per query kind.  Runs the reactor once."""
    from pydicom import Dataset
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
                for kind in QUERY_KINDS:
                    identifier = Dataset()
                    for keyword, value in kind.identifier_keys().items():
                        setattr(identifier, keyword, value)
                    times = results.setdefault((name, kind.name), [])
                    for _ in range(runs):
                        started = time.perf_counter()
                        result = await association.find(STUDY_ROOT_FIND, identifier)
                        times.append((time.perf_counter() - started) * 1000)
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


def percentile(values: Sequence[float], fraction: float) -> float:
    """Linear interpolation between the closest ranks (what ``numpy.percentile`` does)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# --- the run -----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _parse(argv)
    exit_on_sigterm()
    spec = QUICK_SET if arguments.quick else FULL_SET
    print("\n".join(machine_summary()))
    print(f"set:      {spec.describe()}")
    print(f"queries:  Study Root, STUDY level, return keys {', '.join(RETURN_KEYS)}; matching:")
    for kind in QUERY_KINDS:
        print(f"          {kind.name}: {', '.join(f'{k}={v}' for k, v in kind.keys)}")
    print(
        f"timing:   findscu -S (TCP_NODELAY=1): {arguments.runs} runs, start to exit;"
        f" dicomd.client: {arguments.runs} C-FINDs on one association, request to final response"
    )
    servers = _servers(spec, arguments.qrscp_studies, arguments.only)
    for server in servers:
        for note in server.notes:
            print(f"{server.name + ':':10}{note}")
    print(flush=True)

    started = time.perf_counter()
    files = cached_find_set(spec)
    _progress(f"set: {files} ({time.perf_counter() - started:.0f} s)")
    timings: list[Timing] = []
    nobody = findscu_argv(free_tcp_port(), "NOBODY", QUERY_KINDS[0].identifier_keys())
    floors = [("-", "findscu, nobody listening", time_process(nobody, arguments.runs, check=False))]
    unavailable: dict[str, str] = {}
    with Processes() as processes:
        running = []
        for server in servers:
            try:
                record = fill(processes, server, spec, files)
                print(
                    f"{server.name}: {record['instances']} instances indexed; filled in"
                    f" {record['seconds']} s by {record['senders']} storescu"
                    f" ({float(record['instances']) / float(record['seconds']):.0f} instances/s)"
                    f" on {record['filled_at']}, kept in {server.cache}",
                    flush=True,
                )
                context = _running(processes, server)
                port = context.__enter__()
                running.append((server, context, port))
            except ServerUnavailable as error:
                unavailable[server.name] = str(error)
                print(f"{server.name}: unavailable: {error}", flush=True)
        try:
            for server, _, port in running:
                echo = ["echoscu", "-aec", server.ae_title, LOCALHOST, str(port)]
                floors.append((server.name, "C-ECHO (echoscu)", time_process(echo, arguments.runs)))
                for kind in QUERY_KINDS:
                    if server.studies < kind.needs_studies:
                        continue
                    matches, responses = count_responses(port, server.ae_title, kind)
                    argv = findscu_argv(port, server.ae_title, kind.identifier_keys())
                    process_ms = time_process(argv, arguments.runs)
                    timings.append(
                        Timing(server.name, kind.name, matches, responses, process_ms, [])
                    )
                    p50 = percentile(process_ms, 0.5)
                    _progress(f"  {server.name}, {kind.name}: findscu p50 {p50:.1f} ms")
            round_trips = time_round_trips(
                [(server.name, port, server.ae_title) for server, _, port in running],
                arguments.runs,
            )
        finally:
            for _, context, _ in running:
                context.__exit__()
    timings = [
        dataclasses.replace(timing, round_trip_ms=round_trips[(timing.server, timing.query)])
        for timing in timings
    ]
    _report(timings, floors, arguments.runs)
    return 1 if "dicomd" in unavailable else 0


def _report(timings: list[Timing], floors: list[tuple[str, str, list[float]]], runs: int) -> None:
    headers = [
        "server",
        "query",
        "studies",
        "responses",
        "findscu p50",
        "p95",
        "round trip p50",
        "p95",
    ]
    rows = [
        [
            timing.server,
            timing.query,
            timing.matches,
            timing.responses,
            f"{percentile(timing.process_ms, 0.5):.1f}",
            f"{percentile(timing.process_ms, 0.95):.1f}",
            f"{percentile(timing.round_trip_ms, 0.5):.1f}",
            f"{percentile(timing.round_trip_ms, 0.95):.1f}",
        ]
        for timing in timings
    ]
    for name, what, times in floors:
        p50, p95 = percentile(times, 0.5), percentile(times, 0.95)
        rows.append([name, what, "-", "-", f"{p50:.1f}", f"{p95:.1f}", "-", "-"])
    print()
    print(format_table(headers, rows))
    print(
        f"\nMilliseconds over {runs} runs each (p50 = median, p95 = 95th percentile).  findscu ="
        " one findscu process from start to exit: association, C-FIND, release.  Round trip ="
        " one C-FIND on an open association with dicomd.client, request to final response."
        "  studies = distinct studies answered; responses = pending responses."
        "  'findscu, nobody listening' = starting findscu, loading its data dictionary and"
        " failing to connect: part of every findscu row.  C-ECHO = echoscu start to exit"
        " against that server: the findscu row without the query."
    )
    startup = percentile(floors[0][2], 0.5)
    for timing in timings:
        if timing.server == "dicomd":
            p50 = percentile(timing.process_ms, 0.5)
            verdict = "met" if p50 < TARGET_P50_MS else "NOT met"
            print(
                f"target dicomd findscu p50 < {TARGET_P50_MS:g} ms, {timing.query}:"
                f" {p50:.1f} ms, {verdict} (findscu start-up alone: {startup:.1f} ms;"
                f" round trip p50 {percentile(timing.round_trip_ms, 0.5):.1f} ms)"
            )


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_SET.studies} studies, for development"
    )
    parser.add_argument(
        "--runs", type=int, default=50, help="queries of each kind (default: %(default)s)"
    )
    parser.add_argument(
        "--qrscp-studies",
        type=int,
        default=100,
        help="studies pynetdicom's qrscp is loaded with (default: %(default)s;"
        f" at least {max(kind.needs_studies for kind in QUERY_KINDS)} for every query)",
    )
    parser.add_argument(
        "--only",
        default="dicomd,pynetdicom",
        type=lambda text: set(filter(None, text.split(","))),
        help="comma-separated servers to run (default: %(default)s)",
    )
    arguments = parser.parse_args(argv)
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

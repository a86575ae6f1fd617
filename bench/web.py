"""DICOMweb: dicomd's QIDO-RS, WADO-RS and STOW-RS beside Orthanc's DICOMweb plugin.

Run by hand from the repository root::

    .venv/bin/python bench/web.py                       # 10 000 instances, 3 rounds
    .venv/bin/python bench/web.py --instances 1000 --repeat 2 --requests 30   # quick

Both servers start empty, on this machine, and get the same instances by
STOW-RS from the same client.  Each measurement is taken in rounds
(``--repeat``), the two servers taking turns within a round (the first one
alternating from round to round), so that a busy moment of a shared machine
falls on both:

- STOW-RS: the instances to search, in batches of ``--batch`` per request,
  ``--clients`` requests at once, one keep-alive connection each; each round
  stores its share of the set.  Then the large series, the same way.
- QIDO-RS: study searches by patient name prefix, by a range of study dates,
  and ``limit=100``, one client on one keep-alive connection; p50 and p90 of
  every request of every round.
- WADO-RS: every large series, whole, as ``multipart/related;
  type="application/dicom"`` in the stored syntax, the body read to its end,
  each series ``--wado-passes`` times a round.

The servers' CPU (their process trees, dicomd's workers included) is taken
from ``/proc`` around each measurement: on a shared machine it moves less than
wall time.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import urllib3
from _memory import cpu_seconds
from _processes import Processes, ServerUnavailable, exit_on_sigterm, scratch_folder
from _report import filesystem_of, format_table, machine_summary, progress, since
from _web_data import (
    WebSet,
    batches,
    cached_web_set,
    query_set,
    read_files,
    retrieve_set,
    study_date,
)
from _web_profile import Profiler, py_spy
from _web_servers import WebServer, dicomd_web, orthanc_web

WADO_ACCEPT: Final = 'multipart/related; type="application/dicom"; transfer-syntax=*'
READ_CHUNK: Final = 1 << 20
TIMEOUT: Final = urllib3.Timeout(connect=10.0, read=300.0)


@dataclass(slots=True)
class Samples:
    """What one server did in one measurement, over every round."""

    seconds: list[float] = field(default_factory=list)
    """Per request (QIDO) or per round (STOW, WADO)."""
    amounts: list[float] = field(default_factory=list)
    """Instances (STOW) or MB (WADO) of each round."""
    cpu: float = 0.0
    matches: int = 0
    """Studies found by all QIDO requests: the same on both servers, or a search differs."""
    problems: list[str] = field(default_factory=list)

    def rate(self) -> float:
        """The median round's rate (amount per second)."""
        rates = [
            amount / seconds for amount, seconds in zip(self.amounts, self.seconds, strict=True)
        ]
        return statistics.median(rates) if rates else 0.0

    def spread(self) -> float:
        """(fastest - slowest) / median of the rounds' rates."""
        rates = [
            amount / seconds for amount, seconds in zip(self.amounts, self.seconds, strict=True)
        ]
        return (max(rates) - min(rates)) / statistics.median(rates) if len(rates) > 1 else 0.0


def main() -> int:
    arguments = _arguments()
    exit_on_sigterm()
    for line in machine_summary():
        print(line)
    query = query_set(arguments.instances)
    large = retrieve_set(arguments.series, arguments.series_length)
    started = time.perf_counter()
    query_files = read_files(cached_web_set(query))
    large_files = read_files(cached_web_set(large))
    progress(f"sets: {len(query_files)} + {len(large_files)} files ({since(started)})")
    with Processes() as processes, scratch_folder("dicomd-web-bench-") as work:
        print(f"storage:  {filesystem_of(work)} ({work})")
        with contextlib.ExitStack() as running:
            servers = []
            for name, start in (("dicomd", dicomd_web), ("orthanc", orthanc_web)):
                (work / name).mkdir()
                try:
                    servers.append(running.enter_context(start(processes, work / name)))
                except ServerUnavailable as error:
                    print(f"{name}: unavailable: {error}")
            if len(servers) < 2:
                return 1
            profiler = None
            if arguments.profile is not None:
                arguments.profile.mkdir(parents=True, exist_ok=True)
                profiler = Profiler(arguments.profile, py_spy() or "py-spy")
            results = _measure(arguments, servers, query, query_files, large_files, profiler)
        _report(arguments, results)  # before the scratch folder's thousands of files go
        if profiler is not None:
            print()
            print(f"dicomd's profile (py-spy, raw stacks in {arguments.profile}):")
            print("\n".join(profiler.summary()))
    return 0


def _turns(servers: Sequence[WebServer], round_number: int) -> list[WebServer]:
    """The servers in this round's order: the first one alternates from round to round."""
    return list(servers) if round_number % 2 == 0 else list(reversed(servers))


Results = dict[str, dict[str, Samples]]
"""Measurement name -> server name -> samples."""


def _measure(
    arguments: argparse.Namespace,
    servers: Sequence[WebServer],
    query: WebSet,
    query_files: Sequence[bytes],
    large_files: Sequence[bytes],
    profiler: Profiler | None,
) -> Results:
    results: Results = {}

    def samples(measurement: str, server: WebServer) -> Samples:
        return results.setdefault(measurement, {}).setdefault(server.name, Samples())

    query_batches = batches(query_files, arguments.batch)
    rounds = arguments.repeat
    for number in range(rounds):
        share = query_batches[
            number * len(query_batches) // rounds : (number + 1) * len(query_batches) // rounds
        ]
        for server in _turns(servers, number):
            with _profiled(profiler, "stow-small", server):
                _stow(server, share, arguments.clients, samples("stow-small", server))
    large_batches = batches(large_files, max(1, arguments.batch // 10))
    for server in servers:
        with _profiled(profiler, "stow-large", server):
            _stow(server, large_batches, arguments.clients, samples("stow-large", server))
    progress("stored; searching")
    for measurement, queries in _qido_queries(query, arguments.requests).items():
        for number in range(rounds):
            for server in _turns(servers, number):
                with _profiled(profiler, measurement, server):
                    _qido(server, queries, samples(measurement, server))
        progress(f"{measurement}: done")
    series = _series_uids(servers[0], arguments.series) * arguments.wado_passes
    for number in range(rounds):
        for server in _turns(servers, number):
            with _profiled(profiler, "wado", server):
                _wado(server, series, samples("wado", server))
    progress("retrieved")
    return results


def _profiled(
    profiler: Profiler | None, phase: str, server: WebServer
) -> contextlib.AbstractContextManager[None]:
    """Profile dicomd (not Orthanc) during ``phase`` when ``--profile`` asks for it."""
    if profiler is None or server.name != "dicomd":
        return contextlib.nullcontext()
    return profiler.phase(phase, server.pid)


def _server_cpu(server: WebServer) -> float:
    return cpu_seconds(server.pid)


def _stow(server: WebServer, share: Sequence[Sequence[bytes]], clients: int, into: Samples) -> None:
    """POST ``share``'s batches to ``/studies``, ``clients`` at once; one round of ``into``."""
    pending = iter(share)
    lock = threading.Lock()

    def next_batch() -> Sequence[bytes] | None:
        with lock:
            return next(pending, None)

    def client() -> list[str]:
        pool = urllib3.HTTPConnectionPool(
            *_host_port(server), maxsize=1, retries=False, timeout=TIMEOUT
        )
        problems = []
        while (batch := next_batch()) is not None:
            body, content_type = _multipart(batch)
            answer = pool.request(
                "POST",
                f"{_path(server)}/studies",
                body=body,
                headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
            )
            if answer.status != 200:
                problems.append(f"STOW {answer.status}: {answer.data[:200]!r}")
        return problems

    cpu = _server_cpu(server)
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as executor:
        outcomes = list(executor.map(lambda _: client(), range(clients)))
    into.seconds.append(time.perf_counter() - started)
    into.cpu += _server_cpu(server) - cpu
    into.amounts.append(sum(len(batch) for batch in share))
    into.problems += [problem for problems in outcomes for problem in problems]
    progress(
        f"STOW {server.name}: {into.amounts[-1]} instances in {into.seconds[-1]:.2f} s"
        f" ({into.amounts[-1] / into.seconds[-1]:.0f}/s)"
    )


def _multipart(files: Sequence[bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        b"--%s\r\nContent-Type: application/dicom\r\n\r\n%s\r\n" % (boundary.encode(), data)
        for data in files
    ]
    body = b"".join(parts) + b"--%s--\r\n" % boundary.encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def _qido_queries(query: WebSet, requests: int) -> dict[str, list[str]]:
    """Per kind of study search, ``requests`` query strings (each selecting about 10 studies)."""
    studies = query.studies
    decades = max(1, studies // 10)
    prefix = query.patient_prefix
    return {
        "qido-name": [
            f"PatientName={quote(prefix)}{index % decades:03d}*" for index in range(requests)
        ],
        "qido-date": [
            f"StudyDate={study_date(index % decades * 10)}-{study_date(index % decades * 10 + 9)}"
            for index in range(requests)
        ],
        "qido-limit": [f"limit=100&offset={index * 100 % studies}" for index in range(requests)],
    }


def _qido(server: WebServer, queries: Sequence[str], into: Samples) -> None:
    """GET each ``/studies?query`` on one keep-alive connection, timing each."""
    pool = urllib3.HTTPConnectionPool(
        *_host_port(server), maxsize=1, retries=False, timeout=TIMEOUT
    )
    cpu = _server_cpu(server)
    for text in queries:
        started = time.perf_counter()
        answer = pool.request(
            "GET", f"{_path(server)}/studies?{text}", headers={"Accept": "application/dicom+json"}
        )
        into.seconds.append(time.perf_counter() - started)
        if answer.status != 200:
            into.problems.append(f"{text}: {answer.status} {answer.data[:200]!r}")
        elif answer.data:  # 204 or an empty body: no match
            into.matches += len(answer.json())
    into.cpu += _server_cpu(server) - cpu


def _series_uids(server: WebServer, count: int) -> list[tuple[str, str]]:
    """The (study, series) UIDs of the large series, found by QIDO on the first server."""
    pool = urllib3.HTTPConnectionPool(*_host_port(server), retries=False, timeout=TIMEOUT)
    answer = pool.request(
        "GET",
        f"{_path(server)}/series?PatientName=Retrieve*&limit={count}",
        headers={"Accept": "application/dicom+json"},
    )
    found = [(item["0020000D"]["Value"][0], item["0020000E"]["Value"][0]) for item in answer.json()]
    if len(found) != count:
        raise SystemExit(f"{server.name}: {len(found)} large series found, not {count}")
    return found


def _wado(server: WebServer, series: Sequence[tuple[str, str]], into: Samples) -> None:
    """GET every series whole, reading each body to its end; one round of ``into``."""
    pool = urllib3.HTTPConnectionPool(
        *_host_port(server), maxsize=1, retries=False, timeout=TIMEOUT
    )
    received = 0
    cpu = _server_cpu(server)
    started = time.perf_counter()
    for study, uid in series:
        answer = pool.request(
            "GET",
            f"{_path(server)}/studies/{study}/series/{uid}",
            headers={"Accept": WADO_ACCEPT},
            preload_content=False,
        )
        size = sum(len(chunk) for chunk in _chunks(answer))
        answer.release_conn()
        if answer.status != 200:
            into.problems.append(f"WADO {answer.status}")
        received += size
    into.seconds.append(time.perf_counter() - started)
    into.cpu += _server_cpu(server) - cpu
    into.amounts.append(received / 1e6)
    progress(f"WADO {server.name}: {received / 1e6:.1f} MB in {into.seconds[-1]:.2f} s")


def _chunks(answer: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
    while chunk := answer.read(READ_CHUNK):
        yield chunk


def _host_port(server: WebServer) -> tuple[str, int]:
    host_port = server.base_url.split("//", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    return host, int(port)


def _path(server: WebServer) -> str:
    return "/" + server.base_url.split("//", 1)[1].split("/", 1)[1]


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the table: a measurement, how to read its samples, and its target."""

    name: str
    measurement: str
    unit: str
    value: Callable[[Samples], float]
    cpu_per: Callable[[Samples], float]
    target: str
    met: Callable[[float, float], bool]


def _percentile(fraction: float) -> Callable[[Samples], float]:
    def value(samples: Samples) -> float:
        ordered = sorted(samples.seconds)
        return 1000 * ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    return value


def _qido_rows(measurement: str, label: str) -> list[Row]:
    cpu = lambda samples: 1000 * samples.cpu / len(samples.seconds)  # noqa: E731
    return [
        Row(
            f"QIDO {label} p50",
            measurement,
            "ms",
            _percentile(0.5),
            cpu,
            "<= 1x",
            lambda ours, theirs: ours <= theirs,
        ),
        Row(f"QIDO {label} p90", measurement, "ms", _percentile(0.9), cpu, "-", lambda *_: True),
    ]


def _rate_row(name: str, measurement: str, unit: str) -> Row:
    """A throughput row: the median round's rate, CPU per unit, the target of 2x Orthanc's."""
    return Row(
        name,
        measurement,
        unit,
        Samples.rate,
        lambda samples: 1000 * samples.cpu / sum(samples.amounts),
        ">= 2x",
        lambda ours, theirs: ours >= 2 * theirs,
    )


ROWS: Final = (
    *_qido_rows("qido-name", "PatientName=prefix*"),
    *_qido_rows("qido-date", "StudyDate=range"),
    *_qido_rows("qido-limit", "limit=100"),
    _rate_row("WADO-RS series", "wado", "MB/s"),
    _rate_row("STOW-RS 10 KB", "stow-small", "inst/s"),
    _rate_row("STOW-RS 526 KB", "stow-large", "inst/s"),
)


def _report(arguments: argparse.Namespace, results: Results) -> None:
    table = []
    for row in ROWS:
        ours, theirs = results[row.measurement]["dicomd"], results[row.measurement]["orthanc"]
        mine, other = row.value(ours), row.value(theirs)
        problems = ours.problems + theirs.problems
        if ours.matches != theirs.matches:
            problems.append(f"dicomd found {ours.matches} studies, orthanc {theirs.matches}")
        verdict = "-" if row.target == "-" else ("met" if row.met(mine, other) else "missed")
        table.append(
            [
                row.name,
                row.unit,
                f"{mine:.1f}",
                f"{other:.1f}",
                f"{mine / other:.2f}" if other else "-",
                row.target,
                verdict if not problems else f"FAILED: {problems[0]}",
                f"{row.cpu_per(ours):.2f}",
                f"{row.cpu_per(theirs):.2f}",
                f"{ours.spread():.0%}/{theirs.spread():.0%}" if ours.amounts else "-",
            ]
        )
    print()
    print(
        f"{arguments.instances} instances in {query_set(arguments.instances).studies} studies,"
        f" {arguments.repeat} rounds, servers taking turns; QIDO {arguments.requests} requests"
        f" a kind a round; STOW {arguments.batch} a request, {arguments.clients} clients;"
        f" WADO {arguments.series} series x {arguments.series_length} x 526 KB,"
        f" each {arguments.wado_passes} times a round"
    )
    print(
        format_table(
            [
                "measure",
                "unit",
                "dicomd",
                "orthanc",
                "ratio",
                "target",
                "verdict",
                "dicomd CPU ms",
                "orthanc CPU ms",
                "spread d/o",
            ],
            table,
        )
    )
    print()
    print(
        "ratio = dicomd / orthanc.  CPU ms = the server's CPU (process tree) per request (QIDO),\n"
        "per MB (WADO) or per instance (STOW).  Rates are the median round's; spread =\n"
        "(fastest - slowest) / median round."
    )


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--instances", type=int, default=10_000, help="instances to search (default %(default)s)"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds of each measurement (default %(default)s)"
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=100,
        help="QIDO requests of each kind a round (default %(default)s)",
    )
    parser.add_argument(
        "--batch", type=int, default=50, help="instances per STOW request (default %(default)s)"
    )
    parser.add_argument(
        "--clients", type=int, default=4, help="STOW requests at once (default %(default)s)"
    )
    parser.add_argument(
        "--series", type=int, default=4, help="large series to retrieve (default %(default)s)"
    )
    parser.add_argument(
        "--series-length",
        type=int,
        default=20,
        help="instances per large series (default %(default)s)",
    )
    parser.add_argument(
        "--wado-passes",
        type=int,
        default=5,
        help="times each series is retrieved in a round (default %(default)s)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="py-spy dicomd's processes during each measurement, raw stacks into this folder"
        " (the profiler's own CPU then weighs on the figures)",
    )
    arguments = parser.parse_args()
    if arguments.instances < 100 or arguments.repeat < 1 or arguments.requests < 1:
        parser.error("at least 100 instances, 1 round and 1 request")
    return arguments


if __name__ == "__main__":
    sys.exit(main())

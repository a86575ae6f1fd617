"""``/metrics`` of the real daemon, in one process and with two workers: a scripted dcmtk
session moves each counter by exactly what it did.

The session: ``echoscu``, ``storescu`` of a few instances on one association,
``findscu``, an ``echoscu`` calling the wrong AE title (rejected), and
``movescu`` of the study to ``storescp``.  ``/metrics`` is read with urllib
before and after and parsed with prometheus-client's own parser.  With
workers, each scrape lands on whichever worker the kernel hands the
connection to, and every one must report the whole node; workers killed
keep their counts in the node's totals, and their open associations go.
"""

from __future__ import annotations

import os
import signal
import socket
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom import dcmwrite

from dicomd.part10 import read_header
from tests.support.archive import archive_plugin
from tests.support.daemons import RunningDaemon, start_daemon
from tests.support.datasets import ct_dataset
from tests.support.dcmtk import DcmtkPeer, run_dcmtk, run_echoscu
from tests.support.nodes import DESTINATION, TROUBLE_WORDS, move_study, storescp_fixture
from tests.support.processes import LOCALHOST, free_tcp_port
from tests.wire import request

__all__ = ["storescp_fixture"]  # the fixture "storescp", used below

STUDY = "1.2.826.0.1.3680043.10.1414.77"
INSTANCES = 5
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def start_node(folder: Path, storescp: DcmtkPeer, workers: int) -> RunningDaemon:
    """The archive with ``web:`` on, knowing ``storescp`` as a move destination."""
    web_port = free_tcp_port()
    daemon = start_daemon(
        folder,
        {
            "workers": workers,
            "plugins": [archive_plugin()],
            "web": {"listen": f"tcp:{web_port}:interface={LOCALHOST}"},
            "destinations": {DESTINATION: {"host": LOCALHOST, "port": storescp.port}},
        },
    )
    daemon.web_port = web_port  # type: ignore[attr-defined]
    return daemon


@contextmanager
def running(daemon: RunningDaemon) -> Iterator[RunningDaemon]:
    """The daemon until the test ends; then stopped, and its log free of tracebacks."""
    try:
        yield daemon
    finally:
        daemon.stop()
    for word in TROUBLE_WORDS:
        assert word not in daemon.log_text()


@pytest.fixture(params=[1, 2], ids=["one process", "two workers"])
def node(
    request: pytest.FixtureRequest, tmp_path: Path, storescp: DcmtkPeer
) -> Iterator[RunningDaemon]:
    with running(start_node(tmp_path, storescp, request.param)) as daemon:
        yield daemon


@pytest.fixture
def two_workers(tmp_path: Path, storescp: DcmtkPeer) -> Iterator[RunningDaemon]:
    with running(start_node(tmp_path, storescp, 2)) as daemon:
        yield daemon


def scrape(daemon: RunningDaemon) -> Samples:
    """Every sample ``/metrics`` answers, by name and labels."""
    url = f"http://{LOCALHOST}:{daemon.web_port}/metrics"  # type: ignore[attr-defined]
    with urllib.request.urlopen(url, timeout=30) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = answer.read().decode("utf-8")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def echoes(samples: Samples) -> float:
    return value(samples, "dicomd_operations_total", service="echo", status="success")


def settled(daemon: RunningDaemon, open_associations: float = 0) -> Samples:
    """A scrape once the associations of the session are over on the node's side too."""
    deadline = time.monotonic() + 10
    while True:
        samples = scrape(daemon)
        if value(samples, "dicomd_associations_open") == open_associations:
            return samples
        assert time.monotonic() < deadline, "associations stay open"
        time.sleep(0.1)


def study_files(folder: Path) -> list[Path]:
    folder.mkdir()
    files = []
    for number in range(1, INSTANCES + 1):
        dataset = ct_dataset(STUDY, STUDY + ".1", number, rows=16, columns=16)
        path = folder / f"{number}.dcm"
        dcmwrite(path, dataset, enforce_file_format=True)
        files.append(path)
    return files


def test_a_dcmtk_session_moves_each_counter_by_what_it_did(
    node: RunningDaemon, tmp_path: Path
) -> None:
    files = study_files(tmp_path / "sent")
    before = settled(node)
    assert value(before, "dicomd_index_instances") == 0

    assert run_echoscu(node).returncode == 0
    stored = run_dcmtk(
        "storescu", "-aec", node.ae_title, LOCALHOST, str(node.port), *map(str, files)
    )
    assert stored.returncode == 0, stored.stderr
    found = run_dcmtk(
        "findscu", "-S", "-aec", node.ae_title,
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={STUDY}",
        LOCALHOST, str(node.port),
    )  # fmt: skip
    assert found.returncode == 0, found.stderr
    refused = run_echoscu(node, "-aec", "SOMEONE")
    assert refused.returncode != 0
    move_study(node, STUDY, DESTINATION)

    after = settled(node)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("dicomd_associations_accepted_total") == 4
    reason = "called AE title not recognized"
    assert moved("dicomd_associations_rejected_total", reason=reason) == 1
    for service, count in (("echo", 1), ("store", INSTANCES), ("find", 1), ("move", 1)):
        assert moved("dicomd_operations_total", service=service, status="success") == count
        assert moved("dicomd_operation_duration_seconds_count", service=service) == count
    failures = [
        key
        for key, number in after.items()
        if key[0] == "dicomd_operations_total"
        and ("status", "success") not in key[1]
        and number != before.get(key, 0.0)
    ]
    assert failures == []
    assert moved("dicomd_instances_received_total") == INSTANCES
    data_set_bytes = sum(read_header(path).data_set_length for path in files)
    assert moved("dicomd_received_bytes_total") == data_set_bytes
    assert value(after, "dicomd_index_instances") == INSTANCES
    assert moved("dicomd_limit_hits_total", limit="max_associations") == 0


def test_with_workers_every_scrape_reports_the_whole_node_and_dead_workers_counts_stay(
    two_workers: RunningDaemon,
) -> None:
    node = two_workers
    before = settled(node)
    for _ in range(6):
        assert run_echoscu(node).returncode == 0
    scrapes = [settled(node) for _ in range(6)]  # each scrape a new connection, any worker
    expected = echoes(before) + 6
    assert {echoes(scraped) for scraped in scrapes} == {expected}

    with socket.create_connection((LOCALHOST, node.port), timeout=10) as held:
        held.sendall(request().encode())
        assert held.recv(1)[:1] == b"\x02"  # A-ASSOCIATE-AC: an association held open
        settled(node, open_associations=1)
        workers = node.serving_processes()
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while len(set(node.serving_processes()) - set(workers)) < 2:
            assert time.monotonic() < deadline, "the killed workers were not replaced"
            time.sleep(0.1)
    assert run_echoscu(node).returncode == 0
    after = [settled(node) for _ in range(4)]  # the dead workers' open association is gone
    assert {echoes(scraped) for scraped in after} == {expected + 1}
    accepted = value(before, "dicomd_associations_accepted_total") + 8
    assert {value(s, "dicomd_associations_accepted_total") for s in after} == {accepted}

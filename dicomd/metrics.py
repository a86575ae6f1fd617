"""The node's Prometheus metrics: what they are, the calls that move them, and a scrape.

The node's code moves them through the small functions below (an
association accepted, an operation ended, a limit hit...), each a counter
increment or two (a microsecond or so), never per PDU.  A scrape
(`exposition`) writes them in Prometheus' text format, with the number of
instances the archive's index holds, counted at that moment by the caller.

With ``workers: N`` each worker is a process of its own: the parent gives
them a folder in ``PROMETHEUS_MULTIPROC_DIR`` (`multiprocess_folder`), where
prometheus-client keeps each process' values in files, and a scrape on any
worker reads every process' files (``MultiProcessCollector``), so that
``/metrics`` reports the whole node.  A worker that ended keeps its counts;
its gauge of open associations goes (`forget_process`).

Names and labels:

- ``dicomd_associations_open`` (gauge), ``dicomd_associations_accepted_total``;
- ``dicomd_associations_rejected_total{reason}``: the A-ASSOCIATE-RJ reason
  as PS3.8 names it ("called AE title not recognized", "local limit
  exceeded"...), or "user identity refused";
- ``dicomd_operations_total{service, status}``: service ``echo``, ``store``,
  ``find``, ``move``, ``get`` (DIMSE), ``qido``, ``wado``, ``stow``
  (DICOMweb); status ``success``, ``warning``, ``failure`` or ``cancel``;
- ``dicomd_operation_duration_seconds{service}`` (histogram), from the
  request's arrival to its final answer;
- ``dicomd_instances_received_total``, ``dicomd_received_bytes_total``: whole
  data sets handed to the store chain (C-STORE, STOW-RS) and their bytes;
- ``dicomd_limit_hits_total{limit}``: the configuration key of the limit
  (``max_associations``, ``max_command_length``...) that refused something;
- ``dicomd_index_instances`` (gauge): the instances the archive's index holds.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from zope.interface import Interface

from dicomd.describe import rejection_reason

MULTIPROCESS_VARIABLE: Final = "PROMETHEUS_MULTIPROC_DIR"
"""Where prometheus-client keeps the values of every process of the node (workers)."""

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
"""The media type of Prometheus' text format."""

SERVICES: Final = ("echo", "store", "find", "move", "get", "qido", "wado", "stow")
"""The services whose operations are counted, DIMSE's then DICOMweb's."""

STATUS_CATEGORIES: Final = ("success", "warning", "failure", "cancel")

DURATION_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)
"""Seconds: a C-ECHO or a small store takes a millisecond, a study's move minutes."""

IDENTITY_REFUSED: Final = "user identity refused"
"""The rejection reason of a user identity refused: PS3.8 has none of its own for it."""

ASSOCIATIONS_OPEN = Gauge(
    "dicomd_associations_open",
    "Associations accepted and not yet ended",
    multiprocess_mode="livesum",
)
ASSOCIATIONS_ACCEPTED = Counter("dicomd_associations_accepted", "Associations accepted")
ASSOCIATIONS_REJECTED = Counter(
    "dicomd_associations_rejected", "Associations rejected (A-ASSOCIATE-RJ), by reason", ["reason"]
)
OPERATIONS = Counter(
    "dicomd_operations",
    "Operations answered, by service and status category of the final answer",
    ["service", "status"],
)
OPERATION_DURATION = Histogram(
    "dicomd_operation_duration_seconds",
    "Seconds from a request's arrival to its final answer, by service",
    ["service"],
    buckets=DURATION_BUCKETS,
)
INSTANCES_RECEIVED = Counter(
    "dicomd_instances_received", "Whole data sets received for storage (C-STORE, STOW-RS)"
)
BYTES_RECEIVED = Counter(
    "dicomd_received_bytes", "Bytes of the data sets received for storage (C-STORE, STOW-RS)"
)
LIMIT_HITS = Counter(
    "dicomd_limit_hits",
    "Requests refused by a limit of the node, by its configuration key",
    ["limit"],
)
INDEX_INSTANCES: Final = "dicomd_index_instances"

# Label children looked up once: .labels() costs more than the increment itself.
_operations = {
    (service, status): OPERATIONS.labels(service, status)
    for service in SERVICES
    for status in STATUS_CATEGORIES
}
_durations = {service: OPERATION_DURATION.labels(service) for service in SERVICES}


class IIndexSize(Interface):
    """An archive that can say how many instances its index holds (``/metrics``)."""

    def indexed_instances():  # type: ignore[no-untyped-def]
        """A Deferred firing with the number of indexed instances, counted off the
        reactor thread."""


def association_accepted() -> None:
    ASSOCIATIONS_ACCEPTED.inc()
    ASSOCIATIONS_OPEN.inc()


def association_ended() -> None:
    """An association counted by `association_accepted` is over (released, aborted, lost)."""
    ASSOCIATIONS_OPEN.dec()


def association_rejected(source: int, reason: int, *, identity: bool = False) -> None:
    """An A-ASSOCIATE-RJ of (``source``, ``reason``); ``identity`` when it refused the
    peer's user identity (PS3.8 has no reason of its own for that)."""
    label = IDENTITY_REFUSED if identity else rejection_reason(source, reason)
    ASSOCIATIONS_REJECTED.labels(label).inc()


def observe_operation(service: str, status: str, seconds: float | None = None) -> None:
    """One operation of ``service`` (`SERVICES`) ended with a final answer of ``status``
    (`STATUS_CATEGORIES`) after ``seconds``, when known.  DICOMweb calls it too."""
    counter = _operations.get((service, status))
    if counter is None:
        counter = OPERATIONS.labels(service, status)
    counter.inc()
    if seconds is not None:
        duration = _durations.get(service)
        if duration is None:
            duration = OPERATION_DURATION.labels(service)
        duration.observe(max(seconds, 0.0))


def instance_received(size: int) -> None:
    """A whole data set of ``size`` bytes is handed to the store chain."""
    INSTANCES_RECEIVED.inc()
    BYTES_RECEIVED.inc(size)


def limit_hit(limit: str) -> None:
    """Something was refused because of the limit whose configuration key is ``limit``."""
    LIMIT_HITS.labels(limit).inc()


def index_size(instances: int) -> Metric:
    """The index size gauge, with the count the scraper read."""
    family = GaugeMetricFamily(INDEX_INSTANCES, "Instances the archive's index holds")
    family.add_metric([], instances)
    return family


def exposition(extra: Iterable[Metric] = ()) -> bytes:
    """Blocking (files are read in multiprocess mode): every metric of the node in
    Prometheus' text format, then ``extra``.  Call it off the reactor thread."""
    registry = CollectorRegistry(auto_describe=False)
    folder = os.environ.get(MULTIPROCESS_VARIABLE)
    if folder:
        MultiProcessCollector(registry, path=folder)
    else:
        registry.register(_Forward(REGISTRY))
    extra = tuple(extra)
    if extra:
        registry.register(_Fixed(extra))
    return generate_latest(registry)


def multiprocess_folder() -> Path:
    """A new, empty folder for the values of a node's workers (the parent makes it before
    the first worker starts and gives it to them as `MULTIPROCESS_VARIABLE`)."""
    return Path(tempfile.mkdtemp(prefix="dicomd-metrics-"))


def forget_process(folder: Path, pid: int) -> None:
    """A worker ended: its live gauges go; its counts stay, part of the node's totals."""
    mark_process_dead(pid, str(folder))


def remove_folder(folder: Path) -> None:
    """The node stopped: nobody reads its workers' values any more."""
    shutil.rmtree(folder, ignore_errors=True)


class _Forward:
    """The process' own registry (its metrics, and its process and platform collectors)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        return self.registry.collect()


class _Fixed:
    """Metric families read by the scraper before the scrape."""

    def __init__(self, families: tuple[Metric, ...]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families

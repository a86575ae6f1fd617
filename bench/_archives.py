"""Shared archives for ``store.py``: dicomd nodes over a PostgreSQL index and S3 storage.

An archive that several nodes share keeps its index in PostgreSQL
(``index.url``) and, optionally, its instances in S3-compatible object
storage (``storage.url``, ``storage.endpoint_url``); each node keeps its own
``storage.path`` for incoming files.  Here the engines are the tests' own
(`tests.support.postgres`, `tests.support.s3`), so a run needs nothing the
test suite does not:

- one PostgreSQL cluster serves the whole benchmark (``initdb`` takes
  seconds), with fsync on: a node answers once its row is on the disk, as at
  a site.  Each run gets a database of its own, dropped after it;
- each run with object storage gets a moto S3 server of its own (moto keeps
  objects in memory, and a fresh receiver starts empty), stopped after it.

Both engines are processes beside the nodes: their CPU is measured apart
(``Backends.services``), since it is the engines' work, not dicomd's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from _processes import ServerUnavailable

if TYPE_CHECKING:  # imported when first used: the other rows need neither engine's client
    from tests.support.postgres import Cluster
    from tests.support.s3 import MotoS3


@dataclass(frozen=True, slots=True)
class SharedArchive:
    """What a row's nodes share: always the PostgreSQL index; the bucket with ``objects``."""

    objects: bool
    nodes: int = 1


@dataclass(frozen=True, slots=True)
class Backends:
    """Where one run's nodes keep their index and instances, and how to count what they kept."""

    index_url: str
    """The database over TCP, as a node on another machine would reach it."""
    counting_url: str
    storage_url: str | None = None
    endpoint_url: str | None = None
    environment: dict[str, str] = field(default_factory=dict)
    """The AWS variables the nodes need (dummy credentials for moto); none without S3."""
    services: dict[str, int] = field(default_factory=dict)
    """Process ID of each engine (``postgresql``, ``moto``), whose CPU is its process tree's."""

    def settings(self, storage: Path) -> dict[str, object]:
        """A node's ``index`` and ``storage`` keys; ``storage`` is its own folder."""
        kept: dict[str, object] = {"path": str(storage)}
        if self.storage_url is not None:
            kept |= {"url": self.storage_url, "endpoint_url": self.endpoint_url}
        return {"index": {"url": self.index_url}, "storage": kept}

    def rows(self) -> int:
        """Instances indexed: rows committed to the shared index."""
        import psycopg

        with psycopg.connect(self.counting_url) as connection:
            row = connection.execute("SELECT count(*) FROM instances").fetchone()
        return int(row[0]) if row else 0

    def objects(self) -> int:
        """Objects under the archive's prefix of the bucket (0 without object storage)."""
        if self.storage_url is None:
            return 0
        import boto3

        from dicomd.archive.objects import parse_url
        from tests.support.s3 import REGION

        bucket, prefix = parse_url(self.storage_url)
        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=self.environment["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.environment["AWS_SECRET_ACCESS_KEY"],
        )
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sum(page.get("KeyCount", 0) for page in pages)


class SharedEngines(contextlib.AbstractContextManager["SharedEngines"]):
    """The PostgreSQL cluster of a benchmark, started at its first use; ``for_run`` gives
    each run a fresh database (and a fresh moto S3 server)."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self._cluster: Cluster | None = None
        self._names = (f"bench_{number}" for number in itertools.count(1))

    @contextlib.contextmanager
    def for_run(self, work: Path, archive: SharedArchive) -> Iterator[Backends]:
        """The backends of one run, removed when the block ends; ``ServerUnavailable`` if an
        engine is missing or does not start."""
        cluster = self._started_cluster()
        name = next(self._names)
        cluster.create_database(name)
        try:
            with contextlib.ExitStack() as stack:
                backends = Backends(
                    cluster.tcp_url(name),
                    cluster.url(name),
                    services={"postgresql": _postmaster_pid(cluster)},
                )
                if archive.objects:
                    s3 = stack.enter_context(_moto(work))
                    backends = dataclasses.replace(
                        backends,
                        storage_url=s3.url,
                        endpoint_url=s3.endpoint_url,
                        environment={
                            key: value
                            for key, value in s3.environment.items()
                            if key.startswith("AWS_")
                        },
                        services={**backends.services, "moto": s3.pid},
                    )
                yield backends
        finally:
            _drop_database(cluster, name)

    def _started_cluster(self) -> Cluster:
        if self._cluster is None:
            if importlib.util.find_spec("psycopg") is None:
                raise ServerUnavailable("psycopg is not installed: pip install -e '.[bench]'")
            from tests.support.postgres import postgres_cluster

            try:
                self._cluster = self._stack.enter_context(postgres_cluster(durable=True))
            except RuntimeError as error:
                raise ServerUnavailable(str(error).splitlines()[0]) from None
        return self._cluster

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()


@contextlib.contextmanager
def _moto(work: Path) -> Iterator[MotoS3]:
    if importlib.util.find_spec("moto") is None:
        raise ServerUnavailable("moto[server] is not installed: pip install -e '.[bench]'")
    from tests.support.s3 import moto_s3_server

    with moto_s3_server(work) as s3:
        yield s3


def _postmaster_pid(cluster: Cluster) -> int:
    """The server's first process, the parent of every connection's."""
    return int((cluster.data / "postmaster.pid").read_text().split()[0])


def _drop_database(cluster: Cluster, name: str) -> None:
    import psycopg

    with psycopg.connect(cluster.url(), autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

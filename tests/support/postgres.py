"""A throw-away PostgreSQL cluster for the e2e tests: the Debian ``postgresql`` package's
initdb and pg_ctl, on a free port, its socket and data in a temporary folder, removed after.

PostgreSQL refuses to run as root, so when the tests do (CI) the cluster runs as the
``postgres`` user the package creates (or ``nobody``), in a folder that user owns.  A
missing PostgreSQL fails the tests that need it, loudly: scripts/test installs it.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from dicomd.archive.postgres import PostgresIndex
from tests.support.processes import LOCALHOST, free_tcp_port

SUPERUSER = "dicomd"
STOP_DEADLINE = 30.0


def postgres_bin() -> Path:
    """The folder of PostgreSQL's server programs (the newest version installed)."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: int(Path(path).parts[-3]) if Path(path).parts[-3].isdigit() else 0,
    )
    if candidates:
        return Path(candidates[-1]).parent
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        folder = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, check=True
        ).stdout.strip()
        if (Path(folder) / "initdb").exists():
            return Path(folder)
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise RuntimeError(
        "PostgreSQL is not installed (no initdb): apt-get install postgresql, or run scripts/test"
    )


def _run_as() -> list[str]:
    """The command prefix that runs a server program as a user PostgreSQL accepts."""
    if os.getuid() != 0:
        return []
    for user in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(user)
            return ["runuser", "-u", user, "--"]
    raise RuntimeError("running as root, and no postgres or nobody user to run PostgreSQL as")


@dataclass
class Cluster:
    """A running cluster: its folder, its port, and its databases by URL."""

    folder: Path
    port: int
    databases: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def url(self, database: str = "postgres") -> str:
        """A URL for ``database`` over the cluster's socket."""
        return f"postgresql://{SUPERUSER}@/{database}?host={self.folder}&port={self.port}"

    def tcp_url(self, database: str = "postgres") -> str:
        """A URL for ``database`` over TCP, as another process (a daemon) would connect."""
        return f"postgresql://{SUPERUSER}@{LOCALHOST}:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """A new, empty database (named ``name``, else numbered); its URL."""
        name = name or f"database{next(self.databases)}"
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextlib.contextmanager
def postgres_cluster(*, durable: bool = False) -> Iterator[Cluster]:
    """Start a throw-away cluster (UTF-8, C locale, trust authentication), and remove it.

    Its commits skip fsync unless ``durable``: the tests need no power-cut
    safety, a benchmark of what a site would run does.
    """
    bindir = postgres_bin()
    prefix = _run_as()
    folder = Path(tempfile.mkdtemp(prefix="dicomd-pg-"))
    if prefix:
        user = pwd.getpwnam(prefix[2])
        os.chown(folder, user.pw_uid, user.pw_gid)
    cluster = Cluster(folder, free_tcp_port())
    try:
        _check(
            [
                *prefix,
                str(bindir / "initdb"),
                "--pgdata",
                str(cluster.data),
                "--username",
                SUPERUSER,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
                "--no-sync",
            ]
        )
        options = (
            f"-c listen_addresses={LOCALHOST} -c port={cluster.port} "
            f"-c unix_socket_directories={folder} -c fsync={'on' if durable else 'off'} "
            "-c max_connections=200"
        )
        _check(
            [
                *prefix,
                str(bindir / "pg_ctl"),
                "--pgdata",
                str(cluster.data),
                "--log",
                str(folder / "server.log"),
                "--options",
                options,
                "--wait",
                "start",
            ]
        )
        yield cluster
    finally:
        _stop(bindir, prefix, cluster)
        shutil.rmtree(folder, ignore_errors=True)


def _check(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")


def _stop(bindir: Path, prefix: list[str], cluster: Cluster) -> None:
    """pg_ctl stop; if the server will not stop, kill it by the PID it recorded."""
    pid_file = cluster.data / "postmaster.pid"
    if not pid_file.exists():
        return
    command = [*prefix, str(bindir / "pg_ctl"), "--pgdata", str(cluster.data)]
    with contextlib.suppress(subprocess.SubprocessError):
        stopped = subprocess.run(
            [*command, "--mode", "fast", "--wait", "stop"],
            capture_output=True,
            timeout=STOP_DEADLINE,
        )
        if stopped.returncode == 0:
            return
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + STOP_DEADLINE
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.1)


@pytest.fixture(scope="module", name="pg_cluster")
def pg_cluster_fixture() -> Iterator[Cluster]:
    """A throw-away cluster for the tests of one module."""
    with postgres_cluster() as cluster:
        yield cluster


def postgres_index(
    cluster: Cluster, name: str | None = None, *, connections: int = 4
) -> PostgresIndex:
    """An open PostgreSQL index in a new database of ``cluster``."""
    index = PostgresIndex(cluster.create_database(name), connections=connections)
    index.open()
    return index


def terminate_backends(cluster: Cluster, index: PostgresIndex) -> None:
    """End every server process connected to the database of ``index``, as a restart of the
    server or a network failure would."""
    with psycopg.connect(cluster.url(), autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            (conninfo_to_dict(index.url)["dbname"],),
        )

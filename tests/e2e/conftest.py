"""Fixtures for end-to-end tests: the real daemon under ``twistd`` against real peers.

Each test gets its own daemon process on a free port in its own temporary
directory, so tests never share state and a crashed daemon cannot poison the
next test.  The daemon's output is collected by a reader thread and attached to
the report of every failing test, because a failure here is almost always
explained by what the daemon logged.

The helpers behind these fixtures live in ``tests.support``; tests import
them from there.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemons import RunningDaemon, run_twistd, start_daemon
from tests.support.dcmtk import DcmtkPeer, dcmtk_peer, run_echoscu

_DAEMONS = pytest.StashKey[list[RunningDaemon]]()


@pytest.fixture
def start_dicomd(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., RunningDaemon]]:
    """Factory: ``start_dicomd(limits={"max_associations": 2})`` starts a daemon so configured.

    Two keywords are not configuration: ``pythonpath`` (folders the daemon can
    import plugins from) and ``command_prefix`` (see ``start_daemon``).
    """
    started: list[RunningDaemon] = request.node.stash.setdefault(_DAEMONS, [])

    def start(
        *, pythonpath: Sequence[Path] = (), command_prefix: Sequence[str] = (), **overrides: Any
    ) -> RunningDaemon:
        directory = tmp_path / f"daemon{len(started)}"
        directory.mkdir()
        daemon = start_daemon(directory, overrides, pythonpath, command_prefix)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


@pytest.fixture
def dicomd(start_dicomd: Callable[..., RunningDaemon]) -> RunningDaemon:
    """A daemon with the default configuration."""
    return start_dicomd()


@pytest.fixture(scope="module")
def module_daemons() -> Iterator[list[RunningDaemon]]:
    """The daemons a module starts for all its tests, stopped at its end."""
    daemons: list[RunningDaemon] = []
    yield daemons
    for daemon in daemons:
        daemon.stop()


@pytest.fixture
def report_module_daemons(
    request: pytest.FixtureRequest, module_daemons: list[RunningDaemon]
) -> None:
    """A failing test's report carries the log of the module's daemons, as for other e2e tests.

    A module whose daemons serve all its tests uses it for each of them:
    ``pytestmark = pytest.mark.usefixtures("report_module_daemons")``.
    """
    request.node.stash[_DAEMONS] = module_daemons


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed:
        for daemon in item.stash.get(_DAEMONS, []):
            report.sections.append((f"dicomd log (port {daemon.port})", daemon.log_text()))
    return report


@pytest.fixture
def echoscu() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``echoscu(daemon, *options)``: dcmtk's C-ECHO SCU against a running daemon."""
    return run_echoscu


@pytest.fixture
def twistd() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``twistd(config_path)``: run the daemon to completion, for configs that must stop it."""
    return run_twistd


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[DcmtkPeer]:
    """A dcmtk storescp keeping what it receives bit for bit: a C-MOVE destination."""
    folder = tmp_path / "received"
    folder.mkdir()
    with dcmtk_peer("storescp", folder, "+B", "-od", str(folder)) as peer:
        yield peer

"""``twistd dicomd``: options, the service tree and start-up errors, built in memory.

The real ``twistd`` and the installed wheel are tested in ``tests/e2e/test_twistd.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IServiceCollection, MultiService
from twisted.internet.testing import MemoryReactorClock

from dicomd.app import StartupFrozen
from dicomd.archive import ArchiveHandler
from dicomd.audit.trail import AuditTrail
from dicomd.config import default_config
from dicomd.fleet.parent import WorkerPool
from dicomd.lag import LagMonitor
from dicomd.node.factory import DicomServerFactory
from dicomd.tap import Options, _Listener, makeService

BAD_LINE = "dicomd: limits.max_pdu_length: expected an integer, got 'abc'"


def options(*arguments: str) -> Options:
    parsed = Options()
    parsed.parseOptions(list(arguments))
    return parsed


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# Options


def test_config_option_short_and_long() -> None:
    assert options("-c", "site.yaml")["config"] == "site.yaml"
    assert options("--config", "site.yaml")["config"] == "site.yaml"


def test_config_option_is_optional() -> None:
    assert options()["config"] is None


# makeService


def test_make_service_builds_the_dicom_listener(tmp_path: Path) -> None:
    storage = tmp_path / "archive" / "instances"
    path = write(
        tmp_path / "site.yaml",
        f"ae_title: STORE\nlisten: tcp:11112:interface=127.0.0.1\nstorage: {{path: {storage}}}\n"
        "workers: 1\n",
    )
    reactor = MemoryReactorClock()
    root = makeService(options("-c", str(path)), reactor=reactor)

    assert isinstance(root, MultiService)
    listener = IServiceCollection(root).getServiceNamed("dicom")
    assert isinstance(listener, StreamServerEndpointService)
    assert isinstance(listener.factory, DicomServerFactory)
    assert listener.factory.settings.ae_title == "STORE"
    assert listener.factory.clock is reactor
    assert storage.is_dir()

    root.startService()
    try:
        [(port, factory, _backlog, interface)] = reactor.tcpServers
        assert (port, interface, factory) == (11112, "127.0.0.1", listener.factory)
    finally:
        root.stopService()


def test_make_service_without_a_file_uses_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One worker per core by default; the node they run is the defaults' node."""
    monkeypatch.chdir(tmp_path)
    root = makeService(options(), reactor=MemoryReactorClock())
    defaults = default_config()
    pool = IServiceCollection(root).getServiceNamed("dicom")
    assert isinstance(pool, WorkerPool) == (defaults.workers > 1)
    assert (tmp_path / "var" / "archive").is_dir()
    write(tmp_path / "one.yaml", "workers: 1\n")
    root = makeService(options("-c", "one.yaml"), reactor=MemoryReactorClock())
    listener = IServiceCollection(root).getServiceNamed("dicom")
    factory = listener.factory
    assert (factory.settings.ae_title, factory.settings.max_pdu_length) == (
        defaults.ae_title,
        defaults.limits.max_pdu_length,
    )
    assert (factory.artim_timeout, factory.idle_timeout) == (
        defaults.timeouts.artim,
        defaults.timeouts.network_idle,
    )


def test_plugins_that_are_services_start_before_the_listener(tmp_path: Path) -> None:
    path = write(tmp_path / "site.yaml", f"workers: 1\nstorage: {{path: {tmp_path / 'archive'}}}\n")
    root = makeService(options("-c", str(path)), reactor=MemoryReactorClock())
    trail, monitor, archive, listener, frozen = list(IServiceCollection(root))
    assert isinstance(trail, AuditTrail)  # the first to start records the start
    assert isinstance(monitor, LagMonitor)
    assert isinstance(archive, ArchiveHandler)
    assert archive.path == tmp_path / "archive"
    assert isinstance(listener, _Listener)
    assert isinstance(frozen, StartupFrozen)  # last: it freezes what the others made


def test_with_workers_the_parent_holds_its_trail_and_the_pool(tmp_path: Path) -> None:
    path = write(tmp_path / "site.yaml", f"workers: 3\nstorage: {{path: {tmp_path / 'a'}}}\n")
    root = makeService(options("-c", str(path)), reactor=MemoryReactorClock())
    (pool,) = list(IServiceCollection(root))
    assert isinstance(pool, WorkerPool)
    assert isinstance(pool.trail, AuditTrail)  # it records the start and stop of them all
    assert pool.config.workers == 3


def test_bad_config_is_one_line_on_stderr_and_exit_status_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "bad.yaml", "limits:\n  max_pdu_length: abc\n")
    with pytest.raises(SystemExit) as exit_:
        makeService(options("-c", str(path)), reactor=MemoryReactorClock())
    assert exit_.value.code == 1
    assert capsys.readouterr() == ("", BAD_LINE + "\n")


def test_storage_that_cannot_be_created_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = write(tmp_path / "a-file", "")
    path = write(tmp_path / "site.yaml", f"storage: {{path: {blocker / 'archive'}}}\n")
    with pytest.raises(SystemExit):
        makeService(options("-c", str(path)), reactor=MemoryReactorClock())
    assert capsys.readouterr().err == (
        f"dicomd: storage.path: cannot create {blocker / 'archive'}: Not a directory\n"
    )


def test_plugin_that_cannot_be_built_is_one_line_on_stderr_and_exit_status_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path / "site.yaml",
        f"storage: {{path: {tmp_path}}}\nplugins:\n  - plugin: dicomd_no_such_module.Thing\n",
    )
    with pytest.raises(SystemExit) as exit_:
        makeService(options("-c", str(path)), reactor=MemoryReactorClock())
    assert exit_.value.code == 1
    assert capsys.readouterr() == (
        "",
        "dicomd: plugins[0].plugin: cannot import dicomd_no_such_module: "
        "ModuleNotFoundError: No module named 'dicomd_no_such_module'\n",
    )

"""``twistd dicomd``: options, the service tree, start-up errors, and the installed plugin."""

from __future__ import annotations

import os
import shutil
import site
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IServiceCollection, MultiService
from twisted.internet.testing import MemoryReactorClock

from dicomd.archive import ArchiveHandler
from dicomd.config import default_config
from dicomd.lag import LagMonitor
from dicomd.node.factory import DicomServerFactory
from dicomd.tap import Options, _Listener, makeService

REPO_ROOT = Path(__file__).resolve().parents[1]
BAD_LINE = "dicomd: limits.max_pdu_length: expected an integer, got 'abc'"


def options(*arguments: str) -> Options:
    parsed = Options()
    parsed.parseOptions(list(arguments))
    return parsed


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def twistd(*arguments: str, cwd: Path, python: str = sys.executable, checkout: bool = True):
    """Run twistd the way an operator does; ``checkout`` makes this checkout importable."""
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    if checkout:
        environment["PYTHONPATH"] = str(REPO_ROOT)
    return subprocess.run(
        [python, "-c", "from twisted.scripts.twistd import run; run()", *arguments],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


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
        f"ae_title: STORE\nlisten: tcp:11112:interface=127.0.0.1\nstorage: {{path: {storage}}}\n",
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
    monkeypatch.chdir(tmp_path)
    root = makeService(options(), reactor=MemoryReactorClock())
    defaults = default_config()
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
    assert (tmp_path / "var" / "archive").is_dir()


def test_plugins_that_are_services_start_before_the_listener(tmp_path: Path) -> None:
    path = write(tmp_path / "site.yaml", f"storage: {{path: {tmp_path / 'archive'}}}\n")
    root = makeService(options("-c", str(path)), reactor=MemoryReactorClock())
    monitor, archive, listener = list(IServiceCollection(root))
    assert isinstance(monitor, LagMonitor)
    assert isinstance(archive, ArchiveHandler)
    assert archive.path == tmp_path / "archive"
    assert isinstance(listener, _Listener)


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


# The real twistd


def test_twistd_lists_dicomd(tmp_path: Path) -> None:
    result = twistd("--help", cwd=tmp_path)
    assert result.returncode == 0
    assert any(line.split()[:1] == ["dicomd"] for line in result.stdout.splitlines())


@pytest.mark.parametrize(
    ("config_text", "line"),
    [
        ("limits:\n  max_pdu_length: abc\n", BAD_LINE),
        (
            "timeouts:\n  acse: 30\n  release: 5\n",
            "dicomd: timeouts.release: unknown key "
            "(expected one of: acse, dimse, network_idle, artim)",
        ),
        (
            "ae_title: [unclosed\n",
            "dicomd: bad.yaml: YAML error at line 2, column 1: "
            "while parsing a flow sequence expected ',' or ']', but got '<stream end>'",
        ),
    ],
)
def test_twistd_with_a_bad_config_exits_non_zero_with_one_line(
    tmp_path: Path, config_text: str, line: str
) -> None:
    write(tmp_path / "bad.yaml", config_text)
    result = twistd("-n", "--pidfile=", "dicomd", "-c", "bad.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert (result.stdout, result.stderr) == ("", line + "\n")


def test_twistd_with_a_missing_config_file(tmp_path: Path) -> None:
    result = twistd("-n", "--pidfile=", "dicomd", "-c", "nowhere.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert (result.stdout, result.stderr) == ("", "dicomd: nowhere.yaml: file not found\n")


def test_twistd_on_a_port_in_use_exits_non_zero_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        write(tmp_path / "site.yaml", f"listen: tcp:{port}:interface=127.0.0.1\nplugins: []\n")
        result = twistd(
            "-n", "--pidfile=", "--logfile=-", "dicomd", "-c", "site.yaml", cwd=tmp_path
        )
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert f"dicomd: listen: cannot listen on 127.0.0.1:{port}: Address already in use" in output
    assert "Traceback" not in output


# The wheel


def pip(command: str, *arguments: str) -> None:
    """Run this environment's pip offline, on nothing but the given files."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", command, "--quiet", "--no-deps", "--no-index", *arguments],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built, offline, from a copy of the project's packaged files."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    for name in ("dicomd", "twisted"):
        shutil.copytree(
            REPO_ROOT / name,
            source / name,
            ignore=shutil.ignore_patterns("__pycache__", "dropin.cache"),
        )
    output = tmp_path_factory.mktemp("wheel")
    pip("wheel", "--no-build-isolation", "--wheel-dir", str(output), str(source))
    [built] = output.glob("dicomd-*.whl")
    return built


def test_wheel_ships_the_plugin_inside_twisteds_own_plugin_package(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "twisted/plugins/dicomd_plugin.py" in names
    assert {"dicomd/__init__.py", "dicomd/config.py", "dicomd/tap.py"} <= names
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names
    assert not {name for name in names if name.startswith(("tests/", "conf/"))}


def test_installed_wheel_gives_twistd_dicomd(wheel: Path, tmp_path: Path) -> None:
    """Install the wheel alone into a new environment that borrows this one's dependencies.

    The borrowed site-packages is added by a ``.pth`` line, so its own ``.pth``
    files (among them an editable install of this checkout) are not run: dicomd
    can only come from the wheel.
    """
    environment = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(environment)], check=True)
    python = str(environment / "bin" / "python")
    packages = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (packages / "borrowed.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    pip("install", "--target", str(packages), str(wheel))
    write(tmp_path / "bad.yaml", "limits:\n  max_pdu_length: abc\n")

    listed = twistd("--help", cwd=tmp_path, python=python, checkout=False)
    failed = twistd("-n", "dicomd", "-c", "bad.yaml", cwd=tmp_path, python=python, checkout=False)
    where = subprocess.run(
        [python, "-c", "import dicomd; print(dicomd.__file__)"],
        cwd=tmp_path,
        env={key: value for key, value in os.environ.items() if key != "PYTHONPATH"},
        check=True,
        capture_output=True,
        text=True,
    )

    assert "DICOM archive node" in listed.stdout
    assert (failed.returncode, failed.stderr) == (1, BAD_LINE + "\n")
    assert Path(where.stdout.strip()).is_relative_to(packages)

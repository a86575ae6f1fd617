"""Harness for end-to-end tests: the real daemon under ``twistd`` against real peers.

Each test gets its own daemon process on a free port in its own temporary
directory, so tests never share state and a crashed daemon cannot poison the
next test.  The daemon's output is collected by a reader thread and attached to
the report of every failing test, because a failure here is almost always
explained by what the daemon logged.
"""

from __future__ import annotations

import copy
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCALHOST = "127.0.0.1"
AE_TITLE = "DICOMD"
STARTUP_DEADLINE = 20.0
SHUTDOWN_GRACE = 5.0
DCMTK_TIMEOUT = 20.0

DEFAULT_CONFIG: dict[str, Any] = {
    "ae_title": AE_TITLE,
    "storage": {"path": "./var/archive"},
    "limits": {"max_pdu_length": 262144, "max_associations": 32},
    "timeouts": {"acse": 30, "dimse": 60, "network_idle": 300, "artim": 30},
    "transfer_syntaxes": [
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.1.2",
        "1.2.840.10008.1.2.1.99",
        "1.2.840.10008.1.2.2",
    ],
    "access": {"check_called_ae": True, "calling_aes": []},
    "plugins": [],
}

_DAEMONS = pytest.StashKey[list["RunningDaemon"]]()


def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``overrides`` applied; nested dicts merge, anything else replaces."""
    merged = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def free_tcp_port() -> int:
    """Ask the kernel for a port nobody listens on (bind to port 0, then release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOCALHOST, 0))
        return probe.getsockname()[1]


def twistd_command() -> list[str]:
    """The ``twistd`` of the running interpreter's environment.

    ``python -m twisted`` is the newer ``twist`` runner, which has no ``-n``,
    ``--logfile`` or ``--pidfile``; the script installed beside the interpreter
    is the real ``twistd``, and ``twisted.scripts.twistd.run`` is its fallback.
    """
    beside_interpreter = Path(sys.executable).parent / "twistd"
    if beside_interpreter.exists():
        return [sys.executable, str(beside_interpreter)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def daemon_command(config_path: Path) -> list[str]:
    return [*twistd_command(), "-n", "--logfile=-", "--pidfile=", "dicomd", "-c", str(config_path)]


def daemon_environment() -> dict[str, str]:
    """Make the checkout importable (and its ``twisted/plugins`` discoverable) from any cwd."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def write_config(directory: Path, config: Mapping[str, Any], name: str = "dicomd.yaml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    return path


class OutputCollector:
    """Drains a pipe on a thread so the daemon never blocks on a full pipe."""

    def __init__(self, stream: Any) -> None:
        self._chunks: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._drain, args=(stream,), daemon=True)
        self._thread.start()

    def _drain(self, stream: Any) -> None:
        for line in iter(stream.readline, ""):
            with self._lock:
                self._chunks.append(line)
        stream.close()

    def text(self) -> str:
        with self._lock:
            return "".join(self._chunks)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


@dataclass
class RunningDaemon:
    """A daemon process that accepts connections on ``port``."""

    process: subprocess.Popen[str]
    port: int
    ae_title: str
    config: dict[str, Any]
    directory: Path
    output: OutputCollector = field(repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_text(self) -> str:
        """Everything the daemon wrote to stdout and stderr so far."""
        return self.output.text()

    def wait_for_log(self, condition: Callable[[str], bool], timeout: float = 5.0) -> str:
        """Wait until ``condition(log_text)`` holds; log lines may trail the event they record."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_text()
            if condition(text) or time.monotonic() > deadline:
                return text
            time.sleep(0.05)

    def is_running(self) -> bool:
        return self.process.poll() is None

    def rss_kib(self) -> int:
        """Resident set size from ``/proc`` (psutil is not a dependency)."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError(f"no VmRSS in /proc/{self.pid}/status")

    def stop(self) -> None:
        if self.is_running():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(SHUTDOWN_GRACE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(SHUTDOWN_GRACE)
        self.output.join(SHUTDOWN_GRACE)


def log_lines_with(text: str, *words: str) -> list[str]:
    """Log lines that mention every word (case-insensitive): log phrasing is not a contract."""
    return [
        line for line in text.splitlines() if all(word.lower() in line.lower() for word in words)
    ]


def is_listening(port: int) -> bool:
    """Whether some socket listens on ``port``, without connecting to it.

    A probe connection would itself be a peer: the daemon would count it, log it
    and might still hold its slot when a test starts counting associations.
    ``/proc/net/tcp`` shows listening sockets (state ``0A``) without touching them.
    """
    table = Path("/proc/net/tcp")
    if not table.exists():
        try:
            with socket.create_connection((LOCALHOST, port), timeout=0.5):
                return True
        except OSError:
            return False
    for row in table.read_text().splitlines()[1:]:
        local_address, state = row.split()[1], row.split()[3]
        if int(local_address.rsplit(":", 1)[1], 16) == port and state == "0A":
            return True
    return False


def wait_until_listening(
    process: subprocess.Popen[str], port: int, output: OutputCollector
) -> None:
    """Return once ``port`` listens; fail with the daemon's output if it exits first."""
    deadline = time.monotonic() + STARTUP_DEADLINE
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output.join(SHUTDOWN_GRACE)
            pytest.fail(
                f"the daemon exited with status {process.returncode} before listening on {port}:\n"
                f"{output.text()}"
            )
        if is_listening(port):
            return
        time.sleep(0.05)
    pytest.fail(
        f"the daemon did not listen on {port} within {STARTUP_DEADLINE} s:\n{output.text()}"
    )


def start_daemon(directory: Path, overrides: Mapping[str, Any]) -> RunningDaemon:
    port = free_tcp_port()
    config = deep_merge(DEFAULT_CONFIG, {"listen": f"tcp:{port}:interface={LOCALHOST}"})
    config = deep_merge(config, overrides)
    config_path = write_config(directory, config)
    process = subprocess.Popen(
        daemon_command(config_path),
        cwd=directory,
        env=daemon_environment(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )
    output = OutputCollector(process.stdout)
    daemon = RunningDaemon(process, port, config["ae_title"], config, directory, output)
    try:
        wait_until_listening(process, port, output)
    except BaseException:
        daemon.stop()
        raise
    return daemon


@pytest.fixture
def start_dicomd(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., RunningDaemon]]:
    """Factory: ``start_dicomd(limits={"max_associations": 2})`` starts a daemon so configured."""
    started: list[RunningDaemon] = request.node.stash.setdefault(_DAEMONS, [])

    def start(**overrides: Any) -> RunningDaemon:
        directory = tmp_path / f"daemon{len(started)}"
        directory.mkdir()
        daemon = start_daemon(directory, overrides)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


@pytest.fixture
def dicomd(start_dicomd: Callable[..., RunningDaemon]) -> RunningDaemon:
    """A daemon with the default configuration."""
    return start_dicomd()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed:
        for daemon in item.stash.get(_DAEMONS, []):
            report.sections.append((f"dicomd log (port {daemon.port})", daemon.log_text()))
    return report


def run_twistd(config_path: Path, timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
    """Run the daemon to completion (for configurations that must stop it)."""
    try:
        return subprocess.run(
            daemon_command(config_path),
            cwd=config_path.parent,
            env=daemon_environment(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as still_running:
        output = b"".join(filter(None, [still_running.stdout, still_running.stderr]))
        pytest.fail(
            f"the daemon was still running after {timeout} s:\n{output.decode(errors='replace')}"
        )


def _is_dcmtk(executable: str) -> bool:
    """pynetdicom installs its own ``echoscu`` app; only dcmtk's says ``$dcmtk:`` in its version."""
    try:
        version = subprocess.run(
            [executable, "--version"], capture_output=True, text=True, timeout=DCMTK_TIMEOUT
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "dcmtk" in version.stdout + version.stderr


@cache
def dcmtk_executable(tool: str) -> str | None:
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        candidate = shutil.which(tool, path=directory)
        if candidate and _is_dcmtk(candidate):
            return candidate
    return None


def run_dcmtk(
    tool: str, *arguments: str, timeout: float = DCMTK_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run a dcmtk tool; dcmtk is a hard requirement of this suite, never a reason to skip."""
    executable = dcmtk_executable(tool)
    if executable is None:
        pytest.fail("dcmtk is not installed; run scripts/test")
    return subprocess.run(
        [executable, *arguments],
        env={**os.environ, "TCP_NODELAY": "1"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_echoscu(daemon: RunningDaemon, *options: str) -> subprocess.CompletedProcess[str]:
    """``echoscu`` to the daemon, calling its own AE title unless ``options`` name another."""
    called = [] if "-aec" in options else ["-aec", daemon.ae_title]
    return run_dcmtk("echoscu", *called, *options, LOCALHOST, str(daemon.port))


@pytest.fixture
def echoscu() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``echoscu(daemon, *options)``: dcmtk's C-ECHO SCU against a running daemon."""
    return run_echoscu


@pytest.fixture
def twistd() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``twistd(config_path)``: run the daemon to completion, for configs that must stop it."""
    return run_twistd

"""Child processes and ports: free ports, listening checks and a child's output."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCALHOST = "127.0.0.1"
STARTUP_DEADLINE = 20.0
SHUTDOWN_GRACE = 5.0


def free_tcp_port(host: str = LOCALHOST) -> int:
    """Ask the kernel for a port nobody listens on (bind to port 0, then release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


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


class OutputCollector:
    """Drains a pipe on a thread so the child never blocks on a full pipe."""

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


def holds_within(condition: Callable[[], bool], seconds: float) -> bool:
    """Whether ``condition`` comes to hold within ``seconds``, asked every 50 ms: for what
    another process does, which no event in this one announces."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def wait_until_listening(
    process: subprocess.Popen[str], port: int, output: OutputCollector, name: str = "the daemon"
) -> None:
    """Return once ``port`` listens; fail with the child's output if it exits first."""
    deadline = time.monotonic() + STARTUP_DEADLINE
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output.join(SHUTDOWN_GRACE)
            pytest.fail(
                f"{name} exited with status {process.returncode} before listening on {port}:\n"
                f"{output.text()}"
            )
        if is_listening(port):
            return
        time.sleep(0.05)
    pytest.fail(f"{name} did not listen on {port} within {STARTUP_DEADLINE} s:\n{output.text()}")


def stop_process(process: subprocess.Popen[str], grace: float = SHUTDOWN_GRACE) -> None:
    """SIGTERM, then SIGKILL if the process is still there after ``grace`` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(grace)


def daemon_environment(pythonpath: Sequence[Path] = ()) -> dict[str, str]:
    """Make the checkout importable (and its ``twisted/plugins`` discoverable) from any cwd.

    ``pythonpath`` adds folders, such as one holding a test's own plugin module.
    """
    env = dict(os.environ)
    folders = [str(REPO_ROOT), *map(str, pythonpath), env.get("PYTHONPATH")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, folders))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def status_kib(pid: int | str, field: str) -> int:
    """A ``kB`` line of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``); ``pid`` may be "self"."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def reset_peak_memory(pid: int | str) -> None:
    """Start ``VmHWM`` of a process again from its present resident set size (``clear_refs``,
    proc(5)), so that one phase of a test can be measured alone."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")

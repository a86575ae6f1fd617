"""dcmtk's tools: an SCU run to completion, or an SCP listening for one test."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest

from tests.support.daemons import RunningDaemon
from tests.support.processes import (
    LOCALHOST,
    OutputCollector,
    free_tcp_port,
    stop_process,
    wait_until_listening,
)

DCMTK_TIMEOUT = 20.0


def dcmtk_environment() -> dict[str, str]:
    """dcmtk leaves Nagle's algorithm on unless ``TCP_NODELAY`` is set, and every
    message would then wait for a delayed ACK."""
    return {**os.environ, "TCP_NODELAY": "1"}


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


def require_dcmtk(tool: str) -> str:
    """dcmtk is a hard requirement of the end-to-end tests, never a reason to skip."""
    executable = dcmtk_executable(tool)
    if executable is None:
        pytest.fail("dcmtk is not installed; run scripts/test")
    return executable


def run_dcmtk(
    tool: str, *arguments: str, timeout: float = DCMTK_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run a dcmtk tool to completion."""
    return subprocess.run(
        [require_dcmtk(tool), *arguments],
        env=dcmtk_environment(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",  # dcmdump prints values in their own character sets
        timeout=timeout,
    )


def run_echoscu(daemon: RunningDaemon, *options: str) -> subprocess.CompletedProcess[str]:
    """``echoscu`` to the daemon, calling its own AE title unless ``options`` name another."""
    called = [] if "-aec" in options else ["-aec", daemon.ae_title]
    return run_dcmtk("echoscu", *called, *options, LOCALHOST, str(daemon.port))


@dataclass
class DcmtkPeer:
    """A dcmtk SCP listening on ``port``; ``log_text()`` has what it printed."""

    process: subprocess.Popen[str]
    port: int
    directory: Path
    output: OutputCollector = field(repr=False)

    def log_text(self) -> str:
        return self.output.text()

    def stop(self) -> None:
        stop_process(self.process)
        self.output.join(5)


@contextmanager
def dcmtk_peer(tool: str, directory: Path, *options: str) -> Iterator[DcmtkPeer]:
    """Start a dcmtk SCP (storescp, dcmqrscp, wlmscpfs) on a free port, its last argument."""
    executable = require_dcmtk(tool)
    port = free_tcp_port()
    process = subprocess.Popen(
        [executable, *options, str(port)],
        cwd=directory,
        env=dcmtk_environment(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )
    peer = DcmtkPeer(process, port, directory, OutputCollector(process.stdout))
    try:
        wait_until_listening(process, port, peer.output, name=tool)
        yield peer
    finally:
        peer.stop()

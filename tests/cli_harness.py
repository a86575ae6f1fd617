"""Running ``dicomd`` as a user does, against real peers started for one test.

The command runs in a subprocess (``python -m dicomd.cli``), so what is
tested is exactly what a shell sees: exit status, stdout and stderr.  Peers
are dcmtk's SCPs and the dicomd daemon itself, each on a free port in a
temporary directory, stopped when the test ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES

from tests.e2e.conftest import (
    LOCALHOST,
    OutputCollector,
    daemon_environment,
    dcmtk_executable,
    free_tcp_port,
    is_listening,
)

COMMAND_TIMEOUT = 60.0
STARTUP_DEADLINE = 20.0

__all__ = [
    "COMMAND_TIMEOUT",
    "LOCALHOST",
    "DcmtkPeer",
    "copies_of",
    "dcmtk_peer",
    "free_tcp_port",
    "pynetdicom_scp",
    "run_dicomd",
    "stderr_lines",
]


def run_dicomd(
    *arguments: str, timeout: float = COMMAND_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """``dicomd ARGUMENTS`` as a shell runs it, from any directory."""
    return subprocess.run(
        [sys.executable, "-m", "dicomd.cli", *arguments],
        env=daemon_environment(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def stderr_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return result.stderr.splitlines()


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
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.output.join(5)


@contextmanager
def dcmtk_peer(tool: str, directory: Path, *options: str) -> Iterator[DcmtkPeer]:
    """Start a dcmtk SCP (storescp, dcmqrscp, wlmscpfs) on a free port, its last argument.

    dcmtk leaves Nagle's algorithm on unless ``TCP_NODELAY`` is set, and every
    message would then wait for a delayed ACK.
    """
    executable = dcmtk_executable(tool)
    if executable is None:
        pytest.fail("dcmtk is not installed; run scripts/test")
    port = free_tcp_port()
    process = subprocess.Popen(
        [executable, *options, str(port)],
        cwd=directory,
        env={**os.environ, "TCP_NODELAY": "1"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )
    peer = DcmtkPeer(process, port, directory, OutputCollector(process.stdout))
    try:
        _wait_until_listening(peer)
        yield peer
    finally:
        peer.stop()


def _wait_until_listening(peer: DcmtkPeer) -> None:
    deadline = time.monotonic() + STARTUP_DEADLINE
    while time.monotonic() < deadline:
        if peer.process.poll() is not None:
            peer.output.join(5)
            pytest.fail(f"{peer.process.args[0]} exited before listening:\n{peer.log_text()}")
        if is_listening(peer.port):
            return
        time.sleep(0.05)
    pytest.fail(f"{peer.process.args[0]} did not listen on {peer.port}:\n{peer.log_text()}")


@contextmanager
def pynetdicom_scp(contexts: list[str], handlers: list[tuple[object, object]]) -> Iterator[int]:
    """A pynetdicom SCP (AE title PYNETDICOM) for ``contexts``, answering with ``handlers``.

    It runs on threads in the test's own process: that makes handlers that
    misbehave on purpose (wrong status, no answer) plain Python functions.
    """
    ae = AE(ae_title="PYNETDICOM")
    for context in contexts:
        ae.add_supported_context(context, ALL_TRANSFER_SYNTAXES)
    port = free_tcp_port()
    server = ae.start_server((LOCALHOST, port), block=False, evt_handlers=handlers)
    try:
        yield port
    finally:
        server.shutdown()


def copies_of(name: str, directory: Path, count: int) -> list[Path]:
    """``count`` copies of a pydicom test file, each a distinct instance (new SOP instance UID)."""
    directory.mkdir(parents=True, exist_ok=True)
    source = dcmread(get_testdata_file(name))
    paths = []
    for number in range(count):
        dataset: Dataset = source.copy()
        uid = generate_uid()
        dataset.SOPInstanceUID = uid
        dataset.file_meta.MediaStorageSOPInstanceUID = uid
        path = directory / f"{Path(name).stem}-{number:03d}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths

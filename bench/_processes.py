"""Process supervision: children that never outlive the benchmark, and servers that answer.

A benchmark starts real programs (dicomd under ``twistd``, dcmtk, pynetdicom)
and must leave none of them behind, whatever happens: every child runs in its
own session through a ``Processes`` block, which kills each child's whole
process group (forked workers included) when the block ends, also on Ctrl-C,
SIGTERM (see ``exit_on_sigterm``) or an exception.

Free ports, the environments of dcmtk and of the daemon, and the daemon's
``twistd`` command come from the tests' ``tests.support``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tests.support.daemons import AE_TITLE
from tests.support.dcmtk import dcmtk_environment
from tests.support.processes import LOCALHOST, free_tcp_port


class ServerUnavailable(Exception):
    """A server that exited or never answered C-ECHO; ``str()`` is one line saying why."""


def exit_on_sigterm() -> None:
    """Turn SIGTERM into ``SystemExit`` so that ``finally`` blocks (and ``Processes``) run."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


class Processes(contextlib.AbstractContextManager["Processes"]):
    """Children started here are killed, with everything they forked, when the block ends."""

    def __init__(self) -> None:
        self._children: list[subprocess.Popen[bytes]] = []

    def start(
        self, argv: Sequence[str], *, output: IO[bytes] | None = None, **popen: object
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in a new session (own process group); its output goes to ``output``."""
        sink = output if output is not None else subprocess.DEVNULL
        child = subprocess.Popen(  # type: ignore[call-overload]
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT if output is not None else subprocess.DEVNULL,
            start_new_session=True,
            **popen,
        )
        self._children.append(child)
        return child

    def stop(self, child: subprocess.Popen[bytes], grace: float = 5.0) -> None:
        """SIGTERM the child's process group, then SIGKILL whatever is left after ``grace``."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, sig)
            try:
                child.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        # Forked workers may outlive their parent: the group is gone only when they are.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        if child in self._children:
            self._children.remove(child)

    def __exit__(self, *exc_info: object) -> None:
        for child in reversed(list(self._children)):
            self.stop(child, grace=2.0)


def wait_all(
    processes: Processes, children: Sequence[subprocess.Popen[bytes]], timeout: float
) -> list[int | None]:
    """Exit codes of ``children``, all given ``timeout`` seconds from now (None: stopped then)."""
    deadline = time.monotonic() + timeout
    codes: list[int | None] = []
    for child in children:
        try:
            codes.append(child.wait(timeout=max(0.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            processes.stop(child)
            codes.append(None)
    return codes


def wait_until_ready(
    server: subprocess.Popen[bytes],
    port: int,
    ae_title: str,
    output: Path,
    timeout: float = 30.0,
) -> None:
    """Return once the server answers C-ECHO on ``port``; raise ``ServerUnavailable`` otherwise.

    If the server exits first, the exception carries the last line it wrote
    to ``output`` (dicomd's one-line configuration error, for example).
    """
    deadline = time.monotonic() + timeout
    echo = ["echoscu", "-to", "2", "-aec", ae_title, LOCALHOST, str(port)]
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise ServerUnavailable(last_line(output) or f"exited with status {server.returncode}")
        answered = subprocess.run(
            echo, env=dcmtk_environment(), capture_output=True, timeout=10, check=False
        )
        if answered.returncode == 0:
            return
        time.sleep(0.1)
    raise ServerUnavailable(f"no answer to C-ECHO within {timeout:g} s")


def last_line(path: Path) -> str:
    """The last non-blank line of a text file, or ``""``."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return next((line.strip() for line in reversed(lines) if line.strip()), "")


@dataclass(frozen=True, slots=True)
class Server:
    """A storage SCP that ``serving`` started: it stores under ``storage``, writes to ``output``."""

    process: subprocess.Popen[bytes]
    port: int
    storage: Path
    output: Path


@contextlib.contextmanager
def serving(
    processes: Processes,
    command: Callable[[int, Path, Path], tuple[list[str], dict[str, str]]],
    ae_title: str,
    work: Path,
) -> Iterator[Server]:
    """A storage SCP in ``work`` that answers C-ECHO, stopped when the block ends.

    ``command(port, storage, work)`` gives its argv and environment.  Raises
    ``ServerUnavailable`` if it exits or does not answer.
    """
    storage = work / "storage"
    storage.mkdir()
    port = free_tcp_port()
    argv, env = command(port, storage, work)
    output = work / "server.out"
    with output.open("wb") as sink:
        process = processes.start(argv, output=sink, env=env, cwd=work)
    try:
        wait_until_ready(process, port, ae_title, output)
        yield Server(process, port, storage, output)
    finally:
        processes.stop(process)


def write_dicomd_config(
    path: Path, *, port: int, storage: Path, extra: Mapping[str, object] | None = None
) -> str:
    """Write a dicomd YAML file listening on ``127.0.0.1:port``; returns its text for the record.

    ``extra`` adds or replaces top-level keys (``limits``, ``plugins``, ...).
    It is written as flow-style YAML by hand: JSON is YAML, and the benchmark
    should not depend on PyYAML's output format to describe what it ran.
    """
    settings: dict[str, object] = {
        "ae_title": AE_TITLE,
        "listen": f"tcp:{port}:interface={LOCALHOST}",
        "storage": {"path": str(storage)},
        **(extra or {}),
    }
    text = "".join(f"{key}: {json.dumps(value)}\n" for key, value in settings.items())
    path.write_text(text)
    return text


@contextlib.contextmanager
def scratch_folder(prefix: str, parent: Path | None = None) -> Iterator[Path]:
    """A fresh folder under ``parent`` (default: the system temp folder), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)

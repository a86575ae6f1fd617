"""The daemon under ``twistd``, and the ``dicomd`` command, each in a subprocess."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.processes import (
    LOCALHOST,
    STARTUP_DEADLINE,
    OutputCollector,
    daemon_environment,
    free_tcp_port,
    reset_peak_memory,
    status_kib,
    stop_process,
    wait_until_listening,
)

AE_TITLE = "DICOMD"
COMMAND_TIMEOUT = 60.0

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


def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``overrides`` applied; nested dicts merge, anything else replaces."""
    merged = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


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


def daemon_command(config_path: Path, logfile: str | Path = "-") -> list[str]:
    return [
        *twistd_command(),
        "-n",
        f"--logfile={logfile}",
        "--pidfile=",
        "dicomd",
        "-c",
        str(config_path),
    ]


def write_config(directory: Path, config: Mapping[str, Any], name: str = "dicomd.yaml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    return path


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

    @property
    def workers(self) -> int:
        """How many worker processes serve it (1: the daemon's process serves)."""
        return expected_workers(self.config)

    def serving_processes(self) -> list[int]:
        """The processes that hold associations: its workers, or its own process."""
        if self.workers == 1:
            return [self.pid]
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        return [int(child) for child in children]

    def rss_kib(self) -> int:
        """The largest resident set size of a serving process, from ``/proc`` (psutil is
        not a dependency)."""
        return max(status_kib(pid, "VmRSS") for pid in self.serving_processes())

    def peak_memory_mib(self) -> float:
        """The largest peak resident set size (``VmHWM``) of a serving process, in MiB."""
        return max(status_kib(pid, "VmHWM") for pid in self.serving_processes()) / 1024

    def reset_peak_memory(self) -> None:
        """Start every serving process's ``VmHWM`` again from its present size (``clear_refs``,
        proc(5)), so that one phase of a test can be measured alone."""
        for pid in self.serving_processes():
            reset_peak_memory(pid)

    def stop(self) -> None:
        stop_process(self.process)
        self.output.join(5.0)


def expected_workers(config: Mapping[str, Any]) -> int:
    """The worker processes a daemon so configured runs (``auto``: one per core on TCP)."""
    value = config.get("workers", "auto")
    if value == "auto":
        tcp = str(config.get("listen", "tcp:")).startswith(("tcp:", "tcp6:"))
        return (os.cpu_count() or 1) if tcp else 1
    return int(value)


def log_lines_with(text: str, *words: str) -> list[str]:
    """Log lines that mention every word (case-insensitive): log phrasing is not a contract."""
    return [
        line for line in text.splitlines() if all(word.lower() in line.lower() for word in words)
    ]


def start_daemon(
    directory: Path,
    overrides: Mapping[str, Any],
    pythonpath: Sequence[Path] = (),
    command_prefix: Sequence[str] = (),
    environment: Mapping[str, str] | None = None,
) -> RunningDaemon:
    """Start the daemon in ``directory``; ``command_prefix`` runs it under another command.

    A prefix must ``exec`` the daemon, so that ``pid`` stays the daemon's own
    (``unshare`` without ``--fork`` and ``sh -c '... exec "$@"'`` both do).
    ``environment`` sets variables over this process's own (the AWS credentials of
    a test's object storage, say).
    """
    port = free_tcp_port()
    config = deep_merge(DEFAULT_CONFIG, {"listen": f"tcp:{port}:interface={LOCALHOST}"})
    config = deep_merge(config, overrides)
    config_path = write_config(directory, config)
    process = subprocess.Popen(
        [*command_prefix, *daemon_command(config_path)],
        cwd=directory,
        env={**daemon_environment(pythonpath), **(environment or {})},
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
        wait_for_workers(daemon)
    except BaseException:
        daemon.stop()
        raise
    return daemon


_WORKER_LISTENS = re.compile(r"worker (\d+): .*accepting connections")


def wait_for_workers(daemon: RunningDaemon, timeout: float = STARTUP_DEADLINE) -> None:
    """With workers, the parent listens before they adopt its socket: wait until each has,
    so that a test's first connection is accepted at once, as by a daemon of one process."""
    if daemon.workers == 1:
        return
    log = daemon.wait_for_log(
        lambda text: (
            len(set(_WORKER_LISTENS.findall(text))) >= daemon.workers or not daemon.is_running()
        ),
        timeout,
    )
    if len(set(_WORKER_LISTENS.findall(log))) < daemon.workers:
        pytest.fail(f"the daemon's {daemon.workers} workers did not all start:\n{log}")


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


def run_dicomd(
    *arguments: str, timeout: float = COMMAND_TIMEOUT, input_text: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``dicomd ARGUMENTS`` as a shell runs it, from any directory; ``input_text`` is its
    standard input (none by default)."""
    return subprocess.run(
        [sys.executable, "-m", "dicomd.cli", *arguments],
        env=daemon_environment(),
        input=input_text,
        stdin=subprocess.DEVNULL if input_text is None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def users_file(folder: Path, name: str = "alice", passcode: str = "right") -> Path:
    """A users file made by ``dicomd user add``, holding ``name`` with ``passcode``."""
    users = folder / "users"
    added = run_dicomd(
        "user", "add", name, "--file", str(users), "--passcode-stdin", input_text=passcode + "\n"
    )
    assert added.returncode == 0, added.stderr
    return users


def stderr_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return result.stderr.splitlines()

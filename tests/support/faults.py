"""Faults of the archive's backends, made from outside the daemon: a PostgreSQL server
frozen (SIGSTOP), stopped at once or started again, and the peers that watch what the
daemon answers meanwhile (storescu, echoscu, findscu).

The daemon is judged as a site would judge it: by the statuses its peers get, how long
they wait for them, and the lines it logs.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread

from tests.support.daemons import RunningDaemon
from tests.support.dcmtk import run_dcmtk
from tests.support.nodes import find, start_storescu, store_responses
from tests.support.postgres import Cluster, postgres_bin
from tests.support.processes import LOCALHOST

ECHO_TIMEOUT = 5
"""Seconds echoscu waits to connect, for the association and for the C-ECHO answer."""


# -- PostgreSQL -----------------------------------------------------------------------------


def postgres_processes(cluster: Cluster) -> list[int]:
    """The postmaster (from its ``postmaster.pid``) and every process under it."""
    postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
    found, pending = [], [postmaster]
    while pending:
        pid = pending.pop()
        found.append(pid)
        with contextlib.suppress(FileNotFoundError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                pending.extend(map(int, (task / "children").read_text().split()))
    return found


@contextlib.contextmanager
def frozen(pids: list[int]) -> Iterator[None]:
    """SIGSTOP every process of ``pids`` (a database that answers nothing, its sockets open),
    and SIGCONT them on the way out, whatever happened meanwhile."""
    stopped = []
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
        yield
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def pg_ctl(cluster: Cluster, *arguments: str) -> None:
    """``pg_ctl ARGUMENTS`` on the cluster's data folder, as the user who owns it (the
    server refuses to run as root)."""
    owner = pwd.getpwuid(cluster.data.stat().st_uid).pw_name
    prefix = ["runuser", "-u", owner, "--"] if os.getuid() == 0 and owner != "root" else []
    command = [*prefix, str(postgres_bin() / "pg_ctl"), "--pgdata", str(cluster.data)]
    done = subprocess.run(
        [*command, *arguments], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"pg_ctl {' '.join(arguments)}: {done.stdout}{done.stderr}"


def crash_postgres(cluster: Cluster) -> None:
    """Stop the server at once (``-m immediate``): every connection drops, nothing is
    checkpointed, as when the database's machine goes away."""
    pg_ctl(cluster, "--mode", "immediate", "--wait", "stop")


def restart_postgres(cluster: Cluster) -> None:
    """Start the stopped server again with the options it last ran with: ``pg_ctl restart``
    reads them from ``postmaster.opts`` (same port, same socket folder)."""
    pg_ctl(cluster, "--log", str(cluster.folder / "server.log"), "--wait", "restart")


# -- peers ----------------------------------------------------------------------------------


def echo_seconds(daemon: RunningDaemon) -> float:
    """How long one echoscu takes to be answered (association, C-ECHO, release); a failed
    echo fails the test with what echoscu said."""
    started = time.monotonic()
    echoed = run_dcmtk(
        "echoscu", "-to", str(ECHO_TIMEOUT), "-ta", str(ECHO_TIMEOUT), "-td", str(ECHO_TIMEOUT),
        "-aec", daemon.ae_title, LOCALHOST, str(daemon.port),
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert echoed.returncode == 0, f"echoscu after {elapsed:.1f} s: {echoed.stdout}{echoed.stderr}"
    return elapsed


def echo_for(daemon: RunningDaemon, seconds: float, pause: float = 0.2) -> list[float]:
    """echoscu again and again for ``seconds``; how long each took."""
    deadline = time.monotonic() + seconds
    timings = []
    while time.monotonic() < deadline:
        timings.append(echo_seconds(daemon))
        time.sleep(pause)
    return timings


@dataclass
class Sender:
    """A storescu sending the files of a folder on one association (`start_storescu`)."""

    process: subprocess.Popen[str]
    output_path: Path

    def output(self) -> str:
        return self.output_path.read_text(errors="replace")

    def responses(self) -> dict[str, int]:
        """File name -> the status of the response storescu received for it."""
        return store_responses(self.output())

    def answered(self, status: int) -> set[str]:
        """The SOP Instance UIDs (file names) answered with ``status``."""
        return {Path(name).stem for name, said in self.responses().items() if said == status}

    def wait(self, timeout: float) -> str:
        """Wait for storescu to end; its output."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            output = self.output()[-3000:]
            raise AssertionError(f"storescu still ran after {timeout} s:\n{output}") from None
        return self.output()


def start_sender(daemon: RunningDaemon, folder: Path, output_path: Path) -> Sender:
    """storescu sending every file of ``folder`` (sorted) to ``daemon``, its output kept in
    ``output_path``."""
    with output_path.open("w") as output:
        process = start_storescu(daemon, sorted(folder.iterdir()), output)
    return Sender(process, output_path)


def wait_for_responses(sender: Sender, count: int, timeout: float) -> dict[str, int]:
    """Wait until storescu has received ``count`` responses (or has ended)."""
    deadline = time.monotonic() + timeout
    while True:
        responses = sender.responses()
        if len(responses) >= count or sender.process.poll() is not None:
            return responses
        assert time.monotonic() < deadline, f"{len(responses)} responses after {timeout} s"
        time.sleep(0.05)


def response_gaps(sender: Sender, dimse_timeout: float) -> list[float]:
    """Wait for storescu to end, as a peer whose DIMSE timeout is ``dimse_timeout``: the
    seconds between its successive responses (the first from now).  A response that takes
    longer kills storescu and fails the test."""
    gaps, count, since = [], len(sender.responses()), time.monotonic()
    while sender.process.poll() is None:
        time.sleep(0.05)
        now, answered = time.monotonic(), len(sender.responses())
        if answered > count:
            gaps.append(now - since)
            count, since = answered, now
        elif now - since > dimse_timeout:
            sender.process.kill()
            sender.process.wait()
            raise AssertionError(
                f"no store response within {dimse_timeout} s:\n{sender.output()[-3000:]}"
            )
    return gaps


def found_instances(daemon: RunningDaemon, folder: Path, into: Path) -> set[str]:
    """The SOP Instance UIDs findscu gets at IMAGE level (Study Root) of the series whose
    files ``write_ct_files`` wrote into ``folder``."""
    sent = dcmread(next(folder.iterdir()), stop_before_pixels=True)
    study, series = sent.StudyInstanceUID, sent.SeriesInstanceUID
    keys = (f"StudyInstanceUID={study}", f"SeriesInstanceUID={series}", "SOPInstanceUID")
    return {str(answer.SOPInstanceUID) for answer in find(daemon, into, "IMAGE", *keys)}


def find_answer(daemon: RunningDaemon, into: Path) -> str:
    """What findscu is answered at STUDY level (Study Root), as dcmtk names the status of
    the final response: "Success", "Refused: OutOfResources"..."""
    into.mkdir(parents=True)
    found = run_dcmtk(
        "findscu", "-v", "-S", "-X", "-od", str(into), "-aec", daemon.ae_title,
        "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID",
        LOCALHOST, str(daemon.port),
    )  # fmt: skip
    said = re.search(r"Received Final Find Response \((.*)\)", found.stdout + found.stderr)
    assert said is not None, found.stdout[-3000:] + found.stderr[-3000:]
    return said.group(1)

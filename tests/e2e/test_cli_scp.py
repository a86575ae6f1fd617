"""``dicomd scp`` as a user runs it: a real port, dcmtk's storescu and findscu, real signals.

Each test starts the command in its own folder on a free port and stops it
by its PID.  Its log (stderr) and its standard output are collected apart:
the log is the only output.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from pydicom import dcmread

from tests.support.archive import ArchiveView
from tests.support.daemons import log_lines_with, run_dicomd
from tests.support.datasets import dataset_bytes, write_ct_files
from tests.support.dcmtk import run_dcmtk
from tests.support.processes import (
    LOCALHOST,
    OutputCollector,
    daemon_environment,
    free_tcp_port,
    stop_process,
    wait_until_listening,
)

STOP_TIMEOUT = 15.0


@dataclass
class RunningScp:
    """``dicomd scp`` listening on ``port``; ``log`` is its stderr, ``stdout`` its stdout."""

    process: subprocess.Popen[str]
    port: int
    directory: Path
    log: OutputCollector = field(repr=False)
    stdout: OutputCollector = field(repr=False)

    def signalled(self, number: int) -> int:
        """Send signal ``number`` and wait for the exit status."""
        self.process.send_signal(number)
        status = self.process.wait(STOP_TIMEOUT)
        self.log.join(5.0)
        self.stdout.join(5.0)
        return status

    def log_text(self) -> str:
        return self.log.text()


@pytest.fixture
def start_scp(tmp_path: Path) -> Iterator:
    """Factory: ``start_scp("--print", ...)`` runs ``dicomd scp --port <free> ...`` in tmp_path."""
    started: list[RunningScp] = []

    def start(*options: str) -> RunningScp:
        port = free_tcp_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "dicomd.cli", "scp", "--port", str(port), *options],
            cwd=tmp_path,
            env=daemon_environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
        scp = RunningScp(
            process,
            port,
            tmp_path,
            OutputCollector(process.stderr),
            OutputCollector(process.stdout),
        )
        started.append(scp)
        wait_until_listening(process, port, scp.log, name="dicomd scp")
        return scp

    yield start
    for scp in started:
        stop_process(scp.process)


def storescu(scp: RunningScp, called_ae_title: str, files: list[Path], *options: str):
    return run_dcmtk(
        "storescu", "-aec", called_ae_title, *options, LOCALHOST, str(scp.port), *map(str, files)
    )


def stored(scp: RunningScp, called_ae_title: str, files: list[Path]) -> None:
    sent = storescu(scp, called_ae_title, files)
    assert sent.returncode == 0, sent.stdout + sent.stderr + scp.log_text()


def uid_of(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_print_and_save_log_each_instance_and_keep_it_as_sent(tmp_path: Path, start_scp) -> None:
    files = write_ct_files(tmp_path / "send", 3)
    scp = start_scp("--print", "--save", "./scp_incoming")

    stored(scp, "DICOMD", files)

    saved = tmp_path / "scp_incoming"
    for path in files:
        copy = saved / f"{uid_of(path)}.dcm"
        assert dataset_bytes(copy) == dataset_bytes(path)  # the data set exactly as sent
        assert dcmread(copy) == dcmread(path)
    assert sorted(path.name for path in saved.iterdir() if path.is_file()) == sorted(
        f"{uid_of(path)}.dcm" for path in files
    )
    assert not list((saved / ".incoming").iterdir())
    lines = log_lines_with(scp.log_text(), "C-STORE from STORESCU", "Store^Test [STORE1]")
    assert len(lines) == len(files), scp.log_text()
    assert all("CT Image Storage" in line for line in lines)


def test_archive_answers_findscu_with_what_was_stored(tmp_path: Path, start_scp) -> None:
    files = write_ct_files(tmp_path / "send", 3)
    first = dcmread(files[0])
    scp = start_scp("--aet", "QUICK", "--archive", "./archive")
    stored(scp, "QUICK", files)

    answers = tmp_path / "answers"
    answers.mkdir()
    found = run_dcmtk(
        "findscu", "-S", "-X", "-od", str(answers), "-aec", "QUICK",
        "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={first.StudyInstanceUID}",
        "-k", f"SeriesInstanceUID={first.SeriesInstanceUID}", "-k", "SOPInstanceUID",
        LOCALHOST, str(scp.port),
    )  # fmt: skip

    assert found.returncode == 0, found.stdout + found.stderr
    matches = {uid_of(path) for path in answers.iterdir()}
    assert matches == {uid_of(path) for path in files}
    archive = ArchiveView(tmp_path / "archive")
    archive.assert_consistent()
    assert set(archive.indexed()) == matches


def test_a_site_file_gives_the_rest_and_the_options_override_it(tmp_path: Path, start_scp) -> None:
    (tmp_path / "site.yaml").write_text(
        yaml.safe_dump(
            {
                "ae_title": "SITE",
                "listen": "tcp:1",
                "storage": {"path": "./site-archive"},
                "access": {"calling_aes": ["MODALITY"]},
                "plugins": [{"plugin": "archive"}],
            }
        )
    )
    files = write_ct_files(tmp_path / "send", 2)
    scp = start_scp("-c", "site.yaml", "--aet", "QUICK", "--save", "./saved")

    # the file's access list stands: only MODALITY may call
    refused = storescu(scp, "QUICK", files, "-aet", "STRANGER")
    assert refused.returncode != 0
    # the --aet option replaced the file's AE title
    assert storescu(scp, "SITE", files, "-aet", "MODALITY").returncode != 0
    accepted = storescu(scp, "QUICK", files, "-aet", "MODALITY")
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr

    # --save replaced the file's plugins: the instances are saved, nothing is archived
    assert {path.name for path in (tmp_path / "saved").glob("*.dcm")} == {
        f"{uid_of(path)}.dcm" for path in files
    }
    assert not (tmp_path / "site-archive").exists()
    lines = log_lines_with(scp.log_text(), "rejected")
    assert any("STRANGER" in line for line in lines), scp.log_text()


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_it_cleanly(tmp_path: Path, start_scp, number: int) -> None:
    files = write_ct_files(tmp_path / "send", 2)
    scp = start_scp("--print", "--archive", "./archive")
    stored(scp, "DICOMD", files)

    status = scp.signalled(number)

    log = scp.log_text()
    assert status == 0, log
    assert "Traceback" not in log
    assert scp.stdout.text() == ""  # the log goes to stderr, as the only output
    assert len(log_lines_with(log, "C-STORE from STORESCU")) == 2
    assert log.rstrip().endswith("Main loop terminated."), log
    archive = ArchiveView(tmp_path / "archive")
    archive.assert_consistent()
    assert set(archive.indexed()) == {uid_of(path) for path in files}


def test_a_port_in_use_is_one_line_and_exit_status_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_dicomd("scp", "--port", str(port), "--print")

    assert result.returncode == 1
    assert (result.stdout, result.stderr) == (
        "",
        f"dicomd: listen: cannot listen on *:{port}: Address already in use\n",
    )


def test_a_save_folder_that_cannot_be_made_is_one_line_and_exit_status_1(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run_dicomd("scp", "--port", str(free_tcp_port()), "--save", str(blocker / "in"))

    assert result.returncode == 1
    assert (result.stdout, result.stderr) == (
        "",
        f"dicomd scp: --save: cannot create {blocker / 'in'}: Not a directory\n",
    )


def test_an_archive_folder_of_unknown_files_is_one_line_and_exit_status_1(tmp_path: Path) -> None:
    folder = tmp_path / "not-an-archive"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    result = run_dicomd("scp", "--port", str(free_tcp_port()), "--archive", str(folder))

    assert result.returncode == 1
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("dicomd scp: cannot start: ArchiveError: ")
    assert "holds files but no index" in line
    assert (folder / "notes.txt").read_text() == "mine"

"""``dicomd store`` against dcmtk's storescp (with its fault options), the dicomd daemon and
a pynetdicom SCP that answers with the statuses a test needs."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import evt

from dicomd.cli.progress import Progress, clock_time
from dicomd.cli.store import Instance, batches, propose_for, share_out
from dicomd.part10 import Part10Header
from tests.support.certificates import Authority
from tests.support.daemons import RunningDaemon, log_lines_with, run_dicomd, start_daemon
from tests.support.datasets import copies_of
from tests.support.dcmtk import dcmtk_peer
from tests.support.processes import LOCALHOST, daemon_environment, free_tcp_port
from tests.support.pynetdicom_peers import pynetdicom_scp

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
SUMMARY = re.compile(
    r"stored (?P<stored>\d+), warnings (?P<warnings>\d+), failed (?P<failed>\d+)"
    r"(?:, not sent (?P<not_sent>\d+))?(?:, skipped (?P<skipped>\d+))?"
    r" in \d+\.\d s \(\d+\.\d files/s, \d+\.\d MB/s\)"
)


def summary(result: subprocess.CompletedProcess[str]) -> dict[str, int]:
    match = SUMMARY.fullmatch(result.stdout.strip())
    assert match, result.stdout
    return {key: int(value or 0) for key, value in match.groupdict().items()}


def received_instances(folder: Path) -> set[str]:
    """SOP instance UIDs of every Part 10 file under ``folder``."""
    found = set()
    for path in folder.rglob("*"):
        if path.is_file() and path.read_bytes()[128:132] == b"DICM":
            found.add(str(dcmread(path, stop_before_pixels=True).SOPInstanceUID))
    return found


def instance_uids(paths: list[Path]) -> set[str]:
    return {str(dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in paths}


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    """Three CT images (explicit VR) and two RT plans (implicit VR), in a tree of folders."""
    return [
        *copies_of("CT_small.dcm", tmp_path / "send" / "ct", 3),
        *copies_of("rtplan.dcm", tmp_path / "send" / "rt" / "deeper", 2),
    ]


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[RunningDaemon]:
    """The dicomd daemon with its built-in archive, so that it accepts C-STORE."""
    directory = tmp_path / "daemon"
    directory.mkdir()
    running = start_daemon(directory, {"plugins": [{"plugin": "archive", "options": {}}]})
    yield running
    running.stop()


def test_files_and_folders_are_sent_to_storescp(tmp_path: Path, files: list[Path]) -> None:
    received = tmp_path / "received"
    received.mkdir()

    with dcmtk_peer("storescp", tmp_path, "-od", str(received)) as storescp:
        result = run_dicomd(
            "store", LOCALHOST, str(storescp.port), str(files[0]), str(tmp_path / "send" / "rt")
        )

    assert result.returncode == 0, result.stderr
    assert summary(result) == dict(stored=3, warnings=0, failed=0, not_sent=0, skipped=0)
    assert result.stderr == ""
    assert received_instances(received) == instance_uids([files[0], *files[3:]])


def test_what_is_not_dicom_is_skipped_with_a_note(tmp_path: Path, files: list[Path]) -> None:
    notes = tmp_path / "send" / "rt" / "notes.txt"
    notes.write_text("not an image")
    received = tmp_path / "received"
    received.mkdir()

    with dcmtk_peer("storescp", tmp_path, "-od", str(received)) as storescp:
        result = run_dicomd("store", LOCALHOST, str(storescp.port), str(tmp_path / "send"))

    assert result.returncode == 0, result.stderr
    assert summary(result) == dict(stored=5, warnings=0, failed=0, not_sent=0, skipped=1)
    assert result.stderr.splitlines() == [
        f"dicomd store: {notes}: skipped, not a DICOM file"
        " (no DICM prefix after the 128-byte preamble)"
    ]
    assert received_instances(received) == instance_uids(files)


def test_storescp_refusing_the_association_is_one_line(tmp_path: Path, files: list[Path]) -> None:
    with dcmtk_peer("storescp", tmp_path, "--refuse") as storescp:
        result = run_dicomd("store", "-j", "2", LOCALHOST, str(storescp.port), *map(str, files))

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        "dicomd store: association rejected by ANY-SCP:"
        " no reason given (permanent, service user, reason 1)\n"
    )


def test_storescp_ignoring_the_data_still_answers_success(
    tmp_path: Path, files: list[Path]
) -> None:
    received = tmp_path / "received"
    received.mkdir()

    with dcmtk_peer("storescp", tmp_path, "--ignore", "-od", str(received)) as storescp:
        result = run_dicomd("store", LOCALHOST, str(storescp.port), *map(str, files))

    assert result.returncode == 0, result.stderr
    assert summary(result)["stored"] == 5
    assert list(received.iterdir()) == []


@pytest.mark.parametrize("fault", ["--abort-after", "--abort-during"])
def test_storescp_aborting_fails_the_file_and_leaves_the_rest_unsent(
    tmp_path: Path, files: list[Path], fault: str
) -> None:
    with dcmtk_peer("storescp", tmp_path, fault, "-od", str(tmp_path)) as storescp:
        result = run_dicomd("store", LOCALHOST, str(storescp.port), *map(str, files[:3]))

    assert result.returncode == 1
    assert summary(result) == dict(stored=0, warnings=0, failed=1, not_sent=2, skipped=0)
    assert result.stderr == (
        f"dicomd store: {files[0]}: association with ANY-SCP at {LOCALHOST}:{storescp.port}"
        " aborted by the service user (source 0)\n"
    )


@pytest.mark.parametrize(
    ("fault", "stored"),
    [
        ("--sleep-during", 0),  # no response to the first file in time
        ("--sleep-after", 1),  # the first response comes, then nothing for a while
    ],
)
def test_storescp_sleeping_times_out(
    tmp_path: Path, files: list[Path], fault: str, stored: int
) -> None:
    with dcmtk_peer("storescp", tmp_path, fault, "3", "-od", str(tmp_path)) as storescp:
        result = run_dicomd(
            "store", "-to", "1", LOCALHOST, str(storescp.port), *map(str, files[:3])
        )

    assert result.returncode == 1
    counts = summary(result)
    assert (counts["stored"], counts["failed"], counts["not_sent"]) == (stored, 1, 2 - stored)
    assert result.stderr == (
        f"dicomd store: {files[stored]}: timed out after 1 s waiting for the C-STORE response"
        f" from ANY-SCP at {LOCALHOST}:{storescp.port}\n"
    )


def test_parallel_associations_to_the_dicomd_daemon(tmp_path: Path, daemon: RunningDaemon) -> None:
    sent = copies_of("CT_small.dcm", tmp_path / "many", 12)

    result = run_dicomd(
        "store", "-aec", "DICOMD", "-j", "3", LOCALHOST, str(daemon.port), str(tmp_path / "many")
    )

    assert result.returncode == 0, result.stderr
    assert summary(result)["stored"] == 12
    assert received_instances(daemon.directory / "var" / "archive") == instance_uids(sent)
    log = daemon.wait_for_log(lambda text: len(log_lines_with(text, "accepted")) >= 3)
    assert len(log_lines_with(log, "accepted")) >= 3, log


def test_files_go_over_tls_to_the_dicomd_daemon(tmp_path: Path, files: list[Path]) -> None:
    """With +tla the command loads pyOpenSSL, which it marks absent for plain TCP (the same
    command line without it then fails against the TLS listener, as it should)."""
    ca = Authority(tmp_path, "hospital")
    server = ca.issue("dicomd", server=True)
    directory = tmp_path / "tls-daemon"
    directory.mkdir()
    tls = {"certificate": str(server.certificate), "private_key": str(server.private_key)}
    running = start_daemon(
        directory, {"plugins": [{"plugin": "archive", "options": {}}], "tls": tls}
    )
    try:
        sent = run_dicomd(
            "store", "-aec", "DICOMD", "+tla", "+cf", str(ca.path),
            LOCALHOST, str(running.port), str(tmp_path / "send"),
        )  # fmt: skip
        refused = run_dicomd(
            "store", "-aec", "DICOMD", LOCALHOST, str(running.port), str(tmp_path / "send")
        )
    finally:
        running.stop()

    assert sent.returncode == 0, sent.stderr
    assert summary(sent)["stored"] == len(files)
    assert received_instances(directory / "var" / "archive") == instance_uids(files)
    assert refused.returncode == 1


def test_the_daemon_rejects_a_called_ae_title_it_does_not_have(
    daemon: RunningDaemon, files: list[Path]
) -> None:
    result = run_dicomd("store", "-aec", "NOT-DICOMD", LOCALHOST, str(daemon.port), str(files[0]))

    assert result.returncode == 1
    assert result.stderr == (
        "dicomd store: association rejected by NOT-DICOMD:"
        " called AE title not recognized (permanent, service user, reason 7)\n"
    )


def status_handler(status: int, comment: str | None = None):
    def handle(event) -> Dataset:
        answer = Dataset()
        answer.Status = status
        if comment:
            answer.ErrorComment = comment
        return answer

    return handle


def test_failure_statuses_are_listed_with_their_meaning(files: list[Path]) -> None:
    handler = status_handler(0xA700, "disk full")
    with pynetdicom_scp([CT_IMAGE_STORAGE], [(evt.EVT_C_STORE, handler)]) as port:
        result = run_dicomd("store", LOCALHOST, str(port), *map(str, files[:2]))

    assert result.returncode == 1
    assert summary(result) == dict(stored=0, warnings=0, failed=2, not_sent=0, skipped=0)
    assert result.stderr.splitlines() == [
        f"dicomd store: {files[0]}: 0xA700 out of resources (disk full)",
        f"dicomd store: {files[1]}: 0xA700 out of resources (disk full)",
    ]


def test_warnings_are_counted_and_do_not_fail(files: list[Path]) -> None:
    handler = status_handler(0xB000)
    with pynetdicom_scp([CT_IMAGE_STORAGE], [(evt.EVT_C_STORE, handler)]) as port:
        result = run_dicomd("store", LOCALHOST, str(port), *map(str, files[:3]))

    assert result.returncode == 0, result.stderr
    assert summary(result) == dict(stored=0, warnings=3, failed=0, not_sent=0, skipped=0)
    assert result.stderr == ""


def test_a_sop_class_the_peer_does_not_accept_fails_that_file_only(files: list[Path]) -> None:
    """The peer takes CT images only: the RT plans fail, the CT images go."""
    handler = status_handler(0x0000)
    with pynetdicom_scp([CT_IMAGE_STORAGE], [(evt.EVT_C_STORE, handler)]) as port:
        result = run_dicomd("store", LOCALHOST, str(port), str(files[0]), str(files[3]))

    assert result.returncode == 1
    assert summary(result) == dict(stored=1, warnings=0, failed=1, not_sent=0, skipped=0)
    assert result.stderr == (
        f"dicomd store: {files[3]}: not accepted by ANY-SCP at {LOCALHOST}:{port}:"
        " RT Plan Storage in Implicit VR Little Endian\n"
    )


def test_nothing_listening_is_connection_refused(files: list[Path]) -> None:
    port = free_tcp_port()

    result = run_dicomd("store", "-j", "4", LOCALHOST, str(port), *map(str, files))

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == f"dicomd store: connection refused by {LOCALHOST}:{port}\n"


def test_a_path_that_does_not_exist_stops_before_anything_is_sent(tmp_path: Path) -> None:
    result = run_dicomd("store", LOCALHOST, "104", str(tmp_path / "absent"))

    assert result.returncode == 1
    assert result.stderr == f"dicomd store: {tmp_path / 'absent'}: No such file or directory\n"


def test_no_dicom_files_at_all_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("nothing to see")

    result = run_dicomd("store", LOCALHOST, "104", str(tmp_path))

    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == "dicomd store: no DICOM files to send"


def run_with_terminal(*arguments: str) -> tuple[int, str, str]:
    """Run ``dicomd`` with stderr on a pseudo-terminal, as in an interactive shell."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "dicomd.cli", *arguments],
        env=daemon_environment(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=terminal,
        text=True,
    )
    os.close(terminal)
    shown = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the other side is closed
            break
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    stdout = process.stdout.read() if process.stdout else ""
    return process.wait(60), stdout, shown.decode()


def test_a_terminal_gets_a_progress_bar_redrawn_in_place(tmp_path: Path, files: list[Path]) -> None:
    with dcmtk_peer("storescp", tmp_path, "-od", str(tmp_path)) as storescp:
        status, stdout, terminal = run_with_terminal(
            "store", LOCALHOST, str(storescp.port), str(tmp_path / "send")
        )

    assert status == 0, terminal
    assert re.search(r"\r\[-{24}\]  0/5 files  0\.0 files/s, 0\.0 MB/s  ETA -:--", terminal)
    assert terminal.endswith("\r")  # the bar is erased before the summary
    assert "\n" not in terminal.replace("\r\n", "")  # never scrolls
    assert summary(subprocess.CompletedProcess([], 0, stdout, ""))["stored"] == 5


def test_no_progress_keeps_the_terminal_quiet(tmp_path: Path, files: list[Path]) -> None:
    with dcmtk_peer("storescp", tmp_path, "-od", str(tmp_path)) as storescp:
        status, _, terminal = run_with_terminal(
            "store", "--no-progress", LOCALHOST, str(storescp.port), str(tmp_path / "send")
        )

    assert status == 0, terminal
    assert terminal == ""


def test_work_is_shared_out_by_size_keeping_the_order_of_files() -> None:
    instances = [
        instance(n, CT_IMAGE_STORAGE, EXPLICIT_VR_LITTLE_ENDIAN, size)
        for n, size in enumerate([9, 1, 1, 5, 4, 1])
    ]

    groups = share_out(instances, 2)

    assert [[i.path.name for i in group] for group in groups] == [
        ["0.dcm", "1.dcm", "5.dcm"],  # 9 + 1 + 1 bytes
        ["2.dcm", "3.dcm", "4.dcm"],  # 1 + 5 + 4 bytes
    ]
    assert share_out(instances[:1], 4) == [instances[:1]]


def test_the_bar_reports_counts_rates_and_time_left() -> None:
    now = [100.0]
    written: list[str] = []

    class Terminal:
        def write(self, text: str) -> None:
            written.append(text)

        def flush(self) -> None:
            pass

    progress = Progress(4, 4_000_000, Terminal(), visible=True, clock=lambda: now[0])  # type: ignore[arg-type]
    now[0] += 2.0
    progress.advance(1_000_000)

    assert (
        progress.line() == "[######------------------]  1/4 files  0.5 files/s, 0.5 MB/s  ETA 0:06"
    )
    assert written[-1] == "\r" + progress.line()
    progress.clear()
    assert written[-1] == "\r" + " " * len(progress.line()) + "\r"


@pytest.mark.parametrize(
    ("seconds", "shown"), [(0, "0:00"), (7.4, "0:07"), (754, "12:34"), (3723, "1:02:03")]
)
def test_time_left_reads_like_a_clock(seconds: float, shown: str) -> None:
    assert clock_time(seconds) == shown


def instance(number: int, sop_class: str, syntax: str, size: int = 100) -> Instance:
    """A file of ``size`` bytes, all of them data set."""
    header = Part10Header(sop_class, f"1.2.3.{number}", syntax, 0, size)
    return Instance(Path(f"{number}.dcm"), header)


def test_contexts_offer_each_file_its_own_syntax_first() -> None:
    jpeg = "1.2.840.10008.1.2.4.50"
    implicit = "1.2.840.10008.1.2"
    instances = [
        instance(0, CT_IMAGE_STORAGE, EXPLICIT_VR_LITTLE_ENDIAN),
        instance(1, CT_IMAGE_STORAGE, EXPLICIT_VR_LITTLE_ENDIAN),
        instance(2, CT_IMAGE_STORAGE, implicit),
        instance(3, CT_IMAGE_STORAGE, jpeg),
    ]

    contexts = propose_for(instances)

    assert [(c.context_id, c.abstract_syntax, c.transfer_syntaxes) for c in contexts] == [
        (1, CT_IMAGE_STORAGE, (EXPLICIT_VR_LITTLE_ENDIAN, implicit)),
        (3, CT_IMAGE_STORAGE, (implicit, EXPLICIT_VR_LITTLE_ENDIAN)),
        (5, CT_IMAGE_STORAGE, (jpeg,)),
    ]


def test_more_kinds_of_file_than_one_association_can_propose_take_several() -> None:
    instances = [
        instance(number, f"1.2.3.{number % 130}", EXPLICIT_VR_LITTLE_ENDIAN)
        for number in range(260)
    ]

    cut = batches(instances)

    assert [len(batch) for batch in cut] == [128, 128, 4]
    assert [i for batch in cut for i in batch] == instances
    assert all(len(propose_for(batch)) <= 128 for batch in cut)

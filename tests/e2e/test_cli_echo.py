"""``dicomd echo`` against dcmtk's storescp, the dicomd daemon and peers that misbehave."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemons import COMMAND_TIMEOUT, run_dicomd, start_daemon
from tests.support.dcmtk import dcmtk_peer
from tests.support.processes import LOCALHOST, daemon_environment, free_tcp_port


def success_line(called: str, port: int) -> re.Pattern[str]:
    return re.compile(rf"echo to {called} at {LOCALHOST}:{port}: Success \(0x0000\) in \d+\.\d ms")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[object]:
    """The dicomd daemon under twistd, with its default configuration (AE title DICOMD)."""
    directory = tmp_path / "daemon"
    directory.mkdir()
    running = start_daemon(directory, {})
    yield running
    running.stop()


def test_echo_to_storescp(tmp_path: Path) -> None:
    with dcmtk_peer("storescp", tmp_path) as storescp:
        result = run_dicomd("echo", LOCALHOST, str(storescp.port))

    assert result.returncode == 0, result.stderr
    assert success_line("ANY-SCP", storescp.port).fullmatch(result.stdout.strip())
    assert result.stderr == ""


def test_repeated_echoes_share_one_association(tmp_path: Path) -> None:
    with dcmtk_peer("storescp", tmp_path, "-v") as storescp:
        result = run_dicomd("echo", "--repeat", "3", LOCALHOST, str(storescp.port))
    log = storescp.log_text()

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    assert all(success_line("ANY-SCP", storescp.port).fullmatch(line) for line in lines)
    assert log.count("Association Received") == 1


def test_calling_and_called_ae_titles_reach_the_peer(tmp_path: Path) -> None:
    with dcmtk_peer("storescp", tmp_path, "-d") as storescp:
        result = run_dicomd(
            "echo", "-aet", "MY-SCU", "-aec", "THEIR-SCP", LOCALHOST, str(storescp.port)
        )
    log = storescp.log_text()

    assert result.returncode == 0, result.stderr
    assert success_line("THEIR-SCP", storescp.port).fullmatch(result.stdout.strip())
    assert re.search(r"Calling Application Name: +MY-SCU", log), log
    assert re.search(r"Called Application Name: +THEIR-SCP", log), log


def test_an_association_refused_by_storescp_is_one_line(tmp_path: Path) -> None:
    with dcmtk_peer("storescp", tmp_path, "--refuse") as storescp:
        result = run_dicomd("echo", LOCALHOST, str(storescp.port))

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        "dicomd echo: association rejected by ANY-SCP:"
        " no reason given (permanent, service user, reason 1)\n"
    )


def test_storescp_reject_lets_us_in_because_we_send_an_implementation_class_uid(
    tmp_path: Path,
) -> None:
    with dcmtk_peer("storescp", tmp_path, "--reject") as storescp:
        result = run_dicomd("echo", LOCALHOST, str(storescp.port))

    assert result.returncode == 0, result.stderr
    assert success_line("ANY-SCP", storescp.port).fullmatch(result.stdout.strip())


def test_echo_to_the_dicomd_daemon(daemon) -> None:
    result = run_dicomd("echo", "-aec", "DICOMD", LOCALHOST, str(daemon.port))

    assert result.returncode == 0, result.stderr
    assert success_line("DICOMD", daemon.port).fullmatch(result.stdout.strip())


def test_the_daemon_rejects_a_called_ae_title_it_does_not_have(daemon) -> None:
    result = run_dicomd("echo", "-aec", "ELSEWHERE", LOCALHOST, str(daemon.port))

    assert result.returncode == 1
    assert result.stderr == (
        "dicomd echo: association rejected by ELSEWHERE:"
        " called AE title not recognized (permanent, service user, reason 7)\n"
    )


def test_nothing_listening_is_connection_refused() -> None:
    port = free_tcp_port()

    result = run_dicomd("echo", LOCALHOST, str(port))

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == f"dicomd echo: connection refused by {LOCALHOST}:{port}\n"


def test_a_peer_that_never_answers_times_out() -> None:
    """The kernel accepts the connection for a listening socket; nobody ever reads from it."""
    with socket.socket() as silent:
        silent.bind((LOCALHOST, 0))
        silent.listen()
        port = silent.getsockname()[1]

        result = run_dicomd("echo", "-to", "1", LOCALHOST, str(port))

    assert result.returncode == 1
    assert result.stderr == (
        f"dicomd echo: timed out after 1 s waiting for ANY-SCP at {LOCALHOST}:{port}"
        " to answer the association request\n"
    )


def test_ctrl_c_is_one_line_and_the_shell_status_for_an_interrupt() -> None:
    with socket.socket() as silent:
        silent.bind((LOCALHOST, 0))
        silent.listen()
        silent.settimeout(COMMAND_TIMEOUT)
        port = silent.getsockname()[1]
        process = subprocess.Popen(
            [sys.executable, "-m", "dicomd.cli", "echo", LOCALHOST, str(port)],
            env=daemon_environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        connection, _ = silent.accept()  # the command is running and waits for an answer
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=COMMAND_TIMEOUT)
        connection.close()

    assert process.returncode == 130
    assert stderr == "dicomd echo: interrupted\n"
    assert stdout == ""


def test_verbose_logs_to_stderr_and_keeps_stdout_for_results(daemon) -> None:
    result = run_dicomd("echo", "-v", "-aec", "DICOMD", LOCALHOST, str(daemon.port))

    assert result.returncode == 0, result.stderr
    assert success_line("DICOMD", daemon.port).fullmatch(result.stdout.strip())
    assert result.stderr != ""


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [
        (["-aec", "A" * 17], "is longer"),
        (["-aet", ""], "an AE title cannot be empty"),
        (["-aet", "A\\B"], "printable ASCII without backslash"),
        (["-pdu", "100"], "not between 4096 and 4294967295"),
        (["-to", "0"], "a timeout must be more than 0 seconds"),
        (["--repeat", "0"], "0 is less than 1"),
    ],
)
def test_bad_options_are_usage_errors(arguments: list[str], complaint: str) -> None:
    result = run_dicomd("echo", *arguments, LOCALHOST, "104")

    assert result.returncode == 2
    assert complaint in result.stderr


def test_a_port_out_of_range_is_a_usage_error() -> None:
    result = run_dicomd("echo", LOCALHOST, "70000")

    assert result.returncode == 2
    assert "70000 is not between 1 and 65535" in result.stderr

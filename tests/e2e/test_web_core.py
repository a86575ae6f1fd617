"""The HTTP listener of a real daemon, in one process and with two workers, asked by curl:
the statuses of authentication (401) and the node's rules (403), CORS, unknown paths
(404), a body past the limit (413), a port in use, and no traceback in the log."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.daemons import (
    RunningDaemon,
    log_lines_with,
    run_dicomd,
    run_twistd,
    users_file,
    write_config,
)
from tests.support.processes import LOCALHOST, free_tcp_port

VIEWER_ORIGIN = "https://viewer.example"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class WebDaemon:
    daemon: RunningDaemon
    base: str

    def curl(self, path: str, *arguments: str) -> Answer:
        """``curl`` asking ``path`` of the daemon's web listener, with ``arguments``."""
        done = subprocess.run(
            ["curl", "-sS", "-D", "-", "--max-time", "30", *arguments, self.base + path],
            capture_output=True,
            timeout=60,
            check=True,
        )
        head, _, body = done.stdout.partition(b"\r\n\r\n")
        while head.startswith(b"HTTP/1.1 100"):  # Expect: 100-continue's interim answer
            head, _, body = body.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return Answer(int(status_line.split()[1]), headers, body)


def web_settings(port: int, **web: object) -> dict[str, object]:
    return {"listen": f"tcp:{port}:interface={LOCALHOST}", **web}


@pytest.fixture(params=[1, 2], ids=["one process", "two workers"])
def secured(
    request: pytest.FixtureRequest, start_dicomd: Callable[..., RunningDaemon], tmp_path: Path
) -> WebDaemon:
    """alice may find, bob may get, carol may store: each with passcode "right"."""
    users = users_file(tmp_path, "alice")
    for name in ("bob", "carol"):
        added = run_dicomd(
            *("user", "add", name, "--file", str(users), "--passcode-stdin"), input_text="right\n"
        )
        assert added.returncode == 0, added.stderr
    port = free_tcp_port()
    daemon = start_dicomd(
        workers=request.param,
        plugins=[{"plugin": "archive"}],
        authentication={"required": True, "users_file": str(users)},
        authorization=[
            {"peers": ["user:alice"], "may": ["find"]},
            {"peers": ["user:bob"], "may": ["get"]},
            {"peers": ["user:carol"], "may": ["store"]},
        ],
        web=web_settings(port, cors_origins=[VIEWER_ORIGIN], max_stow_length=1 << 20),
    )
    return WebDaemon(daemon, f"http://{LOCALHOST}:{port}")


def test_credentials_and_rules(secured: WebDaemon) -> None:
    studies = "/dicom-web/studies"
    missing = secured.curl(studies)
    assert missing.status == 401
    assert missing.headers["www-authenticate"] == 'Basic realm="dicomd", Bearer realm="dicomd"'
    assert secured.curl(studies, "-u", "alice:wrong").status == 401
    assert secured.curl(studies, "-H", "Authorization: Bearer not-a-token").status == 401
    refused = secured.curl(studies, "-u", "bob:right")
    assert (refused.status, refused.body) == (403, b"user 'bob' may not find\n")
    found = secured.curl(studies, "-u", "alice:right")
    assert (found.status, found.body) == (200, b"[]")  # an empty archive
    assert secured.curl("/dicom-web/studies/1.2.3/metadata", "-u", "alice:right").status == 403
    posted = secured.curl(studies, "-u", "alice:right", "-X", "POST", "--data-binary", "x")
    assert (posted.status, posted.body) == (403, b"user 'alice' may not store\n")
    assert_no_traceback(secured.daemon)


def test_cors_for_the_configured_origin_only(secured: WebDaemon) -> None:
    studies = "/dicom-web/studies"
    allowed = secured.curl(studies, "-u", "alice:right", "-H", f"Origin: {VIEWER_ORIGIN}")
    assert allowed.headers["access-control-allow-origin"] == VIEWER_ORIGIN
    other = secured.curl(studies, "-u", "alice:right", "-H", "Origin: https://elsewhere.example")
    assert "access-control-allow-origin" not in other.headers
    preflight = secured.curl(
        studies,
        "-X",
        "OPTIONS",
        "-H",
        f"Origin: {VIEWER_ORIGIN}",
        "-H",
        "Access-Control-Request-Method: GET",
        "-H",
        "Access-Control-Request-Headers: authorization",
    )
    assert preflight.status == 204
    assert preflight.headers["access-control-allow-origin"] == VIEWER_ORIGIN
    assert "Authorization" in preflight.headers["access-control-allow-headers"]
    assert_no_traceback(secured.daemon)


def test_unknown_paths_and_long_bodies(secured: WebDaemon, tmp_path: Path) -> None:
    for path in ("/dicom-web/nothing", "/dicom-web/studies/1.2.3/nothing", "/nothing"):
        assert secured.curl(path, "-u", "alice:right").status == 404, path
    assert secured.curl("/dicom-web/studies/1.2.x/series", "-u", "alice:right").status == 400
    body = tmp_path / "two-mib"
    body.write_bytes(b"\0" * (2 << 20))
    too_long = secured.curl(
        "/dicom-web/studies",
        *("-u", "carol:right", "-H", 'Content-Type: multipart/related; type="application/dicom"'),
        *("--data-binary", f"@{body}"),
    )
    assert too_long.status == 413
    assert b"web.max_stow_length" in too_long.body
    assert secured.curl("/dicom-web/studies", "-u", "alice:right").status == 200
    assert_no_traceback(secured.daemon)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_web_port_in_use_stops_the_start_with_one_line(tmp_path: Path, workers: int) -> None:
    with socket.socket() as taken:
        taken.bind((LOCALHOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(
            tmp_path,
            {
                "listen": f"tcp:{free_tcp_port()}:interface={LOCALHOST}",
                "workers": workers,
                "storage": {"path": str(tmp_path / "archive")},
                "plugins": [],
                "web": web_settings(port),
            },
        )
        result = run_twistd(config)
    assert result.returncode == 1
    output = result.stdout + result.stderr
    refusal = f"dicomd: web.listen: cannot listen on {LOCALHOST}:{port}: Address already in use"
    assert output.count(refusal) == 1, output
    assert "Traceback" not in output


def assert_no_traceback(daemon: RunningDaemon) -> None:
    log = daemon.log_text()
    assert "Traceback" not in log, log


def test_connections_past_the_limit_are_answered_503(
    start_dicomd: Callable[..., RunningDaemon],
) -> None:
    port = free_tcp_port()
    daemon = start_dicomd(workers=1, plugins=[], web=web_settings(port, max_connections=2))
    web = WebDaemon(daemon, f"http://{LOCALHOST}:{port}")
    idle = [socket.create_connection((LOCALHOST, port)) for _ in range(2)]
    try:
        daemon.wait_for_log(lambda log: False, timeout=0.5)  # the daemon takes both in
        busy = web.curl("/dicom-web/nothing")
        assert busy.status == 503
        assert busy.headers["retry-after"] == "1"
    finally:
        for connection in idle:
            connection.close()
    deadline = time.monotonic() + 10  # room again once the daemon sees them gone
    while (status := web.curl("/dicom-web/nothing").status) == 503 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status == 404
    assert log_lines_with(daemon.log_text(), "refused", "web.max_connections")
    assert_no_traceback(daemon)

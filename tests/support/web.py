"""Daemons with a web listener, and their DICOMweb URL, for the e2e tests of dicomd.web."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.support.daemons import RunningDaemon, deep_merge, start_daemon
from tests.support.processes import LOCALHOST, free_tcp_port


def start_web_daemon(directory: Path, overrides: Mapping[str, Any]) -> RunningDaemon:
    """`start_daemon` with ``web.listen`` on a free local port, remembered as ``web_port``."""
    web_port = free_tcp_port()
    listen = {"web": {"listen": f"tcp:{web_port}:interface={LOCALHOST}"}}
    daemon = start_daemon(directory, deep_merge(listen, overrides))
    daemon.web_port = web_port  # type: ignore[attr-defined]
    return daemon


def dicomweb_url(daemon: RunningDaemon) -> str:
    """The base of a daemon's DICOMweb services (started by `start_web_daemon`)."""
    return f"http://{LOCALHOST}:{daemon.web_port}/dicom-web"  # type: ignore[attr-defined]


def curl(url: str, *options: str) -> tuple[int, dict[str, str], bytes]:
    """curl's status, headers (lower-case names) and body for a GET of ``url``."""
    with tempfile.TemporaryDirectory() as folder:
        head = Path(folder) / "head"
        done = subprocess.run(
            ["curl", "-sS", "-g", "-o", "-", "-D", str(head), *options, url],
            capture_output=True,
            timeout=60,
            check=True,
        )
        lines = head.read_text("latin-1").splitlines()
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if value:
            headers[name.strip().lower()] = value.strip()
    return status, headers, done.stdout

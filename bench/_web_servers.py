"""The two DICOMweb servers the web benchmark compares, started empty and stopped afterwards.

- dicomd: ``twistd -n dicomd`` with the archive and a ``web:`` listener,
  ``workers`` left at its default (one process per core, all adopting the
  DICOM and the web port);
- Orthanc (Debian package ``orthanc``) with its DICOMweb plugin (Debian package
  ``orthanc-dicomweb``) under ``/dicom-web/``, storing as the archive-class
  receiver of ``store.py`` does (``SyncStorageArea``: each file fsync'd).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import urllib3
from _processes import Processes, ServerUnavailable, last_line, wait_until_ready

from tests.support.daemons import AE_TITLE, daemon_command
from tests.support.processes import LOCALHOST, daemon_environment, free_tcp_port

ORTHANC_PLUGIN_FOLDERS: Final = (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc"))
ORTHANC_PLUGIN: Final = "libOrthancDicomWeb.so"


@dataclass(frozen=True, slots=True)
class WebServer:
    """A running server: its DICOMweb base URL, its process (group leader) and its log."""

    name: str
    base_url: str
    port: int
    pid: int
    output: Path


def orthanc_plugin() -> Path | None:
    """The DICOMweb plugin's shared library, or None when ``orthanc-dicomweb`` is missing."""
    found = (folder / ORTHANC_PLUGIN for folder in ORTHANC_PLUGIN_FOLDERS)
    return next((path for path in found if path.is_file()), None)


@contextlib.contextmanager
def dicomd_web(processes: Processes, work: Path) -> Iterator[WebServer]:
    """dicomd with its archive under ``work`` and DICOMweb on a free port."""
    dicom_port, web_port = free_tcp_port(), free_tcp_port()
    storage = work / "storage"
    storage.mkdir()
    settings = {
        "ae_title": AE_TITLE,
        "listen": f"tcp:{dicom_port}:interface={LOCALHOST}",
        "storage": {"path": str(storage)},
        "limits": {"max_associations": 64},
        "plugins": [{"plugin": "archive"}],
        "web": {"listen": f"tcp:{web_port}:interface={LOCALHOST}"},
    }
    config = work / "dicomd.yaml"
    config.write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in settings.items()))
    output = work / "dicomd.out"
    argv = daemon_command(config, work / "dicomd.log")
    with output.open("wb") as sink:
        process = processes.start(argv, output=sink, env=daemon_environment(), cwd=work)
    try:
        wait_until_ready(process, dicom_port, AE_TITLE, output)
        base = f"http://{LOCALHOST}:{web_port}/dicom-web"
        _wait_for_http(process.poll, base, output)
        yield WebServer("dicomd", base, web_port, process.pid, output)
    finally:
        processes.stop(process)


@contextlib.contextmanager
def orthanc_web(processes: Processes, work: Path) -> Iterator[WebServer]:
    """Orthanc with its DICOMweb plugin, its storage and SQLite index under ``work``."""
    plugin = orthanc_plugin()
    if plugin is None:
        raise ServerUnavailable(
            f"{ORTHANC_PLUGIN} not found (apt-get install orthanc orthanc-dicomweb)"
        )
    port = free_tcp_port()
    for folder in ("storage", "index"):
        (work / folder).mkdir()
    settings = {
        "Name": "ORTHANC",
        "StorageDirectory": str(work / "storage"),
        "IndexDirectory": str(work / "index"),
        "StorageCompression": False,
        "SyncStorageArea": True,  # fsync each file before answering, as dicomd does
        "DicomServerEnabled": False,
        "HttpServerEnabled": True,
        "HttpPort": port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "KeepAlive": True,
        "HttpCompressionEnabled": False,
        "Plugins": [str(plugin)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
    }
    config = work / "orthanc.json"
    config.write_text(json.dumps(settings, indent=2))
    output = work / "orthanc.out"
    with output.open("wb") as sink:
        process = processes.start(["Orthanc", str(config)], output=sink, cwd=work)
    try:
        base = f"http://{LOCALHOST}:{port}/dicom-web"
        _wait_for_http(process.poll, base, output)
        yield WebServer("orthanc", base, port, process.pid, output)
    finally:
        processes.stop(process)


def _wait_for_http(poll, base: str, output: Path, timeout: float = 60.0) -> None:
    """Return once ``GET base/studies?limit=1`` answers 200; raise `ServerUnavailable` if not."""
    http = urllib3.PoolManager(retries=False, timeout=2.0)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if poll() is not None:
            raise ServerUnavailable(last_line(output) or "exited")
        with contextlib.suppress(urllib3.exceptions.HTTPError):
            if http.request("GET", f"{base}/studies?limit=1").status == 200:
                return
        time.sleep(0.2)
    raise ServerUnavailable(f"no answer to HTTP within {timeout:g} s: {last_line(output)}")

"""STOW-RS against a real daemon: dicomweb-client stores 50 instances of several transfer
syntaxes, kept byte for byte; curl gets the refusals (400, 409 for a study mismatch, 413,
415); a body of a few hundred MiB leaves the daemon's resident memory nearly where it was.
"""

from __future__ import annotations

import io
import json
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread, dcmwrite

from tests.support.archive import ArchiveView
from tests.support.daemons import RunningDaemon
from tests.support.datasets import copies_of, dataset_bytes, split_part10, write_ct_files
from tests.support.processes import LOCALHOST, free_tcp_port

BOUNDARY = "e2e-stow-boundary"
RELATED = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


@dataclass
class WebNode:
    daemon: RunningDaemon
    base: str

    @property
    def archive(self) -> ArchiveView:
        return ArchiveView(self.daemon.directory / "var" / "archive")

    def post(self, path: str, body: Path, *arguments: str) -> tuple[int, bytes]:
        """curl POSTing the file ``body``: the status and the body of the answer."""
        done = subprocess.run(
            [
                *("curl", "-sS", "--max-time", "300", "-o", "-", "-w", "\n%{http_code}"),
                *("-H", "Expect:", "--data-binary", f"@{body}", *arguments, self.base + path),
            ],
            capture_output=True,
            timeout=330,
            check=True,
        )
        answer, _, status = done.stdout.rpartition(b"\n")
        return int(status), answer


def web_node(start_dicomd: Callable[..., RunningDaemon], workers: int) -> WebNode:
    port = free_tcp_port()
    daemon = start_dicomd(
        workers=workers,
        plugins=[{"plugin": "archive"}],
        web={"listen": f"tcp:{port}:interface={LOCALHOST}", "max_stow_length": 512 << 20},
    )
    return WebNode(daemon, f"http://{LOCALHOST}:{port}")


@pytest.fixture
def node(start_dicomd: Callable[..., RunningDaemon]) -> WebNode:
    return web_node(start_dicomd, workers=1)


@pytest.fixture(params=[1, 2], ids=["one process", "two workers"])
def nodes(request: pytest.FixtureRequest, start_dicomd: Callable[..., RunningDaemon]) -> WebNode:
    return web_node(start_dicomd, workers=request.param)


def multipart_file(path: Path, parts: Sequence[bytes]) -> Path:
    with path.open("wb") as out:
        for part in parts:
            out.write(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode())
            out.write(part + b"\r\n")
        out.write(f"--{BOUNDARY}--\r\n".encode())
    return path


def kept_data_sets(archive: ArchiveView) -> dict[str, bytes]:
    return {uid: dataset_bytes(archive.root / path) for uid, path in archive.indexed().items()}


def test_dicomweb_client_stores_fifty_instances_kept_byte_for_byte(
    nodes: WebNode, tmp_path: Path
) -> None:
    node = nodes
    files = write_ct_files(tmp_path / "ct", 30)
    for name in (
        "MR_small_bigendian.dcm",
        "image_dfl.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
        "MR_small_RLE.dcm",
    ):
        files += copies_of(name, tmp_path / "copies", 5)
    datasets = [dcmread(path) for path in files]
    sent = {}
    for dataset in datasets:  # what dicomweb-client sends: pydicom's dcmwrite of each
        encoded = io.BytesIO()
        dcmwrite(encoded, dataset)
        sent[dataset.SOPInstanceUID] = split_part10(encoded.getvalue())[1]
    client = DICOMwebClient(url=f"{node.base}/dicom-web")
    response = client.store_instances(datasets=datasets)
    assert "FailedSOPSequence" not in response
    referenced = response.ReferencedSOPSequence
    assert sorted(item.ReferencedSOPInstanceUID for item in referenced) == sorted(sent)
    first = referenced[0]
    stored = datasets[[d.SOPInstanceUID for d in datasets].index(first.ReferencedSOPInstanceUID)]
    # dicomweb-client sends a Host header without the port, which the URL follows
    assert first.RetrieveURL == (
        f"http://{LOCALHOST}/dicom-web/studies/{stored.StudyInstanceUID}"
        f"/series/{stored.SeriesInstanceUID}/instances/{stored.SOPInstanceUID}"
    )
    kept = kept_data_sets(node.archive)
    assert sorted(kept) == sorted(sent)
    different = [uid for uid, data_set in sent.items() if kept[uid] != data_set]
    assert different == []
    assert node.archive.partial_files() == []
    assert "Traceback" not in node.daemon.log_text()


def test_curl_gets_the_refusals(node: WebNode, tmp_path: Path) -> None:
    [ct] = write_ct_files(tmp_path / "ct", 1)
    instance = ct.read_bytes()
    study = dcmread(ct).StudyInstanceUID
    body = multipart_file(tmp_path / "one", [instance])
    other_study = "/dicom-web/studies/1.2.826.0.1.3680043.10.9.99"
    status, answer = node.post(other_study, body, "-H", f"Content-Type: {RELATED}")
    assert status == 409
    failed = json.loads(answer)["00081198"]["Value"]
    assert [item["00081197"]["Value"] for item in failed] == [[0xA901]]
    status, answer = node.post("/dicom-web/studies", body, "-H", "Content-Type: application/dicom")
    assert (status, answer.count(b"\n")) == (415, 1)
    cut = tmp_path / "cut"
    cut.write_bytes(body.read_bytes()[:-30])
    status, answer = node.post("/dicom-web/studies", cut, "-H", f"Content-Type: {RELATED}")
    assert (status, answer.count(b"\n")) == (400, 1)
    assert node.archive.indexed() == {}
    status, answer = node.post(
        f"/dicom-web/studies/{study}", body, "-H", f"Content-Type: {RELATED}"
    )
    assert status == 200
    assert json.loads(answer)["00081190"]["Value"] == [f"{node.base}/dicom-web/studies/{study}"]
    too_long = tmp_path / "too-long"
    with too_long.open("wb") as out:
        out.truncate((512 << 20) + 1)
    status, answer = node.post("/dicom-web/studies", too_long, "-H", f"Content-Type: {RELATED}")
    assert status == 413 and b"web.max_stow_length" in answer
    assert list(node.archive.indexed()) == [dcmread(ct).SOPInstanceUID]
    assert node.archive.partial_files() == []
    assert "Traceback" not in node.daemon.log_text()


def test_a_stow_of_hundreds_of_mib_keeps_the_daemons_memory_flat(
    node: WebNode, tmp_path: Path
) -> None:
    files = write_ct_files(tmp_path / "large", 24, rows=2560, columns=2048)  # 10 MiB each
    body = multipart_file(tmp_path / "body", [path.read_bytes() for path in files])
    assert body.stat().st_size > 240 << 20
    before = node.daemon.rss_kib()
    node.daemon.reset_peak_memory()
    status, answer = node.post("/dicom-web/studies", body, "-H", f"Content-Type: {RELATED}")
    assert status == 200, answer
    growth_mib = (node.daemon.peak_memory_mib() * 1024 - before) / 1024
    assert growth_mib < 48, f"resident memory grew {growth_mib:.0f} MiB for a 240 MiB body"
    assert len(node.archive.indexed()) == 24
    assert node.archive.partial_files() == []

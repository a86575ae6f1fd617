"""dcmtk's storescu sends the same files to dicomd and to dcmtk's storescp ``+B``.

storescp in bit-preserving mode writes the data set exactly as it came off
the wire, so it is the reference for what dicomd must keep: for every
instance, the bytes after the File Meta Information must be the same in both
copies (each writes its own meta, so the meta is not compared).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from tests.support.archive import archive_of, archive_plugin
from tests.support.datasets import dataset_bytes, write_ct_files
from tests.support.dcmtk import dcmtk_executable, run_dcmtk
from tests.support.processes import LOCALHOST, STARTUP_DEADLINE, free_tcp_port, is_listening

from .test_store_pydicom_files import bundled_part10_files, dcmdump_reads

UNCOMPRESSED = (ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian)
STORESCP_PREFERENCE = [
    str(ExplicitVRLittleEndian),
    str(ExplicitVRBigEndian),
    str(ImplicitVRLittleEndian),
]
"""storescp's choice among the uncompressed syntaxes.  storescu converts a data
set whose syntax was not accepted as is, so dicomd is given the same
preference: both receivers then negotiate alike and are sent the same bytes."""


@dataclass
class StoreSCP:
    """dcmtk's storescp, bit-preserving, writing into ``folder``."""

    process: subprocess.Popen[bytes]
    port: int
    folder: Path

    def received(self) -> dict[str, Path]:
        """SOP Instance UID -> file, for every file storescp wrote."""
        return {
            dcmread(path, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID: path
            for path in self.folder.iterdir()
        }

    def forget(self) -> None:
        for path in self.folder.iterdir():
            path.unlink()


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[StoreSCP]:
    executable = dcmtk_executable("storescp")
    if executable is None:
        pytest.fail("dcmtk is not installed; run scripts/test")
    folder = tmp_path / "storescp"
    folder.mkdir()
    port = free_tcp_port()
    process = subprocess.Popen(
        [executable, "+B", "-od", str(folder), str(port)],
        env={**os.environ, "TCP_NODELAY": "1"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + STARTUP_DEADLINE
        while not is_listening(port):
            assert process.poll() is None, f"storescp exited with {process.returncode}"
            assert time.monotonic() < deadline, "storescp did not listen"
            time.sleep(0.05)
        yield StoreSCP(process, port, folder)
    finally:
        process.terminate()
        process.wait(10)


def storescu(port: int, called_ae_title: str, files: list[Path]) -> None:
    """Send ``files`` on one association; every store must succeed."""
    sent = run_dcmtk(
        "storescu", "-aec", called_ae_title, "-R", LOCALHOST, str(port), *map(str, files)
    )
    assert sent.returncode == 0, sent.stdout + sent.stderr


def rounds_of_unique_instances(files: list[Path]) -> list[list[Path]]:
    """Split ``files`` so that no SOP Instance UID appears twice in a round.

    Several bundled files share a UID (one image in several encodings); a
    receiver keeps one file per UID, so each round is compared on its own.
    """
    rounds: list[list[Path]] = []
    seen_in: list[set[str]] = []
    for path in files:
        uid = dcmread(path, stop_before_pixels=True).SOPInstanceUID
        for number, uids in enumerate(seen_in):
            if uid not in uids:
                uids.add(uid)
                rounds[number].append(path)
                break
        else:
            seen_in.append({uid})
            rounds.append([path])
    return rounds


def files_to_send(folder: Path) -> list[Path]:
    """The uncompressed bundled files dcmtk can read and send, and a few generated CT files.

    storescu takes the command's UIDs from the data set, so it can only send
    a data set that has them, and only one it can read to the end
    (``MR_truncated.dcm`` and ``rtplan_truncated.dcm`` are cut short).
    """
    bundled = [
        file.path
        for file in bundled_part10_files()
        if file.transfer_syntax in UNCOMPRESSED
        and file.dataset_sop_instance_uid
        and file.dataset_sop_class_uid
        and dcmdump_reads(file.path)
    ]
    generated = write_ct_files(folder, 3) + write_ct_files(
        folder, 2, 32, 48, ImplicitVRLittleEndian
    )
    return bundled + generated


def test_storescu_files_are_kept_as_storescp_bit_preserving_keeps_them(
    start_dicomd, storescp, tmp_path
):
    dicomd = start_dicomd(
        plugins=[archive_plugin(duplicates="overwrite")], transfer_syntaxes=STORESCP_PREFERENCE
    )
    archive = archive_of(dicomd)
    files = files_to_send(tmp_path / "generated")
    assert len(files) >= 25

    compared = 0
    for round_files in rounds_of_unique_instances(files):
        storescu(dicomd.port, dicomd.ae_title, round_files)
        storescu(storescp.port, "STORESCP", round_files)

        reference = storescp.received()
        assert len(reference) == len(round_files)
        for uid, reference_file in reference.items():
            kept = archive.file_of(uid)
            assert dataset_bytes(kept) == dataset_bytes(reference_file), uid
            assert (
                dcmread(kept, stop_before_pixels=True).file_meta.TransferSyntaxUID
                == dcmread(reference_file, stop_before_pixels=True).file_meta.TransferSyntaxUID
            )
            compared += 1
        storescp.forget()

    assert compared == len(files)
    archive.assert_consistent()

"""What the archive refuses, and what it does with a second copy, as pynetdicom sees it.

pynetdicom streams a file's data set as it is on disk and takes the
command's UIDs from the file's meta, so a file written with a meta that
contradicts its data set, or with no data set worth the name, is how a real
peer sends an instance that does not match its command.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest
from pydicom import dcmwrite
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from tests.support.archive import ArchiveView, archive_of, archive_plugin
from tests.support.daemons import RunningDaemon
from tests.support.datasets import ct_dataset, dataset_bytes, write_part10
from tests.support.dcmtk import run_echoscu
from tests.support.pynetdicom_peers import pynetdicom_store


def assert_nothing_kept(daemon: RunningDaemon) -> None:
    archive = archive_of(daemon)
    assert archive.files() == set()
    assert archive.indexed() == {}
    assert archive.incoming() == []


def ct_data_set(tmp_path: Path) -> tuple[str, bytes]:
    """The SOP Instance UID and encoded data set of a new CT instance."""
    dataset = ct_dataset(generate_uid(), generate_uid(), 1)
    path = tmp_path / "ct.dcm"
    dcmwrite(path, dataset, enforce_file_format=True)
    return dataset.SOPInstanceUID, dataset_bytes(path)


def test_an_instance_uid_that_differs_from_the_command_is_refused_with_0117(start_dicomd, tmp_path):
    daemon = start_dicomd(plugins=[archive_plugin()])
    _, data_set = ct_data_set(tmp_path)
    announced = write_part10(
        tmp_path / "other-uid.dcm", CTImageStorage, generate_uid(), ExplicitVRLittleEndian, data_set
    )

    status = pynetdicom_store(daemon, announced, CTImageStorage, ExplicitVRLittleEndian)

    assert status.Status == 0x0117
    assert "SOP Instance UID" in status.ErrorComment
    assert_nothing_kept(daemon)


def test_a_sop_class_that_differs_from_the_command_is_refused_with_a900(start_dicomd, tmp_path):
    daemon = start_dicomd(plugins=[archive_plugin()])
    uid, data_set = ct_data_set(tmp_path)
    announced = write_part10(
        tmp_path / "as-mr.dcm", MRImageStorage, uid, ExplicitVRLittleEndian, data_set
    )

    status = pynetdicom_store(daemon, announced, MRImageStorage, ExplicitVRLittleEndian)

    assert status.Status == 0xA900
    assert_nothing_kept(daemon)


UNPARSEABLE = {
    "random bytes": random.Random(8).randbytes(4096),
    "an element longer than the data set": struct.pack("<HH2sH", 0x0008, 0x0016, b"UI", 26)
    + CTImageStorage.encode()
    + struct.pack("<HH2sH", 0x0008, 0x0018, b"UI", 0xFFF0)
    + b"1.2.3",
    "an undefined-length sequence that never ends": struct.pack(
        "<HH2sHL", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF
    )
    + struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF),
}


@pytest.mark.parametrize("garbage", UNPARSEABLE.values(), ids=UNPARSEABLE.keys())
def test_a_data_set_that_cannot_be_parsed_is_refused_with_cxxx(start_dicomd, tmp_path, garbage):
    daemon = start_dicomd(plugins=[archive_plugin()])
    announced = write_part10(
        tmp_path / "garbage.dcm", CTImageStorage, generate_uid(), ExplicitVRLittleEndian, garbage
    )

    status = pynetdicom_store(daemon, announced, CTImageStorage, ExplicitVRLittleEndian)

    assert 0xC000 <= status.Status <= 0xCFFF, hex(status.Status)
    assert_nothing_kept(daemon)
    assert run_echoscu(daemon).returncode == 0


def send_two_copies(daemon: RunningDaemon, tmp_path: Path) -> tuple[bytes, bytes, int, str]:
    """Store one instance twice, the second copy with another patient name.

    Returns both copies' data set bytes and the status and comment of the second store.
    """
    first = ct_dataset(generate_uid(), generate_uid(), 1)
    first.PatientName = "First^Copy"
    first_file = tmp_path / "first.dcm"
    dcmwrite(first_file, first, enforce_file_format=True)
    second = ct_dataset(first.StudyInstanceUID, first.SeriesInstanceUID, 1)
    second.SOPInstanceUID = second.file_meta.MediaStorageSOPInstanceUID = first.SOPInstanceUID
    second.PatientName = "Second^Copy"
    second_file = tmp_path / "second.dcm"
    dcmwrite(second_file, second, enforce_file_format=True)

    status = pynetdicom_store(daemon, first_file, CTImageStorage, ExplicitVRLittleEndian)
    assert status.Status == 0x0000
    status = pynetdicom_store(daemon, second_file, CTImageStorage, ExplicitVRLittleEndian)
    comment = str(status.get("ErrorComment", ""))
    return dataset_bytes(first_file), dataset_bytes(second_file), status.Status, comment


def kept_copy(archive: ArchiveView) -> bytes:
    (path,) = archive.indexed().values()
    return dataset_bytes(archive.root / path)


def test_keep_first_warns_b000_and_keeps_the_first_copy(start_dicomd, tmp_path):
    daemon = start_dicomd(plugins=[archive_plugin(duplicates="keep-first")])

    first, _, status, comment = send_two_copies(daemon, tmp_path)

    assert status == 0xB000
    assert "duplicate" in comment.lower()
    archive = archive_of(daemon)
    assert kept_copy(archive) == first
    archive.assert_consistent()


def test_overwrite_answers_success_and_keeps_the_second_copy(start_dicomd, tmp_path):
    daemon = start_dicomd(plugins=[archive_plugin(duplicates="overwrite")])

    _, second, status, _ = send_two_copies(daemon, tmp_path)

    assert status == 0x0000
    archive = archive_of(daemon)
    assert kept_copy(archive) == second
    archive.assert_consistent()


def test_reject_answers_0111_and_keeps_the_first_copy(start_dicomd, tmp_path):
    daemon = start_dicomd(plugins=[archive_plugin(duplicates="reject")])

    first, _, status, comment = send_two_copies(daemon, tmp_path)

    assert status == 0x0111
    assert "duplicate" in comment.lower()
    archive = archive_of(daemon)
    assert kept_copy(archive) == first
    archive.assert_consistent()

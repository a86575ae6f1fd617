"""Every Part 10 file pydicom ships, sent by pynetdicom and archived byte for byte.

pydicom's bundled test files come from many vendors' tools, in every
transfer syntax pydicom knows, with the oddities real files have.  Each one is
streamed unchanged (pynetdicom's chunked sending) on an association proposing
exactly its SOP class and transfer syntax, then found in the archive through
the index and compared with the original after the File Meta Information,
which is the only part the archive writes itself.

The files come from pydicom's own ``test_files`` folder:
``get_testdata_files`` would also download pydicom-data's files, and this
suite does not depend on the network.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.data.data_manager import DATA_ROOT
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom.dsutils import encode
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

from tests.support.archive import ArchiveView, archive_of, archive_plugin
from tests.support.daemons import RunningDaemon
from tests.support.datasets import ct_dataset, dataset_bytes, write_part10
from tests.support.dcmtk import run_dcmtk
from tests.support.pynetdicom_peers import pynetdicom_store

BUNDLED_FOLDER = Path(DATA_ROOT) / "test_files"
SUCCESS = 0x0000
INVALID_OBJECT_INSTANCE = 0x0117
DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900


@dataclass(frozen=True)
class BundledFile:
    """A valid Part 10 file: its meta names what the command will carry."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    dataset_sop_class_uid: str | None
    dataset_sop_instance_uid: str | None

    @property
    def name(self) -> str:
        return self.path.name


def read_bundled(path: Path) -> BundledFile | None:
    """The file as a `BundledFile`, or None if it is not valid Part 10 (no meta, or unreadable)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = dcmread(path)
    except (InvalidDicomError, OSError, ValueError, EOFError):
        return None
    meta = dataset.file_meta
    needed = ("TransferSyntaxUID", "MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID")
    if not all(meta.get(keyword) for keyword in needed):
        return None
    return BundledFile(
        path,
        str(meta.MediaStorageSOPClassUID),
        str(meta.MediaStorageSOPInstanceUID),
        str(meta.TransferSyntaxUID),
        str(dataset.SOPClassUID) if dataset.get("SOPClassUID") else None,
        str(dataset.SOPInstanceUID) if dataset.get("SOPInstanceUID") else None,
    )


@cache
def bundled_part10_files() -> tuple[BundledFile, ...]:
    candidates = sorted(path for path in BUNDLED_FOLDER.iterdir() if path.is_file())
    return tuple(filter(None, map(read_bundled, candidates)))


def is_standard_storage(sop_class_uid: str) -> bool:
    return uid_to_service_class(sop_class_uid) is StorageServiceClass


def dcmdump_reads(path: Path) -> bool:
    return run_dcmtk("dcmdump", "-q", str(path)).returncode == 0


NOT_WHOLE = {
    "MR_truncated.dcm": "its pixel data is cut short",
    "rtplan_truncated.dcm": "its last value is cut short",
    "SC_rgb_jpeg.dcm": "its data set is implicit VR while its syntax says explicit",
}
"""Files whose data sets are not whole as their transfer syntax reads them: a C-STORE of
them must not be acknowledged (C000, 'not whole')."""


def expected_refusal(bundled: BundledFile) -> str | None:
    """Why the archive must refuse this file as sent, or None when it must keep it.

    pynetdicom puts the meta's UIDs in the command.  A data set that
    contradicts them is refused as the standard says (0117 or A900), and one
    without SOP UIDs has no place in the patient/study/series/instance tree.
    A data set that is not whole is refused before any of that.
    """
    if bundled.name in NOT_WHOLE:
        return NOT_WHOLE[bundled.name]
    if bundled.dataset_sop_class_uid is None or bundled.dataset_sop_instance_uid is None:
        return "no SOP Class or SOP Instance UID in the data set"
    if bundled.dataset_sop_class_uid != bundled.sop_class_uid:
        return "SOP Class UID of the data set differs from the meta's"
    if bundled.dataset_sop_instance_uid != bundled.sop_instance_uid:
        return "SOP Instance UID of the data set differs from the meta's"
    return None


def is_expected_refusal_status(bundled: BundledFile, code: int) -> bool:
    if bundled.name in NOT_WHOLE:
        return code == 0xC000
    if bundled.dataset_sop_class_uid is None or bundled.dataset_sop_instance_uid is None:
        return 0xA900 <= code <= 0xA9FF or 0xC000 <= code <= 0xCFFF
    if bundled.dataset_sop_class_uid != bundled.sop_class_uid:
        return code == DATA_SET_DOES_NOT_MATCH_SOP_CLASS
    return code == INVALID_OBJECT_INSTANCE


def with_meta_of_its_dataset(bundled: BundledFile, folder: Path) -> BundledFile:
    """A copy whose meta names the data set's own UIDs; the data set bytes are untouched."""
    assert bundled.dataset_sop_class_uid and bundled.dataset_sop_instance_uid
    copy = write_part10(
        folder / bundled.name,
        bundled.dataset_sop_class_uid,
        bundled.dataset_sop_instance_uid,
        bundled.transfer_syntax,
        dataset_bytes(bundled.path),
    )
    corrected = read_bundled(copy)
    assert corrected is not None
    return corrected


def problem_with_kept_copy(daemon: RunningDaemon, bundled: BundledFile) -> str | None:
    """Send a file the archive must keep; what is wrong with the result, if anything."""
    status = pynetdicom_store(daemon, bundled.path, bundled.sop_class_uid, bundled.transfer_syntax)
    if status.Status != SUCCESS:
        return f"status 0x{status.Status:04X} ({status.get('ErrorComment', '')})"
    archive = archive_of(daemon)
    relative = archive.indexed().get(bundled.sop_instance_uid)
    if relative is None:
        return "answered success but not in the index"
    archived = archive.root / relative
    if not archived.is_file():
        return f"indexed at {relative}, but there is no such file"
    if dataset_bytes(archived) != dataset_bytes(bundled.path):
        return f"the data set at {relative} differs from the one sent"
    kept_meta = dcmread(archived, stop_before_pixels=True).file_meta
    named = (
        kept_meta.MediaStorageSOPClassUID,
        kept_meta.MediaStorageSOPInstanceUID,
        kept_meta.TransferSyntaxUID,
    )
    if named != (bundled.sop_class_uid, bundled.sop_instance_uid, bundled.transfer_syntax):
        return f"the archived meta names {named}"
    if dcmdump_reads(bundled.path) and not dcmdump_reads(archived):
        return "dcmdump reads the original but not the archived copy"
    return None


def problem_with_refusal(daemon: RunningDaemon, bundled: BundledFile) -> str | None:
    """Send a file the archive must refuse; what is wrong with the result, if anything."""
    archive = archive_of(daemon)
    files_before, index_before = archive.files(), archive.indexed()
    status = pynetdicom_store(daemon, bundled.path, bundled.sop_class_uid, bundled.transfer_syntax)
    if not is_expected_refusal_status(bundled, status.Status):
        return (
            f"{expected_refusal(bundled)}, but the status is 0x{status.Status:04X} "
            f"({status.get('ErrorComment', '')})"
        )
    if archive.files() != files_before or archive.indexed() != index_before:
        return "refused, yet the archive changed"
    if archive.incoming():
        return f"refused, yet {archive.incoming()} is left in .incoming"
    return None


def test_pydicom_ships_enough_valid_part10_files_to_mean_something():
    files = bundled_part10_files()
    assert len(files) >= 60
    assert len({bundled.transfer_syntax for bundled in files}) >= 10


def test_every_bundled_part10_file_is_archived_byte_for_byte(start_dicomd, tmp_path):
    # One archive for all: files that share a SOP Instance UID each replace
    # the last, and each is checked right after it is stored.
    daemons: dict[bool, RunningDaemon] = {}

    def daemon_for(sop_class_uid: str) -> RunningDaemon:
        standard = is_standard_storage(sop_class_uid)
        if standard not in daemons:
            daemons[standard] = start_dicomd(
                plugins=[archive_plugin(duplicates="overwrite")],
                store={"accept_unknown_sop_classes": not standard},
            )
        return daemons[standard]

    corrected = tmp_path / "corrected"
    corrected.mkdir()
    problems: dict[str, str] = {}
    refused: list[str] = []
    for bundled in bundled_part10_files():
        daemon = daemon_for(bundled.sop_class_uid)
        if expected_refusal(bundled) is None:
            problem = problem_with_kept_copy(daemon, bundled)
        else:
            refused.append(bundled.name)
            problem = problem_with_refusal(daemon, bundled)
            whole = bundled.name not in NOT_WHOLE
            if problem is None and whole and bundled.dataset_sop_instance_uid is not None:
                problem = problem_with_kept_copy(
                    daemon, with_meta_of_its_dataset(bundled, corrected)
                )
        if problem is not None:
            problems[bundled.name] = problem

    assert not problems, "\n".join(f"{name}: {problem}" for name, problem in problems.items())
    # The refusals are the standard's: data sets that contradict their own meta, and
    # data sets that are not whole.
    assert sorted(refused) == [
        "MR_truncated.dcm",
        "SC_rgb_jpeg.dcm",
        "UN_sequence.dcm",
        "badVR.dcm",
        "no_meta_group_length.dcm",
        "priv_SQ.dcm",
        "rtdose.dcm",
        "rtdose_1frame.dcm",
        "rtdose_expb.dcm",
        "rtdose_expb_1frame.dcm",
        "rtplan.dcm",
        "rtplan_truncated.dcm",
    ]
    for daemon in daemons.values():
        archive_of(daemon).assert_consistent()


def archived_dataset_bytes(archive: ArchiveView, dataset: Dataset) -> bytes:
    return dataset_bytes(archive.file_of(dataset.SOPInstanceUID))


def test_a_dataset_sent_by_pynetdicom_lands_in_the_archive(start_dicomd):
    """``send_c_store(Dataset)``: pynetdicom encodes the data set in the accepted syntax."""
    daemon = start_dicomd(plugins=[archive_plugin()])
    archive = archive_of(daemon)
    study_uid, series_uid = generate_uid(), generate_uid()
    syntaxes = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian)
    for number, syntax in enumerate(syntaxes, start=1):
        dataset = ct_dataset(study_uid, series_uid, number)
        dataset.file_meta.TransferSyntaxUID = syntax

        status = pynetdicom_store(daemon, dataset, CTImageStorage, syntax)

        assert status.Status == SUCCESS
        encoded = encode(dataset, syntax.is_implicit_VR, syntax.is_little_endian)
        assert archived_dataset_bytes(archive, dataset) == encoded
        kept = dcmread(archive.file_of(dataset.SOPInstanceUID))
        assert kept.file_meta.TransferSyntaxUID == syntax
        assert kept.PatientName == "Store^Test"
        assert kept.PixelData == dataset.PixelData
    assert len(archive.indexed()) == len(syntaxes)
    archive.assert_consistent()

"""Instances to send and Part 10 bytes to compare: CT series, copies of pydicom's files."""

from __future__ import annotations

import random
from pathlib import Path

from pydicom import Dataset, dcmread, dcmwrite
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

_LONG_LENGTH_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)


def split_part10(data: bytes) -> tuple[bytes, bytes]:
    """A Part 10 file's File Meta Information (group 0002) and its data set, as bytes.

    The meta is walked element by element (explicit VR little endian,
    PS3.10 7.1) rather than trusted to its group length, because some files
    written by others have none; where a group length is present it must agree.
    """
    if data[128:132] != b"DICM":
        raise AssertionError("not a Part 10 file: no DICM prefix after the preamble")
    offset = 132
    while offset + 8 <= len(data) and data[offset : offset + 2] == b"\x02\x00":
        vr = data[offset + 4 : offset + 6]
        if vr in _LONG_LENGTH_VRS:
            offset += 12 + int.from_bytes(data[offset + 8 : offset + 12], "little")
        else:
            offset += 8 + int.from_bytes(data[offset + 6 : offset + 8], "little")
    meta = data[132:offset]
    if meta[:6] == b"\x02\x00\x00\x00UL":
        group_length = int.from_bytes(meta[8:12], "little")
        assert group_length == len(meta) - 12, "the meta group length disagrees with the meta"
    return meta, data[offset:]


def dataset_bytes(path: Path) -> bytes:
    """The data set of a Part 10 file, exactly as stored after its File Meta Information."""
    return split_part10(path.read_bytes())[1]


def write_part10(
    path: Path, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, data_set: bytes
) -> Path:
    """A Part 10 file whose meta says what the test wants, before any data set bytes at all."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = transfer_syntax
    with path.open("wb") as file:
        file.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(file, meta, enforce_standard=True)
        file.write(data_set)
    return path


def ct_dataset(
    study_uid: str,
    series_uid: str,
    number: int,
    rows: int = 64,
    columns: int = 64,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> Dataset:
    """A small CT instance with random 16-bit pixels, an odd-length text and a sequence."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.PatientName, ds.PatientID = "Store^Test", "STORE1"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 1, number
    ds.StudyDescription = "Odd"  # odd length: padded on the wire, kept as padded
    ds.ReferencedImageSequence = [Dataset()]
    ds.ReferencedImageSequence[0].ReferencedSOPClassUID = CTImageStorage
    ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = random.Random(number).randbytes(rows * columns * 2)
    return ds


def write_ct_files(
    folder: Path,
    count: int,
    rows: int = 64,
    columns: int = 64,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> list[Path]:
    """``count`` CT instances of one new series, as Part 10 files in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid = generate_uid(), generate_uid()
    paths = []
    for number in range(1, count + 1):
        dataset = ct_dataset(study_uid, series_uid, number, rows, columns, transfer_syntax)
        path = folder / f"{dataset.SOPInstanceUID}.dcm"
        dcmwrite(path, dataset, enforce_file_format=True)
        paths.append(path)
    return paths


def copies_of(name: str, directory: Path, count: int) -> list[Path]:
    """``count`` copies of a pydicom test file, each a distinct instance (new SOP instance UID)."""
    directory.mkdir(parents=True, exist_ok=True)
    source = dcmread(get_testdata_file(name))
    paths = []
    for number in range(count):
        dataset: Dataset = source.copy()
        uid = generate_uid()
        dataset.SOPInstanceUID = uid
        dataset.file_meta.MediaStorageSOPInstanceUID = uid
        path = directory / f"{Path(name).stem}-{number:03d}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths

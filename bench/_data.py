"""Data synthesis: sets of CT instances with a scanner's header, made once and cached.

Unlike the tests' ``tests.support.datasets.ct_dataset`` (random UIDs, a
minimal header), every UID and pixel here follows from the set's parameters,
so a cached set is the same set on every run.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from _report import progress, since

EXPLICIT_VR_LITTLE_ENDIAN: Final = "1.2.840.10008.1.2.1"
CT_IMAGE_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.2"


@dataclass(frozen=True, slots=True)
class CTSet:
    """A set of uncompressed CT instances (explicit VR little endian), split into ``parts`` folders.

    The split lets ``n`` concurrent senders each take whole folders; one
    sender takes the parent folder and recurses.
    """

    name: str
    count: int
    rows: int
    columns: int
    parts: int = 8
    instances_per_series: int = 50
    series_per_study: int = 2
    studies_per_patient: int = 2

    @property
    def key(self) -> str:
        """Names the cache folder: any parameter that changes the files changes the key."""
        return (
            f"ct-v{_GENERATOR_VERSION}-{self.count}x{self.rows}x{self.columns}-p{self.parts}"
            f"-s{self.instances_per_series}.{self.series_per_study}.{self.studies_per_patient}"
        )


_GENERATOR_VERSION: Final = 1
"""Bump when ``_ct_instance`` changes, so that cached sets are made again."""

_TWELVE_BITS: Final = bytes(value & 0x0F for value in range(256))
"""Masks the high byte of a little-endian 16-bit sample to keep it within BitsStored = 12."""


def cached_ct_set(spec: CTSet) -> Path:
    """The folder of ``spec``'s files, made once and kept under the system temp folder.

    The set is written to a scratch folder and renamed into place, so an
    interrupted run never leaves a half-made set that a later run would trust.
    """
    cache = Path(tempfile.gettempdir()) / "dicomd-bench" / spec.key
    if cache.is_dir():
        if sum(1 for _ in cache.rglob("*.dcm")) == spec.count:
            return cache
        shutil.rmtree(cache)  # something (a temp cleaner) took files away: make it again
    cache.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{spec.key}-", dir=cache.parent))
    try:
        for part in range(spec.parts):
            (scratch / f"part-{part}").mkdir()
        for index in range(spec.count):
            part = index * spec.parts // spec.count
            _ct_instance(spec, index).save_as(
                scratch / f"part-{part}" / f"CT{index:06d}.dcm", enforce_file_format=True
            )
        scratch.rename(cache)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return cache


def part_folders(root: Path) -> list[Path]:
    """The ``part-N`` folders of a cached set, in order."""
    return sorted(root.glob("part-*"), key=lambda path: int(path.name.split("-")[1]))


def set_bytes(root: Path) -> int:
    """Total size of the Part 10 files of a set: what the senders put on the wire, near enough."""
    return sum(path.stat().st_size for path in root.rglob("*.dcm"))


def _ct_instance(spec: CTSet, index: int):  # -> pydicom.FileDataset
    """One CT image with the header a scanner writes: patient, study, series, equipment, plane."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import generate_uid

    series, slice_number = divmod(index, spec.instances_per_series)
    study = series // spec.series_per_study
    patient = study // spec.studies_per_patient

    def uid(*parts: object) -> str:
        return generate_uid(entropy_srcs=[spec.key, *map(str, parts)])

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = uid("instance", index)
    meta.TransferSyntaxUID = EXPLICIT_VR_LITTLE_ENDIAN

    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.InstanceCreationDate = ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240315"
    ds.AcquisitionDate = "20240315"
    ds.InstanceCreationTime = ds.StudyTime = ds.SeriesTime = "101500"
    ds.ContentTime = ds.AcquisitionTime = f"1016{slice_number % 60:02d}"
    ds.AccessionNumber = f"ACC{study:06d}"
    ds.Modality = "CT"
    ds.Manufacturer = "Benchmark Medical Systems"
    ds.InstitutionName = "General Hospital"
    ds.StationName = "CT01"
    ds.ReferringPhysicianName = "Referrer^Robert"
    ds.StudyDescription = "CT CHEST ABDOMEN PELVIS W CONTRAST"
    ds.SeriesDescription = f"AXIAL {1 + series % 2}.0mm"
    ds.ManufacturerModelName = "Benchmark CT 128"
    ds.PatientName = f"Bench^Patient{patient:04d}"
    ds.PatientID = f"PID{patient:06d}"
    ds.PatientBirthDate = f"19{50 + patient % 50:02d}0101"
    ds.PatientSex = "FO"[patient % 2]
    ds.PatientAge = f"{74 - patient % 50:03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = "1.0"
    ds.KVP = "120"
    ds.SoftwareVersions = "1.0"
    ds.ProtocolName = "CAP_CONTRAST"
    ds.ConvolutionKernel = "STANDARD"
    ds.PatientPosition = "FFS"
    ds.XRayTubeCurrent = "250"
    ds.ExposureTime = "500"
    ds.StudyInstanceUID = uid("study", study)
    ds.SeriesInstanceUID = uid("series", series)
    ds.StudyID = str(study + 1)
    ds.SeriesNumber = series % spec.series_per_study + 1
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = slice_number + 1
    ds.ImagePositionPatient = ["-250.0", "-250.0", f"{-slice_number:.1f}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = uid("frame", study)
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = f"{-slice_number:.1f}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = spec.rows
    ds.Columns = spec.columns
    ds.PixelSpacing = [f"{500 / spec.rows:.4f}", f"{500 / spec.columns:.4f}"]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    samples = bytearray(
        random.Random(f"{spec.key}/{index}").randbytes(2 * spec.rows * spec.columns)
    )
    samples[1::2] = samples[1::2].translate(_TWELVE_BITS)
    ds.PixelData = bytes(samples)
    ds["PixelData"].VR = "OW"
    return ds


def count_files(root: Path, pattern: str = "*") -> int:
    """Files matching ``pattern`` under ``root``, leaving out hidden folders (work areas)."""
    return sum(
        1
        for path in root.rglob(pattern)
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts)
    )


def ct_sets(sets: Sequence[CTSet]) -> Iterator[tuple[CTSet, Path, float]]:
    """Each set with its folder (made if need be) and its size in MB, saying so on stderr."""
    for data in sets:
        started = time.perf_counter()
        root = cached_ct_set(data)
        progress(f"set {data.name}: {data.count} files in {root} ({since(started)})")
        yield data, root, set_bytes(root) / 1e6


def split_batches(root: Path, concurrency: int) -> list[list[Path]]:
    """The folders each association gets: all of them, or every ``concurrency``-th part folder."""
    if concurrency == 1:
        return [[root]]
    parts = part_folders(root)
    return [parts[index::concurrency] for index in range(concurrency)]

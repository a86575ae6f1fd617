"""The DICOMweb benchmark's instances: many small studies to search, a few large series to fetch.

The CT instances are `_data`'s (a scanner's header, UIDs and pixels that
follow from the set's parameters), with two changes that searches need: every
study gets its own date (one per day from `FIRST_STUDY_DATE`), so that a date
range selects a few studies, and the patients' family names are the set's
prefix and a number (``Query0042^Bench``), so that the searches of one set
never match another's studies (Orthanc's DICOMweb plugin finds no name by a
prefix that holds a ``^``, so the prefix searched stays within the family
name).  The files are kept in memory as bytes, ready to be sent in STOW-RS
batches.
"""

from __future__ import annotations

import datetime
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from _data import CTSet, _ct_instance

FIRST_STUDY_DATE: Final = datetime.date(2020, 1, 1)
_GENERATOR_VERSION: Final = 2
"""Bump when `_web_instance` changes, so that cached sets are made again."""


@dataclass(frozen=True, slots=True)
class WebSet:
    """A set of CT instances whose patients are ``<patient_prefix>NNNN^Bench``, one study each."""

    spec: CTSet
    patient_prefix: str

    @property
    def key(self) -> str:
        return f"web-v{_GENERATOR_VERSION}-{self.patient_prefix}-{self.spec.key}"

    @property
    def studies(self) -> int:
        return -(-self.spec.count // (self.spec.instances_per_series * self.spec.series_per_study))


def query_set(instances: int) -> WebSet:
    """``instances`` small CT images (64x64, about 10 KB) in studies of one series of 10."""
    return _studies_of_one_series("Query", instances, size=64, per_series=10)


def retrieve_set(series: int, per_series: int) -> WebSet:
    """``series`` series of ``per_series`` 512x512 16-bit CT images (526 KB each)."""
    return _studies_of_one_series("Retrieve", series * per_series, size=512, per_series=per_series)


def _studies_of_one_series(prefix: str, count: int, *, size: int, per_series: int) -> WebSet:
    spec = CTSet(
        name=prefix.lower(),
        count=count,
        rows=size,
        columns=size,
        parts=1,
        instances_per_series=per_series,
        series_per_study=1,
        studies_per_patient=1,
    )
    return WebSet(spec, prefix)


def cached_web_set(data: WebSet) -> Path:
    """The folder of ``data``'s files (``NNNNNN.dcm`` in order), made once under the temp folder."""
    cache = Path(tempfile.gettempdir()) / "dicomd-bench" / data.key
    if cache.is_dir() and sum(1 for _ in cache.glob("*.dcm")) == data.spec.count:
        return cache
    shutil.rmtree(cache, ignore_errors=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{data.key}-", dir=cache.parent))
    try:
        for index in range(data.spec.count):
            _web_instance(data, index).save_as(
                scratch / f"{index:06d}.dcm", enforce_file_format=True
            )
        scratch.rename(cache)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return cache


def _web_instance(data: WebSet, index: int):  # -> pydicom.FileDataset
    ds = _ct_instance(data.spec, index)
    spec = data.spec
    study = index // (spec.instances_per_series * spec.series_per_study)
    patient = study // spec.studies_per_patient
    ds.PatientName = f"{data.patient_prefix}{patient:04d}^Bench"
    ds.PatientID = f"{data.patient_prefix[:4].upper()}{patient:06d}"
    ds.StudyDate = ds.SeriesDate = study_date(study)
    return ds


def study_date(study: int) -> str:
    """The StudyDate (DA) of the ``study``-th study of a set."""
    return (FIRST_STUDY_DATE + datetime.timedelta(days=study)).strftime("%Y%m%d")


def read_files(folder: Path) -> list[bytes]:
    """The Part 10 files of a cached set, in order, as bytes."""
    return [path.read_bytes() for path in sorted(folder.glob("*.dcm"))]


def batches(files: Sequence[bytes], size: int) -> list[Sequence[bytes]]:
    """``files`` cut into consecutive batches of ``size`` (the last may be shorter)."""
    return [files[start : start + size] for start in range(0, len(files), size)]

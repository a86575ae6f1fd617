"""The C-FIND benchmark's data: a set of small CT studies, its queries, and two ways to hold it.

Every UID, name and date follows from the set's parameters (`FindSet`), so
the set is the same on every run and a cached copy can be trusted.  The set
exists in two forms:

- Part 10 files, one folder per study (`cached_find_files`), for servers
  filled through their store path by ``storescu``;
- a dicomd archive made without the network (`bulk_archive`): the index
  written by the archive's own code (``record_from_dataset``, ``adding``,
  ``ArchiveIndex.write`` in batches, as group commit does), and a file at
  every row's path so that the daemon's start-up reconciliation keeps every
  row.  Those files are hard links to one real Part 10 file per study: they
  serve C-FIND only (a C-GET or C-MOVE would send the study's first instance
  under every other instance's name).

The queries (`query_kinds`) match among the first studies, so that a server
loaded with only those (pynetdicom's qrscp) holds the same matches.
"""

from __future__ import annotations

import collections
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from _data import CT_IMAGE_STORAGE, EXPLICIT_VR_LITTLE_ENDIAN

_GENERATOR_VERSION: Final = 2
"""Bump when ``instance_dataset`` changes, so that cached sets and archives are made again."""
FIRST_DAY: Final = date(2015, 1, 1)
FAMILY_NAMES: Final = (
    *("SMITH", "JONES", "BROWN", "TAYLOR", "WILSON", "DAVIES", "EVANS", "THOMAS", "JOHNSON"),
    *("ROBERTS", "WALKER", "WRIGHT", "ROBINSON", "THOMPSON", "WHITE", "HUGHES", "EDWARDS"),
    *("GREEN", "HALL", "WOOD", "HARRIS", "LEWIS", "MARTIN", "JACKSON", "CLARKE", "TURNER"),
    *("HILL", "SCOTT", "COOPER", "MORRIS", "WARD", "MOORE", "KING", "WATSON", "BAKER"),
    *("HARRISON", "MORGAN", "PATEL", "YOUNG", "ALLEN", "MITCHELL", "DOBSON", "DOHERTY", "DOWD"),
)
"""Family names of all but the ``DOE`` patients: none starts with ``DOE``, a few with ``DO``."""
GIVEN_NAMES: Final = (
    *("JOHN", "JANE", "MARY", "DAVID", "SARAH", "PAUL", "ANNA", "PETER", "EMMA", "MARK"),
    *("LUCY", "JAMES", "RUTH", "SIMON", "CLAIRE", "ALAN", "HELEN", "TOM", "KATE", "NEIL"),
)
DOE_PATIENTS: Final = range(15, 25)
"""The patients named ``DOE^...``: 10 of them, 20 studies (30 to 49)."""
BULK_AE_TITLE: Final = "BULKLOAD"
"""The calling AE title the bulk-loaded rows record, where a stored instance has its sender's."""
MAX_HARD_LINKS: Final = 65000
"""ext4's limit on the links to one file: the instances of a study share one."""
BULK_BATCH: Final = 1000
"""Instances per index transaction when bulk loading, about what group commit gathers."""
_STUDIES_PER_TASK: Final = 20


@dataclass(frozen=True, slots=True)
class FindSet:
    """Studies of series of small CT instances; patient ``n`` has studies ``2n`` and ``2n+1``,
    and each day has ``studies_per_day`` studies, from `FIRST_DAY`."""

    studies: int
    series_per_study: int = 10
    instances_per_series: int = 10
    studies_per_patient: int = 2
    studies_per_day: int = 4
    pixels: int = 8

    @classmethod
    def of(cls, instances: int) -> FindSet:
        """The set of ``instances`` instances in studies of the default shape; ``ValueError``
        unless that is a whole number of studies, enough for every query."""
        per_study = cls(studies=0).instances_per_study
        studies, rest = divmod(instances, per_study)
        needed = max(kind.needs_studies for kind in query_kinds(cls(studies=studies)))
        if rest or studies < needed:
            raise ValueError(
                f"{instances} instances: expected a multiple of {per_study} (a study), at least"
                f" {needed * per_study} (the queries match among the first {needed} studies)"
            )
        return cls(studies=studies)

    @property
    def instances(self) -> int:
        return self.studies * self.instances_per_study

    @property
    def instances_per_study(self) -> int:
        return self.series_per_study * self.instances_per_series

    @property
    def key(self) -> str:
        """Names the cache folders: any parameter that changes the data changes the key."""
        return (
            f"find-v{_GENERATOR_VERSION}-{self.studies}x{self.series_per_study}"
            f"x{self.instances_per_series}-p{self.studies_per_patient}-d{self.studies_per_day}"
            f"-{self.pixels}px"
        )

    def describe(self) -> str:
        patients = -(-self.studies // self.studies_per_patient)
        return (
            f"{self.instances} instances: {self.studies} studies x {self.series_per_study} series"
            f" x {self.instances_per_series} instances, {self.pixels}x{self.pixels} pixels;"
            f" {patients} patients of {self.studies_per_patient} studies;"
            f" {self.studies_per_day} studies a day from {FIRST_DAY}"
        )

    def day(self, study: int) -> str:
        return (FIRST_DAY + timedelta(days=study // self.studies_per_day)).strftime("%Y%m%d")

    def uid(self, *parts: object) -> str:
        from pydicom.uid import generate_uid

        return generate_uid(entropy_srcs=[self.key, *map(str, parts)])


def patient_name(patient: int) -> str:
    family = "DOE" if patient in DOE_PATIENTS else FAMILY_NAMES[patient % len(FAMILY_NAMES)]
    given = GIVEN_NAMES[patient // len(FAMILY_NAMES) % len(GIVEN_NAMES)]
    return f"{family}^{given}"


# --- the queries -------------------------------------------------------------------------------

STUDY_RETURN_KEYS: Final = (
    "PatientName",
    "PatientID",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
)
"""Asked for by the study-level queries: keys pynetdicom's qrscp knows too, so both answer alike."""
IMAGE_RETURN_KEYS: Final = ("SOPInstanceUID", "SOPClassUID", "InstanceNumber")


@dataclass(frozen=True, slots=True)
class QueryKind:
    """One query of the benchmark: Study Root, at ``level``, matching on ``keys``."""

    name: str
    level: str
    keys: tuple[tuple[str, str], ...]
    return_keys: tuple[str, ...]
    matches: int
    """How many entities of ``level`` match in any set of at least ``needs_studies`` studies."""
    needs_studies: int

    def identifier_keys(self) -> dict[str, str]:
        return {
            "QueryRetrieveLevel": self.level,
            **dict.fromkeys(self.return_keys, ""),
            **dict(self.keys),
        }

    @property
    def unique_key(self) -> str:
        """The attribute that names one match: what the answers are counted by."""
        return "StudyInstanceUID" if self.level == "STUDY" else "SOPInstanceUID"

    def describe(self) -> str:
        keys = ", ".join(f"{keyword}={value}" for keyword, value in self.keys)
        return f"{self.name}: {self.level} level, {keys}"


def query_kinds(spec: FindSet) -> tuple[QueryKind, ...]:
    """The four queries; each matches the same entities in every set large enough for it."""
    patient, image_study, image_series = 12, 12, 3
    first, last = 40, 71  # whole days: 40 and 71 are the first and last study of their day
    doe_studies = range(
        DOE_PATIENTS.start * spec.studies_per_patient, DOE_PATIENTS.stop * spec.studies_per_patient
    )
    return (
        QueryKind(
            "exact PatientID",
            "STUDY",
            (("PatientID", f"PID{patient:06d}"),),
            STUDY_RETURN_KEYS,
            spec.studies_per_patient,
            (patient + 1) * spec.studies_per_patient,
        ),
        QueryKind(
            "wildcard PatientName",
            "STUDY",
            (("PatientName", "DOE*"),),
            STUDY_RETURN_KEYS,
            len(doe_studies),
            doe_studies.stop,
        ),
        QueryKind(
            "StudyDate range",
            "STUDY",
            (("StudyDate", f"{spec.day(first)}-{spec.day(last)}"),),
            STUDY_RETURN_KEYS,
            _studies_on_days(spec, first, last),
            (last // spec.studies_per_day + 1) * spec.studies_per_day,
        ),
        QueryKind(
            "IMAGE in one series",
            "IMAGE",
            (
                ("StudyInstanceUID", spec.uid("study", image_study)),
                ("SeriesInstanceUID", spec.uid("series", image_study, image_series)),
            ),
            IMAGE_RETURN_KEYS,
            spec.instances_per_series,
            image_study + 1,
        ),
    )


def _studies_on_days(spec: FindSet, first: int, last: int) -> int:
    """Studies held on the days of studies ``first`` to ``last``."""
    days = last // spec.studies_per_day - first // spec.studies_per_day + 1
    return days * spec.studies_per_day


# --- the instances -----------------------------------------------------------------------------


def instance_dataset(spec: FindSet, study: int, series: int, number: int) -> Any:
    """One instance (a pydicom ``Dataset`` with file meta): a CT header a scanner would write,
    in miniature.  Within a series only the SOP Instance UID and Instance Number differ."""
    from pydicom.dataset import Dataset, FileMetaDataset

    patient = study // spec.studies_per_patient
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = spec.uid("instance", study, series, number)
    meta.TransferSyntaxUID = EXPLICIT_VR_LITTLE_ENDIAN
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyDate = ds.SeriesDate = spec.day(study)
    hour, minute = 8 + study % spec.studies_per_day * 2, study * 7 % 60
    ds.StudyTime = f"{hour:02d}{minute:02d}00"
    ds.SeriesTime = f"{hour:02d}{minute:02d}{series % 60:02d}"
    ds.AccessionNumber = f"ACC{study:07d}"
    ds.Modality = "CT"
    ds.Manufacturer = "Benchmark Medical Systems"
    ds.InstitutionName = "General Hospital"
    ds.ReferringPhysicianName = "Referrer^Robert"
    ds.StudyDescription = "CT CHEST ABDOMEN PELVIS"
    ds.SeriesDescription = f"AXIAL {series + 1}"
    ds.PatientName = patient_name(patient)
    ds.PatientID = f"PID{patient:06d}"
    ds.PatientBirthDate = f"19{30 + patient % 60:02d}{1 + patient % 12:02d}01"
    ds.PatientSex = "FM"[patient % 2]
    ds.BodyPartExamined = "CHEST"
    ds.StudyInstanceUID = spec.uid("study", study)
    ds.SeriesInstanceUID = spec.uid("series", study, series)
    ds.StudyID = str(study + 1)
    ds.SeriesNumber = series + 1
    ds.InstanceNumber = number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = spec.pixels
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = bytes(2 * spec.pixels * spec.pixels)
    return ds


def _renumber(spec: FindSet, ds: Any, study: int, series: int, number: int) -> None:
    """Make ``ds``, an instance of ``series``, the instance ``number`` of it."""
    ds.file_meta.MediaStorageSOPInstanceUID = spec.uid("instance", study, series, number)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.InstanceNumber = number


def _series_instances(spec: FindSet, study: int, series: int) -> Iterator[Any]:
    """The instances of one series, in order, as one data set renumbered for each."""
    ds = instance_dataset(spec, study, series, 1)
    for number in range(1, spec.instances_per_series + 1):
        _renumber(spec, ds, study, series, number)
        yield ds


# --- Part 10 files, for a store path -----------------------------------------------------------


def cached_find_files(spec: FindSet, studies: int) -> Path:
    """The folder of the files of the first ``studies`` studies, one subfolder per study,
    made once under the temp folder.

    Made in a scratch folder and renamed into place, so an interrupted run
    never leaves a half-made set that a later run would trust.
    """
    cache = cache_root() / f"{spec.key}-files-{studies}"
    if cache.is_dir():
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{cache.name}-", dir=cache.parent))
    try:
        with ProcessPoolExecutor() as pool:
            made = [pool.submit(_study_files, spec, study, scratch) for study in range(studies)]
            for study in made:
                study.result()
        scratch.rename(cache)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return cache


def study_folder(root: Path, study: int) -> Path:
    return root / f"study-{study:05d}"


def _study_files(spec: FindSet, study: int, root: Path) -> None:
    from pydicom.filewriter import dcmwrite

    folder = study_folder(root, study)
    folder.mkdir()
    for series in range(spec.series_per_study):
        for ds in _series_instances(spec, study, series):
            name = f"{series:02d}-{ds.InstanceNumber:03d}.dcm"
            dcmwrite(folder / name, ds, enforce_file_format=True)


def cache_root() -> Path:
    return Path(tempfile.gettempdir()) / "dicomd-bench"


# --- a dicomd archive, bulk-loaded -------------------------------------------------------------


def bulk_archive(
    spec: FindSet, archive: Path, progress: Callable[[int], None] = lambda done: None
) -> None:
    """Fill the empty folder ``archive`` with ``spec`` as dicomd's archive would hold it.

    Worker processes make each study's folders, its one real file (its first
    instance at its layout path) and the hard links to it at the other
    instances' paths, and the index records of its instances; this process
    writes them with ``ArchiveIndex.write``, ``BULK_BATCH`` to a transaction.
    ``progress`` hears the number of instances indexed so far.
    """
    from dicomd.archive.index import ArchiveIndex, adding

    if spec.instances_per_study > MAX_HARD_LINKS:
        raise ValueError(f"{spec.instances_per_study} instances per study: more links than ext4's")
    received_at = datetime.now(UTC)
    index = ArchiveIndex(archive / "index.sqlite")
    index.open()
    try:
        indexed = 0

        def write(task: Future[list[Any]]) -> None:
            nonlocal indexed
            records = task.result()
            for start in range(0, len(records), BULK_BATCH):
                outcomes = index.write(
                    [adding(record) for record in records[start : start + BULK_BATCH]]
                )
                errors = [outcome.error for outcome in outcomes if outcome.error is not None]
                if errors:
                    raise RuntimeError(f"bulk load: {len(errors)} rows not written: {errors[0]}")
            indexed += len(records)
            progress(indexed)

        with ProcessPoolExecutor() as pool:
            window = 2 * (os.cpu_count() or 1)
            pending: collections.deque[Future[list[Any]]] = collections.deque()
            for first in range(0, spec.studies, _STUDIES_PER_TASK):
                last = min(first + _STUDIES_PER_TASK, spec.studies)
                pending.append(pool.submit(_bulk_studies, spec, archive, first, last, received_at))
                if len(pending) >= window:
                    write(pending.popleft())
            while pending:
                write(pending.popleft())
    finally:
        index.close()


def _bulk_studies(
    spec: FindSet, archive: Path, first: int, last: int, received_at: datetime
) -> list[Any]:
    """Make the files of studies ``first`` to ``last - 1`` under ``archive``; their records."""
    from pydicom.filewriter import dcmwrite

    from dicomd.archive.handler import DEFAULT_LAYOUT
    from dicomd.archive.index import record_from_dataset
    from dicomd.archive.layout import Layout

    layout = Layout(DEFAULT_LAYOUT)
    records = []
    for study in range(first, last):
        original: Path | None = None
        for series in range(spec.series_per_study):
            folder = None
            for ds in _series_instances(spec, study, series):
                relative = str(layout.path_for(ds))
                path = archive / relative
                if path.parent != folder:
                    folder = path.parent
                    folder.mkdir(parents=True, exist_ok=True)
                if original is None:
                    dcmwrite(path, ds, enforce_file_format=True)
                    original, size = path, path.stat().st_size
                else:
                    os.link(original, path)
                records.append(
                    record_from_dataset(
                        ds,
                        path=relative,
                        size=size,
                        calling_ae_title=BULK_AE_TITLE,
                        received_at=received_at,
                    )
                )
    return records

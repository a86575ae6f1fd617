"""C-FIND against the real daemon: the archive answers dcmtk ``findscu`` and pynetdicom.

A small, deliberate archive is stored once per module through C-STORE
(``storescu`` for most instances, pynetdicom for the UTF-8 and ISO 2022
ones): a few patients, studies on different dates and times, several series
and modalities, names holding the characters SQL and GLOB patterns treat
specially, a Latin-1 name, UTF-8 names and a Japanese name in three
component groups, and one large series for C-CANCEL.  Every query then goes
through the network as a peer would send it; ``findscu -X`` writes each
answer to a file, read back with pydicom, and ``-d`` prints every response
status, which is how the final status and FF00/FF01 are read.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread, dcmwrite
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pynetdicom import AE
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from tests.support.archive import ArchiveView, archive_plugin
from tests.support.daemons import RunningDaemon, start_daemon
from tests.support.dcmtk import run_dcmtk
from tests.support.processes import LOCALHOST
from tests.support.pynetdicom_peers import pynetdicom_store

pytestmark = pytest.mark.usefixtures("report_module_daemons")

PENDING, PENDING_WARNING, SUCCESS, CANCELLED = 0xFF00, 0xFF01, 0x0000, 0xFE00
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900

# --------------------------------------------------------------------------------------------
# The data set


@dataclass(frozen=True)
class Patient:
    id: str
    name: str
    charset: str | list[str]
    birth_date: str
    by_pynetdicom: bool = False


@dataclass(frozen=True)
class Study:
    key: str
    patient: Patient
    date: str
    time: str | None
    accession: str
    description: str
    referring: str | None = None

    @property
    def uid(self) -> str:
        return uid_of("study", self.key)


@dataclass(frozen=True)
class Series:
    key: str
    study: Study
    modality: str
    number: int
    description: str
    time: str
    sop_class: str
    instances: int = 1

    @property
    def uid(self) -> str:
        return uid_of("series", self.key)

    def instance_uid(self, number: int) -> str:
        return uid_of("instance", f"{self.key}/{number}")


def uid_of(kind: str, key: str) -> str:
    """The same UID for the same entity in every run, so expectations can name it."""
    return generate_uid(entropy_srcs=["dicomd e2e find", kind, key])


DOE_JOHN = Patient("DOE-J", "Doe^John", "ISO_IR 100", "19700101")
DOE_JANE = Patient("DOE-JA", "Doe^Jane", "ISO_IR 100", "19751231")
LOWER_CASE = Patient("DOE-LOW", "doe^john", "ISO_IR 100", "19800101")
UNDERSCORE = Patient("UNDER", "Smith_Jr^Bob", "ISO_IR 100", "19900101")
UNDERSCORE_DECOY = Patient("UNDER-DECOY", "SmithXJr^Bob", "ISO_IR 100", "19900101")
BRACKETS = Patient("BRACKET", "Bracket[1]^Ann", "ISO_IR 100", "19900101")
BRACKETS_DECOY = Patient("BRACKET-DECOY", "Bracket1^Ann", "ISO_IR 100", "19900101")
STAR = Patient("STAR", "Star*^Anna", "ISO_IR 100", "19900101")
LATIN1 = Patient("LATIN1", "Müller^Jürgen", "ISO_IR 100", "19900101")
UTF8 = Patient("UTF8", "Gómez^José", "ISO_IR 192", "19900101", by_pynetdicom=True)
CYRILLIC = Patient("CYRILLIC", "Иванов^Иван", "ISO_IR 192", "19900101", by_pynetdicom=True)
JAPANESE = Patient(
    "JAPANESE",
    "Yamada^Tarou=山田^太郎=やまだ^たろう",
    ["", "ISO 2022 IR 87"],
    "19900101",
    by_pynetdicom=True,
)
BULK = Patient("BULK", "Bulk^Patient", "ISO_IR 100", "19900101")

CHEST = Study("chest", DOE_JOHN, "20240110", "083000", "ACC-001", "CT CHEST", "House^Gregory")
BRAIN = Study("brain", DOE_JOHN, "20240215", "143000", "ACC-002", "MR BRAIN", "Wilson^James")
ABDOMEN = Study("abdomen", DOE_JANE, "20240215", "091500", "ACC-003", "CT ABDOMEN", "House^Gregory")
FOLLOW_UP = Study("follow-up", DOE_JANE, "20240120", "180000", "ACC-004", "CT FOLLOWUP")
NEW_YEAR = Study("new-year", UNDERSCORE, "20231231", "235900", "ACC-005", "XR HAND")
NO_TIME = Study("no-time", UNDERSCORE_DECOY, "20240215", None, "ACC-006", "XR FOOT")
MARCH = tuple(
    Study(f"march-{patient.id.lower()}", patient, "20240301", "120000", f"ACC-1{n:02d}", "XR")
    for n, patient in enumerate(
        (LOWER_CASE, BRACKETS, BRACKETS_DECOY, STAR, LATIN1, UTF8, CYRILLIC, JAPANESE)
    )
)
BULK_STUDY = Study("bulk", BULK, "20220601", "100000", "ACC-900", "CT BULK")

CHEST_AXIAL = Series("chest-axial", CHEST, "CT", 1, "AXIAL 1mm", "083500", CTImageStorage, 3)
CHEST_CORONAL = Series("chest-coronal", CHEST, "CT", 2, "CORONAL", "084000", CTImageStorage, 2)
CHEST_SCREEN = Series(
    "chest-screen", CHEST, "OT", 3, "SCREENSHOT", "090000", SecondaryCaptureImageStorage
)
BRAIN_T1 = Series("brain-t1", BRAIN, "MR", 1, "T1 SAG", "143500", MRImageStorage, 2)
ABDOMEN_CT = Series("abdomen-ct", ABDOMEN, "CT", 1, "ABD", "091600", CTImageStorage)
ABDOMEN_MR = Series("abdomen-mr", ABDOMEN, "MR", 2, "ABD MR", "092000", MRImageStorage)
FOLLOW_UP_CT = Series("follow-up-ct", FOLLOW_UP, "CT", 1, "ABD", "180500", CTImageStorage)
BULK_SERIES = Series("bulk-ct", BULK_STUDY, "CT", 1, "MANY", "100000", CTImageStorage, 1000)
SINGLE_CR_SERIES = tuple(
    Series(f"{study.key}-cr", study, "CR", 1, "HAND", "000000", ComputedRadiographyImageStorage)
    for study in (NEW_YEAR, NO_TIME, *MARCH)
)

PATIENTS = (
    DOE_JOHN,
    DOE_JANE,
    LOWER_CASE,
    UNDERSCORE,
    UNDERSCORE_DECOY,
    BRACKETS,
    BRACKETS_DECOY,
    STAR,
    LATIN1,
    UTF8,
    CYRILLIC,
    JAPANESE,
    BULK,
)
STUDIES = (CHEST, BRAIN, ABDOMEN, FOLLOW_UP, NEW_YEAR, NO_TIME, *MARCH, BULK_STUDY)
SERIES = (
    CHEST_AXIAL,
    CHEST_CORONAL,
    CHEST_SCREEN,
    BRAIN_T1,
    ABDOMEN_CT,
    ABDOMEN_MR,
    FOLLOW_UP_CT,
    *SINGLE_CR_SERIES,
    BULK_SERIES,
)

ALL_PATIENTS = {patient.id for patient in PATIENTS}
ALL_STUDIES = {study.key for study in STUDIES}
MARCH_STUDIES = {study.key for study in MARCH}
STUDY_KEYS = {study.uid: study.key for study in STUDIES}
SERIES_KEYS = {series.uid: series.key for series in SERIES}


def instance_dataset(series: Series, number: int) -> Dataset:
    """One small image of ``series`` (8 by 8 pixels): every attribute the index knows, and more."""
    study, patient = series.study, series.study.patient
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = series.sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = series.instance_uid(number)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = patient.charset
    ds.SOPClassUID = series.sop_class
    ds.SOPInstanceUID = series.instance_uid(number)
    ds.StudyDate = ds.SeriesDate = study.date
    if study.time is not None:
        ds.StudyTime = study.time
        ds.SeriesTime = series.time
    ds.AccessionNumber = study.accession
    ds.Modality = series.modality
    ds.InstitutionName = "General Hospital"
    if study.referring is not None:
        ds.ReferringPhysicianName = study.referring
    ds.StudyDescription = study.description
    ds.SeriesDescription = series.description
    ds.PatientName = patient.name
    ds.PatientID = patient.id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study.uid
    ds.SeriesInstanceUID = series.uid
    ds.StudyID = study.key[:16]
    ds.SeriesNumber = series.number
    ds.InstanceNumber = number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = bytes(128)
    return ds


def store_archive(daemon: RunningDaemon, folder: Path, series: Sequence[Series]) -> None:
    """Store every instance of ``series`` into ``daemon``: storescu in one association, and
    pynetdicom for the patients marked so; fails unless the index then holds them all."""
    folder.mkdir()
    expected = set()
    for one in series:
        for number in range(1, one.instances + 1):
            dataset = instance_dataset(one, number)
            expected.add(dataset.SOPInstanceUID)
            if one.study.patient.by_pynetdicom:
                status = pynetdicom_store(daemon, dataset, one.sop_class, ExplicitVRLittleEndian)
                assert status.Status == SUCCESS, f"{one.key}/{number}: {status}"
            else:
                dcmwrite(
                    folder / f"{dataset.SOPInstanceUID}.dcm", dataset, enforce_file_format=True
                )
    sent = run_dcmtk(
        "storescu", "-aec", daemon.ae_title, "+sd", "+r", LOCALHOST, str(daemon.port), str(folder),
        timeout=300,
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    indexed = ArchiveView(daemon.directory / daemon.config["storage"]["path"]).indexed()
    assert set(indexed) == expected


def start_archive(
    module_daemons: list[RunningDaemon], folder: Path, series: Sequence[Series], **options: object
) -> RunningDaemon:
    daemon = start_daemon(folder, {"plugins": [archive_plugin(**options)]})
    module_daemons.append(daemon)
    store_archive(daemon, folder / "sent", series)
    return daemon


@pytest.fixture(scope="module")
def archive(
    tmp_path_factory: pytest.TempPathFactory, module_daemons: list[RunningDaemon]
) -> RunningDaemon:
    """A daemon whose archive holds the whole data set of this module."""
    return start_archive(module_daemons, tmp_path_factory.mktemp("find"), SERIES)


# --------------------------------------------------------------------------------------------
# The peers

_STATUS = re.compile(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})")
_ERROR_COMMENT = re.compile(r"\(0000,0902\) LO \[(.*?)\]")


@dataclass(frozen=True)
class FindAnswer:
    """What findscu received: every response status in order, the matches, the comment."""

    statuses: list[int]
    matches: list[Dataset]
    error_comment: str | None

    @property
    def status(self) -> int:
        """The final status."""
        return self.statuses[-1]

    def values(self, keyword: str) -> list[str]:
        return [str(match.get(keyword, "")) for match in self.matches]

    def keys(self, keyword: str, names: dict[str, str]) -> set[str]:
        """The matches named by ``keyword`` (a UID) through ``names``, as a set."""
        return {names[value] for value in self.values(keyword)}


def findscu(
    daemon: RunningDaemon,
    model: str,
    *keys: str | bytes,
    options: Sequence[str] = (),
    query: Dataset | None = None,
) -> FindAnswer:
    """One ``findscu`` run: ``model`` is ``-P``, ``-S`` or ``-W``, ``keys`` its ``-k`` values
    (bytes for values in a character set other than the command line's), ``query`` a query
    file; fails unless findscu exits 0 and reports a final status."""
    with tempfile.TemporaryDirectory() as folder:
        arguments: list[str | bytes] = [model, "-d", "-X", "-od", folder, "-aec", daemon.ae_title]
        arguments += options
        for key in keys:
            arguments += ["-k", key]
        arguments += [LOCALHOST, str(daemon.port)]
        if query is not None:
            query_file = Path(folder) / "query.dcm"
            dcmwrite(query_file, query, implicit_vr=False, little_endian=True)
            arguments.append(str(query_file))
        done = run_dcmtk("findscu", *arguments)  # type: ignore[arg-type]
        output = done.stdout + done.stderr
        assert done.returncode == 0, output
        matches = [dcmread(path) for path in sorted(Path(folder).glob("rsp*.dcm"))]
    statuses = [int(status, 16) for status in _STATUS.findall(output)]
    assert statuses, output
    comments = _ERROR_COMMENT.findall(output)
    return FindAnswer(statuses, matches, comments[-1].strip() if comments else None)


def assert_success(answer: FindAnswer, pending: int = PENDING) -> None:
    """Every match came with ``pending`` and the query ended with success."""
    assert answer.statuses == [pending] * len(answer.matches) + [SUCCESS]


def the_only_match(answer: FindAnswer, pending: int = PENDING) -> Dataset:
    """The one match of an answer that ``assert_success`` accepts; fails unless there is
    exactly one."""
    assert_success(answer, pending)
    [match] = answer.matches
    return match


def patient_query(*keys: str | bytes) -> tuple[str | bytes, ...]:
    return ("QueryRetrieveLevel=PATIENT", "PatientID", *keys)


def study_query(*keys: str | bytes) -> tuple[str | bytes, ...]:
    return ("QueryRetrieveLevel=STUDY", "StudyInstanceUID", *keys)


def series_query(study: Study, *keys: str | bytes) -> tuple[str | bytes, ...]:
    return (
        "QueryRetrieveLevel=SERIES",
        f"StudyInstanceUID={study.uid}",
        "SeriesInstanceUID",
        *keys,
    )


def image_query(series: Series, *keys: str | bytes) -> tuple[str | bytes, ...]:
    return (
        "QueryRetrieveLevel=IMAGE",
        f"StudyInstanceUID={series.study.uid}",
        f"SeriesInstanceUID={series.uid}",
        "SOPInstanceUID",
        *keys,
    )


# --------------------------------------------------------------------------------------------
# Matching, level by level


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        pytest.param(["PatientID=DOE-J"], {"DOE-J"}, id="single value"),
        pytest.param([], ALL_PATIENTS, id="universal"),
        pytest.param(["PatientID=*"], ALL_PATIENTS, id="universal star"),
        pytest.param(["PatientID=DOE-J*"], {"DOE-J", "DOE-JA"}, id="star"),
        pytest.param(["PatientID=DOE-J?"], {"DOE-JA"}, id="question mark"),
        pytest.param(["PatientName=Doe*"], {"DOE-J", "DOE-JA"}, id="name star"),
        pytest.param(["PatientName=?oe^?o*"], {"DOE-J", "DOE-LOW"}, id="name ? and *"),
        pytest.param(["PatientName=Doe^Ja?e"], {"DOE-JA"}, id="name question mark"),
        pytest.param(["PatientName=Doe^John"], {"DOE-J"}, id="name case-sensitive"),
        pytest.param(["PatientName=Doe^John^^^"], {"DOE-J"}, id="trailing carets"),
        pytest.param(["PatientName=Smith_*"], {"UNDER"}, id="underscore is literal"),
        pytest.param(["PatientName=Bracket[1]*"], {"BRACKET"}, id="brackets are literal"),
        pytest.param(["PatientName=Bracket?1*"], {"BRACKET"}, id="question mark for bracket"),
        pytest.param(["PatientName=Star*^Anna"], {"STAR"}, id="stored star"),
        pytest.param(["PatientBirthDate=19700101"], {"DOE-J"}, id="date"),
        pytest.param(
            ["PatientBirthDate=19700101-19751231"], {"DOE-J", "DOE-JA"}, id="closed date range"
        ),
        pytest.param(["PatientBirthDate=-19751231"], {"DOE-J", "DOE-JA"}, id="open start"),
        pytest.param(
            ["PatientBirthDate=19800101-"],
            ALL_PATIENTS - {"DOE-J", "DOE-JA"},
            id="open end",
        ),
        pytest.param(["PatientID=DOE-J\\STAR"], {"DOE-J", "STAR"}, id="list"),
        pytest.param(["PatientID=NOBODY"], set(), id="no match"),
    ],
)
def test_patient_level_in_patient_root(archive, keys, expected):
    answer = findscu(archive, "-P", *patient_query(*keys))
    assert_success(answer)
    assert set(answer.values("PatientID")) == expected
    assert len(answer.matches) == len(expected)


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        pytest.param([f"StudyInstanceUID={CHEST.uid}"], {"chest"}, id="single UID"),
        pytest.param(
            [f"StudyInstanceUID={CHEST.uid}\\{ABDOMEN.uid}\\{generate_uid()}"],
            {"chest", "abdomen"},
            id="UID list",
        ),
        pytest.param([], ALL_STUDIES, id="universal"),
        pytest.param(["StudyDate=20240215"], {"brain", "abdomen", "no-time"}, id="date"),
        pytest.param(
            ["StudyDate=20240110-20240131"], {"chest", "follow-up"}, id="closed date range"
        ),
        pytest.param(["StudyDate=-20231231"], {"new-year", "bulk"}, id="date range open start"),
        pytest.param(["StudyDate=20240301-"], MARCH_STUDIES, id="date range open end"),
        pytest.param(
            ["StudyTime=080000-100000"], {"chest", "abdomen", "bulk"}, id="closed time range"
        ),
        pytest.param(["StudyTime=0800-1000"], {"chest", "abdomen", "bulk"}, id="partial times"),
        pytest.param(["StudyTime=-0900"], {"chest"}, id="time range open start"),
        pytest.param(["StudyTime=1800-"], {"follow-up", "new-year"}, id="time range open end"),
        pytest.param(["StudyTime=14"], {"brain"}, id="partial time as single value"),
        pytest.param(
            ["StudyDate=20240110-20240215", "StudyTime=083000-120000"],
            {"chest", "follow-up", "abdomen", "no-time"},
            id="combined date-time range",
        ),
        pytest.param(
            ["StudyDate=20240110-20240215"],
            {"chest", "follow-up", "brain", "abdomen", "no-time"},
            id="the same dates without time",
        ),
        pytest.param(["PatientName=Doe^John"], {"chest", "brain"}, id="patient key"),
        pytest.param(["PatientID=DOE-J*"], {"chest", "brain", "abdomen", "follow-up"}, id="ID *"),
        pytest.param(
            ["StudyDescription=CT*"], {"chest", "abdomen", "follow-up", "bulk"}, id="text star"
        ),
        pytest.param(
            ["AccessionNumber=ACC-00?"],
            {"chest", "brain", "abdomen", "follow-up", "new-year", "no-time"},
            id="text question mark",
        ),
        pytest.param(
            ["ReferringPhysicianName=House^Gregory"], {"chest", "abdomen"}, id="other name"
        ),
        pytest.param(["ModalitiesInStudy=MR"], {"brain", "abdomen"}, id="modality in study"),
        pytest.param(
            ["ModalitiesInStudy=OT\\MR"], {"chest", "brain", "abdomen"}, id="modalities list"
        ),
        pytest.param(
            ["StudyDate=20240215", "ModalitiesInStudy=CT"], {"abdomen"}, id="date and modality"
        ),
    ],
)
def test_study_level_in_study_root(archive, keys, expected):
    answer = findscu(archive, "-S", *study_query(*keys))
    assert_success(answer)
    assert answer.keys("StudyInstanceUID", STUDY_KEYS) == expected
    assert len(answer.matches) == len(expected)


def test_study_level_answers_come_in_date_order(archive):
    answer = findscu(archive, "-S", *study_query("PatientID=DOE-J*", "StudyDate", "StudyTime"))
    assert answer.values("StudyDate") == ["20240110", "20240120", "20240215", "20240215"]
    assert answer.values("StudyTime") == ["083000", "180000", "091500", "143000"]


@pytest.mark.parametrize(
    ("study", "keys", "expected"),
    [
        pytest.param(CHEST, [], {"chest-axial", "chest-coronal", "chest-screen"}, id="universal"),
        pytest.param(CHEST, ["Modality=CT"], {"chest-axial", "chest-coronal"}, id="modality"),
        pytest.param(CHEST, ["SeriesNumber=2"], {"chest-coronal"}, id="number"),
        pytest.param(
            CHEST,
            [f"SeriesInstanceUID={CHEST_AXIAL.uid}\\{CHEST_SCREEN.uid}"],
            {"chest-axial", "chest-screen"},
            id="UID list",
        ),
        pytest.param(
            CHEST, ["SeriesDescription=*AL*"], {"chest-axial", "chest-coronal"}, id="star"
        ),
        pytest.param(CHEST, ["SeriesDescription=?XIAL*"], {"chest-axial"}, id="question mark"),
        pytest.param(
            CHEST, ["SeriesTime=083000-084500"], {"chest-axial", "chest-coronal"}, id="time range"
        ),
        pytest.param(
            CHEST,
            ["SeriesDate=20240110-20240110", "SeriesTime=083800-"],
            {"chest-coronal", "chest-screen"},
            id="combined date-time range",
        ),
        pytest.param(CHEST, ["SeriesDate=-20231231"], set(), id="date range, no match"),
        pytest.param(ABDOMEN, ["Modality=MR"], {"abdomen-mr"}, id="other study"),
        pytest.param(BRAIN, ["PatientName=Doe^Jane"], set(), id="patient key of another"),
    ],
)
def test_series_level_in_study_root(archive, study, keys, expected):
    answer = findscu(archive, "-S", *series_query(study, *keys))
    assert_success(answer)
    assert answer.keys("SeriesInstanceUID", SERIES_KEYS) == expected
    assert len(answer.matches) == len(expected)


@pytest.mark.parametrize(
    ("series", "keys", "expected"),
    [
        pytest.param(CHEST_AXIAL, [], {1, 2, 3}, id="universal"),
        pytest.param(CHEST_AXIAL, ["InstanceNumber=2"], {2}, id="number"),
        pytest.param(
            CHEST_AXIAL,
            [f"SOPInstanceUID={CHEST_AXIAL.instance_uid(1)}\\{CHEST_AXIAL.instance_uid(3)}"],
            {1, 3},
            id="UID list",
        ),
        pytest.param(CHEST_AXIAL, [f"SOPClassUID={CTImageStorage}"], {1, 2, 3}, id="SOP class"),
        pytest.param(CHEST_SCREEN, [f"SOPClassUID={CTImageStorage}"], set(), id="other class"),
        pytest.param(CHEST_CORONAL, ["PatientName=Doe*"], {1, 2}, id="patient key with star"),
        pytest.param(CHEST_CORONAL, ["StudyDate=20240101-"], {1, 2}, id="study key range"),
    ],
)
def test_image_level_in_study_root(archive, series, keys, expected):
    answer = findscu(archive, "-S", *image_query(series, "InstanceNumber", *keys))
    assert_success(answer)
    assert {int(number) for number in answer.values("InstanceNumber")} == expected
    assert set(answer.values("SOPInstanceUID")) == {series.instance_uid(n) for n in expected}


def test_patient_root_walks_down_from_patient_to_image(archive):
    studies = findscu(archive, "-P", *study_query("PatientID=DOE-J"))
    assert_success(studies)
    assert studies.keys("StudyInstanceUID", STUDY_KEYS) == {"chest", "brain"}

    series = findscu(archive, "-P", *series_query(CHEST, "PatientID=DOE-J", "Modality"))
    assert_success(series)
    assert series.keys("SeriesInstanceUID", SERIES_KEYS) == {
        "chest-axial",
        "chest-coronal",
        "chest-screen",
    }
    assert sorted(series.values("Modality")) == ["CT", "CT", "OT"]

    images = findscu(archive, "-P", *image_query(CHEST_AXIAL, "PatientID=DOE-J"))
    assert_success(images)
    assert set(images.values("SOPInstanceUID")) == {CHEST_AXIAL.instance_uid(n) for n in (1, 2, 3)}


# --------------------------------------------------------------------------------------------
# Computed attributes


def test_study_level_computes_counts_modalities_and_sop_classes(archive):
    answer = findscu(
        archive,
        "-S",
        *study_query(
            f"StudyInstanceUID={CHEST.uid}\\{BRAIN.uid}\\{BULK_STUDY.uid}",
            "NumberOfStudyRelatedSeries",
            "NumberOfStudyRelatedInstances",
            "ModalitiesInStudy",
            "SOPClassesInStudy",
        ),
    )
    assert_success(answer)
    found = {STUDY_KEYS[match.StudyInstanceUID]: match for match in answer.matches}
    chest, brain, bulk = found["chest"], found["brain"], found["bulk"]
    assert (chest.NumberOfStudyRelatedSeries, chest.NumberOfStudyRelatedInstances) == (3, 6)
    assert sorted(chest.ModalitiesInStudy) == ["CT", "OT"]
    assert sorted(chest.SOPClassesInStudy) == sorted([CTImageStorage, SecondaryCaptureImageStorage])
    assert (brain.NumberOfStudyRelatedSeries, brain.NumberOfStudyRelatedInstances) == (1, 2)
    assert brain.ModalitiesInStudy == "MR"
    assert brain.SOPClassesInStudy == MRImageStorage
    assert (bulk.NumberOfStudyRelatedSeries, bulk.NumberOfStudyRelatedInstances) == (1, 1000)


def test_patient_level_computes_counts(archive):
    answer = findscu(
        archive,
        "-P",
        *patient_query(
            "PatientID=DOE-J*",
            "NumberOfPatientRelatedStudies",
            "NumberOfPatientRelatedSeries",
            "NumberOfPatientRelatedInstances",
        ),
    )
    assert_success(answer)
    counts = {
        match.PatientID: (
            match.NumberOfPatientRelatedStudies,
            match.NumberOfPatientRelatedSeries,
            match.NumberOfPatientRelatedInstances,
        )
        for match in answer.matches
    }
    assert counts == {"DOE-J": (2, 4, 8), "DOE-JA": (2, 3, 3)}


def test_series_level_counts_instances(archive):
    answer = findscu(archive, "-S", *series_query(CHEST, "NumberOfSeriesRelatedInstances"))
    assert_success(answer)
    counts = {
        SERIES_KEYS[match.SeriesInstanceUID]: match.NumberOfSeriesRelatedInstances
        for match in answer.matches
    }
    assert counts == {"chest-axial": 3, "chest-coronal": 2, "chest-screen": 1}


def test_a_value_on_a_count_does_not_constrain(archive):
    answer = findscu(
        archive, "-S", *study_query(f"StudyInstanceUID={CHEST.uid}", "NumberOfStudyRelatedSeries=9")
    )
    assert_success(answer)
    assert [match.NumberOfStudyRelatedSeries for match in answer.matches] == [3]


# --------------------------------------------------------------------------------------------
# Exactly the requested keys


def test_the_answer_holds_exactly_the_requested_keys(archive):
    match = the_only_match(
        findscu(
            archive,
            "-S",
            *study_query(f"StudyInstanceUID={CHEST.uid}", "PatientName", "StudyDate", "PatientID"),
        )
    )
    assert set(match.dir()) == {
        "QueryRetrieveLevel",
        "RetrieveAETitle",
        "StudyInstanceUID",
        "PatientName",
        "StudyDate",
        "PatientID",
    }
    assert match.QueryRetrieveLevel == "STUDY"
    assert match.RetrieveAETitle == archive.ae_title
    assert (match.PatientName, match.StudyDate, match.PatientID) == (
        "Doe^John",
        "20240110",
        "DOE-J",
    )


def test_keys_the_archive_cannot_answer_come_back_empty_with_ff01(archive):
    match = the_only_match(
        findscu(
            archive,
            "-S",
            *study_query(
                f"StudyInstanceUID={CHEST.uid}",
                "InstitutionName",  # in every stored file, but not indexed
                "PatientAge",  # in none
                "Modality",  # a key of the series level
                "StudyDate",
            ),
        ),
        pending=PENDING_WARNING,
    )
    assert set(match.dir()) == {
        "QueryRetrieveLevel",
        "RetrieveAETitle",
        "StudyInstanceUID",
        "InstitutionName",
        "PatientAge",
        "Modality",
        "StudyDate",
    }
    assert [match.InstitutionName, match.PatientAge, match.Modality] == ["", "", ""]
    assert match.StudyDate == "20240110"


def test_an_ascii_answer_carries_no_character_set_unless_the_query_did(archive):
    plain = findscu(archive, "-S", *study_query(f"StudyInstanceUID={CHEST.uid}", "PatientName"))
    assert "SpecificCharacterSet" not in plain.matches[0]
    latin1 = findscu(
        archive,
        "-S",
        *study_query(
            f"StudyInstanceUID={CHEST.uid}", "PatientName", "SpecificCharacterSet=ISO_IR 100"
        ),
    )
    assert latin1.matches[0].SpecificCharacterSet == "ISO_IR 100"


# --------------------------------------------------------------------------------------------
# Character sets


def raw_name(match: Dataset) -> bytes:
    """The Patient's Name of an answer as it was on the wire, trailing padding removed."""
    return match.get_item("PatientName").value.rstrip(b" ")


def test_a_latin1_name_is_answered_in_utf8_to_a_query_without_character_set(archive):
    match = the_only_match(findscu(archive, "-P", *patient_query("PatientName=M*")))
    assert match.SpecificCharacterSet == "ISO_IR 192"
    assert raw_name(match) == "Müller^Jürgen".encode()
    assert match.PatientID == "LATIN1"


def test_a_latin1_query_finds_a_name_stored_in_utf8_and_is_answered_in_latin1(archive):
    match = the_only_match(
        findscu(
            archive,
            "-P",
            *patient_query(
                "SpecificCharacterSet=ISO_IR 100", "PatientName=Gómez*".encode("latin-1")
            ),
        )
    )
    assert match.PatientID == "UTF8"
    assert match.SpecificCharacterSet == "ISO_IR 100"
    assert raw_name(match) == "Gómez^José".encode("latin-1")
    assert str(match.PatientName) == "Gómez^José"


def test_a_utf8_query_finds_a_name_stored_in_latin1(archive):
    match = the_only_match(
        findscu(
            archive,
            "-P",
            *patient_query("SpecificCharacterSet=ISO_IR 192", "PatientName=Müller^Jürgen".encode()),
        )
    )
    assert (match.PatientID, match.SpecificCharacterSet) == ("LATIN1", "ISO_IR 192")
    assert raw_name(match) == "Müller^Jürgen".encode()


def test_a_latin1_query_gets_utf8_for_names_latin1_cannot_carry(archive):
    answer = findscu(
        archive,
        "-P",
        *patient_query(
            "SpecificCharacterSet=ISO_IR 100", "PatientID=LATIN1\\CYRILLIC", "PatientName"
        ),
    )
    assert_success(answer)
    found = {match.PatientID: match for match in answer.matches}
    assert found["LATIN1"].SpecificCharacterSet == "ISO_IR 100"
    assert raw_name(found["LATIN1"]) == "Müller^Jürgen".encode("latin-1")
    assert found["CYRILLIC"].SpecificCharacterSet == "ISO_IR 192"
    assert raw_name(found["CYRILLIC"]) == "Иванов^Иван".encode()


def test_a_japanese_name_is_found_by_its_ideographic_group(archive):
    match = the_only_match(
        findscu(
            archive,
            "-P",
            *patient_query("SpecificCharacterSet=ISO_IR 192", "PatientName==山田^太郎".encode()),
        )
    )
    assert match.PatientID == "JAPANESE"
    assert match.SpecificCharacterSet == "ISO_IR 192"
    assert str(match.PatientName) == JAPANESE.name
    assert match.PatientName.ideographic == "山田^太郎"


def test_a_japanese_query_in_iso_2022_finds_the_name_and_is_answered_in_utf8(archive):
    query = Dataset()
    query.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    query.QueryRetrieveLevel = "PATIENT"
    query.PatientID = ""
    query.PatientName = "*=山田*=やまだ*"
    match = the_only_match(findscu(archive, "-P", query=query))
    assert match.PatientID == "JAPANESE"
    assert match.SpecificCharacterSet == "ISO_IR 192"
    assert str(match.PatientName) == JAPANESE.name


def test_the_alphabetic_group_of_a_japanese_name_matches_alone(archive):
    answer = findscu(archive, "-P", *patient_query("PatientName=Yamada^Tarou"))
    assert_success(answer)
    assert answer.values("PatientID") == ["JAPANESE"]


# --------------------------------------------------------------------------------------------
# Cancel and refusals


def test_findscu_cancel_stops_a_long_answer_with_fe00(archive):
    answer = findscu(archive, "-S", *image_query(BULK_SERIES), options=["--cancel", "1"])
    assert answer.status == CANCELLED
    assert 1 <= len(answer.matches) < BULK_SERIES.instances
    assert answer.statuses[:-1] == [PENDING] * len(answer.matches)
    # the association and the daemon serve the next query as usual
    again = findscu(archive, "-S", *image_query(BULK_SERIES))
    assert_success(again)
    assert len(again.matches) == BULK_SERIES.instances


@pytest.mark.parametrize(
    ("model", "keys"),
    [
        pytest.param("-S", ["QueryRetrieveLevel=SERIES", "Modality"], id="series, no study UID"),
        pytest.param(
            "-S", ["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={CHEST.uid}"], id="image"
        ),
        pytest.param("-S", ["QueryRetrieveLevel=PATIENT", "PatientID"], id="patient in study root"),
        pytest.param("-P", ["QueryRetrieveLevel=STUDY", "StudyDate"], id="study, no patient ID"),
        pytest.param("-S", ["QueryRetrieveLevel=FRAME", "PatientID"], id="unknown level"),
        pytest.param("-S", ["PatientID"], id="no level"),
        pytest.param(
            "-S", ["QueryRetrieveLevel=STUDY", "StudyInstanceUID=1.2.*"], id="wildcard in UID"
        ),
        pytest.param(
            "-S",
            ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={CHEST.uid}\\{BRAIN.uid}"],
            id="two parents",
        ),
        pytest.param("-S", ["QueryRetrieveLevel=STUDY", "StudyDate=2024*"], id="wildcard in date"),
    ],
)
def test_an_identifier_outside_the_model_is_refused_with_a900(archive, model, keys):
    answer = findscu(archive, model, *keys)
    assert answer.statuses == [IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS]
    assert answer.matches == []
    assert answer.error_comment


# --------------------------------------------------------------------------------------------
# pynetdicom as the peer


def pynetdicom_find(daemon: RunningDaemon, model: str, identifier: Dataset) -> list[tuple]:
    """Every (status, identifier) pynetdicom's ``send_c_find`` yields, on its own association."""
    ae = AE(ae_title="PYNETDICOM")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(model)
    assoc = ae.associate(LOCALHOST, daemon.port, ae_title=daemon.ae_title)
    assert assoc.is_established
    try:
        return [(status.Status, found) for status, found in assoc.send_c_find(identifier, model)]
    finally:
        assoc.release()


def test_pynetdicom_finds_studies_in_study_root(archive):
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.PatientID = "DOE-JA"
    identifier.StudyInstanceUID = ""
    identifier.StudyDate = ""
    identifier.ModalitiesInStudy = ""
    responses = pynetdicom_find(archive, StudyRootQueryRetrieveInformationModelFind, identifier)
    assert [status for status, _ in responses] == [PENDING, PENDING, SUCCESS]
    found = {STUDY_KEYS[match.StudyInstanceUID]: match for _, match in responses[:-1]}
    assert set(found) == {"abdomen", "follow-up"}
    assert sorted(found["abdomen"].ModalitiesInStudy) == ["CT", "MR"]
    assert found["follow-up"].StudyDate == "20240120"


def test_pynetdicom_finds_a_utf8_name_in_patient_root(archive):
    identifier = Dataset()
    identifier.SpecificCharacterSet = "ISO_IR 192"
    identifier.QueryRetrieveLevel = "PATIENT"
    identifier.PatientID = ""
    identifier.PatientName = "Ива*"
    responses = pynetdicom_find(archive, PatientRootQueryRetrieveInformationModelFind, identifier)
    assert [status for status, _ in responses] == [PENDING, SUCCESS]
    match = responses[0][1]
    assert (match.PatientID, str(match.PatientName)) == ("CYRILLIC", "Иванов^Иван")


# --------------------------------------------------------------------------------------------
# The case-insensitive option

FOLDED_NAMES = (
    Patient("CI-1", "Doe^John", "ISO_IR 100", "19700101"),
    Patient("CI-2", "doe^john", "ISO_IR 100", "19700101"),
    Patient("CI-3", "DOE^JOHN", "ISO_IR 100", "19700101"),
    Patient("CI-4", "Müller^Jürgen", "ISO_IR 100", "19700101"),
    Patient("CI-5", "MÜLLER^JÜRGEN", "ISO_IR 192", "19700101", by_pynetdicom=True),
    Patient("CI-6", "Dolan^Jo", "ISO_IR 100", "19700101"),
)


@pytest.fixture(scope="module")
def case_insensitive_archive(
    tmp_path_factory: pytest.TempPathFactory, module_daemons: list[RunningDaemon]
) -> RunningDaemon:
    """A daemon whose archive matches names ignoring case, holding names in several cases."""
    series = []
    for patient in FOLDED_NAMES:
        study = Study(f"ci-{patient.id}", patient, "20240101", "120000", patient.id, "CI")
        series.append(Series(f"ci-{patient.id}", study, "CT", 1, "CI", "120000", CTImageStorage))
    return start_archive(
        module_daemons,
        tmp_path_factory.mktemp("case-insensitive"),
        series,
        case_insensitive_names=True,
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param("doe^john", {"CI-1", "CI-2", "CI-3"}, id="lower"),
        pytest.param("DOE^John", {"CI-1", "CI-2", "CI-3"}, id="mixed"),
        pytest.param("do*", {"CI-1", "CI-2", "CI-3", "CI-6"}, id="star"),
        pytest.param("D?E^*", {"CI-1", "CI-2", "CI-3"}, id="question mark"),
        pytest.param("müller^jürgen", {"CI-4", "CI-5"}, id="accented"),
        pytest.param(
            "\uff44\uff4f\uff45^\uff4a\uff4f\uff48\uff4e",  # "doe^john" in full-width forms
            {"CI-1", "CI-2", "CI-3"},
            id="full-width forms",
        ),
    ],
)
def test_case_insensitive_names_when_configured(case_insensitive_archive, name, expected):
    answer = findscu(
        case_insensitive_archive,
        "-P",
        *patient_query("SpecificCharacterSet=ISO_IR 192", f"PatientName={name}".encode()),
    )
    assert_success(answer)
    assert set(answer.values("PatientID")) == expected


def test_names_are_case_sensitive_by_default(archive):
    answer = findscu(archive, "-P", *patient_query("PatientName=doe^john"))
    assert answer.values("PatientID") == ["DOE-LOW"]

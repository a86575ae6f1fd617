"""``dicomd find`` against dcmtk's dcmqrscp and wlmscpfs, and a pynetdicom SCP that misbehaves."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pynetdicom import evt

from dicomd.uids import STUDY_ROOT_FIND
from tests.support.daemons import run_dicomd
from tests.support.dcmtk import DcmtkPeer, dcmtk_peer, run_dcmtk
from tests.support.processes import LOCALHOST
from tests.support.pynetdicom_peers import pynetdicom_scp

ARCHIVE_AE = "ARCHIVE"
WORKLIST_AE = "WORKLIST"
CT_STUDY = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"
MR_STUDY = "1.3.6.1.4.1.5962.1.2.4.20040826185059.5457"

DCMQRSCP_CONFIG = """\
NetworkTCPPort  = 104
MaxPDUSize      = 16384
MaxAssociations = 16

HostTable BEGIN
HostTable END

VendorTable BEGIN
VendorTable END

AETable BEGIN
{ae_title}   {storage}   RW (200, 1024mb)   ANY
AETable END
"""


@pytest.fixture
def dcmqrscp(tmp_path: Path) -> Iterator[DcmtkPeer]:
    """dcmqrscp serving one CT and one MR study (pydicom's CT_small and MR_small) as ARCHIVE."""
    storage = tmp_path / "storage"
    storage.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(get_testdata_file(name), storage / name)
    indexed = run_dcmtk("dcmqridx", str(storage), *(str(p) for p in sorted(storage.iterdir())))
    assert indexed.returncode == 0, indexed.stderr
    config = tmp_path / "dcmqrscp.cfg"
    config.write_text(DCMQRSCP_CONFIG.format(ae_title=ARCHIVE_AE, storage=storage))
    with dcmtk_peer("dcmqrscp", tmp_path, "-c", str(config)) as peer:
        yield peer


def worklist_item(patient_id: str, name: str, modality: str, station: str) -> Dataset:
    """A worklist entry with every attribute wlmscpfs insists on."""
    step = Dataset()
    step.Modality = modality
    step.ScheduledStationAETitle = station
    step.ScheduledProcedureStepStartDate = "20240301"
    step.ScheduledProcedureStepStartTime = "080000"
    step.ScheduledPerformingPhysicianName = "Johnson"
    step.ScheduledProcedureStepDescription = "Exam"
    step.ScheduledProcedureStepID = f"SPS{patient_id}"
    step.ScheduledStationName = "Station"
    step.ScheduledProcedureStepLocation = "B1"
    step.PreMedication = ""
    step.CommentsOnTheScheduledProcedureStep = ""
    step.RequestedContrastAgent = ""
    item = Dataset()
    item.file_meta = FileMetaDataset()
    item.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    item.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.31"
    item.file_meta.MediaStorageSOPInstanceUID = f"1.2.3.4.{patient_id}"
    item.SpecificCharacterSet = "ISO_IR 100"
    item.AccessionNumber = f"A{patient_id}"
    item.PatientName = name
    item.PatientID = patient_id
    item.PatientBirthDate = "19700101"
    item.PatientSex = "O"
    item.StudyInstanceUID = f"1.2.3.{patient_id}"
    item.RequestingPhysician = "Smith"
    item.RequestedProcedureDescription = "Exam"
    item.RequestedProcedureID = f"RP{patient_id}"
    item.RequestedProcedurePriority = "LOW"
    item.ScheduledProcedureStepSequence = Sequence([step])
    return item


@pytest.fixture
def wlmscpfs(tmp_path: Path) -> Iterator[DcmtkPeer]:
    """dcmtk's worklist SCP with two scheduled steps (MR and CT), as WORKLIST."""
    entries = tmp_path / "worklists" / WORKLIST_AE
    entries.mkdir(parents=True)
    (entries / "lockfile").touch()
    worklist_item("1", "Doe^Jane", "MR", "MR1").save_as(
        entries / "one.wl", enforce_file_format=True
    )
    worklist_item("2", "Roe^Rick", "CT", "CT1").save_as(
        entries / "two.wl", enforce_file_format=True
    )
    with dcmtk_peer("wlmscpfs", tmp_path, "-dfp", str(tmp_path / "worklists")) as peer:
        yield peer


def find(port: int, *arguments: str, called: str = ARCHIVE_AE):
    return run_dicomd("find", "-aec", called, *arguments, LOCALHOST, str(port))


def test_a_study_query_lists_every_study_with_the_keys_asked_for(dcmqrscp: DcmtkPeer) -> None:
    result = find(dcmqrscp.port, "-k", "PatientID", "-k", "StudyDate", "-k", "StudyInstanceUID")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == [
        "PatientID  StudyDate  StudyInstanceUID",
        "---------  ---------  -------------------------------------------",
    ]
    assert sorted(lines[2:]) == [
        f"1CT1       20040119   {CT_STUDY}",
        f"4MR1       20040826   {MR_STUDY}",
    ]
    assert result.stderr == "2 matches\n"


def test_without_keys_a_study_query_asks_for_the_usual_columns(dcmqrscp: DcmtkPeer) -> None:
    result = find(dcmqrscp.port)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].split() == [
        "PatientName",
        "PatientID",
        "StudyDate",
        "AccessionNumber",
        "ModalitiesInStudy",
        "StudyDescription",
        "StudyInstanceUID",
    ]
    assert result.stderr == "2 matches\n"


@pytest.mark.parametrize(
    ("key", "patient_id"),
    [
        ("PatientName=*CT1", "1CT1"),
        ("StudyDate=20040801-", "4MR1"),
        ("StudyDate=-20040201", "1CT1"),
        (f"StudyInstanceUID={MR_STUDY}", "4MR1"),
    ],
)
def test_matching_keys_select_studies(dcmqrscp: DcmtkPeer, key: str, patient_id: str) -> None:
    result = find(dcmqrscp.port, "--json", "-k", key, "-k", "PatientID")

    assert result.returncode == 0, result.stderr
    assert [match["00100020"]["Value"] for match in json.loads(result.stdout)] == [[patient_id]]
    assert result.stderr == "1 match\n"


def test_a_key_given_by_its_tag(dcmqrscp: DcmtkPeer) -> None:
    result = find(dcmqrscp.port, "-k", "0010,0020=4MR1", "-k", "(0008,0020)")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "PatientID  StudyDate",
        "---------  ---------",
        "4MR1       20040826",
    ]


def test_the_patient_root_model_queries_patients(dcmqrscp: DcmtkPeer) -> None:
    result = find(dcmqrscp.port, "-P", "-k", "PatientID", "-k", "PatientSex")

    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()[2:]) == ["1CT1       O", "4MR1       F"]


def test_a_series_query_under_one_study(dcmqrscp: DcmtkPeer) -> None:
    result = find(
        dcmqrscp.port, "-L", "series", "-k", f"StudyInstanceUID={CT_STUDY}", "-k", "Modality"
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[2:] == [f"{CT_STUDY}  CT"]
    assert result.stderr == "1 match\n"


def test_json_output_is_an_array_of_dicom_json_models(dcmqrscp: DcmtkPeer) -> None:
    result = find(dcmqrscp.port, "--json", "-k", "PatientID", "-k", "PatientName")

    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert sorted(match["00100020"]["Value"][0] for match in document) == ["1CT1", "4MR1"]
    assert all(match["00100020"]["vr"] == "LO" for match in document)
    assert all(match["00080052"] == {"vr": "CS", "Value": ["STUDY"]} for match in document)
    assert result.stderr == "2 matches\n"


def test_a_failure_status_is_one_line_with_its_meaning(dcmqrscp: DcmtkPeer) -> None:
    """dcmqrscp cannot answer an image-level query without the unique keys above it."""
    result = find(dcmqrscp.port, "-L", "IMAGE", "-k", "SOPInstanceUID")

    assert result.returncode == 1
    assert result.stderr.splitlines() == ["dicomd find: C-FIND failed: 0xC000 unable to process"]


def test_a_model_the_peer_does_not_offer_is_named(dcmqrscp: DcmtkPeer) -> None:
    result = find(dcmqrscp.port, "-W")

    assert result.returncode == 1
    assert result.stderr == (
        f"dicomd find: {ARCHIVE_AE} at {LOCALHOST}:{dcmqrscp.port} does not accept"
        " Modality Worklist Information Model - FIND (1.2.840.10008.5.1.4.31)\n"
    )


def test_an_unknown_called_ae_title_is_rejected(dcmqrscp: DcmtkPeer) -> None:
    result = find(dcmqrscp.port, called="ELSEWHERE")

    assert result.returncode == 1
    assert result.stderr == (
        "dicomd find: association rejected by ELSEWHERE:"
        " called AE title not recognized (permanent, service user, reason 7)\n"
    )


def test_a_worklist_query_reaches_into_the_scheduled_step(wlmscpfs: DcmtkPeer) -> None:
    result = find(
        wlmscpfs.port,
        "-W",
        "-k",
        "PatientName",
        "-k",
        "ScheduledProcedureStepSequence[0].Modality=CT",
        "-k",
        "ScheduledProcedureStepSequence[0].ScheduledStationAETitle",
        called=WORKLIST_AE,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "PatientName  Modality  ScheduledStationAETitle",
        "-----------  --------  -----------------------",
        "Roe^Rick     CT        CT1",
    ]
    assert result.stderr == "1 match\n"


def test_a_worklist_query_without_keys_shows_the_scheduled_steps(wlmscpfs: DcmtkPeer) -> None:
    result = find(wlmscpfs.port, "-W", called=WORKLIST_AE)

    assert result.returncode == 0, result.stderr
    rows = sorted(line.split() for line in result.stdout.splitlines()[2:])
    assert rows == [
        ["Doe^Jane", "1", "A1", "MR", "MR1", "20240301"],
        ["Roe^Rick", "2", "A2", "CT", "CT1", "20240301"],
    ]


def test_a_level_with_the_worklist_model_is_a_usage_error() -> None:
    result = run_dicomd("find", "-W", "-L", "STUDY", LOCALHOST, "104")

    assert result.returncode == 2
    assert result.stderr == "dicomd find: -L does not apply to the worklist model (-W)\n"


def test_a_bad_key_is_a_usage_error() -> None:
    result = run_dicomd("find", "-k", "PatientNme=X", LOCALHOST, "104")

    assert result.returncode == 2
    assert "PatientNme=X: unknown keyword 'PatientNme' (did you mean PatientName?)" in result.stderr


def test_matches_and_the_error_comment_of_a_failure_are_shown() -> None:
    def handler(event):
        match = Dataset()
        match.QueryRetrieveLevel = "STUDY"
        match.PatientID = "P1"
        yield 0xFF00, match
        failure = Dataset()
        failure.Status = 0xA700
        failure.ErrorComment = "disk full"
        yield failure, None

    with pynetdicom_scp([STUDY_ROOT_FIND], [(evt.EVT_C_FIND, handler)]) as port:
        result = run_dicomd("find", "-k", "PatientID", LOCALHOST, str(port))

    assert result.returncode == 1
    assert result.stdout.splitlines() == ["PatientID", "---------", "P1"]
    assert result.stderr == "dicomd find: C-FIND failed: 0xA700 out of resources: disk full\n"


def test_a_peer_that_does_not_answer_the_query_times_out() -> None:
    def handler(event):
        time.sleep(3)
        yield 0x0000, None

    with pynetdicom_scp([STUDY_ROOT_FIND], [(evt.EVT_C_FIND, handler)]) as port:
        result = run_dicomd("find", "-to", "0.5", LOCALHOST, str(port))

    assert result.returncode == 1
    assert result.stderr == (
        "dicomd find: timed out after 0.5 s waiting for the C-FIND responses"
        f" from ANY-SCP at {LOCALHOST}:{port}\n"
    )

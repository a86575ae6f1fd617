"""QIDO-RS against the real daemon: dicomweb-client and curl search what storescu stored.

One daemon per module, with the archive and a ``web:`` listener, holds a
few patients' studies sent by dcmtk ``storescu``.  dicomweb-client searches
every level (within a parent and across the archive) with filters, paging
and included fields; each answer is compared with what ``findscu`` answers
for the same query.  curl checks what a client sees of the HTTP side:
content negotiation, the 400s and the empty answer.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset, dcmread, dcmwrite
from requests import HTTPError

from tests.support.archive import ArchiveView, archive_plugin
from tests.support.daemons import RunningDaemon
from tests.support.datasets import ct_dataset
from tests.support.dcmtk import run_dcmtk
from tests.support.processes import LOCALHOST
from tests.support.web import curl, dicomweb_url, start_web_daemon

pytestmark = pytest.mark.usefixtures("report_module_daemons")

PREFIX = "1.2.826.0.1.3680043.10.1414."
STUDIES = [
    # (study, patient name, patient id, date, modality, series count, instances per series)
    (1, "Doe^John", "DOE-J", "20200115", "CT", 2, 3),
    (2, "Doe^Jane", "DOE-JA", "20200620", "MR", 1, 2),
    (3, "Roe^Richard", "ROE-R", "20210301", "CT", 1, 4),
]


def uid(*parts: int) -> str:
    return PREFIX + ".".join(map(str, parts))


def instances() -> list[Dataset]:
    made = []
    for study, name, patient, date, modality, series_count, per_series in STUDIES:
        for series in range(1, series_count + 1):
            for number in range(1, per_series + 1):
                ds = ct_dataset(uid(study), uid(study, series), number, rows=8, columns=8)
                ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid(
                    study, series, number
                )
                ds.PatientName, ds.PatientID, ds.StudyDate = name, patient, date
                ds.Modality, ds.SeriesNumber = modality, series
                ds.StudyDescription = f"Study {study}"
                made.append(ds)
    return made


@pytest.fixture(scope="module")
def web_archive(
    tmp_path_factory: pytest.TempPathFactory, module_daemons: list[RunningDaemon]
) -> RunningDaemon:
    """A daemon with the archive and a web listener, holding every instance of `instances`."""
    folder = tmp_path_factory.mktemp("qido")
    daemon = start_web_daemon(folder, {"plugins": [archive_plugin()]})
    module_daemons.append(daemon)
    sent = folder / "sent"
    sent.mkdir()
    expected = set()
    for ds in instances():
        dcmwrite(sent / f"{ds.SOPInstanceUID}.dcm", ds, enforce_file_format=True)
        expected.add(ds.SOPInstanceUID)
    stored = run_dcmtk(
        "storescu", "-aec", daemon.ae_title, "+sd", "+r", LOCALHOST, str(daemon.port), str(sent),
        timeout=120,
    )  # fmt: skip
    assert stored.returncode == 0, stored.stderr
    assert set(ArchiveView(folder / daemon.config["storage"]["path"]).indexed()) == expected
    return daemon


@pytest.fixture
def client(web_archive: RunningDaemon) -> DICOMwebClient:
    return DICOMwebClient(dicomweb_url(web_archive))


def findscu(daemon: RunningDaemon, level: str, *keys: str) -> list[Dataset]:
    """The matches ``findscu`` receives for a Study Root query at ``level``."""
    with tempfile.TemporaryDirectory() as folder:
        arguments = ["-S", "-X", "-od", folder, "-aec", daemon.ae_title]
        for key in (f"QueryRetrieveLevel={level}", *keys):
            arguments += ["-k", key]
        done = run_dcmtk("findscu", *arguments, LOCALHOST, str(daemon.port))
        assert done.returncode == 0, done.stdout + done.stderr
        return [dcmread(path) for path in sorted(Path(folder).glob("rsp*.dcm"))]


def values(answers: Sequence[dict[str, Any]], tag: str) -> list[Any]:
    """Each answer's first value of ``tag`` (a PN as its alphabetic group)."""
    found = []
    for answer in answers:
        value = (answer.get(tag, {}).get("Value") or [None])[0]
        found.append(value["Alphabetic"] if isinstance(value, dict) else value)
    return found


def path_of(url: str) -> str:
    """The path of a RetrieveURL.  dicomweb-client sends ``Host`` without the port, so the
    URLs it is answered name the scheme's default port (curl's show the whole URL)."""
    return urlsplit(url).path


# --------------------------------------------------------------------------------------------
# dicomweb-client, each answer checked against findscu's


def test_studies_with_filters_as_findscu_finds_them(client, web_archive):
    everything = client.search_for_studies()
    does = client.search_for_studies(search_filters={"PatientName": "Doe*"})
    in_2020 = client.search_for_studies(search_filters={"StudyDate": "20200101-20201231"})
    by_tag = client.search_for_studies(search_filters={"00100020": "ROE-R"})

    assert sorted(values(everything, "0020000D")) == [uid(1), uid(2), uid(3)]
    for answers, key in [
        (does, "PatientName=Doe*"),
        (in_2020, "StudyDate=20200101-20201231"),
        (by_tag, "PatientID=ROE-R"),
    ]:
        returned = ["StudyInstanceUID", "PatientName", "StudyDate"]
        returned += ["NumberOfStudyRelatedInstances", "ModalitiesInStudy"]
        keyword = key.partition("=")[0]
        found = findscu(web_archive, "STUDY", key, *(k for k in returned if k != keyword))
        assert len(answers) == len(found)
        assert sorted(values(answers, "0020000D")) == sorted(m.StudyInstanceUID for m in found)
        by_study = {answer["0020000D"]["Value"][0]: answer for answer in answers}
        for match in found:
            answer = by_study[match.StudyInstanceUID]
            assert values([answer], "00100010") == [str(match.PatientName)]
            assert values([answer], "00080020") == [match.StudyDate]
            assert values([answer], "00201208") == [int(match.NumberOfStudyRelatedInstances)]
            assert values([answer], "00080061") == [match.ModalitiesInStudy]
            assert path_of(values([answer], "00081190")[0]) == (
                f"/dicom-web/studies/{match.StudyInstanceUID}"
            )


def test_series_of_a_study_and_of_the_archive(client, web_archive):
    of_study = client.search_for_series(uid(1))
    ct_series = client.search_for_series(search_filters={"Modality": "CT"})

    found = findscu(web_archive, "SERIES", f"StudyInstanceUID={uid(1)}", "SeriesInstanceUID")
    assert sorted(values(of_study, "0020000E")) == sorted(m.SeriesInstanceUID for m in found)
    assert sorted(values(ct_series, "0020000E")) == [uid(1, 1), uid(1, 2), uid(3, 1)]
    assert values(ct_series, "00100020").count("DOE-J") == 2  # study keys across the archive
    assert values(of_study, "00201209") == [3, 3]  # NumberOfSeriesRelatedInstances


def test_instances_of_a_series_of_a_study_and_of_the_archive(client, web_archive):
    of_series = client.search_for_instances(uid(3), uid(3, 1))
    of_study = client.search_for_instances(uid(1))
    listed = client.search_for_instances(
        search_filters={"SOPInstanceUID": f"{uid(2, 1, 1)},{uid(3, 1, 4)}"}
    )

    found = findscu(
        web_archive, "IMAGE", f"SeriesInstanceUID={uid(3, 1)}", "SOPInstanceUID", "InstanceNumber"
    )
    assert sorted(values(of_series, "00080018")) == sorted(m.SOPInstanceUID for m in found)
    assert sorted(values(of_series, "00200013")) == sorted(int(m.InstanceNumber) for m in found)
    assert path_of(values(of_series, "00081190")[0]).startswith(
        f"/dicom-web/studies/{uid(3)}/series/{uid(3, 1)}/instances/"
    )
    assert len(of_study) == 6
    assert sorted(values(listed, "00080018")) == [uid(2, 1, 1), uid(3, 1, 4)]


def test_limit_offset_and_includefield(client):
    whole = values(client.search_for_instances(uid(1)), "00080018")
    pages = []
    for offset in range(0, len(whole), 4):
        page = client.search_for_instances(uid(1), limit=4, offset=offset)
        pages += values(page, "00080018")
    every = client.search_for_instances(uid(1), get_remaining=True)
    described = client.search_for_studies(fields=["StudyDescription", "00100040"])

    assert pages == whole
    assert values(every, "00080018") == whole
    assert sorted(values(described, "00081030")) == ["Study 1", "Study 2", "Study 3"]
    assert all("00100040" in answer for answer in described)


def test_nothing_found_is_an_empty_list(client):
    assert client.search_for_studies(search_filters={"PatientID": "NOBODY"}) == []


def test_a_bad_filter_is_an_http_400(client):
    with pytest.raises(HTTPError) as raised:
        client.search_for_studies(search_filters={"NoSuchAttribute": "1"})

    assert raised.value.response.status_code == 400
    assert "NoSuchAttribute" in raised.value.response.text


# --------------------------------------------------------------------------------------------
# curl


def test_curl_accept_negotiation_and_retrieve_urls_of_the_host_asked(web_archive):
    url = dicomweb_url(web_archive) + "/studies"

    status, headers, body = curl(url + f"?StudyInstanceUID={uid(2)}")
    assert (status, headers["content-type"]) == (200, "application/dicom+json")
    assert values(json.loads(body), "00081190") == [f"{url}/{uid(2)}"]
    assert curl(url, "-H", "Accept: application/json")[1]["content-type"] == "application/json"
    status, _, body = curl(url, "-H", "Accept: application/xml")
    assert status == 406
    assert body.count(b"\n") == 1


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("limit=-1", b"limit"),
        ("fuzzymatching=sometimes", b"fuzzymatching"),
        ("includefield=NotAnAttribute", b"includefield"),
        ("StudyDate=2020*", b"StudyDate"),
        ("%FF=1", b"parameter name"),
    ],
)
def test_curl_bad_queries_are_400_with_one_line(web_archive, query, parameter):
    status, headers, body = curl(f"{dicomweb_url(web_archive)}/studies?{query}")

    assert status == 400
    assert headers["content-type"].startswith("text/plain")
    assert parameter in body
    assert body.count(b"\n") == 1


@pytest.mark.parametrize(
    "query",
    [
        "PatientName=%C3%28",
        "PatientName=%00*",
        "StudyInstanceUID=" + "1." * 2000 + "1",
        "00100010=" + "*" * 2000,
        "StudyDate=99999999-00000000",
        "StudyTime=25",
        "limit=99999999999",
        "includefield=" + ",".join(["00100010"] * 500),
        "&&&=&=",
    ],
)
def test_curl_hostile_queries_are_answered_200_or_400(web_archive, query):
    status, _, body = curl(f"{dicomweb_url(web_archive)}/studies?{query}")

    assert status in (200, 400), body
    if status == 200:
        assert isinstance(json.loads(body), list)


def test_curl_no_match_and_fuzzy_warning(web_archive):
    status, headers, body = curl(
        f"{dicomweb_url(web_archive)}/studies?PatientName=doe*&fuzzymatching=true"
    )

    assert (status, json.loads(body)) == (200, [])
    assert headers["warning"].startswith('299 dicomd: "The fuzzymatching parameter')


def test_the_daemon_logged_no_traceback(web_archive):
    assert "Traceback" not in web_archive.output.text()

"""The SQLite index: records made from real files, upserts, removal, batches of writes,
duplicates refused by the unique constraint, and its schema's migrations.

The tests that take the ``index`` fixture and read through `index_rows` run against
PostgreSQL too (tests/e2e/test_postgres_index.py)."""

from __future__ import annotations

import dataclasses
import errno
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from pydicom import Dataset, dcmread
from pydicom.data import get_charset_files, get_testdata_file
from zope.interface.verify import verifyObject

from dicomd.archive.dialects import SQLITE
from dicomd.archive.handler import ArchiveHandler
from dicomd.archive.index import (
    SCHEMA_VERSION,
    ArchiveIndex,
    DuplicateInstance,
    IndexClosed,
    adding,
    record_from_dataset,
)
from dicomd.archive.migrations import MIGRATIONS, Migration, SchemaTooNew, migrate
from dicomd.interfaces import IArchiveIndex
from tests.support.archive import INTEGRITY_ERRORS, index_rows
from tests.support.received import ct_small, record

CT_SMALL = get_testdata_file("CT_small.dcm")


def written_and_read(tmp_path: Path, ds: Dataset, name: str) -> Dataset:
    """``ds`` through a real file: encoded with its Specific Character Set, decoded back."""
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return dcmread(path, stop_before_pixels=True)


@pytest.fixture
def index(tmp_path: Path) -> Iterator[ArchiveIndex]:
    opened = ArchiveIndex(tmp_path / "index.sqlite")
    opened.open()
    yield opened
    opened.close()


query = index_rows


def test_a_record_holds_every_level_of_ct_small() -> None:
    made = record(received_at=None)
    assert dataclasses.asdict(made) | {"received_at": None} == {
        "PatientID": "1CT1",
        "IssuerOfPatientID": "",
        "PatientName": "CompressedSamples^CT1",
        "PatientBirthDate": None,
        "PatientSex": "O",
        "StudyInstanceUID": "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322",
        "StudyDate": "20040119",
        "StudyTime": "072730",
        "AccessionNumber": None,
        "StudyID": "1CT1",
        "StudyDescription": "e+1",
        "ReferringPhysicianName": None,
        "SeriesInstanceUID": "1.3.6.1.4.1.5962.1.3.1.1.20040119072730.12322",
        "Modality": "CT",
        "SeriesNumber": 1,
        "SeriesDescription": None,
        "BodyPartExamined": None,
        "SeriesDate": "19970430",
        "SeriesTime": "112749",
        "SOPInstanceUID": "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322",
        "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
        "InstanceNumber": 1,
        "TransferSyntaxUID": "1.2.840.10008.1.2.1",
        "SpecificCharacterSet": "ISO_IR 100",
        "path": "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322.dcm",
        "size": 1234,
        "received_at": None,
        "calling_ae_title": "CT01",
    }


def test_received_at_is_utc_iso() -> None:
    made = record_from_dataset(
        dcmread(CT_SMALL),
        path="x",
        size=1,
        calling_ae_title="A",
        received_at=datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC),
    )
    assert made.received_at == "2024-05-06T07:08:09+00:00"


def test_a_record_needs_the_sop_uids() -> None:
    ds = dcmread(CT_SMALL)
    del ds.SOPClassUID
    with pytest.raises(ValueError, match="no SOPClassUID"):
        record_from_dataset(ds, path="x", size=1, calling_ae_title="A")


def test_instances_without_study_and_series_uids_get_rows_of_their_own(
    index: ArchiveIndex,
) -> None:
    for number in (1, 2):
        index.add(
            record(
                SOPInstanceUID=f"1.2.3.{number}",
                StudyInstanceUID=None,
                SeriesInstanceUID=None,
                path=f"{number}.dcm",
            )
        )
    assert query(index, "SELECT count(*) FROM studies WHERE StudyInstanceUID IS NULL") == [(2,)]
    assert query(index, "SELECT count(*) FROM series WHERE SeriesInstanceUID IS NULL") == [(2,)]


def test_a_name_in_latin_1_and_in_utf_8_is_stored_as_the_same_unicode(
    index: ArchiveIndex, tmp_path: Path
) -> None:
    written = {}
    for charset, uid in (("ISO_IR 100", "1.2.3.100"), ("ISO_IR 192", "1.2.3.192")):
        ds = dcmread(CT_SMALL)
        ds.SpecificCharacterSet = charset
        ds.PatientName = "Müller^Jürgen"
        ds.PatientID = charset
        ds.StudyDescription = "Schädel nativ"
        ds.SOPInstanceUID = ds.StudyInstanceUID = ds.SeriesInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        index.add(record(written_and_read(tmp_path, ds, uid)))
        written[charset] = (tmp_path / uid).read_bytes()

    assert "Müller".encode("latin-1") in written["ISO_IR 100"]
    assert "Müller".encode() in written["ISO_IR 192"]
    assert (
        query(
            index,
            "SELECT PatientName, StudyDescription FROM patients"
            " JOIN studies ON patient_pk = patients.pk ORDER BY PatientID",
        )
        == [("Müller^Jürgen", "Schädel nativ")] * 2
    )
    assert query(index, "SELECT SpecificCharacterSet FROM instances ORDER BY 1") == [
        ("ISO_IR 100",),
        ("ISO_IR 192",),
    ]
    assert query(index, "SELECT count(*) FROM patients WHERE PatientName = ?", "Müller^Jürgen") == [
        (2,)
    ]


def test_a_japanese_name_keeps_its_three_groups(index: ArchiveIndex) -> None:
    ds = dcmread(get_charset_files("chrH31.dcm")[0], stop_before_pixels=True)
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        setattr(ds, keyword, "1.2.3.31")
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    index.add(record(ds))

    assert query(index, "SELECT PatientName FROM patients") == [
        ("Yamada^Tarou=山田^太郎=やまだ^たろう",)
    ]
    assert query(index, "SELECT SpecificCharacterSet FROM instances") == [("\\ISO 2022 IR 87",)]


def test_later_instances_fill_and_update_but_never_erase(index: ArchiveIndex) -> None:
    first = record(StudyDescription=None, AccessionNumber="A1", PatientBirthDate=None)
    index.add(first)
    second = dataclasses.replace(
        first,
        SOPInstanceUID="1.2.3.2",
        path="second.dcm",
        StudyDescription="CT head",
        AccessionNumber=None,
        PatientBirthDate="19700101",
        PatientName="Corrected^Name",
    )
    index.add(second)

    assert query(index, "SELECT StudyDescription, AccessionNumber FROM studies") == [
        ("CT head", "A1")
    ]
    assert query(index, "SELECT PatientName, PatientBirthDate FROM patients") == [
        ("Corrected^Name", "19700101")
    ]
    assert query(index, "SELECT count(*) FROM series") == [(1,)]
    assert query(index, "SELECT count(*) FROM instances") == [(2,)]


def test_a_patient_is_id_and_issuer(index: ArchiveIndex) -> None:
    index.add(record(IssuerOfPatientID="HOSPITAL-A"))
    index.add(
        record(
            IssuerOfPatientID="HOSPITAL-B",
            SOPInstanceUID="1.2.3.2",
            StudyInstanceUID="1.2.3.20",
            SeriesInstanceUID="1.2.3.21",
            path="b.dcm",
        )
    )
    assert query(index, "SELECT PatientID, IssuerOfPatientID FROM patients ORDER BY 2") == [
        ("1CT1", "HOSPITAL-A"),
        ("1CT1", "HOSPITAL-B"),
    ]


def test_replacing_an_instance_moves_it_and_prunes_what_it_left_empty(index: ArchiveIndex) -> None:
    index.add(record())
    index.add(record(PatientID="OTHER", StudyInstanceUID="9.9", SeriesInstanceUID="9.9.1"))

    assert query(index, "SELECT PatientID FROM patients") == [("OTHER",)]
    assert query(index, "SELECT StudyInstanceUID FROM studies") == [("9.9",)]
    assert query(index, "SELECT SeriesInstanceUID FROM series") == [("9.9.1",)]
    assert query(index, "SELECT count(*) FROM instances") == [(1,)]


def test_lookup_paths_and_remove(index: ArchiveIndex) -> None:
    first = record()
    second = record(SOPInstanceUID="1.2.3.2", SeriesInstanceUID="1.2.3.20", path="a/b.dcm")
    index.add(first)
    index.add(second)

    assert index.lookup(first.SOPInstanceUID) == first.path
    assert index.lookup("1.2.404") is None
    assert sorted(index.paths()) == sorted([first.path, "a/b.dcm"])

    assert index.remove(first.SOPInstanceUID)
    assert not index.remove(first.SOPInstanceUID)
    assert index.lookup(first.SOPInstanceUID) is None
    assert query(index, "SELECT SeriesInstanceUID FROM series") == [("1.2.3.20",)]

    assert index.remove_paths(["a/b.dcm", "never/there.dcm"]) == 1
    for table in ("instances", "series", "studies", "patients"):
        assert query(index, f"SELECT count(*) FROM {table}") == [(0,)]


def test_a_stray_nul_in_a_text_value_is_dropped_on_every_engine(index: ArchiveIndex) -> None:
    """No text VR allows NUL, and PostgreSQL's text cannot hold one: dropping it keeps a
    peer's stray NUL from failing a store on one engine and not the other."""
    ds = ct_small(PatientName="Doe\x00^John", StudyDescription="\x00")
    index.add(record_from_dataset(ds, path="a.dcm", size=1, calling_ae_title="MODALITY"))

    assert query(index, "SELECT PatientName FROM patients") == [("Doe^John",)]
    assert query(index, "SELECT StudyDescription FROM studies") == [(None,)]
    assert index.holder("a.dcm") == ds.SOPInstanceUID
    assert index.holder("b.dcm") is None


def test_the_database_is_wal_with_normal_synchronous_commits(index: ArchiveIndex) -> None:
    assert query(index, "PRAGMA journal_mode") == [("wal",)]
    writer = index._writer
    assert writer is not None
    assert writer.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL: files are the truth
    assert query(index, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


def test_an_archive_in_object_storage_flushes_each_sqlite_commit(tmp_path: Path) -> None:
    """Its instances are no files to index again after a power cut: a commit must last."""
    archive = ArchiveHandler(tmp_path, storage_url="s3://bucket/prefix")
    assert isinstance(archive.index, ArchiveIndex) and archive.index.durable_commits
    archive.index.open()
    try:
        writer = archive.index._writer
        assert writer is not None
        assert writer.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
    finally:
        archive.index.close()
    assert not ArchiveHandler(tmp_path / "files").index.durable_commits


def test_readers_are_read_only(index: ArchiveIndex) -> None:
    reader = index.connect_reader()
    try:
        with pytest.raises((sqlite3.OperationalError, psycopg.errors.ReadOnlySqlTransaction)):
            reader.execute("DELETE FROM instances")
    finally:
        reader.close()


def test_a_query_can_use_the_indexes(index: ArchiveIndex) -> None:
    for sql, wanted in (
        ("SELECT pk FROM patients WHERE PatientName = 'x'", "patients_by_name"),
        ("SELECT pk FROM patients WHERE PatientID = 'x'", "sqlite_autoindex_patients_1"),
        ("SELECT pk FROM studies WHERE StudyDate BETWEEN 'a' AND 'b'", "studies_by_date"),
        ("SELECT pk FROM studies WHERE AccessionNumber = 'x'", "studies_by_accession"),
        ("SELECT pk FROM studies WHERE patient_pk = 1", "studies_by_patient"),
        ("SELECT pk FROM series WHERE Modality = 'CT'", "series_by_modality"),
        ("SELECT pk FROM series WHERE study_pk = 1", "series_by_study"),
        ("SELECT pk FROM instances WHERE series_pk = 1", "instances_by_series"),
    ):
        plan = " ".join(str(row) for row in query(index, f"EXPLAIN QUERY PLAN {sql}"))
        assert wanted in plan, sql


def test_a_failing_write_fails_alone(index: ArchiveIndex) -> None:
    index.add(record())
    clash = record(SOPInstanceUID="1.2.3.2")  # a different instance at the same path

    with pytest.raises(INTEGRITY_ERRORS):
        index.add(clash)

    assert list(index.paths()) == [record().path]


def test_a_batch_of_writes_is_one_transaction_in_which_a_bad_write_fails_alone(
    index: ArchiveIndex,
) -> None:
    records = [
        record(SOPInstanceUID=f"1.2.3.{n}", SeriesInstanceUID=f"1.2.4.{n % 5}", path=f"{n}.dcm")
        for n in range(100)
    ]
    clash = record(SOPInstanceUID="1.2.3.x", path="7.dcm")  # another instance at a taken path

    outcomes = index.write(
        [adding(one) for one in records[:50]]
        + [adding(clash)]
        + [adding(one) for one in records[50:]]
    )

    assert index.commits == 1
    assert [outcome.error is None for outcome in outcomes] == [True] * 50 + [False] + [True] * 50
    assert isinstance(outcomes[50].error, INTEGRITY_ERRORS)
    assert query(index, "SELECT count(*) FROM instances") == [(100,)]
    assert query(index, "SELECT count(*) FROM series") == [(5,)]


def test_any_thread_may_write_and_close_the_write_connection(index: ArchiveIndex) -> None:
    with ThreadPoolExecutor(2) as others:
        added = [
            others.submit(index.add, record(SOPInstanceUID=f"1.2.3.{n}", path=f"{n}.dcm"))
            for n in range(20)
        ]
        for each in added:
            each.result()
        others.submit(index.close_writer).result()
    index.add(record())  # a new write connection, in this thread

    assert len(list(index.paths())) == 21


def test_a_single_writer_commits_each_add(index: ArchiveIndex) -> None:
    for n in range(5):
        index.add(record(SOPInstanceUID=f"1.2.3.{n}", path=f"{n}.dcm"))
    assert index.commits == 5


def test_committed_rows_survive_closing_and_reopening(tmp_path: Path) -> None:
    index = ArchiveIndex(tmp_path / "index.sqlite")
    index.open()
    index.add(record())
    index.close()
    index.open()
    try:
        assert list(index.paths()) == [record().path]
    finally:
        index.close()


def test_a_closed_index_refuses_work(tmp_path: Path) -> None:
    index = ArchiveIndex(tmp_path / "index.sqlite")
    with pytest.raises(IndexClosed):
        index.add(record())
    index.open()
    index.close()
    with pytest.raises(IndexClosed):
        index.add(record())
    with pytest.raises(IndexClosed):
        index.lookup("1.2.3")


def test_an_index_from_a_newer_dicomd_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    newer = sqlite3.connect(path)
    newer.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    newer.close()
    with pytest.raises(SchemaTooNew, match="schema version") as raised:
        ArchiveIndex(path).open()
    assert "\n" not in str(raised.value)


def test_a_full_database_is_an_os_error(index: ArchiveIndex) -> None:
    writer = index._writer
    assert writer is not None
    (pages,) = writer.execute("PRAGMA page_count").fetchone()
    writer.execute(f"PRAGMA max_page_count = {pages}")  # the index may not grow: it is full

    with pytest.raises(OSError) as raised:
        for n in range(100):
            index.add(record(SOPInstanceUID=f"1.2.3.{n}", path=f"{n}.dcm"))

    assert raised.value.errno == errno.ENOSPC
    assert isinstance(raised.value.__cause__, sqlite3.OperationalError)


def test_an_insert_that_may_not_replace_meets_the_unique_constraint(index: ArchiveIndex) -> None:
    index.apply(adding(record(), replace=False))
    again = record(path="again.dcm", StudyDescription="another copy")

    with pytest.raises(DuplicateInstance, match=again.SOPInstanceUID):
        index.apply(adding(again, replace=False))

    assert query(index, "SELECT path FROM instances") == [(record().path,)]
    assert query(index, "SELECT StudyDescription FROM studies") == [(record().StudyDescription,)]


def test_a_duplicate_in_a_batch_fails_alone(index: ArchiveIndex) -> None:
    first, other = record(), record(SOPInstanceUID="1.2.3.2", path="other.dcm")
    outcomes = index.write(
        [adding(first, replace=False), adding(first, replace=False), adding(other, replace=False)]
    )
    assert [type(outcome.error) for outcome in outcomes] == [
        type(None),
        DuplicateInstance,
        type(None),
    ]
    assert sorted(index.paths()) == sorted([first.path, other.path])


def test_an_archive_of_version_1_opens_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    index = ArchiveIndex(path)
    index.open()
    index.add(record())
    index.close()
    schema = _schema(path)

    index.open()
    index.close()

    assert _schema(path) == schema
    assert schema[0] == 1


def test_indexes_opening_one_new_database_at_once_create_its_schema_once(
    tmp_path: Path,
) -> None:
    path = tmp_path / "index.sqlite"
    indexes = [ArchiveIndex(path) for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(ArchiveIndex.open, indexes))
    try:
        indexes[0].add(record())
        assert [list(index.paths()) for index in indexes] == [[record().path]] * 4
    finally:
        for index in indexes:
            index.close()


def test_a_later_migration_is_applied_once_to_an_archive_of_an_earlier_version(
    tmp_path: Path,
) -> None:
    path = tmp_path / "index.sqlite"
    index = ArchiveIndex(path)
    index.open()
    index.add(record())
    index.close()
    later = (
        *MIGRATIONS,
        Migration(
            SCHEMA_VERSION + 1,
            lambda dialect: [dialect.ddl("ALTER TABLE instances ADD COLUMN note TEXT")],
        ),
    )
    for expected in (SCHEMA_VERSION, SCHEMA_VERSION + 1):
        connection = sqlite3.connect(path, isolation_level=None)
        try:
            assert migrate(connection, SQLITE, later) == expected
        finally:
            connection.close()

    assert _schema(path)[0] == SCHEMA_VERSION + 1
    assert query(index, "SELECT path, note FROM instances") == [(record().path, None)]
    with pytest.raises(SchemaTooNew, match=f"version {SCHEMA_VERSION + 1} is newer"):
        ArchiveIndex(path).open()


def _schema(path: Path) -> tuple[int, list[tuple[str, str]]]:
    connection = sqlite3.connect(path)
    try:
        (version,) = connection.execute("PRAGMA user_version").fetchone()
        return version, connection.execute("SELECT name, sql FROM sqlite_master").fetchall()
    finally:
        connection.close()


def test_the_index_provides_the_archive_index_contract(index: ArchiveIndex) -> None:
    assert verifyObject(IArchiveIndex, index)

"""The archive store handler, driven through its blocking work on real Part 10 files.

Instances are written the way the store service writes them (a Part 10 file
in ``<archive>/.incoming``) and handed to ``ArchiveHandler.archive``, which
takes the steps ``store`` takes, inline in the test's thread.  Concurrent
stores are in ``test_archive_service``.
"""

from __future__ import annotations

import dataclasses
import errno
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydicom import Dataset
from twisted.application.service import IService

from dicomd.archive import ArchiveHandler
from dicomd.archive.files import copy_durably
from dicomd.archive.query import QueryError
from dicomd.interfaces import FindQuery, IStoreHandler, Kept
from dicomd.uids import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    PATIENT_ROOT_FIND,
    STUDY_ROOT_FIND,
    STUDY_ROOT_MOVE,
)
from tests.support.received import CT_SMALL, ct_small, kept_path, opened, received, status_of
from tests.support.threads import DEADLINE, HeldNames, eventually, in_threads


def rows(handler: ArchiveHandler, sql: str, *parameters: object) -> list[tuple]:
    reader = handler.index.connect_reader()
    try:
        return reader.execute(sql, parameters).fetchall()
    finally:
        reader.close()


@pytest.fixture
def archive_path(tmp_path: Path) -> Path:
    return tmp_path / "archive"


@pytest.fixture
def open_archive(archive_path: Path) -> Iterator[ArchiveHandler]:
    handler = ArchiveHandler(archive_path)
    handler.open()
    yield handler
    handler.close()


def test_provides_store_handler_and_service() -> None:
    handler = ArchiveHandler("unused")
    assert IStoreHandler.providedBy(handler)
    assert IService.providedBy(handler)


def test_the_constructor_only_checks_options(tmp_path: Path) -> None:
    ArchiveHandler(tmp_path / "not-yet", threads=1, duplicates="reject")
    assert not (tmp_path / "not-yet").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"duplicates": "newest"}, "duplicates: 'newest' is not one of"),
        ({"layout": "{StudyInstanceUID}.dcm"}, "layout: "),
        ({"layout": "{Nonsense}/{SOPInstanceUID}"}, "layout: {Nonsense} is not a DICOM keyword"),
        ({"layout": "../{SOPInstanceUID}"}, "layout: "),
        ({"layout": 7}, "layout: expected a string"),
        ({"threads": 0}, "threads: "),
        ({"threads": True}, "threads: "),
        ({"threads": "8"}, "threads: "),
        ({"index": "db/index.sqlite"}, "index: "),
        ({"index": ""}, "index: "),
        ({"index": ".."}, "index: "),
        ({"path": ""}, "path: "),
        ({"path": 3}, "path: "),
        ({"flush": "sometimes"}, "flush: 'sometimes' is not one of"),
    ],
)
def test_bad_options_raise_value_error_naming_the_option(
    tmp_path: Path, options: dict, message: str
) -> None:
    arguments = {"path": tmp_path, **options}
    with pytest.raises(ValueError) as raised:
        ArchiveHandler(**arguments)
    assert str(raised.value).startswith(message)


def test_an_instance_lands_at_its_layout_path_with_identical_bytes(
    open_archive: ArchiveHandler, archive_path: Path
) -> None:
    ds = ct_small()
    instance = received(archive_path, ds, calling_ae_title="CT01")
    temporary = instance.path
    sent = temporary.read_bytes()

    answer = open_archive.archive(instance)

    final = archive_path / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
    assert answer == Kept(0x0000, final)
    assert final.read_bytes() == sent
    assert not temporary.exists()
    assert (
        open_archive.index.lookup(ds.SOPInstanceUID) == final.relative_to(archive_path).as_posix()
    )


def test_the_index_row_describes_the_instance(
    open_archive: ArchiveHandler, archive_path: Path
) -> None:
    ds = ct_small()
    instance = received(archive_path, ds, calling_ae_title="CT01")
    before = datetime.now(UTC)
    final = kept_path(open_archive.archive(instance))

    [row] = rows(
        open_archive,
        "SELECT SOPClassUID, InstanceNumber, TransferSyntaxUID, SpecificCharacterSet, path, size,"
        " received_at, calling_ae_title FROM instances WHERE SOPInstanceUID = ?",
        ds.SOPInstanceUID,
    )
    sop_class, number, syntax, charset, path, size, received_at, calling = row
    assert (sop_class, number, syntax, charset) == (
        "1.2.840.10008.5.1.4.1.1.2",
        1,
        "1.2.840.10008.1.2.1",
        "ISO_IR 100",
    )
    assert archive_path / path == final
    assert size == final.stat().st_size
    assert before <= datetime.fromisoformat(received_at) <= datetime.now(UTC)
    assert datetime.fromisoformat(received_at).utcoffset().total_seconds() == 0
    assert calling == "CT01"
    assert rows(
        open_archive,
        "SELECT PatientID, PatientName, StudyInstanceUID, StudyDate, Modality, SeriesNumber"
        " FROM instances JOIN series ON series.pk = series_pk JOIN studies ON studies.pk = study_pk"
        " JOIN patients ON patients.pk = patient_pk",
    ) == [
        ("1CT1", "CompressedSamples^CT1", ds.StudyInstanceUID, "20040119", "CT", 1),
    ]


def meta_then(body: bytes) -> bytes:
    """The preamble and File Meta Information of CT_small.dcm, then ``body`` as its data set."""
    raw = Path(CT_SMALL).read_bytes()
    meta_length = int.from_bytes(raw[140:144], "little")
    return raw[: 144 + meta_length] + body


UNREADABLE = {
    "not Part 10": b"this is not DICOM",
    "a sequence of garbage": meta_then(
        b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100"
        b"\x08\x00\x16\x00SQ\x00\x00\xff\xff\xff\xff" + b"garbage" * 5
    ),
}


@pytest.mark.parametrize("content", UNREADABLE.values(), ids=UNREADABLE.keys())
def test_a_file_that_does_not_parse_is_cannot_understand(
    open_archive: ArchiveHandler, archive_path: Path, content: bytes
) -> None:
    instance = received(archive_path, ct_small())
    instance.path.write_bytes(content)

    code, comment = status_of(open_archive.archive(instance))

    assert code == 0xC000
    assert comment.startswith("cannot read the data set")
    assert instance.path.is_file()
    assert instance.path.parent.name == ".incoming"
    assert list(open_archive.index.paths()) == []


@pytest.mark.parametrize("keyword", ["SOPInstanceUID", "SOPClassUID"])
def test_a_data_set_without_one_of_its_uids_is_cannot_understand(
    open_archive: ArchiveHandler, archive_path: Path, keyword: str
) -> None:
    command = ct_small()
    instance = received(
        archive_path,
        ct_small(**{keyword: None}),
        sop_class_uid=command.SOPClassUID,
        sop_instance_uid=command.SOPInstanceUID,
    )

    assert status_of(open_archive.archive(instance)) == (0xC000, f"the data set has no {keyword}")
    assert instance.path.is_file()


def test_a_truncated_data_set_is_cannot_understand(
    open_archive: ArchiveHandler, archive_path: Path
) -> None:
    instance = received(archive_path, ct_small())
    instance.path.write_bytes(meta_then(b"\x08\x00\x16\x00UI\x10\x001.2"))

    assert status_of(open_archive.archive(instance)) == (
        0xC000,
        "the data set has no SOPInstanceUID",
    )


@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID"])
def test_an_instance_without_study_or_series_uid_is_kept_and_indexed(
    open_archive: ArchiveHandler, archive_path: Path, keyword: str
) -> None:
    """Real files lack them; an archive keeps what it was sent."""
    first = received(archive_path, ct_small(**{keyword: ""}))
    second_ds = ct_small(**{keyword: None})
    second_ds.SOPInstanceUID = second_ds.SOPInstanceUID + ".2"
    second = received(archive_path, second_ds)
    kept = [kept_path(open_archive.archive(instance)) for instance in (first, second)]
    assert "_" in kept[0].relative_to(archive_path).parts
    assert sorted(open_archive.index.paths()) == sorted(
        str(path.relative_to(archive_path)) for path in kept
    )


def test_a_sop_class_other_than_the_command_s_is_a900(
    open_archive: ArchiveHandler, archive_path: Path
) -> None:
    instance = received(archive_path, ct_small(), sop_class_uid="1.2.840.10008.5.1.4.1.1.4")

    code, comment = status_of(open_archive.archive(instance))

    assert code == 0xA900
    assert "SOP Class UID" in comment
    assert instance.path.is_file()


def test_a_sop_instance_other_than_the_command_s_is_0117(
    open_archive: ArchiveHandler, archive_path: Path
) -> None:
    instance = received(archive_path, ct_small(), sop_instance_uid="1.2.3.4.5")

    code, comment = status_of(open_archive.archive(instance))

    assert code == 0x0117
    assert "SOP Instance UID" in comment
    assert instance.path.is_file()


def test_keep_first_warns_and_keeps_the_first_copy(
    open_archive: ArchiveHandler, archive_path: Path
) -> None:
    first = received(archive_path, ct_small(), calling_ae_title="FIRST")
    first_bytes = first.path.read_bytes()
    first_path = kept_path(open_archive.archive(first))
    second = received(archive_path, ct_small(PatientName="Other^Name"), calling_ae_title="SECOND")

    assert status_of(open_archive.archive(second)) == (
        0xB000,
        "duplicate SOP Instance UID; first copy kept",
    )
    assert second.path.is_file()
    assert first_path.read_bytes() == first_bytes
    assert rows(open_archive, "SELECT calling_ae_title FROM instances") == [("FIRST",)]
    assert rows(open_archive, "SELECT PatientName FROM patients") == [("CompressedSamples^CT1",)]


def test_overwrite_replaces_the_file_and_the_row(archive_path: Path) -> None:
    handler = opened(archive_path, duplicates="overwrite")
    try:
        first = received(archive_path, ct_small(), calling_ae_title="FIRST")
        first_path = kept_path(handler.archive(first))
        second = received(archive_path, ct_small(PatientName="New^Name"), calling_ae_title="SECOND")
        second_bytes = second.path.read_bytes()

        assert handler.archive(second) == Kept(0x0000, first_path)
        assert first_path.read_bytes() == second_bytes
        assert rows(handler, "SELECT calling_ae_title FROM instances") == [("SECOND",)]
        assert rows(handler, "SELECT PatientName FROM patients") == [("New^Name",)]
    finally:
        handler.close()


def test_overwrite_to_another_layout_path_removes_the_old_file(archive_path: Path) -> None:
    handler = opened(archive_path, duplicates="overwrite", layout="{PatientID}/{SOPInstanceUID}")
    try:
        first = received(archive_path, ct_small(PatientID="OLD"))
        first_path = kept_path(handler.archive(first))
        second = received(archive_path, ct_small(PatientID="NEW"))

        assert handler.archive(second) == Kept(
            0x0000, archive_path / "NEW" / ct_small().SOPInstanceUID
        )
        assert not first_path.exists()
        assert list(handler.index.paths()) == [f"NEW/{ct_small().SOPInstanceUID}"]
        assert rows(handler, "SELECT PatientID FROM patients") == [("NEW",)]
    finally:
        handler.close()


def test_reject_fails_with_0111(archive_path: Path) -> None:
    handler = opened(archive_path, duplicates="reject")
    try:
        handler.archive(received(archive_path, ct_small()))
        second = received(archive_path, ct_small())

        code, comment = status_of(handler.archive(second))

        assert code == 0x0111
        assert "duplicate SOP Instance UID" in comment
        assert second.path.is_file()
    finally:
        handler.close()


def test_a_row_whose_file_is_gone_is_no_duplicate(
    open_archive: ArchiveHandler, archive_path: Path
) -> None:
    first = received(archive_path, ct_small())
    kept_path(open_archive.archive(first)).unlink()
    again = received(archive_path, ct_small())

    assert kept_path(open_archive.archive(again)).exists()


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_two_uids_that_sanitise_alike_never_share_a_file(
    open_archive: ArchiveHandler, archive_path: Path
) -> None:
    first = received(archive_path, ct_small(SOPInstanceUID="1.2.3/4"))
    first_bytes = first.path.read_bytes()
    first_path = kept_path(open_archive.archive(first))
    second = received(archive_path, ct_small(SOPInstanceUID="1.2.3_4"))

    code, comment = status_of(open_archive.archive(second))

    assert code == 0xC000
    assert "another instance" in comment
    assert second.path.is_file()
    assert first_path.read_bytes() == first_bytes
    assert open_archive.index.lookup("1.2.3_4") is None


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_a_layout_that_lands_on_the_index_is_refused(archive_path: Path) -> None:
    handler = opened(archive_path, layout="{SOPInstanceUID}")
    try:
        instance = received(archive_path, ct_small(SOPInstanceUID="index.sqlite-wal"))

        code, comment = status_of(handler.archive(instance))

        assert code == 0xC000
        assert "index" in comment
        assert handler.index.lookup("index.sqlite-wal") is None
    finally:
        handler.close()


def test_an_index_failure_leaves_nothing_kept(
    open_archive: ArchiveHandler, archive_path: Path
) -> None:
    sabotage = sqlite3.connect(open_archive.index.path)
    sabotage.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON instances BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )
    sabotage.commit()
    sabotage.close()
    ds = ct_small()
    instance = received(archive_path, ds)

    with pytest.raises(sqlite3.IntegrityError, match="refused"):
        open_archive.archive(instance)

    assert not any(archive_path.rglob("*.dcm"))
    assert not instance.path.exists()
    assert list(open_archive.index.paths()) == []


def test_an_os_error_propagates(open_archive: ArchiveHandler, archive_path: Path) -> None:
    ds = ct_small()
    (archive_path / ds.StudyInstanceUID).write_bytes(b"a file where a folder should be")
    instance = received(archive_path, ds)

    with pytest.raises(OSError):
        open_archive.archive(instance)

    assert instance.path.is_file()
    assert open_archive.index.lookup(ds.SOPInstanceUID) is None


def test_a_copy_across_file_systems_is_renamed_into_place(tmp_path: Path) -> None:
    source = tmp_path / "source.part"
    source.write_bytes(b"DICM" * 1000)
    target = tmp_path / "archive" / "x.dcm"
    target.parent.mkdir()

    copy_durably(source, target)

    assert target.read_bytes() == source.read_bytes()
    assert [path.name for path in target.parent.iterdir()] == ["x.dcm"]


def test_names_in_latin_1_and_utf_8_are_indexed_as_the_same_unicode(
    open_archive: ArchiveHandler, archive_path: Path
) -> None:
    for n, charset in enumerate(("ISO_IR 100", "ISO_IR 192")):
        ds = ct_small(
            SpecificCharacterSet=charset,
            PatientName="Ångström^Zoë",
            PatientID=f"P{n}",
            StudyInstanceUID=f"1.2.826.0.1.3680043.10.9.{n}.1",
            SeriesInstanceUID=f"1.2.826.0.1.3680043.10.9.{n}.1.1",
            SOPInstanceUID=f"1.2.826.0.1.3680043.10.9.{n}.1.1.1",
        )
        instance = received(archive_path, ds)
        path = kept_path(open_archive.archive(instance))
        encoded = "Ångström".encode("latin-1" if n == 0 else "utf-8")
        assert encoded in path.read_bytes()

    assert rows(open_archive, "SELECT PatientName FROM patients ORDER BY PatientID") == [
        ("Ångström^Zoë",),
        ("Ångström^Zoë",),
    ]


def test_a_full_index_is_out_of_resources_and_keeps_nothing_half(
    open_archive: ArchiveHandler, archive_path: Path
) -> None:
    writer = open_archive.index._writer
    assert writer is not None
    (pages,) = writer.execute("PRAGMA page_count").fetchone()
    writer.execute(f"PRAGMA max_page_count = {pages}")  # the index may not grow: it is full
    instances = [
        received(archive_path, ct_small(SOPInstanceUID=f"1.2.826.0.1.3680043.10.6.{n}"))
        for n in range(100)
    ]

    kept = []
    with pytest.raises(OSError) as raised:
        for instance in instances:
            kept.append(kept_path(open_archive.archive(instance)))

    assert raised.value.errno == errno.ENOSPC
    assert len(kept) < len(instances)
    on_disk = {path.relative_to(archive_path).as_posix() for path in archive_path.rglob("*.dcm")}
    assert on_disk == set(open_archive.index.paths())
    assert len(on_disk) == len(kept)


def test_find_lists_no_study_that_has_no_uid(
    open_archive: ArchiveHandler, archive_path: Path
) -> None:
    named = ct_small()
    unnamed = ct_small(StudyInstanceUID=None)
    unnamed.SOPInstanceUID = named.SOPInstanceUID + ".9"
    unnamed.SeriesInstanceUID = named.SeriesInstanceUID + ".9"
    for ds in (named, unnamed):
        assert status_of(open_archive.archive(received(archive_path, ds)))[0] == 0x0000
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = ""
    query = FindQuery(identifier, STUDY_ROOT_FIND, "STUDY", "SCU", "DICOMD", "127.0.0.1")
    assert [m.StudyInstanceUID for m in open_archive.query.find(query)] == [named.StudyInstanceUID]
    assert {PATIENT_ROOT_FIND, STUDY_ROOT_FIND} <= set(open_archive.find_models)


def test_retrieve_selects_instances_by_the_unique_key_of_the_level(
    open_archive: ArchiveHandler, archive_path: Path
) -> None:
    datasets = [ct_small() for _ in range(3)]
    for number, ds in enumerate(datasets):
        ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{number}"
        ds.SeriesInstanceUID = f"{ds.SeriesInstanceUID}.{number % 2}"
        assert status_of(open_archive.archive(received(archive_path, ds)))[0] == 0x0000

    def selected(level: str, **keys: object) -> list[str]:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = level
        for keyword, value in keys.items():
            setattr(identifier, keyword, value)
        query = FindQuery(identifier, STUDY_ROOT_MOVE, level, "SCU", "DICOMD", "127.0.0.1")
        items = open_archive._instances(query)
        assert all(item.path.is_file() for item in items)
        return sorted(item.sop_instance_uid for item in items)

    uids_all = sorted(ds.SOPInstanceUID for ds in datasets)
    assert selected("STUDY", StudyInstanceUID=datasets[0].StudyInstanceUID) == uids_all
    assert selected("SERIES", SeriesInstanceUID=datasets[1].SeriesInstanceUID) == [uids_all[1]]
    assert selected("IMAGE", SOPInstanceUID=[uids_all[0], uids_all[2]]) == [
        uids_all[0],
        uids_all[2],
    ]
    assert selected("PATIENT", PatientID=datasets[0].PatientID) == uids_all
    with pytest.raises(QueryError, match="needs SeriesInstanceUID"):
        selected("SERIES", StudyInstanceUID=datasets[0].StudyInstanceUID)


def test_a_deflated_instance_is_indexed_from_its_head_alone(
    open_archive: ArchiveHandler, archive_path: Path
) -> None:
    """Only as much is inflated as the index needs: the stream after it may even be cut."""
    ds = ct_small()
    ds.file_meta.TransferSyntaxUID = DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN
    instance = received(archive_path, ds)
    whole = instance.path.read_bytes()
    instance.path.write_bytes(whole[: len(whole) - 2000])  # cut inside the pixel data

    kept_path(open_archive.archive(instance))

    [(syntax, patient)] = rows(
        open_archive,
        "SELECT TransferSyntaxUID, PatientID FROM instances JOIN series ON series.pk = series_pk"
        " JOIN studies ON studies.pk = study_pk JOIN patients ON patients.pk = patient_pk",
    )
    assert (syntax, patient) == (DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, "1CT1")


def test_the_attributes_collected_on_receipt_are_indexed_without_reading_the_file(
    open_archive: ArchiveHandler, archive_path: Path
) -> None:
    ds = ct_small()
    instance = received(archive_path, ds)
    attributes = Dataset()
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        setattr(attributes, keyword, ds[keyword].value)
    attributes.PatientID = "FROM-THE-WALK"

    kept_path(open_archive.archive(dataclasses.replace(instance, attributes=attributes)))

    assert rows(open_archive, "SELECT PatientID FROM patients") == [("FROM-THE-WALK",)]
    assert "PatientID" in open_archive.attributes_read


def test_a_folder_another_store_is_making_is_used_only_once_its_name_is_flushed(
    open_archive: ArchiveHandler, archive_path: Path
) -> None:
    """A store that finds the study folder already made waits for its maker's flush of the
    archive folder: otherwise its answer could come before a name a power cut would lose."""
    held = HeldNames(archive_path)
    open_archive.storage.durability = held
    study = archive_path / "1.2.3"
    maker = in_threads(lambda: open_archive.storage._make_folders(study / "4"))
    assert held.flushing.wait(DEADLINE)
    follower = in_threads(
        lambda: (
            open_archive.storage._make_folders(study / "5"),
            held.events.append("follower done"),
        )
    )
    key = f"folder:{study}"
    eventually(
        lambda: open_archive.storage._thread_folder_locks.users(key) == 2 or bool(held.events)
    )
    assert held.events == []
    held.release.set()
    maker.results()
    follower.results()
    assert held.events == [f"flushed {archive_path.name}", "follower done"]
    assert (study / "4").is_dir() and (study / "5").is_dir()

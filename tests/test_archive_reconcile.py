"""Reconciliation at start-up, after crash states made for real on disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from twisted.logger import capturedLogs, formatEvent

from dicomd.archive import ArchiveHandler
from dicomd.archive.handler import ArchiveError, Reconciliation
from tests.support.received import ct_small, kept_path, opened, received


def uid(n: int) -> str:
    return f"1.2.826.0.1.3680043.10.7.{n}"


def files_under(root: Path) -> set[str]:
    return {path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file()}


def folders_under(root: Path) -> set[str]:
    return {path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_dir()}


def test_reconcile_removes_what_a_crash_left(tmp_path: Path) -> None:
    archive_path = tmp_path / "archive"
    handler = opened(archive_path)
    kept = {}
    for n, study in ((1, "1.2.9.1"), (2, "1.2.9.1"), (3, "1.2.9.2")):
        instance = received(archive_path, ct_small(SOPInstanceUID=uid(n), StudyInstanceUID=study))
        kept[n] = kept_path(handler.archive(instance)).relative_to(archive_path).as_posix()
    handler.close()

    # The crash: files being received, a file whose row was committed but whose
    # file went missing, files renamed into place whose rows never committed,
    # a half copy, folders left empty, and things that are not the archive's.
    incoming = archive_path / ".incoming"
    (incoming / "in-flight.part").write_bytes(b"partial")
    (incoming / "older").mkdir()
    (incoming / "older" / "x.part").write_bytes(b"partial")
    (archive_path / kept[1]).unlink()
    series_folder = (archive_path / kept[2]).parent
    (series_folder / f"{uid(4)}.dcm").write_bytes(b"never indexed")
    (series_folder / ".tmp1234.partial").write_bytes(b"half a copy")
    (archive_path / "1.2.9.3" / "1.2.9.3.1").mkdir(parents=True)
    (archive_path / "1.2.9.3" / "1.2.9.3.1" / f"{uid(5)}.dcm").write_bytes(b"never indexed")
    (archive_path / "empty" / "deeper").mkdir(parents=True)
    (archive_path / ".snapshots").mkdir()
    (archive_path / ".snapshots" / "keep.txt").write_text("not ours")

    handler = ArchiveHandler(archive_path)
    with capturedLogs() as events:
        counts = handler.open()
    try:
        assert counts == Reconciliation(
            incoming_files=2,
            rows_without_file=1,
            files_reindexed=0,
            unreadable_files=3,
            empty_folders=4,
        )
        assert sorted(handler.index.paths()) == sorted([kept[2], kept[3]])
        assert handler.index.lookup(uid(1)) is None
    finally:
        handler.close()

    assert files_under(archive_path) - {"index.sqlite", "index.sqlite-wal", "index.sqlite-shm"} == {
        kept[2],
        kept[3],
        ".snapshots/keep.txt",
    }
    assert (archive_path / "index.sqlite").is_file()
    assert folders_under(archive_path) == {
        ".incoming",
        ".snapshots",
        "1.2.9.1",
        str(Path(kept[2]).parent),
        "1.2.9.2",
        str(Path(kept[3]).parent),
    }
    [line] = [
        formatEvent(event)
        for event in events
        if event.get("log_namespace", "").startswith("dicomd.archive")
    ]
    assert line == (
        f"archive {archive_path}: 2 instances indexed; removed 2 incoming files, "
        "1 index rows without a file, 3 unreadable files, 4 empty folders; "
        "indexed 0 files again"
    )


def test_a_whole_file_whose_row_was_lost_is_indexed_again(tmp_path: Path) -> None:
    """A power cut may lose the last commits; the files, fsync'd, bring them back."""
    archive_path = tmp_path / "archive"
    handler = opened(archive_path)
    instance = received(archive_path, ct_small(SOPInstanceUID=uid(7)))
    path = kept_path(handler.archive(instance))
    relative = path.relative_to(archive_path).as_posix()
    stale = archive_path / "1.2.9.8" / "1.2.9.8.1" / f"{uid(7)}.dcm"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(path.read_bytes())  # a second copy of a kept instance
    assert handler.index.remove(uid(7))
    handler.close()

    handler = ArchiveHandler(archive_path)
    counts = handler.open()
    try:
        assert (counts.files_reindexed, counts.unreadable_files) == (1, 1)
        assert handler.index.lookup(uid(7)) in (
            relative,
            stale.relative_to(archive_path).as_posix(),
        )
        assert len(list(handler.index.paths())) == 1
    finally:
        handler.close()


def test_a_clean_archive_loses_nothing(tmp_path: Path) -> None:
    archive_path = tmp_path / "archive"
    handler = opened(archive_path)
    path = kept_path(handler.archive(received(archive_path, ct_small())))
    handler.close()

    handler = ArchiveHandler(archive_path)
    try:
        assert handler.open() == Reconciliation(0, 0, 0, 0, 0)
        assert list(handler.index.paths()) == [path.relative_to(archive_path).as_posix()]
        assert path.is_file()
    finally:
        handler.close()


def test_a_folder_with_files_but_no_index_is_refused(tmp_path: Path) -> None:
    archive_path = tmp_path / "archive"
    (archive_path / "old-study").mkdir(parents=True)
    (archive_path / "old-study" / "image.dcm").write_bytes(b"somebody's image")

    with pytest.raises(ArchiveError, match="holds files but no index"):
        ArchiveHandler(archive_path).open()

    assert (archive_path / "old-study" / "image.dcm").read_bytes() == b"somebody's image"
    assert not (archive_path / "index.sqlite").exists()


def test_a_new_archive_may_start_with_leftover_incoming_files(tmp_path: Path) -> None:
    archive_path = tmp_path / "archive"
    (archive_path / ".incoming").mkdir(parents=True)
    (archive_path / ".incoming" / "x.part").write_bytes(b"partial")

    handler = ArchiveHandler(archive_path)
    try:
        assert handler.open() == Reconciliation(1, 0, 0, 0, 0)
    finally:
        handler.close()
    assert os.listdir(archive_path / ".incoming") == []

"""The ``--save`` store handler: whole files named by SOP Instance UID in one folder."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from dicomd.archive import FolderHandler
from tests.support.received import ct_small, received


def test_an_instance_is_copied_whole_under_its_uid(tmp_path: Path) -> None:
    instance = received(tmp_path / "storage", ct_small())
    folder = tmp_path / "saved"

    status = FolderHandler(folder).keep(instance)

    assert status == 0x0000
    saved = folder / f"{instance.sop_instance_uid}.dcm"
    assert saved.read_bytes() == instance.path.read_bytes()
    assert instance.path.exists()  # still there for the handlers after this one
    assert os.stat(saved).st_ino != os.stat(instance.path).st_ino
    assert saved.stat().st_mode == instance.path.stat().st_mode
    assert sorted(path.name for path in folder.iterdir()) == [saved.name]  # no temporary left


def test_a_second_copy_replaces_the_first(tmp_path: Path) -> None:
    handler = FolderHandler(tmp_path / "saved")
    handler.keep(received(tmp_path / "storage", ct_small(PatientID="FIRST")))
    second = received(tmp_path / "storage", ct_small(PatientID="SECOND"))

    handler.keep(second)

    [saved] = (tmp_path / "saved").iterdir()
    assert saved.read_bytes() == second.path.read_bytes()


@pytest.mark.parametrize(
    ("uid", "name"), [("../../escaped", "_._.._escaped.dcm"), (".hidden", "_hidden.dcm")]
)
def test_a_uid_from_the_peer_cannot_leave_or_hide_in_the_folder(
    tmp_path: Path, uid: str, name: str
) -> None:
    instance = received(tmp_path / "storage", ct_small(), sop_instance_uid=uid)
    FolderHandler(tmp_path / "saved").keep(instance)
    assert [path.name for path in (tmp_path / "saved").iterdir()] == [name]


def test_the_folder_is_made_when_the_handler_is(tmp_path: Path) -> None:
    FolderHandler(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir()


def test_a_folder_that_cannot_be_made_is_refused_at_once(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ValueError, match=r"^cannot create .*: Not a directory$"):
        FolderHandler(blocker / "saved")


@pytest.mark.parametrize("path", ["", 3])
def test_a_path_that_is_no_folder_name_is_refused(path: object) -> None:
    with pytest.raises(ValueError, match=r"^path: expected a folder name"):
        FolderHandler(path)  # type: ignore[arg-type]


class StoreTests(unittest.TestCase):
    @inlineCallbacks
    def test_store_copies_in_the_reactors_thread_pool(self):
        folder = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, folder)
        instance = received(folder / "storage", ct_small())

        status = yield FolderHandler(folder / "saved", reactor=reactor).store(instance)

        self.assertEqual(status, 0x0000)
        saved = folder / "saved" / f"{instance.sop_instance_uid}.dcm"
        self.assertEqual(saved.read_bytes(), instance.path.read_bytes())

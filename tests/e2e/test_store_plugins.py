"""Store handlers chained in the configuration: the built-in ones and a site's own module.

The site's module is written to a temporary folder and put on the daemon's
PYTHONPATH, as a site would install its own plugins beside dicomd.
"""

from __future__ import annotations

from pathlib import Path

from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from tests.support.archive import archive_of, archive_plugin
from tests.support.daemons import log_lines_with
from tests.support.datasets import write_ct_files
from tests.support.dcmtk import run_dcmtk
from tests.support.processes import LOCALHOST
from tests.support.pynetdicom_peers import pynetdicom_store

SITE_PLUGINS = '''
"""A site's own store handlers."""

from pathlib import Path

from pydicom import Dataset
from twisted.internet import reactor, task
from zope.interface import implementer

from dicomd.interfaces import IStoreHandler


@implementer(IStoreHandler)
class Journal:
    """Appends who sent which instance, and where its file is, to a journal."""

    def __init__(self, journal, label):
        self.journal = Path(journal)
        self.label = label

    def store(self, instance):
        with self.journal.open("a") as lines:
            lines.write(
                f"{self.label} {instance.calling_ae_title} {instance.sop_instance_uid} "
                f"{instance.path.is_file()} {'.incoming' not in instance.path.parts} "
                f"{instance.path.resolve()}\\n"
            )
        return 0


@implementer(IStoreHandler)
class Refuse:
    """Answers a fixed status, a little later, through a Deferred."""

    def __init__(self, status, comment):
        self.status = status
        self.comment = comment

    def store(self, instance):
        answer = Dataset()
        answer.Status = self.status
        answer.ErrorComment = self.comment
        return task.deferLater(reactor, 0.01, lambda: answer)
'''


def site_plugins(tmp_path: Path) -> Path:
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "site_plugins.py").write_text(SITE_PLUGINS)
    return folder


def journal_plugin(journal: Path, label: str) -> dict[str, object]:
    return {"plugin": "site_plugins.Journal", "options": {"journal": str(journal), "label": label}}


def test_a_plugin_after_the_archive_sees_the_archived_file(start_dicomd, tmp_path):
    journal = tmp_path / "journal.txt"
    daemon = start_dicomd(
        pythonpath=[site_plugins(tmp_path)],
        plugins=[archive_plugin(), journal_plugin(journal, "filed"), {"plugin": "print"}],
    )
    files = write_ct_files(tmp_path / "ct", 3)

    sent = run_dcmtk(
        "storescu",
        "-aet",
        "MODALITY1",
        "-aec",
        daemon.ae_title,
        LOCALHOST,
        str(daemon.port),
        *map(str, files),
    )

    assert sent.returncode == 0, sent.stdout + sent.stderr
    archive = archive_of(daemon)
    expected = [
        f"filed MODALITY1 {path.stem} True True {archive.file_of(path.stem)}" for path in files
    ]
    assert journal.read_text().splitlines() == expected
    log = daemon.wait_for_log(lambda text: len(log_lines_with(text, "C-STORE from MODALITY1")) >= 3)
    printed = log_lines_with(log, "C-STORE from MODALITY1")
    assert len(printed) == 3
    assert all("Store^Test" in line and "CT Image Storage" in line for line in printed)


def test_a_failure_status_from_a_plugin_reaches_the_peer_and_ends_the_chain(start_dicomd, tmp_path):
    journal = tmp_path / "journal.txt"
    daemon = start_dicomd(
        pythonpath=[site_plugins(tmp_path)],
        plugins=[
            {"plugin": "print"},
            journal_plugin(journal, "before"),
            {
                "plugin": "site_plugins.Refuse",
                "options": {"status": 0xC301, "comment": "not from this modality"},
            },
            journal_plugin(journal, "after"),
            archive_plugin(),
        ],
    )
    (path,) = write_ct_files(tmp_path / "ct", 1)

    status = pynetdicom_store(daemon, path, CTImageStorage, ExplicitVRLittleEndian, "MODALITY2")

    assert status.Status == 0xC301
    assert status.ErrorComment == "not from this modality"
    (line,) = journal.read_text().splitlines()
    assert line.startswith(f"before MODALITY2 {path.stem} True False ")
    archive = archive_of(daemon)
    assert archive.files() == set()
    assert archive.indexed() == {}
    assert archive.incoming() == []
    log = daemon.wait_for_log(lambda text: bool(log_lines_with(text, "C-STORE from MODALITY2")))
    assert len(log_lines_with(log, "C-STORE from MODALITY2")) == 1

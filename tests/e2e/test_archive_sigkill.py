"""A SIGKILL in the middle of ingest loses no row that was committed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from dicomd.archive import ArchiveHandler
from dicomd.archive.handler import Reconciliation
from tests.support.received import ct_small, opened, received

REPOSITORY = Path(__file__).resolve().parents[2]


def uid(n: int) -> str:
    return f"1.2.826.0.1.3680043.10.7.{n}"


def test_rows_committed_before_a_sigkill_are_there_after_it(tmp_path: Path) -> None:
    archive_path = tmp_path / "archive"
    opened(archive_path).close()
    # received beside the archive: its own .incoming is emptied when it opens
    instances = [
        received(tmp_path, ct_small(SOPInstanceUID=uid(n), SeriesInstanceUID=f"1.2.8.{n}"))
        for n in range(20)
    ]
    arguments = [
        {
            "sop_class_uid": instance.sop_class_uid,
            "sop_instance_uid": instance.sop_instance_uid,
            "transfer_syntax": instance.transfer_syntax,
            "path": str(instance.path),
            "size": instance.size,
        }
        for instance in instances
    ]
    script = """
import json, os, signal, sys
from pathlib import Path
from dicomd.archive import ArchiveHandler
from dicomd.interfaces import ReceivedInstance

handler = ArchiveHandler(sys.argv[1])
handler.open()
for fields in json.loads(sys.argv[2]):
    fields["path"] = Path(fields["path"])
    answer = handler.archive(ReceivedInstance("SCU", "DICOMD", "127.0.0.1", 1, **fields))
    assert answer.status == 0, answer
Path(sys.argv[1], ".incoming").mkdir()
Path(sys.argv[1], ".incoming", "in-flight.part").write_bytes(b"half an instance")
os.kill(os.getpid(), signal.SIGKILL)
"""
    killed = subprocess.run(
        [sys.executable, "-c", script, str(archive_path), json.dumps(arguments)],
        cwd=REPOSITORY,
        capture_output=True,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    assert (archive_path / "index.sqlite-wal").stat().st_size > 0  # never checkpointed

    handler = ArchiveHandler(archive_path)
    counts = handler.open()
    try:
        assert counts == Reconciliation(1, 0, 0, 0, 0)
        assert sorted(handler.index.lookup(uid(n)) is not None for n in range(20)) == [True] * 20
    finally:
        handler.close()
    assert len(list(archive_path.rglob("*.dcm"))) == 20

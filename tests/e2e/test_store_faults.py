"""Real faults while instances are stored: the daemon killed outright, and a full disk.

After either, the archive must hold only whole instances, each with its
index row, and no temporary file; and the daemon must go on storing.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from tests.support.archive import ArchiveView, archive_plugin
from tests.support.daemons import RunningDaemon, log_lines_with
from tests.support.datasets import dataset_bytes, write_ct_files
from tests.support.dcmtk import dcmtk_executable, run_dcmtk, run_echoscu
from tests.support.processes import LOCALHOST
from tests.support.pynetdicom_peers import pynetdicom_store


def assert_only_whole_instances(archive: ArchiveView, originals: dict[str, Path]) -> None:
    """No temporary file, files and rows agree, and every kept file is a complete instance."""
    archive.assert_consistent()
    for uid, relative in archive.indexed().items():
        kept = archive.root / relative
        assert dataset_bytes(kept) == dataset_bytes(originals[uid]), relative
        assert dcmread(kept).SOPInstanceUID == uid


def storescu_command(daemon: RunningDaemon, files: list[Path]) -> list[str]:
    executable = dcmtk_executable("storescu")
    if executable is None:
        pytest.fail("dcmtk is not installed; run scripts/test")
    return [
        executable,
        "-v",
        "-aec",
        daemon.ae_title,
        LOCALHOST,
        str(daemon.port),
        *map(str, files),
    ]


def acknowledged(storescu_output: str) -> list[str]:
    """The files storescu ``-v`` was told were stored with success, in order."""
    stored, sending = [], None
    for line in storescu_output.splitlines():
        if "Sending file: " in line:
            sending = line.split("Sending file: ", 1)[1].strip()
        elif "Received Store Response (Success)" in line and sending is not None:
            stored.append(sending)
            sending = None
    return stored


def test_sigkill_during_ingest_leaves_only_whole_indexed_instances(start_dicomd, tmp_path):
    files = write_ct_files(tmp_path / "ct", 300, 128, 128)
    originals = {path.stem: path for path in files}
    storage = tmp_path / "archive"
    archive = ArchiveView(storage)
    overrides = {
        "storage": {"path": str(storage)},
        "plugins": [archive_plugin(duplicates="overwrite")],
    }
    first = start_dicomd(**overrides)
    sender_output = tmp_path / "storescu.txt"
    with sender_output.open("w") as output:
        sender = subprocess.Popen(
            storescu_command(first, files),
            env={**os.environ, "TCP_NODELAY": "1"},
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while len(archive.files()) < 60:
            assert time.monotonic() < deadline, "the archive did not fill"
            time.sleep(0.005)
        assert sender.poll() is None, "storescu finished before the daemon could be killed"
        os.kill(first.pid, signal.SIGKILL)
        first.process.wait(10)
    finally:
        sender.wait(30)

    second = start_dicomd(**overrides)

    reconciled = log_lines_with(second.log_text(), "archive", "instances indexed")
    assert len(reconciled) == 1, second.log_text()
    # Every instance the daemon answered with success survived the kill.
    stored_before_the_kill = {Path(path).stem for path in acknowledged(sender_output.read_text())}
    assert len(stored_before_the_kill) >= 50
    assert stored_before_the_kill <= set(archive.indexed())
    assert_only_whole_instances(archive, originals)

    resent = subprocess.run(
        storescu_command(second, files),
        env={**os.environ, "TCP_NODELAY": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert resent.returncode == 0, resent.stderr
    assert acknowledged(resent.stdout + resent.stderr) == list(map(str, files))
    assert set(archive.indexed()) == set(originals)
    assert_only_whole_instances(archive, originals)


@dataclass(frozen=True)
class SmallDisk:
    """A 2 MiB tmpfs at ``mount_point``, mounted here or in the daemon's own mount namespace."""

    mount_point: Path
    command_prefix: tuple[str, ...]

    def seen_by(self, daemon: RunningDaemon) -> Path:
        """The mount point as the daemon sees it: through its root when it has its own mounts."""
        if not self.command_prefix:
            return self.mount_point
        return Path(f"/proc/{daemon.pid}/root") / self.mount_point.relative_to("/")


@contextlib.contextmanager
def small_disk(mount_point: Path) -> Iterator[SmallDisk]:
    """As root, mount a tmpfs; otherwise run the daemon in a user and mount namespace of its own."""
    mount_point.mkdir()
    if os.geteuid() != 0:
        script = 'mount -t tmpfs -o size=2m tmpfs "$0" && exec "$@"'
        yield SmallDisk(
            mount_point,
            (
                "unshare",
                "--user",
                "--map-root-user",
                "--mount",
                "sh",
                "-c",
                script,
                str(mount_point),
            ),
        )
        return
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
        check=True,
        capture_output=True,
    )
    try:
        yield SmallDisk(mount_point, ())
    finally:
        # Lazily: the daemon, stopped after the test, still holds its index open.
        subprocess.run(["umount", "--lazy", str(mount_point)], check=True)


DISK_FULL = re.compile(r"disk (is )?full|No space left", re.IGNORECASE)


def test_a_full_disk_answers_a700_and_leaves_only_whole_instances(start_dicomd, tmp_path):
    (too_big,) = write_ct_files(tmp_path / "big", 1, 1280, 1024)  # 2.5 MiB of pixels
    files = write_ct_files(tmp_path / "ct", 40, 256, 256)  # 128 KiB of pixels each
    originals = {path.stem: path for path in files}
    with small_disk(tmp_path / "small") as disk:
        daemon = start_dicomd(
            command_prefix=disk.command_prefix,
            storage={"path": str(disk.mount_point / "archive")},
            plugins=[archive_plugin()],
        )
        root = disk.seen_by(daemon)
        archive = ArchiveView(root / "archive")
        ballast = root / "ballast"
        ballast.write_bytes(bytes(512 * 1024))

        # An instance that cannot fit: writing it as it arrives fails.
        status = pynetdicom_store(daemon, too_big, CTImageStorage, ExplicitVRLittleEndian)

        assert status.Status == 0xA700
        assert DISK_FULL.search(status.ErrorComment)
        assert_only_whole_instances(archive, originals)
        assert archive.indexed() == {}

        # Instances that fit until the disk is full, wherever it fills up.
        statuses = []
        for path in files:
            status = pynetdicom_store(daemon, path, CTImageStorage, ExplicitVRLittleEndian)
            statuses.append(status.Status)
            if status.Status != 0x0000:
                break

        assert statuses[-1] == 0xA700, (
            f"{[hex(code) for code in statuses]}: {status.get('ErrorComment', '')}"
        )
        assert len(statuses) > 1
        assert_only_whole_instances(archive, originals)
        assert len(archive.indexed()) == len(statuses) - 1
        assert run_echoscu(daemon).returncode == 0
        assert DISK_FULL.search(daemon.wait_for_log(DISK_FULL.search))
        assert "Traceback" not in daemon.log_text()  # a full disk is one line, not a fault

        ballast.unlink()
        refused = files[len(statuses) - 1]
        status = pynetdicom_store(daemon, refused, CTImageStorage, ExplicitVRLittleEndian)

        assert status.Status == 0x0000
        assert_only_whole_instances(archive, originals)
        assert len(archive.indexed()) == len(statuses)
        assert run_dcmtk("dcmdump", "-q", str(archive.file_of(refused.stem))).returncode == 0

"""Sending instances never stalls the reactor: C-MOVE of large big-endian and deflated
instances to a receiver that takes only Explicit VR Little Endian, with C-ECHOes answered
on another association meanwhile.

Each instance must be read whole and converted before it can go; done on the
reactor thread, every other association would wait seconds.  The daemon's
lag monitor logs each stall over 100 ms; there must be none.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
)
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from dicomd.part10 import read_header
from tests.support.daemons import RunningDaemon, log_lines_with
from tests.support.datasets import ct_dataset
from tests.support.dcmtk import DcmtkPeer, dcmtk_peer, run_dcmtk
from tests.support.processes import LOCALHOST
from tests.support.pynetdicom_peers import pynetdicom_store

STUDY = "1.2.826.0.1.3680043.8.498.77001"
SIDE = 6144  # 6144 x 6144 16-bit pixels: 72 MiB of pixel data per instance


def large_instance(folder: Path, number: int, syntax: str) -> Path:
    """A CT instance with 72 MiB of pixels, written in ``syntax``."""
    ds = ct_dataset(STUDY, f"{STUDY}.1", number, rows=SIDE, columns=SIDE, transfer_syntax=syntax)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{STUDY}.1.{number}"
    path = folder / f"{number}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def little_endian_only(tmp_path: Path) -> Iterator[DcmtkPeer]:
    """storescp (any AE title) keeping what it receives, choosing Explicit VR Little Endian
    (``+xe``) among whatever is proposed: big endian and deflated data sets must be converted."""
    folder = tmp_path / "received"
    folder.mkdir()
    with dcmtk_peer("storescp", folder, "+xe", "-od", str(folder)) as peer:
        yield peer


class EchoLoop:
    """C-ECHO after C-ECHO on one association until stopped; keeps every round trip."""

    def __init__(self, daemon: RunningDaemon) -> None:
        ae = AE(ae_title="ECHOER")
        ae.add_requested_context(Verification)
        self.association = ae.associate(LOCALHOST, daemon.port, ae_title=daemon.ae_title)
        assert self.association.is_established
        self.round_trips: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            status = self.association.send_c_echo()
            self.round_trips.append((time.monotonic() - started, int(status.get("Status", -1))))
            time.sleep(0.02)

    def __enter__(self) -> EchoLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self.association.release()


def test_moving_instances_that_need_converting_never_stalls_the_reactor(
    start_dicomd: Callable[..., RunningDaemon],
    tmp_path: Path,
    little_endian_only: DcmtkPeer,
) -> None:
    daemon = start_dicomd(
        plugins=[{"plugin": "archive"}],
        destinations={"LITTLE": {"host": LOCALHOST, "port": little_endian_only.port}},
    )
    assert daemon.wait_for_log(lambda text: "reactor lag monitor" in text)
    instances = [
        (large_instance(tmp_path, 1, ExplicitVRBigEndian), ExplicitVRBigEndian),
        (
            large_instance(tmp_path, 2, DeflatedExplicitVRLittleEndian),
            DeflatedExplicitVRLittleEndian,
        ),
        (large_instance(tmp_path, 3, ExplicitVRBigEndian), ExplicitVRBigEndian),
    ]
    for path, syntax in instances:
        assert pynetdicom_store(daemon, path, CTImageStorage, syntax).Status == 0x0000

    with EchoLoop(daemon) as echoes:
        moved = run_dcmtk(
            "movescu", "-S", "-aec", daemon.ae_title, "-aem", "LITTLE",
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={STUDY}",
            LOCALHOST, str(daemon.port), timeout=300,
        )  # fmt: skip
    assert moved.returncode == 0, moved.stderr

    received = sorted(little_endian_only.directory.glob("CT*"))
    assert sorted(
        (header.sop_instance_uid, header.transfer_syntax) for header in map(read_header, received)
    ) == [(f"{STUDY}.1.{n}", ExplicitVRLittleEndian) for n in (1, 2, 3)]
    assert len(echoes.round_trips) >= 10, "the echo loop did not run alongside the move"
    assert {status for _, status in echoes.round_trips} == {0x0000}
    assert max(seconds for seconds, _ in echoes.round_trips) < 0.5
    stalls = log_lines_with(daemon.log_text(), "reactor stalled")
    assert stalls == [], daemon.log_text()

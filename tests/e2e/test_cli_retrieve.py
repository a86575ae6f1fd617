"""``dicomd move`` and ``dicomd get`` as a user runs them, against dcmqrscp and the daemon."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from dicomd.part10 import read_header
from tests.support.daemons import RunningDaemon, run_dicomd, start_daemon
from tests.support.dcmtk import DcmtkPeer, dcmtk_peer, run_dcmtk
from tests.support.processes import LOCALHOST

ARCHIVE_AE = "ARCHIVE"
CT = Path(get_testdata_file("CT_small.dcm"))
MR = Path(get_testdata_file("MR_small.dcm"))
CT_STUDY = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"

DCMQRSCP_CONFIG = """\
NetworkTCPPort  = 104
MaxPDUSize      = 16384
MaxAssociations = 16

HostTable BEGIN
receiver = (RECEIVER, localhost, {receiver_port})
HostTable END

VendorTable BEGIN
VendorTable END

AETable BEGIN
{ae_title}   {storage}   RW (200, 1024mb)   ANY
AETable END
"""


def data_set_part(path: Path) -> bytes:
    return path.read_bytes()[read_header(path).data_set_offset :]


def same_data_set(path: Path, original: Path) -> bool:
    """Peers may agree on another transfer syntax, and dcmtk drops trailing padding:
    equal as data sets, padding aside."""
    copies = [dcmread(path), dcmread(original)]
    for ds in copies:
        if 0xFFFCFFFC in ds:
            del ds[0xFFFCFFFC]
    return copies[0] == copies[1]


@pytest.fixture
def dcmqrscp(tmp_path: Path, receiver: DcmtkPeer) -> Iterator[DcmtkPeer]:
    """dcmqrscp serving pydicom's CT_small and MR_small as ARCHIVE; it knows RECEIVER."""
    storage = tmp_path / "storage"
    storage.mkdir()
    for source in (CT, MR):
        shutil.copy(source, storage / source.name)
    indexed = run_dcmtk("dcmqridx", str(storage), *(str(p) for p in sorted(storage.iterdir())))
    assert indexed.returncode == 0, indexed.stderr
    config = tmp_path / "dcmqrscp.cfg"
    config.write_text(
        DCMQRSCP_CONFIG.format(ae_title=ARCHIVE_AE, storage=storage, receiver_port=receiver.port)
    )
    with dcmtk_peer("dcmqrscp", tmp_path, "-c", str(config)) as peer:
        yield peer


@pytest.fixture
def daemon(tmp_path: Path, receiver: DcmtkPeer) -> Iterator[RunningDaemon]:
    """The dicomd daemon holding CT_small, knowing RECEIVER as a move destination."""
    (tmp_path / "daemon").mkdir()
    running = start_daemon(
        tmp_path / "daemon",
        {
            "plugins": [{"plugin": "archive"}],
            "destinations": {"RECEIVER": {"host": LOCALHOST, "port": receiver.port}},
        },
    )
    try:
        stored = run_dcmtk(
            "storescu", "-aec", running.ae_title, LOCALHOST, str(running.port), str(CT)
        )
        assert stored.returncode == 0, stored.stdout + stored.stderr
        yield running
    finally:
        running.stop()


def test_get_from_dcmqrscp_keeps_the_study_as_sent(tmp_path: Path, dcmqrscp: DcmtkPeer) -> None:
    folder = tmp_path / "got"
    result = run_dicomd(
        "get",
        "-aec",
        ARCHIVE_AE,
        "-od",
        str(folder),
        "-k",
        f"StudyInstanceUID={CT_STUDY}",
        LOCALHOST,
        str(dcmqrscp.port),
    )
    assert result.returncode == 0, result.stderr
    (kept,) = folder.glob("*.dcm")
    assert kept.name == f"{read_header(CT).sop_instance_uid}.dcm"
    assert same_data_set(kept, CT)
    assert "get: 1 completed, 0 failed, 0 warnings; 0x0000 success" in result.stderr


def test_move_from_dcmqrscp_to_a_storescp(dcmqrscp: DcmtkPeer, receiver: DcmtkPeer) -> None:
    result = run_dicomd(
        "move",
        "-aec",
        ARCHIVE_AE,
        "--dest",
        "RECEIVER",
        "-k",
        f"StudyInstanceUID={CT_STUDY}",
        LOCALHOST,
        str(dcmqrscp.port),
    )
    assert result.returncode == 0, result.stderr
    (arrived,) = receiver.directory.iterdir()
    assert same_data_set(arrived, CT)


def test_move_and_get_from_the_daemon(
    tmp_path: Path, daemon: RunningDaemon, receiver: DcmtkPeer
) -> None:
    address = (LOCALHOST, str(daemon.port))
    moved = run_dicomd(
        "move",
        "-aec",
        daemon.ae_title,
        "--dest",
        "RECEIVER",
        "-k",
        f"StudyInstanceUID={CT_STUDY}",
        *address,
    )
    assert moved.returncode == 0, moved.stderr
    (arrived,) = receiver.directory.iterdir()
    assert same_data_set(arrived, CT)
    folder = tmp_path / "got"
    got = run_dicomd(
        "get",
        "-aec",
        daemon.ae_title,
        "-od",
        str(folder),
        "-L",
        "IMAGE",
        "-k",
        f"SOPInstanceUID={read_header(CT).sop_instance_uid}",
        *address,
    )
    assert got.returncode == 0, got.stderr
    (kept,) = folder.glob("*.dcm")
    assert data_set_part(kept) == data_set_part(arrived)  # as archived, as moved


def test_an_unknown_destination_is_one_line_and_exit_1(daemon: RunningDaemon) -> None:
    result = run_dicomd(
        "move",
        "-aec",
        daemon.ae_title,
        "--dest",
        "NOWHERE",
        "-k",
        f"StudyInstanceUID={CT_STUDY}",
        LOCALHOST,
        str(daemon.port),
    )
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "dicomd move: C-MOVE ended with 0xA801 move destination unknown:"
        " unknown move destination 'NOWHERE'"
    )

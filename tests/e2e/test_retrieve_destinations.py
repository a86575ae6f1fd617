"""C-MOVE destinations with settings of their own: DICOM TLS to a storescp, and a limit
on how many moves may send to one destination at once."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicomd.part10 import read_header
from tests.support.daemons import RunningDaemon
from tests.support.datasets import dataset_bytes
from tests.support.dcmtk import DcmtkPeer, dcmtk_peer, run_dcmtk
from tests.support.destinations import (
    CT,
    CT_STUDY,
    CountingReceiver,
    archive_with,
    move_until_served_by,
    served_moves,
)
from tests.support.processes import LOCALHOST


def self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    """A key and a certificate for ``localhost``, made with openssl."""
    key, certificate = folder / f"{name}.key", folder / f"{name}.pem"
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
         "-keyout", str(key), "-out", str(certificate)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    return key, certificate


@pytest.fixture
def tls_receiver(tmp_path: Path) -> Iterator[tuple[DcmtkPeer, Path]]:
    """storescp over TLS (bit-preserving), not asking for a client certificate."""
    key, certificate = self_signed(tmp_path, "receiver")
    folder = tmp_path / "received"
    folder.mkdir()
    with dcmtk_peer(
        "storescp", folder, "+tls", str(key), str(certificate), "-ic", "+B", "-od", str(folder)
    ) as peer:
        yield peer, certificate


def move_study(daemon: RunningDaemon, destination: str) -> subprocess.CompletedProcess[str]:
    return run_dcmtk(
        "movescu", "-v", "-S", "-aec", daemon.ae_title, "-aem", destination,
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={CT_STUDY}",
        LOCALHOST, str(daemon.port),
    )  # fmt: skip


def test_a_move_over_tls_checks_the_destination_and_delivers(start_dicomd, tls_receiver) -> None:
    receiver, certificate = tls_receiver
    daemon = archive_with(
        start_dicomd,
        {
            "SECURE": {
                "host": "localhost",
                "port": receiver.port,
                "tls": True,
                "ca_certificates": str(certificate),
            }
        },
    )
    moved = move_study(daemon, "SECURE")
    assert moved.returncode == 0, moved.stdout + moved.stderr
    (arrived,) = receiver.directory.iterdir()
    assert read_header(arrived).sop_instance_uid == read_header(CT).sop_instance_uid
    assert "Success" in moved.stdout + moved.stderr


def test_a_destination_whose_certificate_we_do_not_trust_gets_nothing(
    start_dicomd,
    tls_receiver,
    tmp_path: Path,
) -> None:
    receiver, _ = tls_receiver
    _, stranger = self_signed(tmp_path, "stranger")
    daemon = archive_with(
        start_dicomd,
        {
            "SECURE": {
                "host": "localhost",
                "port": receiver.port,
                "tls": True,
                "ca_certificates": str(stranger),
            }
        },
    )
    moved = move_study(daemon, "SECURE")
    assert "OutOfResourcesSubOperations" in moved.stdout + moved.stderr
    assert list(receiver.directory.iterdir()) == []
    assert "cannot associate" in daemon.log_text()


@pytest.mark.parametrize("workers", [1, 2], ids=["one process", "two workers"])
def test_max_associations_makes_moves_to_a_destination_take_turns(start_dicomd, workers) -> None:
    """Rounds of moves at once; with workers, until both have taken moves (the kernel picks
    the worker), so that the parent's count for them all is what keeps the limit."""
    receiver = CountingReceiver()
    try:
        daemon = archive_with(
            start_dicomd,
            {"COUNTER": {"host": LOCALHOST, "port": receiver.port, "max_associations": 1}},
            workers,
        )
        both = {"1", "2"} if workers == 2 else set()
        moved = move_until_served_by(daemon, both, rounds=5)
        assert workers == 1 or served_moves(daemon) == both
        assert len(receiver.stored) == moved
        assert receiver.most == 1
    finally:
        receiver.server.shutdown()


def test_tls_keeps_the_bytes(start_dicomd, tls_receiver) -> None:
    receiver, certificate = tls_receiver
    daemon = archive_with(
        start_dicomd,
        {
            "SECURE": {
                "host": "localhost",
                "port": receiver.port,
                "tls": True,
                "ca_certificates": str(certificate),
            }
        },
    )
    assert move_study(daemon, "SECURE").returncode == 0
    (arrived,) = receiver.directory.iterdir()
    (archived,) = (Path(daemon.directory) / "var" / "archive").rglob("*.dcm")
    assert dataset_bytes(arrived) == dataset_bytes(archived)

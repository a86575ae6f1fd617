"""C-MOVE destinations with settings of their own: DICOM TLS to a storescp, and a limit
on how many moves may send to one destination at once."""

from __future__ import annotations

import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE, StoragePresentationContexts, evt

from dicomd.part10 import read_header
from tests.support.daemons import RunningDaemon
from tests.support.datasets import dataset_bytes
from tests.support.dcmtk import DcmtkPeer, dcmtk_peer, run_dcmtk
from tests.support.processes import LOCALHOST, free_tcp_port

CT = Path(get_testdata_file("CT_small.dcm"))
CT_STUDY = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"


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


def archive_with(start_dicomd, destinations: dict, workers: int = 1) -> RunningDaemon:
    daemon = start_dicomd(
        plugins=[{"plugin": "archive"}], destinations=destinations, workers=workers
    )
    stored = run_dcmtk("storescu", "-aec", daemon.ae_title, LOCALHOST, str(daemon.port), str(CT))
    assert stored.returncode == 0, stored.stdout + stored.stderr
    return daemon


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


class CountingReceiver:
    """A pynetdicom storage SCP that notes how many associations it holds at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open = 0
        self.most = 0
        self.stored: list[bytes] = []
        ae = AE(ae_title="COUNTER")
        ae.supported_contexts = StoragePresentationContexts
        self.port = free_tcp_port()
        handlers = [
            (evt.EVT_ACCEPTED, self._accepted),
            (evt.EVT_RELEASED, self._ended),
            (evt.EVT_ABORTED, self._ended),
            (evt.EVT_C_STORE, self._store),
        ]
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=handlers)

    def _accepted(self, event: evt.Event) -> None:
        with self.lock:
            self.open += 1
            self.most = max(self.most, self.open)

    def _ended(self, event: evt.Event) -> None:
        with self.lock:
            self.open -= 1

    def _store(self, event: evt.Event) -> int:
        threading.Event().wait(0.3)  # slow enough for the moves to overlap
        self.stored.append(event.request.AffectedSOPInstanceUID)
        return 0x0000


def move_to_counter(daemon: RunningDaemon) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            "movescu",
            "-S",
            "-aec",
            daemon.ae_title,
            "-aem",
            "COUNTER",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={CT_STUDY}",
            LOCALHOST,
            str(daemon.port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
    )


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
        moved = 0
        for _ in range(5):
            movers = [move_to_counter(daemon) for _ in range(4)]
            for mover in movers:
                output, _ = mover.communicate(timeout=60)
                assert mover.returncode == 0, output
            moved += len(movers)
            serving = set(re.findall(r"worker (\d): .*accepted: MOVESCU", daemon.log_text()))
            if workers == 1 or serving == {"1", "2"}:
                break
        assert workers == 1 or serving == {"1", "2"}
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

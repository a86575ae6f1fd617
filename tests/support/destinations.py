"""A study to move, an archive holding it, and a C-MOVE destination that counts its associations.

Shared by the e2e tests of retrieve destinations and of attacks on worker
processes: both ask whether a destination's ``max_associations`` holds.
"""

from __future__ import annotations

import re
import subprocess
import threading
from pathlib import Path

from pydicom.data import get_testdata_file
from pynetdicom import AE, StoragePresentationContexts, evt

from tests.support.daemons import RunningDaemon
from tests.support.dcmtk import run_dcmtk
from tests.support.processes import LOCALHOST, free_tcp_port

CT = Path(get_testdata_file("CT_small.dcm"))
CT_STUDY = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"


def archive_with(start_dicomd, destinations: dict, workers: int = 1) -> RunningDaemon:
    """A daemon with the archive plugin and ``destinations``, holding pydicom's CT_small."""
    daemon = start_dicomd(
        plugins=[{"plugin": "archive"}], destinations=destinations, workers=workers
    )
    stored = run_dcmtk("storescu", "-aec", daemon.ae_title, LOCALHOST, str(daemon.port), str(CT))
    assert stored.returncode == 0, stored.stdout + stored.stderr
    return daemon


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
    """movescu moving the CT study to COUNTER (a `CountingReceiver`), not waited for."""
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


def move_until_served_by(
    daemon: RunningDaemon, workers: set[str], rounds: int, after: int = 0
) -> int:
    """Rounds of four moves to COUNTER at once, until each of ``workers`` (their numbers as
    the log names them, after its first ``after`` characters) has accepted one: the kernel
    picks the worker of each association.  How many moves were made; each must succeed."""
    moved = 0
    for _ in range(rounds):
        movers = [move_to_counter(daemon) for _ in range(4)]
        for mover in movers:
            output, _ = mover.communicate(timeout=60)
            assert mover.returncode == 0, output
        moved += len(movers)
        if workers <= served_moves(daemon, after):
            break
    return moved


def served_moves(daemon: RunningDaemon, after: int = 0) -> set[str]:
    """The numbers of the workers that accepted a MOVESCU association (after ``after``)."""
    return set(re.findall(r"worker (\d): .*accepted: MOVESCU", daemon.log_text()[after:]))

"""Hostile peers against a node of worker processes (``workers: 2``): the association limits
the parent holds for every worker stay exact under floods, a worker killed under load is
replaced and takes only its own associations with it, and stopping the parent mid-flood
leaves no worker behind."""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tests.support.attacks import associate_rq
from tests.support.dcmtk import run_echoscu
from tests.support.processes import LOCALHOST

VERIFICATION = "1.2.840.10008.1.1"


def workers_of(daemon) -> list[int]:
    children = Path(f"/proc/{daemon.pid}/task/{daemon.pid}/children").read_text().split()
    return sorted(int(pid) for pid in children)


def vanish_after_request(daemon, count: int) -> None:
    """``count`` peers that send an A-ASSOCIATE-RQ and reset the connection at once, while
    their worker still waits for the parent's decision."""
    request = associate_rq(daemon, [(VERIFICATION, [ImplicitVRLittleEndian])], "VANISHER")
    for _ in range(count):
        with socket.create_connection((LOCALHOST, daemon.port), timeout=10) as peer:
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            peer.sendall(request)


def hold(daemon, count: int, title: str = "HOLDER") -> list:
    held = []
    for _ in range(count):
        ae = AE(ae_title=title)
        ae.add_requested_context(Verification)
        held.append(ae.associate(LOCALHOST, daemon.port, ae_title=daemon.ae_title))
    return held


def release(associations: list) -> None:
    for association in associations:
        if association.is_established:
            association.release()


def test_peers_that_vanish_while_the_parent_decides_leave_no_association_counted(start_dicomd):
    daemon = start_dicomd(workers=2, limits={"max_associations": 4})
    vanish_after_request(daemon, 200)
    time.sleep(1.0)  # every worker has heard every decision and every connection's end

    held = hold(daemon, 4)
    try:
        assert [a.is_established for a in held] == [True] * 4, daemon.log_text()[-3000:]
        assert run_echoscu(daemon).returncode != 0  # the fifth is one too many
    finally:
        release(held)
    assert "Traceback" not in daemon.log_text()

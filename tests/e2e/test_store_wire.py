"""C-STORE from a peer written with dicomd's own PDU and DIMSE codecs, over a raw socket.

A hand-driven peer can do what polite peers never do: cut a data set at odd
byte counts, pack several fragments in one PDU, or vanish halfway through an
instance.  The first must be received exactly; after the others nothing of
the instance may remain anywhere in the archive.
"""

from __future__ import annotations

import itertools
import socket
import struct
import time

import pytest

from dicomd.dimse.command import CommandField
from dicomd.dimse.messages import PDV_COMMAND
from dicomd.ul.pdu import (
    AAbort,
    PresentationDataValue,
)
from tests.support.archive import ArchiveView, archive_of, archive_plugin
from tests.support.datasets import dataset_bytes
from tests.support.dcmtk import run_echoscu
from tests.support.raw_peer import (
    CONTEXT_ID,
    RawPeer,
    as_pdvs,
    ct_instance,
    odd_pieces,
    store_command,
)


def test_odd_fragments_several_to_a_pdu_are_stored_exactly(start_dicomd, tmp_path):
    daemon = start_dicomd(plugins=[archive_plugin()])
    uid, data_set = ct_instance(tmp_path)
    peer = RawPeer(daemon)

    # The command in two odd fragments, both in one PDU.
    command = store_command(uid)
    peer.send(*as_pdvs([command[:33], command[33:]], PDV_COMMAND))
    # The data set in odd fragments of 1 to 4097 bytes, one to four to a PDU.
    pieces = odd_pieces(data_set, itertools.cycle([1, 3, 4097, 7, 101, 999, 13, 2047]))
    fragments = as_pdvs(pieces, kind=0)
    per_pdu = itertools.cycle([3, 1, 4, 2])
    while fragments:
        count = next(per_pdu)
        peer.send(*fragments[:count])
        fragments = fragments[count:]
    response = peer.response()
    peer.release()

    assert response.command_field == CommandField.C_STORE_RSP
    assert response.message_id_being_responded_to == 7
    assert response.affected_sop_instance_uid == uid
    assert response.status == 0x0000
    archive = archive_of(daemon)
    assert dataset_bytes(archive.file_of(uid)) == data_set
    archive.assert_consistent()


def wait_for(condition, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


def leave_halfway(peer: RawPeer, how: str) -> None:
    if how == "A-ABORT":
        peer.socket.sendall(AAbort(source=0, reason=0).encode())
        peer.socket.close()
    elif how == "TCP close":
        peer.socket.close()
    else:  # a reset: SO_LINGER with a zero timeout makes close() send RST
        peer.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.socket.close()


def assert_empty(archive: ArchiveView) -> None:
    assert archive.incoming() == []
    assert archive.files() == set()
    assert archive.indexed() == {}


@pytest.mark.parametrize("how", ["A-ABORT", "TCP close", "TCP reset"])
def test_a_peer_leaving_mid_instance_leaves_nothing_behind(start_dicomd, tmp_path, how):
    daemon = start_dicomd(plugins=[archive_plugin()])
    archive = archive_of(daemon)
    uid, data_set = ct_instance(tmp_path, 512, 512)
    peer = RawPeer(daemon)
    peer.send(*as_pdvs([store_command(uid)], PDV_COMMAND))
    half = len(data_set) // 2
    for piece in odd_pieces(data_set[:half], itertools.repeat(16383)):
        peer.send(PresentationDataValue(CONTEXT_ID, 0, piece))
    wait_for(lambda: archive.incoming() != [], "the instance is being written")

    leave_halfway(peer, how)

    wait_for(lambda: archive.incoming() == [], "the partial instance is removed")
    # An echo answered means the daemon has dealt with the departure.
    assert run_echoscu(daemon).returncode == 0
    assert_empty(archive)
    assert daemon.is_running()

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
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from dicomd.dimse.command import DATA_SET_PRESENT, Command, CommandField
from dicomd.dimse.messages import PDV_COMMAND, PDV_LAST
from dicomd.ul.pdu import (
    AAbort,
    AAssociateAC,
    AAssociateRQ,
    AReleaseRP,
    AReleaseRQ,
    PDataTF,
    PresentationContextRQ,
    PresentationDataValue,
    UserInformation,
    decode,
)
from tests.support.archive import ArchiveView, archive_of, archive_plugin
from tests.support.daemons import RunningDaemon
from tests.support.datasets import dataset_bytes, write_ct_files
from tests.support.dcmtk import run_echoscu
from tests.support.processes import LOCALHOST

CONTEXT_ID = 1


class RawPeer:
    """One association, driven PDU by PDU over a plain socket."""

    def __init__(self, daemon: RunningDaemon) -> None:
        self.socket = socket.create_connection((LOCALHOST, daemon.port), timeout=10)
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        context = PresentationContextRQ(CONTEXT_ID, CTImageStorage, (ExplicitVRLittleEndian,))
        request = AAssociateRQ(
            daemon.ae_title, "RAWPEER", (context,), UserInformation(max_length=0)
        )
        self.socket.sendall(request.encode())
        accept = self.receive()
        assert isinstance(accept, AAssociateAC), accept
        assert [(c.context_id, c.result) for c in accept.presentation_contexts] == [(1, 0)]

    def receive(self) -> object:
        header = self._exactly(6)
        (length,) = struct.unpack(">L", header[2:])
        return decode(header + self._exactly(length))

    def _exactly(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = self.socket.recv(count - len(data))
            assert chunk, "the daemon closed the connection"
            data += chunk
        return data

    def send(self, *pdvs: PresentationDataValue) -> None:
        self.socket.sendall(PDataTF(pdvs).encode())

    def response(self) -> Command:
        pdu = self.receive()
        assert isinstance(pdu, PDataTF), pdu
        (pdv,) = pdu.pdvs
        assert pdv.control == PDV_COMMAND | PDV_LAST
        return Command.decode(pdv.data)

    def release(self) -> None:
        self.socket.sendall(AReleaseRQ().encode())
        assert isinstance(self.receive(), AReleaseRP)
        self.socket.close()


def store_command(sop_instance_uid: str) -> bytes:
    return Command(
        command_field=CommandField.C_STORE_RQ,
        message_id=7,
        affected_sop_class_uid=CTImageStorage,
        affected_sop_instance_uid=sop_instance_uid,
        priority=0,
        command_data_set_type=DATA_SET_PRESENT,
    ).encode()


def odd_pieces(data: bytes, sizes: Iterator[int]) -> list[bytes]:
    pieces = []
    offset = 0
    while offset < len(data):
        size = next(sizes)
        pieces.append(data[offset : offset + size])
        offset += size
    return pieces


def as_pdvs(pieces: list[bytes], kind: int) -> list[PresentationDataValue]:
    last = len(pieces) - 1
    return [
        PresentationDataValue(CONTEXT_ID, kind | (PDV_LAST if index == last else 0), piece)
        for index, piece in enumerate(pieces)
    ]


def ct_instance(folder: Path, rows: int = 64, columns: int = 64) -> tuple[str, bytes]:
    """The SOP Instance UID and data set bytes of a new CT instance."""
    (path,) = write_ct_files(folder, 1, rows, columns)
    return path.stem, dataset_bytes(path)


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

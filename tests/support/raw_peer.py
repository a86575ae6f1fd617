"""A peer driven PDU by PDU over a plain socket, with dicomd's own codecs: it can do what
polite peers never do (odd fragments, several to a PDU, broken data sets, leaving halfway)."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from pathlib import Path

from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from dicomd.dimse.command import DATA_SET_PRESENT, Command, CommandField
from dicomd.dimse.messages import PDV_COMMAND, PDV_LAST
from dicomd.uids import STUDY_ROOT_FIND, STUDY_ROOT_MOVE
from dicomd.ul.pdu import (
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
from tests.support.daemons import RunningDaemon
from tests.support.datasets import dataset_bytes, write_ct_files
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


def find_command(message_id: int) -> bytes:
    """A Study Root C-FIND-RQ whose identifier follows."""
    return Command(
        command_field=CommandField.C_FIND_RQ,
        message_id=message_id,
        affected_sop_class_uid=STUDY_ROOT_FIND,
        priority=0,
        command_data_set_type=DATA_SET_PRESENT,
    ).encode()


def move_command(message_id: int, destination: str) -> bytes:
    """A Study Root C-MOVE-RQ to ``destination`` whose identifier follows."""
    return Command(
        command_field=CommandField.C_MOVE_RQ,
        message_id=message_id,
        affected_sop_class_uid=STUDY_ROOT_MOVE,
        priority=0,
        move_destination=destination,
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

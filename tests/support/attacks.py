"""What the attack tests need: bombs built without holding them, a raw peer proposing
any context, a daemon's peak memory and the stalls its lag monitor logged.

A deflate bomb is never held whole, neither inflated nor deflated: once a
compressor has been fully flushed (``Z_FULL_FLUSH``) it has forgotten all it
saw, so the same filler block always compresses to the same bytes.  The block
is compressed once and its bytes repeated, which makes a 2 GiB bomb a matter
of milliseconds and of a few KiB in the test.
"""

from __future__ import annotations

import random
import re
import select
import socket
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import generate_uid

from dicomd.dimse.messages import PDV_LAST
from dicomd.ul.pdu import (
    AAbort,
    AAssociateRQ,
    PresentationContextRQ,
    UserInformation,
    encode_pdata,
)
from tests.support.daemons import RunningDaemon
from tests.support.datasets import ct_dataset
from tests.support.dcmtk import run_echoscu
from tests.support.processes import LOCALHOST, status_kib
from tests.support.raw_peer import RawPeer

MIB = 1024 * 1024
GIB = 1024 * MIB
DAEMON_MAX_PDU = 262144
"""The Maximum Length the daemon announces at its default ``limits.max_pdu_length``."""
LARGEST_FRAGMENT = DAEMON_MAX_PDU - 6
"""The most data one PDV may carry in a PDU of that length (PDV item header: 4 + 1 + 1)."""

# -- the daemon seen from outside ----------------------------------------------------------


def peak_memory_mib(pid: int) -> float:
    """The peak resident set size of process ``pid`` so far (``VmHWM``), in MiB."""
    return status_kib(pid, "VmHWM") / 1024


_STALL = re.compile(r"reactor stalled for (\d+) ms")


def stalls_ms(log: str) -> list[int]:
    """Each stall the daemon's lag monitor logged (``reactor stalled for N ms``), in ms."""
    return [int(found) for found in _STALL.findall(log)]


def worst_stall_ms(daemon: RunningDaemon) -> int:
    """The longest stall the daemon logged so far, 0 when none was over the monitor's 100 ms."""
    return max(stalls_ms(daemon.log_text()), default=0)


def wait_for_lag_monitor(daemon: RunningDaemon) -> None:
    log = daemon.wait_for_log(lambda text: "reactor lag monitor" in text)
    assert "reactor lag monitor" in log, "the daemon runs no lag monitor"


class EchoesDuring:
    """dcmtk's echoscu run again and again on a thread, each a new association, until stopped.

    ``results`` keeps (seconds, exit status) of each run, so that a test can
    say a normal peer was served while an attack went on.
    """

    def __init__(self, daemon: RunningDaemon) -> None:
        self.daemon = daemon
        self.results: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                code = run_echoscu(self.daemon).returncode
            except subprocess.TimeoutExpired:
                code = -1
            self.results.append((time.monotonic() - started, code))
            self._stop.wait(0.05)

    def __enter__(self) -> EchoesDuring:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def failures(self) -> list[tuple[float, int]]:
        return [result for result in self.results if result[1] != 0]


# -- a raw peer proposing what the test chooses ---------------------------------------------

Contexts = Sequence[tuple[str, Sequence[str]]]
"""Proposed presentation contexts: (abstract syntax, transfer syntaxes); IDs 1, 3, 5..."""


def associate_rq(
    daemon: RunningDaemon,
    contexts: Contexts,
    calling_ae_title: str = "ATTACKER",
    max_length: int = 0,
) -> bytes:
    proposed = tuple(
        PresentationContextRQ(2 * index + 1, abstract_syntax, tuple(syntaxes))
        for index, (abstract_syntax, syntaxes) in enumerate(contexts)
    )
    user_information = UserInformation(
        max_length=max_length, implementation_class_uid="1.2.826.0.1.3680043.9.9999.66"
    )
    return AAssociateRQ(daemon.ae_title, calling_ae_title, proposed, user_information).encode()


def replaced(data: bytes, old: bytes, new: bytes) -> bytes:
    """``data`` with its one occurrence of ``old`` replaced by ``new`` of the same length, so
    that every length around it still holds: how a test slips in bytes an encoder refuses."""
    assert len(old) == len(new) and data.count(old) == 1, (old, new)
    return data.replace(old, new)


class RawAssociation(RawPeer):
    """A raw peer (see `RawPeer`) whose A-ASSOCIATE-RQ is the test's own bytes.

    ``answer`` is the daemon's first PDU: an A-ASSOCIATE-AC, -RJ or an A-ABORT.
    """

    def __init__(self, daemon: RunningDaemon, request: bytes) -> None:
        self.socket = socket.create_connection((LOCALHOST, daemon.port), timeout=30)
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.socket.sendall(request)
        self.answer = self.receive()

    def send_fragment(self, context_id: int, control: int, data: bytes) -> None:
        self.socket.sendall(encode_pdata(context_id, control, data))

    def send_stream(
        self, context_id: int, control: int, pieces: Iterable[bytes], fragment: int
    ) -> int:
        """Send a message's bytes, however they come, as PDVs of ``fragment`` bytes, the last
        one marked so; a deflate stream of odd length gets its NUL of padding.  Returns the
        number of bytes sent."""
        buffer = bytearray()
        sent = 0
        for piece in pieces:
            buffer += piece
            while len(buffer) > fragment:
                self.send_fragment(context_id, control, bytes(buffer[:fragment]))
                del buffer[:fragment]
                sent += fragment
        if len(buffer) % 2:
            buffer += b"\0"
        self.send_fragment(context_id, control | PDV_LAST, bytes(buffer))
        return sent + len(buffer)

    def close(self) -> None:
        self.socket.close()


def abort_or_close(peer: RawAssociation, timeout: float = 10.0) -> object:
    """The next PDU, or None when the daemon closes the connection first."""
    peer.socket.settimeout(timeout)
    try:
        return peer.receive()
    except (AssertionError, ConnectionResetError):
        return None


def send_until_answered(
    peer: RawAssociation, pdu: bytes, most: int, wait: float = 5.0
) -> tuple[int, bytes]:
    """Send ``pdu`` again and again, up to ``most`` bytes in all, stopping as soon as the
    daemon says anything; returns (bytes sent, what the daemon said, up to a second after)."""
    sent = 0
    connection = peer.socket
    while sent < most:
        readable, _, _ = select.select([connection], [], [], 0)
        if readable:
            break
        try:
            connection.sendall(pdu)
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += len(pdu)
    said = b""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        connection.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            chunk = connection.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            break
        if not chunk:
            break
        said += chunk
        if len(said) >= 10:
            break
    return sent, said


def is_abort(said: bytes, source: int, reason: int) -> bool:
    return said[:10] == AAbort(source, reason).encode()


# -- data sets, element by element (explicit VR little endian) ------------------------------

_SHORT = struct.Struct("<HH2sH")
_LONG = struct.Struct("<HH2sxxL")
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT"})


def element(tag: int, vr: str, value: bytes) -> bytes:
    """One explicit VR little endian element, its value padded to even length."""
    if len(value) % 2:
        value += b"\0" if vr in {"UI", "OB"} else b" "
    return element_header(tag, vr, len(value)) + value


def element_header(tag: int, vr: str, length: int) -> bytes:
    if vr in _LONG_VRS:
        return _LONG.pack(tag >> 16, tag & 0xFFFF, vr.encode(), length)
    return _SHORT.pack(tag >> 16, tag & 0xFFFF, vr.encode(), length)


def ct_header(
    sop_instance_uid: str, pixel_bytes: int, rows: int, columns: int, study_uid: str = ""
) -> bytes:
    """A CT data set's elements up to and with the Pixel Data header of ``pixel_bytes``:
    what is left to send after it is the pixel data."""
    dataset = ct_dataset(study_uid or generate_uid(), generate_uid(), 1, rows=1, columns=1)
    del dataset.PixelData
    dataset.SOPInstanceUID = sop_instance_uid
    dataset.Rows, dataset.Columns = rows, columns
    encoded = DicomBytesIO()
    encoded.is_little_endian, encoded.is_implicit_VR = True, False
    write_dataset(encoded, dataset)
    return encoded.getvalue() + element_header(0x7FE00010, "OW", pixel_bytes)


# -- bombs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Deflated:
    """A raw deflate stream of ``head``, then ``filler`` ``repeats`` times, then ``tail``,
    produced piece by piece; its compressed ``size`` is known before it is produced."""

    head: bytes
    filler: bytes
    repeats: int
    tail: bytes = b""

    def _parts(self) -> tuple[bytes, bytes, bytes]:
        compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
        head = compressor.compress(self.head) + compressor.flush(zlib.Z_FULL_FLUSH)
        block = compressor.compress(self.filler) + compressor.flush(zlib.Z_FULL_FLUSH)
        again = compressor.compress(self.filler) + compressor.flush(zlib.Z_FULL_FLUSH)
        assert block == again, "a fully flushed compressor no longer repeats itself"
        tail = compressor.compress(self.tail) + compressor.flush()
        return head, block, tail

    @property
    def size(self) -> int:
        head, block, tail = self._parts()
        return len(head) + self.repeats * len(block) + len(tail)

    @property
    def inflated_size(self) -> int:
        return len(self.head) + self.repeats * len(self.filler) + len(self.tail)

    def __iter__(self) -> Iterator[bytes]:
        head, block, tail = self._parts()
        yield head
        for _ in range(self.repeats):
            yield block
        yield tail


def zeros(length: int) -> bytes:
    return bytes(length)


def sparse_block(length: int, gap: int, seed: int = 1) -> bytes:
    """Zeros with a random non-zero byte every ``gap`` bytes: at a gap of 600 it deflates
    some 165 to 1, under the daemon's inflation ratio limit of 200."""

    block = bytearray(length)
    generator = random.Random(seed)
    for offset in range(0, length, gap):
        block[offset] = generator.randrange(1, 256)
    return bytes(block)


def low_entropy_block(length: int, seed: int = 6) -> bytes:
    """Random bytes of which 7 in 8 are zero: deflates some 5 to 1."""
    table = bytes(0 if value < 224 else value for value in range(256))
    return random.Random(seed).randbytes(length).translate(table)


def ct_bomb(sop_instance_uid: str, filler: bytes, repeats: int) -> Deflated:
    """A deflated CT data set whose pixel data is ``filler`` ``repeats`` times."""
    pixel_bytes = len(filler) * repeats
    side = int((pixel_bytes // 2) ** 0.5)
    return Deflated(ct_header(sop_instance_uid, pixel_bytes, side, side), filler, repeats)


PRIVATE_CREATOR = 0x00090010
PRIVATE_BLOB = 0x00091000


def study_identifier_around(blob_length: int) -> tuple[bytes, bytes]:
    """A Study Root STUDY-level identifier as (what comes before the value of a private OB
    of ``blob_length`` bytes, what comes after it)."""
    before = (
        element(0x00080052, "CS", b"STUDY")
        + element(PRIVATE_CREATOR, "LO", b"ATTACKER")
        + element_header(PRIVATE_BLOB, "OB", blob_length)
    )
    after = element(0x00100020, "LO", b"") + element(0x0020000D, "UI", b"")
    return before, after


def tiny_elements_identifier(length: int) -> bytes:
    """A Study Root STUDY-level identifier of about ``length`` bytes, nearly all of it
    private elements of 10 bytes each (8 of header, a 2-byte value), in groups 0021, 0023..."""
    parts = [
        element(0x00080052, "CS", b"STUDY")
        + element(0x00100020, "LO", b"")
        + element(0x0020000D, "UI", b"")
    ]
    size = len(parts[0])
    group = 0x0021
    while size < length:
        creators, blocks = [], []
        for block in range(0x10, 0x100):
            if size >= length:
                break
            creators.append(element((group << 16) | block, "LO", b"AB"))
            blocks.append(
                b"".join(
                    _SHORT.pack(group, (block << 8) | number, b"LO", 2) + b"xy"
                    for number in range(256)
                )
            )
            size += 10 + len(blocks[-1])
        parts += creators + blocks
        group += 2
    return b"".join(parts)

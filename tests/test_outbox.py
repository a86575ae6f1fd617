"""The outbox writes only while the transport has room, and says when it has drained."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport

from dicomd.dimse.messages import PDV_COMMAND, PDV_LAST
from dicomd.dimse.outbox import FileData, Outbox
from dicomd.ul.pdu import PDataTF, decode

COMMAND = b"\x00\x00\x00\x00\x04\x00\x00\x00\x08\x00\x00\x00"  # one UL element (0000,0000)


class FillingTransport(StringTransport):
    """A transport that pauses its producer once more than ``room`` bytes wait in it, as
    Twisted's TCP transport does when its buffer passes its size."""

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room

    def write(self, data: bytes) -> None:
        super().write(data)
        if len(self.value()) > self.room and self.producer is not None:
            self.producer.pauseProducing()

    def drain(self) -> bytes:
        """The peer reads everything; the transport asks for more."""
        written = self.value()
        self.clear()
        if self.producer is not None:
            self.producer.resumeProducing()
        return written


def outbox_on(transport: StringTransport, errors: list[OSError] | None = None) -> Outbox:
    failed = errors.append if errors is not None else _unexpected
    return Outbox(transport.write, transport, lambda: 16384, failed)


def _unexpected(error: OSError) -> None:
    raise AssertionError(f"unexpected error {error}")


def pdata_values(written: bytes) -> list[tuple[int, bytes]]:
    """(control header, value) of every PDV in the P-DATA-TF PDUs ``written``."""
    return [(pdv.control, pdv.data) for pdu in pdus(written) for pdv in pdu.pdvs]


def pdus(written: bytes) -> list[PDataTF]:
    """The P-DATA-TF PDUs ``written``."""
    decoded = []
    while written:
        (length,) = struct.unpack(">L", written[2:6])
        pdu = decode(written[: 6 + length])
        assert isinstance(pdu, PDataTF)
        decoded.append(pdu)
        written = written[6 + length :]
    return decoded


def data_set_of(values: list[tuple[int, bytes]]) -> bytes:
    return b"".join(value for control, value in values if not control & PDV_COMMAND)


def test_a_file_leaves_only_as_fast_as_the_transport_drains(tmp_path: Path) -> None:
    content = bytes(range(256)) * 400  # 102400 bytes: seven PDUs of 16 KiB
    path = tmp_path / "instance"
    path.write_bytes(content)
    transport = FillingTransport(room=32 * 1024)
    outbox = outbox_on(transport)

    outbox.send(1, COMMAND, FileData(path, 0, len(content)))
    drained = outbox.drained()
    turns = [transport.drain()]
    while not drained.called:
        turns.append(transport.drain())
    turns.append(transport.value())

    assert all(len(turn) <= 32 * 1024 + 16384 for turn in turns), [len(t) for t in turns]
    assert len(turns) >= 3
    values = pdata_values(b"".join(turns))
    assert values[-1][0] == PDV_LAST
    assert data_set_of(values) == content
    assert transport.producer is outbox


def test_a_message_that_fits_in_one_pdu_is_one_pdu_and_one_write(tmp_path: Path) -> None:
    path = tmp_path / "small"
    path.write_bytes(b"x" * 1000)
    written: list[bytes] = []
    outbox = Outbox(written.append, FillingTransport(room=1 << 30), lambda: 16384, _unexpected)

    outbox.send(1, COMMAND, b"a match")
    outbox.send(1, COMMAND, FileData(path, 0, 1000))

    assert [pdata_values(each) for each in written] == [
        [(PDV_COMMAND | PDV_LAST, COMMAND), (PDV_LAST, b"a match")],
        [(PDV_COMMAND | PDV_LAST, COMMAND), (PDV_LAST, b"x" * 1000)],
    ]


def test_messages_wait_in_order_while_the_transport_is_full() -> None:
    transport = FillingTransport(room=1 << 30)
    outbox = outbox_on(transport)
    outbox.pauseProducing()

    outbox.send(1, COMMAND, b"first")
    outbox.send(1, COMMAND, b"second")
    drained = outbox.drained()

    assert transport.value() == b"" and not drained.called
    assert transport.drain() == b"" and drained.called
    values = [value for _, value in pdata_values(transport.value())]
    assert values == [COMMAND, b"first", COMMAND, b"second"]


def test_drained_is_at_once_when_nothing_waits_and_when_the_association_is_over() -> None:
    transport = FillingTransport(room=1 << 30)
    outbox = outbox_on(transport)
    assert outbox.drained().called
    outbox.pauseProducing()
    outbox.send(1, COMMAND, b"never read")
    waiting = outbox.drained()

    outbox.close()

    assert waiting.called and outbox.drained().called
    assert transport.producer is None


def test_a_file_shorter_than_promised_is_an_error_and_ends_the_outbox(tmp_path: Path) -> None:
    path = tmp_path / "short"
    path.write_bytes(b"x" * 40000)
    transport = FillingTransport(room=1 << 30)
    errors: list[OSError] = []
    outbox = outbox_on(transport, errors)

    outbox.send(1, COMMAND, FileData(path, 0, 50000))

    assert [str(error) for error in errors] == [f"{path} ended 10000 bytes early"]
    assert transport.producer is None
    outbox.send(1, COMMAND, b"after the end")
    assert b"after the end" not in transport.value()


def test_a_file_that_cannot_be_opened_sends_nothing(tmp_path: Path) -> None:
    transport = FillingTransport(room=1 << 30)
    errors: list[OSError] = []
    outbox = outbox_on(transport, errors)

    outbox.send(1, COMMAND, FileData(tmp_path / "missing", 0, 10))

    assert transport.value() == b""
    assert [type(error) for error in errors] == [FileNotFoundError]


@settings(max_examples=200, deadline=None)
@given(
    pieces=st.lists(st.binary(max_size=3000), max_size=8),
    max_pdu_length=st.integers(8, 4000),
)
def test_data_in_pieces_leaves_in_full_pdus_whatever_the_cut(
    pieces: list[bytes], max_pdu_length: int
) -> None:
    transport = FillingTransport(room=1 << 30)
    outbox = Outbox(transport.write, transport, lambda: max_pdu_length, _unexpected)

    outbox.send(1, COMMAND, tuple(pieces))

    written = transport.value()
    values = [(control, value) for control, value in pdata_values(written)]
    data = [(control, value) for control, value in values if not control & PDV_COMMAND]
    assert b"".join(value for _, value in data) == b"".join(pieces)
    assert [control for control, _ in data] == [0] * (len(data) - 1) + [PDV_LAST]
    carrying_data = [pdu for pdu in pdus(written) if not pdu.pdvs[-1].control & PDV_COMMAND]
    assert all(
        len(pdu.encode()) - 6 == max_pdu_length - max_pdu_length % 2 for pdu in carrying_data[:-1]
    )


def test_a_deflated_file_leaves_inflated_a_pdu_at_a_time(tmp_path: Path) -> None:
    content = bytes(range(256)) * 4000  # about 1 MB, compressing well
    compressor = zlib.compressobj(wbits=-15)
    deflated = compressor.compress(content) + compressor.flush()
    path = tmp_path / "deflated"
    path.write_bytes(b"meta" + deflated + b"\0"[: len(deflated) % 2])
    transport = FillingTransport(room=64 * 1024)
    outbox = outbox_on(transport)

    outbox.send(1, COMMAND, FileData(path, 4, path.stat().st_size - 4, inflate=True))
    drained = outbox.drained()
    turns = [transport.drain()]
    while not drained.called:
        turns.append(transport.drain())
    turns.append(transport.value())

    assert max(len(turn) for turn in turns) <= 64 * 1024 + 16384
    assert data_set_of(pdata_values(b"".join(turns))) == content

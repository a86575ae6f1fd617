"""Sending DIMSE messages in order, streaming large data sets from disk.

The fragments of one message must follow each other on the association, so
messages leave one at a time.  A data set that lives in a file is read in
PDU-sized pieces only as fast as the transport drains them (a Twisted pull
producer), so a 1 GiB instance never sits in memory.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from twisted.internet.interfaces import IConsumer, IPullProducer
from zope.interface import implementer

from dicomd.dimse.datasets import Buffer
from dicomd.dimse.messages import PDV_LAST, fragment, fragment_length
from dicomd.ul.pdu import encode_pdata

# With no limit from the peer, data still leaves in pieces this big, so that
# memory stays bounded and other associations get their turn.
UNLIMITED_PIECE = 1 << 20


@dataclass(frozen=True, slots=True)
class FileData:
    """A data set that is a byte range of a file."""

    path: Path
    offset: int
    length: int


Pieces = tuple[Buffer, ...]
"""A data set encoded in pieces that go out one after the other (`encode_in_pieces`)."""


@dataclass(frozen=True, slots=True)
class _Message:
    context_id: int
    command: bytes
    data: bytes | Pieces | FileData | None


@implementer(IPullProducer)
class Outbox:
    """The queue of messages of one association and the producer that streams them.

    ``send_pdu`` puts one encoded P-DATA-TF on the association; ``consumer``
    is the transport, whose buffer decides when the next piece is read.  A
    file that cannot be read to its end leaves a message half sent, which
    only an abort can end: ``on_error`` is told.
    """

    def __init__(
        self,
        send_pdu: Callable[[bytes], None],
        consumer: IConsumer,
        max_pdu_length: Callable[[], int],
        on_error: Callable[[OSError], None],
    ) -> None:
        self.send_pdu = send_pdu
        self.consumer = consumer
        self.max_pdu_length = max_pdu_length
        self.on_error = on_error
        self._queue: deque[_Message] = deque()
        self._streaming: _FileStream | _BytesStream | None = None

    def send(self, context_id: int, command: bytes, data: bytes | Pieces | FileData | None) -> None:
        """Queue one message; it leaves once those before it have."""
        self._queue.append(_Message(context_id, command, data))
        if self._streaming is None:
            self._flush()

    def close(self) -> None:
        """The association is over: drop what has not left."""
        self._queue.clear()
        if self._streaming is not None:
            self._streaming.close()
            self._streaming = None
            self.consumer.unregisterProducer()

    def _flush(self) -> None:
        limit = self.max_pdu_length()
        while self._queue and self._streaming is None:
            message = self._queue.popleft()
            data = message.data
            if isinstance(data, tuple) and sum(map(len, data)) <= _piece(limit):
                data = b"".join(data)
            if data is None or (isinstance(data, bytes) and len(data) <= _piece(limit)):
                for pdu in fragment(message.context_id, message.command, data, limit):
                    self.send_pdu(pdu)
                continue
            # A data set of several PDUs leaves one PDU per turn of the transport, so that
            # a large one neither fills the transport's buffer nor holds up the reactor.
            try:
                stream = (
                    _FileStream(message.context_id, data, limit)
                    if isinstance(data, FileData)
                    else _BytesStream(
                        message.context_id, data if isinstance(data, tuple) else (data,), limit
                    )
                )
            except OSError as error:
                self.close()
                self.on_error(error)
                return
            for pdu in fragment(message.context_id, message.command, None, limit):
                self.send_pdu(pdu)
            self._streaming = stream
            self.consumer.registerProducer(self, False)

    # -- IPullProducer ---------------------------------------------------

    def resumeProducing(self) -> None:
        stream = self._streaming
        if stream is None:
            return
        try:
            pdu, finished = stream.next_pdu()
        except OSError as error:
            self.close()
            self.on_error(error)
            return
        self.send_pdu(pdu)
        if finished:
            stream.close()
            self._streaming = None
            self.consumer.unregisterProducer()
            self._flush()

    def stopProducing(self) -> None:
        self.close()


def _piece(max_pdu_length: int) -> int:
    """How much of a data set one PDU carries; with no limit from the peer, still a piece."""
    return fragment_length(max_pdu_length) or UNLIMITED_PIECE


class _FileStream:
    """The data fragments of one file-backed data set, read one at a time."""

    def __init__(self, context_id: int, data: FileData, max_pdu_length: int) -> None:
        self.context_id = context_id
        self.remaining = data.length
        self.piece = _piece(max_pdu_length)
        self.file: BinaryIO = open(data.path, "rb")  # noqa: SIM115 - closed by close()
        self.file.seek(data.offset)

    def next_pdu(self) -> tuple[bytes, bool]:
        chunk = self.file.read(min(self.piece, self.remaining))
        if not chunk and self.remaining:
            raise OSError(f"{self.file.name} ended {self.remaining} bytes early")
        self.remaining -= len(chunk)
        finished = self.remaining == 0
        return encode_pdata(self.context_id, PDV_LAST if finished else 0, chunk), finished

    def close(self) -> None:
        self.file.close()


class _BytesStream:
    """The data fragments of one data set held in memory, in one or more pieces, cut one
    PDU at a time; a fragment may span two pieces."""

    def __init__(self, context_id: int, pieces: Pieces, max_pdu_length: int) -> None:
        self.context_id = context_id
        self.pieces = deque(memoryview(piece).cast("B") for piece in pieces if len(piece))
        self.piece = _piece(max_pdu_length)

    def next_pdu(self) -> tuple[bytes, bool]:
        parts: list[memoryview] = []
        wanted = self.piece
        while wanted and self.pieces:
            head = self.pieces[0]
            parts.append(head[:wanted])
            wanted -= len(parts[-1])
            if len(head) <= len(parts[-1]):
                self.pieces.popleft()
            else:
                self.pieces[0] = head[len(parts[-1]) :]
        chunk = parts[0] if len(parts) == 1 else b"".join(parts)
        finished = not self.pieces
        return encode_pdata(self.context_id, PDV_LAST if finished else 0, chunk), finished

    def close(self) -> None:
        self.pieces.clear()

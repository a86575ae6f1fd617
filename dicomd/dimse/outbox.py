"""Sending DIMSE messages in order, only as fast as the peer reads them.

The fragments of one message must follow each other on the association, so
messages leave one at a time.  The outbox is a push producer on the
transport for the association's whole life: it writes PDUs until the
transport's buffer is full, then waits to be resumed.  A data set that lives
in a file is read one PDU at a time as it goes, so a 1 GiB instance never
sits in memory; whoever sends many messages (a C-FIND's matches) waits for
`Outbox.drained` between them, so a peer that does not read holds one
message and a transport buffer, not every match.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from twisted.internet import defer
from twisted.internet.interfaces import IConsumer, IPushProducer
from zope.interface import implementer

from dicomd.dimse.messages import (
    UNLIMITED_PIECE,
    CutData,
    cut,
    fragment_length,
    message_pdus,
)

if TYPE_CHECKING:
    from dicomd.dimse.datasets import Buffer


@dataclass(frozen=True, slots=True)
class FileData:
    """A data set that is a byte range of a file; with ``inflate``, a deflated one that goes
    out inflated (explicit VR little endian), a piece at a time."""

    path: Path
    offset: int
    length: int
    inflate: bool = False


Pieces = tuple["Buffer", ...]
"""A data set encoded in pieces that go out one after the other (`encode_in_pieces`)."""


@dataclass(frozen=True, slots=True)
class _Message:
    context_id: int
    command: bytes
    data: bytes | Pieces | FileData | None


@implementer(IPushProducer)
class Outbox:
    """The queue of messages of one association and the producer that writes them.

    ``send_pdu`` puts one encoded P-DATA-TF on the association; ``consumer``
    is the transport, which pauses and resumes the outbox as its buffer fills
    and drains.  A file that cannot be read to its end leaves a message half
    sent, which only an abort can end: ``on_error`` is told.
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
        self._current: Iterator[bytes] | None = None
        self._paused = False
        self._writing = False
        self._closed = False
        self._waiting: list[defer.Deferred[None]] = []
        consumer.registerProducer(self, True)

    def send(self, context_id: int, command: bytes, data: bytes | Pieces | FileData | None) -> None:
        """Queue one message; it leaves once those before it have and the transport has room."""
        if self._closed:
            return
        self._queue.append(_Message(context_id, command, data))
        self._write()

    def drained(self) -> defer.Deferred[None]:
        """Fires once every message queued so far is in the transport and the transport is not
        full: the moment to queue the next of many.  At once when that is already so, or when
        the association is over (nothing will ever be sent again)."""
        if self._closed or self._is_drained():
            return defer.succeed(None)
        waiting: defer.Deferred[None] = defer.Deferred()
        self._waiting.append(waiting)
        return waiting

    def close(self) -> None:
        """The association is over: drop what has not left, let whoever waits go on."""
        if self._closed:
            return
        self._closed = True
        self._queue.clear()
        if self._current is not None:
            self._current.close()
            self._current = None
        self.consumer.unregisterProducer()
        self._wake()

    # -- IPushProducer ---------------------------------------------------

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._write()

    def stopProducing(self) -> None:
        self.close()

    # -- writing -----------------------------------------------------------

    def _write(self) -> None:
        """Write PDUs until the transport is full or nothing is left; then wake the waiting."""
        if self._writing:
            return  # a PDU written from here led back here: the loop below goes on
        self._writing = True
        try:
            while not (self._paused or self._closed) and self._write_one():
                pass
        finally:
            self._writing = False
        if self._is_drained():
            self._wake()

    def _write_one(self) -> bool:
        """Write the next PDU; False when there is none."""
        if self._current is None:
            if not self._queue:
                return False
            self._current = _pdus(self._queue.popleft(), self.max_pdu_length())
        try:
            pdu = next(self._current)
        except StopIteration:
            self._current = None
            return True
        except OSError as error:
            self.close()
            self.on_error(error)
            return False
        self.send_pdu(pdu)
        return True

    def _is_drained(self) -> bool:
        return not (self._paused or self._queue or self._current)

    def _wake(self) -> None:
        waiting, self._waiting = self._waiting, []
        for each in waiting:
            each.callback(None)


def _pdus(message: _Message, max_pdu_length: int) -> Iterator[bytes]:
    """The PDUs of one message, each made only when it is about to be written.

    A file is opened, and its first fragment read, before the command leaves,
    so that one that cannot be opened sends nothing at all.
    """
    context_id, command, data = message.context_id, message.command, message.data
    if not isinstance(data, FileData):
        cut_data = None if data is None else partial(cut, data)
        yield from message_pdus(context_id, command, cut_data, max_pdu_length)
        return
    with open(data.path, "rb") as file:
        file.seek(data.offset)
        if data.inflate:
            from dicomd.part10 import inflated_pieces  # pydicom: only deflate needs it

            piece = fragment_length(max_pdu_length) or UNLIMITED_PIECE
            inflated = inflated_pieces(file, data.length, piece)
            cut_data: CutData = partial(cut, inflated)
        else:
            cut_data = partial(_file_fragments, file, data.length)
        yield from message_pdus(context_id, command, cut_data, max_pdu_length)


def _file_fragments(
    file: BinaryIO, length: int, first: int, rest: int
) -> Iterator[tuple[bytes, bool]]:
    """``length`` bytes of ``file`` from where it stands: ``first`` bytes, then ``rest`` a
    fragment."""
    remaining = length
    size = first
    while True:
        chunk = file.read(min(size, remaining))
        if len(chunk) < min(size, remaining):
            raise OSError(f"{file.name} ended {remaining - len(chunk)} bytes early")
        remaining -= len(chunk)
        yield chunk, not remaining
        if not remaining:
            return
        size = rest

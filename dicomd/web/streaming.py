"""A response body written at the client's pace, files read a chunk at a time in threads.

A WADO-RS series may be gigabytes long.  `PacedBody` is the push producer
registered on the request: the transport pauses it when its send buffer is
full and resumes it once drained, and every `write` waits while paused, so
at most a chunk or two are ever in memory whatever the series' size and the
client's speed.  `send_file` reads the next chunk in a thread while the
previous one goes out, so the reactor thread never waits for the disk.

A client that goes away stops the producer; the next `write` raises
`ClientGone` and the caller's ``finally`` blocks close files and remove spool
files.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, BinaryIO, Final

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.internet.threads import deferToThreadPool
from zope.interface import implementer

CHUNK: Final = 1 << 20
"""Bytes read from a file at a time: large enough that a thread hop per chunk costs
little, small enough that a paused client holds little."""


class ClientGone(Exception):
    """The client closed the connection before the body was whole."""


@implementer(IPushProducer)
class PacedBody:
    """Writes to ``request`` while its transport wants more, waiting otherwise."""

    def __init__(self, request: Any) -> None:
        self._request = request
        self._resumed: defer.Deferred[None] | None = None
        self.gone = False
        request.registerProducer(self, True)
        request.notifyFinish().addErrback(lambda _: self.stopProducing())

    def pauseProducing(self) -> None:
        if self._resumed is None:
            self._resumed = defer.Deferred()

    def resumeProducing(self) -> None:
        resumed, self._resumed = self._resumed, None
        if resumed is not None:
            resumed.callback(None)

    def stopProducing(self) -> None:
        self.gone = True
        self.resumeProducing()

    async def write(self, data: bytes) -> None:
        """Write ``data``, then wait until the client has taken enough of what is queued."""
        if self.gone:
            raise ClientGone()
        self._request.write(data)
        while self._resumed is not None:
            await self._resumed
        if self.gone:
            raise ClientGone()

    def close(self) -> None:
        """No more writes: the request may be finished.  Once the connection is lost the
        request has no channel left to unregister from (twisted.web drops it)."""
        if self._request.channel is not None:
            self._request.unregisterProducer()


async def send_file(
    body: PacedBody,
    reactor: Any,
    path: Path,
    offset: int = 0,
    length: int | None = None,
) -> int:
    """Stream ``length`` bytes of ``path`` from ``offset`` (to its end when None), reading
    each next chunk in a thread while the previous one is written; the bytes sent.

    Raises `OSError` for a file that cannot be read, or that ends before
    ``length`` bytes.
    """
    pool = reactor.getThreadPool()
    reader = await deferToThreadPool(reactor, pool, _ChunkReader, path, offset, length)
    sent = 0
    reading = deferToThreadPool(reactor, pool, reader.read)
    try:
        while chunk := await reading:
            sent += len(chunk)
            reading = deferToThreadPool(reactor, pool, reader.read)
            await body.write(chunk)
        if length is not None and sent < length:
            raise OSError(f"{path.name} ends {length - sent} bytes early")
        return sent
    finally:
        reading.addErrback(lambda _: None)  # a read left running when the client went away
        deferToThreadPool(reactor, pool, reader.close)


class _ChunkReader:
    """A file read a chunk at a time from threads, closed only between reads (a read
    may still run in its thread when the client goes away)."""

    def __init__(self, path: Path, offset: int, length: int | None) -> None:
        self._lock = threading.Lock()
        self._file: BinaryIO | None = path.open("rb", buffering=0)  # type: ignore[assignment]
        self._remaining = length
        try:
            self._file.seek(offset)  # type: ignore[union-attr]
        except BaseException:
            self.close()
            raise

    def read(self) -> bytes:
        with self._lock:
            if self._file is None or self._remaining == 0:
                return b""
            size = CHUNK if self._remaining is None else min(CHUNK, self._remaining)
            chunk = self._file.read(size) or b""
            if self._remaining is not None:
                self._remaining -= len(chunk)
            return chunk

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

"""A response body written at the client's pace, files read a chunk at a time in threads.

A WADO-RS series may be gigabytes long.  `PacedBody` is the push producer
registered on the request: the transport pauses it when its send buffer is
full and resumes it once drained, and every `write` waits while paused, so
at most a chunk or two are ever in memory whatever the series' size and the
client's speed.  `send_chunks` reads the next chunk in a thread while the
previous one goes out, so the reactor thread never waits for the disk; a
file is opened, measured and its first chunk read in one trip to a thread
(`open_chunks`), so that a series of small files costs a thread hop a file.

A client that goes away stops the producer; the next `write` raises
`ClientGone` and the caller's ``finally`` blocks close files and remove spool
files.
"""

from __future__ import annotations

import os
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


async def open_chunks(
    reactor: Any, path: Path, offset: int = 0, length: int | None = None
) -> FileChunks:
    """``length`` bytes of ``path`` from ``offset`` (to its end when None), opened, measured
    and their first chunk read in one trip to a thread: a file of one chunk costs one."""
    return await deferToThreadPool(  # type: ignore[no-any-return]
        reactor, reactor.getThreadPool(), FileChunks, path, offset, length
    )


async def send_chunks(body: PacedBody, reactor: Any, chunks: FileChunks) -> None:
    """Write ``chunks`` to ``body``, the next one read in a thread while the previous one
    goes out.  Raises `OSError` for a file that cannot be read, or that ends early."""
    pool = reactor.getThreadPool()
    reading: defer.Deferred[bytes] | None = None
    try:
        chunk = chunks.first
        while chunk:
            reading = None if chunks.done else deferToThreadPool(reactor, pool, chunks.read)
            await body.write(chunk)
            if reading is None:
                break
            chunk = await reading
        if not chunks.done:
            raise OSError(f"{chunks.name} ends {chunks.remaining} bytes early")
    finally:
        if reading is not None:
            reading.addErrback(lambda _: None)  # left running when the client went away
        if not chunks.closed:
            deferToThreadPool(reactor, pool, chunks.close)


async def send_file(
    body: PacedBody, reactor: Any, path: Path, offset: int = 0, length: int | None = None
) -> None:
    """`open_chunks` then `send_chunks`."""
    await send_chunks(body, reactor, await open_chunks(reactor, path, offset, length))


class FileChunks:
    """A part of a file read a chunk at a time from threads, closed by the read that ends
    it, or else between reads (a read may still run when the client goes away).

    ``length`` is the number of bytes to send, known once opened.
    """

    def __init__(self, path: Path, offset: int, length: int | None) -> None:
        self.name = path.name
        self._lock = threading.Lock()
        self._file: BinaryIO | None = path.open("rb", buffering=0)  # type: ignore[assignment]
        try:
            size = os.fstat(self._file.fileno()).st_size  # type: ignore[union-attr]
            self.length = max(0, size - offset) if length is None else length
            self.remaining = self.length
            self._file.seek(offset)  # type: ignore[union-attr]
            self.first = self.read()
        except BaseException:
            self.close()
            raise

    @property
    def done(self) -> bool:
        return self.remaining == 0

    @property
    def closed(self) -> bool:
        return self._file is None

    def read(self) -> bytes:
        """The next chunk (empty at the end of the file); the last one closes the file."""
        with self._lock:
            if self._file is None or self.remaining == 0:
                return b""
            chunk = self._file.read(min(CHUNK, self.remaining)) or b""
            self.remaining -= len(chunk)
            if self.remaining == 0 or not chunk:
                self._file.close()
                self._file = None
            return chunk

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

"""multipart/related bodies (RFC 2046 5.1, RFC 2387) read as they stream, never whole.

A STOW-RS request is a multipart/related body of Part 10 files, possibly
gigabytes long.  `MultipartReader` is fed the body in pieces of any size and
answers what they hold: the headers of each part (`PartHeaders`), its content
as it passes (``bytes``), and where it ends (`PART_END`).  It keeps no more
than one piece, the delimiter's length and one part's headers, and each of
those is bounded: a part's headers past ``max_header_length``, a body that
never shows its boundary and one cut short before its closing delimiter are a
`MultipartError` of one line, the only exception it raises.

Like the other parsers of network bytes, it does no I/O and imports no Twisted.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Final

from dicomd.web.accept import MediaRange, parse_media_range


class MultipartError(ValueError):
    """The body is not a multipart body that can be read; the message says why, in one line."""


class _PartEnd(Enum):
    PART_END = "part end"


PART_END: Final = _PartEnd.PART_END
"""The event after the last content of a part."""


@dataclass(frozen=True, slots=True)
class PartHeaders:
    """The headers of a part, names in lower case, before any of its content."""

    fields: Mapping[str, str] = field(default_factory=dict)

    @property
    def content_type(self) -> MediaRange | None:
        """The part's media type, or None when it names none (or none that reads)."""
        value = self.fields.get("content-type")
        return None if value is None else parse_media_range(value)


Event = PartHeaders | bytes | _PartEnd

DEFAULT_MAX_HEADER_LENGTH: Final = 16 * 1024
"""A part's headers are a line or three; 16 KiB is far more than any client sends."""
_MAX_PADDING: Final = 1024
"""Spaces or tabs allowed after a delimiter before its line ends (RFC 2046 transport padding)."""
_MAX_BOUNDARY: Final = 70
_BOUNDARY_CHARACTERS: Final = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]*[0-9A-Za-z'()+_,\-./:=?]")
_HEADER_NAME: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class _State(Enum):
    PREAMBLE = "preamble"
    AFTER_DELIMITER = "after a delimiter"
    HEADERS = "headers"
    CONTENT = "content"
    CLOSED = "closed"


class MultipartReader:
    """Reads one multipart body whose delimiter is ``boundary``, fed in pieces (`feed`).

    The events are the same however the body is cut into pieces.  The
    preamble and the epilogue are skipped, as RFC 2046 says they are to be.
    """

    def __init__(self, boundary: str, max_header_length: int = DEFAULT_MAX_HEADER_LENGTH) -> None:
        check_boundary(boundary)
        self._delimiter = b"\r\n--" + boundary.encode("ascii")
        self._max_header_length = max_header_length
        # The first delimiter may open the body, without the line break before it.
        self._buffer = b"\r\n"
        self._at = 0
        self._state = _State.PREAMBLE
        self.parts = 0
        """How many parts have begun."""

    @property
    def closed(self) -> bool:
        """Whether the closing delimiter has been read: what follows is epilogue."""
        return self._state is _State.CLOSED

    @property
    def buffered(self) -> int:
        """How many bytes of the body are held, not yet answered for."""
        return len(self._buffer) - self._at

    def feed(self, data: bytes) -> Iterator[Event]:
        """The events of the next piece of the body, in order.

        Consume them before feeding the next piece.  Raises `MultipartError`.
        """
        if self._state is _State.CLOSED:
            return
        rest = self._buffer[self._at :]
        self._buffer = rest + data if rest else bytes(data)
        self._at = 0
        while True:
            event = self._next()
            if event is None:
                return
            yield event

    def end(self) -> None:
        """The body is over: raises `MultipartError` unless its closing delimiter came."""
        if self._state is _State.CLOSED:
            return
        if self._state is _State.PREAMBLE:
            raise MultipartError("the body holds no boundary delimiter")
        raise MultipartError(f"the body ends in {self._state.value}, before its closing delimiter")

    # The buffer is read from ``_at`` on, and cut only when the next piece comes: a piece
    # holding many small parts is not copied again for each of them.

    def _next(self) -> Event | None:
        """One event from the buffer, or None when more of the body is needed."""
        while True:
            state = self._state
            if state is _State.CONTENT:
                return self._content()
            if state is _State.HEADERS:
                return self._headers()
            if state is _State.PREAMBLE:
                if not self._skip_to_delimiter():
                    return None
            elif state is _State.AFTER_DELIMITER:
                if not self._after_delimiter():
                    return None
            else:
                self._buffer, self._at = b"", 0
                return None

    def _skip_to_delimiter(self) -> bool:
        found = self._buffer.find(self._delimiter, self._at)
        if found < 0:
            self._at = max(self._at, len(self._buffer) - (len(self._delimiter) - 1))
            return False
        self._at = found + len(self._delimiter)
        self._state = _State.AFTER_DELIMITER
        return True

    def _after_delimiter(self) -> bool:
        """What follows a delimiter: ``--`` closes the body, a line break opens a part."""
        buffer, at = self._buffer, self._at
        if len(buffer) - at < 2:
            return False
        if buffer.startswith(b"--", at):
            self._state = _State.CLOSED
            return False
        padding = at
        while padding < len(buffer) and buffer[padding] in b" \t":
            padding += 1
            if padding - at > _MAX_PADDING:
                raise MultipartError("a boundary delimiter is followed by a line of padding")
        if len(buffer) - padding < 2:
            return False
        if not buffer.startswith(b"\r\n", padding):
            raise MultipartError("a boundary delimiter is followed by other text on its line")
        self._at = padding + 2
        self._state = _State.HEADERS
        return True

    def _headers(self) -> PartHeaders | None:
        buffer, at = self._buffer, self._at
        if buffer.startswith(b"\r\n", at):
            end, after = at, at + 2  # no headers at all
        else:
            end = buffer.find(b"\r\n\r\n", at, at + self._max_header_length + 4)
            after = end + 4
        if end < 0:
            if len(buffer) - at >= self._max_header_length + 4:
                raise MultipartError(
                    f"the headers of part {self.parts + 1} are longer than "
                    f"{self._max_header_length} bytes"
                )
            return None
        headers = _parse_headers(buffer[at:end], self.parts + 1)
        self._at = after
        self._state = _State.CONTENT
        self.parts += 1
        return headers

    def _content(self) -> bytes | _PartEnd | None:
        buffer, at = self._buffer, self._at
        found = buffer.find(self._delimiter, at)
        if found == at:
            self._at = at + len(self._delimiter)
            self._state = _State.AFTER_DELIMITER
            return PART_END
        if found > at:
            self._at = found
            return buffer[at:found]
        # Keep what could be the start of a delimiter cut by the end of this piece.
        end = len(buffer) - (len(self._delimiter) - 1)
        if end <= at:
            return None
        self._at = end
        return buffer[at:end]


def _parse_headers(block: bytes, part: int) -> PartHeaders:
    fields: dict[str, str] = {}
    name = ""
    for line in block.split(b"\r\n") if block else ():
        if line[:1] in (b" ", b"\t") and name:  # folded onto the line before (RFC 5322 2.2.3)
            fields[name] += " " + line.strip().decode("latin-1")
            continue
        raw_name, colon, value = line.partition(b":")
        if not colon or not _HEADER_NAME.fullmatch(raw_name):
            raise MultipartError(f"part {part} has a header line that is no header field")
        name = raw_name.decode("ascii").lower()
        if name in fields:
            raise MultipartError(f"part {part} has its {name} header twice")
        fields[name] = value.strip().decode("latin-1")
    return PartHeaders(MappingProxyType(fields))


def check_boundary(boundary: str) -> None:
    """Raises `MultipartError` unless ``boundary`` is one RFC 2046 allows: 1 to 70 of its
    characters, not ending in a space."""
    if not (0 < len(boundary) <= _MAX_BOUNDARY and _BOUNDARY_CHARACTERS.fullmatch(boundary)):
        raise MultipartError(f"the boundary {_shown(boundary)} is not one RFC 2046 allows")


def _shown(text: str) -> str:
    """A hostile value, short and on one line, for a message."""
    cut = text[:80] + ("..." if len(text) > 80 else "")
    return repr(" ".join(cut.split()))

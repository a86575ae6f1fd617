"""Writing a ``multipart/related`` body (RFC 2387) as WADO-RS answers instances and frames.

Only the framing lives here: the boundary, each part's header and the
closing delimiter, as bytes.  The parts' contents are streamed between them
by the caller (`dicomd.web.streaming`), so a part may be a gigabyte long
without being held anywhere.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field


def _new_boundary() -> str:
    return f"dicomd-{uuid.uuid4().hex}"


@dataclass(frozen=True)
class MultipartWriter:
    """The framing of one ``multipart/related`` body whose root parts are all ``part_type``
    (``application/dicom``, ``application/octet-stream``, ``image/jpeg``...)."""

    part_type: str
    transfer_syntax: str | None = None
    """The ``transfer-syntax`` parameter of the parts' type, when it names one."""
    boundary: str = field(default_factory=_new_boundary)

    @property
    def content_type(self) -> str:
        """The answer's Content-Type header (PS3.18 8.7.3.5)."""
        value = f'multipart/related; type="{self.part_type}"'
        if self.transfer_syntax:
            value += f"; transfer-syntax={self.transfer_syntax}"
        return f"{value}; boundary={self.boundary}"

    def part_header(
        self, length: int | None, content_type: str | None = None, location: str | None = None
    ) -> bytes:
        """What comes before a part's content: the delimiter and the part's headers.

        ``content_type`` overrides the parts' type (a frame of another syntax);
        ``length`` is the Content-Length when known, ``location`` a
        Content-Location.
        """
        part_type = content_type or self.part_type
        if content_type is None and self.transfer_syntax:
            part_type += f"; transfer-syntax={self.transfer_syntax}"
        lines = [f"--{self.boundary}", f"Content-Type: {part_type}"]
        if length is not None:
            lines.append(f"Content-Length: {length}")
        if location is not None:
            lines.append(f"Content-Location: {location}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")

    @staticmethod
    def part_end() -> bytes:
        """What follows each part's content (the CRLF that belongs to the next delimiter)."""
        return b"\r\n"

    def close(self) -> bytes:
        """The closing delimiter, after the last part."""
        return f"--{self.boundary}--\r\n".encode("ascii")

    def whole(self, parts: list[bytes]) -> bytes:
        """A small body all at once (frames, bulk data already in memory)."""
        pieces = []
        for part in parts:
            pieces += [self.part_header(len(part)), part, self.part_end()]
        pieces.append(self.close())
        return b"".join(pieces)

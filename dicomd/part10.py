"""Where the data set of a Part 10 file starts, and what its File Meta says.

Sending a file as it is needs exactly this: the SOP Class and Instance UIDs
and the transfer syntax from the File Meta Information, and the offset of the
data set so that its bytes can be streamed unchanged.  The meta group is
always explicit VR little endian (PS3.10 7.1) and is walked element by
element rather than trusted through its group length, which some writers get
wrong.  The data set itself is never parsed here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

PREAMBLE_LENGTH = 128
MAGIC = b"DICM"
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_SHORT_HEADER = struct.Struct("<HH2sH")
_LONG_LENGTH = struct.Struct("<L")
_MAX_META_LENGTH = 1 << 20

_SOP_CLASS = 0x0002
_SOP_INSTANCE = 0x0003
_TRANSFER_SYNTAX = 0x0010


class Part10Error(ValueError):
    """Not a Part 10 file, or one whose File Meta Information is unusable."""


@dataclass(frozen=True, slots=True)
class Part10Header:
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    data_set_offset: int
    data_set_length: int


def read_header(path: str | Path) -> Part10Header:
    """Read the File Meta Information of ``path``; raises Part10Error or OSError."""
    with open(path, "rb") as file:
        return read_header_from(file, Path(path).stat().st_size)


def read_header_from(file: BinaryIO, size: int) -> Part10Header:
    """The same, from an open file of ``size`` bytes positioned at its start."""
    start = file.read(PREAMBLE_LENGTH + len(MAGIC))
    if len(start) < PREAMBLE_LENGTH + len(MAGIC) or start[PREAMBLE_LENGTH:] != MAGIC:
        raise Part10Error("no DICM prefix after the 128-byte preamble")
    values: dict[int, bytes] = {}
    offset = len(start)
    while True:
        header = file.read(_SHORT_HEADER.size)
        if len(header) < _SHORT_HEADER.size:
            break  # a file of nothing but meta: the data set is empty
        group, element, vr, length = _SHORT_HEADER.unpack(header)
        if group != 0x0002:
            break
        consumed = _SHORT_HEADER.size
        if vr in _LONG_VRS:
            raw = file.read(_LONG_LENGTH.size)
            if len(raw) < _LONG_LENGTH.size:
                raise Part10Error(f"file meta element (0002,{element:04X}) is cut short")
            (length,) = _LONG_LENGTH.unpack(raw)
            consumed += _LONG_LENGTH.size
        if length > _MAX_META_LENGTH or offset + consumed + length > size:
            raise Part10Error(f"file meta element (0002,{element:04X}) claims {length} bytes")
        value = file.read(length)
        values[element] = value
        offset += consumed + length
    for element, name in (
        (_SOP_CLASS, "Media Storage SOP Class UID"),
        (_SOP_INSTANCE, "Media Storage SOP Instance UID"),
        (_TRANSFER_SYNTAX, "Transfer Syntax UID"),
    ):
        if not _uid(values.get(element, b"")):
            raise Part10Error(f"the file meta has no {name}")
    return Part10Header(
        sop_class_uid=_uid(values[_SOP_CLASS]),
        sop_instance_uid=_uid(values[_SOP_INSTANCE]),
        transfer_syntax=_uid(values[_TRANSFER_SYNTAX]),
        data_set_offset=offset,
        data_set_length=size - offset,
    )


def _uid(value: bytes) -> str:
    return value.rstrip(b"\x00 ").decode("ascii", errors="replace")

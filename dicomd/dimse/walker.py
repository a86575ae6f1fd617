"""Following a data set's element structure as its bytes arrive, to know it is whole.

A success status for C-STORE must mean the instance is whole, yet the data
set streams to disk fragment by fragment and is never parsed in full.  The
walker reads only element headers, skips values without keeping them, and
checks what makes a data set whole (PS3.5 7.1, 7.5): each header complete,
tags ascending within each data set and item, every value within the data
and within its item or sequence, sequences and items closed, explicit VRs
that are VRs, nothing after the last element.  It decodes no value.

`Inflater` does the same for a deflated data set, inflating it piece by piece
up to a bound, so that a small stream cannot grow without end.

On its way the walker collects the raw values of the top-level attributes it
is asked for (`DataSetWalker.collected`), so that the archive indexes an
instance without parsing its file again.  pydicom still decodes those values,
lazily, from the raw elements.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Final

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from dicomd.dimse.datasets import DataSetError, encoding
from dicomd.part10 import LONG_VRS
from dicomd.vrs import dictionary_vr

_VRS: Final = LONG_VRS | frozenset(
    {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT",
     b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"}
)  # fmt: skip
_UNDEFINED: Final = 0xFFFFFFFF
_ITEM: Final = 0xFFFEE000
_ITEM_END: Final = 0xFFFEE00D
_SEQUENCE_END: Final = 0xFFFEE0DD
_PIXEL_DATA: Final = 0x7FE00010


class IncompleteDataSet(DataSetError):
    """A data set that is not whole: cut short, overrunning, unclosed, or with stray bytes."""


@dataclass(slots=True)
class _Level:
    """One level of nesting: the data set, an item, a sequence, or encapsulated fragments."""

    kind: str  # "data set", "item", "sequence" or "fragments"
    end: int | None  # absolute offset where a defined length ends; None when undefined
    tag: int  # the element that opened it (0 for the data set)
    implicit_vr: bool  # how its headers are encoded
    last_tag: int = -1


class DataSetWalker:
    """Checks that the bytes fed to it, in any pieces, make one whole data set, and collects
    the top-level attributes whose tags are ``wanted``."""

    def __init__(
        self, implicit_vr: bool, little_endian: bool, wanted: frozenset[int] = frozenset()
    ) -> None:
        order = "<" if little_endian else ">"
        self._little_endian = little_endian
        self._wanted = wanted
        self._collected: dict[BaseTag, RawDataElement] | None = {} if wanted else None
        self._left_in_file = False
        self._collecting: tuple[int, str | None, bytearray] | None = None
        self._tag = struct.Struct(f"{order}HH")
        self._short = struct.Struct(f"{order}2sH")
        self._long = struct.Struct(f"{order}L")
        self._offset = 0
        self._skip = 0
        self._skipping_tag = 0
        self._header = bytearray()
        self._levels = [_Level("data set", None, 0, implicit_vr)]

    @property
    def _implicit_vr(self) -> bool:
        return self._levels[-1].implicit_vr

    @property
    def collected(self) -> Dataset | None:
        """The wanted attributes found at the top level, raw until read; None when none were
        wanted or one was left in the file (longer than `_MOST_COLLECTED`, or a sequence):
        whoever wanted them all reads the file."""
        return None if self._left_in_file else self.collected_in_part

    @property
    def collected_in_part(self) -> Dataset | None:
        """The wanted attributes that were collected, without those left in the file: what
        the audit trail names a stored instance by, whatever else a peer made too long."""
        return None if self._collected is None else Dataset(dict(self._collected))

    def feed(self, data: bytes) -> None:
        """Take the next bytes; raises `IncompleteDataSet` at the first problem."""
        view = memoryview(data)
        position, size = 0, len(view)
        while position < size:
            if self._skip:
                taken = min(self._skip, size - position)
                if self._collecting is not None:
                    self._collect(view[position : position + taken], taken == self._skip)
                self._skip -= taken
                self._offset += taken
                position += taken
                continue
            if not self._header and size - position >= 12:
                # The usual case: the whole header is here, read in place.
                length = self._header_length(view, position)
                self._element(view, position, length)
                position += length
                continue
            wanted = self._header_size()
            taken = min(wanted - len(self._header), size - position)
            self._header += view[position : position + taken]
            position += taken
            if len(self._header) == wanted == self._header_size():
                header, self._header = bytes(self._header), bytearray()
                self._element(header, 0, wanted)

    def end(self) -> None:
        """No more bytes: raises `IncompleteDataSet` unless the data set is whole."""
        if self._skip:
            raise IncompleteDataSet(
                f"the value of {_name(self._skipping_tag)} is cut short, {self._skip} bytes missing"
            )
        if self._header:
            raise IncompleteDataSet(
                f"{len(self._header)} stray bytes after the last element"
                if len(self._levels) == 1
                else "an element header is cut short"
            )
        self._close_ended_levels()
        if len(self._levels) > 1:
            level = self._levels[-1]
            raise IncompleteDataSet(f"the {level.kind} of {_name(level.tag)} is never closed")

    # -- internals --------------------------------------------------------

    def _header_size(self) -> int:
        """How many bytes the header being gathered takes: in explicit VR, known once its
        tag and VR (six bytes) are in."""
        if not self._implicit_vr and len(self._header) < 6:
            return 6
        return self._header_length(self._header, 0)

    def _header_length(self, buffer: bytes | bytearray | memoryview, at: int) -> int:
        """The length of the header at ``at``, whose first six bytes are there."""
        if self._implicit_vr or self._tag.unpack_from(buffer, at)[0] == 0xFFFE:
            return 8  # items and delimiters have no VR (PS3.5 7.5)
        return 12 if bytes(buffer[at + 4 : at + 6]) in LONG_VRS else 8

    def _element(self, buffer: bytes | memoryview, at: int, header_length: int) -> None:
        group, element = self._tag.unpack_from(buffer, at)
        tag = group << 16 | element
        vr = b""
        levels = self._levels
        implicit_vr = levels[-1].implicit_vr
        if implicit_vr or group == 0xFFFE:
            (length,) = self._long.unpack_from(buffer, at + 4)
        else:
            vr, length = self._short.unpack_from(buffer, at + 4)
            if vr not in _VRS:
                raise IncompleteDataSet(f"{_name(tag)} has {vr!r}, which is no VR")
            if header_length == 12:
                (length,) = self._long.unpack_from(buffer, at + 8)
        start = self._offset
        self._offset += header_length
        if len(levels) > 1:
            self._close_ended_levels(start)
        level = levels[-1]
        if level.kind in ("sequence", "fragments"):
            self._in_sequence(level, tag, length)
            return
        if tag == _ITEM_END:
            if level.kind != "item" or level.end is not None:
                raise IncompleteDataSet("an item delimiter outside an item of undefined length")
            self._levels.pop()
            return
        if tag <= level.last_tag:
            raise IncompleteDataSet(f"{_name(tag)} comes after {_name(level.last_tag)}")
        level.last_tag = tag
        if tag in self._wanted and len(levels) == 1:
            self._start_collecting(tag, vr, length)
        if vr == b"SQ" or (not vr and _is_sequence(tag, length)):
            self._open(_Level("sequence", self._end_of(tag, length), tag, implicit_vr))
        elif vr == b"UN" and length == _UNDEFINED:
            # A sequence of unknown VR, its items encoded implicit VR (PS3.5 6.2.2)
            self._open(_Level("sequence", None, tag, True))
        elif length == _UNDEFINED:
            if tag != _PIXEL_DATA:
                raise IncompleteDataSet(f"{_name(tag)} has an undefined length")
            self._open(_Level("fragments", None, tag, implicit_vr))
        else:
            self._value(tag, length)

    def _start_collecting(self, tag: int, vr: bytes, length: int) -> None:
        if self._collected is None:
            return
        if length > _MOST_COLLECTED or vr == b"SQ" or (not vr and _is_sequence(tag, length)):
            self._left_in_file = True
            return
        self._collecting = (tag, vr.decode() if vr else None, bytearray())
        if not length:
            self._collect(memoryview(b""), last=True)

    def _collect(self, value: memoryview, last: bool) -> None:
        tag, vr, collected = self._collecting  # type: ignore[misc]
        collected += value
        if last and self._collected is not None:
            self._collected[BaseTag(tag)] = RawDataElement(
                BaseTag(tag),
                vr,
                len(collected),
                bytes(collected),
                0,
                vr is None,
                self._little_endian,
            )
            self._collecting = None

    def _in_sequence(self, level: _Level, tag: int, length: int) -> None:
        if tag == _SEQUENCE_END:
            if level.end is not None:
                raise IncompleteDataSet(f"a sequence delimiter in {_name(level.tag)}")
            self._levels.pop()
        elif tag != _ITEM:
            raise IncompleteDataSet(f"{_name(tag)} where an item of {_name(level.tag)} belongs")
        elif level.kind == "fragments":
            if length == _UNDEFINED:
                raise IncompleteDataSet("a pixel data fragment of undefined length")
            self._value(tag, length)
        else:
            self._open(_Level("item", self._end_of(tag, length), tag, level.implicit_vr))

    def _value(self, tag: int, length: int) -> None:
        self._end_of(tag, length)
        self._skip = length
        self._skipping_tag = tag

    def _open(self, level: _Level) -> None:
        self._levels.append(level)

    def _end_of(self, tag: int, length: int) -> int | None:
        """Where a value of ``length`` ends; it must end within every enclosing level."""
        if length == _UNDEFINED:
            return None
        end = self._offset + length
        if len(self._levels) == 1:
            return end  # the data set has no end of its own to stay within
        for level in self._levels:
            if level.end is not None and end > level.end:
                raise IncompleteDataSet(
                    f"{_name(tag)} claims {length} bytes, beyond the end of {_name(level.tag)}"
                )
        return end

    def _close_ended_levels(self, at: int | None = None) -> None:
        """Leave the items and sequences of defined length that end where we are."""
        offset = self._offset if at is None else at
        while len(self._levels) > 1 and self._levels[-1].end == offset:
            self._levels.pop()


def _is_sequence(tag: int, length: int) -> bool:
    """Implicit VR: whether ``tag`` is a sequence, as pydicom's dictionary says (an undefined
    length on an unknown element means one too, as pydicom reads it)."""
    vr = dictionary_vr(tag)
    if not vr:
        return length == _UNDEFINED and tag != _PIXEL_DATA
    return vr == "SQ"


def _name(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


_MOST_COLLECTED: Final = 64 * 1024
"""Indexed attributes are a few dozen bytes; one longer than this is left in the file."""
_INFLATE_STEP: Final = 1 << 20
"""Inflated per call: about a millisecond of zlib and of walking a plain value."""
_RATIO_SLACK: Final = 1 << 20
_TRAILER: Final = 8
"""The most bytes let pass after a deflate stream: a gzip trailer (CRC-32 and size)."""


@dataclass(frozen=True, slots=True)
class InflationLimits:
    """How far a deflated data set may grow: in bytes, and as a multiple of its size sent."""

    max_length: int = 1 << 30
    max_ratio: int = 200


DEFAULT_INFLATION: Final = InflationLimits()


class Inflater:
    """Inflates a deflated data set as it arrives and walks what comes out.

    The stream may grow to ``max_length`` bytes and to ``max_ratio`` times
    the compressed bytes inflated so far (plus `_RATIO_SLACK`, so that a
    small data set of one colour passes), no further.  It inflates
    `_INFLATE_STEP` bytes at a time and checks after each step, so a bomb is
    refused within a step or two of work, however large a PDU carried it.  A
    single NUL after the stream is the padding that makes its length even,
    and a few more are a writer's trailer (`_trailing`).
    """

    def __init__(self, walker: DataSetWalker, limits: InflationLimits) -> None:
        self.walker = walker
        self.max_length = limits.max_length
        self.max_ratio = limits.max_ratio
        self._inflater = zlib.decompressobj(wbits=-15)
        self._received = 0
        self._inflated = 0
        self._after_stream = 0

    def feed(self, data: bytes) -> None:
        if self._inflater.eof:
            self._trailing(data)
            return
        self._received += len(data)
        pending = data
        while not self._inflater.eof:
            piece = self._inflater.decompress(pending, _INFLATE_STEP)
            pending = self._inflater.unconsumed_tail
            self._inflated += len(piece)
            self._check(consumed=self._received - len(pending))
            self.walker.feed(piece)
            if not pending and len(piece) < _INFLATE_STEP:
                break  # all of it in; a full step may leave output inside zlib: ask again
        if self._inflater.eof:
            self._trailing(self._inflater.unused_data)

    @property
    def collected(self) -> Dataset | None:
        return self.walker.collected

    @property
    def collected_in_part(self) -> Dataset | None:
        return self.walker.collected_in_part

    def end(self) -> None:
        if not self._inflater.eof:
            raise IncompleteDataSet("the deflate stream is cut short")
        self.walker.end()

    def _check(self, consumed: int) -> None:
        if self._inflated > self.max_length:
            _limit_hit("max_inflated_length")
            raise IncompleteDataSet(f"the deflated data set inflates past {self.max_length} bytes")
        if self._inflated > self.max_ratio * consumed + _RATIO_SLACK:
            _limit_hit("max_inflation_ratio")
            raise IncompleteDataSet(
                f"the deflated data set inflates more than {self.max_ratio} times"
            )

    def _trailing(self, data: bytes) -> None:
        """Bytes after the end of the deflate stream are no part of the data set: a NUL of
        padding, or a writer's checksum trailer, is let pass; more is not."""
        self._after_stream += len(data)
        if self._after_stream > _TRAILER:
            raise IncompleteDataSet(f"{self._after_stream} stray bytes after the deflate stream")


def _limit_hit(limit: str) -> None:
    from dicomd import metrics  # here: clients load prometheus-client only if so

    metrics.limit_hit(limit)


def checker_for(
    transfer_syntax: str, limits: InflationLimits, wanted: frozenset[int] = frozenset()
) -> DataSetWalker | Inflater | None:
    """What follows a data set sent in ``transfer_syntax``, collecting the ``wanted``
    top-level attributes; None for a syntax pydicom does not know (a private one), whose
    encoding cannot be told."""
    try:
        implicit_vr, little_endian, deflated = encoding(transfer_syntax)
    except DataSetError:
        return None
    walker = DataSetWalker(implicit_vr, little_endian, wanted)
    return Inflater(walker, limits) if deflated else walker

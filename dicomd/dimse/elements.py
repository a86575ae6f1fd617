"""Data elements encoded straight from plain values (text, integers), without pydicom.

The answers to a C-FIND are a handful of short text values each, read from an
index.  Making a pydicom ``DataElement`` of each, a ``Dataset`` of them and
writing it costs a hundred microseconds or more per answer, most of a
query's time once the SQL is done.  This encodes such values the way
pydicom's ``write_dataset`` would, byte for byte, in a few microseconds.  It
knows only values as an index holds them: a ``str`` (several values joined
with ``\\``), a list of them, an ``int`` for IS.  Anything else (a binary VR,
a string it cannot encode, a length past the header's) it refuses with
None, and the caller goes through pydicom, which stays the reference: a
property test proves the bytes agree.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Final

from dicomd.part10 import LONG_VRS

LONG_LENGTH_VRS: Final = frozenset(vr.decode("ascii") for vr in LONG_VRS)
"""`dicomd.part10.LONG_VRS` as text: the VRs whose explicit-VR header has two reserved bytes
and a 32-bit length (PS3.5 7.1.2)."""
TEXT_VRS: Final = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
"""VRs whose values are encoded in the data set's Specific Character Set; the other string
VRs are ASCII (pydicom writes them as ISO 8859-1, and so does this)."""
_OTHER_STRING_VRS: Final = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI", "UR"})
STRING_VRS: Final = frozenset({*TEXT_VRS, *_OTHER_STRING_VRS, "DS", "IS"})
"""VRs whose values are text, numbers (DS, IS) included."""
PLAIN_VRS: Final = frozenset(
    {
        *LONG_LENGTH_VRS,
        *TEXT_VRS,
        *_OTHER_STRING_VRS,
        *("AT", "DS", "FD", "FL", "IS", "SL", "SS", "UL", "US"),
    }
)
"""Every VR of one name: an element of any of them can at least be encoded empty."""
_ONE_VALUE_VRS: Final = frozenset({"LT", "ST", "UT"})
"""String VRs whose ``\\`` is a character, not a separator of values."""
_PERSON_NAME_GROUPS: Final = 3

Value = str | int | Sequence[str]
"""A plain value: text (``\\`` between several values), a list of texts, or an integer (IS)."""


class ElementEncoder:
    """One element (a tag and a VR) in one transfer syntax: its header, and its value made
    from a plain value.  ``vr`` is one of `PLAIN_VRS`."""

    __slots__ = ("_length", "_longest", "_prefix", "vr")

    def __init__(self, tag: int, vr: str, implicit_vr: bool, little_endian: bool) -> None:
        if vr not in PLAIN_VRS:
            raise ValueError(f"{vr!r} is not one VR")
        order = "<" if little_endian else ">"
        self.vr = vr
        self._prefix = struct.pack(f"{order}HH", tag >> 16, tag & 0xFFFF)
        if implicit_vr or vr in LONG_LENGTH_VRS:
            if not implicit_vr:
                self._prefix += vr.encode("ascii") + b"\0\0"
            self._length = struct.Struct(f"{order}L").pack
            self._longest = 0xFFFFFFFE
        else:
            self._prefix += vr.encode("ascii")
            self._length = struct.Struct(f"{order}H").pack
            self._longest = 0xFFFF

    def header(self, length: int) -> bytes:
        """The bytes before a value of ``length`` bytes."""
        return self._prefix + self._length(length)

    def empty(self) -> bytes:
        """The element with no value."""
        return self.header(0)

    def encode(self, value: Value, codec: str) -> bytes | None:
        """The element holding ``value``, its text in Python's ``codec`` if its VR is one of
        `TEXT_VRS`; None for a value this cannot encode as pydicom would."""
        encoded = self._value(value, codec)
        if encoded is None:
            return None
        if len(encoded) % 2:
            encoded += b"\0" if self.vr == "UI" else b" "
        if len(encoded) > self._longest:
            return None
        return self._prefix + self._length(len(encoded)) + encoded

    def _value(self, value: Value, codec: str) -> bytes | None:
        if isinstance(value, int):
            return str(value).encode("ascii") if self.vr == "IS" and type(value) is int else None
        if isinstance(value, str):
            values = [value] if self.vr in _ONE_VALUE_VRS else value.split("\\")
        elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            values = list(value)
        else:
            return None
        try:
            if self.vr == "PN":
                return _person_names(values, codec)
            if self.vr in TEXT_VRS:
                return "\\".join(values).encode(codec)
            if self.vr == "UI":
                return "\\".join(uid.strip() for uid in values).encode("latin_1")
            if self.vr in _OTHER_STRING_VRS:
                return "\\".join(values).encode("latin_1")
        except UnicodeEncodeError:
            return None
        return None


def _person_names(names: list[str], codec: str) -> bytes | None:
    """PN values as pydicom writes them: empty component groups at the end are left out."""
    written = []
    for name in names:
        groups = name.split("=")
        if len(groups) > _PERSON_NAME_GROUPS:
            return None  # pydicom warns and writes it; not for this path
        while groups and not groups[-1]:
            groups.pop()
        written.append("=".join(groups))
    return "\\".join(written).encode(codec)

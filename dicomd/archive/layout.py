"""Where in the archive folder an instance goes: a path template filled from its data set.

A template such as ``{PatientID}/{StudyInstanceUID}/{SOPInstanceUID}.dcm``
names DICOM keywords in braces.  The values come from whoever sent the
instance, so each one is reduced to a safe file name component before it
touches the file system: no separators, no ``..``, nothing hidden, nothing
long.  The template itself is checked once, when the configuration is read,
so that no data set can make a bad template fail later.
"""

from __future__ import annotations

import functools
import re
import string
from pathlib import PurePosixPath
from typing import Final

from pydicom import Dataset
from pydicom.datadict import dictionary_VR, keyword_dict
from pydicom.dataelem import RawDataElement
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag

from dicomd.vrs import dictionary_vr

MAX_VALUE_LENGTH: Final = 64
"""Longest sanitised value: the longest UI, LO or SH value (PS3.5 6.2)."""

MAX_COMPONENT_LENGTH: Final = 255
"""Longest file name most file systems accept."""

_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._-]")
_SAFE_LITERAL: Final = re.compile(r"[A-Za-z0-9._-]*")

_TEXT_AND_NUMBER_VRS: Final = frozenset(
    {
        *("AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM"),
        *("UC", "UI", "UR", "UT", "US", "SS", "UL", "SL", "FL", "FD", "SV", "UV"),
    }
)
"""VRs whose value reads as text; sequences and binary values name nothing."""


def sanitise(value: str) -> str:
    """One safe path component made from any text.

    Characters outside ``[A-Za-z0-9._-]`` become ``_``; an empty value becomes
    ``_``; a leading dot becomes ``_``, so the result is never ``.``, ``..`` or
    a hidden name (the archive keeps its own ``.incoming`` folder beside the
    instances).  At most ``MAX_VALUE_LENGTH`` characters are kept.
    """
    safe = _UNSAFE.sub("_", value[:MAX_VALUE_LENGTH])
    if not safe:
        return "_"
    if safe.startswith("."):
        return "_" + safe[1:]
    return safe


class Layout:
    """A checked path template; ``path_for`` fills it from a data set.

    Raises ``ValueError`` for a template that names an unknown keyword or one
    that holds no text (a sequence, pixel data), that does not name
    ``{SOPInstanceUID}`` (two instances would share a file), or whose fixed
    text could leave the archive folder, hide a folder or exceed a file name.
    """

    def __init__(self, template: str) -> None:
        self.template = template
        self._components = tuple(_parse_component(part) for part in _split(template))
        if "SOPInstanceUID" not in self.keywords():
            raise ValueError(f"{template!r} does not name {{SOPInstanceUID}}")

    def path_for(self, dataset: Dataset) -> PurePosixPath:
        """The relative path of ``dataset`` in the archive."""
        return PurePosixPath(*(self._fill(fields, dataset) for fields in self._components))

    def keywords(self) -> frozenset[str]:
        """Every keyword the template names: what a reader of the data set must keep."""
        return frozenset(keyword for fields in self._components for keyword in fields[1::2])

    @staticmethod
    def _fill(fields: tuple[str, ...], dataset: Dataset) -> str:
        # fields alternate literal text and keywords: (text, keyword, text, keyword, ..., text)
        parts = list(fields)
        for index in range(1, len(parts), 2):
            parts[index] = sanitise(text_of(dataset, parts[index]))
        return "".join(parts)

    def __repr__(self) -> str:
        return f"Layout({self.template!r})"


@functools.cache
def _tag(keyword: str) -> BaseTag:
    return Tag(keyword)


def text_of(dataset: Dataset, keyword: str) -> str:
    """The text of the element named ``keyword`` ("" if there is none), as pydicom reads it:
    several values joined with ``\\``.

    A value still in its received bytes (the walker's, `dicomd.dimse.walker`) that is one
    value of plain printable ASCII, of a text VR, in a character set where ASCII means
    itself, is read straight from its bytes: pydicom's conversion of the same value is most
    of the work of filing an instance, and gives the same text (a property test keeps the
    two in step).  Anything else goes through pydicom.
    """
    tag = _tag(keyword)
    element = dataset.get_item(tag)
    if element is None:
        return ""
    if isinstance(element, RawDataElement):
        text = _plain_text(element, dataset)
        if text is not None:
            return text
    return _value_text(dataset[tag].value)


def _plain_text(element: RawDataElement, dataset: Dataset) -> str | None:
    """The text of a raw value that needs no decoding, or None when it needs pydicom."""
    value = element.value
    if value is None:
        return ""
    vr = element.VR or dictionary_vr(element.tag)
    if vr not in _PLAIN_VRS or not _PLAIN_ASCII.fullmatch(value):
        return None
    if vr == "PN" and b"=" in value:
        return None  # component groups: pydicom drops empty ones
    if element.tag != _CHARACTER_SET and not _ascii_is_itself(dataset):
        return None
    text = value.decode("ascii")
    return text.strip(" ") if vr == "UI" else text.rstrip(" ")  # pydicom's UID strips both


def _ascii_is_itself(dataset: Dataset) -> bool:
    """Whether the data set's Specific Character Set (raw, or read by pydicom) reads plain
    ASCII as ASCII."""
    charset = dataset.get_item(_CHARACTER_SET)
    if charset is None:
        return True
    value = charset.value
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    elif isinstance(value, MultiValue | list):
        value = value[0] if len(value) == 1 else "\\"
    return isinstance(value, str) and value.strip(" \0") in _ASCII_CHARACTER_SETS


_PLAIN_ASCII: Final = re.compile(rb"[\x20-\x5b\x5d-\x7e]*")
"""Printable ASCII without the backslash that separates values."""
_PLAIN_VRS: Final = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "PN", "SH", "TM", "UI"})
"""Text VRs whose plain value pydicom keeps as the text, less its trailing spaces (and a
UID's leading ones); not IS and DS, numbers, some of whose texts pydicom refuses."""
_CHARACTER_SET: Final = 0x00080005
_ASCII_CHARACTER_SETS: Final = frozenset({"", "ISO_IR 6", "ISO_IR 100", "ISO_IR 192"})
"""Single values of Specific Character Set under which plain ASCII is itself."""


def _split(template: str) -> list[str]:
    if not template:
        raise ValueError("the template is empty")
    if template.startswith("/"):
        raise ValueError(f"{template!r} is absolute; it must stay inside the archive folder")
    return template.split("/")


def _parse_component(text: str) -> tuple[str, ...]:
    """One component as alternating literal text and keywords, checked for safety."""
    fields: list[str] = []
    literal = ""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as error:
        raise ValueError(f"{text!r}: {error}") from None
    for literal_text, keyword, format_spec, conversion in parsed:
        literal += literal_text
        if keyword is None:
            continue
        if format_spec or conversion:
            raise ValueError(f"{{{keyword}}} takes no format or conversion")
        _check_keyword(keyword)
        fields += [_checked_literal(literal, text), keyword]
        literal = ""
    fields.append(_checked_literal(literal, text))
    if len(fields) == 1:  # fixed text only: it must be a plain, visible name
        if not fields[0]:
            raise ValueError("the template has an empty path component ('//' or a trailing '/')")
        if fields[0].startswith("."):
            raise ValueError(f"the folder {fields[0]!r} is hidden or leaves the archive folder")
    elif fields[0].startswith("."):
        raise ValueError(f"{text!r} would be a hidden name")
    longest = sum(map(len, fields[::2])) + MAX_VALUE_LENGTH * (len(fields) // 2)
    if longest > MAX_COMPONENT_LENGTH:
        raise ValueError(f"{text!r} can grow longer than {MAX_COMPONENT_LENGTH} characters")
    return tuple(fields)


def _checked_literal(literal: str, component: str) -> str:
    if not _SAFE_LITERAL.fullmatch(literal):
        raise ValueError(
            f"{component!r}: fixed text may only use letters, digits, '.', '_' and '-'"
        )
    return literal


def _check_keyword(keyword: str) -> None:
    if keyword not in keyword_dict:
        raise ValueError(f"{{{keyword}}} is not a DICOM keyword")
    vr = dictionary_VR(keyword_dict[keyword])
    if vr not in _TEXT_AND_NUMBER_VRS:
        raise ValueError(f"{{{keyword}}} has VR {vr}, which cannot name a file")


def _value_text(value: object) -> str:
    """The text of an element's value; several values are joined with ``\\`` as DICOM does."""
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(item) for item in value)
    return str(value)

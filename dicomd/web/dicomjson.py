"""DICOM JSON (PS3.18 Annex F) of plain values, as pydicom's ``to_json_dict`` writes it.

pydicom is the reference: a Dataset's ``to_json_dict`` is what every DICOM
JSON answer means.  Making a Dataset of each match only to turn it into
JSON costs a millisecond a QIDO-RS answer, though, where the index already
holds the values: `element_json` writes the same JSON of one element
straight from a value as an index holds it (a text, texts, an integer), and
`dumps` is the one serialization every DICOM JSON answer goes through, so
that both ways give the same bytes.  Where only pydicom knows the rules (a
binary or decimal VR with a value, a sequence, an ambiguous VR), it answers
None and the caller falls back to pydicom.  A property test proves the two
ways agree.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

from pydicom.tag import BaseTag

JsonElement = dict[str, Any]
Value = str | int | Sequence[str] | None
"""A value as an index holds it (`dicomd.interfaces.IAnswerEncoder`): a text (``\\``
between several values), a list of texts, or an integer for IS; None: no value."""

_SINGLE_TEXT_VRS: Final = frozenset({"LT", "ST", "UT", "UR"})
"""Texts whose value is one, whatever backslashes it holds."""
_TEXT_VRS: Final = frozenset(
    {"AE", "AS", "CS", "DA", "DT", "LO", "SH", "TM", "UC", "UI", *_SINGLE_TEXT_VRS}
)
_PN: Final = "PN"
_UI: Final = "UI"
_IS: Final = "IS"
_GROUPS: Final = ("Alphabetic", "Ideographic", "Phonetic")


def tag_key(tag: BaseTag) -> str:
    """An element's name in a DICOM JSON object: its tag as eight upper-case hex digits."""
    return f"{int(tag):08X}"


def element_json(vr: str, value: Value) -> JsonElement | None:
    """The DICOM JSON of an element of ``vr`` holding ``value``, as pydicom writes it; None
    when only pydicom can tell (a value of a binary, decimal or ambiguous VR...)."""
    if value is None or value == "" or (not isinstance(value, str | int) and not value):
        return {"vr": vr}
    if isinstance(value, int) and not isinstance(value, bool):
        return {"vr": vr, "Value": [value]} if vr == _IS else None
    if isinstance(value, str):
        texts = [value] if vr in _SINGLE_TEXT_VRS else value.split("\\")
    elif isinstance(value, list | tuple) and all(isinstance(text, str) for text in value):
        texts = list(value)
    else:
        return None
    if not all(texts):
        return None  # pydicom has its own ideas of empty values among others
    if vr == _UI and any(text != text.strip(" \0") for text in texts):
        return None  # pydicom strips a UID's padding
    if vr in _TEXT_VRS:
        return {"vr": vr, "Value": texts}
    if vr == _PN:
        names = [_person_name(text) for text in texts]
        return None if None in names else {"vr": vr, "Value": names}
    if vr == _IS:
        numbers = [_integer(text) for text in texts]
        return None if None in numbers else {"vr": vr, "Value": numbers}
    return None


def dumps(answer: dict[str, JsonElement] | list[Any]) -> bytes:
    """DICOM JSON as sent: compact, ASCII (any other character escaped)."""
    return json.dumps(answer, separators=(",", ":")).encode("ascii")


def _person_name(text: str) -> dict[str, str] | None:
    groups = text.rstrip("=").split("=")  # trailing empty groups are insignificant
    if len(groups) > len(_GROUPS) or not any(groups):
        return None  # pydicom has its own ideas of these
    return dict(zip(_GROUPS, groups, strict=False))


def _integer(text: str) -> int | None:
    """An IS text's integer, as pydicom reads one (``int``, surrounding spaces allowed)."""
    stripped = text.strip(" ")
    if not stripped or not (stripped.lstrip("+-").isascii() and stripped.lstrip("+-").isdigit()):
        return None
    return int(stripped)

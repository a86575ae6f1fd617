"""Query keys written as findscu writes them, and the identifier they make.

``-k PatientName=Doe*`` sets a matching key, ``-k ModalitiesInStudy`` (no
value) asks for a return key, ``-k 0010,0020=X`` names the element by tag, and
``-k ScheduledProcedureStepSequence[0].Modality=MR`` reaches into an item of
a sequence (the item number may be left out: it is item 0).  A value with a
backslash holds several values, as on the wire.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from pydicom.datadict import get_entry, keyword_dict
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag, Tag

from dicomd.dump import BINARY_VRS, element_keyword, value_text

_COMPONENT: Final = re.compile(
    r"^(?:(?P<keyword>[A-Za-z][A-Za-z0-9]*)|\(?(?P<group>[0-9A-Fa-f]{4}),(?P<element>[0-9A-Fa-f]{4})\)?)"
    r"(?:\[(?P<item>\d+)\])?$"
)
_INTEGER_VRS: Final = frozenset({"US", "SS", "UL", "SL", "UV", "SV"})
_FLOAT_VRS: Final = frozenset({"FL", "FD"})
_NON_ASCII: Final = re.compile(r"[^\x00-\x7f]")


class BadQueryKey(ValueError):
    """A ``-k`` argument that cannot be made into an element; the message says why."""


@dataclass(frozen=True, slots=True)
class Step:
    """One element on a key's path; ``item`` is the item of a sequence the path goes through."""

    tag: BaseTag
    vr: str
    item: int | None = None

    @property
    def label(self) -> str:
        keyword = element_keyword(self.tag)
        name = keyword if keyword not in ("Unknown", "Private tag") else str(self.tag)
        return name if self.item is None else f"{name}[{self.item}]"


@dataclass(frozen=True, slots=True)
class QueryKey:
    """One ``-k``: where the element is, and its value (``None`` for a return key)."""

    path: tuple[Step, ...]
    value: str | None

    @property
    def label(self) -> str:
        """The key as a column header: keywords joined with dots."""
        return ".".join(step.label for step in self.path)


def parse_key(text: str) -> QueryKey:
    """``Keyword=value``, ``Keyword``, ``gggg,eeee=value`` or a dotted path into sequences."""
    try:
        return _parse_key(text)
    except BadQueryKey as error:
        raise BadQueryKey(f"{text}: {error}") from None


def _parse_key(text: str) -> QueryKey:
    name, equals, value = text.partition("=")
    if not name:
        raise BadQueryKey("no element named before '='")
    components = name.split(".")
    path: list[Step] = []
    for position, component in enumerate(components):
        step = _step(component)
        if position < len(components) - 1:
            if step.vr != "SQ":
                raise BadQueryKey(f"{step.label} is not a sequence")
            if step.item is None:
                step = Step(step.tag, step.vr, 0)
        elif step.item is not None:
            raise BadQueryKey("an item number needs an element after it")
        path.append(step)
    leaf = path[-1]
    if value and leaf.vr == "SQ":
        raise BadQueryKey("a sequence takes no value; name an element inside it")
    if value and leaf.vr in BINARY_VRS:
        raise BadQueryKey(f"{leaf.vr} values cannot be given on the command line")
    _value(leaf, value)
    return QueryKey(tuple(path), value if equals else None)


def _step(component: str) -> Step:
    match = _COMPONENT.match(component)
    if match is None:
        raise BadQueryKey(f"{component!r} is neither a keyword nor a tag (gggg,eeee)")
    if match["keyword"]:
        keyword = match["keyword"]
        if keyword not in keyword_dict:
            close = difflib.get_close_matches(keyword, keyword_dict, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise BadQueryKey(f"unknown keyword {keyword!r}{hint}")
        tag = Tag(keyword_dict[keyword])
    else:
        tag = Tag(int(match["group"], 16), int(match["element"], 16))
    try:
        vr = get_entry(tag)[0]
    except KeyError:
        raise BadQueryKey(f"{tag} is not in the data dictionary, so its VR is unknown") from None
    # An ambiguous VR ("US or SS") is settled by its first choice: queries rarely use them.
    vr = vr.split(" or ")[0]
    item = int(match["item"]) if match["item"] is not None else None
    if item is not None and vr != "SQ":
        raise BadQueryKey(f"{component!r}: only a sequence has items")
    return Step(tag, vr, item)


def build_identifier(keys: Iterable[QueryKey], level: str | None) -> Dataset:
    """The C-FIND identifier: QueryRetrieveLevel (None for worklist queries), then the keys.

    A later key for the same element replaces an earlier one.  Non-ASCII
    values make the identifier declare UTF-8 (ISO_IR 192).
    """
    identifier = Dataset()
    if level is not None:
        identifier.QueryRetrieveLevel = level
    for key in keys:
        _set(identifier, key)
    if any(_NON_ASCII.search(key.value or "") for key in keys):
        identifier.SpecificCharacterSet = "ISO_IR 192"
    return identifier


def _set(dataset: Dataset, key: QueryKey) -> None:
    for step in key.path[:-1]:
        assert step.item is not None
        if step.tag not in dataset or dataset[step.tag].VR != "SQ":
            dataset.add(DataElement(step.tag, "SQ", DicomSequence()))
        items = dataset[step.tag].value
        while len(items) <= step.item:
            items.append(Dataset())
        dataset = items[step.item]
    leaf = key.path[-1]
    if leaf.vr == "SQ":
        if leaf.tag not in dataset:
            dataset.add(DataElement(leaf.tag, "SQ", DicomSequence()))
        return
    dataset.add(DataElement(leaf.tag, leaf.vr, _value(leaf, key.value)))


def _value(step: Step, text: str | None) -> object:
    if not text:
        return None
    values = text.split("\\")
    try:
        if step.vr in _INTEGER_VRS:
            converted: list[object] = [int(value) for value in values]
        elif step.vr in _FLOAT_VRS:
            converted = [float(value) for value in values]
        elif step.vr == "AT":
            converted = [_step(value).tag for value in values]
        else:
            converted = list(values)
    except ValueError as error:
        raise BadQueryKey(f"{text!r} is not a valid {step.vr} value") from error
    return converted[0] if len(converted) == 1 else converted


def cell(dataset: Dataset, key: QueryKey) -> str:
    """What a match holds at ``key``'s path, as text for a table cell ("" when absent)."""
    for step in key.path[:-1]:
        if step.tag not in dataset:
            return ""
        items = dataset[step.tag].value
        if step.item is None or step.item >= len(items):
            return ""
        dataset = items[step.item]
    leaf = key.path[-1]
    if leaf.tag not in dataset:
        return ""
    element = dataset[leaf.tag]
    if element.VR == "SQ":
        count = len(element.value)
        return f"<{count} item{'' if count == 1 else 's'}>"
    if element.VR in BINARY_VRS:
        return f"<{len(element.value or b'')} bytes>"
    if element.is_empty:
        return ""
    return value_text(element)


def table(matches: Sequence[Dataset], keys: Sequence[QueryKey]) -> list[str]:
    """A header, a rule and one row per match; each column as wide as its widest cell.

    A key inside a sequence is headed by its own keyword, which is what a
    reader looks for, unless another column has the same one.
    """
    short = [key.path[-1].label for key in keys]
    headers = [
        name if short.count(name) == 1 else key.label for name, key in zip(short, keys, strict=True)
    ]
    rows = [[cell(match, key) for key in keys] for match in matches]
    widths = [max(len(text) for text in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(text.ljust(width) for text, width in zip(cells, widths, strict=True))

    return [
        line(headers).rstrip(),
        line(["-" * width for width in widths]),
        *(line(row).rstrip() for row in rows),
    ]

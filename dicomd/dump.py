"""A human-readable listing of a Part 10 file, one element per line.

Each line reads ``(gggg,eeee) VR Keyword  value``, the way dcmdump and the
standard's own tables show elements, so that a line can be searched for by
tag or by keyword.  A listing is for reading, not for round trips: long values
are cut, binary values are summarised by their length, and bulk data that
pydicom left on disk (``defer_size``) is measured there without being loaded,
so that dumping a large multi-frame image costs no more than dumping its
header.
"""

from __future__ import annotations

from collections.abc import Iterator
from os import PathLike
from pathlib import Path
from typing import Final

from pydicom import dcmread
from pydicom.datadict import get_entry
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID

from dicomd.part10 import Part10Error, encapsulated_length

MAX_VALUE_CHARS: Final = 64
"""Longer values are cut here, with an ellipsis and the value's length in bytes."""

DEFER_SIZE: Final = "1 KB"
"""Values larger than this stay on disk until a line needs them."""

INDENT: Final = "  "

BINARY_VRS: Final = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
"""VRs whose value is a byte string, shown only by its length."""

UNDEFINED_LENGTH: Final = 0xFFFFFFFF


class NotDicomError(Exception):
    """The file is not a DICOM Part 10 file; the message says why, briefly."""


def dump_file(path: str | PathLike[str]) -> list[str]:
    """Every line of the listing of one Part 10 file: file meta, then data set.

    The whole listing is built before it is returned, so a file that turns
    out to be damaged halfway through gives an error rather than half a
    listing.  Raises `OSError` if the file cannot be opened, and
    `NotDicomError` for anything else that keeps it from being listed:
    pydicom reports damage with many exception types (even `OSError`), and a
    listing tool is for exactly the files that may be damaged.
    """
    with open(path, "rb"):
        pass
    try:
        dataset = dcmread(path, defer_size=DEFER_SIZE)
    except InvalidDicomError as error:
        raise NotDicomError(_invalid_reason(Path(path), error)) from error
    except Exception as error:
        raise NotDicomError(f"damaged: {error}") from error
    try:
        return [
            "# File Meta Information",
            *dump_dataset(dataset.file_meta),
            "# Data Set",
            *dump_dataset(dataset),
        ]
    except NotDicomError:
        raise
    except Exception as error:
        raise NotDicomError(f"damaged: {error}") from error


def _invalid_reason(path: Path, error: InvalidDicomError) -> str:
    """pydicom's explanation is a paragraph with advice; one line needs a short reason."""
    with path.open("rb") as stream:
        head = stream.read(132)
    if not head:
        return "empty file"
    if len(head) < 132:
        return f"only {len(head)} bytes, shorter than the preamble and prefix"
    if head[128:132] != b"DICM":
        return "no 'DICM' prefix after the 128-byte preamble"
    return str(error)


def dump_dataset(dataset: Dataset, depth: int = 0) -> Iterator[str]:
    """The lines for ``dataset``'s elements in tag order, items of sequences indented below them."""
    for tag in sorted(dataset.keys()):
        yield from _element_lines(dataset, Tag(tag), depth)


def _element_lines(dataset: Dataset, tag: BaseTag, depth: int) -> Iterator[str]:
    indent = INDENT * depth
    raw = dataset.get_item(tag, keep_deferred=True)
    if isinstance(raw, RawDataElement) and raw.value is None and raw.length:
        vr = _raw_vr(raw)
        if vr in BINARY_VRS:
            yield f"{indent}{tag} {vr} {element_keyword(tag)}  {_deferred_size(dataset, raw)}"
            return
    encoded_length = raw.length if isinstance(raw, RawDataElement) else None
    element = dataset[tag]
    head = f"{indent}{tag} {element.VR} {element_keyword(tag)}"
    if element.VR == "SQ":
        items = element.value
        yield f"{head}  <{len(items)} item{'' if len(items) == 1 else 's'}>"
        for number, item in enumerate(items, start=1):
            lines = list(dump_dataset(item, depth + 2))
            yield f"{indent}{INDENT}item {number}" + ("" if lines else "  <empty>")
            yield from lines
        return
    yield f"{head}  {format_value(element, encoded_length)}"


def _raw_vr(raw: RawDataElement) -> str:
    """The VR of an element not yet converted; implicit VR files leave it to the dictionary.

    Of the ambiguous dictionary VRs only ``OB or OW`` matters here (pixel,
    overlay and curve data); implicit VR little endian encodes those as OW
    (PS3.5 A.1, 8.2).
    """
    if raw.VR:
        return raw.VR
    try:
        vr = get_entry(raw.tag)[0]
    except KeyError:
        return "UN"
    return "OW" if vr == "OB or OW" else vr


def _deferred_size(dataset: Dataset, raw: RawDataElement) -> str:
    """The length of a value left on disk, read from the file's item headers if need be."""
    if raw.length != UNDEFINED_LENGTH:
        return f"<{raw.length} bytes>"
    filename = dataset.filename
    if not isinstance(filename, str):
        return "<undefined length, encapsulated>"
    with open(filename, "rb") as stream:
        stream.seek(raw.value_tell)
        try:
            length = encapsulated_length(stream, raw.is_little_endian)
        except Part10Error as error:
            raise NotDicomError(str(error)) from None
        return f"<{length} bytes, encapsulated>"


def element_keyword(tag: BaseTag) -> str:
    """The dictionary keyword, or what kind of tag this is when the dictionary has none."""
    if tag.is_private:
        return "PrivateCreator" if tag.is_private_creator else "Private tag"
    try:
        keyword = get_entry(tag)[4]
    except KeyError:
        keyword = ""
    if not keyword and tag.element == 0:
        return "GroupLength"
    return keyword or "Unknown"


def format_value(element: DataElement, encoded_length: int | None = None) -> str:
    """One element's value on one line: cut if long, summarised if binary.

    ``encoded_length`` is the value's length in the file, when known; it is
    what a cut value reports, since the characters shown are not bytes.  A
    single known UID is followed by its name, since no one remembers which
    transfer syntax ``1.2.840.10008.1.2.4.90`` is.
    """
    value = element.value
    if element.VR in BINARY_VRS:
        size = len(value) if value else 0
        if encoded_length == UNDEFINED_LENGTH:
            return f"<{size} bytes, encapsulated>"
        return f"<{size} bytes>"
    if element.is_empty:
        return "<empty>"
    text = value_text(element)
    if len(text) > MAX_VALUE_CHARS:
        if encoded_length is None or encoded_length == UNDEFINED_LENGTH:
            encoded_length = len(text.encode("utf-8"))
        return f"{text[:MAX_VALUE_CHARS]}… ({encoded_length} bytes)"
    if element.VR == "UI" and element.VM == 1:
        uid = UID(text)
        if uid.name != uid:
            return f"{text} ({uid.name})"
    return text


def value_text(element: DataElement) -> str:
    """The whole value as text, multiple values joined with a backslash as on the wire."""
    values = element.value if isinstance(element.value, MultiValue | list) else [element.value]
    return "\\".join(_single_value_text(value) for value in values)


def _single_value_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, BaseTag):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("ascii", errors="backslashreplace")
    return str(value)

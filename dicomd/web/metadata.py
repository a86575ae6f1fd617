"""WADO-RS metadata: an instance's attributes as DICOM JSON (PS3.18 F.2), large values as
BulkDataURIs, and finding the value a BulkDataURI names.

The data set is read by pydicom up to Pixel Data, with values longer than
`BULK_THRESHOLD` left in the file (``defer_size``): a bulk value (OB, OW,
OF, OD, OL, OV, UN, UV, UT...) over the threshold is never read, only named
by a BulkDataURI ``{base}/studies/{s}/series/{r}/instances/{i}/bulkdata/{path}``
whose path is the tag, or tags and item indexes inside sequences
(``00540016/0/00181074``).  Pixel Data always goes as a BulkDataURI.

Blocking (reads files): callers run it in a thread.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pydicom import Dataset
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.tag import BaseTag

from dicomd.part10 import Part10Error, encapsulated_length
from dicomd.web.dicomjson import dumps, tag_key
from dicomd.web.pixels import PIXEL_DATA, PixelsError, read_pixels

BULK_THRESHOLD: Final = 1024
"""Values longer than this, of a bulk VR, go as BulkDataURIs."""
BULK_VRS: Final = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN", "UV", "UT"})
_TAG: Final = re.compile(r"[0-9A-Fa-f]{8}")
_INDEX: Final = re.compile(r"[0-9]{1,6}")
_MOST_DEPTH: Final = 16


class MetadataError(ValueError):
    """An instance, or a value in it, that cannot be read; ``str()`` is one line."""


@dataclass(frozen=True, slots=True)
class InFile:
    """A value that lies, as it is, at ``offset`` in the instance's file."""

    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class InMemory:
    """A value read into memory (one inside a sequence item)."""

    value: bytes

    @property
    def length(self) -> int:
        return len(self.value)


TagPath = tuple[int, ...]
"""Tags and item indexes, alternating: (tag,) or (tag, index, tag, ...)."""


def parse_tag_path(text: str) -> TagPath:
    """``7FE00010`` or ``00540016/0/00181074`` as a `TagPath`; `ValueError` otherwise."""
    pieces = text.strip("/").split("/")
    if len(pieces) % 2 == 0 or len(pieces) > 2 * _MOST_DEPTH + 1:
        raise ValueError(f"{text[:80]!r} is not a bulk data path (tag[/item/tag...])")
    path = []
    for position, piece in enumerate(pieces):
        pattern = _TAG if position % 2 == 0 else _INDEX
        if not pattern.fullmatch(piece):
            raise ValueError(f"{piece[:20]!r} in the bulk data path is not a tag or an index")
        path.append(int(piece, 16) if position % 2 == 0 else int(piece))
    return tuple(path)


def instance_json(path: Path, base: str) -> bytes:
    """The DICOM JSON object of the instance in the Part 10 file ``path``, encoded;
    BulkDataURIs under ``base`` (the DICOMweb root)."""
    with path.open("rb") as file:
        try:
            pixels = read_pixels(file, trailer=True)
        except PixelsError as error:
            raise MetadataError(f"{path.name}: {error}") from None
    head = pixels.head
    uri = (
        f"{base}/studies/{head.get('StudyInstanceUID', '')}"
        f"/series/{head.get('SeriesInstanceUID', '')}"
        f"/instances/{head.get('SOPInstanceUID', '')}/bulkdata"
    )
    attributes = _dataset_json(head, uri, ())
    if pixels.present:
        attributes[tag_key(BaseTag(PIXEL_DATA))] = {
            "vr": pixels.vr,
            "BulkDataURI": f"{uri}/7FE00010",
        }
    if pixels.trailer is not None:
        attributes.update(_dataset_json(pixels.trailer, uri, ()))
    return dumps(attributes)


def _dataset_json(dataset: Dataset, uri: str, path: TagPath) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    for tag in dataset.keys():  # noqa: SIM118 (iterating a Dataset reads its elements)
        if tag.element == 0:  # group lengths say nothing a JSON reader needs
            continue
        key = tag_key(tag)
        raw = dataset.get_item(tag, keep_deferred=True)
        vr = _vr_of(raw, tag)
        if vr in BULK_VRS and _length_of(raw) > BULK_THRESHOLD:
            where = "/".join(
                f"{step:08X}" if n % 2 == 0 else str(step) for n, step in enumerate((*path, tag))
            )
            attributes[key] = {"vr": vr, "BulkDataURI": f"{uri}/{where}"}
            continue
        try:
            element = dataset[tag]
            if element.VR == "SQ":
                items = [
                    _dataset_json(item, uri, (*path, tag, index))
                    for index, item in enumerate(element.value or ())
                ]
                attributes[key] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
            else:
                attributes[key] = element.to_json_dict(None, BULK_THRESHOLD)
        except Exception:  # pydicom raises many types for malformed values: leave it empty
            attributes[key] = {"vr": vr}
    return attributes


def _vr_of(raw: Any, tag: BaseTag) -> str:
    vr = getattr(raw, "VR", None)
    if not vr:
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            vr = "UN"
    if " or " in vr:  # an ambiguous VR: a bulk one when it may be
        choices = vr.split(" or ")
        vr = next((choice for choice in choices if choice in BULK_VRS), choices[0])
    return str(vr)


def _length_of(raw: Any) -> int:
    if isinstance(raw, RawDataElement):
        return int(raw.length) if raw.length != 0xFFFFFFFF else len(raw.value or b"")
    value = raw.value
    return len(value) if isinstance(value, bytes | str) else 0


def locate(path: Path, tag_path: TagPath) -> InFile | InMemory:
    """Where the value ``tag_path`` names lies in the instance ``path``: in the file for a
    top-level value (Pixel Data included: native, or the encapsulated items), else read.
    `MetadataError` when there is none."""
    with path.open("rb") as file:
        try:
            pixels = read_pixels(file, trailer=tag_path[0] > PIXEL_DATA)
        except PixelsError as error:
            raise MetadataError(str(error)) from None
        if tag_path == (PIXEL_DATA,):
            if pixels.value_offset is None:
                raise MetadataError("the instance has no Pixel Data")
            if pixels.value_length is not None:
                return InFile(pixels.value_offset, pixels.value_length)
            file.seek(pixels.value_offset)
            try:
                length = encapsulated_length(file, pixels.head.original_encoding[1] is not False)
            except Part10Error as error:
                raise MetadataError(f"the Pixel Data: {error}") from None
            return InFile(pixels.value_offset, length)
    dataset = pixels.trailer if pixels.trailer is not None else pixels.head
    for position in range(0, len(tag_path) - 1, 2):
        tag, index = tag_path[position], tag_path[position + 1]
        element = _element(dataset, tag)
        items = element.value if element.VR == "SQ" else None
        if not items or index >= len(items):
            raise MetadataError(f"no item {index} in ({tag >> 16:04X},{tag & 0xFFFF:04X})")
        dataset = items[index]
    tag = tag_path[-1]
    raw = dataset.get_item(tag, keep_deferred=True) if tag in dataset else None
    if raw is None:
        raise MetadataError(f"no ({tag >> 16:04X},{tag & 0xFFFF:04X}) in the instance")
    if isinstance(raw, RawDataElement) and raw.value is None and len(tag_path) == 1:
        return InFile(raw.value_tell, raw.length)
    value = raw.value if isinstance(raw, RawDataElement) else _element(dataset, tag).value
    if isinstance(value, str):
        value = value.encode("utf-8")
    if not isinstance(value, bytes):
        raise MetadataError(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) is not bulk data")
    return InMemory(value)


def _element(dataset: Dataset, tag: int) -> Any:
    try:
        return dataset[tag]
    except KeyError:
        raise MetadataError(f"no ({tag >> 16:04X},{tag & 0xFFFF:04X}) in the instance") from None
    except Exception as error:
        raise MetadataError(f"({tag >> 16:04X},{tag & 0xFFFF:04X}): {error}") from None

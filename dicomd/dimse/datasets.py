"""Data sets on the wire: encoding and decoding in a transfer syntax, with pydicom.

A data set travels without preamble or File Meta, in the transfer syntax of
its presentation context; deflated ones are raw deflate streams.
"""

from __future__ import annotations

import functools
import struct
import zlib
from collections.abc import Callable, Sequence
from typing import Any, Final

from pydicom import config
from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID
from pydicom.values import converters

from dicomd.dimse.elements import LONG_LENGTH_VRS, STRING_VRS, TEXT_VRS, ElementEncoder
from dicomd.vrs import dictionary_vr

_UNDEFINED_LENGTH: Final = 0xFFFFFFFF


class DataSetError(ValueError):
    """A data set that cannot be encoded or decoded in the given transfer syntax."""


class DataSetTooLarge(DataSetError):
    """A data set that would outgrow the memory allowed for it once inflated."""


@functools.lru_cache(maxsize=64)
def encoding(transfer_syntax: str) -> tuple[bool, bool, bool]:
    """(implicit VR, little endian, deflated) for a transfer syntax pydicom knows; asked for
    every data set, and pydicom validates a UID each time it makes one."""
    uid = UID(transfer_syntax)
    try:
        return uid.is_implicit_VR, uid.is_little_endian, uid.is_deflated
    except ValueError as e:
        raise DataSetError(f"{transfer_syntax!r} is not a transfer syntax dicomd knows") from e


def encode_dataset(ds: Dataset, transfer_syntax: str) -> bytes:
    """Encode a data set (not a Part 10 file: no preamble, no meta header) for the wire.

    As with any pydicom write, ambiguous VRs (US or SS, OB or OW) are resolved
    in ``ds`` itself when the syntax calls for explicit VR.
    """
    implicit_vr, little_endian, deflated = encoding(transfer_syntax)
    encoded = _encoded(ds, implicit_vr, little_endian, transfer_syntax)
    return deflate(encoded) if deflated else encoded


def deflate(encoded: bytes) -> bytes:
    """An encoded data set as a deflated transfer syntax carries it: a raw deflate stream,
    padded to an even length."""
    compressor = zlib.compressobj(wbits=-15)
    return even_length(compressor.compress(encoded) + compressor.flush())


Buffer = bytes | bytearray | memoryview
"""A piece of an encoded data set, as it leaves."""

LARGE_VALUE: Final = 1 << 20
"""Values this long are passed through by reference, never copied into one buffer."""

_LONG_BINARY_VRS: Final = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})


def encode_in_pieces(
    ds: Dataset,
    transfer_syntax: str,
    large_value: Callable[[DataElement], Sequence[Buffer]] = lambda element: (element.value,),
) -> tuple[Buffer, ...]:
    """Encode ``ds`` like `encode_dataset`, but leave its large binary values where they are.

    The pixel data of a large instance is most of its bytes; copying it into
    one buffer means touching fresh memory for its whole length in one call
    that holds the GIL for as long, which stalls every other thread.  Here
    each large top-level OB/OW/... value goes out as its own piece behind a
    header written by hand; pydicom encodes the elements between them.
    ``large_value`` gives the pieces that go out for such an element (its
    value, or a converted copy that pydicom never has to hold).
    """
    implicit_vr, little_endian, deflated = encoding(transfer_syntax)
    pieces: list[Buffer] = []
    run = Dataset()
    for element in ds:
        value = element.value
        if (
            element.VR in _LONG_BINARY_VRS
            and isinstance(value, bytes | bytearray)
            and len(value) >= LARGE_VALUE
            and not len(value) % 2
            and not element.is_undefined_length
        ):
            if len(run):
                pieces.append(_encoded(run, implicit_vr, little_endian, transfer_syntax))
                run = Dataset()
            pieces.append(
                element_header(element.tag, element.VR, len(value), implicit_vr, little_endian)
            )
            pieces.extend(large_value(element))
        else:
            run.add(element)
    if len(run) or not pieces:
        pieces.append(_encoded(run, implicit_vr, little_endian, transfer_syntax))
    if deflated:
        compressor = zlib.compressobj(wbits=-15)
        compressed = [compressor.compress(piece) for piece in pieces]
        return (even_length(b"".join([*compressed, compressor.flush()])),)
    return tuple(pieces)


def _encoded(ds: Dataset, implicit_vr: bool, little_endian: bool, transfer_syntax: str) -> bytes:
    fp = DicomBytesIO()
    fp.is_implicit_VR = implicit_vr
    fp.is_little_endian = little_endian
    try:
        write_dataset(fp, ds)
    except Exception as e:  # pydicom raises many types; all mean "cannot encode"
        raise DataSetError(f"cannot encode data set as {transfer_syntax}: {e}") from e
    return fp.getvalue()


def element_header(tag: int, vr: str, length: int, implicit_vr: bool, little_endian: bool) -> bytes:
    """The header of an element of one of `LONG_LENGTH_VRS` (PS3.5 7.1.2): tag, VR and reserved
    bytes, 32-bit length."""
    if vr not in LONG_LENGTH_VRS:
        raise ValueError(f"{vr!r} has no long-form header")
    return ElementEncoder(tag, vr, implicit_vr, little_endian).header(length)


def even_length(data: bytes) -> bytes:
    """``data`` padded with a NUL to an even length, as a PDV's value must be.

    Only a deflated data set can be odd (a deflate stream ends on any byte);
    pydicom and pynetdicom pad theirs so, and dcmtk refuses an odd fragment.
    """
    return data + b"\0" if len(data) % 2 else data


def decode_dataset(data: bytes, transfer_syntax: str, max_length: int = 0) -> Dataset:
    """Decode a data set received in ``transfer_syntax``.

    Every element is parsed before returning, so that a malformed value shows
    up here as a :class:`DataSetError` rather than later, wherever the data
    set happens to be read.  A deflated one that would inflate past
    ``max_length`` bytes (when not 0) is refused before it fills memory.
    """
    implicit_vr, little_endian, deflated = encoding(transfer_syntax)
    try:
        if deflated:
            data = _inflated(data, max_length)
        ds = _read_texts(data, implicit_vr, little_endian)
        if ds is None:
            ds = _read_with_pydicom(data, implicit_vr, little_endian)
    except DataSetError:
        raise
    except Exception as e:  # pydicom raises many types; all mean "cannot decode"
        raise DataSetError(f"cannot decode data set as {transfer_syntax}: {e}") from e
    return ds


def _read_with_pydicom(data: bytes, implicit_vr: bool, little_endian: bool) -> Dataset:
    ds = read_dataset(DicomBytesIO(data), implicit_vr, little_endian)
    _ensure_whole(ds, len(data))
    for _element in ds.iterall():
        pass
    return ds


_CHARSET_TAG: Final = 0x00080005


def _read_texts(data: bytes, implicit_vr: bool, little_endian: bool) -> Dataset | None:
    """A data set of text values only, read as pydicom reads it, or None for any other.

    Reading with pydicom makes a raw element of each, then converts each
    through the data set's item lookup, which looks up the character set
    again for every element: a hundred microseconds and more for the ten
    elements of a C-FIND answer.  Here the elements are walked once and each
    value is converted by pydicom's own converter of its VR, with the data
    set's character set, into the element pydicom's conversion makes.  A data
    set with anything else (a sequence, binary or unknown VRs, private or
    command elements, an undefined length, any bytes out of place) is left to
    `_read_with_pydicom`, as is any value its converter refuses.
    """
    if config.data_element_callback is not None:
        return None
    order = "<" if little_endian else ">"
    found: list[tuple[int, str, bytes, int]] = []
    position, size = 0, len(data)
    while position < size:
        if size - position < 8:
            return None
        group, number = struct.unpack_from(f"{order}HH", data, position)
        if group < 0x0008 or group % 2 or group == 0xFFFE:
            return None
        tag = group << 16 | number
        if implicit_vr:
            vr = dictionary_vr(tag)
            (length,) = struct.unpack_from(f"{order}L", data, position + 4)
            start = position + 8
        else:
            vr = data[position + 4 : position + 6].decode("latin_1")
            if vr in LONG_LENGTH_VRS:
                if size - position < 12:
                    return None
                (length,) = struct.unpack_from(f"{order}L", data, position + 8)
                start = position + 12
            else:
                (length,) = struct.unpack_from(f"{order}H", data, position + 6)
                start = position + 8
        if vr not in STRING_VRS or start + length > size:
            return None
        found.append((tag, vr, data[start : start + length], start))
        position = start + length
    encodings: str | list[str] = default_encoding
    for tag, _, value, _ in found:
        if tag == _CHARSET_TAG:  # the last one, as pydicom takes it
            encodings = convert_encodings(_converted("CS", value, encodings, little_endian))
    elements = {}
    for tag, vr, value, start in found:
        try:
            converted = _converted(vr, value, encodings, little_endian)
        except ValueError:
            return None  # pydicom would try other VRs
        elements[BaseTag(tag)] = DataElement(tag, vr, converted, start, False, True)
    ds = Dataset(elements)
    ds.set_original_encoding(implicit_vr, little_endian, encodings)
    return ds


def _converted(vr: str, value: bytes, encodings: str | list[str], little_endian: bool) -> Any:
    """``value`` as pydicom's ``convert_value`` makes it for an element of ``vr``."""
    if not value:
        return empty_value_for_VR(vr)
    converter = converters[vr]
    listed = [encodings] if isinstance(encodings, str) else encodings
    if vr == "PN":
        return converter(value, listed)
    if vr in TEXT_VRS:
        return converter(value, listed, vr)
    return converter(value, little_endian, None)


def _inflated(data: bytes, max_length: int) -> bytes:
    inflater = zlib.decompressobj(wbits=-15)
    inflated = inflater.decompress(data, max_length + 1 if max_length else 0)
    if max_length and (len(inflated) > max_length or inflater.unconsumed_tail):
        raise DataSetTooLarge(f"the deflated data set inflates to more than {max_length} bytes")
    return inflated + inflater.flush()


def _ensure_whole(ds: Dataset, size: int) -> None:
    """Refuse a truncated data set, which pydicom's reader accepts without a word.

    pydicom stops quietly at a partial element header and keeps whatever part
    of a value is there; a data set off the wire must instead account for
    every byte up to the end of its last element.
    """
    last_start, last_end = -1, 0
    for tag in ds.keys():  # noqa: SIM118 -- iterating a Dataset would parse every element
        element = ds.get_item(tag)
        end = None
        if isinstance(element, RawDataElement):
            start = element.value_tell
            if element.length != _UNDEFINED_LENGTH:
                if len(element.value or b"") != element.length:
                    raise DataSetError(f"cannot decode data set: element {tag} is truncated")
                end = start + element.length
        else:
            start = element.file_tell or 0
            if element.is_empty and not element.is_undefined_length:
                end = start
        if start > last_start:
            last_start, last_end = start, end
    if last_end is not None and last_end != size:
        raise DataSetError(
            f"cannot decode data set: {size - last_end} stray bytes after the last element"
        )

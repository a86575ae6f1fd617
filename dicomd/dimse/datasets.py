"""Data sets on the wire: encoding and decoding in a transfer syntax, with pydicom.

A data set travels without preamble or File Meta, in the transfer syntax of
its presentation context; deflated ones are raw deflate streams.
"""

from __future__ import annotations

import zlib
from typing import Final

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.uid import UID

_UNDEFINED_LENGTH: Final = 0xFFFFFFFF


class DataSetError(ValueError):
    """A data set that cannot be encoded or decoded in the given transfer syntax."""


def _encoding(transfer_syntax: str) -> tuple[bool, bool, bool]:
    """(implicit VR, little endian, deflated) for a transfer syntax pydicom knows."""
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
    implicit_vr, little_endian, deflated = _encoding(transfer_syntax)
    fp = DicomBytesIO()
    fp.is_implicit_VR = implicit_vr
    fp.is_little_endian = little_endian
    try:
        write_dataset(fp, ds)
    except Exception as e:  # pydicom raises many types; all mean "cannot encode"
        raise DataSetError(f"cannot encode data set as {transfer_syntax}: {e}") from e
    encoded = fp.getvalue()
    if deflated:
        compressor = zlib.compressobj(wbits=-15)
        encoded = even_length(compressor.compress(encoded) + compressor.flush())
    return encoded


def even_length(data: bytes) -> bytes:
    """``data`` padded with a NUL to an even length, as a PDV's value must be.

    Only a deflated data set can be odd (a deflate stream ends on any byte);
    pydicom and pynetdicom pad theirs so, and dcmtk refuses an odd fragment.
    """
    return data + b"\0" if len(data) % 2 else data


def decode_dataset(data: bytes, transfer_syntax: str) -> Dataset:
    """Decode a data set received in ``transfer_syntax``.

    Every element is parsed before returning, so that a malformed value shows
    up here as a :class:`DataSetError` rather than later, wherever the data
    set happens to be read.
    """
    implicit_vr, little_endian, deflated = _encoding(transfer_syntax)
    try:
        if deflated:
            data = zlib.decompress(data, wbits=-15)
        ds = read_dataset(DicomBytesIO(data), implicit_vr, little_endian)
        _ensure_whole(ds, len(data))
        for _element in ds.iterall():
            pass
    except DataSetError:
        raise
    except Exception as e:  # pydicom raises many types; all mean "cannot decode"
        raise DataSetError(f"cannot decode data set as {transfer_syntax}: {e}") from e
    return ds


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


def error_comment(text: str) -> str:
    """Text fit for Error Comment (0000,0902), an LO: one line, at most 64 characters."""
    return " ".join(text.split())[:64]

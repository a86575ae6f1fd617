"""Where an archived instance keeps its Pixel Data, and its frames read one at a time.

WADO-RS answers frames, bulk data and rendered images of instances that may
hold a gigabyte of pixels; none of them needs more than one frame in memory.
pydicom reads the data set up to Pixel Data (``stop_before_pixels`` leaves the
file at its header), the header is read here in the data set's encoding, and
a frame is then either a slice of a native value (its offset and length
computed) or the fragments of one encapsulated frame (pydicom's ``get_frame``
reads only those from the file, guided by the Basic or Extended Offset Table).

Everything here blocks on the disk: callers run it in a thread.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Final

from pydicom import Dataset, dcmread
from pydicom.encaps import get_frame
from pydicom.filereader import read_dataset
from pydicom.pixels import pixel_array

from dicomd import uids
from dicomd.part10 import Part10Error, encapsulated_length

PIXEL_DATA: Final = 0x7FE00010
_TRAILING_PADDING: Final = 0xFFFCFFFC
_UNDEFINED_LENGTH: Final = 0xFFFFFFFF
_EXPLICIT_LONG_VRS: Final = frozenset({b"OB", b"OW", b"OD", b"OF", b"OL", b"OV", b"UN"})


_READ_FIRST: Final = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths",
)
"""Attributes the routes read from the data set: a malformed one fails `read_pixels`."""


class PixelsError(ValueError):
    """An instance whose pixel data cannot be read as asked; ``str()`` is one line."""


@dataclass(frozen=True, slots=True)
class Pixels:
    """An instance's data set before Pixel Data and where that value lies in the file."""

    head: Dataset
    transfer_syntax: str
    value_offset: int | None
    """Where the Pixel Data value starts in the file (after its header); None without one."""
    value_length: int | None
    """The value's length; None when encapsulated (undefined length)."""
    vr: str
    trailer: Dataset | None = None
    """The elements after Pixel Data (`read_pixels` with ``trailer``), Data Set Trailing
    Padding left out."""

    @property
    def present(self) -> bool:
        return self.value_offset is not None

    @property
    def encapsulated(self) -> bool:
        return self.present and self.value_length is None

    @property
    def number_of_frames(self) -> int:
        if not self.present:
            return 0
        try:
            return max(1, int(self.head.get("NumberOfFrames") or 1))
        except (TypeError, ValueError):
            raise PixelsError("Number of Frames is not a number") from None

    @property
    def frame_length(self) -> int:
        """Bytes of one native frame (PS3.5 8.1.1), from the image's attributes."""
        head = self.head
        try:
            samples = (
                int(head.Rows)
                * int(head.Columns)
                * int(head.get("SamplesPerPixel") or 1)
                * int(head.BitsAllocated)
            )
        except (AttributeError, TypeError, ValueError):
            raise PixelsError("the image's Rows, Columns or Bits Allocated are missing") from None
        if samples <= 0:
            raise PixelsError("the image has no pixels")
        return (samples + 7) // 8 if int(head.BitsAllocated) == 1 else samples // 8


def read_pixels(file: BinaryIO, trailer: bool = False) -> Pixels:
    """The data set of the open Part 10 ``file`` up to Pixel Data, and where that lies;
    with ``trailer``, also the elements that follow Pixel Data.

    Raises `PixelsError` for a file pydicom cannot read or whose Pixel Data
    header is cut short.  Deflated data sets have no file offsets; their
    pixel data is refused.
    """
    try:
        head = dcmread(file, stop_before_pixels=True, defer_size=1024)
        for keyword in _READ_FIRST:  # pydicom converts values when first asked: ask here
            head.get(keyword)
    except Exception as error:  # pydicom raises many types for malformed data sets
        raise PixelsError(f"unreadable instance: {_one_line(error)}") from None
    syntax = str(head.file_meta.get("TransferSyntaxUID", uids.IMPLICIT_VR_LITTLE_ENDIAN))
    if syntax == uids.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        return Pixels(head, syntax, None, None, "OB")
    implicit, little = head.original_encoding
    order = "<" if little is not False else ">"
    start = file.read(8)
    if not start:
        return Pixels(head, syntax, None, None, "OB")
    if len(start) < 8:
        raise PixelsError("the data set ends in the middle of the Pixel Data header")
    group, element = struct.unpack(order + "HH", start[:4])
    if (group << 16 | element) != PIXEL_DATA:  # stopped at the end of the data set
        return Pixels(head, syntax, None, None, "OB")
    vr = start[4:6]
    if not implicit and vr in _EXPLICIT_LONG_VRS:
        more = file.read(4)
        if len(more) < 4:
            raise PixelsError("the data set ends in the middle of the Pixel Data header")
        (length,) = struct.unpack(order + "L", more)
        name = vr.decode("ascii")
    else:  # implicit VR (some writers use it for Pixel Data even in explicit syntaxes)
        (length,) = struct.unpack(order + "L", start[4:])
        name = "OB" if int(head.get("BitsAllocated") or 8) <= 8 else "OW"
    offset = file.tell()
    value_length = None if length == _UNDEFINED_LENGTH else length
    found = Pixels(head, syntax, offset, value_length, "OB" if value_length is None else name)
    _check_image(found)
    if not trailer:
        return found
    return replace(found, trailer=_trailer(file, found, implicit, little is not False))


def _check_image(pixels: Pixels) -> None:
    """Fail now (`PixelsError`), not once an answer has begun, when the attributes that
    place the frames are unusable."""
    if pixels.number_of_frames and not pixels.encapsulated:
        _ = pixels.frame_length


def _trailer(file: BinaryIO, pixels: Pixels, implicit: bool, little: bool) -> Dataset:
    """What follows Pixel Data, ``file`` standing at its value."""
    try:
        if pixels.value_length is None:
            encapsulated_length(file, little)
        else:
            file.seek(pixels.value_length, 1)
        following = read_dataset(file, implicit, little, defer_size=1024)
    except (Part10Error, EOFError, ValueError, KeyError, struct.error) as error:
        raise PixelsError(f"after the Pixel Data: {error}") from None
    if _TRAILING_PADDING in following:
        del following[_TRAILING_PADDING]
    return following


def read_frame(file: BinaryIO, pixels: Pixels, number: int) -> bytes:
    """Frame ``number`` (1-based) as stored: native bytes (little endian, big endian ones
    swapped), or the compressed bitstream of an encapsulated frame.  ``file`` is the one
    ``pixels`` was read from."""
    count = pixels.number_of_frames
    if not 1 <= number <= count:
        raise IndexError(f"frame {number} is not in 1-{count}")
    assert pixels.value_offset is not None
    if pixels.encapsulated:
        file.seek(pixels.value_offset)
        extended = pixels.head.get("ExtendedOffsetTable")
        lengths = pixels.head.get("ExtendedOffsetTableLengths")
        try:
            return get_frame(
                file,
                number - 1,
                number_of_frames=count,
                extended_offsets=(extended, lengths) if extended and lengths else None,
            )
        except (ValueError, struct.error) as error:
            raise PixelsError(f"frame {number}: {error}") from None
    length = pixels.frame_length
    if pixels.value_length is not None and number * length > pixels.value_length:
        raise PixelsError(f"the Pixel Data is too short for frame {number}")
    file.seek(pixels.value_offset + (number - 1) * length)
    data = file.read(length)
    if len(data) < length:
        raise PixelsError(f"the file ends within frame {number}")
    bits = int(pixels.head.get("BitsAllocated") or 8)
    if pixels.transfer_syntax == uids.EXPLICIT_VR_BIG_ENDIAN and bits in (16, 32, 64):
        # frames go out little endian (PS3.18 8.7.3.3.2): swap each sample's bytes
        import numpy as np  # here: only a retired syntax needs it

        data = np.frombuffer(data, f">u{bits // 8}").astype(f"<u{bits // 8}").tobytes()
    return data


def decoded_frame(file: BinaryIO, pixels: Pixels, number: int) -> bytes:
    """Frame ``number`` (1-based) of an encapsulated instance decoded into native bytes,
    little endian, each sample as Bits Allocated and Pixel Representation say (colour as
    pydicom decodes it: RGB, interleaved).  Holds the interpreter lock while it decodes."""
    count = pixels.number_of_frames
    if not 1 <= number <= count:
        raise IndexError(f"frame {number} is not in 1-{count}")
    head = pixels.head
    bits = int(head.get("BitsAllocated") or 8)
    if bits not in (8, 16, 32):
        raise PixelsError(f"frames of {bits} bits allocated are not decoded")
    kind = "i" if int(head.get("PixelRepresentation") or 0) else "u"
    file.seek(0)
    try:
        array = pixel_array(file, index=number - 1)
    except Exception as error:  # pydicom and its plugins raise many types for bad streams
        raise PixelsError(f"frame {number} does not decode: {_one_line(error)}") from None
    return array.astype(f"<{kind}{bits // 8}", copy=False).tobytes()


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:200] or type(error).__name__


def pixels_of(path: Path) -> Pixels:
    """`read_pixels` of the file at ``path``."""
    with path.open("rb") as file:
        return read_pixels(file)

"""Re-encoding a data set for another uncompressed transfer syntax, with pydicom.

`dicomd.dimse.sending` sends a file as it is whenever the peer accepted its
transfer syntax; only when it did not, or for a Dataset, is the data set
encoded here (in the association's worker), which is why this module, and
pydicom with it, is loaded only by the first conversion.
"""

from __future__ import annotations

import copy
from typing import Final

from pydicom import Dataset
from pydicom.dataelem import DataElement
from pydicom.filewriter import correct_ambiguous_vr

from dicomd import uids
from dicomd.dimse.datasets import LARGE_VALUE, Buffer, encode_in_pieces

_WORD_SIZES = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
"""Bytes per value of the VRs whose values pydicom keeps as the bytes it read."""


def reencoded(dataset: Dataset, syntax: str, target: str) -> tuple[Buffer, ...]:
    """``dataset``, read in ``syntax``, encoded for ``target``; ``dataset`` itself is not changed.

    pydicom writes OW, OF, OL, OD and OV values back as the bytes it read,
    whatever the byte order asked for; between little and big endian, a
    copy gets the bytes of each of their words reversed first.  UN values
    (whose word size nobody knows) go as they are.  Large values travel as
    pieces of their own (`encode_in_pieces`).
    """
    little_endian = syntax != uids.EXPLICIT_VR_BIG_ENDIAN
    if little_endian == (target != uids.EXPLICIT_VR_BIG_ENDIAN):
        return encode_in_pieces(dataset, target)
    dataset = copy.deepcopy(dataset)
    correct_ambiguous_vr(dataset, little_endian)  # OB or OW, by Bits Allocated
    _reverse_small_values(dataset)
    return encode_in_pieces(dataset, target, _reversed_large_value)


def _reverse_small_values(dataset: Dataset, top_level: bool = True) -> None:
    """Reverse the words of every value in ``dataset`` but the large top-level ones, which
    `encode_in_pieces` hands to `_reversed_large_value` as they go out."""
    for element in dataset:
        if element.VR == "SQ":
            for item in element.value:
                _reverse_small_values(item, top_level=False)
            continue
        size = _WORD_SIZES.get(element.VR)
        value = element.value
        if not (size and isinstance(value, bytes) and len(value) % size == 0):
            continue
        if top_level and len(value) >= LARGE_VALUE:
            continue
        element.value = bytes(_reverse_words(value, size))


def _reversed_large_value(element: DataElement) -> tuple[Buffer, ...]:
    """A large value with the bytes of its words reversed, in pieces of a few MiB."""
    size = _WORD_SIZES.get(element.VR)
    value = element.value
    if not (size and len(value) % size == 0):
        return (value,)
    step = _SWAP_PIECE - _SWAP_PIECE % size
    return tuple(
        _reverse_words(value[start : start + step], size) for start in range(0, len(value), step)
    )


def _reverse_words(value: bytes, size: int) -> bytearray:
    """The bytes of each ``size``-byte word of ``value`` reversed.

    Each slice assignment holds the GIL from start to end: large values are
    handed over a few MiB at a time (`_reversed_large_value`), so that the
    reactor thread runs between them when a worker thread converts.
    """
    swapped = bytearray(len(value))
    for offset in range(size):
        swapped[offset::size] = value[size - 1 - offset :: size]
    return swapped


_SWAP_PIECE: Final = 4 << 20

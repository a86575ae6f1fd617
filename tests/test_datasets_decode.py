"""Data sets off the wire: `decode_dataset` reads text-only data sets itself, as pydicom does.

A C-FIND answer or identifier holds text values only; `decode_dataset` walks
those and converts each value with pydicom's own converter of its VR,
without pydicom's raw elements and lookups, and leaves every other data set
to pydicom's reader.  The property test holds the bytes to pydicom's reading
(`_read_with_pydicom`, the reference): the same elements, values of the same
types, the same character set, or the same refusal; generated data sets mix
text and other VRs, character sets, odd bytes and broken lengths.
"""

from __future__ import annotations

import struct
import warnings
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from pydicom import Dataset
from pydicom.datadict import keyword_dict
from pydicom.multival import MultiValue

from dicomd import uids
from dicomd.dimse.datasets import (
    DataSetError,
    _read_texts,
    _read_with_pydicom,
    decode_dataset,
    encode_dataset,
    encoding,
)
from dicomd.dimse.elements import LONG_LENGTH_VRS

SYNTAXES = (
    uids.IMPLICIT_VR_LITTLE_ENDIAN,
    uids.EXPLICIT_VR_LITTLE_ENDIAN,
    uids.EXPLICIT_VR_BIG_ENDIAN,
)
KEYS = {
    "SpecificCharacterSet": "CS",
    "QueryRetrieveLevel": "CS",
    "RetrieveAETitle": "AE",
    "PatientName": "PN",
    "PatientID": "LO",
    "AccessionNumber": "SH",
    "StudyDate": "DA",
    "StudyTime": "TM",
    "AcquisitionDateTime": "DT",
    "PatientAge": "AS",
    "PatientWeight": "DS",
    "SeriesNumber": "IS",
    "StudyInstanceUID": "UI",
    "PatientComments": "LT",
    "TextValue": "UT",
    "RetrieveURL": "UR",
    "StrainAdditionalInformation": "UT",
}
OTHER_TAGS = (
    (0x00090010, "LO"),  # private
    (0x00080000, "UL"),  # group length
    (0x00000900, "US"),  # a command's Status
    (0x00280010, "US"),  # Rows
    (0x00081110, "SQ"),  # ReferencedStudySequence
)
CHARSETS = (
    b"ISO_IR 100",
    b"ISO_IR 192",
    b"",
    b"\\ISO 2022 IR 87",
    b"ISO 2022 IR 6\\ISO 2022 IR 100",
    b"GB18030",
    b"NOT A CHARSET",
)
PIECES = (
    *(b"A", b"z", b"0", b"9", b" ", b"\0", b"\\", b"^", b"=", b".", b"-", b"+"),
    *(b"\xe9", b"\xc3\xa9", b"\x1b$B", b"F|", b"\x1b(B", b"1.2.840", b"19700101", b"120000.5"),
)
"""Pieces of values: text, separators, padding, other character sets' bytes and escapes."""
VALUE_BYTES = st.lists(st.sampled_from(PIECES), max_size=8).map(b"".join)


def element(tag: int, vr: str, value: bytes, syntax: str) -> bytes:
    implicit_vr, little_endian, _ = encoding(syntax)
    order = "<" if little_endian else ">"
    head = struct.pack(f"{order}HH", tag >> 16, tag & 0xFFFF)
    if implicit_vr:
        return head + struct.pack(f"{order}L", len(value)) + value
    if vr in LONG_LENGTH_VRS:
        return head + vr.encode() + b"\0\0" + struct.pack(f"{order}L", len(value)) + value
    return head + vr.encode() + struct.pack(f"{order}H", len(value)) + value


@st.composite
def data_sets(draw: st.DrawFn) -> tuple[bytes, str]:
    syntax = draw(st.sampled_from(SYNTAXES))
    keys = draw(st.sets(st.sampled_from(sorted(KEYS)), min_size=1, max_size=8))
    tagged = sorted((keyword_dict[keyword], KEYS[keyword]) for keyword in keys)
    tagged += draw(st.lists(st.sampled_from(OTHER_TAGS), max_size=1))  # pydicom reads those
    tagged += draw(st.lists(st.sampled_from(tagged), max_size=1))  # a tag twice
    parts = []
    for tag, vr in tagged:
        if tag == keyword_dict["SpecificCharacterSet"]:
            value = draw(st.sampled_from(CHARSETS))
        elif vr == "SQ":
            value = b""
        else:
            value = draw(VALUE_BYTES)
        parts.append(element(tag, vr, value, syntax))
    data = b"".join(parts)
    broken = draw(st.sampled_from(["whole"] * 6 + ["cut", "junk"]))
    if broken == "cut" and data:
        data = data[: draw(st.integers(min_value=0, max_value=len(data) - 1))]
    elif broken == "junk":
        data += draw(st.binary(min_size=1, max_size=9))
    return data, syntax


def read(reader: Any, data: bytes, syntax: str) -> Dataset | type[Exception]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return reader(data, syntax)
        except DataSetError:
            return DataSetError


def by_pydicom(data: bytes, syntax: str) -> Dataset:
    implicit_vr, little_endian, _ = encoding(syntax)
    try:
        return _read_with_pydicom(data, implicit_vr, little_endian)
    except Exception as error:  # as decode_dataset says it
        raise DataSetError(str(error)) from error


def described(ds: Dataset) -> list[tuple[Any, ...]]:
    """Every element as a comparable tuple: tag, VR, value and the types of its values."""
    rows = []
    for elem in ds:
        values = list(elem.value) if isinstance(elem.value, MultiValue) else [elem.value]
        rows.append((elem.tag, elem.VR, [str(v) for v in values], [type(v) for v in values]))
    return rows


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(max_examples=500, deadline=None)
@given(case=data_sets())
def test_text_data_sets_are_read_as_pydicom_reads_them(case: tuple[bytes, str]) -> None:
    data, syntax = case
    ours = read(decode_dataset, data, syntax)
    reference = read(by_pydicom, data, syntax)
    implicit_vr, little_endian, _ = encoding(syntax)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        by_walker = _read_texts(data, implicit_vr, little_endian) is not None
    event("read by the walker" if by_walker else "left to pydicom")
    if reference is DataSetError or ours is DataSetError:
        assert ours is reference
        return
    assert isinstance(ours, Dataset) and isinstance(reference, Dataset)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert described(ours) == described(reference)
        assert ours == reference
    assert ours.original_encoding == reference.original_encoding
    assert ours.original_character_set == reference.original_character_set


@pytest.mark.parametrize("syntax", SYNTAXES)
def test_an_answer_of_text_values_is_read_whole(syntax: str) -> None:
    answer = Dataset()
    answer.SpecificCharacterSet = "ISO_IR 192"
    answer.QueryRetrieveLevel = "STUDY"
    answer.PatientName = "山田^太郎=Yamada^Tarou"
    answer.ModalitiesInStudy = ["CT", "MR"]
    answer.StudyInstanceUID = "1.2.3"
    answer.NumberOfStudyRelatedInstances = 12
    answer.StudyDescription = ""
    decoded = decode_dataset(encode_dataset(answer, syntax), syntax)
    assert decoded == answer
    assert str(decoded.PatientName) == "山田^太郎=Yamada^Tarou"
    assert list(decoded.ModalitiesInStudy) == ["CT", "MR"]
    assert decoded.NumberOfStudyRelatedInstances == 12

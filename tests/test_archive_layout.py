"""The archive's path templates: what they make of data sets, and what they refuse."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import Dataset
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

from dicomd.archive.index import INDEXED_KEYWORDS
from dicomd.archive.layout import MAX_VALUE_LENGTH, Layout, _value_text, sanitise, text_of

SAFE_COMPONENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


def dataset(**values: object) -> Dataset:
    ds = Dataset()
    ds.SOPInstanceUID = "1.2.3.4"
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = "1.2.3.1"
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def test_default_layout_is_study_series_instance() -> None:
    layout = Layout("{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm")
    assert layout.path_for(dataset()) == PurePosixPath("1.2.3/1.2.3.1/1.2.3.4.dcm")


def test_any_keyword_with_fixed_text_around_it() -> None:
    layout = Layout("{PatientID}/{StudyDate}_{Modality}/{SeriesNumber}-{SOPInstanceUID}.dcm")
    ds = dataset(PatientID="PAT-7", StudyDate="20240131", Modality="MR", SeriesNumber=3)
    assert layout.path_for(ds) == PurePosixPath("PAT-7/20240131_MR/3-1.2.3.4.dcm")


def test_values_are_sanitised_into_one_component() -> None:
    layout = Layout("{PatientName}/{PatientID}/{ImageType}/{SOPInstanceUID}")
    ds = dataset(
        PatientName="Müller^Jürgen", PatientID="../../etc", ImageType=["ORIGINAL", "PRIMARY"]
    )
    assert layout.path_for(ds).parts == (
        "M_ller_J_rgen",
        "_._.._etc",
        "ORIGINAL_PRIMARY",
        "1.2.3.4",
    )


def test_missing_and_empty_values_become_an_underscore() -> None:
    layout = Layout("{PatientID}/{AccessionNumber}/{SOPInstanceUID}")
    assert layout.path_for(dataset(AccessionNumber="")).parts == ("_", "_", "1.2.3.4")


@pytest.mark.parametrize(
    ("value", "component"),
    [
        ("", "_"),
        (".", "_"),
        ("..", "_."),
        (".hidden", "_hidden"),
        ("a/b\\c d", "a_b_c_d"),
        ("1.2.840.10008", "1.2.840.10008"),
        ("x" * 100, "x" * MAX_VALUE_LENGTH),
        ("\x00\n", "__"),
    ],
)
def test_sanitise(value: str, component: str) -> None:
    assert sanitise(value) == component


@given(st.text())
def test_sanitise_makes_any_text_a_safe_single_component(value: str) -> None:
    component = sanitise(value)
    assert SAFE_COMPONENT.fullmatch(component)
    assert component not in (".", "..")
    assert 1 <= len(component) <= MAX_VALUE_LENGTH
    assert PurePosixPath(component).parts == (component,)


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
@given(st.text(), st.text(), st.text())
def test_any_values_stay_inside_the_archive_folder(patient: str, study: str, sop: str) -> None:
    layout = Layout("{PatientID}/{StudyDescription}.x/{SOPInstanceUID}")
    path = layout.path_for(dataset(PatientID=patient, StudyDescription=study, SOPInstanceUID=sop))
    assert not path.is_absolute()
    assert len(path.parts) == 3
    assert all(SAFE_COMPONENT.fullmatch(part) for part in path.parts)


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("", "empty"),
        ("{StudyInstanceUID}/{SeriesInstanceUID}.dcm", "does not name {SOPInstanceUID}"),
        ("{SOPInstanceUid}.dcm", "not a DICOM keyword"),
        ("{PatientsName}/{SOPInstanceUID}", "not a DICOM keyword"),
        ("/{SOPInstanceUID}", "absolute"),
        ("../{SOPInstanceUID}", "leaves the archive folder"),
        ("a/../{SOPInstanceUID}", "leaves the archive folder"),
        ("./{SOPInstanceUID}", "leaves the archive folder"),
        (".incoming/{SOPInstanceUID}", "hidden"),
        (".{SOPInstanceUID}", "hidden"),
        ("a//{SOPInstanceUID}", "empty path component"),
        ("{SOPInstanceUID}/", "empty path component"),
        ("a b/{SOPInstanceUID}", "fixed text may only use"),
        ("a\\..\\{SOPInstanceUID}", "fixed text may only use"),
        ("{{x}}/{SOPInstanceUID}", "fixed text may only use"),
        ("{SOPInstanceUID", "expected '}'"),
        ("{SOPInstanceUID:>10}", "takes no format"),
        ("{SOPInstanceUID!r}", "takes no format"),
        ("{ReferencedSeriesSequence}/{SOPInstanceUID}", "VR SQ"),
        ("{PixelData}/{SOPInstanceUID}", "cannot name a file"),
        ("{PatientID}{PatientName}{StudyID}{Modality}{SOPInstanceUID}", "longer than 255"),
    ],
)
def test_bad_templates_are_refused_with_the_reason(template: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        Layout(template)


TEXT_KEYWORDS = sorted({*INDEXED_KEYWORDS, "StudyInstanceUID", "AccessionNumber", "StationName"})
CHARACTER_SETS = [None, "ISO_IR 6", "ISO_IR 100", "ISO_IR 192", "ISO 2022 IR 87", "ISO_IR 144"]


@st.composite
def received_value(draw: st.DrawFn) -> bytes:
    """Bytes as a peer may send them: mostly plain ASCII, with spaces, several values,
    NULs, or bytes past ASCII now and then."""
    plain = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20)
    text = draw(st.one_of(plain, st.lists(plain, max_size=3).map("\\".join)))
    value = text.encode("ascii") + draw(st.sampled_from([b"", b" ", b"  ", b"\0"]))
    if draw(st.integers(0, 9)) == 0:
        value += draw(st.binary(min_size=1, max_size=4))
    return value + b" " * (len(value) % 2)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    keyword=st.sampled_from(TEXT_KEYWORDS),
    value=received_value(),
    character_set=st.sampled_from(CHARACTER_SETS),
    implicit=st.booleans(),
    charset_read_first=st.booleans(),
)
def test_text_read_from_the_received_bytes_is_pydicoms(
    keyword: str, value: bytes, character_set: str | None, implicit: bool, charset_read_first: bool
) -> None:
    """`text_of` reads plain values itself and the rest through pydicom: either way, the
    text is what pydicom's value gives."""

    def received() -> Dataset:
        elements = {}
        if character_set is not None:
            charset = character_set.encode() + b" " * (len(character_set) % 2)
            elements[Tag(0x00080005)] = RawDataElement(
                Tag(0x00080005),
                None if implicit else "CS",
                len(charset),
                charset,
                0,
                implicit,
                True,
            )
        tag = Tag(keyword)
        vr = None if implicit else dictionary_VR(tag)
        elements[tag] = RawDataElement(tag, vr, len(value), value, 0, implicit, True)
        received = Dataset(elements)
        if charset_read_first:  # as it is once pydicom has read any text value
            received.get("SpecificCharacterSet")
        return received

    try:
        expected = _value_text(received()[keyword].value)
    except Exception:  # pydicom refuses it (an IS that is no number): so must text_of
        with pytest.raises(Exception):  # noqa: B017
            text_of(received(), keyword)
        return
    assert text_of(received(), keyword) == expected

"""The answers to a C-FIND made straight from values agree byte for byte with pydicom's.

`AnswerForm.encode` makes the answer to a match given as plain values (what
the archive's index holds) without pydicom; `AnswerForm.encode_match` shapes
a Dataset match and writes it with pydicom, the reference.  For a Dataset
holding each value as an element of its keyword's dictionary VR, both must
give the same bytes, in every transfer syntax, whatever keys the identifier
asks for and whatever character set it names; where `encode` cannot, it says
so with None.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from pydicom import Dataset, config
from pydicom.datadict import dictionary_VR, keyword_dict
from pydicom.dataelem import DataElement
from pydicom.sequence import Sequence

from dicomd import uids
from dicomd.archive.query import ArchiveQuery
from dicomd.dimse.datasets import decode_dataset, encode_dataset
from dicomd.interfaces import FindQuery
from dicomd.node.services.answers import AnswerForm

SYNTAXES = (
    uids.IMPLICIT_VR_LITTLE_ENDIAN,
    uids.EXPLICIT_VR_LITTLE_ENDIAN,
    uids.EXPLICIT_VR_BIG_ENDIAN,
    uids.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
)
MODELS = (uids.STUDY_ROOT_FIND, uids.PATIENT_ROOT_FIND, uids.MODALITY_WORKLIST_FIND)
CHARSETS = (
    None,
    "ISO_IR 6",
    "ISO_IR 100",
    "ISO_IR 101",
    "ISO_IR 144",
    "ISO_IR 192",
    "GB18030",
    "ISO 2022 IR 100",
    "ISO_IR 13",
    ["", "ISO 2022 IR 87"],
    ["ISO 2022 IR 6", "ISO 2022 IR 100"],
)
ARCHIVE_KEYWORDS = sorted(ArchiveQuery(lambda: None).supported_keys("IMAGE"))  # type: ignore[arg-type,return-value]
"""Every keyword the archive's index answers with a value."""
OTHER_KEYS: tuple[tuple[int, str], ...] = (
    (0x00101010, "AS"),  # PatientAge: no value in the archive
    (0x00081030, "LO"),  # StudyDescription with no value in most matches
    (0x00091001, "LO"),  # private
    (0x00100000, "UL"),  # group length: never answered
    (0x00280106, "US"),  # SmallestImagePixelValue: "US or SS" once read in implicit VR
    (0x00081110, "SQ"),  # ReferencedStudySequence
    (0x00080005, "CS"),  # the service's own keys, whatever the identifier says of them
    (0x00080052, "CS"),
    (0x00080054, "AE"),
)

TEXT = st.text(
    alphabet=st.sampled_from(list("AZaz09 ^=\\.-_*éÄßЖжΩ中文한\u00a0\ud800")), max_size=12
)
ASCII = st.text(alphabet=st.sampled_from(list("AZ09 .-\\é")), max_size=16)


def value_of(keyword: str) -> st.SearchStrategy[Any]:
    """A value as an index holds one: text for most VRs, integers for IS, lists for lists."""
    vr = dictionary_VR(keyword)
    if vr == "IS":
        return st.integers(min_value=-(2**40), max_value=2**40)
    if keyword in ("ModalitiesInStudy", "SOPClassesInStudy"):
        return st.lists(ASCII, min_size=1, max_size=3).map(sorted)
    if vr in ("PN", "LO", "SH", "LT", "ST", "UT", "UC"):
        return TEXT
    return ASCII


@st.composite
def values(draw: st.DrawFn) -> dict[str, Any]:
    chosen = draw(st.sets(st.sampled_from(ARCHIVE_KEYWORDS), max_size=12))
    return {keyword: draw(value_of(keyword)) for keyword in sorted(chosen)}


@st.composite
def identifiers(draw: st.DrawFn, syntax: str) -> Dataset:
    """An identifier as the service has it: encoded by a peer in ``syntax``, then decoded."""
    identifier = Dataset()
    for keyword in draw(st.sets(st.sampled_from(ARCHIVE_KEYWORDS), max_size=8)):
        identifier[keyword] = DataElement(keyword_dict[keyword], dictionary_VR(keyword), None)
    for tag, vr in draw(st.sets(st.sampled_from(OTHER_KEYS), max_size=4)):
        value: Any = None
        if vr == "SQ":
            item = Dataset()
            for keyword in draw(st.sets(st.sampled_from(ARCHIVE_KEYWORDS[:6]), max_size=2)):
                item[keyword] = DataElement(keyword_dict[keyword], dictionary_VR(keyword), None)
            value = Sequence(draw(st.sampled_from([[], [item]])))
        identifier[tag] = DataElement(tag, vr, value)
    charset = draw(st.sampled_from(CHARSETS))
    if charset is not None:
        identifier.SpecificCharacterSet = charset
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return decode_dataset(encode_dataset(identifier, syntax), syntax)


def reference_match(values: dict[str, Any]) -> Dataset:
    """A Dataset of ``values``, each an element of its keyword's dictionary VR."""
    match = Dataset()
    for keyword, value in values.items():
        tag = keyword_dict[keyword]
        match[tag] = DataElement(tag, dictionary_VR(keyword), value, validation_mode=config.IGNORE)
    return match


@st.composite
def cases(draw: st.DrawFn) -> tuple[AnswerForm, dict[str, Any]]:
    syntax = draw(st.sampled_from(SYNTAXES))
    model = draw(st.sampled_from(MODELS))
    level = draw(st.sampled_from(["PATIENT", "STUDY", "SERIES", "IMAGE"]))
    query = FindQuery(draw(identifiers(syntax)), model, level, "PEER", "DICOMD", "127.0.0.1")
    ae_title = draw(st.sampled_from(["DICOMD", "ARCHIVE 2"]))
    return AnswerForm(query, ae_title, syntax), draw(values())


@settings(max_examples=300, deadline=None)
@given(case=cases())
def test_answers_encoded_from_values_are_pydicoms_answers_to_their_dataset(
    case: tuple[AnswerForm, dict[str, Any]],
) -> None:
    form, match_values = case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of values it replaces; encode refuses them
        reference = form.encode_match(reference_match(match_values))
        encoded = form.encode(match_values)
    event("encoded from values" if encoded is not None else "left to pydicom")
    if encoded is None:
        return
    assert encoded == reference
    assert decode_dataset(encoded, form.transfer_syntax) == decode_dataset(
        reference, form.transfer_syntax
    )


def study_query(charset: str | None = None, **keys: str) -> FindQuery:
    identifier = Dataset()
    if charset is not None:
        identifier.SpecificCharacterSet = charset
    identifier.QueryRetrieveLevel = "STUDY"
    for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "StudyID"):
        setattr(identifier, keyword, keys.get(keyword, ""))
    return FindQuery(identifier, uids.STUDY_ROOT_FIND, "STUDY", "PEER", "DICOMD", "127.0.0.1")


@pytest.mark.parametrize("syntax", SYNTAXES)
@pytest.mark.parametrize(
    ("charset", "name", "answered_in"),
    [
        (None, "DOE^JOHN", None),
        ("ISO_IR 100", "DOE^JOHN", "ISO_IR 100"),
        ("ISO_IR 100", "Müller^Jürgen", "ISO_IR 100"),
        ("ISO_IR 100", "Иванов^Иван", "ISO_IR 192"),
        (None, "山田^太郎", "ISO_IR 192"),
        ("ISO_IR 192", "山田^太郎", "ISO_IR 192"),
    ],
)
def test_an_archive_s_matches_are_encoded_from_values_in_the_character_set_they_need(
    syntax: str, charset: str | None, name: str, answered_in: str | None
) -> None:
    form = AnswerForm(study_query(charset), "DICOMD", syntax)
    match = {
        "PatientName": name,
        "PatientID": "PID1",
        "StudyInstanceUID": "1.2.3",
        "SeriesNumber": 4,
    }
    encoded = form.encode(match)
    assert encoded is not None
    assert encoded == form.encode_match(reference_match(match))
    answer = decode_dataset(encoded, syntax)
    assert answer.get("SpecificCharacterSet") == answered_in
    assert (answer.PatientName, answer.QueryRetrieveLevel, answer.RetrieveAETitle) == (
        name,
        "STUDY",
        "DICOMD",
    )
    assert (answer.StudyDate, answer.StudyID) == ("", "")
    assert "SeriesNumber" not in answer


def test_code_extensions_and_ambiguous_vrs_are_left_to_pydicom() -> None:
    assert not AnswerForm(study_query(["", "ISO 2022 IR 87"]), "DICOMD", SYNTAXES[0]).encodes_values
    query = study_query()
    query.identifier.add_new(0x00280106, "US or SS", None)
    assert not AnswerForm(query, "DICOMD", SYNTAXES[0]).encodes_values


@pytest.mark.parametrize(
    "value",
    [b"bytes", 1.5, ["CT", 2], "A=B=C=D", "\ud800", "x" * 70_000],
    ids=["bytes", "float", "mixed list", "four name groups", "lone surrogate", "too long"],
)
def test_values_only_pydicom_can_encode_are_refused(value: object) -> None:
    form = AnswerForm(study_query(), "DICOMD", uids.EXPLICIT_VR_LITTLE_ENDIAN)
    assert form.encodes_values
    assert form.encode({"PatientName": value}) is None


def test_sequence_items_hold_the_keys_asked_inside_them_or_come_whole() -> None:
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = "1.2.840.1", "1.2.3.4"
    match = Dataset()
    match.ReferencedStudySequence = Sequence([item])
    match.ReferencedSeriesSequence = Sequence([item])
    match.ReferencedImageSequence = Sequence([item])
    query = study_query()
    asked = Dataset()
    asked.ReferencedSOPInstanceUID = ""
    only_the_service_s = Dataset()
    only_the_service_s.SpecificCharacterSet = "ISO_IR 100"
    query.identifier.ReferencedStudySequence = Sequence([asked])
    query.identifier.ReferencedSeriesSequence = Sequence([])
    query.identifier.ReferencedImageSequence = Sequence([only_the_service_s])

    answer = AnswerForm(query, "DICOMD", uids.EXPLICIT_VR_LITTLE_ENDIAN).shape(match)

    [studies] = answer.ReferencedStudySequence
    assert [(e.keyword, e.value) for e in studies] == [("ReferencedSOPInstanceUID", "1.2.3.4")]
    assert list(answer.ReferencedSeriesSequence) == [item]
    assert [len(shaped) for shaped in answer.ReferencedImageSequence] == [0]

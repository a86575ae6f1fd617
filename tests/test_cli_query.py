"""findscu-style query keys, the identifier they build, and the table of matches."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicomd.cli.query import BadQueryKey, build_identifier, cell, parse_key, table


def test_a_key_with_a_value_is_a_matching_key() -> None:
    key = parse_key("PatientName=Doe*")

    identifier = build_identifier([key], "STUDY")

    assert identifier.QueryRetrieveLevel == "STUDY"
    assert identifier.PatientName == "Doe*"
    assert key.label == "PatientName"


def test_a_key_without_a_value_is_a_return_key() -> None:
    identifier = build_identifier([parse_key("ModalitiesInStudy")], "STUDY")

    assert "ModalitiesInStudy" in identifier
    assert identifier["ModalitiesInStudy"].is_empty


def test_a_key_with_an_empty_value_is_a_return_key_too() -> None:
    identifier = build_identifier([parse_key("StudyDate=")], "STUDY")

    assert identifier["StudyDate"].is_empty


def test_a_tag_names_the_element_as_well_as_its_keyword() -> None:
    by_tag = parse_key("0010,0020=X")
    in_parentheses = parse_key("(0010,0020)=X")

    assert build_identifier([by_tag], None).PatientID == "X"
    assert build_identifier([in_parentheses], None).PatientID == "X"
    assert by_tag.label == "PatientID"


def test_a_range_is_kept_as_written() -> None:
    assert build_identifier([parse_key("StudyDate=20240101-")], "STUDY").StudyDate == "20240101-"


def test_a_backslash_separates_values() -> None:
    identifier = build_identifier([parse_key("ModalitiesInStudy=CT\\MR")], "STUDY")

    assert list(identifier.ModalitiesInStudy) == ["CT", "MR"]


def test_numbers_are_numbers() -> None:
    identifier = build_identifier([parse_key("Rows=512"), parse_key("FrameTime=33.3")], None)

    assert identifier.Rows == 512
    assert identifier.FrameTime == 33.3


def test_a_path_reaches_into_a_sequence_item() -> None:
    keys = [
        parse_key("ScheduledProcedureStepSequence[0].Modality=MR"),
        parse_key("ScheduledProcedureStepSequence.ScheduledStationAETitle"),
    ]

    identifier = build_identifier(keys, None)

    assert "QueryRetrieveLevel" not in identifier
    items = identifier.ScheduledProcedureStepSequence
    assert len(items) == 1
    assert items[0].Modality == "MR"
    assert items[0]["ScheduledStationAETitle"].is_empty
    assert keys[1].label == "ScheduledProcedureStepSequence[0].ScheduledStationAETitle"


def test_a_sequence_on_its_own_is_a_return_key_for_all_of_it() -> None:
    identifier = build_identifier([parse_key("ReferencedStudySequence")], "STUDY")

    assert identifier.ReferencedStudySequence == Sequence([])


def test_non_ascii_values_declare_utf8() -> None:
    identifier = build_identifier([parse_key("PatientName=Müller*")], "STUDY")

    assert identifier.SpecificCharacterSet == "ISO_IR 192"


def test_ascii_values_declare_no_character_set() -> None:
    assert "SpecificCharacterSet" not in build_identifier([parse_key("PatientID=1")], "STUDY")


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        (
            "PatientNme=Doe",
            "PatientNme=Doe: unknown keyword 'PatientNme' (did you mean PatientName?)",
        ),
        ("=Doe", "=Doe: no element named before '='"),
        ("0018,1234=X", "0018,1234=X: (0018,1234) is not in the data dictionary"),
        ("Rows=many", "Rows=many: 'many' is not a valid US value"),
        ("PatientName.PatientID=1", "PatientName.PatientID=1: PatientName is not a sequence"),
        ("PatientName[0]", "PatientName[0]: 'PatientName[0]': only a sequence has items"),
        (
            "ReferencedStudySequence=1",
            "ReferencedStudySequence=1: a sequence takes no value; name an element inside it",
        ),
        ("PixelData=00", "PixelData=00: OB values cannot be given on the command line"),
        ("Patient-Name", "Patient-Name: 'Patient-Name' is neither a keyword nor a tag"),
    ],
)
def test_bad_keys_say_what_is_wrong(text: str, complaint: str) -> None:
    with pytest.raises(BadQueryKey) as raised:
        parse_key(text)

    assert str(raised.value).startswith(complaint)


def match(**elements: object) -> Dataset:
    dataset = Dataset()
    for keyword, value in elements.items():
        setattr(dataset, keyword, value)
    return dataset


def test_cells_show_values_and_nothing_for_what_is_absent() -> None:
    step = Dataset()
    step.Modality = "MR"
    found = match(PatientName="Doe^Jane", ModalitiesInStudy=["CT", "SR"], StudyDescription="")
    found.ScheduledProcedureStepSequence = Sequence([step])

    assert cell(found, parse_key("PatientName")) == "Doe^Jane"
    assert cell(found, parse_key("ModalitiesInStudy")) == "CT\\SR"
    assert cell(found, parse_key("StudyDescription")) == ""
    assert cell(found, parse_key("AccessionNumber")) == ""
    assert cell(found, parse_key("ScheduledProcedureStepSequence[0].Modality")) == "MR"
    assert cell(found, parse_key("ScheduledProcedureStepSequence[1].Modality")) == ""
    assert cell(found, parse_key("ScheduledProcedureStepSequence")) == "<1 item>"


def test_the_table_has_the_keys_in_order_and_fits_its_columns() -> None:
    keys = [parse_key("PatientID"), parse_key("PatientName"), parse_key("StudyDate")]
    matches = [
        match(PatientName="Doe^Jane", PatientID="12345678", StudyDate="20240101"),
        match(PatientName="Roe^Richard Alexander", PatientID="7"),
    ]

    assert table(matches, keys) == [
        "PatientID  PatientName            StudyDate",
        "---------  ---------------------  ---------",
        "12345678   Doe^Jane               20240101",
        "7          Roe^Richard Alexander",
    ]


def test_columns_inside_sequences_are_headed_by_their_keyword_unless_that_is_ambiguous() -> None:
    keys = [
        parse_key("ScheduledProcedureStepSequence[0].Modality"),
        parse_key("ReferencedStudySequence[0].ReferencedSOPInstanceUID"),
        parse_key("ReferencedPatientSequence[0].ReferencedSOPInstanceUID"),
    ]

    assert table([], keys)[0] == (
        "Modality  ReferencedStudySequence[0].ReferencedSOPInstanceUID"
        "  ReferencedPatientSequence[0].ReferencedSOPInstanceUID"
    )

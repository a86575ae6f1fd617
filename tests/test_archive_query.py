"""The C-FIND query engine over real indexes: each kind of matching at each level of both
models, identifiers it refuses, character sets, computed attributes, an oracle property test,
and the timing of study queries over 100 000 instances."""

from __future__ import annotations

import re
import sqlite3
import statistics
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import Dataset, config, dcmread
from pydicom.data import get_charset_files
from pydicom.datadict import dictionary_VR, keyword_dict
from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from dicomd.archive.index import (
    PATIENT_KEYWORDS,
    SERIES_KEYWORDS,
    STUDY_KEYWORDS,
    ArchiveIndex,
    InstanceRecord,
    record_from_dataset,
)
from dicomd.archive.query import ArchiveQuery, QueryError
from dicomd.dimse.datasets import decode_dataset, encode_dataset
from dicomd.interfaces import FindQuery
from dicomd.node.services.answers import AnswerForm
from dicomd.uids import (
    EXPLICIT_VR_BIG_ENDIAN,
    PATIENT_ROOT_FIND,
    PATIENT_ROOT_GET,
    PATIENT_ROOT_MOVE,
    STUDY_ROOT_FIND,
    STUDY_ROOT_GET,
    STUDY_ROOT_MOVE,
)
from tests.support.archive import LargeIndex, is_closed

PR, SR = PATIENT_ROOT_FIND, STUDY_ROOT_FIND
PR_MOVE, PR_GET, SR_MOVE, SR_GET = (
    PATIENT_ROOT_MOVE,
    PATIENT_ROOT_GET,
    STUDY_ROOT_MOVE,
    STUDY_ROOT_GET,
)
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
US = "1.2.840.10008.5.1.4.1.1.6.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def element(keyword: str, value: object, vr: str | None = None) -> DataElement:
    tag = keyword_dict[keyword]
    return DataElement(tag, vr or dictionary_VR(tag), value, validation_mode=config.IGNORE)


def identifier(**keys: object) -> Dataset:
    ds = Dataset()
    for keyword, value in keys.items():
        ds.add(element(keyword, value))
    return ds


def over_the_wire(ds: Dataset) -> Dataset:
    """``ds`` as the service hands it on: encoded with its character set, then decoded."""
    return decode_dataset(encode_dataset(ds, EXPLICIT_LE), EXPLICIT_LE)


def record(ds: Dataset, path: str) -> InstanceRecord:
    return record_from_dataset(
        ds, path=path, size=1, calling_ae_title="MODALITY", transfer_syntax_uid=EXPLICIT_LE
    )


@pytest.fixture(scope="module")
def opened(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], ArchiveIndex]]:
    """Opens indexes in a module-wide folder and closes them all at the end."""
    indexes: list[ArchiveIndex] = []

    def open_index(name: str) -> ArchiveIndex:
        index = ArchiveIndex(tmp_path_factory.mktemp(name) / "index.sqlite")
        index.open()
        indexes.append(index)
        return index

    yield open_index
    for index in indexes:
        index.close()


# A small archive; every test below reads it.

PATIENTS = {
    "P1": dict(
        PatientID="P1",
        PatientName="DOE^JOHN=ドウ^ジョン",
        PatientBirthDate="19700101",
        PatientSex="M",
    ),
    "P2": dict(
        PatientID="P2",
        IssuerOfPatientID="HOSP",
        PatientName="Müller^Jürgen",
        PatientBirthDate="19851231",
        PatientSex="F",
    ),
    "P3": dict(PatientID="P3", PatientName="doe^jane^^", PatientSex="F"),
}
STUDIES = {
    "1.1": (
        "P1",
        dict(
            StudyDate="20240105",
            StudyTime="1030",
            AccessionNumber="A1",
            StudyID="1",
            StudyDescription="Chest [CT]",
            ReferringPhysicianName="Watson^Amy",
        ),
    ),
    "1.2": ("P1", dict(StudyDate="20240107", StudyTime="080000.5", StudyDescription="Head*")),
    "2.1": ("P2", dict(StudyDate="20231231", StudyTime="235959", StudyDescription="Headache")),
    "3.1": ("P3", dict(StudyDate="20240110")),
    "3.2": ("P3", dict(StudyTime="10")),
}
SERIES = {
    "1.1.1": (
        "1.1",
        dict(Modality="CT", SeriesNumber=1, SeriesDate="20240105", SeriesTime="103100"),
    ),
    "1.1.2": (
        "1.1",
        dict(Modality="MR", SeriesNumber=2, SeriesDate="20240106", SeriesTime="0900"),
    ),
    "1.2.1": ("1.2", dict(Modality="CT", SeriesNumber=1, BodyPartExamined="HEAD")),
    "2.1.1": ("2.1", dict(Modality="US", SeriesNumber=1)),
    "3.1.1": ("3.1", dict(Modality="MR", SeriesNumber=3)),
    "3.2.1": ("3.2", dict(Modality="CT")),
}
INSTANCES = {
    "1.1.1.1": ("1.1.1", CT, 1),
    "1.1.1.2": ("1.1.1", CT, 2),
    "1.1.1.3": ("1.1.1", CT, 3),
    "1.1.2.1": ("1.1.2", MR, 1),
    "1.2.1.1": ("1.2.1", CT, 1),
    "2.1.1.1": ("2.1.1", US, 1),
    "3.1.1.1": ("3.1.1", MR, 1),
    "3.2.1.1": ("3.2.1", CT, None),
}


def small_archive_instance(sop_instance_uid: str) -> Dataset:
    series_uid, sop_class_uid, number = INSTANCES[sop_instance_uid]
    study_uid, series = SERIES[series_uid]
    patient_id, study = STUDIES[study_uid]
    keys: dict[str, object] = {
        **PATIENTS[patient_id],
        **study,
        **series,
        "StudyInstanceUID": study_uid,
        "SeriesInstanceUID": series_uid,
        "SOPInstanceUID": sop_instance_uid,
        "SOPClassUID": sop_class_uid,
    }
    if number is not None:
        keys["InstanceNumber"] = number
    return identifier(SpecificCharacterSet="ISO_IR 192", **keys)


@pytest.fixture(scope="module")
def small_archive(opened: Callable[[str], ArchiveIndex]) -> ArchiveIndex:
    index = opened("small")
    for sop_instance_uid in INSTANCES:
        index.add(record(small_archive_instance(sop_instance_uid), f"{sop_instance_uid}.dcm"))
    return index


@pytest.fixture(scope="module")
def engine(small_archive: ArchiveIndex) -> Iterator[ArchiveQuery]:
    """Matches read three at a time: most queries take several pages."""
    query = ArchiveQuery(small_archive.connect_reader, page_rows=3)
    yield query
    query.close()


@pytest.fixture(scope="module")
def folding_engine(small_archive: ArchiveIndex) -> Iterator[ArchiveQuery]:
    query = ArchiveQuery(small_archive.connect_reader, case_insensitive_names=True, page_rows=3)
    yield query
    query.close()


def find(
    engine: ArchiveQuery,
    model: str,
    level: str,
    ds: Dataset | None = None,
    *,
    relational: bool = False,
    **keys: object,
) -> list[Dataset]:
    ds = ds if ds is not None else identifier(**keys)
    query = FindQuery(ds, model, level, "FINDSCU", "DICOMD", "127.0.0.1", relational=relational)
    return engine.find(query)


def found(engine: ArchiveQuery, model: str, level: str, unique: str, **keys: object) -> list[str]:
    """The unique keys of the matches, sorted."""
    return sorted(str(match[unique].value) for match in find(engine, model, level, **keys))


def studies(engine: ArchiveQuery, **keys: object) -> list[str]:
    return found(engine, SR, "STUDY", "StudyInstanceUID", **keys)


ALL_STUDIES = sorted(STUDIES)


# Models, levels and the hierarchy.


@pytest.mark.parametrize(
    ("model", "level"),
    [("1.2.840.10008.5.1.4.31", "STUDY"), ("1.2.3", "STUDY"), (SR, "PATIENT"), (PR, "WORKLIST")],
)
def test_a_level_outside_the_model_is_refused(engine: ArchiveQuery, model: str, level: str) -> None:
    with pytest.raises(QueryError):
        find(engine, model, level, PatientID="P1")


def test_without_a_level_the_query_is_refused(engine: ArchiveQuery) -> None:
    with pytest.raises(QueryError, match="Query/Retrieve Level"):
        find(engine, SR, "", PatientID="P1")


def test_the_identifiers_level_is_used_when_the_query_names_none(engine: ArchiveQuery) -> None:
    matches = find(engine, SR, "", QueryRetrieveLevel="SERIES", StudyInstanceUID="1.1")
    assert sorted(match.SeriesInstanceUID for match in matches) == ["1.1.1", "1.1.2"]


@pytest.mark.parametrize(
    ("model", "level", "keys"),
    [
        (PR, "STUDY", {}),
        (PR, "STUDY", {"PatientID": ""}),
        (PR, "STUDY", {"PatientID": "*"}),
        (PR, "STUDY", {"PatientID": "P*"}),
        (PR, "STUDY", {"PatientID": "P1\\P2"}),
        (PR, "STUDY", {"PatientName": "DOE^JOHN", "StudyInstanceUID": "1.1"}),
        (PR, "SERIES", {"PatientID": "P1"}),
        (SR, "SERIES", {}),
        (SR, "SERIES", {"StudyInstanceUID": "1.1\\1.2"}),
        (SR, "SERIES", {"StudyInstanceUID": "", "Modality": "CT"}),
        (PR, "IMAGE", {"PatientID": "P1", "StudyInstanceUID": "1.1"}),
        (SR, "IMAGE", {"StudyInstanceUID": "1.1"}),
        (SR, "IMAGE", {"SeriesInstanceUID": "1.1.1\\1.1.2"}),
    ],
)
def test_a_lower_level_needs_its_parents_unique_key_with_one_value(
    engine: ArchiveQuery, model: str, level: str, keys: dict[str, str]
) -> None:
    with pytest.raises(QueryError, match="single value"):
        find(engine, model, level, **keys)


def test_patient_root_series_and_image_queries_need_only_the_parent_uid(
    engine: ArchiveQuery,
) -> None:
    assert found(engine, PR, "SERIES", "SeriesInstanceUID", StudyInstanceUID="1.1") == [
        "1.1.1",
        "1.1.2",
    ]
    assert found(engine, PR, "IMAGE", "SOPInstanceUID", SeriesInstanceUID="1.1.1") == [
        "1.1.1.1",
        "1.1.1.2",
        "1.1.1.3",
    ]


@pytest.mark.parametrize(
    ("model", "level", "keys", "unique", "expected"),
    [
        (PR, "STUDY", {}, "StudyInstanceUID", ALL_STUDIES),
        (PR, "STUDY", {"PatientID": "P*"}, "StudyInstanceUID", ALL_STUDIES),
        (PR, "STUDY", {"PatientID": "P1\\P2"}, "StudyInstanceUID", ["1.1", "1.2", "2.1"]),
        (PR, "STUDY", {"PatientSex": "F"}, "StudyInstanceUID", ["2.1", "3.1", "3.2"]),
        (PR, "SERIES", {"PatientID": "P1"}, "SeriesInstanceUID", ["1.1.1", "1.1.2", "1.2.1"]),
        (SR, "SERIES", {"Modality": "CT"}, "SeriesInstanceUID", ["1.1.1", "1.2.1", "3.2.1"]),
        (
            SR,
            "SERIES",
            {"StudyInstanceUID": "1.1\\1.2"},
            "SeriesInstanceUID",
            ["1.1.1", "1.1.2", "1.2.1"],
        ),
        (
            SR,
            "IMAGE",
            {"StudyInstanceUID": "1.1"},
            "SOPInstanceUID",
            ["1.1.1.1", "1.1.1.2", "1.1.1.3", "1.1.2.1"],
        ),
        (PR, "IMAGE", {"PatientName": "doe*"}, "SOPInstanceUID", ["3.1.1.1", "3.2.1.1"]),
        (SR, "IMAGE", {"SOPClassUID": MR}, "SOPInstanceUID", ["1.1.2.1", "3.1.1.1"]),
    ],
)
def test_a_relational_query_needs_no_unique_key_of_the_levels_above(
    engine: ArchiveQuery,
    model: str,
    level: str,
    keys: dict[str, str],
    unique: str,
    expected: list[str],
) -> None:
    with pytest.raises(QueryError, match="single value"):
        find(engine, model, level, **keys)
    matches = find(engine, model, level, relational=True, **keys)
    assert sorted(str(match[unique].value) for match in matches) == expected


def test_a_relational_query_still_refuses_values_that_do_not_fit(engine: ArchiveQuery) -> None:
    with pytest.raises(QueryError, match="wildcards"):
        find(engine, SR, "IMAGE", relational=True, SeriesInstanceUID="1.1.*")
    with pytest.raises(QueryError, match="level"):
        find(engine, SR, "PATIENT", relational=True, PatientID="P1")


def test_keys_below_the_level_constrain_nothing_in_a_relational_query_either(
    engine: ArchiveQuery,
) -> None:
    matches = find(engine, PR, "STUDY", relational=True, Modality="PT", SOPInstanceUID="9.9")
    assert sorted(match.StudyInstanceUID for match in matches) == ALL_STUDIES


def retrieved(
    engine: ArchiveQuery, model: str, level: str, *, relational: bool = False, **keys: object
) -> list[str]:
    """The SOP Instance UIDs a C-MOVE or C-GET identifier selects, sorted."""
    ds = identifier(QueryRetrieveLevel=level, **keys)
    query = FindQuery(ds, model, level, "MOVESCU", "DICOMD", "127.0.0.1", relational=relational)
    return sorted(sop_instance_uid for _, _, sop_instance_uid, _ in engine.instances(query))


STUDY_1_1 = ["1.1.1.1", "1.1.1.2", "1.1.1.3", "1.1.2.1"]


def test_a_hierarchical_retrieve_needs_the_unique_key_of_its_level(engine: ArchiveQuery) -> None:
    assert retrieved(engine, SR_MOVE, "STUDY", StudyInstanceUID="1.1") == STUDY_1_1
    assert retrieved(engine, SR_GET, "IMAGE", SOPInstanceUID="1.1.1.1\\2.1.1.1") == [
        "1.1.1.1",
        "2.1.1.1",
    ]
    for keys in ({"StudyInstanceUID": "1.1"}, {"SOPInstanceUID": ""}, {"SOPInstanceUID": "*"}):
        with pytest.raises(QueryError, match="IMAGE retrieve needs SOPInstanceUID"):
            retrieved(engine, SR_MOVE, "IMAGE", **keys)
    with pytest.raises(QueryError, match="SERIES retrieve needs SeriesInstanceUID"):
        retrieved(engine, PR_MOVE, "SERIES", PatientID="P1", StudyInstanceUID="1.1")


def test_a_relational_retrieve_selects_by_any_unique_key_at_or_above_its_level(
    engine: ArchiveQuery,
) -> None:
    assert retrieved(engine, SR_MOVE, "IMAGE", relational=True, StudyInstanceUID="1.1") == (
        STUDY_1_1
    )
    assert retrieved(engine, SR_GET, "SERIES", relational=True, StudyInstanceUID="1.1") == (
        STUDY_1_1
    )
    assert retrieved(engine, PR_GET, "IMAGE", relational=True, PatientID="P3") == [
        "3.1.1.1",
        "3.2.1.1",
    ]
    keys = {"StudyInstanceUID": "1.1\\2.1", "SeriesInstanceUID": "1.1.2\\2.1.1"}
    assert retrieved(engine, SR_MOVE, "IMAGE", relational=True, **keys) == ["1.1.2.1", "2.1.1.1"]


def test_a_relational_retrieve_never_means_everything(engine: ArchiveQuery) -> None:
    for keys in ({}, {"StudyInstanceUID": ""}, {"SeriesInstanceUID": "*", "Modality": "CT"}):
        with pytest.raises(
            QueryError, match="SERIES retrieve needs one of PatientID, StudyInstanceUID, Series"
        ):
            retrieved(engine, SR_MOVE, "SERIES", relational=True, **keys)


def test_keys_below_the_retrieve_level_select_nothing(engine: ArchiveQuery) -> None:
    with pytest.raises(QueryError, match=r"needs one of PatientID, StudyInstanceUID$"):
        retrieved(engine, PR_MOVE, "STUDY", relational=True, SeriesInstanceUID="1.1.1")


def test_unique_keys_of_higher_levels_narrow_a_retrieve(engine: ArchiveQuery) -> None:
    assert (
        retrieved(engine, SR_MOVE, "SERIES", StudyInstanceUID="2.1", SeriesInstanceUID="1.1.1")
        == []
    )
    assert retrieved(engine, PR_MOVE, "STUDY", PatientID="P1", StudyInstanceUID="1.1\\2.1") == (
        STUDY_1_1
    )


def test_higher_unique_keys_when_present_still_constrain(engine: ArchiveQuery) -> None:
    keys = dict(PatientID="P2", StudyInstanceUID="1.1", SeriesInstanceUID="1.1.1")
    assert found(engine, PR, "IMAGE", "SOPInstanceUID", **keys) == []
    keys["PatientID"] = "P1"
    assert len(found(engine, PR, "IMAGE", "SOPInstanceUID", **keys)) == 3


@pytest.mark.parametrize("model", [PR, SR])
def test_each_level_of_each_model_answers_its_own_entities(
    engine: ArchiveQuery, model: str
) -> None:
    if model == PR:
        assert found(engine, PR, "PATIENT", "PatientID") == ["P1", "P2", "P3"]
        assert found(engine, PR, "STUDY", "StudyInstanceUID", PatientID="P1") == ["1.1", "1.2"]
    else:
        assert studies(engine) == ALL_STUDIES
    series = found(engine, model, "SERIES", "SeriesInstanceUID", StudyInstanceUID="3.1")
    images = found(engine, model, "IMAGE", "SOPInstanceUID", SeriesInstanceUID="1.1.2")
    assert (series, images) == (["3.1.1"], ["1.1.2.1"])


# Single value, universal and wildcard matching.


def test_single_value_matching_is_exact_and_case_sensitive(engine: ArchiveQuery) -> None:
    assert found(engine, PR, "PATIENT", "PatientID", PatientName="DOE^JOHN=ドウ^ジョン") == ["P1"]
    assert found(engine, PR, "PATIENT", "PatientID", PatientName="Doe^John") == []
    assert found(engine, PR, "PATIENT", "PatientID", PatientSex="F") == ["P2", "P3"]
    assert found(engine, PR, "PATIENT", "PatientID", PatientSex="f") == []
    assert studies(engine, StudyDescription="Headache") == ["2.1"]
    assert studies(engine, StudyDescription="Head") == []


def test_leading_and_trailing_spaces_of_a_value_do_not_count(engine: ArchiveQuery) -> None:
    assert studies(engine, AccessionNumber="  A1 ") == ["1.1"]


@pytest.mark.parametrize("value", ["", "*", "***"])
def test_universal_matching_includes_entities_without_the_attribute(
    engine: ArchiveQuery, value: str
) -> None:
    keys = dict(StudyDescription=value, StudyDate=value, StudyTime=value, AccessionNumber=value)
    assert studies(engine, **keys) == ALL_STUDIES
    assert studies(engine, StudyInstanceUID=value, ReferringPhysicianName=value) == ALL_STUDIES


def test_wildcards_match_any_run_or_any_one_character(engine: ArchiveQuery) -> None:
    assert studies(engine, StudyDescription="Head*") == ["1.2", "2.1"]
    assert studies(engine, StudyDescription="*ache") == ["2.1"]
    assert studies(engine, StudyDescription="H?ad*") == ["1.2", "2.1"]
    assert studies(engine, StudyDescription="Head?") == ["1.2"]
    assert studies(engine, StudyDescription="?") == []
    assert studies(engine, AccessionNumber="A?") == ["1.1"]


def test_no_entity_without_a_value_matches_a_wildcard(engine: ArchiveQuery) -> None:
    assert studies(engine, AccessionNumber="*?*") == ["1.1"]
    assert found(engine, PR, "PATIENT", "PatientID", IssuerOfPatientID="?*") == ["P2"]


def test_glob_brackets_in_a_value_are_plain_characters(engine: ArchiveQuery) -> None:
    assert studies(engine, StudyDescription="Chest [CT]") == ["1.1"]
    assert studies(engine, StudyDescription="Chest [CT]*") == ["1.1"]
    assert studies(engine, StudyDescription="*[CT?") == ["1.1"]
    assert studies(engine, StudyDescription="Chest [C]T") == []
    assert studies(engine, StudyDescription="[CH]hest*") == []
    assert studies(engine, StudyDescription="*]") == ["1.1"]


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"StudyInstanceUID": "1.*"}, "wildcard"),
        ({"StudyInstanceUID": "1.?"}, "wildcard"),
        ({"StudyDate": "2024*"}, "wildcard"),
        ({"StudyTime": "10?0"}, "wildcard"),
        ({"StudyDate": "2024"}, "date"),
        ({"StudyDate": "20241301"}, "date"),
        ({"StudyDate": "20240101-2024"}, "date"),
        ({"StudyDate": "-"}, "date"),
        ({"StudyTime": "25"}, "time"),
        ({"StudyTime": "1"}, "time"),
        ({"StudyTime": "1060"}, "time"),
        ({"StudyTime": "103000.1234567"}, "time"),
        ({"StudyTime": "-"}, "time"),
        ({"PatientName": "A=B=C=D"}, "component groups"),
        ({"StudyDescription": "a\0b"}, "NUL"),
        ({"SOPClassesInStudy": "1.2.*"}, "wildcard"),
    ],
)
def test_values_that_do_not_fit_their_vr_are_refused(
    engine: ArchiveQuery, keys: dict[str, str], message: str
) -> None:
    with pytest.raises(QueryError, match=message):
        studies(engine, **keys)


def test_an_integer_key_matches_by_value_and_refuses_anything_else(engine: ArchiveQuery) -> None:
    series = found(
        engine, SR, "SERIES", "SeriesInstanceUID", StudyInstanceUID="1.1", SeriesNumber=2
    )
    assert series == ["1.1.2"]
    images = found(
        engine, SR, "IMAGE", "SOPInstanceUID", SeriesInstanceUID="1.1.1", InstanceNumber="+03"
    )
    assert images == ["1.1.1.3"]
    garbled = Dataset()
    garbled.add(element("StudyInstanceUID", "1.1"))
    garbled.add(element("SeriesNumber", "2*", vr="LO"))
    with pytest.raises(QueryError, match="SeriesNumber"):
        find(engine, SR, "SERIES", over_the_wire(garbled))
    garbled.SeriesNumber = "1.5"
    with pytest.raises(QueryError, match="SeriesNumber"):
        find(engine, SR, "SERIES", over_the_wire(garbled))


# Person names.


def test_a_name_value_matches_the_alphabetic_group_unless_it_names_others(
    engine: ArchiveQuery,
) -> None:
    def patients(name: str) -> list[str]:
        return found(engine, PR, "PATIENT", "PatientID", PatientName=name)

    assert patients("DOE*") == ["P1"]
    assert patients("*JOHN") == ["P1"]
    assert patients("*ジョン") == []
    assert patients("=ドウ*") == ["P1"]
    assert patients("*=*^ジョン") == ["P1"]
    assert patients("DOE^JOHN=ドウ^ジョン=") == ["P1"]
    assert patients("DOE^JOHN=ドウ^ジヨン") == []
    assert patients("==*") == ["P1", "P2", "P3"]
    assert patients("=?*") == ["P1"]


def test_trailing_component_separators_are_insignificant(engine: ArchiveQuery) -> None:
    assert found(engine, PR, "PATIENT", "PatientID", PatientName="doe^jane") == ["P3"]
    assert found(engine, PR, "PATIENT", "PatientID", PatientName="DOE^JOHN^^") == ["P1"]
    assert found(engine, PR, "PATIENT", "PatientID", PatientName="doe^jane^*") == []


def test_names_may_match_case_insensitively(
    engine: ArchiveQuery, folding_engine: ArchiveQuery
) -> None:
    def patients(query: ArchiveQuery, name: str) -> list[str]:
        return found(query, PR, "PATIENT", "PatientID", PatientName=name)

    assert patients(engine, "doe*") == ["P3"]
    assert patients(folding_engine, "doe*") == ["P1", "P3"]
    assert patients(folding_engine, "DOE^JANE") == ["P3"]
    assert patients(folding_engine, "MÜLLER^JÜRGEN") == ["P2"]
    assert patients(folding_engine, "m?ller*") == ["P2"]
    assert patients(folding_engine, "=ﾄﾞｳ*") == ["P1"]
    assert studies(folding_engine, ReferringPhysicianName="watson^amy") == ["1.1"]
    assert studies(folding_engine, StudyDescription="headache") == []


def test_case_insensitive_names_are_folded_fully_not_only_lowered(
    opened: Callable[[str], ArchiveIndex],
) -> None:
    """Case folding makes a sharp s "ss" and NFKC a fullwidth letter or sign ASCII: each
    group of a stored name is folded whole, however the engine keeps it."""
    index = opened("folded")
    for number, name in enumerate(("Straße^Anna", "\uff37ilde^Kim\uff1d=x", "Strasse^Bo")):
        ds = small_archive_instance("1.1.1.1")
        ds.PatientID, ds.PatientName = f"F{number}", name
        ds.StudyInstanceUID, ds.SeriesInstanceUID = f"8.{number}", f"8.{number}.1"
        ds.SOPInstanceUID = f"8.{number}.1.1"
        index.add(record(ds, f"{number}.dcm"))
    query = ArchiveQuery(index.connect_reader, case_insensitive_names=True)
    for name, expected in [
        ("STRASSE^*", ["F0", "F2"]),
        ("straße*", ["F0", "F2"]),
        ("strasse^anna", ["F0"]),
        # the fullwidth sign is no group separator on either side: folded, it ends the group
        ("wilde^kim\uff1d", ["F1"]),
        ("wilde^kim=", []),
        ("=X", ["F1"]),
    ]:
        assert found(query, PR, "PATIENT", "PatientID", PatientName=name) == expected, name
    query.close()


def test_a_literal_prefix_at_the_edges_of_unicode_still_matches(
    opened: Callable[[str], ArchiveIndex],
) -> None:
    """The index range after a prefix ending in U+D7FF starts at U+E000, past the surrogates;
    after U+10FFFF there is none."""
    index = opened("edges")
    for number, name in enumerate(("A\ud7ff^B", "A\ue000^C", "A\U0010ffff^D", "\U0010ffff^E")):
        ds = small_archive_instance("1.1.1.1")
        ds.PatientID, ds.PatientName = f"E{number}", name
        ds.StudyInstanceUID, ds.SeriesInstanceUID = f"9.{number}", f"9.{number}.1"
        ds.SOPInstanceUID = f"9.{number}.1.1"
        index.add(record(ds, f"{number}.dcm"))
    query = ArchiveQuery(index.connect_reader)
    for name, expected in [
        ("A\ud7ff*", ["E0"]),
        ("A\ue000*", ["E1"]),
        ("A\U0010ffff*", ["E2"]),
        ("\U0010ffff*", ["E3"]),
        ("A*", ["E0", "E1", "E2"]),
    ]:
        assert found(query, PR, "PATIENT", "PatientID", PatientName=name) == expected
    query.close()


# Dates and times.


def test_date_range_matching(engine: ArchiveQuery) -> None:
    assert studies(engine, StudyDate="20240105") == ["1.1"]
    assert studies(engine, StudyDate="20240101-20240107") == ["1.1", "1.2"]
    assert studies(engine, StudyDate="-20231231") == ["2.1"]
    assert studies(engine, StudyDate="20240107-") == ["1.2", "3.1"]
    assert studies(engine, StudyDate="20240107-20240101") == []
    patients = found(engine, PR, "PATIENT", "PatientID", PatientBirthDate="19800101-")
    assert patients == ["P2"]


def test_a_partial_time_spans_what_it_leaves_out(engine: ArchiveQuery) -> None:
    assert studies(engine, StudyTime="10") == ["1.1", "3.2"]
    assert studies(engine, StudyTime="1030") == ["1.1"]
    assert studies(engine, StudyTime="103000") == ["1.1"]
    assert studies(engine, StudyTime="10:30") == ["1.1"]
    assert studies(engine, StudyTime="0800") == ["1.2"]
    assert studies(engine, StudyTime="080000.4-080000.6") == ["1.2"]
    assert studies(engine, StudyTime="080000.6-") == ["1.1", "2.1", "3.2"]
    assert studies(engine, StudyTime="-0959") == ["1.2"]
    assert studies(engine, StudyTime="2359-") == ["2.1"]


def test_date_and_time_ranges_together_make_one_date_time_range(engine: ArchiveQuery) -> None:
    """From 5 January 10:00 to 7 January 09:00: each time alone falls outside 10:00-09:00."""
    assert studies(engine, StudyDate="20240105-20240107", StudyTime="1000-0900") == ["1.1", "1.2"]
    assert studies(engine, StudyDate="20240105-20240107", StudyTime="1031-0759") == []
    assert studies(engine, StudyDate="20240105-", StudyTime="1031-") == ["1.2", "3.1"]
    assert studies(engine, StudyDate="-20240107", StudyTime="-0800") == ["1.1", "1.2", "2.1"]


def test_date_time_range_bounds_are_inclusive(engine: ArchiveQuery) -> None:
    assert studies(engine, StudyDate="20240105-20240107", StudyTime="1030-080000.5") == [
        "1.1",
        "1.2",
    ]
    assert studies(engine, StudyDate="20240105-20240107", StudyTime="103000.000001-080000.4") == []


def test_a_date_without_time_counts_as_its_whole_day_in_a_date_time_range(
    engine: ArchiveQuery,
) -> None:
    assert studies(engine, StudyDate="20240110-", StudyTime="2300-") == ["3.1"]
    assert studies(engine, StudyDate="20240110-", StudyTime="235959.999999-") == ["3.1"]
    assert studies(engine, StudyDate="-20240110", StudyTime="-000000") == [
        "1.1",
        "1.2",
        "2.1",
        "3.1",
    ]
    assert studies(engine, StudyDate="-20240110", StudyTime="-0001") == ["1.1", "1.2", "2.1", "3.1"]


def test_series_date_and_time_combine_too(engine: ArchiveQuery) -> None:
    keys = dict(StudyInstanceUID="1.1", SeriesDate="20240105-20240106", SeriesTime="1031-0800")
    assert found(engine, SR, "SERIES", "SeriesInstanceUID", **keys) == ["1.1.1"]
    keys["SeriesTime"] = "0900"
    assert found(engine, SR, "SERIES", "SeriesInstanceUID", **keys) == ["1.1.2"]


# Lists, study-level lists and keys that are no constraints.


def test_list_of_uid_matching(engine: ArchiveQuery) -> None:
    assert studies(engine, StudyInstanceUID="1.1\\2.1\\9.9") == ["1.1", "2.1"]
    images = found(
        engine,
        PR,
        "IMAGE",
        "SOPInstanceUID",
        SeriesInstanceUID="1.1.1",
        SOPInstanceUID="1.1.1.3\\1.1.1.1",
    )
    assert images == ["1.1.1.1", "1.1.1.3"]


def test_several_values_of_any_key_match_when_one_does(engine: ArchiveQuery) -> None:
    assert studies(engine, AccessionNumber="A1\\Z*") == ["1.1"]
    assert studies(engine, StudyDate="20231231\\20240107-") == ["1.2", "2.1", "3.1"]
    assert found(engine, PR, "PATIENT", "PatientID", PatientName="DOE*\\M*") == ["P1", "P2"]
    modalities = found(
        engine, SR, "SERIES", "SeriesInstanceUID", StudyInstanceUID="1.1", Modality="MR\\US"
    )
    assert modalities == ["1.1.2"]


def test_modalities_in_study_matches_a_study_by_any_of_its_series(engine: ArchiveQuery) -> None:
    assert studies(engine, ModalitiesInStudy="MR") == ["1.1", "3.1"]
    assert studies(engine, ModalitiesInStudy="US\\MR") == ["1.1", "2.1", "3.1"]
    assert studies(engine, ModalitiesInStudy="?T") == ["1.1", "1.2", "3.2"]
    assert studies(engine, ModalitiesInStudy="PT") == []
    assert studies(engine, ModalitiesInStudy="") == ALL_STUDIES


def test_sop_classes_in_study_matches_a_study_by_any_of_its_instances(
    engine: ArchiveQuery,
) -> None:
    assert studies(engine, SOPClassesInStudy=MR) == ["1.1", "3.1"]
    assert studies(engine, SOPClassesInStudy=f"{US}\\{MR}") == ["1.1", "2.1", "3.1"]


def test_keys_below_the_level_sequences_and_unknown_keys_constrain_nothing(
    engine: ArchiveQuery,
) -> None:
    item = identifier(StudyInstanceUID="9.9")
    keys = dict(
        Modality="PT",
        SeriesInstanceUID="9.9",
        PatientWeight="70",
        ReferencedStudySequence=Sequence([item]),
        NumberOfStudyRelatedInstances="99",
    )
    assert studies(engine, **keys) == ALL_STUDIES
    match = find(engine, SR, "STUDY", StudyInstanceUID="1.1", **keys)[0]
    assert {"Modality", "SeriesInstanceUID", "PatientWeight", "ReferencedStudySequence"}.isdisjoint(
        match.dir()
    )


def test_private_and_unnamed_elements_are_ignored(engine: ArchiveQuery) -> None:
    ds = identifier(StudyInstanceUID="1.1")
    ds.add_new(0x00090010, "LO", "ACME")
    ds.add_new(0x00091001, "LO", "x")
    assert [match.StudyInstanceUID for match in find(engine, SR, "STUDY", ds)] == ["1.1"]


# What a match holds.


def vrs(match: Dataset) -> dict[str, str]:
    return {element.keyword: element.VR for element in match}


def test_a_match_holds_its_level_and_the_levels_above(engine: ArchiveQuery) -> None:
    (image,) = find(engine, PR, "IMAGE", SeriesInstanceUID="1.1.2")
    assert vrs(image) == {
        "SOPClassUID": "UI",
        "SOPInstanceUID": "UI",
        "StudyDate": "DA",
        "StudyTime": "TM",
        "AccessionNumber": "SH",
        "Modality": "CS",
        "ReferringPhysicianName": "PN",
        "StudyDescription": "LO",
        "PatientName": "PN",
        "PatientID": "LO",
        "PatientBirthDate": "DA",
        "PatientSex": "CS",
        "StudyInstanceUID": "UI",
        "SeriesInstanceUID": "UI",
        "StudyID": "SH",
        "SeriesNumber": "IS",
        "InstanceNumber": "IS",
        "SeriesDate": "DA",
        "SeriesTime": "TM",
        "AvailableTransferSyntaxUID": "UI",
    }
    assert (image.SOPClassUID, image.InstanceNumber, image.SeriesNumber) == (MR, 1, 2)
    assert image.AvailableTransferSyntaxUID == EXPLICIT_LE
    assert str(image.PatientName) == "DOE^JOHN=ドウ^ジョン"
    (patient,) = find(engine, PR, "PATIENT", PatientID="P2")
    assert vrs(patient) == {
        "PatientName": "PN",
        "PatientID": "LO",
        "IssuerOfPatientID": "LO",
        "PatientBirthDate": "DA",
        "PatientSex": "CS",
    }


def test_a_match_holds_no_value_the_archive_does_not_have(engine: ArchiveQuery) -> None:
    (study,) = find(engine, SR, "STUDY", StudyInstanceUID="3.2")
    assert set(study.dir()) == {
        "PatientID",
        "PatientName",
        "PatientSex",
        "StudyInstanceUID",
        "StudyTime",
    }


def test_computed_attributes_come_only_when_asked_for(engine: ArchiveQuery) -> None:
    (plain,) = find(engine, SR, "STUDY", StudyInstanceUID="1.1")
    assert "NumberOfStudyRelatedInstances" not in plain and "ModalitiesInStudy" not in plain
    (study,) = find(
        engine,
        SR,
        "STUDY",
        StudyInstanceUID="1.1",
        NumberOfStudyRelatedSeries="",
        NumberOfStudyRelatedInstances="",
        ModalitiesInStudy="",
        SOPClassesInStudy="",
        NumberOfPatientRelatedStudies="",
    )
    assert (study.NumberOfStudyRelatedSeries, study.NumberOfStudyRelatedInstances) == (2, 4)
    assert (list(study.ModalitiesInStudy), list(study.SOPClassesInStudy)) == (
        ["CT", "MR"],
        [CT, MR],
    )
    assert study.NumberOfPatientRelatedStudies == 2
    assert {
        key: vrs(study)[key] for key in ("NumberOfStudyRelatedSeries", "ModalitiesInStudy")
    } == {
        "NumberOfStudyRelatedSeries": "IS",
        "ModalitiesInStudy": "CS",
    }


def test_patient_and_series_counts(engine: ArchiveQuery) -> None:
    counts = dict(
        NumberOfPatientRelatedStudies="",
        NumberOfPatientRelatedSeries="",
        NumberOfPatientRelatedInstances="",
    )
    answers = {
        match.PatientID: (
            match.NumberOfPatientRelatedStudies,
            match.NumberOfPatientRelatedSeries,
            match.NumberOfPatientRelatedInstances,
        )
        for match in find(engine, PR, "PATIENT", **counts)
    }
    assert answers == {"P1": (2, 3, 5), "P2": (1, 1, 1), "P3": (2, 2, 2)}
    series = find(engine, PR, "SERIES", StudyInstanceUID="1.1", NumberOfSeriesRelatedInstances="")
    assert [
        (match.SeriesInstanceUID, match.NumberOfSeriesRelatedInstances) for match in series
    ] == [
        ("1.1.1", 3),
        ("1.1.2", 1),
    ]


def test_matches_come_in_a_stable_order(engine: ArchiveQuery) -> None:
    order = [match.StudyInstanceUID for match in find(engine, SR, "STUDY")]
    assert order == ["3.2", "2.1", "1.1", "1.2", "3.1"]
    images = find(engine, SR, "IMAGE", SeriesInstanceUID="1.1.1")
    assert [match.InstanceNumber for match in images] == [1, 2, 3]


def test_supported_keys_name_what_is_matched_or_returned(engine: ArchiveQuery) -> None:
    patient, study, image = (
        engine.supported_keys(level) for level in ("PATIENT", "STUDY", "IMAGE")
    )
    assert set(PATIENT_KEYWORDS) | {"NumberOfPatientRelatedInstances"} <= patient
    assert "StudyInstanceUID" not in patient
    assert set(STUDY_KEYWORDS) | {"ModalitiesInStudy", "SOPClassesInStudy", "PatientName"} <= study
    assert "Modality" not in study
    assert {"SOPInstanceUID", "AvailableTransferSyntaxUID", "InstanceNumber"} <= image
    assert {"SpecificCharacterSet", "QueryRetrieveLevel", "TransferSyntaxUID"}.isdisjoint(image)
    assert "ReferencedStudySequence" not in image
    with pytest.raises(QueryError):
        engine.supported_keys("WORKLIST")


# Character sets.


@pytest.fixture(scope="module")
def charset_archive(opened: Callable[[str], ArchiveIndex]) -> Iterator[ArchiveQuery]:
    """pydicom's character set examples, and a name written in UTF-8 and read back."""
    index = opened("charsets")
    for name in ("chrFren.dcm", "chrGerm.dcm", "chrH31.dcm", "chrX1.dcm"):
        index.add(record(dcmread(get_charset_files(name)[0]), name))
    utf8 = small_archive_instance("1.1.1.1")
    utf8.PatientID, utf8.PatientName = "UTF8", "Ærøe^Åse"
    utf8.SOPInstanceUID, utf8.StudyInstanceUID, utf8.SeriesInstanceUID = "8.1.1.1", "8.1", "8.1.1"
    index.add(record(over_the_wire(utf8), "utf8.dcm"))
    query = ArchiveQuery(index.connect_reader)
    yield query
    query.close()


@pytest.mark.parametrize(
    ("character_set", "name", "patient"),
    [
        ("ISO_IR 192", "Buc^Jérôme", "SCSFREN"),
        ("ISO_IR 192", "Äneas^Rüdiger", "SCSGERM"),
        ("ISO_IR 192", "*=山田^太郎", "H31EXAMPLE"),
        ("ISO_IR 100", "Ærøe^Åse", "UTF8"),
        ("ISO_IR 100", "Äneas*", "SCSGERM"),
        (["", "ISO 2022 IR 87"], "=王^*", "X1EXAMPLE"),
        ("GB18030", "Wang*=王^小東", "X1EXAMPLE"),
    ],
)
def test_a_name_is_found_whatever_character_set_either_side_used(
    charset_archive: ArchiveQuery, character_set: str | list[str], name: str, patient: str
) -> None:
    query = over_the_wire(identifier(SpecificCharacterSet=character_set, PatientName=name))
    assert str(query.PatientName) == name
    matches = find(charset_archive, PR, "PATIENT", query)
    assert [match.PatientID for match in matches] == [patient]


# Threads and statements.


def test_each_thread_keeps_one_connection_until_close(small_archive: ArchiveIndex) -> None:
    connections: list[object] = []

    def connect() -> object:
        connection = small_archive.connect_reader()
        connections.append(connection)
        return connection

    query = ArchiveQuery(connect)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: len(find(query, SR, "STUDY")), range(40)))
    assert answers == [len(STUDIES)] * 40
    assert 1 <= len(connections) <= 4
    query.close()
    assert all(is_closed(connection) for connection in connections)
    assert len(find(query, SR, "STUDY")) == len(STUDIES)
    query.close()


def test_one_statement_answers_a_query_however_many_matches(small_archive: ArchiveIndex) -> None:
    statements: list[str] = []

    def connect() -> sqlite3.Connection:
        connection = small_archive.connect_reader()
        connection.set_trace_callback(statements.append)
        return connection

    query = ArchiveQuery(connect)
    asked = dict.fromkeys(
        ("NumberOfStudyRelatedInstances", "ModalitiesInStudy", "NumberOfPatientRelatedSeries"), ""
    )
    assert len(find(query, SR, "STUDY", **asked)) == len(STUDIES)
    assert len(statements) == 1
    query.close()


# The oracle: random identifiers against a plain re-implementation over every entity.

LEVEL_NAMES = ("PATIENT", "STUDY", "SERIES", "IMAGE")
INSTANCE_KEYS = ("SOPInstanceUID", "SOPClassUID", "InstanceNumber", "AvailableTransferSyntaxUID")
LEVEL_KEYS = (PATIENT_KEYWORDS, STUDY_KEYWORDS, SERIES_KEYWORDS, INSTANCE_KEYS)
KEY_LEVEL = {keyword: level for level, keys in enumerate(LEVEL_KEYS) for keyword in keys}
STUDY_LISTS = ("ModalitiesInStudy", "SOPClassesInStudy")
COUNTS = (
    "NumberOfPatientRelatedStudies",
    "NumberOfPatientRelatedSeries",
    "NumberOfPatientRelatedInstances",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
    "NumberOfSeriesRelatedInstances",
)
UNIQUE = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
PARENT = {
    (PR, 1): "PatientID",
    (PR, 2): "StudyInstanceUID",
    (PR, 3): "SeriesInstanceUID",
    (SR, 2): "StudyInstanceUID",
    (SR, 3): "SeriesInstanceUID",
}

POOLS: dict[str, list[object]] = {
    "PatientID": ["P1", "p1", "P[2]", "P*3", "P 4", "P1"],
    "IssuerOfPatientID": [None, None, "HOSP", None, "H]", "OTHER"],
    "PatientName": [
        "DOE^JOHN=ドウ^ジョン",
        "Doe^Jane^^",
        "Müller^Jürgen",
        "[x]^y*z",
        None,
        "=山田^太郎=やまだ^たろう",
    ],
    "PatientBirthDate": ["19700101", None, "19851231", "20000229", "19700102", None],
    "PatientSex": ["M", "F", None, "O", "F", "M"],
    "StudyDate": ["20240105", "20240107", "20231231", "20240110", None, "20240105", "19991231"],
    "StudyTime": ["1030", "103000.5", "10", "235959.999999", None, "08:00:00", "0800", "000000"],
    "AccessionNumber": ["A1", "a1", "A[2]", None, "A*3", "ACC-4", "A1 B"],
    "StudyID": ["1", "2", None, "10"],
    "StudyDescription": ["Chest CT", "chest ct", "Head", None, "Knee [L]", "50%_off", "Hé"],
    "ReferringPhysicianName": ["Watson^Amy", None, "watson^amy=ワトソン", "Holmes^", "\uff37atson"],
    "Modality": ["CT", "MR", "US", None, "PT", "CT", "SR"],
    "SeriesNumber": [1, 2, None, 10, -3],
    "SeriesDescription": ["Axial", "axial 2mm", None, "Sag*", "T2?"],
    "BodyPartExamined": ["CHEST", "HEAD", None, "CHEST"],
    "SeriesDate": ["20240105", None, "20240106", "20231231"],
    "SeriesTime": ["103100", "09", None, "2359", "120000.000001"],
    "SOPClassUID": [CT, MR, US, CT],
    "InstanceNumber": [1, 2, None, 3, 12],
    "TransferSyntaxUID": [EXPLICIT_LE, IMPLICIT_LE, "1.2.840.10008.1.2.4.50", None],
}


def pooled(keyword: str, number: int) -> object:
    pool = POOLS[keyword]
    return pool[number % len(pool)]


def oracle_corpus() -> list[dict[str, object]]:
    """Six patients, twelve studies, twenty-four series, forty-eight instances; attributes
    drawn from the pools with different strides so that they combine in many ways."""
    rows = []
    for p in range(6):
        patient = {key: pooled(key, p) for key in PATIENT_KEYWORDS}
        for s in range(2):
            study_number = p * 2 + s
            study = {key: pooled(key, study_number * 3 + s) for key in STUDY_KEYWORDS[1:]}
            study["StudyInstanceUID"] = f"2.{study_number}"
            for e in range(2):
                series_number = study_number * 2 + e
                series = {key: pooled(key, series_number * 5 + p) for key in SERIES_KEYWORDS[1:]}
                series["SeriesInstanceUID"] = f"2.{study_number}.{e}"
                for n in range(2):
                    instance_number = series_number * 2 + n
                    rows.append(
                        {
                            **patient,
                            **study,
                            **series,
                            "SOPInstanceUID": f"2.{study_number}.{e}.{n}",
                            "SOPClassUID": pooled("SOPClassUID", instance_number + p),
                            "InstanceNumber": pooled("InstanceNumber", instance_number),
                            "AvailableTransferSyntaxUID": pooled(
                                "TransferSyntaxUID", instance_number // 3
                            ),
                        }
                    )
    return rows


CORPUS = oracle_corpus()


@pytest.fixture(scope="module")
def oracle_index(opened: Callable[[str], ArchiveIndex]) -> ArchiveIndex:
    index = opened("oracle")
    for number, row in enumerate(CORPUS):
        keys = {
            key: value
            for key, value in row.items()
            if value is not None and key != "AvailableTransferSyntaxUID"
        }
        ds = identifier(SpecificCharacterSet="ISO_IR 192", **keys)
        index.add(
            record_from_dataset(
                ds,
                path=f"{number}.dcm",
                size=1,
                calling_ae_title="MODALITY",
                transfer_syntax_uid=row["AvailableTransferSyntaxUID"],
            )
        )
    return index


@pytest.fixture(scope="module")
def oracle_engines(oracle_index: ArchiveIndex) -> Iterator[dict[bool, ArchiveQuery]]:
    index = oracle_index
    # Two matches a page, each page read by a statement of its own that resumes after the
    # last match (its snapshot expires at once): the oracle judges the resumed reads too.
    engines = {
        fold: ArchiveQuery(
            index.connect_reader, case_insensitive_names=fold, page_rows=2, snapshot_seconds=0
        )
        for fold in (False, True)
    }
    yield engines
    for engine_ in engines.values():
        engine_.close()


class Invalid(Exception):
    """The oracle's verdict that an identifier does not fit."""


def fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text.casefold())


def wildcard_matches(stored: str, value: str, folding: bool = False) -> bool:
    pieces = []
    for piece in re.split(r"([*?])", value):
        if piece == "*":
            pieces.append(".*")
        elif piece == "?":
            pieces.append(".")
        else:
            pieces.append(re.escape(fold(piece) if folding else piece))
    return re.fullmatch("".join(pieces), stored, re.DOTALL) is not None


def text_matches(stored: object, value: str) -> bool:
    if stored in (None, ""):
        return False
    if "*" in value or "?" in value:
        return wildcard_matches(str(stored), value)
    return str(stored) == value


def name_matches(stored: object, value: str, folding: bool) -> bool:
    groups = value.split("=")
    if len(groups) > 3:
        raise Invalid("groups")
    stored_groups = str(stored).split("=") if stored is not None else []
    for number, group in enumerate(groups):
        group = group.strip(" ").rstrip("^")
        if group.strip("*") == "":
            continue
        if stored is None:
            return False
        name = stored_groups[number] if number < len(stored_groups) else ""
        name = name.rstrip("^ ")
        if folding:
            name = fold(name)
        if not wildcard_matches(name, group, folding):
            return False
    return True


def oracle_date(text: str) -> str:
    if not re.fullmatch(r"\d{8}", text):
        raise Invalid(text)
    try:
        date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        raise Invalid(text) from None
    return text


def oracle_range(value: str, parse: Callable[[str, bool], object]) -> tuple[object, object]:
    if "*" in value or "?" in value:
        raise Invalid(value)
    if "-" in value:
        first, last = (part.strip(" ") for part in value.split("-", 1))
        if not first and not last:
            raise Invalid(value)
    else:
        first = last = value
    return (parse(first, False) if first else None, parse(last, True) if last else None)


def oracle_time(text: str, last: bool) -> tuple[int, int, int, int]:
    """A query time as (hours, minutes, seconds, microseconds), partial parts filled in."""
    match = re.fullmatch(r"(\d\d)(?::?(\d\d)(?::?(\d\d)(?:\.(\d{1,6}))?)?)?", text)
    if match is None:
        raise Invalid(text)
    hours, minutes, seconds, fraction = match.groups()
    if int(hours) > 23 or int(minutes or 0) > 59 or int(seconds or 0) > 60:
        raise Invalid(text)
    return (
        int(hours),
        int(minutes) if minutes else (59 if last else 0),
        int(seconds) if seconds else (59 if last else 0),
        int((fraction or "").ljust(6, "9" if last else "0")),
    )


def stored_time(text: object) -> tuple[int, int, int, int] | None:
    if text is None:
        return None
    digits = str(text).replace(":", "")
    whole, _, fraction = digits.partition(".")
    return (
        int(whole[:2]),
        int(whole[2:4] or 0),
        int(whole[4:6] or 0),
        int(fraction[:6].ljust(6, "0")),
    )


def in_range(point: object, bounds: tuple[object, object]) -> bool:
    first, last = bounds
    if point is None:
        return False
    return (first is None or first <= point) and (last is None or point <= last)


def value_matches(keyword: str, stored: object, value: str, folding: bool) -> bool:
    vr = dictionary_VR(keyword)
    if vr == "PN":
        return name_matches(stored, value, folding)
    if vr in ("UI", "IS") and ("*" in value or "?" in value):
        raise Invalid(value)
    if vr == "UI":
        return stored == value
    if vr == "IS":
        if not re.fullmatch(r"[+-]?\d+", value):
            raise Invalid(value)
        return stored == int(value)
    if vr == "DA":
        return in_range(stored, oracle_range(value, lambda text, _: oracle_date(text)))
    if vr == "TM":
        return in_range(stored_time(stored), oracle_range(value, oracle_time))
    return text_matches(stored, value)


def key_values(ds: Dataset, keyword: str) -> list[str]:
    try:
        value = ds[keyword].value
    except (ValueError, TypeError) as error:
        raise Invalid(str(error)) from None
    items = value if isinstance(value, MultiValue | list) else [value]
    texts = [
        part.strip(" ") for item in items if item is not None for part in str(item).split("\\")
    ]
    return [text for text in texts if text]


def is_universal(values: list[str]) -> bool:
    return not values or any(value.strip("*") == "" for value in values)


@dataclass(frozen=True)
class Entity:
    unique: tuple[object, ...]
    values: dict[str, object]
    modalities: frozenset[str]
    sop_classes: frozenset[str]


def unique_of(values: dict[str, object] | Dataset, level: int) -> tuple[object, ...]:
    if level == 0:
        return (values.get("PatientID"), values.get("IssuerOfPatientID") or None)
    return (values.get(UNIQUE[level]),)


@cache
def entities(level: int) -> dict[tuple[object, ...], Entity]:
    """Every entity of a level, with its own values and those of the levels above."""
    found_: dict[tuple[object, ...], Entity] = {}
    for row in CORPUS:
        unique = unique_of(row, level)
        if unique in found_:
            continue
        study = [other for other in CORPUS if other["StudyInstanceUID"] == row["StudyInstanceUID"]]
        found_[unique] = Entity(
            unique,
            {key: row[key] for key, key_level in KEY_LEVEL.items() if key_level <= level},
            frozenset(str(other["Modality"]) for other in study if other["Modality"]),
            frozenset(str(other["SOPClassUID"]) for other in study),
        )
    return found_


def oracle(
    ds: Dataset, model: str, level: int, folding: bool, relational: bool = False
) -> list[tuple[object, ...]]:
    """The unique keys of the entities ``ds`` matches; raises ``Invalid`` if it does not fit.
    A relational query needs no unique key of a higher level."""
    if model == SR and level == 0:
        raise Invalid("no PATIENT level in Study Root")
    keys = {
        keyword: key_values(ds, keyword)
        for keyword in ds.dir()
        if KEY_LEVEL.get(keyword, 99) <= level or (keyword in STUDY_LISTS and level >= 1)
    }
    parent = PARENT.get((model, level))
    if parent is not None and not relational:
        values = keys.get(parent, [])
        if len(values) != 1 or is_universal(values) or "*" in values[0] or "?" in values[0]:
            raise Invalid(parent)
    for keyword, values in keys.items():
        if not is_universal(values):
            for value in values:
                value_matches(STUDY_LIST_COLUMNS.get(keyword, keyword), None, value, folding)
    combined = {}
    for date_key, time_key in (("StudyDate", "StudyTime"), ("SeriesDate", "SeriesTime")):
        dates, times = keys.get(date_key, []), keys.get(time_key, [])
        if len(dates) == len(times) == 1 and "-" in dates[0] and "-" in times[0]:
            combined[date_key, time_key] = (
                oracle_range(dates[0], lambda text, _: oracle_date(text)),
                oracle_range(times[0], oracle_time),
            )
    paired = {key for pair in combined for key in pair}
    return [
        entity.unique
        for entity in entities(level).values()
        if all(matches_combined(entity, pair, bounds) for pair, bounds in combined.items())
        and all(
            matches_key(entity, keyword, values, folding)
            for keyword, values in keys.items()
            if keyword not in paired
        )
    ]


STUDY_LIST_COLUMNS = {"ModalitiesInStudy": "Modality", "SOPClassesInStudy": "SOPClassUID"}


def matches_combined(entity: Entity, pair: tuple[str, str], bounds: tuple) -> bool:
    """Combined date-time matching; a date without a time is its whole day."""
    (first_date, last_date), (first_time, last_time) = bounds
    day = entity.values[pair[0]]
    if day is None:
        return False
    point = stored_time(entity.values[pair[1]])
    earliest, latest = (0, 0, 0, 0), (23, 59, 59, 999999)
    if first_date is not None and (day, point or latest) < (first_date, first_time or earliest):
        return False
    return last_date is None or (day, point or earliest) <= (last_date, last_time or latest)


def matches_key(entity: Entity, keyword: str, values: list[str], folding: bool) -> bool:
    if is_universal(values):
        return True
    if keyword in STUDY_LIST_COLUMNS:
        column = STUDY_LIST_COLUMNS[keyword]
        listed = entity.modalities if keyword == "ModalitiesInStudy" else entity.sop_classes
        return any(
            value_matches(column, item, value, folding) for value in values for item in listed
        )
    return any(value_matches(keyword, entity.values[keyword], value, folding) for value in values)


def stored_texts(keyword: str) -> list[str]:
    column = STUDY_LIST_COLUMNS.get(keyword, keyword)
    return sorted({str(row[column]) for row in CORPUS if row.get(column) is not None})


ALPHABET = "aADdoe^*?[]=-.0123 üÉ山:%_"
DATES = st.dates(date(1999, 12, 1), date(2024, 2, 1)).map(lambda day: day.strftime("%Y%m%d"))


@st.composite
def times(draw: st.DrawFn) -> str:
    """A TM value, partial or not, with or without colons; a fraction only after seconds."""
    hours = draw(st.integers(0, 23))
    rest = draw(st.sampled_from(["", "00", "30", "3000", "5959", ":30", ":30:00"]))
    with_seconds = len(rest.replace(":", "")) == 4
    fraction = draw(st.sampled_from(["", ".5", ".000001", ".999999"])) if with_seconds else ""
    return f"{hours:02d}{rest}{fraction}"


def ranges(bounds: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    side = st.one_of(st.just(""), bounds)
    return st.tuples(side, side).map(lambda pair: f"{pair[0]}-{pair[1]}")


@st.composite
def wildcarded(draw: st.DrawFn, text: str) -> str:
    """A stored value made into a pattern: a character replaced, or a tail cut off."""
    position = draw(st.integers(0, len(text)))
    how = draw(st.sampled_from(["?", "*", "tail", "case"]))
    if how == "tail":
        return text[:position] + "*"
    if how == "case":
        return text.swapcase()
    return text[:position] + how + text[position + 1 :]


def one_value(keyword: str) -> st.SearchStrategy[str]:
    vr = dictionary_VR(keyword)
    stored = stored_texts(keyword)
    choices = [st.just(""), st.just("*"), st.text(ALPHABET, max_size=6)]
    if stored:
        choices += [st.sampled_from(stored)] * 3 + [st.sampled_from(stored).flatmap(wildcarded)]
    if vr == "DA":
        choices += [DATES, ranges(DATES), ranges(st.sampled_from(stored))]
    if vr == "TM":
        choices += [times(), ranges(times()), ranges(st.sampled_from(stored))]
    if vr == "IS":
        choices.append(st.integers(-5, 15).map(str))
    return st.one_of(choices)


def key_value(keyword: str) -> st.SearchStrategy[str]:
    single = one_value(keyword)
    return st.one_of(single, st.lists(single, min_size=2, max_size=3).map("\\".join))


QUERY_KEYS = sorted({*KEY_LEVEL, *STUDY_LISTS, *COUNTS, "ReferencedStudySequence", "PatientWeight"})
MODEL_LEVELS = [(PR, 0), (PR, 1), (PR, 2), (PR, 3), (SR, 1), (SR, 2), (SR, 3), (SR, 0)]


@st.composite
def identifiers(draw: st.DrawFn) -> tuple[str, int, Dataset]:
    """A model, a level and an identifier as the service hands it on, values unchecked."""
    model, level = draw(st.sampled_from(MODEL_LEVELS))
    chosen = draw(st.sets(st.sampled_from(QUERY_KEYS), max_size=6))
    keys = {
        keyword: draw(key_value(keyword))
        for keyword in chosen
        if keyword in KEY_LEVEL or keyword in STUDY_LISTS
    }
    parent = PARENT.get((model, level))
    if parent is not None and draw(st.integers(0, 9)) > 0:
        keys[parent] = draw(st.sampled_from(stored_texts(parent)))
    ds = Dataset()
    ds.add(element("SpecificCharacterSet", "ISO_IR 192"))
    for keyword, value in keys.items():
        # Values travel as text (the reader applies the dictionary VR, the identifier being
        # implicit VR), so that malformed and non-ASCII ones reach the engine too.
        ds.add(element(keyword, value, vr="PN" if dictionary_VR(keyword) == "PN" else "LO"))
    for keyword in chosen & {*COUNTS, "PatientWeight"}:
        ds.add(element(keyword, draw(st.sampled_from(["", "7", "x"])), vr="LO"))
    if "ReferencedStudySequence" in chosen:
        ds.ReferencedStudySequence = Sequence([identifier(ReferencedSOPInstanceUID="9.9")])
    return model, level, decode_dataset(encode_dataset(ds, IMPLICIT_LE), IMPLICIT_LE)


def held_values(match: Dataset | Entity, level: int) -> dict[str, str]:
    keys = [key for key, key_level in KEY_LEVEL.items() if key_level <= level]
    if isinstance(match, Entity):
        present = {key: match.values[key] for key in keys}
    else:
        present = {key: match[key].value for key in keys if key in match}
    return {key: str(value) for key, value in present.items() if value not in (None, "")}


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(max_examples=400, deadline=None)
@given(query=identifiers(), folding=st.booleans(), relational=st.booleans())
def test_random_identifiers_match_exactly_what_the_oracle_matches(
    oracle_engines: dict[bool, ArchiveQuery],
    query: tuple[str, int, Dataset],
    folding: bool,
    relational: bool,
) -> None:
    model, level, ds = query
    try:
        expected: list[tuple[object, ...]] | None = oracle(ds, model, level, folding, relational)
    except Invalid:
        expected = None
    try:
        matches = find(
            oracle_engines[folding], model, LEVEL_NAMES[level], ds, relational=relational
        )
    except QueryError:
        assert expected is None, "the engine refused an identifier that fits"
        return
    assert expected is not None, "the engine answered an identifier that does not fit"
    assert Counter(unique_of(match, level) for match in matches) == Counter(expected)
    for match in matches:
        entity = entities(level)[unique_of(match, level)]
        assert held_values(match, level) == held_values(entity, level)


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(max_examples=200, deadline=None)
@given(query=identifiers(), relational=st.booleans())
def test_pages_read_by_resumed_statements_come_in_the_order_of_one_read(
    oracle_index: ArchiveIndex, query: tuple[str, int, Dataset], relational: bool
) -> None:
    model, level, ds = query
    whole = ArchiveQuery(oracle_index.connect_reader, page_rows=len(CORPUS) + 1)
    resumed = ArchiveQuery(oracle_index.connect_reader, page_rows=1, snapshot_seconds=0)
    try:
        expected = find(whole, model, LEVEL_NAMES[level], ds, relational=relational)
    except QueryError:
        with pytest.raises(QueryError):
            find(resumed, model, LEVEL_NAMES[level], ds, relational=relational)
        return
    finally:
        whole.close()
    try:
        matches = find(resumed, model, LEVEL_NAMES[level], ds, relational=relational)
    finally:
        resumed.close()
    assert matches == expected


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(max_examples=150, deadline=None)
@given(
    query=identifiers(),
    relational=st.booleans(),
    syntax=st.sampled_from([IMPLICIT_LE, EXPLICIT_LE, EXPLICIT_VR_BIG_ENDIAN]),
    charset=st.sampled_from([None, "ISO_IR 100", "ISO_IR 192", ["", "ISO 2022 IR 87"]]),
)
def test_pages_read_with_the_find_service_s_encoder_hold_its_answers_to_each_match(
    oracle_index: ArchiveIndex,
    query: tuple[str, int, Dataset],
    relational: bool,
    syntax: str,
    charset: str | list[str] | None,
) -> None:
    """The matches the archive hands over encoded (``IEncodedMatches``) are the answers the
    service makes of its Dataset matches: on a real index, for generated queries."""
    model, level, ds = query
    if charset is None:
        del ds.SpecificCharacterSet
    else:
        ds.SpecificCharacterSet = charset
    find_query = FindQuery(
        ds, model, LEVEL_NAMES[level], "FINDSCU", "DICOMD", "127.0.0.1", relational=relational
    )
    engine = ArchiveQuery(oracle_index.connect_reader, page_rows=2)
    try:
        datasets = [match for page in iter(engine.pages(find_query).page, []) for match in page]
    except QueryError:
        engine.close()
        return
    form = AnswerForm(find_query, "DICOMD", syntax)
    try:
        encoded_pages = engine.pages(find_query)
        encoded = [match for page in iter(lambda: encoded_pages.page(form), []) for match in page]
    finally:
        engine.close()
    answers = [form.encode_match(match) for match in datasets]
    assert [m if isinstance(m, bytes) else form.encode_match(m) for m in encoded] == answers
    if form.encodes_values:
        assert all(isinstance(match, bytes) for match in encoded)


# Timing: study queries over 100 000 instances.


@pytest.fixture(scope="module")
def large_archive(opened: Callable[[str], ArchiveIndex]) -> ArchiveIndex:
    index = opened("large")
    LargeIndex().write(index)
    return index


LARGE_STUDY_QUERIES = [
    ({"PatientID": "PID00042"}, 5),
    ({"PatientName": "DOE*"}, 125),
    ({"StudyDate": "20220301-20220331"}, 31),
    ({"StudyDate": "20220301-20220331", "StudyTime": "0900-1500"}, 31),
    ({"StudyDate": "20220301-20220331", "ModalitiesInStudy": "PT"}, 31),
]
"""Study queries over `LargeIndex()` and how many studies each matches."""
LARGE_STUDY_RETURNED = (
    "PatientName",
    "StudyDescription",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
    "ModalitiesInStudy",
)
"""The return keys of those queries: counts and lists computed for each match."""


def timed_study_queries(
    query: ArchiveQuery, keys: dict[str, str], runs: int = 21
) -> tuple[list[Dataset], float]:
    """The matches of a `LARGE_STUDY_QUERIES` query, and its median time over ``runs``."""
    request = identifier(**(dict.fromkeys(LARGE_STUDY_RETURNED, "") | keys))
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        answered = find(query, SR, "STUDY", request)
        timings.append(time.perf_counter() - started)
    return answered, statistics.median(timings)


@pytest.mark.parametrize(("keys", "matches"), LARGE_STUDY_QUERIES)
def test_study_queries_over_100_000_instances_walk_indexes_and_take_under_20_ms(
    large_archive: ArchiveIndex, keys: dict[str, str], matches: int
) -> None:
    statements: list[str] = []

    def connect() -> sqlite3.Connection:
        connection = large_archive.connect_reader()
        connection.set_trace_callback(statements.append)
        return connection

    query = ArchiveQuery(connect)
    answered, median = timed_study_queries(query, keys)
    query.close()
    reader = large_archive.connect_reader()
    plan = reader.execute("EXPLAIN QUERY PLAN " + statements[0]).fetchall()
    reader.close()
    assert len(answered) == matches
    assert len(statements) == 21
    scans = [row[3] for row in plan if row[3].startswith("SCAN") and "subquery" not in row[3]]
    assert scans == []
    assert median < 0.020

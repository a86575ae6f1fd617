"""The 2024d data dictionary: after `import dicomd`, pydicom, dump and the walker know its
elements and UIDs; a pydicom that carries 2024d is left alone; the script that writes the
module diffs two editions correctly."""

from __future__ import annotations

import importlib
import struct
import sys
from importlib.machinery import SourceFileLoader
from importlib.util import module_from_spec, spec_from_loader
from io import BytesIO
from pathlib import Path
from types import ModuleType

import pydicom
import pytest
from pydicom import _uid_dict, _version
from pydicom.datadict import (
    DicomDictionary,
    dictionary_description,
    dictionary_is_retired,
    dictionary_VR,
    keyword_dict,
    keyword_for_tag,
    tag_for_keyword,
)
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID

from dicomd import dictionary_2024d
from dicomd.dictionary import RegisterAfterLoading, register, register_with_pydicom
from dicomd.dimse.walker import DataSetWalker, IncompleteDataSet
from dicomd.dump import dump_file
from tests.support.dump_sample import file_meta

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
THERMOGRAPHY_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.601.3"

# -- elements and UIDs, after import dicomd ------------------------------------


def test_a_plain_element_resolves_by_tag_and_keyword() -> None:
    assert tag_for_keyword("AcquisitionFrameRate") == 0x00146002
    assert keyword_for_tag(0x00146002) == "AcquisitionFrameRate"
    assert dictionary_VR(0x00146002) == "DS"
    assert dictionary_description(0x00146002) == "Acquisition Frame Rate"


def test_a_sequence_resolves_by_tag_and_keyword() -> None:
    assert tag_for_keyword("ReferencedSegmentationSequence") == 0x0008114C
    assert keyword_for_tag(0x0008114C) == "ReferencedSegmentationSequence"
    assert dictionary_VR(0x0008114C) == "SQ"

    dataset = Dataset()
    dataset.ReferencedSegmentationSequence = Sequence([Dataset()])
    assert dataset[0x0008114C].VR == "SQ"


def test_a_renamed_element_resolves_by_its_new_keyword() -> None:
    assert tag_for_keyword("SummarizedFilterLookupTableSequence") == 0x003A0320
    assert keyword_for_tag(0x003A0320) == "SummarizedFilterLookupTableSequence"


def test_retired_entries_resolve_by_tag() -> None:
    assert dictionary_is_retired(0x300A0135)  # added to 2024d already retired
    assert dictionary_VR(0x300A0135) == "OB"
    assert dictionary_description(0x00180061) == "Retired-blank"  # was unnamed


def test_every_element_of_the_module_is_in_pydicom() -> None:
    assert {tag: DicomDictionary[tag] for tag in dictionary_2024d.ELEMENTS} == (
        dictionary_2024d.ELEMENTS
    )


def test_new_uids_have_names() -> None:
    assert UID(THERMOGRAPHY_IMAGE_STORAGE).name == "Thermography Image Storage"
    assert UID("1.2.840.10008.5.1.4.1.1.66.7").keyword == "LabelMapSegmentationStorage"
    assert UID("1.2.840.10008.1.2.4.110").is_transfer_syntax


# -- dump and walker ---------------------------------------------------------


def test_dump_names_new_elements_of_an_implicit_vr_file(tmp_path: Path) -> None:
    settings = Dataset()
    settings.AcquisitionFrameRate = "30"
    settings.ThermalTechnique = "ACTIVE"
    dataset = Dataset()
    dataset.file_meta = file_meta(IMPLICIT_VR_LITTLE_ENDIAN)
    dataset.SOPClassUID = THERMOGRAPHY_IMAGE_STORAGE
    dataset.SOPInstanceUID = "1.2.3.4.5"
    dataset.ThermalCameraSettingsSequence = Sequence([settings])
    path = tmp_path / "thermal.dcm"
    dataset.save_as(path, enforce_file_format=True)

    lines = dump_file(path)

    assert lines[lines.index("# Data Set") + 1 :] == [
        "(0008,0016) UI SOPClassUID  1.2.840.10008.5.1.4.1.1.601.3 (Thermography Image Storage)",
        "(0008,0018) UI SOPInstanceUID  1.2.3.4.5",
        "(0014,6001) SQ ThermalCameraSettingsSequence  <1 item>",
        "  item 1",
        "    (0014,6002) DS AcquisitionFrameRate  30",
        "    (0014,601C) CS ThermalTechnique  ACTIVE",
    ]


def implicit(tag: int, value: bytes) -> bytes:
    """One implicit VR little endian element (or item) of defined length."""
    return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(value)) + value


def thermal_data_set(first: int, second: int) -> bytes:
    """A data set whose Thermal Camera Settings Sequence, of defined length, holds one
    item of defined length with the elements ``first`` and ``second`` in that order."""
    item = implicit(first, b"30") + implicit(second, b"1 ")
    return implicit(0x00100010, b"DOE^JOHN") + implicit(0x00146001, implicit(0xFFFEE000, item))


def walk(data: bytes) -> None:
    walker = DataSetWalker(implicit_vr=True, little_endian=True)
    walker.feed(data)
    walker.end()


def test_the_walker_walks_into_a_new_sequence_in_implicit_vr() -> None:
    data = thermal_data_set(0x00146002, 0x00146003)

    walk(data)
    dataset = read_dataset(BytesIO(data), is_implicit_VR=True, is_little_endian=True)
    assert dataset.ThermalCameraSettingsSequence[0].AcquisitionFrameRate == 30


def test_the_walker_checks_the_items_of_a_new_sequence() -> None:
    """Out of order inside the item: only a walker that knows (0014,6001) is a sequence
    looks there, since its defined length would let it skip the value whole."""
    with pytest.raises(IncompleteDataSet, match=r"\(0014,6002\) comes after \(0014,6003\)"):
        walk(thermal_data_set(0x00146003, 0x00146002))


# -- registering -----------------------------------------------------------------

SAMPLE_TAGS = (0x0008114C, 0x00146002, 0x003A0320)
SAMPLE_UID = THERMOGRAPHY_IMAGE_STORAGE


def forget_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    """Take a few 2024d entries out of pydicom's dictionaries for this test only."""
    for tag in SAMPLE_TAGS:
        monkeypatch.delitem(DicomDictionary, tag)
        monkeypatch.delitem(keyword_dict, dictionary_2024d.ELEMENTS[tag][4])
    monkeypatch.delitem(_uid_dict.UID_dictionary, SAMPLE_UID)


def snapshot() -> tuple[dict, dict, dict]:
    return dict(DicomDictionary), dict(keyword_dict), dict(_uid_dict.UID_dictionary)


@pytest.mark.parametrize("edition", ["2024d", "2025b"])
def test_a_pydicom_with_2024d_or_later_is_left_alone(
    monkeypatch: pytest.MonkeyPatch, edition: str
) -> None:
    monkeypatch.setattr(_version, "__dicom_version__", edition)
    forget_samples(monkeypatch)
    before = snapshot()

    assert register() is False
    register_with_pydicom()

    assert snapshot() == before
    assert tag_for_keyword("AcquisitionFrameRate") is None


def test_an_older_pydicom_learns_2024d_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_version, "__dicom_version__", "2024c")
    forget_samples(monkeypatch)

    assert register() is True
    after_once = snapshot()
    assert register() is True
    assert snapshot() == after_once

    for tag in SAMPLE_TAGS:
        assert DicomDictionary[tag] == dictionary_2024d.ELEMENTS[tag]
        assert tag_for_keyword(dictionary_2024d.ELEMENTS[tag][4]) == tag
    assert UID(SAMPLE_UID).name == "Thermography Image Storage"


def test_registration_follows_the_first_import_of_pydicoms_dictionary(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What `import dicomd` arranges when pydicom is not loaded yet, replayed by loading
    pydicom.datadict afresh (put back afterwards)."""
    monkeypatch.setattr(_version, "__dicom_version__", "2024c")
    forget_samples(monkeypatch)
    loaded = pydicom.datadict
    monkeypatch.setattr(pydicom, "datadict", loaded)
    monkeypatch.delitem(sys.modules, "pydicom.datadict")
    finder = RegisterAfterLoading()
    monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])

    fresh = importlib.import_module("pydicom.datadict")

    assert fresh is not loaded
    assert fresh.tag_for_keyword("AcquisitionFrameRate") == 0x00146002
    assert fresh.DicomDictionary[0x0008114C] == dictionary_2024d.ELEMENTS[0x0008114C]
    assert finder not in sys.meta_path
    assert type(fresh.__loader__) is type(loaded.__loader__)


def test_the_module_says_what_it_carries_and_where_from() -> None:
    assert dictionary_2024d.EDITION == "2024d"
    assert dictionary_2024d.BASE_EDITION == "2024c"
    assert dictionary_2024d.SOURCE_REPOSITORY == "https://github.com/pydicom/pydicom"
    assert len(dictionary_2024d.SOURCE_COMMIT) == 40
    assert len(dictionary_2024d.UIDS) == 7


# -- scripts/dictionary ------------------------------------------------------------

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "dictionary"


@pytest.fixture(scope="module")
def script() -> ModuleType:
    loader = SourceFileLoader("dictionary_script", str(SCRIPT))
    spec = spec_from_loader(loader.name, loader)
    assert spec is not None
    module = module_from_spec(spec)
    sys.modules[loader.name] = module  # dataclasses look their module up while it runs
    try:
        loader.exec_module(module)
    finally:
        del sys.modules[loader.name]
    return module


OLD_ELEMENTS = {
    0x00100010: ("PN", "1", "Patient's Name", "", "PatientName"),
    0x003A0320: ("SQ", "1", "Summarized Filter", "", "SummarizedFilter"),
    0x00180061: ("DS", "1", "", "Retired", ""),
}
NEW_ELEMENTS = {
    **OLD_ELEMENTS,
    0x0008114C: (
        "SQ",
        "1",
        "Referenced Segmentation Sequence",
        "",
        "ReferencedSegmentationSequence",
    ),
    0x003A0320: ("SQ", "1", "Summarized Filter", "", "SummarizedFilterSequence"),
    0x00180061: ("DS", "1", "Retired-blank", "Retired", ""),
}
REPEATERS = {"60xx0010": ("US", "1", "Overlay Rows", "", "OverlayRows")}
IMPLICIT = ("Implicit VR Little Endian", "Transfer Syntax", "", "", "ImplicitVRLittleEndian")
JPEG_XL = ("JPEG XL Lossless", "Transfer Syntax", "", "", "JPEGXLLossless")
OLD_UIDS = {"1.2.840.10008.1.2": IMPLICIT}
NEW_UIDS = {**OLD_UIDS, "1.2.840.10008.1.2.4.110": JPEG_XL}


def write_pydicom_files(
    folder: Path, edition: str, elements: dict, uids: dict, repeaters: dict = REPEATERS
) -> Path:
    """The three files as pydicom lays them out, with code around the data as in pydicom."""
    folder.mkdir()
    (folder / "_version.py").write_text(
        f'import re\n__version__ = "3.0.2"\nresult = re.match("x", __version__)\n'
        f'__dicom_version__: str = "{edition}"\n'
    )
    (folder / "_dicom_dict.py").write_text(
        f'"""Generated."""\nDicomDictionary: dict[int, tuple] = {elements!r}\n'
        f"RepeatersDictionary = {repeaters!r}\n"
    )
    (folder / "_uid_dict.py").write_text(f"UID_dictionary = {uids!r}\n")
    return folder


def run_generated(text: str) -> dict:
    namespace: dict = {}
    exec(compile(text, "generated", "exec"), namespace)
    return namespace


def test_the_script_writes_what_the_newer_edition_adds_and_changes(
    script: ModuleType, tmp_path: Path
) -> None:
    old = write_pydicom_files(tmp_path / "old", "2024c", OLD_ELEMENTS, OLD_UIDS)
    new = write_pydicom_files(tmp_path / "new", "2024d", NEW_ELEMENTS, NEW_UIDS)
    output = tmp_path / "dictionary_2024d.py"

    status = script.main(
        [str(new), "--old", str(old), "--repository", "https://example.org/pydicom",
         "--commit", "abc123", "--output", str(output)]
    )  # fmt: skip

    assert status == 0
    module = run_generated(output.read_text())
    assert module["ELEMENTS"] == {
        tag: NEW_ELEMENTS[tag] for tag in (0x0008114C, 0x00180061, 0x003A0320)
    }
    assert module["UIDS"] == {"1.2.840.10008.1.2.4.110": JPEG_XL}
    assert (module["EDITION"], module["BASE_EDITION"]) == ("2024d", "2024c")
    assert module["SOURCE_REPOSITORY"] == "https://example.org/pydicom"
    assert module["SOURCE_COMMIT"] == "abc123"
    assert "1 elements added, 2 changed, 1 UIDs" in module["__doc__"]


@pytest.mark.parametrize(
    ("old_elements", "new_elements", "new_repeaters", "new_edition", "reason"),
    [
        (NEW_ELEMENTS, OLD_ELEMENTS, REPEATERS, "2024d", "1 data elements removed"),
        (OLD_ELEMENTS, NEW_ELEMENTS, {}, "2024d", "repeater entries"),
        (OLD_ELEMENTS, NEW_ELEMENTS, REPEATERS, "2024c", "not newer than 2024c"),
    ],
    ids=["removed element", "changed repeater", "same edition"],
)
def test_the_script_refuses_what_registration_cannot_carry(
    script: ModuleType,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    old_elements: dict,
    new_elements: dict,
    new_repeaters: dict,
    new_edition: str,
    reason: str,
) -> None:
    old = write_pydicom_files(tmp_path / "old", "2024c", old_elements, OLD_UIDS)
    new = write_pydicom_files(tmp_path / "new", new_edition, new_elements, NEW_UIDS, new_repeaters)
    output = tmp_path / "out.py"

    status = script.main(
        [str(new), "--old", str(old), "--repository", "r", "--commit", "c",
         "--output", str(output)]
    )  # fmt: skip

    assert status == 1
    assert reason in capsys.readouterr().err
    assert not output.exists()


def test_the_script_names_a_file_without_the_dictionary(
    script: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = write_pydicom_files(tmp_path / "old", "2024c", OLD_ELEMENTS, OLD_UIDS)
    new = write_pydicom_files(tmp_path / "new", "2024d", NEW_ELEMENTS, NEW_UIDS)
    (new / "_uid_dict.py").write_text("UID_dictionary = dict(computed=True)\n")

    status = script.main(
        [str(new), "--old", str(old), "--repository", "r", "--commit", "c",
         "--output", str(tmp_path / "out.py")]
    )  # fmt: skip

    assert status == 1
    assert "_uid_dict.py assigns no literal UID_dictionary" in capsys.readouterr().err

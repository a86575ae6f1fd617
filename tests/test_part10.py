"""Reading the File Meta Information of Part 10 files to stream their data sets."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.data import get_testdata_file

from dicomd.part10 import Part10Error, read_header
from tests.support.testdata import part10_test_files

FILES = [str(p) for p in part10_test_files()]


def test_there_are_many_files_to_check() -> None:
    assert len(FILES) > 50


@pytest.mark.parametrize("name", FILES, ids=lambda n: Path(n).name)
def test_header_agrees_with_pydicom(name: str) -> None:
    header = read_header(name)
    ds = dcmread(name, stop_before_pixels=True)
    assert header.sop_class_uid == ds.file_meta.MediaStorageSOPClassUID
    assert header.sop_instance_uid == ds.file_meta.MediaStorageSOPInstanceUID
    assert header.transfer_syntax == ds.file_meta.TransferSyntaxUID
    size = Path(name).stat().st_size
    assert header.data_set_offset + header.data_set_length == size
    # The data set part starts right after the last group 0002 element.
    raw = Path(name).read_bytes()
    assert raw[header.data_set_offset : header.data_set_offset + 2] != b"\x02\x00"


def test_a_file_without_the_dicm_prefix_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plain.txt"
    path.write_bytes(b"hello" * 100)
    with pytest.raises(Part10Error, match="DICM"):
        read_header(path)


def test_missing_meta_elements_are_named(tmp_path: Path) -> None:
    path = tmp_path / "empty-meta.dcm"
    path.write_bytes(b"\x00" * 128 + b"DICM")
    with pytest.raises(Part10Error, match="Media Storage SOP Class UID"):
        read_header(path)


@settings(max_examples=300)
@given(tail=st.binary(max_size=400), cut=st.integers(0, 600))
def test_any_bytes_after_the_prefix_give_a_header_or_part10_error(
    tail: bytes, cut: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    base = Path(get_testdata_file("CT_small.dcm")).read_bytes()[: 132 + cut] + tail
    path = tmp_path_factory.mktemp("p10") / "f.dcm"
    path.write_bytes(base)
    try:
        header = read_header(path)
    except Part10Error:
        return
    assert 0 <= header.data_set_offset <= len(base)
    assert header.data_set_offset + header.data_set_length == len(base)

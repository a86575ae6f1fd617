"""Reading the File Meta Information of Part 10 files to stream their data sets."""

from __future__ import annotations

import io
import itertools
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.data import get_testdata_file

from dicomd.part10 import ForwardReader, Part10Error, inflated_pieces, read_header
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


def _deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-15)
    return compressor.compress(data) + compressor.flush()


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=20000), piece=st.integers(1, 5000))
def test_inflated_pieces_give_back_the_data_in_bounded_pieces(data: bytes, piece: int) -> None:
    compressed = io.BytesIO(_deflate(data) + b"\0")  # with the padding to even length
    pieces = list(inflated_pieces(compressed, len(compressed.getvalue()), piece))
    assert b"".join(pieces) == data
    assert all(0 < len(each) <= piece for each in pieces)


@settings(max_examples=100, deadline=None)
@given(data=st.binary(min_size=1, max_size=20000), cut=st.integers(1, 100))
def test_a_cut_deflate_stream_is_an_os_error(data: bytes, cut: int) -> None:
    stream = _deflate(data)
    cut = min(cut, len(stream))
    short = io.BytesIO(stream[:-cut])
    with pytest.raises(OSError, match=r"cut short|ends \d+ bytes early"):
        list(inflated_pieces(short, len(stream), 4096))


@settings(max_examples=100, deadline=None)
@given(
    data=st.binary(max_size=5000),
    sizes=st.lists(st.integers(1, 400), min_size=1, max_size=5),
    steps=st.lists(st.tuples(st.integers(0, 300), st.integers(0, 16)), max_size=60),
)
def test_a_forward_reader_reads_like_a_file(
    data: bytes, sizes: list[int], steps: list[tuple[int, int]]
) -> None:
    """Reads of any size, each followed by a step back of up to 16 bytes (what pydicom does
    after an element header), give what a file of the same bytes gives."""
    pieces, at = [], 0
    for size in itertools.cycle(sizes):
        if at >= len(data):
            break
        pieces.append(data[at : at + size])
        at += size
    reader = ForwardReader(iter(pieces), "test")
    file = io.BytesIO(data)
    for size, back in steps:
        assert reader.read(size) == file.read(size)
        back = min(back, file.tell())
        assert reader.seek(-back, 1) == file.seek(-back, 1)
        assert reader.tell() == file.tell()


def test_a_forward_reader_cannot_go_far_back_and_skips_without_keeping() -> None:
    reader = ForwardReader(iter([b"x" * 1000] * 1000), "test")
    reader.seek(900_000)
    assert reader.read(10) == b"x" * 10
    with pytest.raises(OSError, match="cannot seek back"):
        reader.seek(0)

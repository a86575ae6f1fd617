"""Reading the File Meta Information of Part 10 files to stream their data sets."""

from __future__ import annotations

import gc
import io
import itertools
import os
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.data import get_testdata_file

from dicomd.part10 import (
    PREAMBLE,
    ForwardReader,
    IncomingFile,
    Part10Error,
    SpareFiles,
    UnnamedFile,
    inflated_pieces,
    read_header,
)
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


def test_spares_are_made_without_a_name_and_named_while_their_data_set_is_written(
    tmp_path: Path,
) -> None:
    incoming = tmp_path / ".incoming"  # missing: the first fill makes it
    spares = SpareFiles(incoming, keep=2)
    spares.fill()
    assert len(spares) == 2
    assert list(incoming.iterdir()) == []  # spares have no name

    received = IncomingFile(incoming, b"meta", spares.take())
    received.write(b"first half ")
    assert not received.named and not received.path.exists()
    received.give_name()  # in a thread, as the data set arrives
    received.write(b"second half")
    received.finish()

    assert received.named and received.error is None
    assert list(incoming.iterdir()) == [received.path]
    assert received.path.read_bytes() == PREAMBLE + b"metafirst half second half"
    assert len(spares) == 1 and spares.wanted


def test_a_spare_left_before_its_name_leaves_nothing(tmp_path: Path) -> None:
    spares = SpareFiles(tmp_path, keep=1)
    spares.fill()
    received = IncomingFile(tmp_path, b"meta", spares.take())
    received.write(b"half an instance")
    received.discard()
    received.give_name()  # the name comes after: the file is gone
    assert received.error is None  # named through its own descriptor, then removed by its owner
    received.remove()
    assert list(tmp_path.iterdir()) == []


def test_without_unnamed_files_nothing_is_made_and_the_file_is_created_with_its_name(
    tmp_path: Path,
) -> None:
    spares = SpareFiles(tmp_path)
    spares.supported = False
    assert not spares.wanted
    assert spares.take() is None
    received = IncomingFile(tmp_path, b"meta", spares.take())
    assert received.named and received.path.exists()
    received.finish()


def test_a_fill_that_fails_leaves_the_supply_as_it_was(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    spares = SpareFiles(blocker / ".incoming")
    spares.fill()  # the folder cannot be made: the next instance meets the error itself
    assert len(spares) == 0


def test_spares_are_closed_when_their_supply_is_let_go(tmp_path: Path) -> None:
    def open_files() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = open_files()
    spares = SpareFiles(tmp_path, keep=3)
    spares.fill()
    assert open_files() == before + 6  # each spare and the descriptor that names it
    del spares
    gc.collect()
    assert open_files() == before


def test_a_spare_that_cannot_be_written_through_is_closed_and_answered(tmp_path: Path) -> None:
    not_a_file = os.open(tmp_path, os.O_RDONLY)  # a folder: no file object writes to it
    naming = os.dup(not_a_file)
    incoming = IncomingFile(tmp_path, b"", UnnamedFile(not_a_file, naming))
    assert isinstance(incoming.error, IsADirectoryError)
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(not_a_file)
    os.close(naming)

"""The data set walker: it accepts what pydicom writes, in any pieces, and nothing less."""

from __future__ import annotations

import itertools
import random
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import Dataset
from pydicom.dataelem import DataElement
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import dcmread, read_dataset
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from dicomd.archive.index import INDEXED_KEYWORDS
from dicomd.dimse.datasets import encoding
from dicomd.dimse.walker import (
    DataSetWalker,
    IncompleteDataSet,
    Inflater,
    InflationLimits,
)
from dicomd.part10 import read_header
from tests.support.testdata import part10_test_files

SYNTAXES = {"explicit little": (False, True), "implicit little": (True, True),
            "explicit big": (False, False)}  # fmt: skip


def encode(ds: Dataset, implicit_vr: bool, little_endian: bool) -> bytes:
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = implicit_vr, little_endian
    write_dataset(fp, ds)
    return fp.getvalue()


def walk(data: bytes, implicit_vr: bool, little_endian: bool, pieces: list[int] = ()) -> None:
    """Feed ``data`` cut at ``pieces`` (offsets), then end."""
    walker = DataSetWalker(implicit_vr, little_endian)
    cuts = sorted({0, *(p for p in pieces if 0 < p < len(data)), len(data)})
    for start, stop in itertools.pairwise(cuts):
        walker.feed(data[start:stop])
    walker.end()


texts = st.text(alphabet="ABCDEFGHIJ ^0123456789", max_size=20)


@st.composite
def datasets(draw: st.DrawFn, depth: int = 2) -> Dataset:
    """Small data sets of text, numbers, binary values and nested sequences."""
    ds = Dataset()
    ds.PatientName = draw(texts)
    if draw(st.booleans()):
        ds.PatientID = draw(texts)
    ds.Rows = draw(st.integers(0, 65535))
    if draw(st.booleans()):
        ds.add(DataElement(0x00091010, "LO", draw(texts)))  # private
    if draw(st.booleans()):
        ds.add(DataElement(0x00191002, "OB", draw(st.binary(max_size=64)) * 2))
    if depth and draw(st.booleans()):
        items = draw(st.lists(datasets(depth=depth - 1), max_size=3))
        ds.ReferencedImageSequence = Sequence(items)
    if draw(st.booleans()):
        ds.PixelData = draw(st.binary(max_size=300)) * 2
        ds["PixelData"].VR = "OW"
    return ds


@settings(max_examples=150, deadline=None)
@given(datasets(), st.sampled_from(list(SYNTAXES)), st.lists(st.integers(0, 3000), max_size=8))
def test_what_pydicom_writes_is_whole_in_any_pieces(
    ds: Dataset, syntax: str, pieces: list[int]
) -> None:
    implicit_vr, little_endian = SYNTAXES[syntax]
    walk(encode(ds, implicit_vr, little_endian), implicit_vr, little_endian, pieces)


@settings(max_examples=150, deadline=None)
@given(datasets(), st.sampled_from(list(SYNTAXES)), st.data())
def test_a_prefix_is_whole_only_when_it_ends_between_top_level_elements(
    ds: Dataset, syntax: str, data: st.DataObject
) -> None:
    implicit_vr, little_endian = SYNTAXES[syntax]
    encoded = encode(ds, implicit_vr, little_endian)
    boundaries, offset = {0}, 0
    for element in ds:
        single = Dataset()
        single.add(element)
        offset += len(encode(single, implicit_vr, little_endian))
        boundaries.add(offset)
    assert offset == len(encoded)
    cut = data.draw(st.integers(0, len(encoded) - 1))
    if cut in boundaries:
        walk(encoded[:cut], implicit_vr, little_endian)
    else:
        with pytest.raises(IncompleteDataSet):
            walk(encoded[:cut], implicit_vr, little_endian)


@settings(max_examples=60, deadline=None)
@given(datasets(), st.binary(min_size=1, max_size=7))
def test_stray_bytes_after_the_last_element_are_refused(ds: Dataset, stray: bytes) -> None:
    with pytest.raises(IncompleteDataSet):
        walk(encode(ds, False, True) + stray, False, True)


def ct_like() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.3.4"
    ds.PatientName = "Whole^Test"
    ds.Rows = ds.Columns = 10
    ds.PixelData = bytes(200)
    ds["PixelData"].VR = "OW"
    return ds


def explicit(ds: Dataset) -> bytes:
    return encode(ds, False, True)


def undefined_sequence_never_closed() -> bytes:
    ds = ct_like()
    del ds.PixelData
    ds.ContentSequence = Sequence([Dataset()])  # (0040,A730): the last element
    ds.ContentSequence[0].ReferencedSOPInstanceUID = "1.2.3"
    ds["ContentSequence"].is_undefined_length = True
    encoded = explicit(ds)
    assert encoded.endswith(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")
    return encoded[:-8]


ATTACKS = {
    "a truncated last element": lambda: explicit(ct_like())[:-3],
    "truncated pixel data": lambda: explicit(ct_like())[:-190],
    "3 stray bytes after the last element": lambda: explicit(ct_like()) + b"abc",
    "an undefined-length sequence never closed": undefined_sequence_never_closed,
    "a private OB claiming 0xFFFFFFF0 bytes": lambda: (
        explicit(ct_like()) + struct.pack("<HH2sxxL", 0x7FE1, 0x0010, b"OB", 0xFFFFFFF0) + b"tiny"
    ),
    "implicit-VR bytes on an explicit-VR context": lambda: encode(ct_like(), True, True),
}


@pytest.mark.parametrize("attack", ATTACKS.values(), ids=ATTACKS)
def test_each_broken_data_set_of_the_attacks_is_refused(attack) -> None:
    with pytest.raises(IncompleteDataSet):
        walk(attack(), False, True)


def deflated(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-15)
    return compressor.compress(data) + compressor.flush()


def inflate_walk(data: bytes, limits: InflationLimits, piece: int = 1000) -> None:
    inflater = Inflater(DataSetWalker(False, True), limits)
    for start in range(0, len(data), piece):
        inflater.feed(data[start : start + piece])
    inflater.end()


def test_a_deflated_data_set_is_walked_as_it_inflates() -> None:
    stream = deflated(explicit(ct_like()))
    inflate_walk(stream, InflationLimits())
    inflate_walk(stream + b"\0", InflationLimits())  # the padding to even length
    with pytest.raises(IncompleteDataSet, match="cut short"):
        inflate_walk(stream[:-4], InflationLimits())
    with pytest.raises(IncompleteDataSet, match="stray bytes after the deflate stream"):
        inflate_walk(stream + bytes(9), InflationLimits())


def test_a_deflate_bomb_is_refused_as_soon_as_it_outgrows_its_bounds() -> None:
    ds = ct_like()
    ds.PixelData = bytes(64 << 20)  # 64 MiB of zeros: a few dozen KiB deflated
    bomb = deflated(explicit(ds))
    assert len(bomb) < 128 << 10
    with pytest.raises(IncompleteDataSet, match="inflates more than 200 times"):
        inflate_walk(bomb, InflationLimits(max_length=1 << 30, max_ratio=200))
    with pytest.raises(IncompleteDataSet, match="inflates past 1048576 bytes"):
        inflate_walk(bomb, InflationLimits(max_length=1 << 20, max_ratio=100_000))


class CountingWalker(DataSetWalker):
    """A walker that also counts the bytes it was given."""

    def __init__(self) -> None:
        super().__init__(implicit_vr=False, little_endian=True)
        self.walked = 0

    def feed(self, data: bytes) -> None:
        self.walked += len(data)
        super().feed(data)


def test_a_bomb_in_one_piece_is_refused_after_a_step_or_two_of_inflating() -> None:
    """However much compressed data one PDU carries, the check comes every MiB inflated."""
    ds = ct_like()
    ds.PixelData = bytes(256 << 20)
    bomb = deflated(explicit(ds))
    walker = CountingWalker()
    inflater = Inflater(walker, InflationLimits(max_length=1 << 30, max_ratio=200))
    with pytest.raises(IncompleteDataSet, match="200 times"):
        inflater.feed(bomb)
    assert walker.walked <= 2 << 20


def test_seeded_mutations_only_ever_raise_incomplete_data_set() -> None:
    """A structural fuzzer: flipped, dropped and repeated bytes of real data sets make
    the walker refuse or accept, never fail otherwise."""
    generator = random.Random(20261129)
    bases = [explicit(ct_like()), encode(ct_like(), True, True), encode(ct_like(), False, False)]
    for case in range(400):
        base = bytearray(generator.choice(bases))
        for _ in range(generator.randint(1, 4)):
            at = generator.randrange(len(base))
            action = generator.randrange(3)
            if action == 0:
                base[at] = generator.randrange(256)
            elif action == 1:
                del base[at : at + generator.randint(1, 8)]
            else:
                base[at:at] = base[at : at + generator.randint(1, 8)]
        implicit_vr, little_endian = generator.choice(list(SYNTAXES.values()))
        try:
            walk(bytes(base), implicit_vr, little_endian, [generator.randrange(len(base) + 1)])
        except IncompleteDataSet:
            pass
        except Exception as error:  # pragma: no cover - the failure message is the point
            pytest.fail(f"case {case}: {type(error).__name__}: {error}")


# -- collecting the attributes the archive indexes ---------------------------------------------

WANTED_KEYWORDS = ("SpecificCharacterSet", "PatientName", "PatientID", "Rows", "StudyDate")
WANTED = frozenset(int(Tag(keyword)) for keyword in WANTED_KEYWORDS)
names = st.text(alphabet="AÉßЖ^ 0123", max_size=20)


@st.composite
def indexed_datasets(draw: st.DrawFn) -> Dataset:
    """Data sets whose wanted attributes may be absent, empty or in another character set,
    among sequences (whose items hold the same keywords, not to be collected) and private
    elements."""
    ds = draw(datasets())
    ds.SpecificCharacterSet = draw(st.sampled_from(["ISO_IR 192", "ISO_IR 100", ""]))
    if ds.SpecificCharacterSet == "ISO_IR 100":
        ds.PatientName = draw(st.text(alphabet="AÉß^ 0123", max_size=20))
    elif ds.SpecificCharacterSet == "ISO_IR 192":
        ds.PatientName = draw(names)
    if draw(st.booleans()):
        ds.StudyDate = draw(st.sampled_from(["", "20240301"]))
    return ds


def collected_by_walking(data: bytes, implicit_vr: bool, little_endian: bool, cuts: list[int]):
    walker = DataSetWalker(implicit_vr, little_endian, WANTED)
    points = sorted({0, *(p for p in cuts if 0 < p < len(data)), len(data)})
    for start, stop in itertools.pairwise(points):
        walker.feed(data[start:stop])
    walker.end()
    return walker.collected


def pydicom_values(ds: Dataset) -> dict[str, object]:
    return {keyword: ds.get(keyword) for keyword in WANTED_KEYWORDS if keyword in ds}


@settings(max_examples=150, deadline=None)
@given(indexed_datasets(), st.sampled_from(list(SYNTAXES)), st.lists(st.integers(0, 3000)))
def test_the_collected_attributes_read_as_pydicom_reads_them(
    ds: Dataset, syntax: str, cuts: list[int]
) -> None:
    implicit_vr, little_endian = SYNTAXES[syntax]
    data = encode(ds, implicit_vr, little_endian)
    collected = collected_by_walking(data, implicit_vr, little_endian, cuts)
    fp = DicomBytesIO(data)
    reference = read_dataset(fp, implicit_vr, little_endian)
    assert pydicom_values(collected) == pydicom_values(reference)


def test_every_pydicom_test_file_gives_the_values_pydicom_reads() -> None:
    """The files pydicom ships: wherever the walker finds the data set whole, what it
    collected is what pydicom reads, for every attribute the archive indexes."""
    keywords = [keyword for keyword in INDEXED_KEYWORDS if Tag(keyword).group != 2]
    wanted = frozenset(int(Tag(keyword)) for keyword in (*keywords, "SpecificCharacterSet"))
    compared = 0
    for path in part10_test_files():
        try:
            header = read_header(path)
            implicit_vr, little_endian, deflated = encoding(header.transfer_syntax)
            reference = dcmread(path, stop_before_pixels=True)
            expected = {keyword: reference.get(keyword) for keyword in keywords}
        except Exception:
            continue  # pydicom itself cannot read it: no reference to compare with
        data = path.read_bytes()[header.data_set_offset :]
        walker = DataSetWalker(implicit_vr, little_endian, wanted)
        checker = Inflater(walker, InflationLimits()) if deflated else walker
        try:
            checker.feed(data)
            checker.end()
        except IncompleteDataSet:
            continue  # not whole: the node refuses it, nothing is indexed
        collected = walker.collected
        assert collected is not None, path
        assert {keyword: collected.get(keyword) for keyword in keywords} == expected, path
        compared += 1
    assert compared >= 50, f"only {compared} files compared"


def test_a_wanted_value_too_long_or_a_wanted_sequence_leaves_nothing_collected() -> None:
    long_name = Dataset()
    long_name.PatientName = "A" * (64 * 1024 + 2)
    walker = DataSetWalker(False, True, WANTED)
    walker.feed(encode(long_name, False, True))
    walker.end()
    assert walker.collected is None

    sequence = Dataset()
    sequence.ReferencedImageSequence = Sequence([Dataset()])
    wanted = frozenset({int(Tag("ReferencedImageSequence"))})
    walker = DataSetWalker(False, True, wanted)
    walker.feed(encode(sequence, False, True))
    walker.end()
    assert walker.collected is None


def test_a_value_too_long_leaves_the_others_collected_in_part() -> None:
    """The audit trail names a stored instance by what was collected: a 70 KB name must not
    hide the patient's ID and study, though the archive reads the file for its index."""
    dataset = Dataset()
    dataset.PatientName = "Doe^" + "J" * 70_000
    dataset.PatientID = "VICTIM"
    dataset.StudyInstanceUID = "1.2.3.4"
    walker = DataSetWalker(False, True, WANTED | {int(Tag("StudyInstanceUID"))})
    walker.feed(encode(dataset, False, True))
    walker.end()
    assert walker.collected is None
    in_part = walker.collected_in_part
    assert in_part is not None
    assert (in_part.PatientID, in_part.StudyInstanceUID) == ("VICTIM", "1.2.3.4")
    assert "PatientName" not in in_part


def test_nothing_wanted_collects_nothing() -> None:
    walker = DataSetWalker(False, True)
    walker.feed(encode(ct_like(), False, True))
    walker.end()
    assert walker.collected is None

"""The Part 10 listing, in process: exact lines, cut values, and values left on disk."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate

from dicomd.dump import MAX_VALUE_CHARS, NotDicomError, dump_file, format_value
from tests.support.dump_sample import (
    JPEG_BASELINE,
    SAMPLE_LISTING,
    SECONDARY_CAPTURE,
    file_meta,
    write_sample,
)

LINE = re.compile(
    r"^(# .+"
    r"|(  )*item \d+(  <empty>)?"
    r"|(  )*\([0-9A-F]{4},[0-9A-F]{4}\) [A-Z]{2} (\w+|Private tag)  \S.*)$"
)


def test_the_sample_is_listed_exactly(tmp_path: Path) -> None:
    lines = dump_file(write_sample(tmp_path / "sample.dcm"))

    assert "\n".join(lines) + "\n" == SAMPLE_LISTING


@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "rtplan.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "waveform_ecg.dcm"]
)
def test_every_line_of_real_files_has_the_shape_of_an_element(name: str) -> None:
    lines = dump_file(get_testdata_file(name))

    assert [line for line in lines if not LINE.match(line)] == []
    assert lines[0] == "# File Meta Information"
    assert "# Data Set" in lines


def test_implicit_vr_files_still_show_each_vr() -> None:
    lines = dump_file(get_testdata_file("rtplan.dcm"))

    assert "(0008,0016) UI SOPClassUID  1.2.840.10008.5.1.4.1.1.481.5 (RT Plan Storage)" in lines
    assert "(300A,00B3) CS PrimaryDosimeterUnit  MU" in [line.strip() for line in lines]


def test_bulk_data_is_measured_without_being_read(tmp_path: Path) -> None:
    """The file claims 1 GB of pixel data and holds none: listing it must not try to read it."""
    path = write_sample(tmp_path / "sample.dcm")
    content = path.read_bytes()
    header = struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, 2048)
    at = content.index(header)
    path.write_bytes(content[:at] + header[:-4] + struct.pack("<L", 1 << 30))

    lines = dump_file(path)

    assert lines[-1] == f"(7FE0,0010) OW PixelData  <{1 << 30} bytes>"


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    frames=st.lists(st.binary(min_size=6, max_size=3000), min_size=1, max_size=5),
    fragments_per_frame=st.integers(min_value=1, max_value=3),
)
def test_encapsulated_pixel_data_left_on_disk_has_the_length_pydicom_reads(
    tmp_path: Path, frames: list[bytes], fragments_per_frame: int
) -> None:
    frames = [frame + b"\x00" * (len(frame) % 2) for frame in frames]
    dataset = Dataset()
    dataset.file_meta = file_meta(JPEG_BASELINE)
    dataset.SOPClassUID = SECONDARY_CAPTURE
    dataset.SOPInstanceUID = "1.2.3.4.5"
    dataset.NumberOfFrames = len(frames)
    dataset.add(
        DataElement(
            0x7FE00010, "OB", encapsulate(frames, fragments_per_frame), is_undefined_length=True
        )
    )
    path = tmp_path / "encapsulated.dcm"
    dataset.save_as(path, enforce_file_format=True)

    lines = dump_file(path)

    loaded = dcmread(path).PixelData
    assert lines[-1] == f"(7FE0,0010) OB PixelData  <{len(loaded)} bytes, encapsulated>"


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=st.binary(max_size=600))
def test_any_bytes_after_the_prefix_are_listed_or_reported_never_crash(
    tmp_path: Path, body: bytes
) -> None:
    path = tmp_path / "fuzzed.dcm"
    path.write_bytes(b"\x00" * 128 + b"DICM" + body)
    try:
        lines = dump_file(path)
    except NotDicomError as error:
        assert "\n" not in str(error)
    else:
        assert lines[0] == "# File Meta Information"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file"),
        (b"hello", "only 5 bytes, shorter than the preamble and prefix"),
        (b"x" * 300, "no 'DICM' prefix after the 128-byte preamble"),
    ],
)
def test_files_that_are_not_dicom_say_why(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "not.dcm"
    path.write_bytes(content)

    with pytest.raises(NotDicomError) as raised:
        dump_file(path)

    assert str(raised.value) == reason


def test_a_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        dump_file(tmp_path / "absent.dcm")


@given(text=st.text(alphabet=st.characters(blacklist_categories=["Cs", "Cc"]), max_size=200))
def test_a_value_is_one_line_cut_after_64_characters(text: str) -> None:
    element = DataElement(0x00204000, "LT", text)

    shown = format_value(element)

    if not text:
        assert shown == "<empty>"
    elif len(text) <= MAX_VALUE_CHARS:
        assert shown == text
    else:
        assert shown == f"{text[:MAX_VALUE_CHARS]}… ({len(text.encode())} bytes)"


@pytest.mark.parametrize(
    ("element", "shown"),
    [
        (DataElement(0x00280030, "DS", ["0.5", "0.25"]), "0.5\\0.25"),
        (DataElement(0x00280010, "US", 512), "512"),
        (DataElement(0x00281052, "DS", "-1024"), "-1024"),
        (DataElement(0x00181310, "US", [0, 256, 256, 0]), "0\\256\\256\\0"),
        (DataElement(0x00200032, "DS", None), "<empty>"),
        (DataElement(0x7FE00010, "OB", b"\x01" * 10), "<10 bytes>"),
        (DataElement(0x7FE00010, "OB", None), "<0 bytes>"),
        (
            DataElement(0x00020010, "UI", "1.2.840.10008.1.2.4.90"),
            "1.2.840.10008.1.2.4.90 (JPEG 2000 Image Compression (Lossless Only))",
        ),
        (DataElement(0x00200037, "DS", ["1", "0", "0", "0", "1", "0"]), "1\\0\\0\\0\\1\\0"),
    ],
)
def test_values_of_each_kind(element: DataElement, shown: str) -> None:
    assert format_value(element) == shown

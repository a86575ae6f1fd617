"""``dicomd dump`` as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from tests.support.daemons import run_dicomd
from tests.support.dump_sample import SAMPLE_LISTING, write_sample


def test_the_sample_file_is_listed_byte_for_byte(tmp_path: Path) -> None:
    path = write_sample(tmp_path / "sample.dcm")

    result = run_dicomd("dump", str(path))

    assert result.returncode == 0, result.stderr
    assert result.stdout == SAMPLE_LISTING
    assert result.stderr == ""


def test_ct_small_shows_its_header_elements_and_pixel_data_size() -> None:
    result = run_dicomd("dump", get_testdata_file("CT_small.dcm"))

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for expected in [
        "# File Meta Information",
        "(0002,0010) UI TransferSyntaxUID  1.2.840.10008.1.2.1 (Explicit VR Little Endian)",
        "# Data Set",
        "(0008,0008) CS ImageType  ORIGINAL\\PRIMARY\\AXIAL",
        "(0008,0016) UI SOPClassUID  1.2.840.10008.5.1.4.1.1.2 (CT Image Storage)",
        "(0010,0010) PN PatientName  CompressedSamples^CT1",
        "(0018,0050) DS SliceThickness  5.000000",
        "(0028,0010) US Rows  128",
        "(0028,0030) DS PixelSpacing  0.661468\\0.661468",
        "(0009,0010) LO PrivateCreator  GEMS_IDEN_01",
        "(7FE0,0010) OW PixelData  <32768 bytes>",
    ]:
        assert expected in lines, expected


def test_a_file_that_is_not_dicom_is_one_line_and_the_others_are_still_listed(
    tmp_path: Path,
) -> None:
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not an image\n" * 20)
    sample = write_sample(tmp_path / "sample.dcm")

    result = run_dicomd("dump", str(text_file), str(sample))

    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"dicomd dump: {text_file}: not a DICOM file (no 'DICM' prefix after the 128-byte preamble)"
    ]
    assert result.stdout == f"==> {sample} <==\n{SAMPLE_LISTING}"


def test_several_files_are_each_headed_by_their_name(tmp_path: Path) -> None:
    first = write_sample(tmp_path / "first.dcm")
    second = write_sample(tmp_path / "second.dcm")

    result = run_dicomd("dump", str(first), str(second))

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"==> {first} <==\n{SAMPLE_LISTING}\n==> {second} <==\n{SAMPLE_LISTING}"


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    result = run_dicomd("dump", str(tmp_path / "absent.dcm"))

    assert result.returncode == 1
    assert result.stderr == f"dicomd dump: {tmp_path / 'absent.dcm'}: No such file or directory\n"
    assert result.stdout == ""


def test_a_damaged_file_is_one_line_without_a_traceback(tmp_path: Path) -> None:
    content = write_sample(tmp_path / "sample.dcm").read_bytes()
    damaged = tmp_path / "damaged.dcm"
    image_type = b"\x08\x00\x08\x00CS"
    damaged.write_bytes(content.replace(image_type, image_type[:4] + b"ZZ"))

    result = run_dicomd("dump", str(damaged))

    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"dicomd dump: {damaged}: not a DICOM file (damaged: ")
    assert result.stdout == ""


@pytest.mark.parametrize("command", [[], ["dump"], ["echo"], ["find"], ["store"]])
def test_every_command_has_help(command: list[str]) -> None:
    result = run_dicomd(*command, "--help")

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: dicomd {' '.join(command)}".rstrip())


def test_the_installed_script_is_the_same_command(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "dicomd"
    path = write_sample(tmp_path / "sample.dcm")

    result = subprocess.run(
        [str(script), "dump", str(path)], capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout == SAMPLE_LISTING

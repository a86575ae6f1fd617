"""Real DICOM files for tests, found on disk only.

pydicom's ``get_testdata_files`` also downloads files it does not ship;
with no network that hangs for minutes, so tests list the files pydicom
bundles and those of the ``pydicom-data`` package (a test dependency)
themselves.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from pydicom import dcmread
from pydicom.data import DATA_ROOT
from pydicom.data.data_manager import DataTypes, external_data_sources


@cache
def local_test_files() -> tuple[Path, ...]:
    """Every data set file pydicom bundles or pydicom-data provides."""
    bundled = [p for p in Path(DATA_ROOT, "test_files").rglob("*") if p.is_file()]
    external = [
        Path(name)
        for source in external_data_sources().values()
        for name in source.get_paths("**/*", DataTypes.DATASET)
    ]
    files = {p.resolve() for p in bundled + external if p.suffix != ".py"}
    return tuple(sorted(files))


@cache
def part10_test_files() -> tuple[Path, ...]:
    """The local test files that are valid Part 10 files: preamble, DICM, and a file meta
    naming their SOP class, instance and transfer syntax."""
    found = []
    for path in local_test_files():
        with open(path, "rb") as file:
            if file.read(132)[128:] != b"DICM":
                continue
        try:
            meta = dcmread(path, stop_before_pixels=True).file_meta
        except Exception:
            continue
        keys = ("TransferSyntaxUID", "MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID")
        if all(meta.get(key) for key in keys):
            found.append(path)
    return tuple(found)

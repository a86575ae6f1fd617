"""Every Part 10 file of pydicom and pydicom-data, sent by ``dicomd store`` to dcmtk's storescp.

The files come from many vendors' tools, in every transfer syntax, with the
oddities real files have (``tests.support.testdata.part10_test_files``: on disk
only, nothing downloaded).  storescp writes what arrives bit for bit
(``+B``), accepts every transfer syntax it knows (``+xa``) and SOP classes
it does not know (``-pm``).  Each file must arrive with its data set, after
the File Meta Information, byte for byte as sent; where the association
negotiated another syntax than the file's (storescp prefers explicit VR
little endian to implicit VR and to big endian), the client converted it,
and it must arrive equal as a pydicom data set.

Files go in rounds, one ``dicomd store`` and one storescp each, because
storescp names a file after its SOP Instance UID and several test files
share one (the same image in several syntaxes): no round holds two of them.

The honest exceptions:

- DICOMDIR files are Media Storage Directory Storage, not instances: no
  storage SCP accepts them, and ``dicomd store`` reports them not accepted.
- A deflated data set may be of odd length (``image_dfl.dcm`` is); a PDV may
  not, so it arrives with the one NUL that pads it, as pydicom and
  pynetdicom pad their own deflated data sets.
- Big-endian files arrive converted to little endian; pydicom keeps OW, OF,
  OL, OD and OV values as the bytes it read, so the reference is the file as
  dcmtk's ``dcmconv +te`` converts it, and group lengths (retired, which
  dcmconv drops) are left out of that comparison.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRBigEndian, MediaStorageDirectoryStorage

from dicomd.part10 import read_header
from tests.support.daemons import run_dicomd
from tests.support.datasets import dataset_bytes
from tests.support.dcmtk import dcmtk_peer, run_dcmtk
from tests.support.processes import LOCALHOST
from tests.support.testdata import part10_test_files

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on odd test files


def file_id(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def is_directory(path: Path) -> bool:
    return read_header(path).sop_class_uid == MediaStorageDirectoryStorage


INSTANCES = [path for path in part10_test_files() if not is_directory(path)]
DIRECTORIES = [path for path in part10_test_files() if is_directory(path)]


def rounds(paths: list[Path]) -> list[list[Path]]:
    """``paths`` shared out so that no round holds two files of one SOP Instance UID."""
    shared: list[tuple[set[str], list[Path]]] = []
    for path in paths:
        uid = read_header(path).sop_instance_uid
        place = next((r for r in shared if uid not in r[0]), None)
        if place is None:
            place = (set(), [])
            shared.append(place)
        place[0].add(uid)
        place[1].append(path)
    return [members for _, members in shared]


@dataclass(frozen=True)
class Delivery:
    """What became of one file: the file storescp wrote, and what ``dicomd store`` said of it."""

    arrived: Path | None
    complaints: list[str]


@dataclass(frozen=True)
class Outcome:
    deliveries: dict[Path, Delivery]
    summaries: list[str]


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    deliveries: dict[Path, Delivery] = {}
    summaries = []
    for number, members in enumerate(rounds([*INSTANCES, *DIRECTORIES])):
        folder = tmp_path_factory.mktemp(f"round{number}")
        received = folder / "received"
        received.mkdir()
        options = ("+B", "+xa", "-pm", "-od", str(received))
        with dcmtk_peer("storescp", folder, *options) as storescp:
            port = str(storescp.port)
            sent = run_dicomd(
                "store", "--no-progress", "-aec", "STORESCP", LOCALHOST, port, *map(str, members)
            )
        summaries.append(sent.stdout.strip())
        arrived = {read_header(path).sop_instance_uid: path for path in received.iterdir()}
        for path in members:
            complaints = [line for line in sent.stderr.splitlines() if f" {path}: " in line]
            deliveries[path] = Delivery(arrived.get(read_header(path).sop_instance_uid), complaints)
    return Outcome(deliveries, summaries)


def padded_to_even(data: bytes) -> bytes:
    return data + b"\0" if len(data) % 2 else data


def without_group_lengths(dataset: Dataset) -> Dataset:
    for tag in [element.tag for element in dataset if element.tag.element == 0]:
        del dataset[tag]
    return dataset


def reference(path: Path, folder: Path) -> Dataset:
    """What ``path`` must arrive as in explicit VR little endian."""
    if read_header(path).transfer_syntax != ExplicitVRBigEndian:
        return dcmread(path)
    converted = folder / "dcmconv.dcm"
    done = run_dcmtk("dcmconv", "+te", str(path), str(converted))
    assert done.returncode == 0, done.stderr
    return dcmread(converted)


@pytest.mark.parametrize("path", INSTANCES, ids=file_id)
def test_every_instance_arrives_as_it_was_sent(
    path: Path, outcome: Outcome, tmp_path: Path
) -> None:
    delivery = outcome.deliveries[path]
    assert delivery.arrived is not None, delivery.complaints
    assert delivery.complaints == []
    sent_syntax = read_header(path).transfer_syntax
    if read_header(delivery.arrived).transfer_syntax == sent_syntax:
        assert dataset_bytes(delivery.arrived) == padded_to_even(dataset_bytes(path))
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arrived, expected = dcmread(delivery.arrived), reference(path, tmp_path)
        assert without_group_lengths(arrived) == without_group_lengths(expected)


@pytest.mark.parametrize("path", DIRECTORIES, ids=file_id)
def test_a_dicomdir_is_not_accepted_and_said_so(path: Path, outcome: Outcome) -> None:
    delivery = outcome.deliveries[path]
    assert delivery.arrived is None
    (complaint,) = delivery.complaints
    assert re.fullmatch(
        rf"dicomd store: {re.escape(str(path))}: not accepted by STORESCP at {LOCALHOST}:\d+:"
        r" Media Storage Directory Storage in .+",
        complaint,
    )


def test_the_summaries_count_every_file(outcome: Outcome) -> None:
    counted = [
        re.match(r"stored (\d+), warnings (\d+), failed (\d+) ", line) for line in outcome.summaries
    ]
    assert all(counted), outcome.summaries
    totals = [sum(int(match.group(n)) for match in counted) for n in (1, 2, 3)]
    assert totals == [len(INSTANCES), 0, len(DIRECTORIES)]


def test_the_files_cover_what_matters() -> None:
    """The set is what this suite claims to cover: every kind of syntax, directories aside."""
    syntaxes = {read_header(path).transfer_syntax for path in INSTANCES}
    assert {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99"} <= syntaxes
    assert {ExplicitVRBigEndian, "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.50"} <= syntaxes
    assert len(INSTANCES) > 200
    assert DIRECTORIES

"""Decompressing on retrieve, against the real daemon and dcmtk peers that take only
uncompressed syntaxes.

Every compressed Part 10 file among pydicom's test files and pydicom-data's
(the package ships its files: nothing is downloaded) that pydicom reads
whole (one is cut short inside its Pixel Data, one has no image) is given
one study of one patient and a new SOP Instance UID, each in a series of its
own, and stored through C-STORE with its compressed pixel data as it was;
with them one uncompressed MR, and a JPEG Lossless (process 14) sample that
is an SV1 file relabelled, since none is labelled so.

Then dcmtk's ``getscu`` (which proposes the uncompressed syntaxes only) and
pynetdicom proposing implicit VR little endian only get the study, and
``movescu`` moves it to a ``storescp`` that accepts only the uncompressed
syntaxes (or with ``+xi`` only implicit VR).  (dcmtk 3.6.7's ``getscu +xi``
proposes explicit VR only, whatever its help says, hence pynetdicom.)  The
dcmtk tools write each data set as it came (``+B``); its pixel values must be
pydicom's decoding of the file that was stored.  pydicom is
the decoder on both sides, so lossy JPEG compares exactly too.  An instance
pydicom cannot decode counts as a failed sub-operation, as does every
compressed one for a destination configured ``transcode: as-stored`` and for
C-GET on a daemon with ``retrieve.transcode: as-stored``.

Last, a 128 MiB multi-frame RLE instance: the daemon and its decoder
processes stay far below that while it goes out decompressed, and the
reactor does not stall.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLossless,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE

from dicomd.dimse.datasets import decode_dataset
from tests.support.archive import archive_of, archive_plugin
from tests.support.attacks import peak_memory_mib, worst_stall_ms
from tests.support.daemons import RunningDaemon, start_daemon
from tests.support.datasets import dataset_bytes
from tests.support.dcmtk import run_dcmtk
from tests.support.processes import LOCALHOST, reset_peak_memory, status_kib
from tests.support.testdata import part10_test_files
from tests.test_transcode import pixels, read_quietly

from .test_retrieve_get import STUDY_ROOT, requester
from .test_retrieve_move import (
    SUCCESS,
    WARNING,
    Instance,
    Patient,
    Received,
    RetrieveResponse,
    StoreSCP,
    assert_progress,
    collect,
    dcmtk_responses,
    keys,
    start_storescp,
    study_identifier,
    write_instance,
)

pytestmark = pytest.mark.usefixtures("report_module_daemons")

UNCOMPRESSED = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})


# --------------------------------------------------------------------------------------------
# What is archived


def decoded(path: Path) -> np.ndarray | None:
    """pydicom's decoding of a file's pixel data, or None when it cannot decode it."""
    return pixels(read_quietly(path))


def compressed_samples() -> list[Path]:
    """Every Part 10 test file in an encapsulated syntax that pydicom reads whole (one is cut
    short in its Pixel Data) and that has an image to retrieve."""
    found = []
    for path in part10_test_files():
        if not read_quietly(
            path, stop_before_pixels=True
        ).file_meta.TransferSyntaxUID.is_encapsulated:
            continue
        dataset = read_quietly(path)
        if "SOPClassUID" in dataset and "PixelData" in dataset:
            found.append(path)
    return found


def rebadged(
    path: Path, folder: Path, patient: Patient, study_uid: str, syntax: str = ""
) -> Instance:
    """``path`` given to ``patient`` and ``study_uid``, a series and a UID of its own, its
    data set otherwise as it was (compressed pixel data untouched); ``syntax`` relabels it."""
    dataset = read_quietly(path)
    list(dataset)  # converted as read: one file has implicit VR elements in explicit VR
    dataset.PatientID, dataset.PatientName = patient.id, patient.name
    dataset.StudyInstanceUID = study_uid
    dataset.SeriesInstanceUID = generate_uid()
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    if syntax:
        dataset.file_meta.TransferSyntaxUID = syntax
    return write_instance(dataset, folder)


def store(daemon: RunningDaemon, instances: Sequence[Instance]) -> dict[str, int]:
    """C-STORE every file unchanged, a context per SOP class and syntax; the status of each."""
    ae = AE(ae_title="ARCHIVER")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    for sop_class, syntax in dict.fromkeys((i.sop_class_uid, i.transfer_syntax) for i in instances):
        ae.add_requested_context(sop_class, [syntax])
    assoc = ae.associate(LOCALHOST, daemon.port, ae_title=daemon.ae_title)
    assert assoc.is_established
    try:
        return {i.sop_instance_uid: int(assoc.send_c_store(i.path).Status) for i in instances}
    finally:
        assoc.release()


@dataclass(frozen=True)
class Archive:
    daemon: RunningDaemon
    study: list[Instance]

    @property
    def study_keys(self) -> list[str]:
        return keys("STUDY", StudyInstanceUID=self.study[0].study_uid)

    def expected(self, decompressing: bool = True) -> tuple[list[Instance], list[Instance]]:
        """The instances that arrive and those that fail: compressed ones arrive when they are
        decompressed and pydicom decodes them."""
        arrive, fail = [], []
        for instance in self.study:
            goes = instance.transfer_syntax in UNCOMPRESSED or (
                decompressing and decoded(instance.path) is not None
            )
            (arrive if goes else fail).append(instance)
        return arrive, fail


def archive_study(
    folder: Path, module_daemons: list[RunningDaemon], overrides: dict[str, object]
) -> Archive:
    """A daemon keeping one study: every compressed sample, a relabelled process 14 one,
    and an uncompressed MR."""
    sent = folder / "sent"
    patient, study_uid = Patient("TRANSCODE1", "Retrieve^Transcode"), generate_uid()
    samples = compressed_samples()
    sv1 = next(path for path in samples if path.name == "SC_rgb_jpeg_gdcm.dcm")
    mr = next(path for path in part10_test_files() if path.name == "MR_small.dcm")
    study = [
        *(rebadged(path, sent, patient, study_uid) for path in samples),
        rebadged(sv1, sent, patient, study_uid, JPEGLossless),
        rebadged(mr, sent, patient, study_uid),
    ]
    daemon = start_daemon(folder, {"plugins": [archive_plugin()], **overrides})
    module_daemons.append(daemon)
    statuses = store(daemon, study)
    assert statuses == dict.fromkeys(statuses, SUCCESS)
    assert set(archive_of(daemon).indexed()) == set(statuses)
    return Archive(daemon, study)


@dataclass
class Destinations:
    native: StoreSCP  # NATIVE: the uncompressed syntaxes, explicit VR first
    implicit: StoreSCP  # IMPLICIT: implicit VR little endian only
    as_stored: StoreSCP  # ASSTORED: like NATIVE, configured transcode: as-stored

    def config(self) -> dict[str, dict[str, object]]:
        entries = {scp.ae_title: {"host": LOCALHOST, "port": scp.port} for scp in self.all}
        entries["ASSTORED"]["transcode"] = "as-stored"
        return entries

    @property
    def all(self) -> list[StoreSCP]:
        return [self.native, self.implicit, self.as_stored]

    def forget(self) -> None:
        for scp in self.all:
            scp.forget()


@pytest.fixture(scope="module")
def destinations(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Destinations]:
    folder = tmp_path_factory.mktemp("destinations")
    started: list[StoreSCP] = []
    try:
        for ae_title, options in [("NATIVE", []), ("IMPLICIT", ["+xi"]), ("ASSTORED", [])]:
            started.append(start_storescp(ae_title, folder / ae_title, *options))
        yield Destinations(*started)
    finally:
        for scp in started:
            scp.stop()


@pytest.fixture(scope="module")
def archive(
    tmp_path_factory: pytest.TempPathFactory,
    module_daemons: list[RunningDaemon],
    destinations: Destinations,
) -> Archive:
    folder = tmp_path_factory.mktemp("transcode")
    return archive_study(folder, module_daemons, {"destinations": destinations.config()})


@pytest.fixture
def fresh(destinations: Destinations) -> Destinations:
    destinations.forget()
    return destinations


# --------------------------------------------------------------------------------------------
# What arrives


def received_files(folder: Path) -> dict[str, Dataset]:
    """SOP Instance UID -> data set, of each file a dcmtk tool wrote."""
    return {
        str(dataset.file_meta.MediaStorageSOPInstanceUID): dataset
        for dataset in map(read_quietly, folder.iterdir())
    }


def assert_arrived_decompressed(
    received: dict[str, Dataset], expected: Sequence[Instance], syntaxes: frozenset[str]
) -> None:
    """Exactly ``expected`` arrived, each in one of ``syntaxes``, with pydicom's decoding of
    the stored file as its pixel values."""
    assert set(received) == {instance.sop_instance_uid for instance in expected}
    for instance in expected:
        arrived = received[instance.sop_instance_uid]
        name = instance.path.name
        assert arrived.file_meta.TransferSyntaxUID in syntaxes, name
        assert arrived.SOPInstanceUID == instance.sop_instance_uid, name
        assert "PixelData" in arrived, name
        assert not arrived["PixelData"].is_undefined_length, name
        assert np.array_equal(arrived.pixel_array, decoded(instance.path)), name


def assert_counts(responses: list[RetrieveResponse], arrive: int, fail: int) -> None:
    assert_progress(responses, arrive + fail)
    status = WARNING if fail else SUCCESS
    assert responses[-1] == RetrieveResponse(status, None, arrive, fail, 0)


def getscu(
    archive: Archive, folder: Path
) -> tuple[subprocess.CompletedProcess[str], list[RetrieveResponse], dict[str, Dataset]]:
    folder.mkdir()
    daemon = archive.daemon
    got = run_dcmtk(
        "getscu", "-d", "-S", "+B", "-od", str(folder), "-aec", daemon.ae_title,
        *(arg for key in archive.study_keys for arg in ("-k", key)),
        LOCALHOST, str(daemon.port),
        timeout=300,
    )  # fmt: skip
    return got, dcmtk_responses(got.stdout + got.stderr, "C-GET RSP"), received_files(folder)


def movescu(archive: Archive, destination: str) -> list[RetrieveResponse]:
    daemon = archive.daemon
    moved = run_dcmtk(
        "movescu", "-d", "-S", "-aec", daemon.ae_title, "-aem", destination,
        *(arg for key in archive.study_keys for arg in ("-k", key)),
        LOCALHOST, str(daemon.port),
        timeout=300,
    )  # fmt: skip
    return dcmtk_responses(moved.stdout + moved.stderr, "C-MOVE RSP")


# --------------------------------------------------------------------------------------------
# The tests


def test_the_study_holds_every_compressed_syntax(archive):
    syntaxes = {instance.transfer_syntax for instance in archive.study}
    assert {
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.81",
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.5",
    } <= syntaxes
    assert len(archive.study) >= 50


def test_getscu_gets_every_compressed_instance_decompressed(archive, tmp_path):
    arrive, fail = archive.expected()
    _, responses, received = getscu(archive, tmp_path / "got")
    assert_counts(responses, len(arrive), len(fail))
    assert_arrived_decompressed(received, arrive, frozenset({ExplicitVRLittleEndian}))


def test_a_requester_taking_implicit_vr_only_gets_them_in_implicit_vr(archive):
    arrive, fail = archive.expected()
    classes = list(dict.fromkeys(instance.sop_class_uid for instance in archive.study))
    storage = [(sop_class, [ImplicitVRLittleEndian]) for sop_class in classes]
    with requester(archive, storage, classes) as (assoc, received):
        result = collect(assoc.send_c_get(study_identifier(archive.study), STUDY_ROOT))
    assert_counts(result.responses, len(arrive), len(fail))
    assert sorted(result.failed_uids) == sorted(i.sop_instance_uid for i in fail)
    datasets = {uid: as_received(each) for uid, each in received.items()}
    assert_arrived_decompressed(datasets, arrive, frozenset({ImplicitVRLittleEndian}))


def as_received(received: Received) -> Dataset:
    """A data set pynetdicom received, read in the syntax of its context."""
    dataset = decode_dataset(received.data_set, received.transfer_syntax)
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = received.transfer_syntax
    return dataset


MOVES = {"NATIVE": UNCOMPRESSED, "IMPLICIT": frozenset({ImplicitVRLittleEndian})}


@pytest.mark.parametrize(("destination", "syntaxes"), MOVES.items(), ids=MOVES.keys())
def test_movescu_to_an_uncompressed_storescp_moves_them_decompressed(
    archive, fresh, destination, syntaxes
):
    arrive, fail = archive.expected()
    responses = movescu(archive, destination)
    assert_counts(responses, len(arrive), len(fail))
    scp = fresh.native if destination == "NATIVE" else fresh.implicit
    assert_arrived_decompressed(received_files(scp.folder), arrive, syntaxes)


def test_a_destination_configured_as_stored_gets_no_compressed_instance(archive, fresh):
    arrive, fail = archive.expected(decompressing=False)
    assert [instance.path.name for instance in arrive] == [arrive[0].path.name]  # the MR
    responses = movescu(archive, "ASSTORED")
    assert_counts(responses, len(arrive), len(fail))
    received = fresh.as_stored.received()
    assert set(received) == {arrive[0].sop_instance_uid}
    assert dataset_bytes(received[arrive[0].sop_instance_uid]) == dataset_bytes(arrive[0].path)


def test_the_daemon_logs_one_line_for_each_instance_it_cannot_decode(archive):
    log = archive.daemon.log_text()
    assert "Traceback" not in log
    _, fail = archive.expected()
    for instance in fail:
        lines = [line for line in log.splitlines() if instance.sop_instance_uid in line]
        assert any("cannot decompress" in line for line in lines), lines


@pytest.fixture(scope="module")
def as_stored_archive(
    tmp_path_factory: pytest.TempPathFactory, module_daemons: list[RunningDaemon]
) -> Archive:
    folder = tmp_path_factory.mktemp("as-stored")
    return archive_study(folder, module_daemons, {"retrieve": {"transcode": "as-stored"}})


def test_c_get_from_a_daemon_configured_as_stored_fails_every_compressed_instance(
    as_stored_archive, tmp_path
):
    arrive, fail = as_stored_archive.expected(decompressing=False)
    _, responses, received = getscu(as_stored_archive, tmp_path / "got")
    assert_counts(responses, len(arrive), len(fail))
    assert set(received) == {instance.sop_instance_uid for instance in arrive}


# --------------------------------------------------------------------------------------------
# A large multi-frame instance


FRAMES, SIZE = 64, 1024  # 16 bits allocated: 2 MiB a frame, 128 MiB decompressed


def large_multiframe(folder: Path) -> Path:
    """An RLE MR instance of ``FRAMES`` frames of ``SIZE`` x ``SIZE`` 12-bit samples."""
    rows = np.arange(SIZE, dtype=np.uint16)
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"  # Enhanced MR
    dataset.SOPInstanceUID = generate_uid()
    dataset.PatientID, dataset.PatientName = "TRANSCODE2", "Retrieve^Large"
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = generate_uid(), generate_uid()
    dataset.Rows = dataset.Columns = SIZE
    dataset.NumberOfFrames = FRAMES
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 12, 11
    dataset.PixelRepresentation = 0
    volume = (rows[None, :, None] + rows[None, None, :] + np.arange(FRAMES)[:, None, None]) % 4096
    dataset.PixelData = volume.astype(np.uint16).tobytes()
    dataset.compress(RLELossless, encoding_plugin="pylibjpeg")
    path = folder / "large.dcm"
    dataset.save_as(path, enforce_file_format=True)
    return path


def descendants(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(child) for child in (task / "children").read_text().split()]
    return [grand for child in children for grand in (child, *descendants(child))]


def resident_mib(pid: int) -> float:
    return status_kib(pid, "VmRSS") / 1024


def test_a_large_multiframe_instance_goes_out_a_frame_at_a_time(archive, tmp_path, record_property):
    """Each decoder process holds a few frames at most, and the daemon streams the spool
    file a PDU at a time.  A small instance goes first, so that the decoder processes are
    running (their start is no part of the large instance's cost)."""
    path = large_multiframe(tmp_path)
    [status] = store(archive.daemon, [instance_of(path)]).values()
    assert status == SUCCESS
    small = next(i for i in archive.expected()[0] if i.transfer_syntax not in UNCOMPRESSED)
    warm_up = retrieve_by_getscu(archive, image_keys(small), tmp_path / "warm-up")
    assert warm_up.returncode == 0, warm_up.stdout[-3000:] + warm_up.stderr[-3000:]
    daemon = archive.daemon.pid
    processes = [daemon, *descendants(daemon)]
    assert len(processes) >= 2, "no decoder process is running"
    before = {pid: resident_mib(pid) for pid in processes}
    for pid in processes:
        reset_peak_memory(pid)
    got = retrieve_by_getscu(archive, image_keys(instance_of(path)), tmp_path / "got")
    assert got.returncode == 0, got.stdout[-3000:] + got.stderr[-3000:]
    growth = {pid: peak_memory_mib(pid) - before[pid] for pid in processes}
    record_property("peak growth MiB (daemon first)", [round(growth[pid], 1) for pid in processes])
    record_property("resident MiB before (daemon first)", [round(before[pid]) for pid in processes])
    [received] = (tmp_path / "got").iterdir()
    arrived = read_quietly(received)
    assert arrived.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(arrived.pixel_array, decoded(path))
    assert growth[daemon] < 32, growth
    assert max(growth.values()) < 32, growth  # 128 MiB went through: never whole in memory
    assert worst_stall_ms(archive.daemon) < 200
    assert list((archive_of(archive.daemon).root / ".incoming").iterdir()) == []


def image_keys(instance: Instance) -> list[str]:
    return keys(
        "IMAGE",
        StudyInstanceUID=instance.study_uid,
        SeriesInstanceUID=instance.series_uid,
        SOPInstanceUID=instance.sop_instance_uid,
    )


def retrieve_by_getscu(
    archive: Archive, query: Sequence[str], folder: Path
) -> subprocess.CompletedProcess[str]:
    folder.mkdir()
    return run_dcmtk(
        "getscu", "-S", "+B", "-od", str(folder), "-aec", archive.daemon.ae_title,
        *(arg for key in query for arg in ("-k", key)),
        LOCALHOST, str(archive.daemon.port),
        timeout=300,
    )  # fmt: skip


def instance_of(path: Path) -> Instance:
    dataset = read_quietly(path, stop_before_pixels=True)
    return Instance(
        path,
        str(dataset.PatientID),
        str(dataset.StudyInstanceUID),
        str(dataset.SeriesInstanceUID),
        str(dataset.SOPClassUID),
        str(dataset.SOPInstanceUID),
        str(dataset.file_meta.TransferSyntaxUID),
    )


def test_the_decoder_processes_end_with_the_daemon(start_dicomd, tmp_path):
    """twistd ends on SIGTERM by raising it again, without exit handlers: the decoder
    processes must see for themselves that the daemon is gone."""
    daemon = start_dicomd(plugins=[archive_plugin()])
    rle = instance_of(next(p for p in part10_test_files() if p.name == "MR_small_RLE.dcm"))
    assert store(daemon, [rle]) == {rle.sop_instance_uid: SUCCESS}
    got = retrieve_by_getscu(Archive(daemon, [rle]), image_keys(rle), tmp_path / "got")
    assert got.returncode == 0, got.stdout[-3000:] + got.stderr[-3000:]
    decoders = descendants(daemon.pid)
    assert decoders, "no decoder process was started"
    daemon.stop()
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in decoders):
        assert time.monotonic() < deadline, f"decoder processes {decoders} outlived the daemon"
        time.sleep(0.1)

"""C-MOVE against the real daemon: the archive sends what it keeps to known destinations.

An archive is stored once per module through C-STORE (pynetdicom, streaming
each file unchanged): one patient with a study mixing CT, MR, Secondary
Capture and RT Dose instances in explicit VR little endian and in five
compressed syntaxes, and a second study; a bulk study of fifty small CT
images for cancelling and aborting; and instances in implicit VR and big
endian that a destination takes only converted.

Every destination the daemon knows (``destinations:``) is a real peer started
for the module: dcmtk's ``storescp`` bit-preserving (accepting every syntax,
or only uncompressed ones, or sleeping after each store, refusing every
association, aborting on the first C-STORE or during it), a port where
nothing listens, and a pynetdicom storage SCP that records the Move
Originator and can abort after a number of stores.  The requests come from
dcmtk's ``movescu`` (``-d`` prints every response with its counts) and from
pynetdicom, which hands over the final identifier (Failed SOP Instance UID
List) and can cancel and go on using its association.

What ``storescp +B`` writes after its own File Meta Information is the data
set exactly as it came off the wire, so an instance moved as is must have
the very bytes the archive keeps and the bytes first sent to it.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread, dcmwrite
from pydicom.multival import MultiValue
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.association import Association
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from tests.support.archive import archive_of, archive_plugin
from tests.support.daemons import RunningDaemon, start_daemon
from tests.support.datasets import ct_dataset, dataset_bytes
from tests.support.dcmtk import dcmtk_executable, run_dcmtk
from tests.support.processes import LOCALHOST, STARTUP_DEADLINE, free_tcp_port, is_listening
from tests.support.testdata import part10_test_files

pytestmark = pytest.mark.usefixtures("report_module_daemons")

PENDING, SUCCESS, WARNING, CANCELLED = 0xFF00, 0x0000, 0xB000, 0xFE00
UNABLE_TO_PERFORM_SUB_OPERATIONS = 0xA702
MOVE_DESTINATION_UNKNOWN = 0xA801
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
BULK_SIZE = 50

# --------------------------------------------------------------------------------------------
# The archive


@dataclass(frozen=True)
class Instance:
    """One instance as it was sent to the archive: the file and the keys it is retrieved by."""

    path: Path
    patient_id: str
    study_uid: str
    series_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str

    @property
    def uncompressed(self) -> bool:
        return self.transfer_syntax in UNCOMPRESSED


UNCOMPRESSED = frozenset({ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian})

BUNDLED_COMPRESSED = (
    "SC_rgb_jpeg_dcmtk.dcm",  # Secondary Capture, JPEG Baseline
    "JPEG-lossy.dcm",  # Secondary Capture, JPEG Extended
    "SC_rgb_jpeg_gdcm.dcm",  # Secondary Capture, JPEG Lossless SV1
    "MR_small_RLE.dcm",  # MR, RLE Lossless
    "MR_small_jp2klossless.dcm",  # MR, JPEG 2000 Lossless
    "MR_small_jpeg_ls_lossless.dcm",  # MR, JPEG-LS Lossless
    "rtdose_rle_1frame.dcm",  # RT Dose, RLE Lossless
)
BUNDLED_EXPLICIT = ("MR_small.dcm",)  # MR, explicit VR little endian
BUNDLED_OTHER_ENCODINGS = ("MR_small_implicit.dcm", "MR_small_bigendian.dcm")


@cache
def bundled(name: str) -> Path:
    """A Part 10 file pydicom ships, by its file name."""
    for path in part10_test_files():
        if path.name == name:
            return path
    raise AssertionError(f"pydicom ships no Part 10 file named {name}")


@dataclass(frozen=True)
class Patient:
    id: str
    name: str


def write_instance(dataset: Dataset, folder: Path) -> Instance:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{dataset.SOPInstanceUID}.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some bundled files carry values pydicom warns about
        dcmwrite(path, dataset, enforce_file_format=True)
    return Instance(
        path,
        str(dataset.PatientID),
        str(dataset.StudyInstanceUID),
        str(dataset.SeriesInstanceUID),
        str(dataset.SOPClassUID),
        str(dataset.SOPInstanceUID),
        str(dataset.file_meta.TransferSyntaxUID),
    )


def ct_series(
    folder: Path,
    patient: Patient,
    study_uid: str,
    count: int,
    size: int = 32,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> list[Instance]:
    """``count`` generated CT images of one new series of ``study_uid``."""
    series_uid = generate_uid()
    instances = []
    for number in range(1, count + 1):
        dataset = ct_dataset(study_uid, series_uid, number, size, size, transfer_syntax)
        dataset.PatientID, dataset.PatientName = patient.id, patient.name
        instances.append(write_instance(dataset, folder))
    return instances


def rebadged(name: str, folder: Path, patient: Patient, study_uid: str) -> Instance:
    """A bundled file given to ``patient`` and ``study_uid``, in a series and with a UID of
    its own, and otherwise unchanged: its data set keeps its encoding (compressed pixel data
    stays as it was), so one file can appear in several studies."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = dcmread(bundled(name))
    dataset.PatientID, dataset.PatientName = patient.id, patient.name
    dataset.StudyInstanceUID = study_uid
    dataset.SeriesInstanceUID = generate_uid()
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    return write_instance(dataset, folder)


@dataclass(frozen=True)
class ArchiveContent:
    """What the module stores, by the role each part plays in the tests."""

    mixed: list[Instance]  # one study: CT series of 3, then bundled files, one series each
    second: list[Instance]  # another study of the same patient: 2 CT images
    bulk: list[Instance]  # one study of BULK_SIZE small CT images, another patient
    converted: list[Instance]  # implicit VR and big endian instances, a third patient

    @property
    def everything(self) -> list[Instance]:
        return self.mixed + self.second + self.bulk + self.converted

    @property
    def ct_series(self) -> list[Instance]:
        return self.mixed[:3]


def write_content(folder: Path) -> ArchiveContent:
    patient = Patient("RETRIEVE1", "Retrieve^Mixed")
    mixed_uid, second_uid = generate_uid(), generate_uid()
    mixed = ct_series(folder, patient, mixed_uid, 3) + [
        rebadged(name, folder, patient, mixed_uid)
        for name in (*BUNDLED_COMPRESSED, *BUNDLED_EXPLICIT)
    ]
    second = ct_series(folder, patient, second_uid, 2)
    bulk = ct_series(folder, Patient("BULK1", "Retrieve^Bulk"), generate_uid(), BULK_SIZE, 8)
    other = Patient("CONVERT1", "Retrieve^Convert")
    converted_uid = generate_uid()
    converted = [
        rebadged(name, folder, other, converted_uid) for name in BUNDLED_OTHER_ENCODINGS
    ] + ct_series(folder, other, converted_uid, 1, transfer_syntax=ImplicitVRLittleEndian)
    # the sub-operations need a context for each SOP class and for each compressed syntax
    assert len({instance.sop_class_uid for instance in mixed}) == 4
    assert len({instance.transfer_syntax for instance in mixed if not instance.uncompressed}) == 6
    return ArchiveContent(mixed, second, bulk, converted)


def store_content(daemon: RunningDaemon, instances: Sequence[Instance]) -> None:
    """C-STORE every file unchanged on one association, a context per SOP class and syntax."""
    ae = AE(ae_title="ARCHIVER")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for sop_class, syntax in dict.fromkeys((i.sop_class_uid, i.transfer_syntax) for i in instances):
        ae.add_requested_context(sop_class, [syntax])
    assoc = ae.associate(LOCALHOST, daemon.port, ae_title=daemon.ae_title)
    assert assoc.is_established
    chunked = pynetdicom_config.STORE_SEND_CHUNKED_DATASET
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    try:
        statuses = {i.sop_instance_uid: assoc.send_c_store(i.path).Status for i in instances}
    finally:
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = chunked
        assoc.release()
    assert statuses == dict.fromkeys(statuses, SUCCESS)
    assert set(archive_of(daemon).indexed()) == set(statuses)


# --------------------------------------------------------------------------------------------
# The destinations


@dataclass
class StoreSCP:
    """dcmtk's storescp, bit-preserving, writing into ``folder``."""

    ae_title: str
    process: subprocess.Popen[bytes]
    port: int
    folder: Path

    def received(self) -> dict[str, Path]:
        """SOP Instance UID -> file, for every file storescp wrote."""
        return {
            str(dcmread(path, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID): path
            for path in self.folder.iterdir()
        }

    def forget(self) -> None:
        for path in self.folder.iterdir():
            path.unlink()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def wait_until_listening(port: int, process: subprocess.Popen[bytes], name: str) -> None:
    deadline = time.monotonic() + STARTUP_DEADLINE
    while not is_listening(port):
        assert process.poll() is None, f"{name} exited with {process.returncode}"
        assert time.monotonic() < deadline, f"{name} did not listen on {port}"
        time.sleep(0.05)


def start_storescp(ae_title: str, folder: Path, *options: str) -> StoreSCP:
    executable = dcmtk_executable("storescp")
    if executable is None:
        pytest.fail("dcmtk is not installed; run scripts/test")
    folder.mkdir(parents=True)
    port = free_tcp_port()
    process = subprocess.Popen(
        [executable, "-aet", ae_title, "+B", *options, "-od", str(folder), str(port)],
        env={**os.environ, "TCP_NODELAY": "1"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_listening(port, process, f"storescp {ae_title}")
    except BaseException:
        process.kill()
        process.wait(10)
        raise
    return StoreSCP(ae_title, process, port, folder)


@dataclass(frozen=True)
class Received:
    """One C-STORE the pynetdicom destination received, as it came."""

    sop_instance_uid: str
    transfer_syntax: str
    data_set: bytes
    move_originator_ae_title: str | None
    move_originator_message_id: int | None


RECORDING_PREFERENCE = [
    ExplicitVRLittleEndian,
    *(syntax for syntax in ALL_TRANSFER_SYNTAXES if syntax != ExplicitVRLittleEndian),
]
"""pynetdicom accepts its own first choice among those proposed: explicit VR little endian
first, as storescp does, so that what the archive keeps in it goes unchanged."""


@dataclass
class PynetdicomSCP:
    """A pynetdicom storage SCP that keeps what it receives and may abort after some stores."""

    ae_title: str
    port: int
    server: Any = None
    abort_on_store: int | None = None
    received: list[Received] = field(default_factory=list)
    _stores: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        ae = AE(ae_title=self.ae_title)
        ae.network_timeout = ae.dimse_timeout = ae.acse_timeout = 30
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, RECORDING_PREFERENCE)
        handlers = [(evt.EVT_C_STORE, self._store)]
        self.server = ae.start_server((LOCALHOST, self.port), block=False, evt_handlers=handlers)

    def _store(self, event: Any) -> int:
        with self._lock:
            self._stores += 1
            if self._stores == self.abort_on_store:
                event.assoc.abort()
                return 0xA700
        request = event.request
        originator = request.MoveOriginatorApplicationEntityTitle
        self.received.append(
            Received(
                str(request.AffectedSOPInstanceUID),
                str(event.context.transfer_syntax),
                request.DataSet.getvalue(),
                originator.strip() if originator else None,
                request.MoveOriginatorMessageID,
            )
        )
        return SUCCESS

    def forget(self, abort_on_store: int | None = None) -> None:
        with self._lock:
            self.received.clear()
            self._stores = 0
            self.abort_on_store = abort_on_store

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()


@dataclass
class Destinations:
    """The peers the daemon may move to, each under its AE title in ``destinations:``."""

    everything: StoreSCP  # STORESCP: accepts every syntax it knows
    uncompressed: StoreSCP  # NATIVE: accepts the uncompressed syntaxes only
    slow: StoreSCP  # SLOW: sleeps a second after each store
    refusing: StoreSCP  # REFUSER: refuses every association
    aborting: StoreSCP  # ABORTER: aborts on receiving a C-STORE request
    cutting: StoreSCP  # CUTTER: aborts while receiving a C-STORE request
    recording: PynetdicomSCP  # PYSCP
    down_port: int  # DOWN: nothing listens there

    @property
    def storescps(self) -> list[StoreSCP]:
        return [
            self.everything,
            self.uncompressed,
            self.slow,
            self.refusing,
            self.aborting,
            self.cutting,
        ]

    def config(self) -> dict[str, dict[str, object]]:
        ports = {scp.ae_title: scp.port for scp in self.storescps}
        ports |= {self.recording.ae_title: self.recording.port, "DOWN": self.down_port}
        config = {ae: {"host": LOCALHOST, "port": port} for ae, port in ports.items()}
        config["NATIVE"]["transcode"] = "as-stored"  # decompressing is test_retrieve_transcode's
        return config

    def forget(self) -> None:
        for scp in self.storescps:
            scp.forget()
        self.recording.forget()


@pytest.fixture(scope="module")
def destinations(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Destinations]:
    folder = tmp_path_factory.mktemp("destinations")
    started: list[StoreSCP] = []
    recording = PynetdicomSCP("PYSCP", free_tcp_port())
    try:
        for ae_title, options in [
            ("STORESCP", ["+xa"]),
            ("NATIVE", []),
            ("SLOW", ["+xa", "--sleep-after", "1"]),
            ("REFUSER", ["--refuse"]),
            ("ABORTER", ["+xa", "--abort-after"]),
            ("CUTTER", ["+xa", "--abort-during"]),
        ]:
            started.append(start_storescp(ae_title, folder / ae_title, *options))
        recording.start()
        yield Destinations(*started, recording, free_tcp_port())
    finally:
        recording.stop()
        for scp in started:
            scp.stop()


@dataclass(frozen=True)
class Archive:
    """A daemon whose archive holds ``content``, stored through C-STORE."""

    daemon: RunningDaemon
    content: ArchiveContent

    def archived(self) -> dict[str, Path]:
        """SOP Instance UID -> the archive's file of it."""
        view = archive_of(self.daemon)
        return {uid: view.root / path for uid, path in view.indexed().items()}


def start_archive(
    folder: Path, module_daemons: list[RunningDaemon], overrides: dict[str, Any]
) -> Archive:
    content = write_content(folder / "sent")
    daemon = start_daemon(folder, {"plugins": [archive_plugin()], **overrides})
    module_daemons.append(daemon)
    store_content(daemon, content.everything)
    return Archive(daemon, content)


@pytest.fixture(scope="module")
def archive(
    tmp_path_factory: pytest.TempPathFactory,
    module_daemons: list[RunningDaemon],
    destinations: Destinations,
) -> Archive:
    folder = tmp_path_factory.mktemp("move")
    return start_archive(folder, module_daemons, {"destinations": destinations.config()})


@pytest.fixture
def fresh(destinations: Destinations) -> Destinations:
    """The destinations, with nothing received yet."""
    destinations.forget()
    return destinations


# --------------------------------------------------------------------------------------------
# The responses


@dataclass(frozen=True)
class RetrieveResponse:
    """A C-MOVE or C-GET response: its status and sub-operation counts (None when absent)."""

    status: int
    remaining: int | None
    completed: int | None
    failed: int | None
    warning: int | None


_MESSAGE = re.compile(r"=+ INCOMING DIMSE MESSAGE =+\n(.*?)=+ END DIMSE MESSAGE =+", re.S)
_FIELD = re.compile(r"^[A-Z]: (\S.*?)\s*: (.*)$", re.M)


def _count(text: str | None) -> int | None:
    return None if text in (None, "none") else int(text)


def dcmtk_responses(output: str, message_type: str) -> list[RetrieveResponse]:
    """Every response of ``message_type`` (``C-MOVE RSP``) a dcmtk tool printed with ``-d``."""
    responses = []
    for message in _MESSAGE.findall(output):
        fields = dict(_FIELD.findall(message))
        if fields.get("Message Type") != message_type:
            continue
        responses.append(
            RetrieveResponse(
                int(fields["DIMSE Status"].split(":")[0], 16),
                _count(fields.get("Remaining Suboperations")),
                _count(fields.get("Completed Suboperations")),
                _count(fields.get("Failed Suboperations")),
                _count(fields.get("Warning Suboperations")),
            )
        )
    assert responses, f"no {message_type} in the output:\n{output}"
    return responses


def pynetdicom_response(status: Dataset) -> RetrieveResponse:
    return RetrieveResponse(
        int(status.Status),
        status.get("NumberOfRemainingSuboperations"),
        status.get("NumberOfCompletedSuboperations"),
        status.get("NumberOfFailedSuboperations"),
        status.get("NumberOfWarningSuboperations"),
    )


@dataclass(frozen=True)
class PynetdicomRetrieve:
    """Every response pynetdicom got for one C-MOVE or C-GET, and the final identifier."""

    responses: list[RetrieveResponse]
    identifier: Dataset | None

    @property
    def final(self) -> RetrieveResponse:
        return self.responses[-1]

    @property
    def failed_uids(self) -> list[str]:
        assert self.identifier is not None, "the final response has no identifier"
        value = self.identifier.FailedSOPInstanceUIDList
        return [str(uid) for uid in (value if isinstance(value, MultiValue) else [value])]


def collect(replies: Iterable[tuple[Dataset, Dataset | None]]) -> PynetdicomRetrieve:
    responses, identifier = [], None
    for status, reply_identifier in replies:
        assert "Status" in status, "the association ended before the final response"
        responses.append(pynetdicom_response(status))
        identifier = reply_identifier
    return PynetdicomRetrieve(responses, identifier)


def assert_progress(responses: Sequence[RetrieveResponse], total: int) -> None:
    """One pending response after every sub-operation but the last, counting down, and every
    pending response accounts for every instance."""
    *pending, _final = responses
    assert [r.status for r in pending] == [PENDING] * len(pending)
    assert [r.remaining for r in pending] == list(range(total - 1, 0, -1))
    for r in pending:
        assert r.remaining + r.completed + r.failed + r.warning == total, r


def assert_success(responses: Sequence[RetrieveResponse], total: int) -> None:
    assert_progress(responses, total)
    assert responses[-1] == RetrieveResponse(SUCCESS, None, total, 0, 0)


def assert_every_sub_operation_failed(final: RetrieveResponse, total: int) -> None:
    """The final response of a retrieve none of whose sub-operations succeeded: its counts,
    and a Failure status, A702 (PS3.4 C.4.2.2.1 and C.4.3.2: Warning means that one or more
    completed)."""
    assert final == RetrieveResponse(UNABLE_TO_PERFORM_SUB_OPERATIONS, None, 0, total, 0)


def uids_of(instances: Iterable[Instance]) -> set[str]:
    return {instance.sop_instance_uid for instance in instances}


def syntax_of(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)


def assert_delivered_as_sent(
    archive: Archive, received: dict[str, Path], expected: Sequence[Instance]
) -> None:
    """Exactly ``expected`` arrived, each with the data set bytes the archive keeps and was
    sent, in the syntax it was sent in."""
    assert set(received) == uids_of(expected)
    archived = archive.archived()
    for instance in expected:
        uid = instance.sop_instance_uid
        sent = dataset_bytes(instance.path)
        assert dataset_bytes(archived[uid]) == sent, f"archived {instance.path.name}"
        assert dataset_bytes(received[uid]) == sent, f"moved {instance.path.name}"
        assert syntax_of(received[uid]) == instance.transfer_syntax


# --------------------------------------------------------------------------------------------
# The requesters


def movescu(
    archive: Archive, model: str, keys: Sequence[str], destination: str, *options: str
) -> tuple[subprocess.CompletedProcess[str], list[RetrieveResponse]]:
    daemon = archive.daemon
    moved = run_dcmtk(
        "movescu", "-d", model, "-aec", daemon.ae_title, "-aem", destination,
        *options, *(arg for key in keys for arg in ("-k", key)),
        LOCALHOST, str(daemon.port),
        timeout=60,
    )  # fmt: skip
    return moved, dcmtk_responses(moved.stdout + moved.stderr, "C-MOVE RSP")


PATIENT_ROOT = PatientRootQueryRetrieveInformationModelMove
STUDY_ROOT = StudyRootQueryRetrieveInformationModelMove
MOVE_MODELS = {"-P": PATIENT_ROOT, "-S": STUDY_ROOT}


def keys(level: str, **values: str) -> list[str]:
    """``movescu -k`` keys: the level, then ``keyword=value`` for each of ``values``."""
    return [f"QueryRetrieveLevel={level}", *(f"{k}={v}" for k, v in values.items())]


def identifier(level: str, **values: str) -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = level
    for keyword, value in values.items():
        setattr(query, keyword, value)
    return query


def study_identifier(instances: Sequence[Instance]) -> Dataset:
    return identifier("STUDY", StudyInstanceUID=instances[0].study_uid)


def image_identifier(instance: Instance) -> Dataset:
    return identifier(
        "IMAGE",
        StudyInstanceUID=instance.study_uid,
        SeriesInstanceUID=instance.series_uid,
        SOPInstanceUID=instance.sop_instance_uid,
    )


def retrieve_ae(ae_title: str, models: Iterable[str]) -> AE:
    """A pynetdicom AE proposing the retrieve ``models`` and Verification."""
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    for abstract_syntax in (*models, Verification):
        ae.add_requested_context(abstract_syntax)
    return ae


@contextmanager
def associated(archive: Archive, ae: AE, **options: Any) -> Iterator[Association]:
    """``ae``'s association with the archive's daemon (``options`` go to ``associate``),
    released at the end unless it is over already."""
    daemon = archive.daemon
    assoc = ae.associate(LOCALHOST, daemon.port, ae_title=daemon.ae_title, **options)
    assert assoc.is_established
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


@contextmanager
def requester(archive: Archive, calling_ae_title: str = "MOVER") -> Iterator[Association]:
    """A pynetdicom association proposing both C-MOVE models and Verification."""
    with associated(archive, retrieve_ae(calling_ae_title, (PATIENT_ROOT, STUDY_ROOT))) as assoc:
        yield assoc


def assert_serves(assoc: Association) -> None:
    """The association still answers: a C-ECHO on it succeeds."""
    assert assoc.is_established
    assert assoc.send_c_echo().Status == SUCCESS


# --------------------------------------------------------------------------------------------
# Every instance, byte for byte


Selection = Callable[[ArchiveContent], tuple[str, list[str], list[Instance]]]
MOVES: dict[str, Selection] = {
    "study, study root": lambda c: (
        "-S",
        keys("STUDY", StudyInstanceUID=c.mixed[0].study_uid),
        c.mixed,
    ),
    "study, patient root": lambda c: (
        "-P",
        keys("STUDY", PatientID=c.mixed[0].patient_id, StudyInstanceUID=c.mixed[0].study_uid),
        c.mixed,
    ),
    "series": lambda c: (
        "-S",
        keys(
            "SERIES",
            StudyInstanceUID=c.ct_series[0].study_uid,
            SeriesInstanceUID=c.ct_series[0].series_uid,
        ),
        c.ct_series,
    ),
    "one compressed image": lambda c: (
        "-P",
        keys(
            "IMAGE",
            PatientID=c.mixed[3].patient_id,
            StudyInstanceUID=c.mixed[3].study_uid,
            SeriesInstanceUID=c.mixed[3].series_uid,
            SOPInstanceUID=c.mixed[3].sop_instance_uid,
        ),
        [c.mixed[3]],
    ),
    "patient": lambda c: ("-P", keys("PATIENT", PatientID="RETRIEVE1"), c.mixed + c.second),
    "two studies by a UID list": lambda c: (
        "-S",
        keys("STUDY", StudyInstanceUID=f"{c.mixed[0].study_uid}\\{c.second[0].study_uid}"),
        c.mixed + c.second,
    ),
    "two images by a UID list": lambda c: (
        "-S",
        keys(
            "IMAGE",
            StudyInstanceUID=c.ct_series[0].study_uid,
            SeriesInstanceUID=c.ct_series[0].series_uid,
            SOPInstanceUID=f"{c.ct_series[0].sop_instance_uid}\\{c.ct_series[2].sop_instance_uid}",
        ),
        [c.ct_series[0], c.ct_series[2]],
    ),
}


@pytest.mark.parametrize("selection", MOVES.values(), ids=MOVES.keys())
def test_movescu_moves_every_instance_as_archived(archive, fresh, selection):
    model, query, expected = selection(archive.content)
    moved, responses = movescu(archive, model, query, "STORESCP")
    assert moved.returncode == 0, moved.stdout[-3000:]
    assert_success(responses, len(expected))
    assert_delivered_as_sent(archive, fresh.everything.received(), expected)


def test_pynetdicom_move_counts_down_to_success_and_names_the_originator(archive, fresh):
    """The sub-operations carry the Move Originator (PS3.7 9.1.1.1) and the archived bytes."""
    expected = archive.content.mixed
    query = identifier(
        "STUDY", PatientID=expected[0].patient_id, StudyInstanceUID=expected[0].study_uid
    )
    with requester(archive, "ORIGINATOR") as assoc:
        result = collect(assoc.send_c_move(query, "PYSCP", PATIENT_ROOT, msg_id=7))
    assert_success(result.responses, len(expected))
    received = {r.sop_instance_uid: r for r in fresh.recording.received}
    assert set(received) == uids_of(expected)
    for instance in expected:
        arrived = received[instance.sop_instance_uid]
        assert arrived.move_originator_ae_title == "ORIGINATOR"
        assert arrived.move_originator_message_id == 7
        assert arrived.transfer_syntax == instance.transfer_syntax
        assert arrived.data_set == dataset_bytes(instance.path), instance.path.name


def test_instances_the_destination_takes_in_another_syntax_arrive_converted(archive, fresh):
    """storescp prefers explicit VR little endian: the daemon converts what it keeps in implicit
    VR or big endian, and the content survives."""
    expected = archive.content.converted
    moved, responses = movescu(
        archive, "-S", keys("STUDY", StudyInstanceUID=expected[0].study_uid), "STORESCP"
    )
    assert moved.returncode == 0, moved.stdout[-3000:]
    assert_success(responses, len(expected))
    received = fresh.everything.received()
    assert set(received) == uids_of(expected)
    archived = archive.archived()
    for instance in expected:
        assert dataset_bytes(archived[instance.sop_instance_uid]) == dataset_bytes(instance.path)
        arrived, original = dcmread(received[instance.sop_instance_uid]), dcmread(instance.path)
        assert arrived.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert without_pixels(arrived) == without_pixels(original)
        assert (arrived.pixel_array == original.pixel_array).all()


def without_pixels(dataset: Dataset) -> dict[int, object]:
    return {element.tag: element.value for element in dataset if element.tag != 0x7FE00010}


# --------------------------------------------------------------------------------------------
# Destinations that are unknown, unreachable or unwilling


def test_an_unknown_move_destination_is_refused_with_a801(archive, fresh):
    study = archive.content.mixed
    _, responses = movescu(
        archive, "-S", keys("STUDY", StudyInstanceUID=study[0].study_uid), "NOWHERE"
    )
    assert [response.status for response in responses] == [MOVE_DESTINATION_UNKNOWN]
    assert fresh.everything.received() == {}


@pytest.mark.parametrize(
    "destination",
    [
        pytest.param("DOWN", id="nothing listens"),
        pytest.param("REFUSER", id="association refused"),
    ],
)
def test_an_unreachable_destination_fails_every_instance_with_a702(archive, fresh, destination):
    expected = archive.content.mixed
    with requester(archive) as assoc:
        result = collect(assoc.send_c_move(study_identifier(expected), destination, STUDY_ROOT))
        assert_serves(assoc)
    assert result.responses[:-1] == []
    assert sorted(result.failed_uids) == sorted(uids_of(expected))
    assert_every_sub_operation_failed(result.final, len(expected))


def test_instances_the_destination_has_no_context_for_fail_one_by_one_with_b000(archive, fresh):
    """NATIVE accepts no compressed syntax and is configured ``transcode: as-stored``: those
    instances fail, the others arrive."""
    mixed = archive.content.mixed
    compressed = [instance for instance in mixed if not instance.uncompressed]
    with requester(archive) as assoc:
        result = collect(assoc.send_c_move(study_identifier(mixed), "NATIVE", STUDY_ROOT))
    assert_progress(result.responses, len(mixed))
    assert result.final == RetrieveResponse(
        WARNING, None, len(mixed) - len(compressed), len(compressed), 0
    )
    assert sorted(result.failed_uids) == sorted(uids_of(compressed))
    uncompressed = [instance for instance in mixed if instance.uncompressed]
    assert_delivered_as_sent(archive, fresh.uncompressed.received(), uncompressed)


# --------------------------------------------------------------------------------------------
# Cancel


def test_movescu_cancel_stops_the_move_with_fe00(archive, fresh):
    bulk = archive.content.bulk
    _, responses = movescu(
        archive, "-S", keys("STUDY", StudyInstanceUID=bulk[0].study_uid), "SLOW", "--cancel", "1"
    )
    *pending, final = responses
    assert [response.status for response in pending] == [PENDING] * len(pending)
    assert final.status == CANCELLED
    assert (final.failed, final.warning) == (0, 0)
    assert final.completed >= 1
    assert final.remaining > 0
    assert final.completed + final.remaining == BULK_SIZE
    assert len(fresh.slow.received()) == final.completed
    # the daemon serves the next move as usual
    image = bulk[-1]
    again, responses = movescu(
        archive,
        "-S",
        keys(
            "IMAGE",
            StudyInstanceUID=image.study_uid,
            SeriesInstanceUID=image.series_uid,
            SOPInstanceUID=image.sop_instance_uid,
        ),
        "STORESCP",
    )
    assert again.returncode == 0
    assert_success(responses, 1)
    assert_delivered_as_sent(archive, fresh.everything.received(), [image])


def test_a_cancelled_move_leaves_its_association_serving(archive, fresh):
    bulk = archive.content.bulk
    responses = []
    with requester(archive) as assoc:
        for status, _ in assoc.send_c_move(study_identifier(bulk), "SLOW", STUDY_ROOT, msg_id=5):
            responses.append(pynetdicom_response(status))
            if len(responses) == 1:
                assoc.send_c_cancel(5, query_model=STUDY_ROOT)
        assert_serves(assoc)
        again = collect(
            assoc.send_c_move(image_identifier(bulk[-1]), "STORESCP", STUDY_ROOT, msg_id=6)
        )
    final = responses[-1]
    assert final.status == CANCELLED
    assert 1 <= final.completed < BULK_SIZE
    assert final.completed + final.remaining == BULK_SIZE
    assert_success(again.responses, 1)
    assert_delivered_as_sent(archive, fresh.everything.received(), [bulk[-1]])


# --------------------------------------------------------------------------------------------
# Destinations that abort


ABORTING = [
    pytest.param("ABORTER", id="after the request"),
    pytest.param("CUTTER", id="during the request"),
]


def move_series_to(archive: Archive, destination: str) -> PynetdicomRetrieve:
    """Move the CT series of the mixed study; the association must still serve after it."""
    series = archive.content.ct_series
    query = identifier(
        "SERIES", StudyInstanceUID=series[0].study_uid, SeriesInstanceUID=series[0].series_uid
    )
    with requester(archive) as assoc:
        result = collect(assoc.send_c_move(query, destination, STUDY_ROOT))
        assert_serves(assoc)
    return result


@pytest.mark.parametrize("destination", ABORTING)
def test_a_destination_that_aborts_its_first_store_fails_every_instance(
    archive, fresh, destination
):
    series = archive.content.ct_series
    result = move_series_to(archive, destination)
    assert result.responses[:-1] == []
    assert sorted(result.failed_uids) == sorted(uids_of(series))
    assert_every_sub_operation_failed(result.final, len(series))


def test_a_destination_that_aborts_mid_move_fails_the_rest_with_b000(archive, fresh):
    bulk = archive.content.bulk
    fresh.recording.forget(abort_on_store=3)
    with requester(archive) as assoc:
        result = collect(assoc.send_c_move(study_identifier(bulk), "PYSCP", STUDY_ROOT))
        assert_serves(assoc)
    delivered = {received.sop_instance_uid for received in fresh.recording.received}
    assert len(delivered) == 2
    assert [r.remaining for r in result.responses[:-1]] == [BULK_SIZE - 1, BULK_SIZE - 2]
    assert result.final == RetrieveResponse(WARNING, None, 2, BULK_SIZE - 2, 0)
    assert sorted(result.failed_uids) == sorted(uids_of(bulk) - delivered)


# --------------------------------------------------------------------------------------------
# Identifiers that do not fit the model


LevelError = Callable[[ArchiveContent], tuple[str, Dataset]]
"""The model (``-P``, ``-S``) and an identifier that does not fit it."""
LEVEL_ERRORS: dict[str, LevelError] = {
    "PATIENT level in study root": lambda c: (
        "-S",
        identifier("PATIENT", PatientID=c.mixed[0].patient_id),
    ),
    "SERIES level without SeriesInstanceUID": lambda c: (
        "-S",
        identifier("SERIES", StudyInstanceUID=c.mixed[0].study_uid),
    ),
    "IMAGE level without SOPInstanceUID": lambda c: (
        "-P",
        identifier(
            "IMAGE",
            PatientID=c.ct_series[0].patient_id,
            StudyInstanceUID=c.ct_series[0].study_uid,
            SeriesInstanceUID=c.ct_series[0].series_uid,
        ),
    ),
    "STUDY level with an empty StudyInstanceUID": lambda c: (
        "-S",
        identifier("STUDY", StudyInstanceUID=""),
    ),
    "unknown level": lambda c: (
        "-S",
        identifier("FRAME", StudyInstanceUID=c.mixed[0].study_uid),
    ),
    "no level": lambda c: ("-P", identifier("", PatientID=c.mixed[0].patient_id)),
}


@pytest.mark.parametrize("level_error", LEVEL_ERRORS.values(), ids=LEVEL_ERRORS.keys())
def test_an_identifier_that_does_not_fit_the_model_is_refused_with_a900(
    archive, fresh, level_error
):
    root, query = level_error(archive.content)
    with requester(archive) as assoc:
        result = collect(assoc.send_c_move(query, "STORESCP", MOVE_MODELS[root]))
        assert_serves(assoc)
    assert [response.status for response in result.responses] == [
        IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS
    ]
    assert fresh.everything.received() == {}

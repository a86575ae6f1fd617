"""The client (`dicomd.client`) against real peers: dcmtk's storescp and dcmqrscp, and pynetdicom.

How the reactor runs: every test is a method of a
``twisted.trial.unittest.TestCase``, which pytest collects like any unittest
class, and trial runs the global reactor until the Deferred the method
returns has fired (``tests/test_archive_service.py`` does the same).  Each
scenario is an ``async def`` method, made into such a Deferred by
``@scenario`` (``Deferred.fromCoroutine``).  Trial also fails a test that
leaves a timer or a connection behind, so every test checks as well that
the client cleans up after itself.

The peers are real programs: dcmtk tools in subprocesses
(``tests.support.dcmtk.dcmtk_peer``) and pynetdicom AEs on threads of this
process, whose event handlers record what arrived.  Starting a peer blocks
the reactor thread for a moment before the scenario talks to it, which
nothing minds.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import socket
import struct
import tempfile
import threading
from collections.abc import Callable, Coroutine, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread, dcmwrite
from pydicom.data import get_testdata_file
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGExtended12Bit,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pynetdicom import AE, evt
from twisted.internet import defer, error, reactor, threads
from twisted.trial import unittest

from dicomd import uids
from dicomd.client import (
    AssociationAborted,
    AssociationRejected,
    AssociationTimeout,
    ClientAssociation,
    ClientSettings,
    DimseTimeout,
    FindFailed,
    NoAcceptedContext,
    associate,
    cfind,
    propose,
)
from dicomd.ul.pdu import (
    AAssociateAC,
    AAssociateRQ,
    PDUType,
    PresentationContextAC,
    UserInformation,
    decode_pdu,
    parse_header,
)
from tests.support.datasets import ct_dataset, dataset_bytes, write_ct_files
from tests.support.dcmtk import DcmtkPeer, dcmtk_peer, run_dcmtk
from tests.support.processes import LOCALHOST, free_tcp_port, reset_peak_memory, status_kib
from tests.support.pynetdicom_peers import pynetdicom_scp

CALLING_AE = "INTEROP"
ARCHIVE_AE = "ARCHIVE"
SUCCESS = 0x0000
CT_SMALL = Path(get_testdata_file("CT_small.dcm"))
MR_SMALL = Path(get_testdata_file("MR_small.dcm"))
LARGE_FILE_BYTES = 30 * 1024 * 1024
RSS_GROWTH_LIMIT_KIB = 6 * 1024
"""What storing the 30 MB file may add to our peak memory: a few MB, not the file."""


def scenario(
    test: Callable[[Any], Coroutine[Any, Any, None]],
) -> Callable[[Any], defer.Deferred[None]]:
    """An ``async def`` test method, as the Deferred trial waits for."""

    @functools.wraps(test)
    def run(self: Any) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(test(self))

    return run


def connect(
    port: int, called: str, *sop_classes: str, syntaxes: tuple[str, ...] = (), **settings: Any
) -> defer.Deferred[ClientAssociation]:
    """An association with the peer on ``port``, one presentation context per SOP class."""
    contexts = propose(sop_classes, syntaxes) if syntaxes else propose(sop_classes)
    options = ClientSettings(called, CALLING_AE, **settings)
    return associate(reactor, LOCALHOST, port, options, contexts)


async def failure_of(d: defer.Deferred[Any]) -> BaseException:
    """The exception ``d`` fails with; the test fails if it succeeds."""
    try:
        outcome = await d
    except Exception as failure:
        return failure
    raise AssertionError(f"expected a failure, got {outcome!r}")


class PeerTestCase(unittest.TestCase):
    """A scratch folder, and context managers (peers) that end with the test."""

    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="dicomd-interop-"))
        self.addCleanup(shutil.rmtree, self.folder, True)
        stack = ExitStack()
        # On a thread, so that the reactor goes on closing our side of the connections
        # while the peers stop (a dcmqrscp child waits for that close before it exits).
        self.addCleanup(threads.deferToThread, stack.close)
        self.enter = stack.enter_context

    def subfolder(self, name: str) -> Path:
        path = self.folder / name
        path.mkdir()
        return path


# -- dcmtk storescp ----------------------------------------------------------------------------


def write_large_ct(path: Path, pixel_bytes: int) -> Path:
    """A CT file with ``pixel_bytes`` of pixel data, written without holding them in memory."""
    dataset = ct_dataset(generate_uid(), generate_uid(), 1, rows=1, columns=1)
    del dataset.PixelData
    side = math.isqrt(pixel_bytes // 2) + 1
    dataset.Rows = dataset.Columns = side
    dcmwrite(path, dataset, enforce_file_format=True)
    length = side * side * 2
    chunk = os.urandom(1 << 20)
    with path.open("ab") as file:
        file.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length))
        for start in range(0, length, len(chunk)):
            file.write(chunk[: length - start])
    return path


class StorescpTests(PeerTestCase):
    """dcmtk's storescp (``TCP_NODELAY=1``), bit-preserving, and its fault options."""

    def storescp(self, *options: str) -> DcmtkPeer:
        received = self.subfolder("received")
        return self.enter(dcmtk_peer("storescp", self.folder, *options, "+B", "-od", str(received)))

    @scenario
    async def test_echo(self) -> None:
        peer = self.storescp()
        association = await connect(peer.port, "STORESCP", uids.VERIFICATION)
        assert await association.echo() == SUCCESS
        await association.release()

    @scenario
    async def test_store_streams_files_a_30_mb_one_too_in_bounded_memory(self) -> None:
        peer = self.storescp()
        files = write_ct_files(self.folder / "small", 3)
        large = write_large_ct(self.folder / "large.dcm", LARGE_FILE_BYTES)
        assert large.stat().st_size > LARGE_FILE_BYTES
        association = await connect(peer.port, "STORESCP", CTImageStorage)
        results = [await association.store(path) for path in files]
        reset_peak_memory("self")
        before = status_kib("self", "VmRSS")
        results.append(await association.store(large))
        growth = status_kib("self", "VmHWM") - before
        await association.release()

        assert [result.status for result in results] == [SUCCESS] * 4
        assert growth < RSS_GROWTH_LIMIT_KIB, f"peak RSS grew by {growth} KiB"
        for path, result in zip([*files, large], results, strict=True):
            (arrived,) = (peer.directory / "received").glob(f"*{result.sop_instance_uid}*")
            assert dataset_bytes(arrived) == dataset_bytes(path)

    @scenario
    async def test_refuse_is_a_rejection_with_its_numbers(self) -> None:
        peer = self.storescp("--refuse")
        rejected = await failure_of(connect(peer.port, "STORESCP", uids.VERIFICATION))
        assert isinstance(rejected, AssociationRejected)
        # permanent, by the service user, no reason given
        assert (rejected.result, rejected.source, rejected.reason) == (1, 1, 1)

    @scenario
    async def test_reject_only_turns_away_requestors_without_an_implementation_class_uid(
        self,
    ) -> None:
        """``--reject`` refuses an A-ASSOCIATE-RQ without one; ours always announces one."""
        peer = self.storescp("--reject")
        association = await connect(peer.port, "STORESCP", uids.VERIFICATION)
        assert await association.echo() == SUCCESS
        await association.release()

    async def store_is_aborted(self, option: str) -> None:
        peer = self.storescp(option)
        association = await connect(peer.port, "STORESCP", CTImageStorage)
        aborted = await failure_of(association.store(CT_SMALL))
        assert isinstance(aborted, AssociationAborted)
        assert not isinstance(aborted, AssociationTimeout)
        assert (aborted.source, aborted.reason) == (0, 0)  # storescp aborts as service user
        assert not association.is_established

    @scenario
    async def test_abort_after_the_request_fails_the_store(self) -> None:
        await self.store_is_aborted("--abort-after")

    @scenario
    async def test_abort_during_the_request_fails_the_store(self) -> None:
        await self.store_is_aborted("--abort-during")

    @scenario
    async def test_no_response_within_the_dimse_timeout(self) -> None:
        peer = self.storescp("--sleep-during", "3")
        association = await connect(peer.port, "STORESCP", CTImageStorage, dimse_timeout=1)
        timed_out = await failure_of(association.store(CT_SMALL))
        assert isinstance(timed_out, DimseTimeout)
        assert not association.is_established  # and we aborted it


# -- connecting, and our own ACSE timer ---------------------------------------------------------


@contextmanager
def full_backlog() -> Iterator[int]:
    """A port whose listen queue is full: the kernel drops further SYNs, so connecting hangs."""
    with socket.socket() as listener, ExitStack() as stack:
        listener.bind((LOCALHOST, 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(3):
            filler = stack.enter_context(socket.socket())
            filler.setblocking(False)
            filler.connect_ex((LOCALHOST, port))
        yield port


@contextmanager
def silent_listener() -> Iterator[int]:
    """A port the kernel accepts connections on, where nobody ever reads."""
    with socket.create_server((LOCALHOST, 0)) as listener:
        yield listener.getsockname()[1]


def read_pdu(connection: socket.socket) -> tuple[int, bytes]:
    header = connection.recv(6, socket.MSG_WAITALL)
    pdu_type, length = parse_header(header)
    return pdu_type, connection.recv(length, socket.MSG_WAITALL)


@contextmanager
def peer_that_never_confirms_release() -> Iterator[int]:
    """Accepts an association (every context, in its first syntax), then answers nothing.

    It closes the connection on A-ABORT, as the standard has an acceptor do.
    """
    listener = socket.create_server((LOCALHOST, 0))

    def serve() -> None:
        connection, _ = listener.accept()
        with connection:
            request = decode_pdu(*read_pdu(connection))
            assert isinstance(request, AAssociateRQ)
            accept = AAssociateAC(
                request.called_ae_title,
                request.calling_ae_title,
                tuple(
                    PresentationContextAC(context.context_id, 0, context.transfer_syntaxes[0])
                    for context in request.presentation_contexts
                ),
                UserInformation(max_length=16384, implementation_class_uid="1.2.3.4"),
            )
            connection.sendall(accept.encode())
            while True:  # A-RELEASE-RQ comes and goes unanswered
                header = connection.recv(6, socket.MSG_WAITALL)
                if not header or header[0] == PDUType.ABORT:
                    return
                connection.recv(parse_header(header)[1], socket.MSG_WAITALL)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    with listener:
        yield listener.getsockname()[1]
    server.join(10)


class ConnectingTests(PeerTestCase):
    """Twisted's connection errors pass through as they are; our ACSE timeout is its own error."""

    @scenario
    async def test_nothing_listening_is_twisteds_connection_refused(self) -> None:
        refused = await failure_of(connect(free_tcp_port(), "ANY-SCP", uids.VERIFICATION))
        assert isinstance(refused, error.ConnectionRefusedError)

    @scenario
    async def test_no_connection_within_the_acse_timeout_is_twisteds_timeout(self) -> None:
        port = self.enter(full_backlog())
        late = await failure_of(connect(port, "ANY-SCP", uids.VERIFICATION, acse_timeout=1))
        assert isinstance(late, error.TimeoutError)

    @scenario
    async def test_no_answer_to_the_request_is_an_association_timeout(self) -> None:
        port = self.enter(silent_listener())
        silence = await failure_of(connect(port, "ANY-SCP", uids.VERIFICATION, acse_timeout=1))
        assert isinstance(silence, AssociationTimeout)
        assert (silence.waiting_for, silence.timeout) == ("A-ASSOCIATE-RQ", 1)

    @scenario
    async def test_no_answer_to_the_release_is_an_association_timeout(self) -> None:
        port = self.enter(peer_that_never_confirms_release())
        association = await connect(port, "ANY-SCP", uids.VERIFICATION, acse_timeout=1)
        silence = await failure_of(association.release())
        assert isinstance(silence, AssociationTimeout)
        assert silence.waiting_for == "A-RELEASE-RQ"
        assert not association.is_established


# -- dcmtk dcmqrscp ----------------------------------------------------------------------------

DCMQRSCP_CONFIG = """\
NetworkTCPPort  = 104
MaxPDUSize      = 16384
MaxAssociations = 16

HostTable BEGIN
HostTable END

VendorTable BEGIN
VendorTable END

AETable BEGIN
{ae_title}   {storage}   RW (200, 1024mb)   ANY
AETable END
"""


def study_query(**keys: str) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.PatientID = ""
    identifier.StudyInstanceUID = ""
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    return identifier


class DcmqrscpTests(PeerTestCase):
    """dcmqrscp as ARCHIVE, loaded by dcmtk's storescu with three studies of two patients."""

    def setUp(self) -> None:
        super().setUp()
        storage = self.subfolder("storage")
        config = self.folder / "dcmqrscp.cfg"
        config.write_text(DCMQRSCP_CONFIG.format(ae_title=ARCHIVE_AE, storage=storage))
        self.peer = self.enter(dcmtk_peer("dcmqrscp", self.folder, "-c", str(config)))
        generated = write_ct_files(self.folder / "generated", 2)  # patient STORE1, a new study
        files = [CT_SMALL, MR_SMALL, *generated]
        loaded = run_dcmtk(
            "storescu", "-aec", ARCHIVE_AE, LOCALHOST, str(self.peer.port), *map(str, files)
        )
        assert loaded.returncode == 0, loaded.stdout + loaded.stderr
        self.studies = {str(dcmread(path).StudyInstanceUID) for path in files}
        self.patients = {"1CT1", "4MR1", "STORE1"}
        assert len(self.studies) == 3

    @scenario
    async def test_study_root_find_returns_the_stored_studies(self) -> None:
        association = await connect(self.peer.port, ARCHIVE_AE, uids.STUDY_ROOT_FIND)
        result = await association.find(uids.STUDY_ROOT_FIND, study_query())
        await association.release()
        assert result.status == SUCCESS
        assert {match.StudyInstanceUID for match in result.matches} == self.studies

    @scenario
    async def test_patient_root_find_returns_the_stored_patients(self) -> None:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "PATIENT"
        identifier.PatientID = ""
        identifier.PatientName = ""
        association = await connect(self.peer.port, ARCHIVE_AE, uids.PATIENT_ROOT_FIND)
        result = await association.find(uids.PATIENT_ROOT_FIND, identifier)
        await association.release()
        assert result.status == SUCCESS
        assert {match.PatientID for match in result.matches} == self.patients

    @scenario
    async def test_find_iter_yields_each_match(self) -> None:
        association = await connect(self.peer.port, ARCHIVE_AE, uids.STUDY_ROOT_FIND)
        async with association:
            found = [
                match.StudyInstanceUID
                async for match in association.find_iter(uids.STUDY_ROOT_FIND, study_query())
            ]
        assert sorted(found) == sorted(self.studies)
        assert not association.is_established  # released

    @scenario
    async def test_find_iter_raises_a_failure_status(self) -> None:
        """dcmqrscp cannot answer an image-level query without the unique keys above it."""
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "IMAGE"
        identifier.SOPInstanceUID = ""
        association = await connect(self.peer.port, ARCHIVE_AE, uids.STUDY_ROOT_FIND)
        with pytest.raises(FindFailed) as failed:
            async for _ in association.find_iter(uids.STUDY_ROOT_FIND, identifier):
                pass
        assert failed.value.status == 0xC000
        again = await association.find(uids.STUDY_ROOT_FIND, study_query())
        await association.release()
        assert len(again.matches) == 3  # a failure status leaves the association as it was

    @scenario
    async def test_cfind_associates_finds_and_releases(self) -> None:
        matches = await cfind(
            reactor,
            LOCALHOST,
            self.peer.port,
            ClientSettings(ARCHIVE_AE, CALLING_AE, acse_timeout=10),
            uids.STUDY_ROOT_FIND,
            study_query(PatientID="4MR1"),
        )
        assert [match.PatientID for match in matches] == ["4MR1"]

    @scenario
    async def test_cfind_raises_find_failed_on_a_failure_status(self) -> None:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "IMAGE"
        identifier.SOPInstanceUID = ""
        failed = await failure_of(
            cfind(
                reactor,
                LOCALHOST,
                self.peer.port,
                ClientSettings(ARCHIVE_AE, CALLING_AE),
                uids.STUDY_ROOT_FIND,
                identifier,
            )
        )
        assert isinstance(failed, FindFailed)
        assert failed.status == 0xC000


# -- pynetdicom --------------------------------------------------------------------------------


@contextmanager
def explicit_little_endian_scp(sop_classes: list[str], handlers: list[Any]) -> Iterator[int]:
    """A pynetdicom SCP that accepts ``sop_classes`` in explicit VR little endian only."""
    ae = AE(ae_title="PYNETDICOM")
    for sop_class in sop_classes:
        ae.add_supported_context(sop_class, [ExplicitVRLittleEndian])
    port = free_tcp_port()
    server = ae.start_server((LOCALHOST, port), block=False, evt_handlers=handlers)
    try:
        yield port
    finally:
        server.shutdown()


class Received:
    """What a pynetdicom store handler was given: data sets and the syntax they came in."""

    def __init__(self, status: int = SUCCESS) -> None:
        self.status = status
        self.datasets: list[Dataset] = []
        self.syntaxes: list[str] = []

    def __call__(self, event: Any) -> int:
        self.datasets.append(event.dataset)
        self.syntaxes.append(str(event.context.transfer_syntax))
        return self.status


def matches_of(*patient_ids: str) -> list[Dataset]:
    found = []
    for patient_id in patient_ids:
        match = Dataset()
        match.QueryRetrieveLevel = "STUDY"
        match.PatientID = patient_id
        found.append(match)
    return found


def as_dcmtk_converts_it(path: Path, option: str, folder: Path) -> Dataset:
    """``path`` converted by dcmtk's dcmconv (``+te``: explicit VR little endian), then read."""
    converted = folder / f"{path.stem}-dcmconv.dcm"
    done = run_dcmtk("dcmconv", option, str(path), str(converted))
    assert done.returncode == 0, done.stderr
    return dcmread(converted)


class PynetdicomTests(PeerTestCase):
    """pynetdicom SCPs on threads of this process, answering with the handlers each test gives."""

    def scp(self, contexts: list[str], handlers: list[Any]) -> int:
        return self.enter(pynetdicom_scp(contexts, handlers))

    @scenario
    async def test_store_arrives_as_the_file_holds_it(self) -> None:
        received = Received()
        port = self.scp([CTImageStorage], [(evt.EVT_C_STORE, received)])
        only_its_own = (ExplicitVRLittleEndian,)
        association = await connect(port, "PYNETDICOM", CTImageStorage, syntaxes=only_its_own)
        result = await association.store(CT_SMALL)
        await association.release()
        assert (result.status, result.sop_instance_uid) == (
            SUCCESS,
            dcmread(CT_SMALL).SOPInstanceUID,
        )
        assert received.syntaxes == [ExplicitVRLittleEndian]
        assert received.datasets == [dcmread(CT_SMALL)]

    @scenario
    async def test_a_store_failure_status_is_a_result(self) -> None:
        port = self.scp([CTImageStorage], [(evt.EVT_C_STORE, Received(status=0xA700))])
        association = await connect(port, "PYNETDICOM", CTImageStorage)
        result = await association.store(CT_SMALL)
        assert result.status == 0xA700  # out of resources, and the association goes on
        assert (await association.store(CT_SMALL)).status == 0xA700
        await association.release()

    @scenario
    async def test_find_collects_every_match(self) -> None:
        asked: list[Dataset] = []

        def answer(event: Any) -> Iterator[tuple[int, Dataset | None]]:
            asked.append(event.identifier)
            for match in matches_of("P1", "P2", "P3"):
                yield 0xFF00, match
            yield SUCCESS, None

        port = self.scp([uids.STUDY_ROOT_FIND], [(evt.EVT_C_FIND, answer)])
        seen: list[str] = []
        association = await connect(port, "PYNETDICOM", uids.STUDY_ROOT_FIND)
        operation = association.find(
            uids.STUDY_ROOT_FIND, study_query(), on_match=lambda m: seen.append(m.PatientID)
        )
        result = await operation
        await association.release()
        assert result.status == SUCCESS
        assert [match.PatientID for match in result.matches] == seen == ["P1", "P2", "P3"]
        assert asked == [study_query()]

    @scenario
    async def test_a_find_failure_status_is_a_result_and_find_failed_from_cfind(self) -> None:
        def refuse(event: Any) -> Iterator[tuple[Dataset, None]]:
            status = Dataset()
            status.Status = 0xA900
            status.ErrorComment = "no such key"
            yield status, None

        port = self.scp([uids.STUDY_ROOT_FIND], [(evt.EVT_C_FIND, refuse)])
        association = await connect(port, "PYNETDICOM", uids.STUDY_ROOT_FIND)
        result = await association.find(uids.STUDY_ROOT_FIND, study_query())
        await association.release()
        assert (result.status, result.error_comment, result.matches) == (0xA900, "no such key", [])

        failed = await failure_of(
            cfind(
                reactor,
                LOCALHOST,
                port,
                ClientSettings("PYNETDICOM", CALLING_AE),
                uids.STUDY_ROOT_FIND,
                study_query(),
            )
        )
        assert isinstance(failed, FindFailed)
        assert (failed.status, failed.error_comment) == (0xA900, "no such key")

    @scenario
    async def test_leaving_find_iter_early_sends_c_cancel(self) -> None:
        cancelled = threading.Event()

        def slowly(event: Any) -> Iterator[tuple[int, Dataset | None]]:
            """Two hundred matches, slowly; one at once for a query naming a patient."""
            if event.identifier.PatientID:
                yield 0xFF00, matches_of(event.identifier.PatientID)[0]
                yield SUCCESS, None
                return
            for number in range(200):
                if event.is_cancelled:
                    cancelled.set()
                    yield 0xFE00, None
                    return
                yield 0xFF00, matches_of(f"P{number}")[0]
                threading.Event().wait(0.02)
            yield SUCCESS, None

        port = self.scp([uids.STUDY_ROOT_FIND], [(evt.EVT_C_FIND, slowly)])
        association = await connect(port, "PYNETDICOM", uids.STUDY_ROOT_FIND)
        taken = []
        async for match in association.find_iter(uids.STUDY_ROOT_FIND, study_query()):
            taken.append(match.PatientID)
            if len(taken) == 2:
                break
        assert await threads.deferToThread(cancelled.wait, 10)
        assert taken == ["P0", "P1"]
        again = association.find_iter(uids.STUDY_ROOT_FIND, study_query(PatientID="P7"))
        assert [match.PatientID async for match in again] == ["P7"]  # after the cancelled one
        await association.release()

    @scenario
    async def test_cancelling_a_find_still_waiting_its_turn_sends_nothing(self) -> None:
        """With one operation at a time, a second find waits; cancelled, it never leaves."""
        asked: list[str] = []
        cancelled = threading.Event()

        def answer(event: Any) -> Iterator[tuple[int, Dataset | None]]:
            asked.append(event.identifier.PatientID)
            for number in range(200):
                if event.is_cancelled:
                    cancelled.set()
                    yield 0xFE00, None
                    return
                yield 0xFF00, matches_of(f"P{number}")[0]
                threading.Event().wait(0.02)
            yield SUCCESS, None

        port = self.scp([uids.STUDY_ROOT_FIND], [(evt.EVT_C_FIND, answer)])
        association = await connect(port, "PYNETDICOM", uids.STUDY_ROOT_FIND)
        answering: defer.Deferred[None] = defer.Deferred()
        first = association.find(
            uids.STUDY_ROOT_FIND,
            study_query(PatientID="FIRST"),
            on_match=lambda match: answering.called or answering.callback(None),
        )
        second = association.find(uids.STUDY_ROOT_FIND, study_query(PatientID="SECOND"))
        second.cancel()
        assert isinstance(await failure_of(second), defer.CancelledError)
        await answering  # a C-CANCEL pynetdicom gets before its handler starts goes unseen
        first.cancel()
        assert isinstance(await failure_of(first), defer.CancelledError)
        assert await threads.deferToThread(cancelled.wait, 10)  # C-CANCEL seen, FE00 sent
        await association.release()
        assert asked == ["FIRST"]

    @scenario
    async def test_leaving_async_with_by_an_exception_aborts(self) -> None:
        aborted = threading.Event()
        port = self.scp([uids.VERIFICATION], [(evt.EVT_ABORTED, lambda event: aborted.set())])
        association = await connect(port, "PYNETDICOM", uids.VERIFICATION)
        with pytest.raises(KeyError):
            async with association:
                assert await association.echo() == SUCCESS
                raise KeyError("the caller's own trouble")
        assert not association.is_established
        assert await threads.deferToThread(aborted.wait, 10)

    @scenario
    async def test_an_operations_window_pynetdicom_does_not_grant_falls_back_to_one(self) -> None:
        """pynetdicom answers an asynchronous operations window with 1 and 1, whatever its
        ``EVT_ASYNC_OPS`` handler says: eight stores asked for at once go one at a time."""
        received = Received()
        handlers = [(evt.EVT_C_STORE, received), (evt.EVT_ASYNC_OPS, lambda event: (4, 4))]
        port = self.scp([CTImageStorage], handlers)
        files = write_ct_files(self.folder / "eight", 8)
        association = await connect(port, "PYNETDICOM", CTImageStorage, max_operations=4)
        assert association.max_outstanding == 1
        results = await defer.gatherResults([association.store(path) for path in files])
        await association.release()
        assert [result.status for result in results] == [SUCCESS] * 8
        assert sorted(ds.SOPInstanceUID for ds in received.datasets) == sorted(
            dcmread(path).SOPInstanceUID for path in files
        )

    @scenario
    async def test_big_endian_and_implicit_files_arrive_converted_and_equal(self) -> None:
        received = Received()
        port = self.enter(
            explicit_little_endian_scp([MRImageStorage], [(evt.EVT_C_STORE, received)])
        )
        sources = [
            Path(get_testdata_file(name))
            for name in ("MR_small_bigendian.dcm", "MR_small_implicit.dcm")
        ]
        syntaxes = (ExplicitVRBigEndian, ImplicitVRLittleEndian, ExplicitVRLittleEndian)
        association = await connect(port, "PYNETDICOM", MRImageStorage, syntaxes=syntaxes)
        results = [await association.store(path) for path in sources]
        await association.release()
        assert [result.status for result in results] == [SUCCESS, SUCCESS]
        assert received.syntaxes == [ExplicitVRLittleEndian] * 2
        for source, arrived in zip(sources, received.datasets, strict=True):
            # dcmtk swaps the bytes of OW pixel data from big endian; pydicom alone does not
            assert arrived == as_dcmtk_converts_it(source, "+te", self.folder)
        assert received.datasets[1] == dcmread(sources[1])

    @scenario
    async def test_a_compressed_file_the_peer_cannot_take_is_no_accepted_context(self) -> None:
        received = Received()
        port = self.enter(
            explicit_little_endian_scp(
                [SecondaryCaptureImageStorage], [(evt.EVT_C_STORE, received)]
            )
        )
        jpeg = Path(get_testdata_file("JPEG-lossy.dcm"))
        association = await connect(
            port,
            "PYNETDICOM",
            SecondaryCaptureImageStorage,
            syntaxes=(JPEGExtended12Bit, ExplicitVRLittleEndian),
        )
        with pytest.raises(NoAcceptedContext, match=JPEGExtended12Bit):
            await association.store(jpeg)
        await association.release()
        assert received.datasets == []

"""The association requestor (SCU): every operation returns a Deferred.

`associate` opens a connection, proposes presentation contexts and fires
with a `ClientAssociation` once the peer accepts, or fails with an exception
that carries the peer's answer (`AssociationRejected`, `AssociationAborted`).
The association object sends DIMSE requests and matches responses to them by
message ID; a failure status is a result, not an exception.  `cfind` is the
one-shot form (associate, find, release) that does raise, `FindFailed`, on a
failure status.

Failing to connect is not an association error: Twisted's own
`twisted.internet.error.ConnectionRefusedError`, `TimeoutError` (no
connection within ``acse_timeout``) and `DNSLookupError` pass through
unchanged.  Once connected, every failure is an `AssociationError`, and our
own timers are told apart from what the peer did: `AssociationTimeout` (no
answer to A-ASSOCIATE-RQ or A-RELEASE-RQ) and `DimseTimeout` (no response).
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from types import TracebackType
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.filewriter import correct_ambiguous_vr
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import (
    IDelayedCall,
    IOpenSSLClientConnectionCreator,
    IReactorTCP,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from dicomd import part10, uids
from dicomd.dimse.command import DATA_SET_PRESENT, Command, CommandError, CommandField
from dicomd.dimse.datasets import DataSetError, decode_dataset, encode_dataset, even_length
from dicomd.dimse.messages import AssemblyError, CommandReceived, DataReceived, MessageAssembler
from dicomd.dimse.negotiation import AcceptedContext
from dicomd.dimse.outbox import FileData, Outbox
from dicomd.part10 import IncomingFile, file_meta
from dicomd.uids import is_encapsulated
from dicomd.ul.fsm import State, StateMachine
from dicomd.ul.pdu import (
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    AbortReason,
    AbortSource,
    AsyncOperationsWindow,
    PDataTF,
    PresentationContextRQ,
    RoleSelection,
    UserInformation,
)
from dicomd.ul.protocol import UpperLayerProtocol
from dicomd.ul.timer import Timer

DEFAULT_SYNTAXES = (uids.EXPLICIT_VR_LITTLE_ENDIAN, uids.IMPLICIT_VR_LITTLE_ENDIAN)


class AssociationError(Exception):
    """The association could not be opened or ended abnormally."""


class AssociationRejected(AssociationError):
    """The peer answered A-ASSOCIATE-RJ."""

    def __init__(self, result: int, source: int, reason: int) -> None:
        super().__init__(f"association rejected: result {result}, source {source}, reason {reason}")
        self.result, self.source, self.reason = result, source, reason


class AssociationAborted(AssociationError):
    """An A-ABORT (from the peer, or from the provider when the connection broke)."""

    def __init__(self, source: int, reason: int) -> None:
        super().__init__(f"association aborted: source {source}, reason {reason}")
        self.source, self.reason = source, reason


class AssociationTimeout(AssociationAborted):
    """Our ACSE timer ran out: the peer did not answer A-ASSOCIATE-RQ or A-RELEASE-RQ in time.

    We then aborted the association ourselves (A-ABORT, source 0 service
    user, reason 0), so this is an `AssociationAborted` with those numbers
    too: code that only asks whether the association was aborted keeps
    working, and code that asks why can tell our timeout from a peer's
    A-ABORT, which carries the same numbers.
    """

    def __init__(self, waiting_for: str, timeout: float) -> None:
        super().__init__(AbortSource.SERVICE_USER, AbortReason.NOT_SPECIFIED)
        self.waiting_for, self.timeout = waiting_for, timeout

    def __str__(self) -> str:
        return f"no answer to {self.waiting_for} within {self.timeout:g} s; association aborted"


class NoAcceptedContext(AssociationError):
    """The peer accepted no presentation context for the abstract syntax asked for."""


class DimseTimeout(AssociationError):
    """No DIMSE response within the DIMSE timeout; the association was aborted."""


class FindFailed(Exception):
    """A C-FIND ended with a failure status (A700, A900, Cxxx...).

    Raised by `cfind` and `ClientAssociation.find_iter`, whose callers have
    no result to look at; `ClientAssociation.find` gives the status in its
    `FindResult` instead.
    """

    def __init__(self, status: int, error_comment: str | None = None) -> None:
        comment = f": {error_comment}" if error_comment else ""
        super().__init__(f"C-FIND failed with status 0x{status:04X}{comment}")
        self.status, self.error_comment = status, error_comment


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """Options of one association request."""

    called_ae_title: str
    calling_ae_title: str = "DICOMD"
    max_pdu_length: int = 262144
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_idle_timeout: float = 300.0
    max_operations: int = 1
    """Requests in flight at once; above 1 we propose an asynchronous operations window."""


@dataclass(frozen=True, slots=True)
class FindResult:
    """The end of a C-FIND: its final status and every match received."""

    status: int
    matches: list[Dataset]
    error_comment: str | None = None


@dataclass(frozen=True, slots=True)
class StoreResult:
    """The answer to one C-STORE (a failure status is a result too)."""

    status: int
    sop_instance_uid: str
    error_comment: str | None = None


@dataclass(frozen=True, slots=True)
class RetrieveResult:
    """The end of a C-MOVE or C-GET: final status and sub-operation counts."""

    status: int
    completed: int
    failed: int
    warning: int
    failed_sop_instance_uids: tuple[str, ...] = ()
    error_comment: str | None = None


@dataclass(frozen=True, slots=True)
class RetrieveProgress:
    """One pending C-MOVE or C-GET response: the sub-operations so far."""

    remaining: int
    completed: int
    failed: int
    warning: int


class _Operation:
    """One request waiting for its response(s)."""

    def __init__(self, context: AcceptedContext) -> None:
        self.context = context
        self.done: defer.Deferred[Any] = defer.Deferred()
        self.timer: IDelayedCall | None = None

    def response(self, command: Command, data: bytes | None) -> Any:
        """Take one response: what ``done`` fires with when it is the last, else `_MORE`."""
        return command


class _FindOperation(_Operation):
    def __init__(
        self, context: AcceptedContext, on_match: Callable[[Dataset], object] | None
    ) -> None:
        super().__init__(context)
        self.on_match = on_match
        self.matches: list[Dataset] = []

    def response(self, command: Command, data: bytes | None) -> Any:
        if command.status in _PENDING:
            if data is not None:
                match = decode_dataset(data, self.context.transfer_syntax)
                self.matches.append(match)
                if self.on_match is not None:
                    self.on_match(match)
            return _MORE
        return FindResult(command.status, self.matches, command.error_comment)


class _RetrieveOperation(_Operation):
    def __init__(
        self, context: AcceptedContext, on_progress: Callable[[RetrieveProgress], object] | None
    ) -> None:
        super().__init__(context)
        self.on_progress = on_progress

    def response(self, command: Command, data: bytes | None) -> Any:
        counts = (
            command.number_of_completed_suboperations or 0,
            command.number_of_failed_suboperations or 0,
            command.number_of_warning_suboperations or 0,
        )
        if command.status in _PENDING:
            if self.on_progress is not None:
                remaining = command.number_of_remaining_suboperations or 0
                self.on_progress(RetrieveProgress(remaining, *counts))
            return _MORE
        failed: tuple[str, ...] = ()
        if data:
            listed = decode_dataset(data, self.context.transfer_syntax).get(
                "FailedSOPInstanceUIDList", []
            )
            failed = (listed,) if isinstance(listed, str) else tuple(listed)
        return RetrieveResult(command.status, *counts, failed, command.error_comment)


_PENDING = frozenset({uids.Status.PENDING, uids.Status.PENDING_WARNING})
_MORE = object()
"""What `_Operation.response` returns while more responses are to come."""


class ClientAssociation:
    """The requestor's service user for one association."""

    log = Logger()

    def __init__(
        self,
        protocol: UpperLayerProtocol,
        request: AAssociateRQ,
        settings: ClientSettings,
    ) -> None:
        self.protocol = protocol
        self.request = request
        self.settings = settings
        self.established: defer.Deferred[ClientAssociation] = defer.Deferred()
        self._released: defer.Deferred[None] | None = None
        self.contexts: dict[int, AcceptedContext] = {}
        self.peer_max_pdu_length = 0
        self.max_outstanding = 1
        self._assembler = MessageAssembler()
        self._message_ids = count(1)
        self._operations: dict[int, _Operation] = {}
        self._waiting_room: deque[tuple[int, bytes, bytes | FileData | None]] = deque()
        self._response: tuple[Command, list[bytes]] | None = None
        self._receive_folder: Path | None = None
        self._on_instance: Callable[[Path], int | None] | None = None
        self._incoming: IncomingFile | None = None
        self._incoming_request: tuple[int, Command] | None = None
        self._acse_timer = Timer(protocol.clock, settings.acse_timeout, self._acse_expired)
        self._outbox: Outbox | None = None

    @property
    def machine(self) -> StateMachine:
        return self.protocol.machine

    def begin(self) -> None:
        """A-ASSOCIATE request (Evt1): the machine sends it once the transport connects."""
        self._acse_timer.start()
        self.machine.associate_request(self.request)

    # -- operations ------------------------------------------------------

    def echo(self) -> defer.Deferred[int]:
        """C-ECHO; fires with the response status."""
        context = self._context_for(uids.VERIFICATION)
        command = Command(
            command_field=CommandField.C_ECHO_RQ,
            message_id=self._next_id(),
            affected_sop_class_uid=uids.VERIFICATION,
        )
        d = self._invoke(_Operation(context), command, None)
        return d.addCallback(lambda response: response.status)

    def find(
        self,
        sop_class_uid: str,
        identifier: Dataset,
        on_match: Callable[[Dataset], object] | None = None,
        priority: int = 0,
    ) -> FindOperation:
        """C-FIND; each match goes to ``on_match`` as it arrives, and all of them to the result."""
        context = self._context_for(sop_class_uid)
        message_id = self._next_id()
        command = Command(
            command_field=CommandField.C_FIND_RQ,
            message_id=message_id,
            affected_sop_class_uid=sop_class_uid,
            priority=priority,
            command_data_set_type=DATA_SET_PRESENT,
        )
        data = encode_dataset(identifier, context.transfer_syntax)
        d = self._invoke(_FindOperation(context, on_match), command, data)
        return FindOperation(d, lambda: self._cancel(context, message_id))

    async def find_iter(
        self, sop_class_uid: str, identifier: Dataset, priority: int = 0
    ) -> AsyncIterator[Dataset]:
        """C-FIND as an asynchronous iterator of matches, for ``async for`` in a coroutine.

        The request goes out when iteration begins; iteration ends with the
        final status, or raises `FindFailed` for a failure status.  Leaving
        the loop early (``break``, an exception) sends C-CANCEL when the
        iterator is closed: at once in CPython, deterministically with
        ``contextlib.aclosing``.  Matches arriving faster than the loop
        takes them wait in memory.
        """
        arrivals: defer.DeferredQueue[Dataset | _FindEnded] = defer.DeferredQueue()
        operation = self.find(sop_class_uid, identifier, arrivals.put, priority)
        operation.result.addBoth(lambda outcome: arrivals.put(_FindEnded(outcome)))
        ended = False
        try:
            while not isinstance(arrival := await arrivals.get(), _FindEnded):
                yield arrival
            ended = True
            _raise_for_failure(arrival.outcome)
        finally:
            if not ended:
                operation.cancel()

    def store(
        self,
        source: str | Path | Dataset,
        priority: int = 0,
        move_originator: tuple[str, int] | None = None,
    ) -> defer.Deferred[StoreResult]:
        """C-STORE a Part 10 file (streamed from disk) or a Dataset.

        A file goes as it is when the peer accepted its transfer syntax; an
        uncompressed one is re-encoded for another uncompressed syntax the
        peer accepted; otherwise `NoAcceptedContext` says why not.  A data
        set is taken to be in the syntax of its ``file_meta`` (explicit VR
        little endian without one) and is not changed.  ``move_originator``
        (AE title, message ID) marks a C-STORE made for a C-MOVE.
        """
        context, command, data = store_request(self.contexts.values(), source, priority)
        command.message_id = self._next_id()
        sop_instance = command.affected_sop_instance_uid or ""
        if move_originator is not None:
            ae_title, message_id = move_originator
            command.move_originator_application_entity_title = ae_title
            command.move_originator_message_id = message_id
        d = self._invoke(_Operation(context), command, data)
        return d.addCallback(
            lambda response: StoreResult(response.status, sop_instance, response.error_comment)
        )

    def move(
        self,
        sop_class_uid: str,
        identifier: Dataset,
        destination: str,
        on_progress: Callable[[RetrieveProgress], object] | None = None,
        priority: int = 0,
    ) -> defer.Deferred[RetrieveResult]:
        """C-MOVE: the peer sends what ``identifier`` selects to the AE ``destination``."""
        return self._retrieve(
            CommandField.C_MOVE_RQ, sop_class_uid, identifier, on_progress, priority, destination
        )

    def get(
        self,
        sop_class_uid: str,
        identifier: Dataset,
        folder: str | Path,
        on_progress: Callable[[RetrieveProgress], object] | None = None,
        priority: int = 0,
        on_instance: Callable[[Path], int | None] | None = None,
    ) -> defer.Deferred[RetrieveResult]:
        """C-GET: the peer sends what ``identifier`` selects back over this association.

        Each instance lands in ``folder`` as ``<SOP Instance UID>.dcm``, a
        Part 10 file with the data set as it was sent, and is then handed to
        ``on_instance``, whose answer (an int; None means success) is the
        status of that C-STORE.  The association must have been opened with
        `retrieve_contexts` and the SCP role for the storage classes expected
        (``scp_roles`` of `associate`).
        """
        self._receive_folder = Path(folder)
        self._on_instance = on_instance
        return self._retrieve(
            CommandField.C_GET_RQ, sop_class_uid, identifier, on_progress, priority
        )

    def _retrieve(
        self,
        field: int,
        sop_class_uid: str,
        identifier: Dataset,
        on_progress: Callable[[RetrieveProgress], object] | None,
        priority: int,
        destination: str | None = None,
    ) -> defer.Deferred[RetrieveResult]:
        context = self._context_for(sop_class_uid)
        command = Command(
            command_field=field,
            message_id=self._next_id(),
            affected_sop_class_uid=sop_class_uid,
            priority=priority,
            move_destination=destination,
            command_data_set_type=DATA_SET_PRESENT,
        )
        data = encode_dataset(identifier, context.transfer_syntax)
        return self._invoke(_RetrieveOperation(context, on_progress), command, data)

    async def __aenter__(self) -> ClientAssociation:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Leaving ``async with`` releases the association, or aborts it if the block raised.

        An exception means the work stopped half-way (a cancelled Deferred,
        a failure the caller did not expect): an A-ABORT ends it at once,
        where a release could wait ``acse_timeout`` for a peer in trouble.
        """
        if not self.machine.is_established:
            return
        if error is None:
            await self.release()
        else:
            self.abort()

    def release(self) -> defer.Deferred[None]:
        """A-RELEASE; fires once the peer confirms."""
        self._released = defer.Deferred()
        self._acse_timer.start()
        self.machine.release_request()
        return self._released

    def abort(self) -> None:
        """A-ABORT, as the service user."""
        if self.machine.state not in (State.STA1, State.STA13):
            self.machine.abort_request()
        self._fail_all(AssociationAborted(AbortSource.SERVICE_USER, AbortReason.NOT_SPECIFIED))

    def _next_id(self) -> int:
        return next(self._message_ids) & 0xFFFF or next(self._message_ids) & 0xFFFF

    def _context_for(self, abstract_syntax: str) -> AcceptedContext:
        for context in self.contexts.values():
            if context.abstract_syntax == abstract_syntax:
                return context
        raise NoAcceptedContext(f"no accepted presentation context for {abstract_syntax}")

    def _invoke(
        self, operation: _Operation, command: Command, data: bytes | FileData | None
    ) -> defer.Deferred[Any]:
        """Send now if the asynchronous operations window allows it, else when it does."""
        self._operations[command.message_id] = operation
        message = (operation.context.context_id, command.encode(), data)
        if self._in_flight() <= self.max_outstanding or not self.max_outstanding:
            self._send(command.message_id, message)
        else:
            self._waiting_room.append((command.message_id, message[1], data))
        return operation.done

    def _in_flight(self) -> int:
        return len(self._operations) - len(self._waiting_room)

    def _send(self, message_id: int, message: tuple[int, bytes, bytes | FileData | None]) -> None:
        operation = self._operations[message_id]
        operation.timer = self.protocol.clock.callLater(
            self.settings.dimse_timeout, self._dimse_expired, message_id
        )
        assert self._outbox is not None, "operations start once the association is accepted"
        self._outbox.send(*message)

    def _cancel(self, context: AcceptedContext, message_id: int) -> None:
        if message_id not in self._operations:
            return
        for waiting in self._waiting_room:
            if waiting[0] == message_id:
                # Never sent, so nothing to cancel on the wire: it ends as the peer would end it.
                self._waiting_room.remove(waiting)
                cancelled = Command(
                    command_field=CommandField.C_FIND_RSP,
                    message_id_being_responded_to=message_id,
                    status=uids.Status.CANCEL,
                )
                self._responded(cancelled, None)
                return
        command = Command(
            command_field=CommandField.C_CANCEL_RQ, message_id_being_responded_to=message_id
        )
        assert self._outbox is not None
        self._outbox.send(context.context_id, command.encode(), None)

    # -- user port of the state machine ----------------------------------

    def associate_accepted(self, accept: AAssociateAC) -> None:
        self._acse_timer.stop()
        proposed = {c.context_id: c.abstract_syntax for c in self.request.presentation_contexts}
        self.contexts = {
            c.context_id: AcceptedContext(c.context_id, proposed[c.context_id], c.transfer_syntax)
            for c in accept.presentation_contexts
            if c.result == 0 and c.context_id in proposed
        }
        info = accept.user_information
        self.peer_max_pdu_length = info.max_length or 0
        window = info.async_operations_window
        if window is not None and self.settings.max_operations > 1:
            performed = window.max_performed
            self.max_outstanding = (
                self.settings.max_operations
                if performed == 0
                else min(performed, self.settings.max_operations)
            )
        self._outbox = Outbox(
            self.machine.data_request,
            self.protocol.transport,
            lambda: self.peer_max_pdu_length,
            self._unreadable,
        )
        self.established.callback(self)

    def associate_rejected(self, reject: AAssociateRJ) -> None:
        self._acse_timer.stop()
        self.established.errback(AssociationRejected(reject.result, reject.source, reject.reason))

    def associate_indication(self, request: AAssociateRQ) -> None:
        raise AssertionError("a requestor does not receive A-ASSOCIATE-RQ")

    def data_indication(self, data: PDataTF) -> None:
        try:
            for pdv in data.pdvs:
                for event in self._assembler.feed(pdv.context_id, pdv.control, pdv.data):
                    self._message_event(event)
        except (AssemblyError, CommandError, DataSetError) as error:
            self.log.warn("aborting: {error}", error=str(error))
            self.machine.abort_request(
                AbortSource.SERVICE_PROVIDER, AbortReason.INVALID_PDU_PARAMETER_VALUE
            )
            self._fail_all(AssociationAborted(AbortSource.SERVICE_PROVIDER, 6))

    def _message_event(self, event: CommandReceived | DataReceived) -> None:
        if isinstance(event, CommandReceived):
            command = event.command
            if not command.is_response:
                self._request_received(event.context_id, command)
            elif command.has_data_set:
                self._response = (command, [])
            else:
                self._responded(command, None)
            return
        if self._incoming is not None:
            self._incoming.write(event.data)
            if event.last:
                self._store_received()
            return
        assert self._response is not None, "the assembler yields data only after a command"
        self._response[1].append(event.data)
        if event.last:
            command, chunks = self._response
            self._response = None
            self._responded(command, b"".join(chunks))

    def _request_received(self, context_id: int, command: Command) -> None:
        """A request from the peer: only the C-STOREs of a C-GET are expected."""
        context = self.contexts.get(context_id)
        folder = self._receive_folder
        if command.command_field != CommandField.C_STORE_RQ or folder is None or context is None:
            self.log.warn(
                "unexpected request {field:04X} from the peer", field=command.command_field
            )
            self.machine.abort_request(AbortSource.SERVICE_USER, AbortReason.NOT_SPECIFIED)
            self._fail_all(AssociationAborted(AbortSource.SERVICE_USER, AbortReason.NOT_SPECIFIED))
            return
        meta = file_meta(
            command.affected_sop_class_uid or "",
            command.affected_sop_instance_uid or "",
            context.transfer_syntax,
            self.request.called_ae_title,
        )
        self._incoming = IncomingFile(folder, meta)
        self._incoming_request = (context_id, command)

    def _hand_over(self, path: Path) -> int:
        """The C-GET caller's say on an instance it received; an error in it is C000."""
        if self._on_instance is None:
            return uids.Status.SUCCESS
        try:
            answer = self._on_instance(path)
        except Exception:
            self.log.failure("the C-GET instance handler failed on {path}", path=str(path))
            return uids.Status.CANNOT_UNDERSTAND
        return uids.Status.SUCCESS if answer is None else int(answer)

    def _store_received(self) -> None:
        """The last fragment of a C-GET's instance: keep the file and answer the C-STORE."""
        received = self._incoming.finish()  # type: ignore[union-attr]
        context_id, command = self._incoming_request  # type: ignore[misc]
        self._incoming = None
        status = uids.Status.SUCCESS
        if received.error is not None:
            status = uids.Status.OUT_OF_RESOURCES
        else:
            target = received.path.with_name(f"{_file_name(command.affected_sop_instance_uid)}.dcm")
            try:
                received.path.replace(target)
            except OSError:
                received.remove()
                status = uids.Status.OUT_OF_RESOURCES
            else:
                status = self._hand_over(target)
        response = Command(
            command_field=CommandField.C_STORE_RSP,
            message_id_being_responded_to=command.message_id,
            affected_sop_class_uid=command.affected_sop_class_uid,
            affected_sop_instance_uid=command.affected_sop_instance_uid,
            status=status,
        )
        assert self._outbox is not None
        self._outbox.send(context_id, response.encode(), None)

    def _responded(self, command: Command, data: bytes | None) -> None:
        message_id = command.message_id_being_responded_to
        operation = self._operations.get(message_id)  # type: ignore[arg-type]
        if operation is None:
            self.log.warn("response to unknown message {id}", id=message_id)
            return
        if operation.timer is not None and operation.timer.active():
            operation.timer.reset(self.settings.dimse_timeout)
        outcome = operation.response(command, data)
        if outcome is _MORE:
            return
        if operation.timer is not None and operation.timer.active():
            operation.timer.cancel()
        del self._operations[message_id]  # type: ignore[arg-type]
        self._admit_waiting()
        # Last: whatever the caller does when told (abort, even) finds the books closed.
        operation.done.callback(outcome)

    def _admit_waiting(self) -> None:
        while self._waiting_room and (
            self._in_flight() < self.max_outstanding or not self.max_outstanding
        ):
            message_id, command, data = self._waiting_room.popleft()
            context_id = self._operations[message_id].context.context_id
            self._send(message_id, (context_id, command, data))

    def release_indication(self, collision: bool) -> None:
        self.machine.release_response()

    def release_confirmation(self) -> None:
        self._acse_timer.stop()
        if self._released is not None and not self._released.called:
            self._released.callback(None)

    def abort_indication(self, source: int, reason: int) -> None:
        self._acse_timer.stop()
        self._fail_all(AssociationAborted(source, reason))

    # -- timers and failures ---------------------------------------------

    def _connected(self, protocol: object) -> defer.Deferred[ClientAssociation]:
        """The connection is open and A-ASSOCIATE-RQ sent: ``acse_timeout`` for the answer."""
        if self.machine.state is State.STA5:
            self._acse_timer.start()
        return self.established

    def _abandon(self, failure: Failure) -> Failure:
        """The connection never opened: stop the ACSE timer and pass the error on unchanged."""
        self._acse_timer.stop()
        return failure

    def _unreadable(self, error: OSError) -> None:
        """A file being sent could not be read to its end: its message cannot be finished."""
        self.log.error("aborting: {error}", error=str(error))
        self.abort()

    def _fail_all(self, error: Exception) -> None:
        if self._outbox is not None:
            self._outbox.close()
        operations, self._operations = self._operations, {}
        self._waiting_room.clear()
        for operation in operations.values():
            if operation.timer is not None and operation.timer.active():
                operation.timer.cancel()
            operation.done.errback(error)
        for d in (self.established, self._released):
            if d is not None and not d.called:
                d.errback(error)

    def _acse_expired(self) -> None:
        """No answer in time: abort, unless still connecting, which the endpoint times itself."""
        if self.machine.state is State.STA4:
            return
        waiting_for = "A-RELEASE-RQ" if self._released is not None else "A-ASSOCIATE-RQ"
        self.machine.abort_request()
        self._fail_all(AssociationTimeout(waiting_for, self.settings.acse_timeout))

    def _dimse_expired(self, message_id: int) -> None:
        """Abort first, so that whoever hears of the timeout finds the association gone."""
        operation = self._operations.pop(message_id, None)
        if operation is None:
            return
        self.abort()
        operation.done.errback(
            DimseTimeout(
                f"no response to message {message_id} within {self.settings.dimse_timeout}s"
            )
        )


@dataclass(frozen=True, slots=True)
class _FindEnded:
    """The last thing `find_iter` takes from its queue: the `FindResult`, or why there is none."""

    outcome: FindResult | Failure


def _raise_for_failure(outcome: FindResult | Failure) -> FindResult:
    """The result of a C-FIND, raising what stopped it or `FindFailed` for a failure status."""
    if isinstance(outcome, Failure):
        outcome.raiseException()
    if uids.status_category(outcome.status) == "failure":
        raise FindFailed(outcome.status, outcome.error_comment)
    return outcome


class FindOperation:
    """A C-FIND in progress: a Deferred of its `FindResult`, and a way to cancel it."""

    def __init__(self, result: defer.Deferred[FindResult], cancel: Callable[[], None]) -> None:
        self.result = result
        self._cancel = cancel

    def cancel(self) -> None:
        """Send C-CANCEL; the result then ends with status FE00 (or what the peer answers)."""
        self._cancel()


_WORD_SIZES = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
"""Bytes per value of the VRs whose values pydicom keeps as the bytes it read."""


def _reencoded(dataset: Dataset, syntax: str, target: str) -> bytes:
    """``dataset``, read in ``syntax``, encoded for ``target``; ``dataset`` itself is not changed.

    pydicom writes OW, OF, OL, OD and OV values back as the bytes it read,
    whatever the byte order asked for; between little and big endian, a
    copy gets the bytes of each of their words reversed first.  UN values
    (whose word size nobody knows) go as they are.
    """
    little_endian = syntax != uids.EXPLICIT_VR_BIG_ENDIAN
    if little_endian != (target != uids.EXPLICIT_VR_BIG_ENDIAN):
        dataset = copy.deepcopy(dataset)
        correct_ambiguous_vr(dataset, little_endian)  # OB or OW, by Bits Allocated
        for element in dataset.iterall():
            size = _WORD_SIZES.get(element.VR)
            if size and isinstance(element.value, bytes) and len(element.value) % size == 0:
                element.value = _reverse_words(element.value, size)
    return encode_dataset(dataset, target)


def _data_set_of(path: Path, offset: int, length: int) -> bytes:
    with path.open("rb") as file:
        file.seek(offset)
        return file.read(length)


def _reverse_words(value: bytes, size: int) -> bytes:
    swapped = bytearray(len(value))
    for offset in range(size):
        swapped[offset::size] = value[size - 1 - offset :: size]
    return bytes(swapped)


def _syntax_of(dataset: Dataset) -> str:
    meta = getattr(dataset, "file_meta", None)
    syntax = getattr(meta, "TransferSyntaxUID", None)
    return str(syntax) if syntax else uids.EXPLICIT_VR_LITTLE_ENDIAN


def store_request(
    contexts: Iterable[AcceptedContext], source: str | Path | Dataset, priority: int = 0
) -> tuple[AcceptedContext, Command, bytes | FileData]:
    """The C-STORE-RQ (without its message ID) and data for ``source`` on one of ``contexts``.

    A file goes as it is when a context has its transfer syntax, streamed
    from disk (a deflated one of odd length is read and padded with a NUL);
    an uncompressed one is re-encoded for another uncompressed syntax;
    otherwise `NoAcceptedContext` says why not.  A data set is taken
    to be in the syntax of its ``file_meta`` (explicit VR little endian
    without one).
    """
    if isinstance(source, Dataset):
        sop_class, sop_instance = str(source.SOPClassUID), str(source.SOPInstanceUID)
        syntax = _syntax_of(source)
        context = _context_for_syntax(contexts, sop_class, syntax)
        data: bytes | FileData = _reencoded(source, syntax, context.transfer_syntax)
    else:
        header = part10.read_header(source)
        sop_class, sop_instance = header.sop_class_uid, header.sop_instance_uid
        context = _context_for_syntax(contexts, sop_class, header.transfer_syntax)
        if context.transfer_syntax != header.transfer_syntax:
            data = _reencoded(dcmread(source), header.transfer_syntax, context.transfer_syntax)
        elif header.data_set_length % 2:  # a deflated stream that ends on an odd byte
            data = even_length(
                _data_set_of(Path(source), header.data_set_offset, header.data_set_length)
            )
        else:
            data = FileData(Path(source), header.data_set_offset, header.data_set_length)
    command = Command(
        command_field=CommandField.C_STORE_RQ,
        affected_sop_class_uid=sop_class,
        affected_sop_instance_uid=sop_instance,
        priority=priority,
        command_data_set_type=DATA_SET_PRESENT,
    )
    return context, command, data


def _context_for_syntax(
    contexts: Iterable[AcceptedContext], abstract_syntax: str, syntax: str
) -> AcceptedContext:
    """The context to send data in ``syntax`` on: the same syntax, or any uncompressed one."""
    fallback = None
    for context in contexts:
        if context.abstract_syntax != abstract_syntax:
            continue
        if context.transfer_syntax == syntax:
            return context
        if not is_encapsulated(syntax) and not is_encapsulated(context.transfer_syntax):
            fallback = fallback or context
    if fallback is None:
        raise NoAcceptedContext(
            f"the peer accepted no presentation context for {abstract_syntax}"
            f" in {syntax} or one it can be converted to"
        )
    return fallback


def _file_name(uid: str | None) -> str:
    """A SOP Instance UID as a file name: digits and dots only."""
    cleaned = "".join(c for c in (uid or "") if c.isdigit() or c == ".").strip(".")
    return cleaned or "unnamed"


_MAX_SYNTAXES_PER_CONTEXT = 32
"""dcmtk refuses an association whose contexts propose more transfer syntaxes than that."""


def retrieve_contexts(
    model: str, storage_classes: Iterable[str] = ()
) -> tuple[PresentationContextRQ, ...]:
    """The contexts of a C-MOVE or C-GET association: the model, and for C-GET the storage
    classes to receive, each offering the current transfer syntaxes we keep as they come."""
    others = sorted(uids.ALL_TRANSFER_SYNTAXES - set(DEFAULT_SYNTAXES))
    syntaxes = (*DEFAULT_SYNTAXES, *others)[:_MAX_SYNTAXES_PER_CONTEXT]
    contexts = [PresentationContextRQ(1, model, DEFAULT_SYNTAXES)]
    for index, sop_class in enumerate(dict.fromkeys(storage_classes), start=1):
        contexts.append(PresentationContextRQ(2 * index + 1, sop_class, syntaxes))
    return tuple(contexts)


def storage_contexts(kinds: Iterable[tuple[str, str]]) -> tuple[PresentationContextRQ, ...]:
    """One context for each (SOP class, transfer syntax) among the instances to send.

    Each proposes the instances' own syntax first, so that they can go as
    they are; an uncompressed syntax also offers the other uncompressed ones,
    which `ClientAssociation.store` converts to when the peer prefers them (a
    compressed one cannot be converted).
    """
    contexts = []
    for index, (sop_class, syntax) in enumerate(dict.fromkeys(kinds)):
        syntaxes = [syntax]
        if not is_encapsulated(syntax):
            syntaxes += [other for other in DEFAULT_SYNTAXES if other != syntax]
        contexts.append(PresentationContextRQ(2 * index + 1, sop_class, tuple(syntaxes)))
    return tuple(contexts)


def propose(
    abstract_syntaxes: Sequence[str], transfer_syntaxes: Sequence[str] = DEFAULT_SYNTAXES
) -> tuple[PresentationContextRQ, ...]:
    """One presentation context per abstract syntax, with odd context IDs (PS3.8 9.3.2.2)."""
    return tuple(
        PresentationContextRQ(2 * index + 1, syntax, tuple(transfer_syntaxes))
        for index, syntax in enumerate(abstract_syntaxes)
    )


def association_request(
    settings: ClientSettings,
    contexts: Sequence[PresentationContextRQ],
    scp_roles: Iterable[str] = (),
) -> AAssociateRQ:
    """The A-ASSOCIATE-RQ for ``settings``, announcing our implementation.

    ``scp_roles`` are the SOP classes we take the SCP role for (PS3.7
    D.3.3.4): the storage classes a C-GET is to bring back.
    """
    return AAssociateRQ(
        called_ae_title=settings.called_ae_title,
        calling_ae_title=settings.calling_ae_title,
        presentation_contexts=tuple(contexts),
        user_information=UserInformation(
            max_length=settings.max_pdu_length,
            implementation_class_uid=uids.IMPLEMENTATION_CLASS_UID,
            implementation_version_name=uids.IMPLEMENTATION_VERSION_NAME,
            async_operations_window=(
                AsyncOperationsWindow(settings.max_operations, 1)
                if settings.max_operations > 1
                else None
            ),
            role_selections=tuple(RoleSelection(uid, False, True) for uid in scp_roles),
        ),
    )


def requestor_protocol(
    clock: IReactorTime,
    settings: ClientSettings,
    contexts: Sequence[PresentationContextRQ],
    scp_roles: Iterable[str] = (),
) -> tuple[UpperLayerProtocol, ClientAssociation]:
    """A protocol ready to be connected, whose association starts on connection."""
    request = association_request(settings, contexts, scp_roles)
    protocol = UpperLayerProtocol(
        lambda p: ClientAssociation(p, request, settings),
        clock,
        requestor=True,
        max_pdu_length=settings.max_pdu_length,
        artim_timeout=settings.acse_timeout,
        idle_timeout=settings.network_idle_timeout,
    )
    association: ClientAssociation = protocol.user  # type: ignore[assignment]
    association.begin()
    return protocol, association


def associate(
    reactor: IReactorTCP,
    host: str,
    port: int,
    settings: ClientSettings,
    contexts: Sequence[PresentationContextRQ] = propose([uids.VERIFICATION]),
    scp_roles: Iterable[str] = (),
    tls: IOpenSSLClientConnectionCreator | None = None,
) -> defer.Deferred[ClientAssociation]:
    """Connect and negotiate; fires with the association or fails with the reason.

    ``scp_roles`` (for C-GET) are the SOP classes we take the SCP role for.
    ``tls`` (from `twisted.internet.ssl.optionsForClientTLS`) runs the
    association over DICOM TLS (PS3.15 B.1).

    Connecting may take ``settings.acse_timeout``, and so may the answer to
    the request once connected.  A connection that cannot be made fails with
    Twisted's error as it is (`ConnectionRefusedError`, `TimeoutError`,
    `DNSLookupError` from `twisted.internet.error`); after that, the failure
    is `AssociationRejected`, `AssociationAborted` or `AssociationTimeout`.
    """
    protocol, association = requestor_protocol(reactor, settings, contexts, scp_roles)  # type: ignore[arg-type]
    endpoint: IStreamClientEndpoint = HostnameEndpoint(
        reactor, host, port, timeout=settings.acse_timeout
    )
    if tls is not None:
        endpoint = wrapClientTLS(tls, endpoint)
    connected = connectProtocol(endpoint, protocol)
    connected.addErrback(association._abandon)
    return connected.addCallback(association._connected)


def cfind(
    reactor: IReactorTCP,
    host: str,
    port: int,
    called_ae_title: str,
    calling_ae_title: str,
    sop_class_uid: str,
    identifier: Dataset,
    **settings: Any,
) -> defer.Deferred[list[Dataset]]:
    """One C-FIND on an association of its own: associate, find, release; fires with the matches.

    ``settings`` are the other fields of `ClientSettings` (``acse_timeout``,
    ``max_pdu_length``...).  A failure status raises `FindFailed` (after the
    release); any other failure is that of `associate` or of the find, and
    the association is aborted.  Cancelling the Deferred aborts it too.
    """
    options = ClientSettings(called_ae_title, calling_ae_title, **settings)

    async def one_shot() -> list[Dataset]:
        association = await associate(reactor, host, port, options, propose([sop_class_uid]))
        async with association:
            outcome = await association.find(sop_class_uid, identifier).result
        return _raise_for_failure(outcome).matches

    return defer.ensureDeferred(one_shot())

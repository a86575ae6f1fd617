"""The association requestor (SCU): every operation returns a Deferred.

`associate` opens a connection, proposes presentation contexts and fires
with a `ClientAssociation` once the peer accepts, or fails with an exception
that carries the peer's answer (`AssociationRejected`, `AssociationAborted`).
The association object sends DIMSE requests and matches responses to them by
message ID; a failure status is a result, not an exception.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.internet.interfaces import IDelayedCall, IReactorTCP, IReactorTime
from twisted.logger import Logger

from dicomd import part10, uids
from dicomd.dimse import (
    DATA_SET_PRESENT,
    AssemblyError,
    Command,
    CommandError,
    CommandField,
    CommandReceived,
    DataReceived,
    DataSetError,
    MessageAssembler,
    decode_dataset,
    encode_dataset,
)
from dicomd.fsm import State, StateMachine
from dicomd.negotiation import AcceptedContext
from dicomd.outbox import FileData, Outbox
from dicomd.pdu import (
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    AbortReason,
    AbortSource,
    AsyncOperationsWindow,
    PDataTF,
    PresentationContextRQ,
    UserInformation,
)
from dicomd.protocol import UpperLayerProtocol
from dicomd.uids import is_encapsulated

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


class NoAcceptedContext(AssociationError):
    """The peer accepted no presentation context for the abstract syntax asked for."""


class DimseTimeout(AssociationError):
    """No DIMSE response within the DIMSE timeout; the association was aborted."""


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


class _Operation:
    """One request waiting for its response(s)."""

    def __init__(self, context: AcceptedContext) -> None:
        self.context = context
        self.done: defer.Deferred[Any] = defer.Deferred()
        self.timer: IDelayedCall | None = None

    def response(self, command: Command, data: bytes | None) -> bool:
        """Take one response; True when it is the last."""
        self.done.callback(command)
        return True


class _FindOperation(_Operation):
    def __init__(
        self, context: AcceptedContext, on_match: Callable[[Dataset], object] | None
    ) -> None:
        super().__init__(context)
        self.on_match = on_match
        self.matches: list[Dataset] = []

    def response(self, command: Command, data: bytes | None) -> bool:
        if command.status in _PENDING:
            if data is not None:
                match = decode_dataset(data, self.context.transfer_syntax)
                self.matches.append(match)
                if self.on_match is not None:
                    self.on_match(match)
            return False
        self.done.callback(FindResult(command.status, self.matches, command.error_comment))
        return True


_PENDING = frozenset({uids.Status.PENDING, uids.Status.PENDING_WARNING})


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
        self._acse_timer: IDelayedCall | None = None
        self._outbox: Outbox | None = None

    @property
    def machine(self) -> StateMachine:
        return self.protocol.machine

    def begin(self) -> None:
        """A-ASSOCIATE request (Evt1): the machine sends it once the transport connects."""
        self._start_acse_timer()
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

    def store(self, source: str | Path | Dataset, priority: int = 0) -> defer.Deferred[StoreResult]:
        """C-STORE a Part 10 file (streamed from disk) or a Dataset.

        A file goes as it is when the peer accepted its transfer syntax; an
        uncompressed one is re-encoded for another uncompressed syntax the
        peer accepted; otherwise `NoAcceptedContext` says why not.
        """
        if isinstance(source, Dataset):
            sop_class, sop_instance = str(source.SOPClassUID), str(source.SOPInstanceUID)
            syntax = _syntax_of(source)
            context = self._context_for_syntax(sop_class, syntax)
            data: bytes | FileData = encode_dataset(source, context.transfer_syntax)
        else:
            header = part10.read_header(source)
            sop_class, sop_instance = header.sop_class_uid, header.sop_instance_uid
            context = self._context_for_syntax(sop_class, header.transfer_syntax)
            if context.transfer_syntax == header.transfer_syntax:
                data = FileData(Path(source), header.data_set_offset, header.data_set_length)
            else:
                data = encode_dataset(dcmread(source), context.transfer_syntax)
        command = Command(
            command_field=CommandField.C_STORE_RQ,
            message_id=self._next_id(),
            affected_sop_class_uid=sop_class,
            affected_sop_instance_uid=sop_instance,
            priority=priority,
            command_data_set_type=DATA_SET_PRESENT,
        )
        d = self._invoke(_Operation(context), command, data)
        return d.addCallback(
            lambda response: StoreResult(response.status, sop_instance, response.error_comment)
        )

    def release(self) -> defer.Deferred[None]:
        """A-RELEASE; fires once the peer confirms."""
        self._released = defer.Deferred()
        self._start_acse_timer()
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

    def _context_for_syntax(self, abstract_syntax: str, syntax: str) -> AcceptedContext:
        """The context to send data in ``syntax`` on: the same syntax, or any uncompressed one."""
        fallback = None
        for context in self.contexts.values():
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
        command = Command(
            command_field=CommandField.C_CANCEL_RQ, message_id_being_responded_to=message_id
        )
        assert self._outbox is not None
        self._outbox.send(context.context_id, command.encode(), None)

    # -- user port of the state machine ----------------------------------

    def associate_accepted(self, accept: AAssociateAC) -> None:
        self._stop_acse_timer()
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
        self._stop_acse_timer()
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
            if event.command.has_data_set:
                self._response = (event.command, [])
            else:
                self._responded(event.command, None)
            return
        assert self._response is not None, "the assembler yields data only after a command"
        self._response[1].append(event.data)
        if event.last:
            command, chunks = self._response
            self._response = None
            self._responded(command, b"".join(chunks))

    def _responded(self, command: Command, data: bytes | None) -> None:
        message_id = command.message_id_being_responded_to
        operation = self._operations.get(message_id)  # type: ignore[arg-type]
        if operation is None:
            self.log.warn("response to unknown message {id}", id=message_id)
            return
        if operation.timer is not None and operation.timer.active():
            operation.timer.reset(self.settings.dimse_timeout)
        if operation.response(command, data):
            if operation.timer is not None and operation.timer.active():
                operation.timer.cancel()
            del self._operations[message_id]  # type: ignore[arg-type]
            self._admit_waiting()

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
        self._stop_acse_timer()
        if self._released is not None and not self._released.called:
            self._released.callback(None)

    def abort_indication(self, source: int, reason: int) -> None:
        self._stop_acse_timer()
        self._fail_all(AssociationAborted(source, reason))

    # -- timers and failures ---------------------------------------------

    def _abandon(self, failure: object) -> object:
        """The connection never opened: stop the ACSE timer and pass the error on."""
        self._stop_acse_timer()
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

    def _start_acse_timer(self) -> None:
        self._stop_acse_timer()
        self._acse_timer = self.protocol.clock.callLater(
            self.settings.acse_timeout, self._acse_expired
        )

    def _stop_acse_timer(self) -> None:
        if self._acse_timer is not None and self._acse_timer.active():
            self._acse_timer.cancel()
        self._acse_timer = None

    def _acse_expired(self) -> None:
        self._acse_timer = None
        self.machine.abort_request()
        self._fail_all(AssociationAborted(AbortSource.SERVICE_USER, AbortReason.NOT_SPECIFIED))

    def _dimse_expired(self, message_id: int) -> None:
        operation = self._operations.pop(message_id, None)
        if operation is None:
            return
        operation.done.errback(
            DimseTimeout(
                f"no response to message {message_id} within {self.settings.dimse_timeout}s"
            )
        )
        self.abort()


class FindOperation:
    """A C-FIND in progress: a Deferred of its `FindResult`, and a way to cancel it."""

    def __init__(self, result: defer.Deferred[FindResult], cancel: Callable[[], None]) -> None:
        self.result = result
        self._cancel = cancel

    def cancel(self) -> None:
        """Send C-CANCEL; the result then ends with status FE00 (or what the peer answers)."""
        self._cancel()


def _syntax_of(dataset: Dataset) -> str:
    meta = getattr(dataset, "file_meta", None)
    syntax = getattr(meta, "TransferSyntaxUID", None)
    return str(syntax) if syntax else uids.EXPLICIT_VR_LITTLE_ENDIAN


def propose(
    abstract_syntaxes: Sequence[str], transfer_syntaxes: Sequence[str] = DEFAULT_SYNTAXES
) -> tuple[PresentationContextRQ, ...]:
    """One presentation context per abstract syntax, with odd context IDs (PS3.8 9.3.2.2)."""
    return tuple(
        PresentationContextRQ(2 * index + 1, syntax, tuple(transfer_syntaxes))
        for index, syntax in enumerate(abstract_syntaxes)
    )


def association_request(
    settings: ClientSettings, contexts: Sequence[PresentationContextRQ]
) -> AAssociateRQ:
    """The A-ASSOCIATE-RQ for ``settings``, announcing our implementation."""
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
        ),
    )


def requestor_protocol(
    clock: IReactorTime, settings: ClientSettings, contexts: Sequence[PresentationContextRQ]
) -> tuple[UpperLayerProtocol, ClientAssociation]:
    """A protocol ready to be connected, whose association starts on connection."""
    request = association_request(settings, contexts)
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
) -> defer.Deferred[ClientAssociation]:
    """Connect and negotiate; fires with the association or fails with the reason."""
    protocol, association = requestor_protocol(reactor, settings, contexts)  # type: ignore[arg-type]
    endpoint = HostnameEndpoint(reactor, host, port, timeout=settings.acse_timeout)
    connected = connectProtocol(endpoint, protocol)
    connected.addErrback(association._abandon)
    return connected.addCallback(lambda _: association.established)

"""One DIMSE association, whatever role opened it: messages in, messages out, requests and teardown.

Both roles do the same DIMSE work once the association is up.  Each receives
messages (a command, then perhaps a data set streamed into a sink), answers
the requests it serves, sends requests of its own and matches their
responses by message ID, and ends everything in flight when the association
ends.  The acceptor (`dicomd.node.acceptor`) and the requestor
(`dicomd.scu.requestor`) are thin subclasses that add how the association
starts and which services answer the peer's requests: a fix or a feature
here reaches both.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from dicomd import uids
from dicomd.dimse.command import Command, CommandError, CommandField
from dicomd.dimse.errors import (
    AssociationAborted,
    AssociationError,
    AssociationReleased,
    DimseTimeout,
    NoAcceptedContext,
    TLSHandshakeFailed,
)
from dicomd.dimse.messages import (
    DEFAULT_MAX_COMMAND_LENGTH,
    AssemblyError,
    CommandReceived,
    DataReceived,
    MessageAssembler,
)
from dicomd.dimse.negotiation import AcceptedContext
from dicomd.dimse.outbox import FileData, Outbox, Pieces
from dicomd.dimse.work import Worker
from dicomd.ul.fsm import State, StateMachine
from dicomd.ul.pdu import AbortReason, AbortSource, PDataTF
from dicomd.ul.timer import Timer

if TYPE_CHECKING:
    from pydicom import Dataset

    from dicomd.ul.protocol import UpperLayerProtocol

_CAN_SEND: Final = (State.STA6, State.STA8)
_KNOWN_COMMANDS: Final = frozenset(int(field) for field in CommandField)
_PENDING: Final = frozenset({uids.Status.PENDING, uids.Status.PENDING_WARNING})

DEFAULT_MAX_DATA_LENGTH: Final = 1 << 20
"""Identifiers and matches are a few KiB at most; one MiB leaves room and bounds memory."""

_OUT_OF_RESOURCES: Final = {
    CommandField.C_FIND_RQ: uids.Status.OUT_OF_RESOURCES,
    CommandField.C_MOVE_RQ: uids.Status.OUT_OF_RESOURCES_UNABLE_TO_CALCULATE_MATCHES,
    CommandField.C_GET_RQ: uids.Status.OUT_OF_RESOURCES_UNABLE_TO_CALCULATE_MATCHES,
}


def out_of_resources(command_field: int) -> int:
    """The failure a request gets whose identifier outgrows a limit (PS3.4 C.4.1.1.4,
    C.4.2.1.5, C.4.3.1.4)."""
    return _OUT_OF_RESOURCES.get(command_field, uids.Status.OUT_OF_RESOURCES)


Data = bytes | Pieces | FileData | None
"""A message's data set as it leaves: bytes, pieces, a byte range of a file, or none."""


@dataclass(frozen=True, slots=True)
class Request:
    """A complete DIMSE request from the peer, as a service sees it.

    ``data`` is what the service's data sink made of the data set: the bytes
    themselves by default, a file for C-STORE; None without a data set.
    """

    context: AcceptedContext
    command: Command
    data: Any


class DataSink(Protocol):
    """Where the fragments of one data set go while they arrive."""

    def write(self, data: bytes) -> None: ...

    def finish(self) -> Any:
        """The last fragment is in: what the receiver gets as the data."""

    def discard(self) -> None:
        """The association ended before the last fragment."""


@dataclass(frozen=True, slots=True)
class Oversized:
    """What a `MemorySink` holds when the data set outgrew it: only its length."""

    length: int
    limit: int

    def __str__(self) -> str:
        return f"a data set of {self.length} bytes, more than the limit of {self.limit}"


class MemorySink:
    """Keeps a data set in memory, up to ``limit`` bytes: identifiers, query matches.

    Past the limit the rest is read and dropped, so that the association
    stays in step, and `finish` answers `Oversized` instead of the bytes.
    """

    def __init__(self, limit: int = 0) -> None:
        self.limit = limit
        self.length = 0
        self._chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.length += len(data)
        if self.limit and self.length > self.limit:
            self._chunks.clear()
        else:
            self._chunks.append(data)

    def finish(self) -> bytes | Oversized:
        if self.limit and self.length > self.limit:
            return Oversized(self.length, self.limit)
        return b"".join(self._chunks)

    def discard(self) -> None:
        self._chunks.clear()


class DiscardSink:
    """Reads a data set off the association without keeping it, for a request we refuse."""

    def write(self, data: bytes) -> None:
        pass

    def finish(self) -> None:
        return None

    def discard(self) -> None:
        pass


class Service(Protocol):
    """What answers one kind of request from the peer (C-ECHO, C-STORE, C-FIND...)."""

    operations: frozenset[int]

    def open_sink(
        self, association: DimseAssociation, context: AcceptedContext, command: Command
    ) -> DataSink:
        """Where the data set of ``command`` goes as it arrives (a `MemorySink` for most)."""

    def handle(
        self, association: DimseAssociation, request: Request
    ) -> defer.Deferred[None] | None:
        """Answer ``request`` through ``association.respond``."""


class Operation:
    """A request of ours waiting for its response: one response ends it.

    Subclasses that take several responses (C-FIND matches, C-MOVE progress)
    answer `MORE` from `response` until the last.
    """

    def __init__(self, context: AcceptedContext) -> None:
        self.context = context

    def response(self, command: Command, data: bytes | None) -> Any:
        """Take one response: the operation's outcome when it is the last, else `MORE`."""
        return command


MORE: Final = object()
"""What `Operation.response` answers while more responses are to come."""


def is_pending(command: Command) -> bool:
    """Whether a response says more are to come (FF00, FF01)."""
    return command.status in _PENDING


@dataclass(slots=True, eq=False)
class _Outstanding:
    """A request of ours that was sent (or waits its turn to be) and has no final response yet."""

    operation: Operation
    done: defer.Deferred[Any]
    timer: Timer
    message: tuple[int, bytes, Data] | None
    """The encoded message while it waits for the operations window; None once sent."""


@dataclass(frozen=True, slots=True)
class _EncodedResponse:
    """The command set of the last response sent without fields of its own, and what it
    answered: the next pending response to the same request is the same bytes."""

    request: Request
    status: int
    with_data_set: bool
    encoded: bytes


@dataclass(slots=True)
class _Incoming:
    """A message whose command arrived and whose data set is still coming: where its
    fragments go, and what takes the data set once it is whole."""

    sink: DataSink
    complete: Callable[[Any], None]


class DimseAssociation:
    """The DIMSE service user of one association: what both roles share.

    A subclass provides `service_for`, which decides who answers a request
    from the peer, and the A-ASSOCIATE side of the state machine's user port.
    """

    log = Logger()

    def __init__(
        self,
        protocol: UpperLayerProtocol,
        dimse_timeout: float,
        worker: Worker,
        max_command_length: int = DEFAULT_MAX_COMMAND_LENGTH,
        max_data_length: int = DEFAULT_MAX_DATA_LENGTH,
    ) -> None:
        self.protocol = protocol
        self.max_data_length = max_data_length
        """The largest data set kept in memory: identifiers, matches, other responses."""
        self.dimse_timeout = dimse_timeout
        self.worker = worker
        self.calling_ae_title = ""
        self.called_ae_title = ""
        self.contexts: dict[int, AcceptedContext] = {}
        self.peer_max_pdu_length = 0
        self.max_outstanding = 0
        """Requests of ours in flight at once (the asynchronous operations window); 0: no limit."""
        self.ended: defer.Deferred[None] = defer.Deferred()
        self._assembler = MessageAssembler(max_command_length)
        self._incoming: _Incoming | None = None
        self._data_set_timer = Timer(protocol.clock, dimse_timeout, self._data_set_expired)
        self._outbox: Outbox | None = None
        self._message_id = 0
        self._outstanding: dict[int, _Outstanding] = {}
        self._waiting: deque[int] = deque()
        self._cancellers: dict[int, Callable[[], None]] = {}
        self._last_response: _EncodedResponse | None = None

    # -- who and where ----------------------------------------------------

    @property
    def machine(self) -> StateMachine:
        return self.protocol.machine

    @property
    def is_established(self) -> bool:
        """True from acceptance until release or abort."""
        return self.machine.is_established

    @property
    def peer(self) -> str:
        """The peer's address as ``host:port``, for log lines."""
        return self.protocol.peer

    @property
    def peer_host(self) -> str:
        return getattr(self.protocol.transport.getPeer(), "host", "")

    @property
    def peer_port(self) -> int:
        return getattr(self.protocol.transport.getPeer(), "port", 0)

    @property
    def peer_ae_title(self) -> str:
        """The AE title of the other side: calling for an acceptor, called for a requestor."""
        return self.called_ae_title if self.machine.requestor else self.calling_ae_title

    def service_for(self, context: AcceptedContext, command: Command) -> Service | None:
        """Who answers ``command`` from the peer on ``context``; None answers 0211."""
        raise NotImplementedError

    def _open_outbox(self) -> None:
        """Data transfer begins: messages may leave from now on."""
        self._outbox = Outbox(
            self._send_pdu,
            self.protocol.transport,
            lambda: self.peer_max_pdu_length,
            self._unreadable,
        )

    # -- receiving --------------------------------------------------------

    def data_indication(self, data: PDataTF) -> None:
        try:
            for pdv in data.pdvs:
                if not self.is_established:
                    return  # a PDV before this one ended the association: the rest is moot
                if pdv.context_id not in self.contexts:
                    self._protocol_error(
                        f"PDV on presentation context {pdv.context_id}, which was not accepted"
                    )
                    return
                for event in self._assembler.feed(pdv.context_id, pdv.control, pdv.data):
                    self._message_event(event)
        except (AssemblyError, CommandError) as error:
            self._protocol_error(str(error))

    def _message_event(self, event: CommandReceived | DataReceived) -> None:
        if isinstance(event, CommandReceived):
            self._command_received(self.contexts[event.context_id], event.command)
            return
        incoming = self._incoming
        assert incoming is not None, "the assembler yields data only after a command"
        incoming.sink.write(event.data)
        if event.last:
            self._incoming = None
            self._data_set_timer.stop()
            incoming.complete(incoming.sink.finish())

    def _command_received(self, context: AcceptedContext, command: Command) -> None:
        field_value = command.command_field
        if field_value not in _KNOWN_COMMANDS:
            self._protocol_error(f"unknown DIMSE command field 0x{field_value:04X}")
            return
        unanswerable = command.unanswerable()
        if unanswerable is not None:
            self._protocol_error(unanswerable)
            return
        if command.is_response:
            self._response_received(command)
            return
        if field_value == CommandField.C_CANCEL_RQ:
            # PS3.7 9.3.2.3: a cancel for nothing outstanding is ignored.
            cancel = self._cancellers.get(command.message_id_being_responded_to)  # type: ignore[arg-type]
            if cancel is not None:
                cancel()
            return
        service = self.service_for(context, command)
        if not command.has_data_set:
            self._dispatch(service, Request(context, command, None))
            return
        sink = DiscardSink() if service is None else service.open_sink(self, context, command)
        self._expect_data_set(
            sink, lambda data: self._dispatch(service, Request(context, command, data))
        )

    def _expect_data_set(self, sink: DataSink, complete: Callable[[Any], None]) -> None:
        self._incoming = _Incoming(sink, complete)
        self._data_set_timer.start()

    def memory_sink(self) -> MemorySink:
        """A sink for a data set kept in memory, bounded by ``max_data_length``."""
        return MemorySink(self.max_data_length)

    def _dispatch(self, service: Service | None, request: Request) -> None:
        if service is None:
            self.respond(request, uids.Status.UNRECOGNIZED_OPERATION)
            return
        if isinstance(request.data, Oversized):
            self.log.warn(
                "{peer_ae} at {peer} sent {what}; refused",
                peer_ae=self.peer_ae_title,
                peer=self.peer,
                what=str(request.data),
            )
            status = out_of_resources(request.command.command_field)
            self.respond(request, status, error_comment=uids.error_comment(str(request.data)))
            return
        d = defer.maybeDeferred(service.handle, self, request)
        d.addErrback(self._service_failed, request)

    def _service_failed(self, failure: Failure, request: Request) -> None:
        self.log.failure(
            "service failed on {command} from {peer_ae}",
            failure,
            command=CommandField(request.command.command_field).name,
            peer_ae=self.peer_ae_title,
        )
        self.respond(
            request,
            uids.Status.PROCESSING_FAILURE,
            error_comment=uids.error_comment(failure.getErrorMessage()),
        )

    def _response_received(self, command: Command) -> None:
        message_id = command.message_id_being_responded_to
        if message_id not in self._outstanding:
            name = CommandField(command.command_field).name
            self._protocol_error(f"DIMSE response {name} to no request of ours")
            return
        if command.has_data_set:
            self._expect_data_set(self.memory_sink(), lambda data: self._responded(command, data))
        else:
            self._responded(command, None)

    def _responded(self, command: Command, data: bytes | Oversized | None) -> None:
        message_id: int = command.message_id_being_responded_to  # type: ignore[assignment]
        if isinstance(data, Oversized):
            self._protocol_error(f"response to message {message_id} is {data}")
            return
        outstanding = self._outstanding.get(message_id)
        if outstanding is None:
            return  # the association ended while the data set came in
        outstanding.timer.push_back()
        try:
            outcome = outstanding.operation.response(command, data)
        except Exception as error:
            # Only a decoder raises DataSetError, and its module (pydicom's codec) is loaded
            # by then: importing it here spares a C-ECHO loading it.
            from dicomd.dimse.datasets import DataSetError

            if not isinstance(error, DataSetError):
                raise
            self._protocol_error(f"response to message {message_id}: {error}")
            return
        if outcome is MORE:
            return
        self._close_outstanding(message_id)
        self._admit_waiting()
        # Last: whatever the caller does when told (abort, even) finds the books closed.
        if not outstanding.done.called:  # a cancelled Deferred already failed
            outstanding.done.callback(outcome)

    # -- answering the peer -------------------------------------------------

    def respond(
        self,
        request: Request,
        status: int,
        dataset: Data = None,
        **fields: object,
    ) -> None:
        """Send the response to ``request`` with ``status`` and any other command fields.

        A C-FIND's pending responses all carry the same command set: the last
        pending one encoded without other fields is kept and sent again while the
        request, the status and whether a data set follows stay the same.  A final
        response lets it go, with the request it holds.
        """
        with_data_set = dataset is not None
        last = self._last_response
        if (
            not fields
            and last is not None
            and last.request is request
            and last.status == status
            and last.with_data_set == with_data_set
        ):
            encoded = last.encoded
        else:
            encoded = self._response(request, status, with_data_set, fields).encode()
            kept = not fields and status in _PENDING
            self._last_response = (
                _EncodedResponse(request, status, with_data_set, encoded) if kept else None
            )
        self._send_encoded(request.context.context_id, encoded, dataset)

    @staticmethod
    def _response(
        request: Request, status: int, with_data_set: bool, fields: dict[str, object]
    ) -> Command:
        command = request.command
        response = Command(
            command_field=command.command_field | 0x8000,
            message_id_being_responded_to=command.message_id,
            affected_sop_class_uid=command.affected_sop_class_uid
            or command.requested_sop_class_uid,
            status=status,
            **fields,  # type: ignore[arg-type]
        )
        if with_data_set:
            response.command_data_set_type = 0x0000
        return response

    def on_cancel(self, message_id: int, cancel: Callable[[], None]) -> None:
        """Call ``cancel`` if the peer sends C-CANCEL for ``message_id`` (C-FIND, C-MOVE, C-GET)."""
        self._cancellers[message_id] = cancel

    def forget_cancel(self, message_id: int) -> None:
        """The operation is over: a late C-CANCEL for it is ignored."""
        self._cancellers.pop(message_id, None)

    def send(self, context_id: int, command: Command, dataset: Data = None) -> None:
        """Send one DIMSE message, in order, fragmented to the peer's maximum PDU length."""
        self._send_encoded(context_id, command.encode(), dataset)

    def _send_encoded(self, context_id: int, command: bytes, dataset: Data) -> None:
        if self.machine.state not in _CAN_SEND or self._outbox is None:
            return  # released or aborted meanwhile: nobody to answer
        self._outbox.send(context_id, command, dataset)

    def drained(self) -> defer.Deferred[None]:
        """Fires when everything sent so far is in the transport and it has room: a service
        sending many messages waits on it between them, so that a peer that does not read
        holds up the service instead of filling our memory."""
        if self._outbox is None:
            return defer.succeed(None)
        return self._outbox.drained()

    def _send_pdu(self, pdu: bytes) -> None:
        if self.machine.state in _CAN_SEND:
            self.machine.data_request(pdu)

    # -- requests of ours -------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Requests of ours sent and not yet answered (those waiting their turn excluded)."""
        return len(self._outstanding) - len(self._waiting)

    def operations_in_flight(self) -> Iterator[Operation]:
        """The operations of our requests sent and not yet answered, oldest first."""
        return (entry.operation for entry in self._outstanding.values() if entry.message is None)

    def context_for(self, abstract_syntax: str) -> AcceptedContext:
        """The accepted context for ``abstract_syntax``; `NoAcceptedContext` when there is none."""
        for context in self.contexts.values():
            if context.abstract_syntax == abstract_syntax:
                return context
        raise NoAcceptedContext(f"no accepted presentation context for {abstract_syntax}")

    def request(
        self, operation: Operation, command: Command, data: Data = None
    ) -> defer.Deferred[Any]:
        """Send a request of ours; fires with what ``operation`` makes of its last response.

        The message ID is ours to choose.  The request leaves now if the
        asynchronous operations window allows, else when an earlier one ends.
        Cancelling the Deferred sends C-CANCEL (or, for a request still
        waiting its turn, drops it).  It fails with an `AssociationError` if
        the association ends first, and with `DimseTimeout` (after an abort)
        if the peer stays silent for the DIMSE timeout.
        """
        if not self.is_established:
            return defer.fail(
                AssociationAborted(AbortSource.SERVICE_PROVIDER, AbortReason.NOT_SPECIFIED)
            )
        message_id = self._next_message_id()
        command.message_id = message_id
        done: defer.Deferred[Any] = defer.Deferred(lambda _: self._cancel(message_id))
        timer = Timer(
            self.protocol.clock, self.dimse_timeout, lambda: self._dimse_expired(message_id)
        )
        message = (operation.context.context_id, command.encode(), data)
        outstanding = _Outstanding(operation, done, timer, message)
        self._outstanding[message_id] = outstanding
        if self.max_outstanding and self.in_flight > self.max_outstanding:
            self._waiting.append(message_id)
        else:
            self._send_request(outstanding)
        return done

    def _next_message_id(self) -> int:
        self._message_id = self._message_id % 0xFFFF + 1
        return self._message_id

    def _send_request(self, outstanding: _Outstanding) -> None:
        assert self._outbox is not None and outstanding.message is not None
        self._outbox.send(*outstanding.message)
        outstanding.message = None
        outstanding.timer.start()

    def _admit_waiting(self) -> None:
        while self._waiting and (not self.max_outstanding or self.in_flight < self.max_outstanding):
            self._send_request(self._outstanding[self._waiting.popleft()])

    def _close_outstanding(self, message_id: int) -> None:
        self._outstanding.pop(message_id).timer.stop()

    def _cancel(self, message_id: int) -> None:
        """Our caller gave up on a request: C-CANCEL it, or drop it if it never left."""
        outstanding = self._outstanding.get(message_id)
        if outstanding is None:
            return
        if outstanding.message is not None:
            self._waiting.remove(message_id)
            self._close_outstanding(message_id)
            return
        # The peer's final response (FE00, most often) still arrives and is taken quietly.
        cancel = Command(
            command_field=CommandField.C_CANCEL_RQ, message_id_being_responded_to=message_id
        )
        self.send(outstanding.operation.context.context_id, cancel)

    def _dimse_expired(self, message_id: int) -> None:
        """Abort first, so that whoever hears of the timeout finds the association gone."""
        outstanding = self._outstanding.pop(message_id, None)
        if outstanding is None:
            return
        self.log.warn(
            "no response from {peer_ae} at {peer} to message {id} within {seconds}s; aborting",
            peer_ae=self.peer_ae_title,
            peer=self.peer,
            id=message_id,
            seconds=self.dimse_timeout,
        )
        self.abort()
        if not outstanding.done.called:
            outstanding.done.errback(
                DimseTimeout(f"no response to message {message_id} within {self.dimse_timeout}s")
            )

    # -- the end ----------------------------------------------------------

    def abort(
        self,
        source: int = AbortSource.SERVICE_USER,
        reason: int = AbortReason.NOT_SPECIFIED,
    ) -> None:
        """A-ABORT; every request still waiting fails with `AssociationAborted`."""
        if self.machine.state not in (State.STA1, State.STA4, State.STA13):
            self.machine.abort_request(source, reason)
        self._end(AssociationAborted(source, reason))

    def release_indication(self, collision: bool) -> None:
        self.log.info(
            "association released by {peer_ae} at {peer}",
            peer_ae=self.peer_ae_title,
            peer=self.peer,
        )
        if collision and not self.machine.requestor:
            # As the acceptor in a release collision we wait for the peer's
            # A-RELEASE-RP before answering (Sta10, PS3.8 9.2.3).
            return
        if not collision:
            self._end(AssociationReleased("the peer released the association"))
        self.machine.release_response()

    def abort_indication(self, source: int, reason: int) -> None:
        self.log.info(
            "association aborted: {peer_ae} at {peer}, source {source}, reason {reason}",
            peer_ae=self.peer_ae_title or "?",
            peer=self.peer,
            source=source,
            reason=reason,
        )
        problem = self.protocol.tls_failure
        self._end(TLSHandshakeFailed(problem) if problem else AssociationAborted(source, reason))

    def _protocol_error(self, problem: str) -> None:
        self.log.warn(
            "aborting association with {peer_ae} at {peer}: {problem}",
            peer_ae=self.peer_ae_title,
            peer=self.peer,
            problem=problem,
        )
        self.abort(AbortSource.SERVICE_PROVIDER, AbortReason.INVALID_PDU_PARAMETER_VALUE)

    def _unreadable(self, error: OSError) -> None:
        """A file being sent could not be read to its end: its message cannot be finished."""
        self._protocol_error(f"cannot read a file being sent: {error}")

    def _data_set_expired(self) -> None:
        self.log.warn(
            "{peer_ae} at {peer} sent a command but not its data set within {seconds}s; aborting",
            peer_ae=self.peer_ae_title,
            peer=self.peer,
            seconds=self.dimse_timeout,
        )
        self.abort(AbortSource.SERVICE_PROVIDER, AbortReason.NOT_SPECIFIED)

    def _end(self, error: AssociationError) -> None:
        """The association is over: stop every timer, fail what waits, let services stop."""
        self._data_set_timer.stop()
        if self._outbox is not None:
            self._outbox.close()
        outstanding, self._outstanding = self._outstanding, {}
        self._waiting.clear()
        for entry in outstanding.values():
            entry.timer.stop()
            if not entry.done.called:
                entry.done.errback(error)
        cancellers, self._cancellers = self._cancellers, {}
        for cancel in cancellers.values():
            cancel()  # nobody is left to answer: stop the work
        if self._incoming is not None:
            self._incoming.sink.discard()
            self._incoming = None
        if not self.ended.called:
            self.ended.callback(None)


def decode_in(
    association: DimseAssociation, data: bytes, transfer_syntax: str
) -> defer.Deferred[Dataset]:
    """Decode a data set received on ``association``: in its worker when it is large enough
    to take a while or deflated (it may inflate to its limit), at once otherwise."""
    from dicomd.dimse.datasets import decode_dataset  # pydicom: loaded by the first data set

    limit = association.max_data_length
    if (
        len(data) <= _DECODE_INLINE_UP_TO
        and transfer_syntax != uids.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN
    ):
        return defer.maybeDeferred(decode_dataset, data, transfer_syntax, limit)
    return association.worker.run(decode_dataset, data, transfer_syntax, limit)


_DECODE_INLINE_UP_TO: Final = 2048
"""Identifiers and matches are a few hundred bytes.  Parsing costs about 18 µs an element
and an element may be 8 bytes: 2 KiB parse in 5 ms at worst, 64 KiB would take 150 ms."""

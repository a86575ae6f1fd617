"""The acceptor's service user: negotiation, DIMSE dispatch, release and abort.

`Acceptor` receives the primitives of the state machine for one association.
It asks the validators whether to accept, negotiates presentation contexts,
reassembles DIMSE messages from P-DATA and hands complete requests to the
service that serves the context's abstract syntax.  It writes through the
state machine, never around it, so every PDU we send is one the standard
allows in the current state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from pydicom import Dataset
from pydicom.uid import UID
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from dicomd import uids
from dicomd.dimse.command import Command, CommandError, CommandField
from dicomd.dimse.datasets import error_comment
from dicomd.dimse.messages import AssemblyError, CommandReceived, MessageAssembler
from dicomd.dimse.negotiation import AcceptedContext, negotiate
from dicomd.dimse.outbox import FileData, Outbox
from dicomd.interfaces import (
    REJECT_NO_REASON,
    Accept,
    AssociationRequest,
    FindQuery,
    IAssociationValidator,
    ProposedContext,
    Rejection,
    UserIdentity,
)
from dicomd.ul.fsm import State, StateMachine
from dicomd.ul.pdu import (
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    AbortReason,
    AbortSource,
    AsyncOperationsWindow,
    PDataTF,
    RoleSelection,
    UserIdentityAC,
    UserInformation,
)
from dicomd.ul.timer import Timer

if TYPE_CHECKING:
    from dicomd.ul.protocol import UpperLayerProtocol

DICOM_APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
_REJECT_APPLICATION_CONTEXT = Rejection(1, 1, 2, "application context name not supported")
_REJECT_PROTOCOL_VERSION = Rejection(1, 2, 2, "protocol version not supported")
_CAN_SEND = (State.STA6, State.STA8)
_KNOWN_COMMANDS = frozenset(int(field) for field in CommandField)


@dataclass(frozen=True, slots=True)
class Request:
    """A complete DIMSE request, as a service sees it.

    ``data`` is what the service's data sink made of the data set: the bytes
    themselves by default, a file for the storage service; None without one.
    """

    context: AcceptedContext
    command: Command
    data: Any


class DataSink(Protocol):
    """Where the fragments of one data set go while they arrive."""

    def write(self, data: bytes) -> None: ...

    def finish(self) -> Any:
        """The last fragment is in: what the service gets as ``Request.data``."""

    def discard(self) -> None:
        """The association ended before the last fragment."""


class MemorySink:
    """Keeps a (small) data set in memory: identifiers of C-FIND and the like."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self._chunks.append(data)

    def finish(self) -> bytes:
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
    """One service class on the SCP side (Verification, Storage, ...).

    A service may also offer ``open_sink(association, context, command)`` to
    receive its data sets as a stream, and ``transfer_syntaxes`` to accept
    other transfer syntaxes than the node's preference.
    """

    abstract_syntaxes: frozenset[str]
    operations: frozenset[int]

    def handle(self, association: Acceptor, request: Request) -> defer.Deferred[None] | None:
        """Answer ``request`` through ``association.respond``."""


class ServiceRegistry:
    """Which service serves an abstract syntax, and with which transfer syntaxes."""

    def __init__(
        self,
        services: Iterable[Service],
        transfer_syntaxes: Sequence[str],
        fallback: Service | None = None,
    ) -> None:
        self._by_syntax: dict[str, Service] = {}
        for service in services:
            self._by_syntax.update(dict.fromkeys(service.abstract_syntaxes, service))
        self._default_syntaxes = tuple(transfer_syntaxes)
        self._other_syntaxes = tuple(sorted(uids.KNOWN_TRANSFER_SYNTAXES - set(transfer_syntaxes)))
        self._fallback = fallback

    @property
    def serves_get(self) -> bool:
        """Whether some service answers C-GET: then peers may take the SCP role for storage."""
        return any(
            CommandField.C_GET_RQ in service.operations for service in self._by_syntax.values()
        )

    def service_for(self, abstract_syntax: str) -> Service | None:
        service = self._by_syntax.get(abstract_syntax)
        if service is None and self._fallback is not None and _is_unknown(abstract_syntax):
            return self._fallback
        return service

    def transfer_syntaxes_for(self, abstract_syntax: str) -> Sequence[str]:
        service = self.service_for(abstract_syntax)
        if service is None:
            if self.serves_get and abstract_syntax in uids.STORAGE_SOP_CLASSES:
                # A C-GET requester proposes the storage contexts we send on.
                return self._default_syntaxes + self._other_syntaxes
            return ()
        return getattr(service, "transfer_syntaxes", self._default_syntaxes)


def _is_unknown(abstract_syntax: str) -> bool:
    """Not a SOP class pydicom knows: a private or newer class, possibly storage."""
    return UID(abstract_syntax).type == ""


@dataclass(frozen=True, slots=True)
class AcceptorSettings:
    """What every association of one node shares."""

    ae_title: str
    max_pdu_length: int
    dimse_timeout: float
    validators: Sequence[IAssociationValidator]
    services: ServiceRegistry


@dataclass(slots=True)
class _Incoming:
    """A request whose command arrived and whose data set is still coming."""

    context: AcceptedContext
    command: Command
    sink: DataSink
    service: Service | None


class AssociationEnded(Exception):
    """A request of ours had no response: the association ended first."""


class Acceptor:
    """The service user of one accepted (or being accepted) association."""

    log = Logger()

    def __init__(self, settings: AcceptorSettings, protocol: UpperLayerProtocol) -> None:
        self.settings = settings
        self.protocol = protocol
        self.calling_ae_title = ""
        self.called_ae_title = ""
        self.contexts: dict[int, AcceptedContext] = {}
        self.peer_max_pdu_length = 0
        self._assembler = MessageAssembler()
        self._incoming: _Incoming | None = None
        self._dimse_timer = Timer(protocol.clock, settings.dimse_timeout, self._dimse_expired)
        self._cancellers: dict[int, Callable[[], None]] = {}
        self._requests: dict[int, defer.Deferred[Command]] = {}
        self._message_id = 0
        self._outbox: Outbox | None = None
        self.peer_scp_roles: frozenset[str] = frozenset()
        self.ended = defer.Deferred[None]()

    @property
    def peer(self) -> str:
        return self.protocol._peer()

    @property
    def peer_host(self) -> str:
        return getattr(self.protocol.transport.getPeer(), "host", "")

    @property
    def peer_port(self) -> int:
        return getattr(self.protocol.transport.getPeer(), "port", 0)

    def find_query(self, identifier: Dataset, model: str, level: str) -> FindQuery:
        """A query or retrieve request as handlers see it, from this association."""
        return FindQuery(
            identifier,
            model,
            level,
            self.calling_ae_title,
            self.called_ae_title,
            self.peer_host,
        )

    @property
    def machine(self) -> StateMachine:
        return self.protocol.machine

    # -- A-ASSOCIATE ------------------------------------------------------

    def associate_indication(self, request: AAssociateRQ) -> None:
        self.calling_ae_title = request.calling_ae_title
        self.called_ae_title = request.called_ae_title
        self.log.info(
            "association requested by {calling} at {peer} for {called}",
            calling=request.calling_ae_title,
            peer=self.peer,
            called=request.called_ae_title,
        )
        if not request.protocol_version & 1:
            self._reject(_REJECT_PROTOCOL_VERSION)
            return
        if request.application_context != DICOM_APPLICATION_CONTEXT:
            self._reject(_REJECT_APPLICATION_CONTEXT)
            return
        d = _first_rejection(self.settings.validators, self._describe(request))
        d.addCallback(self._decided, request)

    def _decided(self, decision: Accept | Rejection, request: AAssociateRQ) -> None:
        if self.machine.state is not State.STA3:
            return  # the peer aborted or vanished while we were deciding
        if isinstance(decision, Rejection):
            self._reject(decision)
        else:
            self._accept(request)

    def _accept(self, request: AAssociateRQ) -> None:
        negotiated = negotiate(
            request.presentation_contexts, self.settings.services.transfer_syntaxes_for
        )
        self.contexts = negotiated.accepted
        proposed_info = request.user_information
        self.peer_max_pdu_length = proposed_info.max_length or 0
        identity = proposed_info.user_identity_rq
        roles = self._roles(proposed_info.role_selections)
        self.peer_scp_roles = frozenset(role.sop_class_uid for role in roles if role.scp_role)
        self._outbox = Outbox(
            self._send_pdu,
            self.protocol.transport,
            lambda: self.peer_max_pdu_length,
            self._unreadable,
        )
        info = UserInformation(
            max_length=self.settings.max_pdu_length,
            implementation_class_uid=uids.IMPLEMENTATION_CLASS_UID,
            implementation_version_name=uids.IMPLEMENTATION_VERSION_NAME,
            # We perform one operation at a time: the window we grant is 1/1.
            async_operations_window=(
                AsyncOperationsWindow(1, 1) if proposed_info.async_operations_window else None
            ),
            user_identity_ac=(
                UserIdentityAC(b"") if identity and identity.positive_response_requested else None
            ),
            role_selections=roles,
        )
        accept = AAssociateAC(
            called_ae_title=request.called_ae_title,
            calling_ae_title=request.calling_ae_title,
            presentation_contexts=negotiated.results,
            user_information=info,
        )
        self.machine.associate_response(accept)
        self.log.info(
            "association accepted: {calling} at {peer} -> {called}, {accepted} of {proposed}"
            " presentation contexts accepted",
            calling=self.calling_ae_title,
            peer=self.peer,
            called=self.called_ae_title,
            accepted=len(self.contexts),
            proposed=len(request.presentation_contexts),
        )

    def _roles(self, proposed: Sequence[RoleSelection]) -> tuple[RoleSelection, ...]:
        """Our answer to SCP/SCU role selection (PS3.7 D.3.3.4).

        A peer that wants to receive instances on this association (C-GET)
        proposes the SCP role for storage SOP classes; we agree when we serve
        C-GET.  Every other proposal gets the default roles back.
        """
        serves_get = self.settings.services.serves_get
        return tuple(
            RoleSelection(
                role.sop_class_uid,
                role.scu_role,
                role.scp_role and serves_get and role.sop_class_uid in uids.STORAGE_SOP_CLASSES,
            )
            for role in proposed
        )

    def _reject(self, rejection: Rejection) -> None:
        self.log.info(
            "association rejected: {calling} at {peer} -> {called}: {why}"
            " (result {result}, source {source}, reason {reason})",
            calling=self.calling_ae_title,
            peer=self.peer,
            called=self.called_ae_title,
            why=rejection.message or "no reason given",
            result=rejection.result,
            source=rejection.source,
            reason=rejection.reason,
        )
        reject = AAssociateRJ(rejection.result, rejection.source, rejection.reason)
        self.machine.associate_response(reject)

    def _describe(self, request: AAssociateRQ) -> AssociationRequest:
        info = request.user_information
        identity = info.user_identity_rq
        return AssociationRequest(
            called_ae_title=request.called_ae_title,
            calling_ae_title=request.calling_ae_title,
            peer_host=self.peer_host,
            peer_port=self.peer_port,
            presentation_contexts=tuple(
                ProposedContext(c.context_id, c.abstract_syntax, c.transfer_syntaxes)
                for c in request.presentation_contexts
            ),
            user_identity=(
                UserIdentity(
                    identity.identity_type,
                    identity.positive_response_requested,
                    identity.primary_field,
                    identity.secondary_field,
                )
                if identity
                else None
            ),
            implementation_class_uid=info.implementation_class_uid,
            implementation_version_name=info.implementation_version_name,
        )

    # The requestor-side confirmations never reach an acceptor.
    def associate_accepted(self, accept: AAssociateAC) -> None:
        raise AssertionError("an acceptor does not receive A-ASSOCIATE-AC")

    def associate_rejected(self, reject: AAssociateRJ) -> None:
        raise AssertionError("an acceptor does not receive A-ASSOCIATE-RJ")

    # -- P-DATA -----------------------------------------------------------

    def data_indication(self, data: PDataTF) -> None:
        try:
            for pdv in data.pdvs:
                if pdv.context_id not in self.contexts:
                    self._protocol_error(
                        f"PDV on presentation context {pdv.context_id}, which was not accepted"
                    )
                    return
                for event in self._assembler.feed(pdv.context_id, pdv.control, pdv.data):
                    self._message_event(event)
        except (AssemblyError, CommandError) as error:
            self._protocol_error(str(error))

    def _message_event(self, event: object) -> None:
        if isinstance(event, CommandReceived):
            context = self.contexts[event.context_id]
            command = event.command
            service = self._service_for(context, command)
            if command.has_data_set:
                self._incoming = _Incoming(
                    context, command, self._open_sink(service, context, command), service
                )
                self._dimse_timer.start()
            else:
                self._dispatch(Request(context, command, None), service)
            return
        incoming = self._incoming
        assert incoming is not None, "the assembler yields data only after a command"
        incoming.sink.write(event.data)  # type: ignore[attr-defined]
        if event.last:  # type: ignore[attr-defined]
            self._incoming = None
            self._dimse_timer.stop()
            request = Request(incoming.context, incoming.command, incoming.sink.finish())
            self._dispatch(request, incoming.service)

    def _service_for(self, context: AcceptedContext, command: Command) -> Service | None:
        """The service that will answer ``command``, or None if nobody can."""
        service = self.settings.services.service_for(context.abstract_syntax)
        if service is None or command.command_field not in service.operations:
            return None
        return service

    def _open_sink(
        self, service: Service | None, context: AcceptedContext, command: Command
    ) -> DataSink:
        if service is None:
            return DiscardSink()
        open_sink = getattr(service, "open_sink", None)
        return MemorySink() if open_sink is None else open_sink(self, context, command)

    def _dispatch(self, request: Request, service: Service | None) -> None:
        command = request.command
        field_value = command.command_field
        if field_value not in _KNOWN_COMMANDS:
            self._protocol_error(f"unknown DIMSE command field 0x{field_value:04X}")
            return
        if field_value == CommandField.C_CANCEL_RQ:
            # PS3.7 9.3.2.3: a cancel for nothing outstanding is ignored.
            cancel = self._cancellers.get(command.message_id_being_responded_to)  # type: ignore[arg-type]
            if cancel is not None:
                cancel()
            return
        if command.is_response:
            waiting = self._requests.pop(command.message_id_being_responded_to, None)  # type: ignore[arg-type]
            if waiting is None:
                name = CommandField(field_value).name
                self._protocol_error(f"DIMSE response {name} to no request of ours")
                return
            waiting.callback(command)
            return
        if service is None:
            self.respond(request, uids.Status.UNRECOGNIZED_OPERATION)
            return
        d = defer.maybeDeferred(service.handle, self, request)
        d.addErrback(self._service_failed, request)

    def _service_failed(self, failure: Failure, request: Request) -> None:
        self.log.failure(
            "service failed on {command} from {calling}",
            failure,
            command=CommandField(request.command.command_field).name,
            calling=self.calling_ae_title,
        )
        self.respond(
            request,
            uids.Status.PROCESSING_FAILURE,
            error_comment=error_comment(failure.getErrorMessage()),
        )

    def respond(
        self,
        request: Request,
        status: int,
        dataset: bytes | None = None,
        **fields: object,
    ) -> None:
        """Send the response to ``request`` with ``status`` and any other command fields."""
        command = request.command
        response = Command(
            command_field=command.command_field | 0x8000,
            message_id_being_responded_to=command.message_id,
            affected_sop_class_uid=command.affected_sop_class_uid
            or command.requested_sop_class_uid,
            status=status,
            **fields,  # type: ignore[arg-type]
        )
        if dataset is not None:
            response.command_data_set_type = 0x0000
        self.send(request.context.context_id, response, dataset)

    def on_cancel(self, message_id: int, cancel: Callable[[], None]) -> None:
        """Call ``cancel`` if the peer sends C-CANCEL for ``message_id`` (C-FIND, C-MOVE, C-GET)."""
        self._cancellers[message_id] = cancel

    def forget_cancel(self, message_id: int) -> None:
        """The operation is over: a late C-CANCEL for it is ignored."""
        self._cancellers.pop(message_id, None)

    def send(
        self, context_id: int, command: Command, dataset: bytes | FileData | None = None
    ) -> None:
        """Send one DIMSE message, in order, fragmented to the peer's maximum PDU length."""
        if self.machine.state not in _CAN_SEND or self._outbox is None:
            return  # released or aborted meanwhile: nobody to answer
        self._outbox.send(context_id, command.encode(), dataset)

    def request(
        self, context_id: int, command: Command, dataset: bytes | FileData | None
    ) -> defer.Deferred[Command]:
        """Send a request of our own (a C-STORE of a C-GET); fires with its response.

        The message ID is ours to choose; it fails with `AssociationEnded`
        if the association ends first.
        """
        command.message_id = self._next_message_id()
        waiting: defer.Deferred[Command] = defer.Deferred()
        self._requests[command.message_id] = waiting
        self.send(context_id, command, dataset)
        return waiting

    def _next_message_id(self) -> int:
        self._message_id = self._message_id % 0xFFFF + 1
        return self._message_id

    def _send_pdu(self, pdu: bytes) -> None:
        if self.machine.state in _CAN_SEND:
            self.machine.data_request(pdu)

    def _unreadable(self, error: OSError) -> None:
        """A file being sent could not be read to its end: its message cannot be finished."""
        self._protocol_error(f"cannot read a file being sent: {error}")

    # -- A-RELEASE and A-ABORT --------------------------------------------

    def release_indication(self, collision: bool) -> None:
        self.log.info(
            "association released by {calling} at {peer}",
            calling=self.calling_ae_title,
            peer=self.peer,
        )
        if collision:
            # Only a requestor releases at the same time as its peer; as the
            # acceptor we wait for its A-RELEASE-RP before answering (Sta10).
            return
        self._end()
        self.machine.release_response()

    def release_confirmation(self) -> None:
        if self.machine.state is State.STA12:
            self.machine.release_response()

    def abort_indication(self, source: int, reason: int) -> None:
        self.log.info(
            "association aborted: {calling} at {peer}, source {source}, reason {reason}",
            calling=self.calling_ae_title or "?",
            peer=self.peer,
            source=source,
            reason=reason,
        )
        self._end()

    def _protocol_error(self, problem: str) -> None:
        self.log.warn(
            "aborting association with {calling} at {peer}: {problem}",
            calling=self.calling_ae_title,
            peer=self.peer,
            problem=problem,
        )
        self._end()
        self.machine.abort_request(
            AbortSource.SERVICE_PROVIDER, AbortReason.INVALID_PDU_PARAMETER_VALUE
        )

    def _end(self) -> None:
        self._dimse_timer.stop()
        if self._outbox is not None:
            self._outbox.close()
        requests, self._requests = self._requests, {}
        for waiting in requests.values():
            waiting.errback(AssociationEnded("the association ended before the response"))
        for cancel in self._cancellers.values():
            cancel()  # nobody is left to answer: stop the work
        self._cancellers.clear()
        if self._incoming is not None:
            self._incoming.sink.discard()
            self._incoming = None
        if not self.ended.called:
            self.ended.callback(None)

    # -- DIMSE timeout ----------------------------------------------------

    def _dimse_expired(self) -> None:
        self.log.warn(
            "{calling} at {peer} sent a command but not its data set within {seconds}s; aborting",
            calling=self.calling_ae_title,
            peer=self.peer,
            seconds=self.settings.dimse_timeout,
        )
        self._end()
        self.machine.abort_request(AbortSource.SERVICE_PROVIDER, AbortReason.NOT_SPECIFIED)


def _first_rejection(
    validators: Iterable[IAssociationValidator], request: AssociationRequest
) -> defer.Deferred[Accept | Rejection]:
    """Ask each validator in turn; the first rejection wins, an error rejects."""

    @defer.inlineCallbacks
    def ask():
        for validator in validators:
            try:
                decision = yield defer.maybeDeferred(validator.validate, request)
            except Exception:
                Acceptor.log.failure(
                    "association validator {validator} failed", validator=validator
                )
                return REJECT_NO_REASON
            if isinstance(decision, Rejection):
                return decision
            if not isinstance(decision, Accept):
                Acceptor.log.error(
                    "association validator {validator} answered {decision!r}, neither"
                    " ACCEPT nor a Rejection",
                    validator=validator,
                    decision=decision,
                )
                return REJECT_NO_REASON
        return Accept.ACCEPT

    return ask()

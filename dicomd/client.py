"""The association requestor (SCU): every operation returns a Deferred.

`associate` opens a connection, proposes presentation contexts and fires
with a `ClientAssociation` once the peer accepts, or fails with an exception
that carries the peer's answer (`AssociationRejected`, `AssociationAborted`).
The association object sends DIMSE requests and matches responses to them by
message ID; a failure status is a result, not an exception.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import count

from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.internet.interfaces import IDelayedCall, IReactorTCP, IReactorTime
from twisted.logger import Logger

from dicomd import uids
from dicomd.dimse import (
    AssemblyError,
    Command,
    CommandError,
    CommandField,
    CommandReceived,
    MessageAssembler,
    fragment,
)
from dicomd.fsm import State, StateMachine
from dicomd.negotiation import AcceptedContext
from dicomd.pdu import (
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    AbortReason,
    AbortSource,
    PDataTF,
    PresentationContextRQ,
    UserInformation,
)
from dicomd.protocol import UpperLayerProtocol

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


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """Options of one association request."""

    called_ae_title: str
    calling_ae_title: str = "DICOMD"
    max_pdu_length: int = 262144
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_idle_timeout: float = 300.0


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
        self._assembler = MessageAssembler()
        self._message_ids = count(1)
        self._waiting: dict[int, tuple[defer.Deferred[Command], IDelayedCall]] = {}
        self._acse_timer: IDelayedCall | None = None

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
            message_id=next(self._message_ids),
            affected_sop_class_uid=uids.VERIFICATION,
        )
        d = self._request(context, command)
        d.addCallback(lambda response: response.status)
        return d

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

    def _context_for(self, abstract_syntax: str) -> AcceptedContext:
        for context in self.contexts.values():
            if context.abstract_syntax == abstract_syntax:
                return context
        raise NoAcceptedContext(f"no accepted presentation context for {abstract_syntax}")

    def _request(self, context: AcceptedContext, command: Command) -> defer.Deferred[Command]:
        d: defer.Deferred[Command] = defer.Deferred()
        timer = self.protocol.clock.callLater(
            self.settings.dimse_timeout, self._dimse_expired, command.message_id
        )
        self._waiting[command.message_id] = (d, timer)
        for pdu in fragment(context.context_id, command.encode(), None, self.peer_max_pdu_length):
            self.machine.data_request(pdu)
        return d

    # -- user port of the state machine ----------------------------------

    def associate_accepted(self, accept: AAssociateAC) -> None:
        self._stop_acse_timer()
        proposed = {c.context_id: c.abstract_syntax for c in self.request.presentation_contexts}
        self.contexts = {
            c.context_id: AcceptedContext(c.context_id, proposed[c.context_id], c.transfer_syntax)
            for c in accept.presentation_contexts
            if c.result == 0 and c.context_id in proposed
        }
        self.peer_max_pdu_length = accept.user_information.max_length or 0
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
                    if isinstance(event, CommandReceived):
                        self._response(event.command)
        except (AssemblyError, CommandError) as error:
            self.log.warn("aborting: {error}", error=str(error))
            self.machine.abort_request(
                AbortSource.SERVICE_PROVIDER, AbortReason.INVALID_PDU_PARAMETER_VALUE
            )
            self._fail_all(AssociationAborted(AbortSource.SERVICE_PROVIDER, 6))

    def _response(self, command: Command) -> None:
        waiting = self._waiting.pop(command.message_id_being_responded_to, None)
        if waiting is None:
            self.log.warn(
                "response to unknown message {id}", id=command.message_id_being_responded_to
            )
            return
        d, timer = waiting
        timer.cancel()
        d.callback(command)

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

    def _fail_all(self, error: AssociationError) -> None:
        waiting, self._waiting = self._waiting, {}
        for d, timer in waiting.values():
            if timer.active():
                timer.cancel()
            d.errback(error)
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
        waiting = self._waiting.pop(message_id, None)
        if waiting is not None:
            self.abort()
            waiting[0].errback(defer.TimeoutError(f"no response to message {message_id}"))
            self._fail_all(AssociationAborted(AbortSource.SERVICE_USER, AbortReason.NOT_SPECIFIED))


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

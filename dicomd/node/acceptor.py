"""The acceptor: how an association offered to the node becomes one, and who answers it.

`Acceptor` is the node's `DimseAssociation`.  It asks the validators whether
to accept, negotiates presentation contexts and SCP/SCU roles, then hands
each request to the service that serves the context's abstract syntax.  It
writes through the state machine, never around it, so every PDU we send is
one the standard allows in the current state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Final, Literal

from pydicom import Dataset
from twisted.internet import defer
from twisted.python.failure import Failure

from dicomd import metrics, uids
from dicomd.dimse.association import (
    DEFAULT_MAX_DATA_LENGTH,
    Data,
    DataSink,
    DimseAssociation,
    DiscardSink,
    Oversized,
    Request,
    Service,
    decode_in,
    out_of_resources,
)
from dicomd.dimse.command import Command, CommandField
from dicomd.dimse.datasets import DataSetError, DataSetTooLarge
from dicomd.dimse.messages import DEFAULT_MAX_COMMAND_LENGTH
from dicomd.dimse.negotiation import AcceptedContext, negotiate, negotiate_relational
from dicomd.dimse.work import Worker
from dicomd.interfaces import (
    REJECT_CALLED_AE,
    REJECT_CALLING_AE,
    REJECT_NO_REASON,
    Accept,
    AssociationRequest,
    Authenticated,
    AuthenticationFailed,
    FindQuery,
    IAssociationValidator,
    IAuthenticator,
    IAuthorizer,
    ProposedContext,
    Rejection,
    UserIdentity,
)
from dicomd.node.auditing import AssociationAudit
from dicomd.node.registry import ServiceRegistry
from dicomd.ul.fsm import State
from dicomd.ul.pdu import (
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    AsyncOperationsWindow,
    RoleSelection,
    UserIdentityAC,
    UserInformation,
)
from dicomd.ul.tls import peer_certificate
from dicomd.users import name_problem

if TYPE_CHECKING:
    from dicomd.audit.trail import AuditTrail
    from dicomd.ul.protocol import UpperLayerProtocol

_REJECT_APPLICATION_CONTEXT = Rejection(1, 1, 2, "application context name not supported")
_REJECT_PROTOCOL_VERSION = Rejection(1, 2, 2, "protocol version not supported")
_REJECT_IDENTITY = Rejection(1, 1, 1, "user identity refused")
_LOGINS_AT_ONCE: Final = 2
_MOST_LOGINS_WAITING: Final = 32
"""A flood of logins past this is turned away at once, transiently, so that a login that
gets in waits a fraction of a second for the checks before it, not the ACSE timeout."""
_REJECT_CONGESTION = Rejection(2, 3, 1, "too many logins waiting to be checked")


def _first_answer(
    authenticators: Sequence[IAuthenticator], identity: UserIdentity, request: AssociationRequest
) -> Authenticated | None:
    """Blocking: the first authenticator's answer for ``identity``; `AuthenticationFailed`
    from one that finds it wrong ends the search."""
    for authenticator in authenticators:
        answer = authenticator.authenticate(identity, request)
        if answer is not None:
            return answer
    return None


DEFAULT_MAX_IDENTIFIER_KEYS: Final = 1024
"""Real queries ask for tens of keys; each answer costs tens of microseconds a key."""

RelationalQueries = Literal["never", "negotiated", "always"]
"""Whom the node answers relational (non-hierarchical) queries and retrievals: nobody, the
peers that negotiate them, or every peer."""


@dataclass(frozen=True, slots=True)
class AcceptorSettings:
    """What every association of one node shares."""

    ae_title: str
    max_pdu_length: int
    dimse_timeout: float
    validators: Sequence[IAssociationValidator]
    services: ServiceRegistry
    worker: Worker
    max_command_length: int = DEFAULT_MAX_COMMAND_LENGTH
    max_data_length: int = DEFAULT_MAX_DATA_LENGTH
    max_identifier_keys: int = DEFAULT_MAX_IDENTIFIER_KEYS
    authenticators: Sequence[IAuthenticator] = ()
    identity_required: bool = False
    authorizer: IAuthorizer | None = None
    audit: AuditTrail | None = None
    relational: RelationalQueries = "negotiated"
    # scrypt takes 16 MiB and tens of milliseconds a login: a flood of logins queues here
    # instead of filling memory and every worker thread.
    logins: defer.DeferredSemaphore = dataclasses.field(
        default_factory=lambda: defer.DeferredSemaphore(_LOGINS_AT_ONCE)
    )


class QueryRefused(Exception):
    """An identifier the node answers with a failure before any handler sees it."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status, self.comment = status, comment


class Acceptor(DimseAssociation):
    """The service user of one association offered to the node."""

    def __init__(self, settings: AcceptorSettings, protocol: UpperLayerProtocol) -> None:
        super().__init__(
            protocol,
            settings.dimse_timeout,
            settings.worker,
            settings.max_command_length,
            settings.max_data_length,
        )
        self.settings = settings
        self.peer_scp_roles: frozenset[str] = frozenset()
        # The server response of a verified identity whose peer asked for a positive one.
        self._identity_response: bytes | None = None
        self._identity_refusal: str | None = None
        self.description: AssociationRequest | None = None
        self.audit: AssociationAudit | None = None
        self._arrivals: dict[int, float] = {}
        """When each request being answered arrived (by message ID), for its duration."""

    async def read_query(self, request: Request) -> FindQuery:
        """The identifier of a C-FIND, C-MOVE or C-GET request as handlers see it.

        Raises `QueryRefused` with the answer the standard gives when the
        identifier does not decode (C000), holds more keys than the node answers
        (A700, A701), or names a Query/Retrieve Level the model does not have
        (A900); a worklist identifier has no level.  The query is ``relational`` when
        the peer negotiated it for the context's SOP class, or the node takes
        relational identifiers from every peer.
        """
        model = request.context.abstract_syntax
        try:
            identifier = await decode_in(self, request.data or b"", request.context.transfer_syntax)
        except DataSetTooLarge as error:
            raise self._too_large(request, str(error), "max_identifier_length") from None
        except DataSetError as error:
            raise QueryRefused(uids.Status.CANNOT_UNDERSTAND, str(error)) from None
        if self.audit is not None:
            self.audit.identifier_read(request, identifier)
        limit = self.settings.max_identifier_keys
        if count_keys(identifier, up_to=limit + 1) > limit:
            raise self._too_large(
                request, f"an identifier of more than {limit} keys", "max_identifier_keys"
            )
        level = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
        if model in uids.QUERY_RETRIEVE_LEVELS and level not in uids.QUERY_RETRIEVE_LEVELS[model]:
            raise QueryRefused(
                uids.Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
                f"Query/Retrieve Level {level!r} is not in this model",
            )
        return FindQuery(
            identifier,
            model,
            level,
            self.calling_ae_title,
            self.called_ae_title,
            self.peer_host,
            relational=request.context.relational or self.settings.relational == "always",
        )

    def _too_large(self, request: Request, problem: str, limit: str) -> QueryRefused:
        """An identifier past the node's ``limit``: one line in the log, A700 or A701."""
        metrics.limit_hit(limit)
        self.log.warn(
            "{peer_ae} at {peer} sent {problem}; refused",
            peer_ae=self.peer_ae_title,
            peer=self.peer,
            problem=problem,
        )
        return QueryRefused(out_of_resources(request.command.command_field), problem)

    def service_for(self, context: AcceptedContext, command: Command) -> Service | None:
        self._arrivals[command.message_id] = self.protocol.clock.seconds()
        service = self.settings.services.service_for(context.abstract_syntax)
        if service is None or command.command_field not in service.operations:
            return None
        refusal = self._not_authorized(command)
        return service if refusal is None else refusal

    def _not_authorized(self, command: Command) -> NotAuthorized | None:
        """A stand-in for the service when the authorizer does not allow ``command``."""
        authorizer = self.settings.authorizer
        operation = _OPERATIONS.get(command.command_field)
        if authorizer is None or operation is None or self.description is None:
            return None
        destination = command.move_destination if operation == "move" else None
        if authorizer.may(self.description, operation, destination):
            return None
        what = f"{operation} to {destination}" if destination else operation
        if self.audit is not None:
            self.audit.refused(f"{self.peer_ae_title} may not {what}")
        self.log.warn(
            "{peer_ae} at {peer} may not {what}; refused with 0124",
            peer_ae=self.peer_ae_title,
            peer=self.peer,
            what=what,
        )
        return NotAuthorized(f"{self.peer_ae_title} may not {what}")

    # -- A-ASSOCIATE ------------------------------------------------------

    def associate_indication(self, request: AAssociateRQ) -> None:
        self.calling_ae_title = request.calling_ae_title
        self.called_ae_title = request.called_ae_title
        trail = self.settings.audit
        if trail is not None and trail.enabled:
            self.audit = AssociationAudit(trail, self.peer_host)
            self.audit.named(request.calling_ae_title)
            self.ended.addCallback(lambda _: self.audit and self.audit.ended())
        self.log.info(
            "association requested by {calling} at {peer} for {called}",
            calling=request.calling_ae_title,
            peer=self.peer,
            called=request.called_ae_title,
        )
        if not request.protocol_version & 1:
            self._reject(_REJECT_PROTOCOL_VERSION)
            return
        if request.application_context != uids.APPLICATION_CONTEXT:
            self._reject(_REJECT_APPLICATION_CONTEXT)
            return
        rejection = _unanswerable(request)
        if rejection is not None:
            self._reject(rejection)
            return
        d = self._authenticate(self._describe(request))
        d.addCallback(self._validate)
        d.addCallback(self._decided, request)

    def _authenticate(
        self, request: AssociationRequest
    ) -> defer.Deferred[AssociationRequest | Rejection]:
        """Who the peer is by its user identity: the request with its ``user``, or the
        rejection (1, 1, 1) of a wrong identity, or of a missing one when one is required.
        With no authenticator configured, an identity is neither checked nor confirmed."""
        identity = request.user_identity
        if identity is None or not self.settings.authenticators:
            if identity is None and self.settings.identity_required:
                return defer.succeed(self._refused_identity("no user identity was sent"))
            return defer.succeed(request)
        if len(self.settings.logins.waiting) >= _MOST_LOGINS_WAITING:
            self.log.warn(
                "{calling} at {peer}: {waiting} logins already wait to be checked; rejected",
                calling=request.calling_ae_title,
                peer=self.peer,
                waiting=len(self.settings.logins.waiting),
            )
            return defer.succeed(_REJECT_CONGESTION)
        d = self.settings.logins.run(
            self.settings.worker.run, _first_answer, self.settings.authenticators, identity, request
        )

        def answered(answer: Authenticated | None) -> AssociationRequest | Rejection:
            if answer is None:
                return self._refused_identity(
                    f"no authenticator knows identity type {identity.identity_type}"
                )
            problem = name_problem(answer.user)
            if problem is not None:  # a token's sub, a plugin's answer: it goes into logs and rules
                return self._refused_identity(f"user {answer.user[:80]!r}: {problem}")
            self._identity_response = (
                answer.server_response if identity.positive_response_requested else None
            )
            self.log.info(
                "{calling} at {peer} authenticated as {user}",
                calling=request.calling_ae_title,
                peer=self.peer,
                user=answer.user,
            )
            if self.audit is not None:
                self.audit.named(request.calling_ae_title, answer.user)
            return dataclasses.replace(request, user=answer.user)

        def failed(failure: Failure) -> Rejection:
            if failure.check(AuthenticationFailed):
                return self._refused_identity(failure.getErrorMessage())
            self.log.failure("an authenticator failed", failure)
            return self._refused_identity("the authenticator failed")

        return d.addCallbacks(answered, failed)

    def _refused_identity(self, why: str) -> Rejection:
        self._identity_refusal = why
        self.log.warn(
            "user identity of {calling} at {peer} refused: {why}",
            calling=self.calling_ae_title,
            peer=self.peer,
            why=why,
        )
        return _REJECT_IDENTITY

    def _validate(
        self, request: AssociationRequest | Rejection
    ) -> defer.Deferred[Accept | Rejection]:
        if isinstance(request, Rejection):
            return defer.succeed(request)
        self.description = request
        return _first_rejection(self.settings.validators, request)

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
        proposed_info = request.user_information
        extended = negotiate_relational(
            proposed_info.sop_class_extended,
            negotiated.accepted,
            willing=self.settings.relational != "never",
        )
        self.contexts = extended.accepted
        self.peer_max_pdu_length = proposed_info.max_length or 0
        roles = self._roles(proposed_info.role_selections)
        self.peer_scp_roles = frozenset(role.sop_class_uid for role in roles if role.scp_role)
        self._open_outbox()
        info = UserInformation(
            max_length=self.settings.max_pdu_length,
            implementation_class_uid=uids.IMPLEMENTATION_CLASS_UID,
            implementation_version_name=uids.IMPLEMENTATION_VERSION_NAME,
            # We perform one operation at a time: the window we grant is 1/1.
            async_operations_window=(
                AsyncOperationsWindow(1, 1) if proposed_info.async_operations_window else None
            ),
            user_identity_ac=(
                UserIdentityAC(self._identity_response)
                if self._identity_response is not None
                else None
            ),
            role_selections=roles,
            sop_class_extended=extended.answers,
        )
        accept = AAssociateAC(
            called_ae_title=request.called_ae_title,
            calling_ae_title=request.calling_ae_title,
            presentation_contexts=negotiated.results,
            user_information=info,
        )
        self.machine.associate_response(accept)
        metrics.association_accepted()
        self.ended.addBoth(_ended)
        if self.audit is not None:
            self.audit.accepted()
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
        metrics.association_rejected(
            rejection.source, rejection.reason, identity=self._identity_refusal is not None
        )
        if self.audit is not None:
            self.audit.rejected(
                self._identity_refusal or rejection.message or "no reason given",
                identity=self._identity_refusal is not None,
            )

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
            peer_certificate=peer_certificate(self.protocol.transport),
        )

    def respond(
        self, request: Request, status: int, dataset: Data = None, **fields: object
    ) -> None:
        super().respond(request, status, dataset, **fields)
        if status not in _PENDING:
            self._operation_ended(request, status)
        if self.audit is not None:
            self.audit.responded(request, status, fields)

    def _operation_ended(self, request: Request, status: int) -> None:
        """The final answer to ``request`` went: count it, and how long it took."""
        command = request.command
        arrived = self._arrivals.pop(command.message_id, None)
        service = _OPERATIONS.get(command.command_field)
        if service is not None:
            seconds = None if arrived is None else self.protocol.clock.seconds() - arrived
            metrics.observe_operation(service, uids.status_category(status), seconds)
        if isinstance(request.data, Oversized):
            metrics.limit_hit("max_identifier_length")

    # The requestor-side confirmations never reach an acceptor.
    def associate_accepted(self, accept: AAssociateAC) -> None:
        raise AssertionError("an acceptor does not receive A-ASSOCIATE-AC")

    def associate_rejected(self, reject: AAssociateRJ) -> None:
        raise AssertionError("an acceptor does not receive A-ASSOCIATE-RJ")

    def release_confirmation(self) -> None:
        """The peer's A-RELEASE-RP after a release collision: now we answer its request."""
        if self.machine.state is State.STA12:
            self.machine.release_response()


MINIMUM_PEER_PDU_LENGTH: Final = 8
"""The smallest maximum length a peer may announce: one PDV header and two bytes of data,
the least that a message can be fragmented into (PS3.8 9.3.5, E.2)."""


def _unanswerable(request: AAssociateRQ) -> Rejection | None:
    """A request whose answer cannot be built or used: AE titles the A-ASSOCIATE-AC would echo
    that are no AE titles, or a maximum length no message fits into."""
    problem = uids.ae_title_problem(request.calling_ae_title)
    if problem is not None:
        return dataclasses.replace(REJECT_CALLING_AE, message=f"calling {problem}")
    problem = uids.ae_title_problem(request.called_ae_title)
    if problem is not None:
        return dataclasses.replace(REJECT_CALLED_AE, message=f"called {problem}")
    max_length = request.user_information.max_length or 0
    if 0 < max_length < MINIMUM_PEER_PDU_LENGTH:
        return Rejection(1, 1, 1, f"maximum length {max_length} leaves no room for a PDV")
    return None


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


def count_keys(identifier: Dataset, up_to: int) -> int:
    """The keys of ``identifier``, those inside sequence items included, counted up to
    ``up_to``: each one read costs, so counting stops there."""
    return sum(1 for _ in islice(identifier.iterall(), up_to))


def _ended(result: object) -> object:
    """An accepted association is over, however it ended."""
    metrics.association_ended()
    return result


_PENDING: Final = frozenset({uids.Status.PENDING, uids.Status.PENDING_WARNING})

_OPERATIONS: Final = {
    CommandField.C_ECHO_RQ: "echo",
    CommandField.C_STORE_RQ: "store",
    CommandField.C_FIND_RQ: "find",
    CommandField.C_MOVE_RQ: "move",
    CommandField.C_GET_RQ: "get",
}


class NotAuthorized:
    """Answers a request the peer may not make: its data set read and dropped, then 0124."""

    operations = frozenset(_OPERATIONS)

    def __init__(self, comment: str) -> None:
        self.comment = comment

    def open_sink(
        self, association: DimseAssociation, context: AcceptedContext, command: Command
    ) -> DataSink:
        return DiscardSink()

    def handle(self, association: DimseAssociation, request: Request) -> None:
        association.respond(
            request, uids.Status.NOT_AUTHORIZED, error_comment=uids.error_comment(self.comment)
        )

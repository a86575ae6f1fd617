"""Retrieve (C-MOVE and C-GET) SCP, PS3.4 C.4.2 and C.4.3: send the selected instances.

For C-MOVE, the instances go to a known AE over an association of our own;
for C-GET, back to the requester over its own association.  For each, the
service asks the retrieve source which instances the
identifier selects and whether the caller may have them sent to the move
destination, opens its own association to that destination, sends every
instance as it is stored (C-STORE sub-operations carrying the move
originator), and reports progress after each with a pending response
holding the sub-operation counts.  The requesting association is never
harmed by what the destination does: a refusal or an abort there only turns
the remaining sub-operations into failures.  The final status is B000 when
some sub-operations failed and others did not, A702 when every one failed
(or none could be attempted: the destination cannot be reached), always with
the Failed SOP Instance UID List.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pydicom import Dataset
from twisted.internet import defer
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IReactorTCP
from twisted.internet.ssl import Certificate, optionsForClientTLS, platformTrust
from twisted.logger import Logger
from twisted.python.failure import Failure

from dicomd import uids
from dicomd.client import (
    AssociationError,
    ClientAssociation,
    ClientSettings,
    NoAcceptedContext,
    StoreResult,
    associate,
    storage_contexts,
    store_request,
)
from dicomd.config import Destination
from dicomd.dimse.command import CommandField
from dicomd.dimse.datasets import DataSetError, decode_dataset, encode_dataset, error_comment
from dicomd.interfaces import InvalidIdentifier, IRetrieveSource, RetrieveItem
from dicomd.node.acceptor import AssociationEnded

if TYPE_CHECKING:
    from dicomd.node.acceptor import Acceptor, Request


@dataclass(slots=True)
class Progress:
    """The sub-operation counts of one retrieve (PS3.4 C.4.2.1.6)."""

    remaining: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] = field(default_factory=list)

    def fields(self) -> dict[str, int]:
        return {
            "number_of_remaining_suboperations": self.remaining,
            "number_of_completed_suboperations": self.completed,
            "number_of_failed_suboperations": self.failed,
            "number_of_warning_suboperations": self.warning,
        }

    def fail(self, items: Sequence[RetrieveItem]) -> None:
        self.failed += len(items)
        self.remaining -= len(items)
        self.failed_uids += [item.sop_instance_uid for item in items]


class _RetrieveService:
    """What C-MOVE and C-GET share: the identifier, the source, the sub-operations, the counts."""

    log = Logger()
    models: frozenset[str]

    def __init__(self, source: IRetrieveSource) -> None:
        self.source = source
        self.abstract_syntaxes = frozenset(source.models) & self.models

    def handle(self, association: Acceptor, request: Request) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._retrieve(association, request))

    async def _retrieve(self, association: Acceptor, request: Request) -> None:
        reply = _Replier(association, request)
        try:
            identifier = decode_dataset(request.data or b"", request.context.transfer_syntax)
        except DataSetError as error:
            reply.final(uids.Status.CANNOT_UNDERSTAND, comment=str(error))
            return
        level = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
        model = request.context.abstract_syntax
        if level not in uids.QUERY_RETRIEVE_LEVELS[model]:
            reply.final(
                uids.Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
                comment=f"Query/Retrieve Level {level!r} is not in this model",
            )
            return
        destination = self.destination(association, request, reply)
        if destination is None:
            return
        query = association.find_query(identifier, model, level)
        if not self.source.may_move(query, destination):
            reply.final(uids.Status.NOT_AUTHORIZED, comment=f"may not retrieve to {destination}")
            return
        try:
            items = await defer.maybeDeferred(self.source.instances, query)
        except InvalidIdentifier as error:
            reply.final(uids.Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, comment=str(error))
            return
        except Exception as error:
            self.log.failure("retrieve source failed", Failure())
            status = uids.Status.OUT_OF_RESOURCES_UNABLE_TO_CALCULATE_MATCHES
            reply.final(status, comment=str(error))
            return
        progress = Progress(remaining=len(items))
        if not items:
            reply.final(uids.Status.SUCCESS, progress)
            return
        storer = await self.storer(association, request, items, progress, reply)
        if storer is None:
            return
        try:
            await self._store_each(reply, storer, items, progress, request.command.message_id or 0)
        finally:
            self.done(storer)
        if reply.cancelled:
            reply.final(uids.Status.CANCEL, progress)
        elif progress.failed and not (progress.completed or progress.warning):
            # Warning (B000) says some sub-operations succeeded; none did (PS3.4 C.4.2.1.5).
            reply.final(uids.Status.OUT_OF_RESOURCES_UNABLE_TO_PERFORM_SUB_OPERATIONS, progress)
        elif progress.failed or progress.warning:
            reply.final(uids.Status.SUB_OPERATIONS_COMPLETE_WITH_FAILURES, progress)
        else:
            reply.final(uids.Status.SUCCESS, progress)

    def destination(self, association: Acceptor, request: Request, reply: _Replier) -> str | None:
        """The AE the instances go to, or None after answering why not."""
        raise NotImplementedError

    async def storer(
        self,
        association: Acceptor,
        request: Request,
        items: list[RetrieveItem],
        progress: Progress,
        reply: _Replier,
    ) -> Storer | None:
        """What sends the sub-operations, or None after answering why there is none."""
        raise NotImplementedError

    def done(self, storer: Storer) -> None:
        """The sub-operations are over."""

    async def _store_each(
        self,
        reply: _Replier,
        storer: Storer,
        items: list[RetrieveItem],
        progress: Progress,
        message_id: int,
    ) -> None:
        for number, item in enumerate(items):
            if reply.gone:
                progress.fail(items[number:])
                return
            if reply.cancelled:
                return
            try:
                result = await storer.store(
                    item.source, move_originator=self.originator(reply, message_id)
                )
            except Exception as error:
                if isinstance(error, AssociationError | AssociationEnded) and not isinstance(
                    error, NoAcceptedContext
                ):
                    self.log.warn("retrieve: the sub-operations' association ended: {e}", e=error)
                    progress.fail(items[number:])
                    return
                self.log.warn(
                    "retrieve: cannot send {uid}: {e}", uid=item.sop_instance_uid, e=error
                )
                progress.fail([item])
                reply.pending(progress)
                continue
            progress.remaining -= 1
            category = uids.status_category(result.status)
            if category == "success":
                progress.completed += 1
            elif category == "warning":
                progress.warning += 1
            else:
                progress.failed += 1
                progress.failed_uids.append(item.sop_instance_uid)
            reply.pending(progress)

    def originator(self, reply: _Replier, message_id: int) -> tuple[str, int] | None:
        return None


class MoveService(_RetrieveService):
    """C-MOVE SCP: the sub-operations go over an association of our own to a known AE."""

    models = frozenset({uids.PATIENT_ROOT_MOVE, uids.STUDY_ROOT_MOVE})
    operations = frozenset({CommandField.C_MOVE_RQ})

    def __init__(
        self,
        source: IRetrieveSource,
        destinations: Mapping[str, Destination],
        reactor: IReactorTCP,
        settings: Callable[[str], ClientSettings],
    ) -> None:
        super().__init__(source)
        self.destinations = destinations
        self.reactor = reactor
        self.settings = settings
        # A destination's max_associations: moves to it beyond that wait their turn.
        self._turns = {
            name: defer.DeferredSemaphore(destination.max_associations)
            for name, destination in destinations.items()
            if destination.max_associations
        }
        self._holding: dict[Storer, defer.DeferredSemaphore] = {}

    def destination(self, association: Acceptor, request: Request, reply: _Replier) -> str | None:
        name = (request.command.move_destination or "").strip()
        if name not in self.destinations:
            reply.final(
                uids.Status.MOVE_DESTINATION_UNKNOWN, comment=f"unknown move destination {name!r}"
            )
            return None
        return name

    async def storer(
        self,
        association: Acceptor,
        request: Request,
        items: list[RetrieveItem],
        progress: Progress,
        reply: _Replier,
    ) -> Storer | None:
        destination = self.destinations[(request.command.move_destination or "").strip()]
        kinds = [(item.sop_class_uid, item.transfer_syntax) for item in items]
        turn = self._turns.get(destination.ae_title)
        if turn is not None:
            await turn.acquire()
        try:
            sub = await associate(
                self.reactor,
                destination.host,
                destination.port,
                self.settings(destination.ae_title),
                storage_contexts(kinds),
                tls=_tls(destination),
            )
        except Exception as error:
            if turn is not None:
                turn.release()
            self.log.warn(
                "C-MOVE to {destination}: cannot associate: {error}",
                destination=destination.ae_title,
                error=str(error),
            )
            progress.fail(items)
            reply.final(uids.Status.OUT_OF_RESOURCES_UNABLE_TO_PERFORM_SUB_OPERATIONS, progress)
            return None
        if turn is not None:
            self._holding[sub] = turn
        return sub

    def done(self, storer: Storer) -> None:
        sub: ClientAssociation = storer  # type: ignore[assignment]
        released = (
            sub.release().addErrback(lambda _: None)
            if sub.machine.is_established
            else defer.succeed(None)
        )
        turn = self._holding.pop(storer, None)
        if turn is not None:
            released.addBoth(lambda _: turn.release())

    def originator(self, reply: _Replier, message_id: int) -> tuple[str, int] | None:
        return (reply.calling_ae_title, message_id)


def _tls(destination: Destination) -> IOpenSSLClientConnectionCreator | None:
    """Client TLS options for a destination that asks for TLS, checking its certificate."""
    if not destination.tls:
        return None
    if destination.ca_certificates is None:
        trust = platformTrust()
    else:
        trust = Certificate.loadPEM(destination.ca_certificates.read_bytes())
    return optionsForClientTLS(destination.host, trustRoot=trust)


class GetService(_RetrieveService):
    """C-GET SCP: the sub-operations go back over the requesting association itself."""

    models = frozenset({uids.PATIENT_ROOT_GET, uids.STUDY_ROOT_GET})
    operations = frozenset({CommandField.C_GET_RQ})

    def destination(self, association: Acceptor, request: Request, reply: _Replier) -> str | None:
        return association.calling_ae_title

    async def storer(
        self,
        association: Acceptor,
        request: Request,
        items: list[RetrieveItem],
        progress: Progress,
        reply: _Replier,
    ) -> Storer | None:
        return _BackToRequester(association)


class Storer(Protocol):
    """Whatever sends one C-STORE sub-operation."""

    def store(
        self, source: Path | Dataset, move_originator: tuple[str, int] | None = None
    ) -> defer.Deferred[StoreResult]: ...


class _BackToRequester:
    """C-STORE requests from us to the C-GET requester, on the presentation contexts it
    proposed for storage and took the SCP role for (PS3.4 C.4.3.1)."""

    def __init__(self, association: Acceptor) -> None:
        self.association = association

    def store(
        self, source: Path | Dataset, move_originator: tuple[str, int] | None = None
    ) -> defer.Deferred[StoreResult]:
        association = self.association
        roles = association.peer_scp_roles
        contexts = [c for c in association.contexts.values() if c.abstract_syntax in roles]
        context, command, data = store_request(contexts, source)
        d = association.request(context.context_id, command, data)
        return d.addCallback(
            lambda response: StoreResult(
                response.status, command.affected_sop_instance_uid or "", response.error_comment
            )
        )


class _Replier:
    """The responses to one C-MOVE (or C-GET) request, and its cancellation."""

    def __init__(self, association: Acceptor, request: Request) -> None:
        self.association = association
        self.request = request
        self.calling_ae_title = association.calling_ae_title
        self.cancelled = False
        association.on_cancel(request.command.message_id or 0, self._cancel)

    @property
    def gone(self) -> bool:
        """The requesting association ended: nobody to report to."""
        return self.association.ended.called

    def _cancel(self) -> None:
        self.cancelled = True

    def pending(self, progress: Progress) -> None:
        if progress.remaining:
            self.association.respond(self.request, uids.Status.PENDING, **progress.fields())

    def final(self, status: int, progress: Progress | None = None, comment: str = "") -> None:
        self.association.forget_cancel(self.request.command.message_id or 0)
        fields: dict[str, object] = {}
        if progress is not None:
            fields.update(progress.fields())
            if status != uids.Status.CANCEL:
                fields["number_of_remaining_suboperations"] = None  # only in pending and cancel
        if comment:
            fields["error_comment"] = error_comment(comment)
        data = None
        if progress is not None and progress.failed_uids:
            failed = Dataset()
            failed.FailedSOPInstanceUIDList = progress.failed_uids
            data = encode_dataset(failed, self.request.context.transfer_syntax)
        self.association.respond(self.request, status, data, **fields)

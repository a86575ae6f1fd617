"""Retrieve (C-MOVE and C-GET) SCP, PS3.4 C.4.2 and C.4.3: send the selected instances.

For C-MOVE, the instances go to a known AE over an association of our own;
for C-GET, back to the requester over its own association.  For each, the
service asks the retrieve source which instances the
identifier selects and whether the caller may have them sent to the move
destination, opens its own association to that destination, sends every
instance as it is stored (C-STORE sub-operations carrying the move
originator), and reports progress after each with a pending response
holding the sub-operation counts.  An instance stored compressed in a
syntax the peer did not accept goes decompressed when a `Decompressor` is
given (for C-GET) or the destination asks for it (C-MOVE); otherwise it
counts as a failed sub-operation.  The requesting association is never
harmed by what the destination does: a refusal or an abort there only turns
the remaining sub-operations into failures.  The final status is B000 when
some sub-operations failed and others did not, A702 when every one failed
(or none could be attempted: the destination cannot be reached), always with
the Failed SOP Instance UID List.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pydicom import Dataset
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from dicomd import uids
from dicomd.dimse.association import DataSink, DimseAssociation, Request
from dicomd.dimse.command import Command, CommandField
from dicomd.dimse.datasets import encode_dataset
from dicomd.dimse.errors import AssociationError, NoAcceptedContext
from dicomd.dimse.negotiation import AcceptedContext
from dicomd.dimse.sending import StoreResult, send_store, storage_contexts
from dicomd.dimse.transcode import Decompressor
from dicomd.interfaces import InvalidIdentifier, IRetrieveSource, RetrieveItem
from dicomd.node.acceptor import Acceptor, QueryRefused
from dicomd.ul.pdu import PresentationContextRQ

Storer = Callable[[Path | Dataset, "tuple[str, int] | None"], "defer.Deferred[StoreResult]"]
"""Sends one C-STORE sub-operation: the instance, and the move originator (or None)."""


class MoveDestinations(Protocol):
    """The AEs C-MOVE may send to, and how to open an association to one of them."""

    def __contains__(self, ae_title: object) -> bool: ...

    def associate(
        self, ae_title: str, contexts: Sequence[PresentationContextRQ]
    ) -> defer.Deferred[DimseAssociation]:
        """An association to ``ae_title`` proposing ``contexts``; it may wait for a free turn
        when the destination limits its associations, until the association ends."""

    def decompresses(self, ae_title: str) -> bool:
        """Whether instances go to ``ae_title`` decompressed when it accepts none of their
        compressed syntaxes (else they count as failed)."""


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
    transfer_syntaxes = None

    def __init__(self, source: IRetrieveSource) -> None:
        self.source = source
        self.abstract_syntaxes = frozenset(source.retrieve_models) & self.models

    def open_sink(
        self, association: DimseAssociation, context: AcceptedContext, command: Command
    ) -> DataSink:
        return association.memory_sink()

    def handle(self, association: Acceptor, request: Request) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._retrieve(association, request))

    async def _retrieve(self, association: Acceptor, request: Request) -> None:
        reply = _Replier(association, request)
        try:
            query = await association.read_query(request)
        except QueryRefused as refused:
            reply.final(refused.status, comment=refused.comment)
            return
        destination = self.destination(association, request, reply)
        if destination is None:
            return
        try:
            allowed = await defer.maybeDeferred(self.source.may_move, query, destination)
            if not allowed:
                reply.final(
                    uids.Status.NOT_AUTHORIZED, comment=f"may not retrieve to {destination}"
                )
                return
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
        kinds = [(item.sop_class_uid, item.transfer_syntax) for item in items]
        try:
            sub_associations = await self.sub_associations(destination, association, kinds)
        except Exception as error:
            self.log.warn(
                "retrieve to {destination}: cannot associate: {error}",
                destination=destination,
                error=str(error),
            )
            progress.fail(items)
            reply.final(uids.Status.OUT_OF_RESOURCES_UNABLE_TO_PERFORM_SUB_OPERATIONS, progress)
            return
        try:
            await self._store_each(
                reply,
                self.storer(sub_associations, destination),
                items,
                progress,
                request.command.message_id or 0,
            )
        finally:
            self.done(sub_associations)
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

    async def sub_associations(
        self, destination: str, association: Acceptor, kinds: list[tuple[str, str]]
    ) -> DimseAssociation:
        """Where the sub-operations to ``destination`` go, for instances of these (SOP class,
        transfer syntax) kinds; an exception when they cannot go anywhere."""
        raise NotImplementedError

    def storer(self, association: DimseAssociation, destination: str) -> Storer:
        """How one sub-operation to ``destination`` is sent on ``association``."""
        raise NotImplementedError

    def done(self, association: DimseAssociation) -> None:
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
                result = await self._send_one(storer, item, self.originator(reply, message_id))
            except Exception as error:
                if isinstance(error, AssociationError) and not isinstance(error, NoAcceptedContext):
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

    async def _send_one(
        self, storer: Storer, item: RetrieveItem, originator: tuple[str, int] | None
    ) -> StoreResult:
        """One sub-operation; an instance the source must fetch first is sent from the spool
        file it is fetched into, removed once its C-STORE is over."""
        if item.fetch is None:
            return await storer(item.source, originator)
        spooled = await item.fetch()
        try:
            return await storer(spooled, originator)
        finally:
            spooled.unlink(missing_ok=True)


class MoveService(_RetrieveService):
    """C-MOVE SCP: the sub-operations go over an association of our own to a known AE."""

    models = frozenset({uids.PATIENT_ROOT_MOVE, uids.STUDY_ROOT_MOVE})
    operations = frozenset({CommandField.C_MOVE_RQ})

    def __init__(
        self,
        source: IRetrieveSource,
        destinations: MoveDestinations,
        decompressor: Decompressor | None = None,
    ) -> None:
        super().__init__(source)
        self.destinations = destinations
        self.decompressor = decompressor

    def destination(self, association: Acceptor, request: Request, reply: _Replier) -> str | None:
        name = (request.command.move_destination or "").strip()
        if name not in self.destinations:
            reply.final(
                uids.Status.MOVE_DESTINATION_UNKNOWN, comment=f"unknown move destination {name!r}"
            )
            return None
        return name

    async def sub_associations(
        self, destination: str, association: Acceptor, kinds: list[tuple[str, str]]
    ) -> DimseAssociation:
        contexts = storage_contexts(kinds, self._decompressor_for(destination))
        return await self.destinations.associate(destination, contexts)

    def storer(self, association: DimseAssociation, destination: str) -> Storer:
        decompressor = self._decompressor_for(destination)
        return lambda source, originator: send_store(
            association,
            source,
            association.contexts.values(),
            move_originator=originator,
            decompressor=decompressor,
        )

    def _decompressor_for(self, destination: str) -> Decompressor | None:
        return self.decompressor if self.destinations.decompresses(destination) else None

    def done(self, association: DimseAssociation) -> None:
        if association.is_established:
            association.release().addErrback(lambda _: None)  # type: ignore[attr-defined]

    def originator(self, reply: _Replier, message_id: int) -> tuple[str, int] | None:
        return (reply.calling_ae_title, message_id)


class GetService(_RetrieveService):
    """C-GET SCP: the sub-operations go back over the requesting association itself, on the
    presentation contexts it proposed for storage and took the SCP role for (PS3.4 C.4.3.1);
    with a ``decompressor``, decompressed when it proposed none of an instance's syntax."""

    models = frozenset({uids.PATIENT_ROOT_GET, uids.STUDY_ROOT_GET})
    operations = frozenset({CommandField.C_GET_RQ})

    def __init__(self, source: IRetrieveSource, decompressor: Decompressor | None = None) -> None:
        super().__init__(source)
        self.decompressor = decompressor

    def destination(self, association: Acceptor, request: Request, reply: _Replier) -> str | None:
        return association.calling_ae_title

    async def sub_associations(
        self, destination: str, association: Acceptor, kinds: list[tuple[str, str]]
    ) -> DimseAssociation:
        return association

    def storer(self, association: DimseAssociation, destination: str) -> Storer:
        acceptor: Acceptor = association  # type: ignore[assignment]
        roles = acceptor.peer_scp_roles
        contexts = [c for c in acceptor.contexts.values() if c.abstract_syntax in roles]
        return lambda source, _originator: send_store(
            acceptor, source, contexts, decompressor=self.decompressor
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
            fields["error_comment"] = uids.error_comment(comment)
        data = None
        if progress is not None and progress.failed_uids:
            failed = Dataset()
            failed.FailedSOPInstanceUIDList = progress.failed_uids
            data = encode_dataset(failed, self.request.context.transfer_syntax)
        self.association.respond(self.request, status, data, **fields)

"""The requestor: an association we open, and the operations it offers; each returns a Deferred.

`Requestor` is the SCU's `DimseAssociation`.  It adds the A-ASSOCIATE
request and its ACSE timer, release, and one method per DIMSE operation.
A failure status is a result, not an exception; anything that stops an
operation (no accepted context, the association ending, a DIMSE timeout)
arrives as an errback, never as an exception raised at the call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.python.failure import Failure

from dicomd import uids
from dicomd.dimse.association import DimseAssociation, Operation, Service
from dicomd.dimse.command import DATA_SET_PRESENT, Command, CommandField
from dicomd.dimse.errors import AssociationError, AssociationRejected, AssociationTimeout
from dicomd.dimse.negotiation import AcceptedContext
from dicomd.dimse.work import Worker
from dicomd.scu.operations import (
    FindOperation,
    FindResult,
    GetOperation,
    InstanceCallback,
    RetrieveOperation,
    RetrieveProgress,
    RetrieveResult,
)
from dicomd.ul.fsm import State
from dicomd.ul.pdu import AAssociateAC, AAssociateRJ, AAssociateRQ
from dicomd.ul.timer import Timer

if TYPE_CHECKING:
    from pydicom import Dataset

    from dicomd.dimse.sending import StoreResult
    from dicomd.part10 import Part10Header
    from dicomd.ul.protocol import UpperLayerProtocol


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


class Requestor(DimseAssociation):
    """The requestor's service user for one association."""

    def __init__(
        self,
        protocol: UpperLayerProtocol,
        request: AAssociateRQ,
        settings: ClientSettings,
        worker: Worker,
    ) -> None:
        super().__init__(protocol, settings.dimse_timeout, worker)
        self.proposal = request
        self.settings = settings
        self.calling_ae_title = request.calling_ae_title
        self.called_ae_title = request.called_ae_title
        self.max_outstanding = 1
        self.established: defer.Deferred[Requestor] = defer.Deferred()
        self._released: defer.Deferred[None] | None = None
        self._acse_timer = Timer(protocol.clock, settings.acse_timeout, self._acse_expired)

    def begin(self) -> None:
        """A-ASSOCIATE request (Evt1): the machine sends it once the transport connects."""
        self._acse_timer.start()
        self.machine.associate_request(self.proposal)

    # -- operations -------------------------------------------------------

    def echo(self) -> defer.Deferred[int]:
        """C-ECHO; fires with the response status."""
        return self._invoke(
            uids.VERIFICATION,
            Operation,
            Command(command_field=CommandField.C_ECHO_RQ, affected_sop_class_uid=uids.VERIFICATION),
        ).addCallback(lambda response: response.status)

    def find(
        self,
        sop_class_uid: str,
        identifier: Dataset,
        on_match: Callable[[Dataset], object] | None = None,
        priority: int = 0,
    ) -> defer.Deferred[FindResult]:
        """C-FIND; each match goes to ``on_match`` as it arrives, and all of them to the result.

        Cancelling the Deferred sends C-CANCEL (it then fails with
        `defer.CancelledError`; the peer's final response is taken quietly).
        """
        command = Command(
            command_field=CommandField.C_FIND_RQ,
            affected_sop_class_uid=sop_class_uid,
            priority=priority,
            command_data_set_type=DATA_SET_PRESENT,
        )
        return self._invoke(
            sop_class_uid, lambda context: FindOperation(context, on_match), command, identifier
        )

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
        found = self.find(sop_class_uid, identifier, arrivals.put, priority)
        found.addBoth(lambda outcome: arrivals.put(_FindEnded(outcome)))
        try:
            while not isinstance(arrival := await arrivals.get(), _FindEnded):
                yield arrival
        finally:
            found.cancel()  # does nothing once the find has ended
        outcome = arrival.outcome
        if isinstance(outcome, Failure):
            outcome.raiseException()
        outcome.raise_for_failure()

    def store(
        self,
        source: str | Path | Dataset,
        priority: int = 0,
        move_originator: tuple[str, int] | None = None,
        header: Part10Header | None = None,
    ) -> defer.Deferred[StoreResult]:
        """C-STORE a Part 10 file (streamed from disk) or a Dataset.

        A file goes as it is when the peer accepted its transfer syntax; an
        uncompressed one is re-encoded, in a thread, for another uncompressed
        syntax the peer accepted; otherwise it fails with `NoAcceptedContext`.
        A data set is taken to be in the syntax of its ``file_meta``
        (explicit VR little endian without one) and is not changed.
        ``move_originator`` (AE title, message ID) marks a C-STORE made for a
        C-MOVE.  ``header``, the file's File Meta (`dicomd.part10.read_header`) when it
        has been read already, spares reading it again.
        """
        from dicomd.dimse.sending import send_store  # loaded by the first C-STORE, not by C-ECHO

        return send_store(
            self, source, self.contexts.values(), priority, move_originator, header=header
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
        command = _retrieve_command(CommandField.C_MOVE_RQ, sop_class_uid, priority)
        command.move_destination = destination
        return self._invoke(
            sop_class_uid,
            lambda context: RetrieveOperation(context, on_progress),
            command,
            identifier,
        )

    def get(
        self,
        sop_class_uid: str,
        identifier: Dataset,
        folder: str | Path,
        on_progress: Callable[[RetrieveProgress], object] | None = None,
        priority: int = 0,
        on_instance: InstanceCallback | None = None,
    ) -> defer.Deferred[RetrieveResult]:
        """C-GET: the peer sends what ``identifier`` selects back over this association.

        Each instance lands in ``folder`` as ``<SOP Instance UID>.dcm``, a
        Part 10 file with the data set as it was sent, and is then handed to
        ``on_instance``, whose answer (an int, None for success, or a
        Deferred of either) is the status of that C-STORE.  The association
        must have been opened with `retrieve_contexts` and the SCP role for
        the storage classes expected (``scp_roles`` of `associate`).  Each
        C-GET keeps its own folder and callback; the instances of C-GETs in
        flight at once go to the oldest, which is the one a peer performing
        one operation at a time is answering.
        """
        command = _retrieve_command(CommandField.C_GET_RQ, sop_class_uid, priority)

        def operation(context: AcceptedContext) -> GetOperation:
            return GetOperation(context, on_progress, Path(folder), on_instance)

        return self._invoke(sop_class_uid, operation, command, identifier)

    def _invoke(
        self,
        abstract_syntax: str,
        operation: Callable[[AcceptedContext], Operation],
        command: Command,
        identifier: Dataset | None = None,
    ) -> defer.Deferred[Any]:
        try:
            context = self.context_for(abstract_syntax)
            data = None
            if identifier is not None:
                from dicomd.dimse.datasets import encode_dataset  # pydicom, not needed by C-ECHO

                data = encode_dataset(identifier, context.transfer_syntax)
        except Exception:
            return defer.fail()
        return self.request(operation(context), command, data)

    def service_for(self, context: AcceptedContext, command: Command) -> Service | None:
        """The C-STOREs of a C-GET in flight are the only requests a requestor answers."""
        if command.command_field != CommandField.C_STORE_RQ:
            return None
        gets = (op for op in self.operations_in_flight() if isinstance(op, GetOperation))
        oldest = next(gets, None)
        return None if oldest is None else oldest.receiver

    # -- release and abort ------------------------------------------------

    async def __aenter__(self) -> Requestor:
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
        if not self.is_established:
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

    def _end(self, error: AssociationError) -> None:
        self._acse_timer.stop()
        super()._end(error)
        for d in (self.established, self._released):
            if d is not None and not d.called:
                d.errback(error)

    # -- user port of the state machine -----------------------------------

    def associate_accepted(self, accept: AAssociateAC) -> None:
        self._acse_timer.stop()
        proposed = {c.context_id: c.abstract_syntax for c in self.proposal.presentation_contexts}
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
        self._open_outbox()
        self.established.callback(self)

    def associate_rejected(self, reject: AAssociateRJ) -> None:
        self._acse_timer.stop()
        self.established.errback(AssociationRejected(reject.result, reject.source, reject.reason))

    def associate_indication(self, request: AAssociateRQ) -> None:
        raise AssertionError("a requestor does not receive A-ASSOCIATE-RQ")

    def release_confirmation(self) -> None:
        self._acse_timer.stop()
        released = self._released
        super()._end(AssociationError("the association was released"))
        if released is not None and not released.called:
            released.callback(None)

    # -- connecting -------------------------------------------------------

    def connected(self, protocol: object) -> defer.Deferred[Requestor]:
        """The connection is open and A-ASSOCIATE-RQ sent: ``acse_timeout`` for the answer."""
        if self.machine.state is State.STA5:
            self._acse_timer.start()
        return self.established

    def abandon(self, failure: Failure) -> Failure:
        """The connection never opened: stop the ACSE timer and pass the error on unchanged."""
        self._acse_timer.stop()
        return failure

    def _acse_expired(self) -> None:
        """No answer in time: abort, unless still connecting, which the endpoint times itself."""
        if self.machine.state is State.STA4:
            return
        waiting_for = "A-RELEASE-RQ" if self._released is not None else "A-ASSOCIATE-RQ"
        self.machine.abort_request()
        self._end(AssociationTimeout(waiting_for, self.settings.acse_timeout))


def _retrieve_command(field: int, sop_class_uid: str, priority: int) -> Command:
    return Command(
        command_field=field,
        affected_sop_class_uid=sop_class_uid,
        priority=priority,
        command_data_set_type=DATA_SET_PRESENT,
    )


@dataclass(frozen=True, slots=True)
class _FindEnded:
    """The last thing `find_iter` takes from its queue: the `FindResult`, or why there is none."""

    outcome: FindResult | Failure

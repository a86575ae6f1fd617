"""Query (C-FIND) SCP, PS3.4 Annex C and K: ask the find handlers, stream their matches.

The service owns everything the network side of C-FIND needs whatever the
source of the matches: decoding the identifier, picking the handler for the
information model, shaping each match to exactly the requested keys and
choosing the character set of the answer (`AnswerForm`, in answers.py),
pacing a long result so that C-CANCEL and other associations get their
turn, and the statuses.  Matches that provide ``IEncodedMatches`` (the
archive's) are handed the query's `AnswerForm` and come already encoded.
"""

from __future__ import annotations

from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Sequence,
)
from typing import Any, TypeVar

from pydicom import Dataset
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from dicomd import uids
from dicomd.dimse.association import DataSink, Request
from dicomd.dimse.command import Command, CommandField
from dicomd.dimse.negotiation import AcceptedContext
from dicomd.interfaces import (
    FindQuery,
    IEncodedMatches,
    IFindHandler,
    InvalidIdentifier,
    ISupportedKeys,
    Unavailable,
)
from dicomd.node.acceptor import Acceptor, QueryRefused, count_keys
from dicomd.node.services.answers import ADDED_KEYS, AnswerForm

_KEYS_ANSWERED_INLINE = 64
"""Up to this many keys, an answer takes a millisecond or two: made on the reactor."""
_END: Any = object()
"""What ``anext`` answers for a handler's iterator that has no more matches."""
_T = TypeVar("_T")
Match = Dataset | bytes
"""A match as a handler answers it, or as `IEncodedMatches` answers it already encoded."""


class Cancelled(Exception):
    """The peer sent C-CANCEL for this query."""


class FindService:
    """C-FIND SCP for the models the configured find handlers answer."""

    log = Logger()
    operations = frozenset({CommandField.C_FIND_RQ})
    transfer_syntaxes = None

    def __init__(
        self, handlers: Sequence[IFindHandler], ae_title: str, clock: IReactorTime
    ) -> None:
        self.ae_title = ae_title
        # Matches go out a few at a time per reactor turn, on the node's clock.
        self.cooperator = task.Cooperator(scheduler=lambda work: clock.callLater(0, work))
        self.handlers: dict[str, IFindHandler] = {}
        for handler in handlers:
            for model in handler.find_models:
                self.handlers.setdefault(model, handler)
        self.abstract_syntaxes = frozenset(self.handlers)

    def open_sink(
        self, association: Acceptor, context: AcceptedContext, command: Command
    ) -> DataSink:
        return association.memory_sink()

    def handle(self, association: Acceptor, request: Request) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._answer(association, request))

    async def _answer(self, association: Acceptor, request: Request) -> None:
        try:
            query = await association.read_query(request)
        except QueryRefused as refused:
            association.respond(
                request, refused.status, error_comment=uids.error_comment(refused.comment)
            )
            return
        await _Answer(self, association, request, query).run(self.handlers[query.model])


def _pending_status(handler: IFindHandler, query: FindQuery) -> defer.Deferred[int]:
    """FF01 when the identifier asks for keys the handler does not support (PS3.4 C.4.1.1.4)."""
    if not ISupportedKeys.providedBy(handler):
        return defer.succeed(uids.Status.PENDING)
    asked = {element.keyword for element in query.identifier} - ADDED_KEYS

    def judge(supported: Iterable[str]) -> int:
        unsupported = asked - set(supported)
        return uids.Status.PENDING_WARNING if unsupported else uids.Status.PENDING

    return defer.maybeDeferred(handler.supported_keys, query.level).addCallback(judge)


class _Answer:
    """One query being answered: streams matches until done, failed or cancelled."""

    def __init__(
        self,
        service: FindService,
        association: Acceptor,
        request: Request,
        query: FindQuery,
    ) -> None:
        self.service = service
        self.association = association
        self.request = request
        self.query = query
        self.form = AnswerForm(query, service.ae_title, request.context.transfer_syntax)
        self.pending = uids.Status.PENDING
        self.cancelled = False
        self.matches = 0
        self.many_keys = count_keys(query.identifier, up_to=_KEYS_ANSWERED_INLINE + 1) > (
            _KEYS_ANSWERED_INLINE
        )

    def run(self, handler: IFindHandler) -> defer.Deferred[None]:
        message_id = self.request.command.message_id
        self.association.on_cancel(message_id, self._cancel)
        d = _pending_status(handler, self.query)
        d.addCallback(self._find, handler)
        d.addCallback(self._stream)
        d.addCallbacks(self._finished, self._failed)
        d.addBoth(lambda _: self.association.forget_cancel(message_id))
        return d

    def _cancel(self) -> None:
        self.cancelled = True

    @property
    def stopped(self) -> bool:
        """The peer cancelled, or the association is over (aborted on a timeout too, which
        the association's services are not told of)."""
        return self.cancelled or not self.association.is_established

    def _find(
        self, pending: int, handler: IFindHandler
    ) -> defer.Deferred[Iterable[Dataset] | AsyncIterable[Dataset]]:
        self.pending = pending
        return defer.maybeDeferred(handler.find, self.query)

    def _stream(self, matches: Iterable[Match] | AsyncIterable[Match]) -> Any:
        if self.form.encodes_values and IEncodedMatches.providedBy(matches):
            matches = matches.encoded(self.form)
        return stream_matches(self.service.cooperator, matches, self._send, lambda: self.stopped)

    def _send(self, match: Match) -> defer.Deferred[None]:
        """Shape, encode and send one match (a Dataset, or its answer already encoded);
        fires when the peer may take the next.

        Shaping and encoding cost tens of microseconds a key, so the answers to
        an identifier of many keys are made in the association's worker.
        """
        if isinstance(match, bytes):
            return self._respond(match)
        if self.many_keys:
            encoded = self.association.worker.run(self._encode, match)
        else:
            encoded = defer.succeed(self._encode(match))
        return encoded.addCallback(self._respond)

    def _encode(self, match: Dataset) -> bytes:
        return self.form.encode_match(match)

    def _respond(self, data: bytes) -> defer.Deferred[None]:
        self.association.respond(self.request, self.pending, data)
        self.matches += 1
        return self.association.drained()

    def _finished(self, _: object) -> None:
        self.association.respond(self.request, uids.Status.SUCCESS)
        self.service.log.debug(
            "C-FIND {level} from {calling}: {matches} matches",
            level=self.query.level,
            calling=self.query.calling_ae_title,
            matches=self.matches,
        )

    def _failed(self, failure: Failure) -> None:
        if failure.check(Cancelled):
            self.association.respond(self.request, uids.Status.CANCEL)
            return
        if failure.check(InvalidIdentifier):
            status = uids.Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS
        elif failure.check(Unavailable, OSError):
            self.service.log.warn(
                "C-FIND from {calling} ended after {matches} matches: {why}",
                calling=self.query.calling_ae_title,
                matches=self.matches,
                why=failure.getErrorMessage(),
            )
            status = uids.Status.OUT_OF_RESOURCES
        else:
            self.service.log.failure(
                "find handler failed on a query from {calling}",
                failure,
                calling=self.query.calling_ae_title,
            )
            status = uids.Status.UNABLE_TO_PROCESS
        comment = uids.error_comment(failure.getErrorMessage())
        self.association.respond(self.request, status, error_comment=comment)


def stream_matches(
    cooperator: task.Cooperator,
    matches: Iterable[Match] | AsyncIterable[Match],
    send: Callable[[Match], defer.Deferred[Any] | None],
    stopped: Callable[[], bool],
) -> defer.Deferred[None]:
    """Hand a find handler's matches to ``send`` one at a time, whatever form they come in
    (a list, an iterator, an async iterator such as the archive's pages); for C-FIND and
    QIDO-RS alike.

    ``cooperator`` takes a step after another for a few milliseconds, then
    yields to the reactor, so that a cancel or another client gets in; it
    waits on the Deferred ``send`` answers, so nothing more is read while the
    last match has not gone.  Once ``stopped()`` no match is asked for and the
    Deferred fails with `Cancelled`; an async iterator is closed (``aclose``)
    however the stream ends, so that what it holds (a cursor, a connection)
    goes at once.
    """
    if isinstance(matches, AsyncIterable):
        iterator = aiter(matches)
        steps = _AsyncSteps(iterator, send, stopped)
        return cooperator.cooperate(iter(steps)).whenDone().addBoth(_closing, iterator)
    return cooperator.cooperate(_sync_steps(iter(matches), send, stopped)).whenDone()


def _sync_steps(
    matches: Iterator[Match],
    send: Callable[[Match], defer.Deferred[Any] | None],
    stopped: Callable[[], bool],
) -> Iterator[defer.Deferred[Any] | None]:
    """A match per step."""
    for match in matches:
        if stopped():
            raise Cancelled()
        yield send(match)
    if stopped():
        raise Cancelled()


class _AsyncSteps:
    """A step awaits the next match and sends it; none is asked for once stopped."""

    def __init__(
        self,
        matches: AsyncIterator[Match],
        send: Callable[[Match], defer.Deferred[Any] | None],
        stopped: Callable[[], bool],
    ) -> None:
        self.matches = matches
        self.send = send
        self.stopped = stopped
        self.exhausted = False

    def __iter__(self) -> Iterator[defer.Deferred[Any]]:
        while not (self.stopped() or self.exhausted):
            arriving = defer.ensureDeferred(_awaited(anext(self.matches, _END)))
            yield arriving.addCallback(self._send_unless_over)
        if self.stopped():
            raise Cancelled()

    def _send_unless_over(self, match: Any) -> defer.Deferred[Any] | None:
        if match is _END:
            self.exhausted = True
            return None
        return None if self.stopped() else self.send(match)


async def _awaited(awaitable: Awaitable[_T]) -> _T:
    return await awaitable


def _closing(result: _T, matches: AsyncIterator[Match]) -> _T | defer.Deferred[_T]:
    """Close a handler's async iterator (``aclose``) however its stream ended, so that what
    it holds for the query (a cursor, a connection) goes at once, not when it is garbage;
    then pass ``result`` on."""
    close = getattr(matches, "aclose", None)
    if close is None:
        return result
    return defer.ensureDeferred(_awaited(close())).addCallback(lambda _: result)

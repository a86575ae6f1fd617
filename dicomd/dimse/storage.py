"""C-STORE both ways, for both roles: sending an instance, and receiving one into a file.

Sending: a Part 10 file goes as it is, streamed from disk, when a context
has its transfer syntax; an uncompressed one is re-encoded for another
uncompressed syntax the peer accepted; and, given a `Decompressor`, a
compressed one the peer has no context for is decompressed into a spool file
(`dicomd.dimse.transcode`) that goes out like a stored file and is then
removed.  Re-encoding, decompressing (and reading a whole data set into
memory) run in the association's worker, never on the reactor thread.  The
`dicomd store` command, the C-MOVE sub-associations and the C-GET SCP all
send through `send_store`.

Receiving: `StoreReceiver` streams each data set, fragment by fragment, into
a temporary Part 10 file behind our File Meta Information, then asks a chain
of `IStoreHandler`s what to do with it and which status to answer.  The
storage SCP and the C-GET requester both receive through it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import errno
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, NamedTuple

from pydicom import Dataset, dcmread
from pydicom.dataelem import DataElement
from pydicom.filewriter import correct_ambiguous_vr
from pydicom.tag import Tag
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from dicomd import part10, uids
from dicomd.dimse.association import (
    DataSink,
    DimseAssociation,
    DiscardSink,
    Operation,
    Request,
)
from dicomd.dimse.command import DATA_SET_PRESENT, Command, CommandField
from dicomd.dimse.datasets import (
    LARGE_VALUE,
    Buffer,
    DataSetError,
    encode_in_pieces,
    even_length,
)
from dicomd.dimse.errors import NoAcceptedContext
from dicomd.dimse.negotiation import AcceptedContext
from dicomd.dimse.outbox import FileData
from dicomd.dimse.transcode import Decompressor
from dicomd.dimse.walker import (
    DEFAULT_INFLATION,
    DataSetWalker,
    Inflater,
    InflationLimits,
    checker_for,
)
from dicomd.interfaces import IReadsAttributes, IStoreHandler, Kept, ReceivedInstance
from dicomd.part10 import IncomingFile, SpareFiles, file_meta
from dicomd.uids import is_encapsulated
from dicomd.ul.pdu import PresentationContextRQ

if TYPE_CHECKING:
    from dicomd.dimse.work import Worker


# -- sending ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoreResult:
    """The answer to one C-STORE (a failure status is a result too)."""

    status: int
    sop_instance_uid: str
    error_comment: str | None = None


@dataclass(frozen=True, slots=True)
class StoreMessage:
    """A C-STORE-RQ ready to go (without its message ID) on one of the peer's contexts."""

    context: AcceptedContext
    command: Command
    data: bytes | tuple[Buffer, ...] | FileData
    spooled: Path | None = None
    """A decompressed copy that ``data`` reads from, to remove once the C-STORE is over."""


def send_store(
    association: DimseAssociation,
    source: str | Path | Dataset,
    contexts: Iterable[AcceptedContext],
    priority: int = 0,
    move_originator: tuple[str, int] | None = None,
    decompressor: Decompressor | None = None,
) -> defer.Deferred[StoreResult]:
    """C-STORE ``source`` (a Part 10 file or a Dataset) on one of ``contexts``.

    ``move_originator`` (AE title, message ID) marks a C-STORE made for a
    C-MOVE.  With a ``decompressor``, a compressed file that no context
    takes as it is goes decompressed.  Fails with `NoAcceptedContext` when
    no context can carry it, and with `DecompressionError` when it does not
    decode.
    """
    d = prepare_store(association.worker, tuple(contexts), source, priority, decompressor)

    def send(message: StoreMessage) -> defer.Deferred[StoreResult]:
        command = message.command
        if move_originator is not None:
            ae_title, message_id = move_originator
            command.move_originator_application_entity_title = ae_title
            command.move_originator_message_id = message_id
        sop_instance = command.affected_sop_instance_uid or ""
        sent = association.request(Operation(message.context), command, message.data)
        if message.spooled is not None:
            sent.addBoth(_removing, message.spooled)
        return sent.addCallback(
            lambda response: StoreResult(response.status, sop_instance, response.error_comment)
        )

    return d.addCallback(send)


def _removing(result: object, spooled: Path) -> object:
    """Remove a spool file once its C-STORE is answered or failed: the outbox opened it before
    the command left, and reads on from an open file that is gone from its folder."""
    spooled.unlink(missing_ok=True)
    return result


def prepare_store(
    worker: Worker,
    contexts: Sequence[AcceptedContext],
    source: str | Path | Dataset,
    priority: int = 0,
    decompressor: Decompressor | None = None,
) -> defer.Deferred[StoreMessage]:
    """The message for ``source``: at once when the file goes as it is or only inflated
    (the outbox inflates it a PDU at a time), else from ``worker``.

    Only a file's File Meta is read here (a few hundred bytes); encoding a
    data set, converting or decompressing a file, or reading a deflated one
    whole to pad it happens in the worker.
    """
    if isinstance(source, Dataset):
        return worker.run(_dataset_message, contexts, source, priority)
    try:
        header = part10.read_header(source)
        syntax = header.transfer_syntax
        targets = decompressor.targets(syntax) if decompressor is not None else ()
        context = _context_for_syntax(contexts, header.sop_class_uid, syntax, targets)
    except Exception:
        return defer.fail()
    if decompressor is not None and context.transfer_syntax in targets:
        return worker.run(
            _decompressed_message, decompressor, context, Path(source), header, priority
        )
    conversion = (header.transfer_syntax, context.transfer_syntax)
    if conversion == _INFLATING or (
        context.transfer_syntax == header.transfer_syntax and not header.data_set_length % 2
    ):
        data = FileData(
            Path(source),
            header.data_set_offset,
            header.data_set_length,
            inflate=conversion == _INFLATING,
        )
        return defer.succeed(StoreMessage(context, _store_command(header, priority), data))
    return worker.run(_file_message, context, Path(source), header, priority)


def _store_command(header: part10.Part10Header, priority: int) -> Command:
    return Command(
        command_field=CommandField.C_STORE_RQ,
        affected_sop_class_uid=header.sop_class_uid,
        affected_sop_instance_uid=header.sop_instance_uid,
        priority=priority,
        command_data_set_type=DATA_SET_PRESENT,
    )


def _file_message(
    context: AcceptedContext, path: Path, header: part10.Part10Header, priority: int
) -> StoreMessage:
    """Blocking: a file converted for ``context``, or a deflated one padded to even length."""
    data: bytes | tuple[Buffer, ...]
    if context.transfer_syntax != header.transfer_syntax:
        data = _reencoded(dcmread(path), header.transfer_syntax, context.transfer_syntax)
    else:  # a deflated stream that ends on an odd byte
        with path.open("rb") as file:
            file.seek(header.data_set_offset)
            data = even_length(file.read(header.data_set_length))
    return StoreMessage(context, _store_command(header, priority), data)


def _decompressed_message(
    decompressor: Decompressor,
    context: AcceptedContext,
    path: Path,
    header: part10.Part10Header,
    priority: int,
) -> StoreMessage:
    """Blocking: a compressed file decompressed for ``context``, from a spool file."""
    decompressed = decompressor.decompress(path, context.transfer_syntax)
    data = FileData(decompressed.path, 0, decompressed.length)
    return StoreMessage(context, _store_command(header, priority), data, decompressed.path)


_INFLATING: Final = (uids.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, uids.EXPLICIT_VR_LITTLE_ENDIAN)
"""A deflated data set inflated is the same data set in explicit VR little endian."""


def _dataset_message(
    contexts: Sequence[AcceptedContext], dataset: Dataset, priority: int
) -> StoreMessage:
    """Blocking: a Dataset encoded for a context; it is taken to be in its ``file_meta``'s
    syntax (explicit VR little endian without one) and is not changed."""
    meta = getattr(dataset, "file_meta", None)
    syntax = str(getattr(meta, "TransferSyntaxUID", None) or uids.EXPLICIT_VR_LITTLE_ENDIAN)
    header = part10.Part10Header(
        str(dataset.SOPClassUID), str(dataset.SOPInstanceUID), syntax, 0, 0
    )
    context = _context_for_syntax(contexts, header.sop_class_uid, syntax)
    data = _reencoded(dataset, syntax, context.transfer_syntax)
    return StoreMessage(context, _store_command(header, priority), data)


def _context_for_syntax(
    contexts: Iterable[AcceptedContext],
    abstract_syntax: str,
    syntax: str,
    decompressed: Sequence[str] = (),
) -> AcceptedContext:
    """The context to send data in ``syntax`` on: the same syntax; else, for uncompressed
    data, any uncompressed one; else the first of the ``decompressed`` syntaxes (those a
    compressed ``syntax`` can be decompressed into, best first) that the peer accepted."""
    candidates = [context for context in contexts if context.abstract_syntax == abstract_syntax]
    for context in candidates:
        if context.transfer_syntax == syntax:
            return context
    if not is_encapsulated(syntax):
        for context in candidates:
            if not is_encapsulated(context.transfer_syntax):
                return context
    for target in decompressed:
        for context in candidates:
            if context.transfer_syntax == target:
                return context
    raise NoAcceptedContext(
        f"the peer accepted no presentation context for {abstract_syntax}"
        f" in {syntax} or one it can be converted to"
    )


_WORD_SIZES = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
"""Bytes per value of the VRs whose values pydicom keeps as the bytes it read."""


def _reencoded(dataset: Dataset, syntax: str, target: str) -> tuple[Buffer, ...]:
    """``dataset``, read in ``syntax``, encoded for ``target``; ``dataset`` itself is not changed.

    pydicom writes OW, OF, OL, OD and OV values back as the bytes it read,
    whatever the byte order asked for; between little and big endian, a
    copy gets the bytes of each of their words reversed first.  UN values
    (whose word size nobody knows) go as they are.  Large values travel as
    pieces of their own (`encode_in_pieces`).
    """
    little_endian = syntax != uids.EXPLICIT_VR_BIG_ENDIAN
    if little_endian == (target != uids.EXPLICIT_VR_BIG_ENDIAN):
        return encode_in_pieces(dataset, target)
    dataset = copy.deepcopy(dataset)
    correct_ambiguous_vr(dataset, little_endian)  # OB or OW, by Bits Allocated
    _reverse_small_values(dataset)
    return encode_in_pieces(dataset, target, _reversed_large_value)


def _reverse_small_values(dataset: Dataset, top_level: bool = True) -> None:
    """Reverse the words of every value in ``dataset`` but the large top-level ones, which
    `encode_in_pieces` hands to `_reversed_large_value` as they go out."""
    for element in dataset:
        if element.VR == "SQ":
            for item in element.value:
                _reverse_small_values(item, top_level=False)
            continue
        size = _WORD_SIZES.get(element.VR)
        value = element.value
        if not (size and isinstance(value, bytes) and len(value) % size == 0):
            continue
        if top_level and len(value) >= LARGE_VALUE:
            continue
        element.value = bytes(_reverse_words(value, size))


def _reversed_large_value(element: DataElement) -> tuple[Buffer, ...]:
    """A large value with the bytes of its words reversed, in pieces of a few MiB."""
    size = _WORD_SIZES.get(element.VR)
    value = element.value
    if not (size and len(value) % size == 0):
        return (value,)
    step = _SWAP_PIECE - _SWAP_PIECE % size
    return tuple(
        _reverse_words(value[start : start + step], size) for start in range(0, len(value), step)
    )


def _reverse_words(value: bytes, size: int) -> bytearray:
    """The bytes of each ``size``-byte word of ``value`` reversed.

    Each slice assignment holds the GIL from start to end: large values are
    handed over a few MiB at a time (`_reversed_large_value`), so that the
    reactor thread runs between them when a worker thread converts.
    """
    swapped = bytearray(len(value))
    for offset in range(size):
        swapped[offset::size] = value[size - 1 - offset :: size]
    return swapped


_SWAP_PIECE: Final = 4 << 20


# -- receiving --------------------------------------------------------------


class Status(NamedTuple):
    """A DIMSE status and its optional Error Comment."""

    code: int
    comment: str = ""


_SUCCESS = Status(uids.Status.SUCCESS)


class StoreReceiver:
    """Receives C-STORE requests into ``incoming`` and asks ``handlers`` about each instance.

    A data set is written as it arrives, so memory stays flat whatever its
    size.  Once the last fragment is in, the handlers decide in turn; the
    first failure ends the chain and is answered, otherwise the last warning
    or success.  A file that no handler kept (`Kept`) is removed.
    """

    log = Logger()
    operations = frozenset({CommandField.C_STORE_RQ})

    def __init__(
        self,
        incoming: Path,
        handlers: Sequence[IStoreHandler],
        inflation: InflationLimits = DEFAULT_INFLATION,
    ) -> None:
        self.incoming = incoming
        self.handlers = tuple(handlers)
        self.inflation = inflation
        self.wanted = _attributes_read(self.handlers)
        self.spares = SpareFiles(incoming)

    def open_sink(
        self, association: DimseAssociation, context: AcceptedContext, command: Command
    ) -> DataSink:
        if _refusal(command) is not None:
            return DiscardSink()  # answered in handle(): nothing to name the file by
        meta = file_meta(
            command.affected_sop_class_uid,
            command.affected_sop_instance_uid,
            context.transfer_syntax,
            association.peer_ae_title,
        )
        checker = checker_for(context.transfer_syntax, self.inflation, self.wanted)
        worker = association.worker
        unnamed = self.spares.take()
        incoming = IncomingFile(self.incoming, meta, unnamed)
        naming = worker.run(incoming.give_name) if unnamed is not None else None
        if self.spares.wanted:
            self.spares.filling = True
            worker.run(self.spares.fill).addBoth(self._filled)
        return CheckedFile(incoming, checker, naming)

    def _filled(self, result: object) -> None:
        self.spares.filling = False
        if isinstance(result, Failure):
            self.log.failure("making spare incoming files failed", result)

    def handle(
        self, association: DimseAssociation, request: Request
    ) -> defer.Deferred[None] | None:
        """Answer once the received file has its name (`IncomingFile.give_name`): a thread
        gives it while the data set arrives, so it is usually there already."""
        checked = request.data
        if isinstance(checked, CheckedFile) and checked.naming is not None:
            return checked.naming.addCallback(lambda _: self._handle(association, request))
        return self._handle(association, request)

    def _handle(
        self, association: DimseAssociation, request: Request
    ) -> defer.Deferred[None] | None:
        command = request.command
        refusal = _refusal(command)
        if refusal is not None:
            return _respond(association, request, refusal)
        checked: CheckedFile | None = request.data
        if checked is None:  # the command said no data set follows
            return _respond(
                association,
                request,
                Status(uids.Status.CANNOT_UNDERSTAND, "C-STORE-RQ without a data set"),
            )
        received = checked.file
        if checked.problem is not None:
            received.remove()
            self.log.warn(
                "C-STORE of {uid} from {peer_ae}: the data set is not whole: {problem}",
                uid=command.affected_sop_instance_uid,
                peer_ae=association.peer_ae_title,
                problem=checked.problem,
            )
            return _respond(
                association,
                request,
                Status(uids.Status.CANNOT_UNDERSTAND, f"not whole: {checked.problem}"),
            )
        if received.error is not None:
            received.remove()
            return _respond(association, request, _out_of_resources(received.error))
        instance = ReceivedInstance(
            calling_ae_title=association.calling_ae_title,
            called_ae_title=association.called_ae_title,
            peer_host=association.peer_host,
            peer_port=association.peer_port,
            sop_class_uid=command.affected_sop_class_uid or "",
            sop_instance_uid=command.affected_sop_instance_uid or "",
            transfer_syntax=request.context.transfer_syntax,
            path=received.path,
            size=received.size,
            attributes=checked.checker.collected if checked.checker is not None else None,
        )
        chain = _Chain(self.handlers, instance)
        d = chain.run()
        d.addCallback(lambda status: _respond(association, request, status))

        def clean_up(result: object) -> object:
            if not chain.kept:
                with contextlib.suppress(FileNotFoundError):
                    instance.path.unlink()
            return result

        return d.addBoth(clean_up)


def _refusal(command: Command) -> Status | None:
    """The answer to a C-STORE-RQ whose UIDs cannot name an instance, or None.

    The SOP Instance UID names the file an archive keeps: one that breaks
    the UID rules (too long, other characters) could collide with another's.
    """
    if not (command.affected_sop_class_uid and command.affected_sop_instance_uid):
        return Status(
            uids.Status.CANNOT_UNDERSTAND, "C-STORE-RQ without Affected SOP Class/Instance UID"
        )
    problem = uids.uid_problem(command.affected_sop_instance_uid)
    if problem is not None:
        return Status(uids.Status.INVALID_OBJECT_INSTANCE, f"SOP Instance UID {problem}")
    problem = uids.uid_problem(command.affected_sop_class_uid)
    if problem is not None:
        return Status(uids.Status.CANNOT_UNDERSTAND, f"SOP Class UID {problem}")
    return None


def _attributes_read(handlers: Sequence[IStoreHandler]) -> frozenset[int]:
    """The tags of the attributes the handlers read (`IReadsAttributes`), with the Specific
    Character Set that text values are decoded with; none when no handler reads any."""
    keywords = {
        keyword
        for handler in handlers
        if IReadsAttributes.providedBy(handler)
        for keyword in handler.attributes_read
    }
    if not keywords:
        return frozenset()
    return frozenset(int(Tag(keyword)) for keyword in keywords | {"SpecificCharacterSet"})


class CheckedFile:
    """The sink of one C-STORE: the Part 10 file being written, and what follows the data
    set's structure as it arrives to tell whether it is whole.

    After the first problem nothing more is written: the rest is only read
    off the association, and the file is removed once the request is answered.
    """

    def __init__(
        self,
        file: IncomingFile,
        checker: DataSetWalker | Inflater | None,
        naming: defer.Deferred[None] | None = None,
    ) -> None:
        self.file = file
        self.checker = checker
        self.naming = naming
        """Fires once a thread has given the file its name, when it was made without one."""
        self.problem: str | None = None

    def write(self, data: bytes) -> None:
        if self.problem is not None:
            return
        self.file.write(data)
        if self.checker is not None:
            try:
                self.checker.feed(data)
            except DataSetError as error:
                self.problem = str(error)

    def finish(self) -> CheckedFile:
        self.file.finish()
        if self.problem is None and self.checker is not None:
            try:
                self.checker.end()
            except DataSetError as error:
                self.problem = str(error)
        return self

    def discard(self) -> None:
        self.file.discard()
        if self.naming is not None:  # the name may come after: remove it then
            self.naming.addBoth(lambda _: self.file.remove())


def _respond(association: DimseAssociation, request: Request, status: Status) -> None:
    fields: dict[str, object] = {
        "affected_sop_instance_uid": request.command.affected_sop_instance_uid
    }
    if status.comment:
        fields["error_comment"] = uids.error_comment(status.comment)
    association.respond(request, status.code, **fields)


class _Chain:
    """Runs the store handlers in order; stops at the first failure.

    Each handler is asked through `defer.maybeDeferred`; one that took the
    file (`Kept`) passes the file's new path to those after it.
    """

    def __init__(self, handlers: Sequence[IStoreHandler], instance: ReceivedInstance) -> None:
        self.handlers = iter(handlers)
        self.instance = instance
        self.kept = False
        self.answer = _SUCCESS
        self.done: defer.Deferred[Status] = defer.Deferred()

    def run(self) -> defer.Deferred[Status]:
        self._next()
        return self.done

    def _next(self) -> None:
        for handler in self.handlers:
            d = defer.maybeDeferred(handler.store, self.instance)
            if not d.called:
                d.addBoth(self._answered, handler)
                return
            if self._judge(_result_of(d), handler):
                return
        self.done.callback(self.answer)

    def _answered(self, result: object, handler: IStoreHandler) -> None:
        if not self._judge(result, handler):
            self._next()

    def _judge(self, result: object, handler: IStoreHandler) -> bool:
        """Take one handler's answer; True when the chain ends here."""
        if isinstance(result, Kept):
            self.kept = True
            self.instance = dataclasses.replace(self.instance, path=result.path)
            result = result.status
        try:
            status = (
                _status_for_failure(result, handler, self.instance)
                if isinstance(result, Failure)
                else _as_status(result)
            )
        except TypeError as error:
            status = _status_for_failure(Failure(error), handler, self.instance)
        category = uids.status_category(status.code)
        if category == "failure":
            self.done.callback(status)
            return True
        if category == "warning":
            self.answer = status
        return False


def _result_of(d: defer.Deferred[object]) -> object:
    """What an already fired Deferred holds, taken out of it (a Failure included)."""
    outcome: list[object] = []
    d.addBoth(outcome.append)
    return outcome[0]


def _as_status(result: object) -> Status:
    if isinstance(result, Dataset):
        if "Status" not in result:
            raise TypeError("a store handler answered a Dataset without Status")
        return Status(int(result.Status), str(result.get("ErrorComment", "")))
    if isinstance(result, int) and not isinstance(result, bool) and 0 <= result <= 0xFFFF:
        return _SUCCESS if result == 0 else Status(result)
    raise TypeError(f"a store handler answered {result!r}, not a status")


def _out_of_resources(error: OSError) -> Status:
    reason = "disk full" if error.errno in (errno.ENOSPC, errno.EDQUOT) else error.strerror
    return Status(uids.Status.OUT_OF_RESOURCES, f"cannot store: {reason}")


def _status_for_failure(
    failure: Failure, handler: IStoreHandler, instance: ReceivedInstance
) -> Status:
    """The status for a handler that raised.  An OSError is the storage failing (a full
    disk): one line says so.  Anything else is a fault in the handler, logged with its
    traceback for whoever wrote it."""
    if failure.check(OSError):
        StoreReceiver.log.warn(
            "store handler {handler} cannot store {sop_instance_uid}: {error}",
            handler=type(handler).__name__,
            sop_instance_uid=instance.sop_instance_uid,
            error=str(failure.value),
        )
        return _out_of_resources(failure.value)
    StoreReceiver.log.failure(
        "store handler {handler} failed on {sop_instance_uid}",
        failure,
        handler=type(handler).__name__,
        sop_instance_uid=instance.sop_instance_uid,
    )
    return Status(uids.Status.CANNOT_UNDERSTAND, f"{type(handler).__name__}: {failure.value}")


def storage_contexts(
    kinds: Iterable[tuple[str, str]], decompressor: Decompressor | None = None
) -> tuple[PresentationContextRQ, ...]:
    """One context for each (SOP class, transfer syntax) among the instances to send.

    Each proposes the instances' own syntax first, so that they can go as
    they are; an uncompressed syntax also offers the other uncompressed ones,
    which `send_store` converts to when the peer prefers them.  A compressed
    syntax is proposed alone; with a ``decompressor`` that can decompress it,
    its SOP class also gets a context of the uncompressed syntaxes (unless
    one of its kinds brought one), to send it decompressed on when the peer
    refuses the compressed one.
    """
    unique = dict.fromkeys(kinds)
    proposals = [
        (sop_class, syntax)
        if is_encapsulated(syntax)
        else (sop_class, syntax, *(other for other in UNCOMPRESSED_SYNTAXES if other != syntax))
        for sop_class, syntax in unique
    ]
    if decompressor is not None:
        uncompressed = {sop_class for sop_class, syntax in unique if not is_encapsulated(syntax)}
        for sop_class, syntax in unique:
            if sop_class not in uncompressed and decompressor.targets(syntax):
                proposals.append((sop_class, *decompressor.targets(syntax)))
                uncompressed.add(sop_class)
    return tuple(
        PresentationContextRQ(2 * index + 1, sop_class, tuple(syntaxes))
        for index, (sop_class, *syntaxes) in enumerate(proposals)
    )


UNCOMPRESSED_SYNTAXES: Final = (uids.EXPLICIT_VR_LITTLE_ENDIAN, uids.IMPLICIT_VR_LITTLE_ENDIAN)
"""What a requestor proposes by default, best first: every SCP accepts the second."""

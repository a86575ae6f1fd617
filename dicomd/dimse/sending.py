"""C-STORE, sending: a Part 10 file as it is, converted, or decompressed; or a Dataset.

A Part 10 file goes as it is, streamed from disk, when a context has its
transfer syntax; an uncompressed one is re-encoded for another uncompressed
syntax the peer accepted (`dicomd.dimse.reencode`); and, given a
`Decompressor`, a compressed one the peer has no context for is decompressed
into a spool file (`dicomd.dimse.transcode`) that goes out like a stored
file and is then removed.  Re-encoding, decompressing (and reading a whole
data set into memory) run in the association's worker, never on the reactor
thread.  The `dicomd store` command, the C-MOVE sub-associations and the
C-GET SCP all send through `send_store`.

A file sent as it is needs only its File Meta (`dicomd.part10`): nothing here
loads pydicom until a file has to be converted or a Dataset encoded, so that
``dicomd store`` starts without it.  Receiving is `dicomd.dimse.storage`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from twisted.internet import defer

from dicomd import part10, uids
from dicomd.dimse.association import DimseAssociation, Operation
from dicomd.dimse.command import DATA_SET_PRESENT, Command, CommandField
from dicomd.dimse.errors import NoAcceptedContext
from dicomd.dimse.negotiation import AcceptedContext
from dicomd.dimse.outbox import FileData
from dicomd.uids import is_encapsulated
from dicomd.ul.pdu import PresentationContextRQ

if TYPE_CHECKING:
    from pydicom import Dataset

    from dicomd.dimse.datasets import Buffer
    from dicomd.dimse.transcode import Decompressor
    from dicomd.dimse.work import Worker


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
    header: part10.Part10Header | None = None,
) -> defer.Deferred[StoreResult]:
    """C-STORE ``source`` (a Part 10 file or a Dataset) on one of ``contexts``.

    ``header`` is the file's File Meta when the caller has read it already
    (`dicomd store` reads every file's to choose what to propose): it is not
    read again.  ``move_originator`` (AE title, message ID) marks a C-STORE made for a
    C-MOVE.  With a ``decompressor``, a compressed file that no context
    takes as it is goes decompressed.  Fails with `NoAcceptedContext` when
    no context can carry it, and with `DecompressionError` when it does not
    decode.
    """
    d = prepare_store(association.worker, tuple(contexts), source, priority, decompressor, header)

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
    header: part10.Part10Header | None = None,
) -> defer.Deferred[StoreMessage]:
    """The message for ``source``: at once when the file goes as it is or only inflated
    (the outbox inflates it a PDU at a time), else from ``worker``.

    Only a file's File Meta is read here (a few hundred bytes), unless the
    caller gives it as ``header``; encoding a data set, converting or
    decompressing a file, or reading a deflated one whole to pad it happens
    in the worker.
    """
    if not isinstance(source, str | Path):  # a Dataset: pydicom is loaded already
        return worker.run(_dataset_message, contexts, source, priority)
    try:
        if header is None:
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
        from pydicom import dcmread

        from dicomd.dimse.reencode import reencoded  # pydicom: only a conversion needs it

        data = reencoded(dcmread(path), header.transfer_syntax, context.transfer_syntax)
    else:  # a deflated stream that ends on an odd byte
        from dicomd.dimse.datasets import even_length

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
    from dicomd.dimse.reencode import reencoded

    data = reencoded(dataset, syntax, context.transfer_syntax)
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

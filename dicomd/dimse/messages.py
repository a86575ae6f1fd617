"""DIMSE messages on the wire: fragmentation into PDVs and reassembly (PS3.8 Annex E).

A DIMSE message is a command set optionally followed by a data set; both
travel as fragments in P-DATA-TF PDUs.  Nothing here touches a socket:
:func:`message_pdus` turns a message into PDUs to write, and
:class:`MessageAssembler` turns received PDVs into events.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from dicomd.dimse.command import Command
from dicomd.ul.pdu import PDataTF, PresentationDataValue, encode_pdata

if TYPE_CHECKING:
    from dicomd.dimse.datasets import Buffer

PDV_COMMAND: Final = 0x01
"""Message control header bit 0: the fragment belongs to a command set (PS3.8 E.2)."""
PDV_LAST: Final = 0x02
"""Message control header bit 1: the fragment is the last of its command or data set."""

DEFAULT_MAX_COMMAND_LENGTH: Final = 65536
"""The largest command set taken unless told otherwise; real ones are a few hundred bytes."""

_PDV_OVERHEAD: Final = 6  # item length (4) + context id (1) + control header (1)

UNLIMITED_PIECE: Final = 1 << 20
"""With no limit from the peer, data still leaves in pieces this big, so that memory stays
bounded and other associations get their turn."""


def message_pdus(
    context_id: int, command: bytes, cut_data: CutData | None, max_pdu_length: int
) -> Iterator[bytes]:
    """Yield the P-DATA-TF PDUs of one DIMSE message, each made only when it is asked for.

    The command's last fragment and the data set's first share one PDU, two
    PDVs (PS3.8 9.3.5, E.2), as far as the peer's maximum PDU length allows:
    a C-FIND match or a small instance is one PDU, one transport write and
    one PDU for the peer to parse instead of two.  ``cut_data(first, rest)``
    yields the data set's fragments and whether each is the last: the first
    at most ``first`` bytes, the others at most ``rest``.

    Every fragment but the last has even length: the standard does not ask
    for it, but it keeps the fragments of an even-length encoding even, the
    least surprising thing to send, at the cost of at most one byte per PDU.
    ``max_pdu_length`` must therefore leave room for two bytes after the PDV
    header.
    """
    chunk = fragment_length(max_pdu_length)
    commands = _cut_command(command, chunk)
    last_command = commands.pop()
    for each in commands:
        yield encode_pdata(context_id, PDV_COMMAND, each)
    if cut_data is None:
        yield encode_pdata(context_id, PDV_COMMAND | PDV_LAST, last_command)
        return
    rest = chunk or UNLIMITED_PIECE
    room = rest if chunk is None else (chunk - len(last_command) - _PDV_OVERHEAD) & ~1
    if room < 2:  # no room worth a PDV: the data set starts in the next PDU
        yield encode_pdata(context_id, PDV_COMMAND | PDV_LAST, last_command)
        room = rest
        last_command = None
    for data, last in cut_data(room, rest):
        control = PDV_LAST if last else 0
        if last_command is None:
            yield encode_pdata(context_id, control, data)
            continue
        yield PDataTF(
            (
                PresentationDataValue(context_id, PDV_COMMAND | PDV_LAST, last_command),
                PresentationDataValue(context_id, control, data),  # type: ignore[arg-type]
            )
        ).encode()
        last_command = None


CutData = Callable[[int, int], Iterator[tuple["Buffer", bool]]]
"""How a data set is cut into fragments: ``(first, rest)`` to (fragment, last) pairs."""


def cut(pieces: Buffer | Iterable[Buffer], first: int, rest: int) -> Iterator[tuple[Buffer, bool]]:
    """The data in ``pieces`` (one buffer, or several however they are cut) as fragments:
    the first ``first`` bytes, the others ``rest``, the last what is left.  A full fragment
    waits until more data is found, since only then is it known not to be the last."""
    if isinstance(pieces, bytes) and len(pieces) <= first:
        yield pieces, True  # a C-FIND match, in one piece: the common case
        return
    single = isinstance(pieces, (bytes, bytearray, memoryview))
    full: list[memoryview] | None = None
    parts: list[memoryview] = []
    held = 0
    limit = first
    for each in (pieces,) if single else pieces:
        view = memoryview(each).cast("B")
        while len(view):
            if full is not None:
                yield _joined(full), False
                full = None
            part = view[: limit - held]
            parts.append(part)
            held += len(part)
            view = view[len(part) :]
            if held == limit:
                full, parts, held, limit = parts, [], 0, rest
    yield _joined(full if full is not None else parts), True


def _joined(parts: list[memoryview]) -> Buffer:
    if len(parts) == 1:
        return parts[0]
    return b"".join(parts)


def fragment_length(max_pdu_length: int) -> int | None:
    """How many bytes of a message one PDU carries for a peer announcing ``max_pdu_length``:
    even, after the PDV header; None when the peer set no limit (0)."""
    if max_pdu_length == 0:
        return None
    if max_pdu_length < _PDV_OVERHEAD + 2:
        raise ValueError(f"max_pdu_length {max_pdu_length} leaves no room for data")
    return (max_pdu_length - _PDV_OVERHEAD) & ~1


def _cut_command(command: bytes, chunk: int | None) -> list[bytes | memoryview]:
    if chunk is None or len(command) <= chunk:
        return [command]
    view = memoryview(command)
    return [view[start : start + chunk] for start in range(0, len(view), chunk)]


@dataclass(frozen=True, slots=True)
class CommandReceived:
    """A complete command set arrived on a presentation context."""

    context_id: int
    command: Command


@dataclass(frozen=True, slots=True)
class DataReceived:
    """One fragment of the data set that follows the last command; ``last`` ends it."""

    context_id: int
    data: bytes
    last: bool


class AssemblyError(ValueError):
    """PDVs that break the fragment order of PS3.8 E.2 and PS3.7 section 6."""


class MessageAssembler:
    """Turns a stream of PDVs into DIMSE events; knows nothing of sockets.

    Command fragments are small and are joined, then decoded once the last
    one arrives.  Data fragments are passed on as they come, never joined: a
    data set may be a gigabyte on its way to disk.  Any fragment length is
    accepted, odd or empty, and a data set may be split at any byte.

    A fragment that breaks the order, or takes a command set past
    ``max_command_length`` bytes (so that one that never ends cannot pile up),
    raises :class:`AssemblyError` and leaves the assembler as it was; a
    command set that does not decode raises :class:`CommandError` and leaves
    it ready for the next command.  Either
    way the caller is expected to abort the association.
    """

    __slots__ = (
        "_command_context",
        "_command_fragments",
        "_command_length",
        "_data_context",
        "max_command_length",
    )

    def __init__(self, max_command_length: int = DEFAULT_MAX_COMMAND_LENGTH) -> None:
        self.max_command_length = max_command_length
        self._command_context: int | None = None
        self._command_fragments: list[bytes] = []
        self._command_length = 0
        self._data_context: int | None = None

    @property
    def idle(self) -> bool:
        """Whether no message is half received: the next PDV must start a command."""
        return self._command_context is None and self._data_context is None

    def feed(
        self, context_id: int, control: int, data: bytes
    ) -> list[CommandReceived | DataReceived]:
        """Take one PDV (its context id, message control header and fragment)."""
        last = bool(control & PDV_LAST)
        if control & PDV_COMMAND:
            return self._command_fragment(context_id, last, data)
        return self._data_fragment(context_id, last, data)

    def _command_fragment(
        self, context_id: int, last: bool, data: bytes
    ) -> list[CommandReceived | DataReceived]:
        if self._data_context is not None:
            raise AssemblyError(
                f"command fragment on context {context_id} while the data set"
                f" on context {self._data_context} is incomplete"
            )
        if self._command_context is None:
            self._command_context = context_id
        elif context_id != self._command_context:
            raise AssemblyError(
                f"command fragment on context {context_id} while the command"
                f" on context {self._command_context} is incomplete"
            )
        self._command_length += len(data)
        if self._command_length > self.max_command_length:
            from dicomd import metrics  # here: clients load prometheus-client only if so

            metrics.limit_hit("max_command_length")
            raise AssemblyError(
                f"command set on context {context_id} is longer than"
                f" {self.max_command_length} bytes"
            )
        self._command_fragments.append(data)
        if not last:
            return []
        encoded = b"".join(self._command_fragments)
        self._command_context = None
        self._command_fragments = []
        self._command_length = 0
        command = Command.decode(encoded)
        if command.has_data_set:
            self._data_context = context_id
        return [CommandReceived(context_id, command)]

    def _data_fragment(
        self, context_id: int, last: bool, data: bytes
    ) -> list[CommandReceived | DataReceived]:
        if self._command_context is not None:
            raise AssemblyError(
                f"data fragment on context {context_id} while a command set is incomplete"
            )
        if self._data_context is None:
            raise AssemblyError(
                f"data fragment on context {context_id} but no command announced a data set"
            )
        if context_id != self._data_context:
            raise AssemblyError(
                f"data fragment on context {context_id} but the command announced"
                f" its data set on context {self._data_context}"
            )
        if last:
            self._data_context = None
        return [DataReceived(context_id, data, last)]

"""Presentation context negotiation (PS3.8 9.3.2.2, PS3.7 D.3.2): a pure function.

An acceptor answers every proposed context: an abstract syntax it does not
serve gets result 3; one it serves gets the first transfer syntax of *our*
preference order for that abstract syntax that the peer offered (result 0),
or result 4 when none matches.  The preference order is the operator's, not
the peer's, because it decides what ends up on disk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from pydicom.uid import UID

from dicomd.uids import IMPLICIT_VR_LITTLE_ENDIAN
from dicomd.ul.pdu import ContextResult, PresentationContextAC, PresentationContextRQ


@dataclass(frozen=True, slots=True)
class AcceptedContext:
    """A presentation context both sides agreed on."""

    context_id: int
    abstract_syntax: str
    transfer_syntax: str


@dataclass(frozen=True, slots=True)
class Negotiated:
    """The answer to a proposal: items for the A-ASSOCIATE-AC, and the accepted contexts by ID."""

    results: tuple[PresentationContextAC, ...]
    accepted: dict[int, AcceptedContext]


def negotiate(
    proposed: Iterable[PresentationContextRQ],
    preference_for: Callable[[str], Sequence[str]],
) -> Negotiated:
    """Answer each proposed context, keeping the peer's order.

    ``preference_for(abstract_syntax)`` gives our transfer syntaxes for it,
    best first, or nothing when we do not serve it.
    """
    results: list[PresentationContextAC] = []
    accepted: dict[int, AcceptedContext] = {}
    for context in proposed:
        result, syntax = _answer(context, preference_for(context.abstract_syntax))
        results.append(PresentationContextAC(context.context_id, result, syntax))
        if result == ContextResult.ACCEPTANCE:
            accepted[context.context_id] = AcceptedContext(
                context.context_id, context.abstract_syntax, syntax
            )
    return Negotiated(tuple(results), accepted)


def _answer(context: PresentationContextRQ, preference: Sequence[str]) -> tuple[ContextResult, str]:
    # A rejected context still carries a transfer syntax sub-item; its value
    # is not significant (PS3.8 9.3.3.2), so we echo the peer's first one
    # when it is a UID at all, and the default syntax otherwise.
    offered_first = context.transfer_syntaxes[0] if context.transfer_syntaxes else ""
    if not UID(offered_first).is_valid:
        offered_first = IMPLICIT_VR_LITTLE_ENDIAN
    if not preference:
        return ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED, offered_first
    offered = set(context.transfer_syntaxes)
    for syntax in preference:
        if syntax in offered:
            return ContextResult.ACCEPTANCE, syntax
    return ContextResult.TRANSFER_SYNTAXES_NOT_SUPPORTED, offered_first

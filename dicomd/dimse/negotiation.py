"""Presentation context negotiation (PS3.8 9.3.2.2, PS3.7 D.3.2) and the SOP Class Extended
Negotiation of relational queries (PS3.7 D.3.3.5, PS3.4 C.5): pure functions.

An acceptor answers every proposed context: an abstract syntax it does not
serve gets result 3; one it serves gets the first transfer syntax of *our*
preference order for that abstract syntax that the peer offered (result 0),
or result 4 when none matches.  The preference order is the operator's, not
the peer's, because it decides what ends up on disk.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from dicomd.uids import IMPLICIT_VR_LITTLE_ENDIAN, QUERY_RETRIEVE_LEVELS
from dicomd.ul.pdu import (
    ContextResult,
    PresentationContextAC,
    PresentationContextRQ,
    SOPClassExtendedNegotiation,
)


@dataclass(frozen=True, slots=True)
class AcceptedContext:
    """A presentation context both sides agreed on.

    ``relational``: both sides agreed, in SOP Class Extended Negotiation, to
    relational queries (C-FIND) or relational retrieval (C-MOVE, C-GET) for
    its abstract syntax.
    """

    context_id: int
    abstract_syntax: str
    transfer_syntax: str
    relational: bool = False


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
    from pydicom.uid import UID  # the acceptor's; a requestor need not load pydicom

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


RELATIONAL_SOP_CLASSES: Final = frozenset(QUERY_RETRIEVE_LEVELS)
"""The Patient Root and Study Root FIND, MOVE and GET SOP classes, whose service-class
application information starts with the relational-queries (C-FIND, PS3.4 C.5.1.1) or
relational-retrieval (C-MOVE, C-GET, C.5.2.1, C.5.3.1) byte."""

_AGREED: Final = b"\x01"
_NOT_AGREED: Final = b"\x00"


@dataclass(frozen=True, slots=True)
class ExtendedNegotiated:
    """Our SOP Class Extended Negotiation sub-items for the A-ASSOCIATE-AC, and the accepted
    contexts with ``relational`` set where it was agreed."""

    answers: tuple[SOPClassExtendedNegotiation, ...]
    accepted: dict[int, AcceptedContext]


def negotiate_relational(
    proposed: Iterable[SOPClassExtendedNegotiation],
    accepted: Mapping[int, AcceptedContext],
    *,
    willing: bool,
) -> ExtendedNegotiated:
    """Answer the peer's extended negotiation of relational queries and retrievals.

    Only SOP classes the peer proposed a sub-item for get an answer (PS3.7
    D.3.3.5), and of those only Query/Retrieve ones that an accepted context
    carries: for anything else the sub-item is left out, which means no
    extended behaviour.  The answer is the single relational byte, 1 when the
    peer asked for it and we are ``willing``, else 0: one byte is what PS3.4
    C.5.1.1 and C.5.2.1 allow whatever the peer offered (a missing byte reads
    as 0), so that we never agree to an option such as fuzzy matching that a
    find handler may not honour.  A peer's second sub-item for a SOP class is
    ignored.
    """
    served = {context.abstract_syntax for context in accepted.values()}
    answers: dict[str, SOPClassExtendedNegotiation] = {}
    for item in proposed:
        uid = item.sop_class_uid
        if uid in answers or uid not in RELATIONAL_SOP_CLASSES or uid not in served:
            continue
        agreed = willing and item.application_info[:1] == _AGREED
        answers[uid] = SOPClassExtendedNegotiation(uid, _AGREED if agreed else _NOT_AGREED)
    relational = {uid for uid, answer in answers.items() if answer.application_info == _AGREED}
    return ExtendedNegotiated(
        tuple(answers.values()),
        {
            context_id: (
                dataclasses.replace(context, relational=True)
                if context.abstract_syntax in relational
                else context
            )
            for context_id, context in accepted.items()
        },
    )

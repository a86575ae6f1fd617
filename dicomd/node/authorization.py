"""Who may do what: the built-in rules of the ``authorization:`` section.

A rule names peers and what they may do.  The first rule that names the
peer of an association decides for all of its requests; a peer no rule
names is refused the association itself (1, 1, 3).  Each request the rule
does not allow is answered 0124 (not authorized), its data set read and
dropped (`dicomd.node.acceptor`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from zope.interface import implementer

from dicomd.interfaces import (
    ACCEPT,
    Accept,
    AssociationRequest,
    IAssociationValidator,
    IAuthorizer,
    Rejection,
)


@dataclass(frozen=True, slots=True)
class Rule:
    """``peers``: ``*``, an AE title, ``AE@host``, ``user:NAME`` or ``subject:DN``;
    ``may``: operations, ``move`` to any known destination or ``move:AE`` to that one."""

    peers: tuple[str, ...]
    may: frozenset[str]

    def names(self, request: AssociationRequest) -> bool:
        return any(_names(pattern, request) for pattern in self.peers)

    def allows(self, operation: str, destination: str | None) -> bool:
        if operation == "move" and "move" not in self.may:
            return destination is not None and f"move:{destination}" in self.may
        return operation in self.may


def _names(pattern: str, request: AssociationRequest) -> bool:
    if pattern == "*":
        return True
    kind, _, value = pattern.partition(":")
    if kind == "user" and value:
        return request.user == value
    if kind == "subject" and value:
        certificate = request.peer_certificate
        return certificate is not None and certificate.subject == value
    ae_title, at, host = pattern.partition("@")
    return request.calling_ae_title == ae_title and (not at or request.peer_host == host)


@implementer(IAuthorizer, IAssociationValidator)
class RulesAuthorizer:
    """The ``authorization:`` rules, in their order."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)

    def validate(self, request: AssociationRequest) -> Accept | Rejection:
        if self._rule_for(request) is None:
            return Rejection(1, 1, 3, "no authorization rule names this peer")
        return ACCEPT

    def may(self, request: AssociationRequest, operation: str, destination: str | None) -> bool:
        rule = self._rule_for(request)
        return rule is not None and rule.allows(operation, destination)

    def _rule_for(self, request: AssociationRequest) -> Rule | None:
        return next((rule for rule in self.rules if rule.names(request)), None)

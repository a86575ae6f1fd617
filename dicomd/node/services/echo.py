"""Verification (C-ECHO) SCP, PS3.4 Annex A."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dicomd import uids
from dicomd.dimse.command import CommandField

if TYPE_CHECKING:
    from dicomd.node.acceptor import Acceptor, Request


class VerificationService:
    """Answers every C-ECHO with success: the association itself is the check."""

    abstract_syntaxes = frozenset({uids.VERIFICATION})
    operations = frozenset({CommandField.C_ECHO_RQ})

    def handle(self, association: Acceptor, request: Request) -> None:
        association.respond(request, uids.Status.SUCCESS)

"""Verification (C-ECHO) SCP, PS3.4 Annex A."""

from __future__ import annotations

from dicomd import uids
from dicomd.dimse.association import DataSink, DimseAssociation, Request
from dicomd.dimse.command import Command, CommandField
from dicomd.dimse.negotiation import AcceptedContext


class VerificationService:
    """Answers every C-ECHO with success: the association itself is the check."""

    abstract_syntaxes = frozenset({uids.VERIFICATION})
    transfer_syntaxes = None
    operations = frozenset({CommandField.C_ECHO_RQ})

    def open_sink(
        self, association: DimseAssociation, context: AcceptedContext, command: Command
    ) -> DataSink:
        return (
            association.memory_sink()
        )  # a C-ECHO-RQ has no data set; a peer that sends one gets it read

    def handle(self, association: DimseAssociation, request: Request) -> None:
        association.respond(request, uids.Status.SUCCESS)

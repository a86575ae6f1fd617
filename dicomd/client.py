"""The requesting side (SCU) of dicomd: every call returns a Deferred.

`associate` opens a connection, proposes presentation contexts and fires
with a `Requestor` once the peer accepts, or fails with an exception that
carries the peer's answer (`AssociationRejected`, `AssociationAborted`).
The association sends DIMSE requests and matches responses to them by
message ID; a failure status is a result, not an exception.  `cfind` is the
one-shot form (associate, find, release) that fails with `FindFailed` on a
failure status.

Failing to connect is not an association error: Twisted's own
`twisted.internet.error.ConnectionRefusedError`, `TimeoutError` (no
connection within ``acse_timeout``) and `DNSLookupError` pass through
unchanged.  Once connected, every failure is an `AssociationError`, and our
own timers are told apart from what the peer did: `AssociationTimeout` (no
answer to A-ASSOCIATE-RQ or A-RELEASE-RQ) and `DimseTimeout` (no response).
"""

from __future__ import annotations

from dicomd.dimse.errors import (
    AssociationAborted,
    AssociationError,
    AssociationRejected,
    AssociationReleased,
    AssociationTimeout,
    DimseTimeout,
    NoAcceptedContext,
    TLSHandshakeFailed,
)
from dicomd.dimse.storage import UNCOMPRESSED_SYNTAXES, StoreResult, storage_contexts
from dicomd.scu.connect import associate, association_request, cfind, propose, retrieve_contexts
from dicomd.scu.operations import FindFailed, FindResult, RetrieveProgress, RetrieveResult
from dicomd.scu.requestor import ClientSettings, Requestor
from dicomd.ul.pdu import PresentationContextRQ
from dicomd.ul.tls import ClientOptions, Identity, TLSFileError, client_options

ClientAssociation = Requestor
"""The association `associate` fires with."""

__all__ = [
    "UNCOMPRESSED_SYNTAXES",
    "AssociationAborted",
    "AssociationError",
    "AssociationRejected",
    "AssociationReleased",
    "AssociationTimeout",
    "ClientAssociation",
    "ClientOptions",
    "ClientSettings",
    "DimseTimeout",
    "FindFailed",
    "FindResult",
    "Identity",
    "NoAcceptedContext",
    "PresentationContextRQ",
    "RetrieveProgress",
    "RetrieveResult",
    "StoreResult",
    "TLSFileError",
    "TLSHandshakeFailed",
    "associate",
    "association_request",
    "cfind",
    "client_options",
    "propose",
    "retrieve_contexts",
    "storage_contexts",
]

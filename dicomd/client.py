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

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
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
    from dicomd.dimse.sending import StoreResult, storage_contexts
    from dicomd.scu.connect import (
        associate,
        association_request,
        cfind,
        propose,
        retrieve_contexts,
    )
    from dicomd.scu.operations import FindFailed, FindResult, RetrieveProgress, RetrieveResult
    from dicomd.scu.requestor import ClientSettings
    from dicomd.scu.requestor import Requestor as ClientAssociation
    from dicomd.uids import UNCOMPRESSED_SYNTAXES
    from dicomd.ul.pdu import PresentationContextRQ
    from dicomd.ul.tls import ClientOptions, Identity, TLSFileError, client_options

_HOMES = {
    "AssociationAborted": "dicomd.dimse.errors",
    "AssociationError": "dicomd.dimse.errors",
    "AssociationRejected": "dicomd.dimse.errors",
    "AssociationReleased": "dicomd.dimse.errors",
    "AssociationTimeout": "dicomd.dimse.errors",
    "DimseTimeout": "dicomd.dimse.errors",
    "NoAcceptedContext": "dicomd.dimse.errors",
    "TLSHandshakeFailed": "dicomd.dimse.errors",
    "StoreResult": "dicomd.dimse.sending",
    "storage_contexts": "dicomd.dimse.sending",
    "associate": "dicomd.scu.connect",
    "association_request": "dicomd.scu.connect",
    "cfind": "dicomd.scu.connect",
    "propose": "dicomd.scu.connect",
    "retrieve_contexts": "dicomd.scu.connect",
    "FindFailed": "dicomd.scu.operations",
    "FindResult": "dicomd.scu.operations",
    "RetrieveProgress": "dicomd.scu.operations",
    "RetrieveResult": "dicomd.scu.operations",
    "ClientAssociation": "dicomd.scu.requestor",
    "ClientSettings": "dicomd.scu.requestor",
    "UNCOMPRESSED_SYNTAXES": "dicomd.uids",
    "PresentationContextRQ": "dicomd.ul.pdu",
    "ClientOptions": "dicomd.ul.tls",
    "Identity": "dicomd.ul.tls",
    "TLSFileError": "dicomd.ul.tls",
    "client_options": "dicomd.ul.tls",
}
"""The module each public name comes from.

A name is imported the first time it is asked for (PEP 562), so that a
program pays for what it uses: a C-ECHO loads neither pydicom (sending
files and decoding data sets need it) nor pyOpenSSL (TLS needs it).
"""


_RENAMED = {"ClientAssociation": "Requestor"}
"""Names that differ from their module's: the association `associate` fires with."""


def __getattr__(name: str) -> object:
    """The public name ``name``, imported from its module now and kept here."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(home), _RENAMED.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


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

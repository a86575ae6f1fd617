"""What every DICOMweb route sees of the node, and who is asking.

The web services run over the node's own plugins and rules: the find
handlers of its C-FIND chain, the retrieve source of its C-MOVE/C-GET, the
store handlers of its C-STORE chain, and the authenticators and authorizer
its associations are checked with.  `WebContext` holds them for the routes;
`WebUser` is the identity a request proved (`dicomd.web.auth`), and `allowed`
asks the node's authorizer about it exactly as it asks about an association.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from dicomd.dimse.transcode import Decompressor
from dicomd.dimse.walker import DEFAULT_INFLATION, InflationLimits
from dicomd.interfaces import (
    AssociationRequest,
    IAuthenticator,
    IAuthorizer,
    IFindHandler,
    IRetrieveSource,
    IStoreHandler,
)

ANY_ORIGIN: Final = "*"
"""``cors_origins`` that lets every origin read the answers."""


@dataclass(frozen=True)
class StoreSettings:
    """What STOW-RS needs to run the node's C-STORE chain as a C-STORE would: the transfer
    syntaxes it prefers, the walker's inflation limits, whether unknown SOP classes are
    kept (``store.accept_unknown_sop_classes``) and whether the audit trail is on."""

    transfer_syntaxes: tuple[str, ...] = ("1.2.840.10008.1.2.1",)
    inflation: InflationLimits = DEFAULT_INFLATION
    accept_unknown_sop_classes: bool = False
    audited: bool = False


@dataclass(frozen=True)
class WebContext:
    """The node as the DICOMweb routes use it (one per listener, built by `dicomd.app`)."""

    ae_title: str
    find_handlers: Sequence[IFindHandler]
    """The C-FIND chain's handlers, the archive first."""
    retrieve_source: IRetrieveSource | None
    """The archive: ``instances(query)`` answers `RetrieveItem`s."""
    store_handlers: Sequence[IStoreHandler]
    """The C-STORE chain's handlers."""
    incoming: Path
    """``storage.path/.incoming``: where STOW spools the parts it receives."""
    reactor: Any
    base_url: str | None
    """The public base of RetrieveURL and BulkDataURI (``https://host/dicom-web``), or None to
    take it from each request's Host."""
    max_stow_length: int
    """A STOW body longer than this is answered 413."""
    store_settings: StoreSettings = field(default_factory=StoreSettings)
    authenticators: Sequence[IAuthenticator] = ()
    """The node's authenticators (built-in first, then plugins), asked in turn."""
    identity_required: bool = False
    """``authentication.required``: a request without valid credentials is answered 401."""
    authorizer: IAuthorizer | None = None
    """The node's authorizer; None lets everyone do everything, as for associations."""
    cors_origins: frozenset[str] = frozenset()
    """Origins whose browsers may read the answers; ``{"*"}`` for any."""
    decompressor: Decompressor | None = None
    """Decoder processes that make decompressed copies of compressed instances, for clients
    that accept none of their syntaxes; None when ``retrieve.transcode`` is ``as-stored``."""


@dataclass(frozen=True)
class WebUser:
    """Who made a request, after authentication: ``name`` None when anonymous."""

    name: str | None
    host: str


_USER_ATTRIBUTE: Final = "_dicomd_web_user"


def set_user(request: Any, user: WebUser) -> None:
    """Remember who ``request`` proved to be (the site does, before any route runs)."""
    setattr(request, _USER_ATTRIBUTE, user)


def user_of(request: Any) -> WebUser:
    """Who made ``request``: the user the site authenticated, else anonymous from its peer."""
    user = getattr(request, _USER_ATTRIBUTE, None)
    if user is not None:
        return user  # type: ignore[no-any-return]
    return WebUser(None, _peer_host(request))


def association_request(context: WebContext, user: WebUser) -> AssociationRequest:
    """The HTTP identity as an association would present it to the node's rules: no calling
    AE title, the peer's host, the authenticated user."""
    return AssociationRequest(
        called_ae_title=context.ae_title,
        calling_ae_title="",
        peer_host=user.host,
        peer_port=0,
        presentation_contexts=(),
        user_identity=None,
        implementation_class_uid=None,
        implementation_version_name=None,
        user=user.name,
    )


def allowed(request: Any, context: WebContext, operation: str) -> bool:
    """Whether the node's rules let the maker of ``request`` do ``operation``: QIDO-RS is
    ``find``, WADO-RS ``get``, STOW-RS ``store``.  Without an authorizer, everyone may."""
    if context.authorizer is None:
        return True
    return bool(
        context.authorizer.may(association_request(context, user_of(request)), operation, None)
    )


def _peer_host(request: Any) -> str:
    address = request.getClientAddress()
    return str(getattr(address, "host", "") or "")

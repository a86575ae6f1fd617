"""Opening associations: what to propose, the A-ASSOCIATE-RQ, and connecting.

Failing to connect is not an association error: Twisted's own
`twisted.internet.error.ConnectionRefusedError`, `TimeoutError` (no
connection within ``acse_timeout``) and `DNSLookupError` pass through
unchanged.  Once connected, every failure is an `AssociationError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Final

from twisted.internet import defer

from dicomd import uids
from dicomd.dimse.work import worker_for
from dicomd.scu.requestor import ClientSettings, Requestor
from dicomd.uids import UNCOMPRESSED_SYNTAXES
from dicomd.ul.pdu import (
    AAssociateRQ,
    AsyncOperationsWindow,
    PresentationContextRQ,
    RoleSelection,
    UserInformation,
)
from dicomd.ul.protocol import UpperLayerProtocol

if TYPE_CHECKING:
    from pydicom import Dataset
    from twisted.internet.interfaces import IReactorTCP, IReactorTime, IStreamClientEndpoint

    from dicomd.ul.tls import ClientOptions

_MAX_SYNTAXES_PER_CONTEXT: Final = 32
"""dcmtk refuses an association whose contexts propose more transfer syntaxes than that."""


def propose(
    abstract_syntaxes: Sequence[str], transfer_syntaxes: Sequence[str] = UNCOMPRESSED_SYNTAXES
) -> tuple[PresentationContextRQ, ...]:
    """One presentation context per abstract syntax, with odd context IDs (PS3.8 9.3.2.2)."""
    return tuple(
        PresentationContextRQ(2 * index + 1, syntax, tuple(transfer_syntaxes))
        for index, syntax in enumerate(abstract_syntaxes)
    )


def retrieve_contexts(
    model: str, storage_classes: Iterable[str] = ()
) -> tuple[PresentationContextRQ, ...]:
    """The contexts of a C-MOVE or C-GET association: the model, and for C-GET the storage
    classes to receive, each offering the current transfer syntaxes we keep as they come."""
    others = sorted(uids.ALL_TRANSFER_SYNTAXES - set(UNCOMPRESSED_SYNTAXES))
    syntaxes = (*UNCOMPRESSED_SYNTAXES, *others)[:_MAX_SYNTAXES_PER_CONTEXT]
    contexts = [PresentationContextRQ(1, model, UNCOMPRESSED_SYNTAXES)]
    for index, sop_class in enumerate(dict.fromkeys(storage_classes), start=1):
        contexts.append(PresentationContextRQ(2 * index + 1, sop_class, syntaxes))
    return tuple(contexts)


def association_request(
    settings: ClientSettings,
    contexts: Sequence[PresentationContextRQ],
    scp_roles: Iterable[str] = (),
) -> AAssociateRQ:
    """The A-ASSOCIATE-RQ for ``settings``, announcing our implementation.

    ``scp_roles`` are the SOP classes we take the SCP role for (PS3.7
    D.3.3.4): the storage classes a C-GET is to bring back.
    """
    return AAssociateRQ(
        called_ae_title=settings.called_ae_title,
        calling_ae_title=settings.calling_ae_title,
        presentation_contexts=tuple(contexts),
        user_information=UserInformation(
            max_length=settings.max_pdu_length,
            implementation_class_uid=uids.IMPLEMENTATION_CLASS_UID,
            implementation_version_name=uids.IMPLEMENTATION_VERSION_NAME,
            async_operations_window=(
                AsyncOperationsWindow(settings.max_operations, 1)
                if settings.max_operations > 1
                else None
            ),
            role_selections=tuple(RoleSelection(uid, False, True) for uid in scp_roles),
        ),
    )


def requestor_protocol(
    reactor: IReactorTime,
    settings: ClientSettings,
    contexts: Sequence[PresentationContextRQ],
    scp_roles: Iterable[str] = (),
) -> tuple[UpperLayerProtocol, Requestor]:
    """A protocol ready to be connected, whose association starts on connection.

    Slow work (converting instances to send) goes to ``reactor``'s thread
    pool when it has one; a `twisted.internet.task.Clock` gets it inline.
    """
    request = association_request(settings, contexts, scp_roles)
    worker = worker_for(reactor)
    protocol = UpperLayerProtocol(
        lambda p: Requestor(p, request, settings, worker),
        reactor,
        requestor=True,
        max_pdu_length=settings.max_pdu_length,
        artim_timeout=settings.acse_timeout,
        idle_timeout=settings.network_idle_timeout,
        pdu_timeout=settings.dimse_timeout,
    )
    association: Requestor = protocol.user  # type: ignore[assignment]
    association.begin()
    return protocol, association


def associate(
    reactor: IReactorTCP,
    host: str,
    port: int,
    settings: ClientSettings,
    contexts: Sequence[PresentationContextRQ] = propose([uids.VERIFICATION]),
    scp_roles: Iterable[str] = (),
    tls: ClientOptions | None = None,
) -> defer.Deferred[Requestor]:
    """Connect and negotiate; fires with the association or fails with the reason.

    ``scp_roles`` (for C-GET) are the SOP classes we take the SCP role for.
    ``tls`` (`dicomd.ul.tls.client_options`) runs the
    association over DICOM TLS (PS3.15 B.1).

    Connecting may take ``settings.acse_timeout``, and so may the answer to
    the request once connected.  A connection that cannot be made fails with
    Twisted's error as it is (`ConnectionRefusedError`, `TimeoutError`,
    `DNSLookupError` from `twisted.internet.error`); after that, the failure
    is `AssociationRejected`, `AssociationAborted` or `AssociationTimeout`.
    """
    # Imported here, not with the module: Twisted's endpoints load pyOpenSSL whenever it is
    # installed, and a program that makes no TLS connection may leave it out until now.
    from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS

    protocol, association = requestor_protocol(reactor, settings, contexts, scp_roles)  # type: ignore[arg-type]
    endpoint: IStreamClientEndpoint = HostnameEndpoint(
        reactor, host, port, timeout=settings.acse_timeout
    )
    if tls is not None:
        endpoint = wrapClientTLS(tls, endpoint)
    connected = connectProtocol(endpoint, protocol)
    connected.addErrback(association.abandon)
    return connected.addCallback(association.connected)


def cfind(
    reactor: IReactorTCP,
    host: str,
    port: int,
    settings: ClientSettings,
    sop_class_uid: str,
    identifier: Dataset,
) -> defer.Deferred[list[Dataset]]:
    """One C-FIND on an association of its own: associate, find, release; fires with the matches.

    A failure status fails with `FindFailed` (after the release); any other
    failure is that of `associate` or of the find, and the association is
    aborted.  Cancelling the Deferred aborts it too.
    """

    async def one_shot() -> list[Dataset]:
        association = await associate(reactor, host, port, settings, propose([sop_class_uid]))
        async with association:
            outcome = await association.find(sop_class_uid, identifier)
        return outcome.raise_for_failure().matches

    return defer.ensureDeferred(one_shot())

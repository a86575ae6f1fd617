"""The acceptor node: a Twisted factory that turns connections into associations."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from dicomd.client import ClientSettings
from dicomd.config import Config
from dicomd.interfaces import (
    ACCEPT,
    REJECT_LOCAL_LIMIT,
    Accept,
    AssociationRequest,
    IAssociationValidator,
    IFindHandler,
    IRetrieveSource,
    IStoreHandler,
    Rejection,
)
from dicomd.node.acceptor import Acceptor, AcceptorSettings, Service, ServiceRegistry
from dicomd.node.services.echo import VerificationService
from dicomd.node.services.find import FindService
from dicomd.node.services.retrieve import GetService, MoveService
from dicomd.node.services.store import StorageService
from dicomd.node.validation import AccessValidator
from dicomd.ul.fsm import State
from dicomd.ul.protocol import UpperLayerProtocol

# States in which a connection holds, or is about to hold, an association.
_ASSOCIATED = frozenset(
    {
        State.STA3,
        State.STA6,
        State.STA7,
        State.STA8,
        State.STA9,
        State.STA10,
        State.STA11,
        State.STA12,
    }
)


class _NodeProtocol(UpperLayerProtocol):
    """An acceptor connection that keeps its factory's count of connections right."""

    factory: DicomServerFactory

    def connectionMade(self) -> None:
        self.factory.connections.add(self)
        super().connectionMade()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.connections.discard(self)
        super().connectionLost(reason)


@implementer(IAssociationValidator)
class ConcurrencyLimit:
    """Rejects associations beyond ``limits.max_associations`` (transient, 3, 2)."""

    def __init__(self, factory: DicomServerFactory, limit: int) -> None:
        self.factory = factory
        self.limit = limit

    def validate(self, request: AssociationRequest) -> Accept | Rejection:
        active = sum(1 for p in self.factory.connections if p.machine.state in _ASSOCIATED)
        return REJECT_LOCAL_LIMIT if active > self.limit else ACCEPT


class DicomServerFactory(Factory):
    """Builds one acceptor protocol per connection, sharing the node's settings."""

    log = Logger()

    def __init__(self, config: Config, reactor: IReactorTime) -> None:
        self.config = config
        self.reactor = reactor
        self.connections: set[UpperLayerProtocol] = set()
        self.settings = AcceptorSettings(
            ae_title=config.ae_title,
            max_pdu_length=config.limits.max_pdu_length,
            dimse_timeout=config.timeouts.dimse,
            validators=(
                ConcurrencyLimit(self, config.limits.max_associations),
                AccessValidator(config.ae_title, config.access),
                *config.plugins_providing(IAssociationValidator),
            ),
            services=_services(config, reactor),
        )

    def buildProtocol(self, addr: IAddress) -> UpperLayerProtocol:
        timeouts = self.config.timeouts
        protocol = _NodeProtocol(
            lambda p: Acceptor(self.settings, p),
            self.reactor,
            requestor=False,
            max_pdu_length=self.config.limits.max_pdu_length,
            artim_timeout=timeouts.artim,
            idle_timeout=timeouts.network_idle,
        )
        protocol.factory = self
        return protocol


def _services(config: Config, clock: IReactorTime) -> ServiceRegistry:
    """Verification always; Storage and Query when handlers for them are configured."""
    services: list[Service] = [VerificationService()]
    find_handlers = config.plugins_providing(IFindHandler)
    if find_handlers:
        services.append(FindService(find_handlers, config.ae_title, clock))
    store_handlers = config.plugins_providing(IStoreHandler)
    storage = None
    if store_handlers:
        storage = StorageService(config.storage_path, store_handlers, config.transfer_syntaxes)
        services.append(storage)
    sources = config.plugins_providing(IRetrieveSource)
    if sources:
        services.append(MoveService(sources[0], config.destinations, clock, _client(config)))
        services.append(GetService(sources[0]))
    fallback = storage if config.store.accept_unknown_sop_classes else None
    return ServiceRegistry(services, config.transfer_syntaxes, fallback)


def _client(config: Config) -> Callable[[str], ClientSettings]:
    """The settings of the associations the node opens itself (C-MOVE destinations)."""
    timeouts = config.timeouts

    def settings(called_ae_title: str) -> ClientSettings:
        return ClientSettings(
            called_ae_title=called_ae_title,
            calling_ae_title=config.ae_title,
            max_pdu_length=config.limits.max_pdu_length,
            acse_timeout=timeouts.acse,
            dimse_timeout=timeouts.dimse,
            network_idle_timeout=timeouts.network_idle,
        )

    return settings

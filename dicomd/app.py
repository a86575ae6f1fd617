"""The wiring: from a checked ``Config`` to plugins, services, the node's factory, the service tree.

``dicomd.config`` only reads and checks; everything that imports plugin code,
opens files or needs a reactor starts here.  A program that embeds dicomd
calls these functions with its own reactor (and, in tests, a
``twisted.internet.task.Clock``), and may hand ``node_factory`` plugin
objects it built itself instead of the ones a file names.
"""

from __future__ import annotations

import functools
import gc
import importlib
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from types import MappingProxyType
from typing import Any, Final, NoReturn, TypeVar

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.internet import endpoints
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorCore, IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface.interface import InterfaceClass

from dicomd.audit.events import LocalNode
from dicomd.audit.messages import AuditSource
from dicomd.audit.syslog import SyslogHeader, TLSSyslog, UDPSyslog
from dicomd.audit.trail import AuditFile, AuditSink, AuditTrail
from dicomd.client import ClientSettings
from dicomd.config import BUILTIN_PLUGINS, Config, ConfigError, describe_error, short_repr
from dicomd.dimse.transcode import Decompressor
from dicomd.dimse.walker import InflationLimits
from dicomd.dimse.work import worker_for
from dicomd.interfaces import (
    PLUGIN_INTERFACES,
    IAssociationValidator,
    IAuthenticator,
    IAuthorizer,
    IFindHandler,
    IRetrieveSource,
    IStoreHandler,
)
from dicomd.lag import LagMonitor
from dicomd.node.acceptor import AcceptorSettings
from dicomd.node.authentication import JWTAuthenticator, JWTSettings, PasswordAuthenticator
from dicomd.node.authorization import Rule, RulesAuthorizer
from dicomd.node.factory import Admission, AssociationLimits, DicomServerFactory
from dicomd.node.registry import ServiceRegistry
from dicomd.node.services.echo import VerificationService
from dicomd.node.services.find import FindService
from dicomd.node.services.retrieve import GetService, MoveService
from dicomd.node.services.store import StorageService
from dicomd.node.validation import AccessValidator
from dicomd.part10 import INCOMING_FOLDER
from dicomd.scu.destinations import KnownDestinations, TurnsFor
from dicomd.ul.tls import Identity, TLSFileError, client_options, server_options
from dicomd.web.context import StoreSettings, WebContext
from dicomd.web.site import web_site

_Listener = TypeVar("_Listener", bound=StreamServerEndpointService)


def build_plugins(config: Config) -> tuple[object, ...]:
    """Import each configured plugin, call it with its options and check what it made.

    The archive keeps its files under ``storage.path``, or in ``storage.url``,
    and its index in ``index.url``, unless its options name others.  Raises
    ``ConfigError`` naming the plugin entry (``plugins[<n>].plugin`` or
    ``plugins[<n>].options``) and nothing else.
    """
    return tuple(
        _build_plugin(plugin.path, plugin.options, f"plugins[{index}]", config)
        for index, plugin in enumerate(config.plugins)
    )


def node_factory(
    config: Config,
    plugins: Sequence[object] = (),
    *,
    clock: IReactorTime,
    audit: AuditTrail | None = None,
    admission: Admission | None = None,
    turns_for: TurnsFor | None = None,
) -> DicomServerFactory:
    """The node's Twisted factory, serving what ``plugins`` provide (in their order).

    ``clock`` is the reactor: its time for every timer, and ``IReactorTCP``
    for the associations C-MOVE opens to its destinations.  ``audit`` is the
    trail its associations write to (`audit_trail`); ``admission`` and ``turns_for``
    hold the association limits and the destinations' when a parent process holds
    them for its workers.
    Raises ``ConfigError`` when an identity is required and nothing can check one.
    """
    access = config.access
    authorizer = _authorizer(config, plugins)
    checkers = identity_checkers(config, plugins)
    if config.authentication.required and not checkers:
        raise ConfigError(
            "authentication.required",
            "nothing can check an identity: set users_file or jwt, or add an IAuthenticator plugin",
        )
    settings = AcceptorSettings(
        ae_title=config.ae_title,
        max_pdu_length=config.limits.max_pdu_length,
        dimse_timeout=config.timeouts.dimse,
        validators=(
            AccessValidator(
                config.ae_title,
                check_called_ae=access.check_called_ae,
                calling_aes=[(entry.ae_title, entry.host) for entry in access.calling_aes],
            ),
            *([authorizer] if isinstance(authorizer, RulesAuthorizer) else []),
            *providing(plugins, IAssociationValidator),
        ),
        services=services(
            config,
            plugins,
            clock,
            audited=audit is not None and audit.enabled,
            turns_for=turns_for,
        ),
        worker=worker_for(clock),
        max_command_length=config.limits.max_command_length,
        max_data_length=config.limits.max_identifier_length,
        max_identifier_keys=config.limits.max_identifier_keys,
        authenticators=checkers,
        identity_required=config.authentication.required,
        authorizer=authorizer,
        audit=audit,
        relational=config.query_retrieve.relational,
    )
    return DicomServerFactory(
        settings,
        clock,
        limits=AssociationLimits(
            config.limits.max_associations,
            config.limits.max_associations_per_host,
            config.limits.max_associations_per_calling_ae,
        ),
        artim_timeout=config.timeouts.artim,
        idle_timeout=config.timeouts.network_idle,
        admission=admission,
    )


def service_tree(
    config: Config,
    plugins: Sequence[object],
    reactor: Any,
    listener: Callable[..., _Listener] = StreamServerEndpointService,
    root: MultiService | None = None,
    admission: Admission | None = None,
    turns_for: TurnsFor | None = None,
) -> MultiService:
    """The node as a service: plugins that are services (the archive opens its index) start
    before the listener, which is named ``dicom``, and the HTTP listener of the ``web:``
    section, named ``web``; a `LagMonitor` reports reactor stalls.

    ``listener`` makes the listening service from the endpoint and the factory; ``root``
    is the service the tree is built into (a new `MultiService` by default);
    ``admission`` and ``turns_for`` are passed to `node_factory`.
    """
    root = root if root is not None else MultiService()
    trail = audit_trail(config, reactor)
    trail.setName("audit")
    trail.setServiceParent(root)  # first to start, last to stop
    LagMonitor(reactor).setServiceParent(root)
    for plugin in providing(plugins, IService):
        plugin.setServiceParent(root)  # type: ignore[attr-defined]
    endpoint = endpoints.serverFromString(reactor, config.listen)
    factory = node_factory(
        config, plugins, clock=reactor, audit=trail, admission=admission, turns_for=turns_for
    )
    service = listener(endpoint, with_tls(config, factory))
    service.setName("dicom")
    service.setServiceParent(root)
    if config.web is not None:
        site = web_site(
            web_context(config, plugins, reactor, audited=trail.enabled),
            config.web.viewer,
            timeout=config.timeouts.network_idle,
            max_connections=config.web.max_connections,
        )
        web = listener(endpoints.serverFromString(reactor, config.web.listen), site)
        web.setName("web")
        web.setServiceParent(root)
    StartupFrozen().setServiceParent(root)  # last: everything the start made is frozen
    return root


class StartupFrozen(Service):
    """Freezes what the start made (modules, pydicom's dictionaries, the plugins) out of the
    garbage collector's later passes (`gc.freeze`): a full collection of the started node
    otherwise walks some 66,000 objects, 13 ms on a quiet machine and several times that
    under load, on the reactor thread, while a C-FIND streams."""

    def startService(self) -> None:
        super().startService()
        gc.freeze()


def audit_trail(config: Config, reactor: Any) -> AuditTrail:
    """The trail the ``audit:`` section asks for; one with no file and no collector records
    nothing.  Raises ``ConfigError`` for a file that cannot be opened for appending, or
    certificates a ``tls://`` collector cannot be reached with."""
    settings = config.audit
    host_name = socket.gethostname()  # no DNS lookup: the start must not wait on a resolver
    node = LocalNode(os.getpid(), config.ae_title, host_name)
    sinks: list[AuditSink] = []
    if settings.file is not None:
        try:
            sinks.append(AuditFile(settings.file, worker_for(reactor)))
        except OSError as error:
            problem = f"cannot append to {settings.file}: {error.strerror}"
            raise ConfigError("audit.file", problem) from None
    collector = settings.syslog
    if collector is not None:
        header = SyslogHeader(host_name, os.getpid())
        if collector.transport == "udp":
            sinks.append(UDPSyslog(reactor, collector.host, collector.port, header))
        else:
            identity = (
                Identity(config.tls.certificate, config.tls.private_key) if config.tls else None
            )
            try:
                options = client_options(collector.host, settings.ca_certificates, identity)
            except TLSFileError as error:
                raise ConfigError(f"audit.{error.key}", str(error)) from None
            sinks.append(TLSSyslog(reactor, collector.host, collector.port, header, options))
    source = AuditSource(settings.source_id or config.ae_title, settings.enterprise_site)
    return AuditTrail(node, source, sinks, reactor.seconds)


def _authorizer(config: Config, plugins: Sequence[object]) -> Any:
    """An ``IAuthorizer`` plugin, else the ``authorization:`` rules, else None (all allowed)."""
    found = providing(plugins, IAuthorizer)
    if found:
        return found[0]
    if config.authorization is None:
        return None
    return RulesAuthorizer([Rule(rule.peers, rule.may) for rule in config.authorization])


def web_context(
    config: Config, plugins: Sequence[object], reactor: Any, *, audited: bool = False
) -> WebContext:
    """What the DICOMweb routes see of the node: its plugins, authenticators and rules, as
    its associations see them.  ``config.web`` must be set."""
    web = config.web
    assert web is not None
    sources = providing(plugins, IRetrieveSource)
    return WebContext(
        ae_title=config.ae_title,
        find_handlers=tuple(providing(plugins, IFindHandler)),
        retrieve_source=sources[0] if sources else None,  # type: ignore[arg-type]
        store_handlers=tuple(providing(plugins, IStoreHandler)),  # type: ignore[arg-type]
        incoming=config.storage_path / INCOMING_FOLDER,
        reactor=reactor,
        base_url=None,
        max_stow_length=web.max_stow_length,
        store_settings=StoreSettings(
            config.transfer_syntaxes,
            inflation_limits(config),
            config.store.accept_unknown_sop_classes,
            audited,
        ),
        authenticators=identity_checkers(config, plugins),  # type: ignore[arg-type]
        identity_required=config.authentication.required,
        authorizer=_authorizer(config, plugins),
        cors_origins=web.cors_origins,
        decompressor=decompressor(config, reactor) if config.retrieve.decompress else None,
    )


def identity_checkers(config: Config, plugins: Sequence[object]) -> tuple[object, ...]:
    """Who checks a user identity, asked in turn: the built-in authenticators, then plugins."""
    return (*authenticators(config), *providing(plugins, IAuthenticator))


def authenticators(config: Config) -> list[object]:
    """The built-in authenticators the ``authentication:`` section asks for."""
    found: list[object] = []
    settings = config.authentication
    if settings.users_file is not None:
        found.append(PasswordAuthenticator(settings.users_file))
    if settings.jwt is not None:
        jwt = settings.jwt
        found.append(
            JWTAuthenticator(
                JWTSettings(jwt.secret, jwt.public_key, jwt.issuer, jwt.audience, jwt.algorithms)
            )
        )
    return found


def with_tls(config: Config, factory: DicomServerFactory) -> ServerFactory:
    """The listener's factory: DICOM TLS around the node when ``tls:`` is configured.

    Raises ``ConfigError`` for a certificate or key that cannot be used.
    """
    tls = config.tls
    if tls is None:
        return factory
    try:
        options = server_options(
            tls.certificate, tls.private_key, tls.ca_certificates, tls.client_certificates
        )
    except TLSFileError as error:
        raise ConfigError(error.key, str(error)) from None
    return TLSMemoryBIOFactory(options, False, factory)


LISTEN_KEYS: Final = MappingProxyType({"dicom": "listen", "web": "web.listen"})
"""The configuration key of each listening service, by its name in the service tree."""


def stop_once_on_signals(reactor: Any) -> None:
    """Once the reactor runs, the first SIGTERM or SIGINT stops it as Twisted does, and any
    later one is only logged.

    Twisted's handlers queue one ``reactor.stop()`` per signal: a second signal
    sent before the first was handled (an init system and an operator both
    stopping the daemon) made the second stop fail with a logged
    ``ReactorNotRunning`` traceback.
    """
    stopping: list[int] = []

    def first_only(twisted_handler: Callable[[int, Any], object], number: int, frame: Any) -> None:
        if stopping:
            Logger(namespace="dicomd").info(
                "Received {name} while shutting down already", name=signal.Signals(number).name
            )
            return
        stopping.append(number)
        twisted_handler(number, frame)  # logs it, stops the reactor, and twistd re-raises it

    def install() -> None:  # after Twisted's own, which starting the reactor installs
        for number in (signal.SIGTERM, signal.SIGINT):
            twisted_handler = signal.getsignal(number)
            if callable(twisted_handler):
                signal.signal(number, functools.partial(first_only, twisted_handler))

    reactor.callWhenRunning(install)


def stop_on_listen_failure(error: CannotListenError, key: str = "listen") -> NoReturn:
    """A port that cannot be had stops the daemon with one line naming its ``key``, like a
    bad config."""
    where = f"{error.interface or '*'}:{error.port}"
    reason = getattr(error.socketError, "strerror", None) or str(error.socketError)
    sys.stderr.write(f"dicomd: {key}: cannot listen on {where}: {reason}\n")
    raise SystemExit(1) from None


def prepare_storage(config: Config) -> None:
    """Create ``storage.path`` if it is missing; one that cannot be had is a ``ConfigError``."""
    path = config.storage_path
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError("storage.path", f"cannot create {path}: {error.strerror}") from None


def providing(plugins: Sequence[object], interface: InterfaceClass) -> list[object]:
    """The plugins that provide ``interface``, in their order."""
    return [plugin for plugin in plugins if interface.providedBy(plugin)]


def services(
    config: Config,
    plugins: Sequence[object],
    clock: IReactorTime,
    *,
    audited: bool = False,
    turns_for: TurnsFor | None = None,
) -> ServiceRegistry:
    """Verification always; Storage, Query and Retrieve when plugins for them are given.

    ``turns_for`` keeps the destinations' ``max_associations`` (in this process by default).
    """
    found = [VerificationService()]
    find_handlers = providing(plugins, IFindHandler)
    if find_handlers:
        found.append(FindService(find_handlers, config.ae_title, clock))
    store_handlers = providing(plugins, IStoreHandler)
    storage = None
    if store_handlers:
        storage = StorageService(
            config.storage_path,
            store_handlers,
            config.transfer_syntaxes,
            inflation_limits(config),
            audited=audited,
        )
        found.append(storage)
    sources = providing(plugins, IRetrieveSource)
    if sources:
        identity = Identity(config.tls.certificate, config.tls.private_key) if config.tls else None
        destinations = KnownDestinations(
            clock,  # type: ignore[arg-type]
            config.destinations,
            client_settings(config),
            identity,
            **({"turns_for": turns_for} if turns_for is not None else {}),
        )
        decoding = decompressor(config, clock)
        found.append(MoveService(sources[0], destinations, decoding))
        found.append(GetService(sources[0], decoding if config.retrieve.decompress else None))
    fallback = storage if config.store.accept_unknown_sop_classes else None
    return ServiceRegistry(found, config.transfer_syntaxes, fallback)


def inflation_limits(config: Config) -> InflationLimits:
    """How far a deflated data set may inflate as it is received (C-STORE and STOW-RS)."""
    return InflationLimits(config.limits.max_inflated_length, config.limits.max_inflation_ratio)


def decompressor(config: Config, clock: IReactorTime) -> Decompressor:
    """Decoder processes for sending compressed instances decompressed; they end at shutdown."""
    decoding = Decompressor(
        config.storage_path / INCOMING_FOLDER, config.retrieve.decoder_processes
    )
    if IReactorCore.providedBy(clock):
        clock.addSystemEventTrigger("before", "shutdown", decoding.close)
    return decoding


def client_settings(config: Config) -> Callable[[str], ClientSettings]:
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


def _build_plugin(path: str, options: Any, key: str, config: Config) -> object:
    if path == BUILTIN_PLUGINS["archive"]:
        options = {**_archive_settings(config), **options}
    factory = _import_factory(path, f"{key}.plugin")
    try:
        instance = factory(**options)
    except Exception as error:  # a plugin may fail in any way; the operator gets one line
        raise ConfigError(
            f"{key}.options", f"{path}(**options) failed: {describe_error(error)}"
        ) from None
    if not any(interface.providedBy(instance) for interface in PLUGIN_INTERFACES):
        names = ", ".join(interface.__name__ for interface in PLUGIN_INTERFACES)
        raise ConfigError(
            f"{key}.plugin", f"{path}(**options) made an object that provides none of: {names}"
        )
    return instance


def _archive_settings(config: Config) -> dict[str, str]:
    """The archive's options that the ``storage`` and ``index`` sections give."""
    settings = {"path": str(config.storage_path)}
    for option, value in (
        ("storage_url", config.storage_url),
        ("endpoint_url", config.storage_endpoint_url),
        ("index_url", config.index_url),
    ):
        if value is not None:
            settings[option] = value
    return settings


def _import_factory(path: str, key: str) -> Callable[..., object]:
    module_name, _, attribute = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # a plugin module may fail to import in any way
        raise ConfigError(key, f"cannot import {module_name}: {describe_error(error)}") from None
    try:
        factory = getattr(module, attribute)
    except AttributeError:
        raise ConfigError(key, f"module {module_name} has no attribute {attribute!r}") from None
    if not callable(factory):
        raise ConfigError(key, f"{path} is not callable, got {short_repr(factory)}")
    return factory

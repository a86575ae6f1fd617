"""One worker process of the node: ``python -m dicomd.fleet`` as its parent starts it.

It gets its configuration from the parent on stdin (a pickled ``Config``,
the parent's own, already checked), the listening socket as descriptor 3,
its control connection to the parent as descriptor 4 and, when ``web:`` is
on, the HTTP listening socket as descriptor 5; its arguments say each
socket's family (``3=inet 5=inet6``).  It builds the
node's service tree exactly as a single-process daemon does (`dicomd.app`),
except that its listener adopts the parent's socket and its association
limits are the parent's (`SharedLimit`).  Its log lines go to stdout, where
the parent reads them and logs them as its own.  It ends when the parent's
connection ends, whatever the reason.
"""

from __future__ import annotations

import io
import os
import pickle
import socket
import sys
from types import MappingProxyType
from typing import Any, Final

LISTENING_FD: Final = 3
CONTROL_FD: Final = 4
WEB_LISTENING_FD: Final = 5
_LISTENERS: Final = {"dicom": LISTENING_FD, "web": WEB_LISTENING_FD}
"""The descriptor of each listening service's socket, by its name in the service tree."""


def pickled(config: Any) -> bytes:
    """``config`` as the worker reads it; its read-only mappings travel as plain ones."""
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer)
    pickler.dispatch_table = {MappingProxyType: lambda m: (_read_only, (dict(m),))}
    pickler.dump(config)
    return buffer.getvalue()


def _read_only(mapping: dict[str, Any]) -> MappingProxyType[str, Any]:
    return MappingProxyType(mapping)


def main() -> int:
    config = pickle.load(sys.stdin.buffer)  # the parent's own checked Config, never a peer's
    families = {}
    for argument in sys.argv[2:]:
        fd, _, family = argument.partition("=")
        families[int(fd)] = socket.AF_INET6 if family == "inet6" else socket.AF_INET

    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    globalLogBeginner.beginLoggingTo(
        [textFileLogObserver(sys.stdout, timeFormat=None)], redirectStandardIO=False
    )
    run(config, families, reactor)
    return 0


def run(config: Any, families: dict[int, socket.AddressFamily], reactor: Any) -> None:
    from twisted.application.service import Service
    from twisted.internet.protocol import Factory
    from twisted.logger import Logger
    from twisted.protocols import amp

    from dicomd import app
    from dicomd.archive.handler import ArchiveHandler
    from dicomd.fleet.admission import SharedLimit, SharedTurns

    class Control(amp.AMP):
        def connectionLost(self, reason: object) -> None:
            super().connectionLost(reason)  # type: ignore[arg-type]
            if reactor.running:
                reactor.stop()  # the parent is gone: so is this worker

    control = Control()
    reactor.adoptStreamConnection(CONTROL_FD, socket.AF_UNIX, Factory.forProtocol(lambda: control))
    os.close(CONTROL_FD)

    class AdoptedPort(Service):
        """One of the parent's listening sockets (the one of this service's name), accepting
        here too."""

        def __init__(self, factory: Any) -> None:
            self.factory = factory
            self.port: Any = None

        def startService(self) -> None:
            super().startService()
            fd = _LISTENERS[self.name]
            self.port = reactor.adoptStreamPort(fd, families[fd], self.factory)
            os.close(fd)
            Logger(namespace="dicomd.fleet").info("accepting connections ({name})", name=self.name)

        def stopService(self) -> Any:
            super().stopService()
            return self.port.stopListening() if self.port is not None else None

    plugins = app.build_plugins(config)
    for plugin in plugins:
        if isinstance(plugin, ArchiveHandler):
            plugin.shared = True  # the parent reconciled; locks hold across the workers
    root = app.service_tree(
        config,
        plugins,
        reactor,
        listener=lambda _endpoint, factory: AdoptedPort(factory),
        admission=SharedLimit(control, reactor),
        turns_for=lambda destination, most: SharedTurns(control, destination, most),
    )
    root.getServiceNamed("audit").records_activity = False  # the parent's start and stop
    root.startService()
    reactor.addSystemEventTrigger("before", "shutdown", root.stopService)
    app.stop_once_on_signals(reactor)
    reactor.run()

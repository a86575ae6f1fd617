"""One worker process of the node: ``python -m dicomd.fleet`` as its parent starts it.

It gets its configuration from the parent on stdin (a pickled ``Config``,
the parent's own, already checked), the listening socket as descriptor 3
and its control connection to the parent as descriptor 4.  It builds the
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
    family = socket.AF_INET6 if sys.argv[-1] == "inet6" else socket.AF_INET

    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    globalLogBeginner.beginLoggingTo(
        [textFileLogObserver(sys.stdout, timeFormat=None)], redirectStandardIO=False
    )
    run(config, family, reactor)
    return 0


def run(config: Any, family: socket.AddressFamily, reactor: Any) -> None:
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
        """The parent's listening socket, accepting here too."""

        def __init__(self, factory: Any) -> None:
            self.factory = factory
            self.port: Any = None

        def startService(self) -> None:
            super().startService()
            self.port = reactor.adoptStreamPort(LISTENING_FD, family, self.factory)
            os.close(LISTENING_FD)
            Logger(namespace="dicomd.fleet").info("accepting connections")

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
    reactor.run()

"""The node as N worker processes sharing one listening socket: the parent's side.

Python runs one thread at a time, so one process uses one core.  With
``workers: N`` the parent listens (so a port in use is still one line at
start) but never accepts; N children adopt its socket (``adoptStreamPort``)
and the kernel hands each new connection to one of them.  The HTTP port of
``web.listen`` is shared the same way.  Every worker
serves every service over the same archive: SQLite in WAL mode takes one
writer at a time and makes the others wait (its busy timeout), and readers
never wait.

The parent also:
- reconciles the archive folder and its index once, before any worker
  starts, because a worker reconciling would delete what the others are
  receiving;
- holds the association limits for all workers (`Admissions`);
- restarts a worker that ends, later each time it ends young; only that
  worker's associations are lost;
- logs what its workers log, each line prefixed with the worker's number;
- on stop, stops every worker (SIGTERM) and waits for them to finish what
  they are filing.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from twisted.application.service import MultiService, Service
from twisted.internet import defer, endpoints, error
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from dicomd import app, metrics
from dicomd.archive.handler import ArchiveHandler
from dicomd.config import Config
from dicomd.fleet.admission import Admissions, AdmissionServer, DestinationTurns
from dicomd.fleet.child import CONTROL_FD, LISTENING_FD, WEB_LISTENING_FD, pickled
from dicomd.node.factory import AssociationLimits

FIRST_RESTART_DELAY: Final = 0.5
LONGEST_RESTART_DELAY: Final = 30.0
YOUNG: Final = 10.0
"""A worker that ends within this many seconds of its start is restarted later each time."""
STOP_GRACE: Final = 30.0
"""How long stopping waits for a worker to finish before it is killed."""

_LEVELS: Final = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
}
_EVENT = re.compile(r"- \[[^\]\s]*#(debug|info|warn|error|critical)\] ")
"""How a worker's log observer begins each event's line: its level is read there and only
there, never from text a peer chose (an AE title, a value) further on, nor from a line
that continues the event (Twisted begins those with a tab)."""
MOST_LINE: Final = 64 * 1024
"""A longer line from a worker is relayed in pieces of this many bytes."""


class _Worker(ProcessProtocol):
    """One child: relays its output lines to the log, tells the pool when it ends."""

    log = Logger(namespace="dicomd.fleet")

    def __init__(self, pool: WorkerPool, number: int, life: int) -> None:
        self.pool = pool
        self.number = number
        self.life = life
        """What the parent's books know this process by: its number is reused by the worker
        that replaces it, and what this one held must never be taken for that one's."""
        self.started_at = pool.reactor.seconds()
        self.pid = 0
        """Its process' id, once started."""
        self.ended: defer.Deferred[None] = defer.Deferred()
        self._pending: dict[int, bytes] = {}
        self._levels: dict[int, LogLevel] = {}
        """The level of the event each stream's last line began: its continuation lines
        (begun with a tab) have it too, whatever the other stream said meanwhile."""

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        """Lines from stdout and stderr, each stream its own."""
        *lines, rest = (self._pending.get(childFD, b"") + data).split(b"\n")
        while len(rest) > MOST_LINE:
            lines.append(rest[:MOST_LINE])
            rest = rest[MOST_LINE:]
        self._pending[childFD] = rest
        for line in lines:
            self._relay(childFD, line)

    def _relay(self, stream: int, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace")
        event = _EVENT.match(line)
        if event is not None:
            level = _LEVELS[event.group(1)]
        elif line.startswith("\t"):
            level = self._levels.get(stream, LogLevel.info)
        else:
            level = LogLevel.info  # an event without a level, or a crash's last words
        self._levels[stream] = level
        line = line.removeprefix("- ")
        self.log.emit(level, "worker {number}: {line}", number=self.number, line=line)

    def processEnded(self, reason: Failure) -> None:
        for stream, rest in self._pending.items():
            if rest:
                self._relay(stream, rest)
        self.ended.callback(None)
        self.pool.ended(self, reason)


class WorkerPool(Service):
    """Starts, watches and stops the node's worker processes.

    It holds the node's audit trail (`dicomd.app.audit_trail`, a service to it),
    which records the node's start before the first worker starts and its stop
    once the last has ended, after every record of theirs (siblings in a
    ``MultiService`` stop all at once).
    """

    log = Logger(namespace="dicomd.fleet")

    def __init__(
        self, config: Config, reactor: Any, plugins: Sequence[object], trail: Service
    ) -> None:
        self.config = config
        self.reactor = reactor
        self.plugins = plugins
        self.trail = trail
        self.admissions = Admissions(
            AssociationLimits(
                config.limits.max_associations,
                config.limits.max_associations_per_host,
                config.limits.max_associations_per_calling_ae,
            )
        )
        self.turns = DestinationTurns()
        self.workers: dict[int, _Worker] = {}
        self._lives = itertools.count(1)
        self._delays: dict[int, float] = {}
        self.metrics_folder: Path | None = None
        """Where the workers keep their metrics' values (`dicomd.metrics`), made at start."""
        self._ports: dict[int, Any] = {}
        """The sockets the workers accept from, by the descriptor each worker gets it as."""

    def privilegedStartService(self) -> None:
        """Listen now, as twistd's listener does, so a port in use stops the start: on
        ``listen``, and on ``web.listen`` when the web is on."""
        super().privilegedStartService()
        self._ports[LISTENING_FD] = self._hold(self.config.listen, "listen")
        if self.config.web is not None:
            self._ports[WEB_LISTENING_FD] = self._hold(self.config.web.listen, "web.listen")

    def _hold(self, description: str, key: str) -> Any:
        """A listening port for the workers to accept from, never accepting here."""
        endpoint = endpoints.serverFromString(self.reactor, description)
        holder = Factory()
        holder.noisy = False  # it never builds a protocol: the workers accept
        outcome: list[Any] = []  # a TCP endpoint listens at once, or fails at once
        endpoint.listen(holder).addBoth(outcome.append)
        port = outcome[0]
        if isinstance(port, Failure):
            if port.check(error.CannotListenError):
                app.stop_on_listen_failure(port.value, key)
            port.raiseException()
        port.stopReading()  # the workers accept; the parent only holds the socket
        # Closing it must not shut it down: shutdown(2) acts on the socket every worker
        # shares, whose accept() then fails (EINVAL) while they still stop.  Twisted makes
        # this same choice for a port it adopts.
        port._shouldShutdown = False
        return port

    def startService(self) -> None:
        """Reconcile each archive once, then start the workers; an archive that cannot be
        used raises here, as it does in a daemon of one process."""
        super().startService()
        for plugin in self.plugins:
            if isinstance(plugin, ArchiveHandler):
                plugin.open()
                plugin.close()
        self.trail.startService()
        self.metrics_folder = metrics.multiprocess_folder()
        for number in range(1, self.config.workers + 1):
            self._start(number)

    def _start(self, number: int) -> None:
        parent_end, child_end = socket.socketpair()
        worker = _Worker(self, number, next(self._lives))
        families = [f"{fd}={_family(port)}" for fd, port in self._ports.items()]
        process = self.reactor.spawnProcess(
            worker,
            sys.executable,
            [sys.executable, "-m", "dicomd.fleet", str(number), *families],
            env={**os.environ, metrics.MULTIPROCESS_VARIABLE: str(self.metrics_folder)},
            childFDs={
                0: "w",
                1: "r",
                2: "r",
                CONTROL_FD: child_end.fileno(),
                **{fd: port.fileno() for fd, port in self._ports.items()},
            },
        )
        child_end.close()
        worker.pid = process.pid
        process.write(pickled(self.config))
        process.closeStdin()
        server = AdmissionServer(self.admissions, self.turns, worker.life)
        self.reactor.adoptStreamConnection(
            parent_end.fileno(), socket.AF_UNIX, Factory.forProtocol(lambda: server)
        )
        parent_end.close()
        self.workers[number] = worker
        self.log.info("worker {number} started (pid {pid})", number=number, pid=process.pid)

    def ended(self, worker: _Worker, reason: Failure) -> None:
        if self.workers.get(worker.number) is not worker:
            return
        del self.workers[worker.number]
        self.admissions.forget(worker.life)
        if self.metrics_folder is not None:
            metrics.forget_process(self.metrics_folder, worker.pid)
        if not self.running:
            return
        young = self.reactor.seconds() - worker.started_at < YOUNG
        delay = self._delays.get(worker.number, FIRST_RESTART_DELAY) if young else 0.0
        # after a long life, the next early end starts the backoff again from its first delay
        self._delays[worker.number] = (
            min(delay * 2, LONGEST_RESTART_DELAY) if young else FIRST_RESTART_DELAY
        )
        self.log.warn(
            "worker {number} ended ({why}); another starts in {delay:.1f} s",
            number=worker.number,
            why=_why(reason),
            delay=delay,
        )
        self.reactor.callLater(delay, self._restart, worker.number)

    def _restart(self, number: int) -> None:
        if self.running and number not in self.workers:
            self._start(number)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        ending = []
        for worker in list(self.workers.values()):
            ending.append(worker.ended)
            _signal(worker, "TERM")
            self.reactor.callLater(STOP_GRACE, _signal, worker, "KILL")
        for port in self._ports.values():
            port.stopListening()
        return defer.gatherResults(ending).addCallback(self._stopped)

    def _stopped(self, _: object) -> Any:
        """Every worker has ended: nobody reads their metrics now; the trail records the stop."""
        if self.metrics_folder is not None:
            metrics.remove_folder(self.metrics_folder)
            self.metrics_folder = None
        return self.trail.stopService()


def _signal(worker: _Worker, name: str) -> None:
    if worker.transport is not None and not worker.ended.called:
        with contextlib.suppress(error.ProcessExitedAlready):
            worker.transport.signalProcess(name)


def _family(port: Any) -> str:
    """How a worker adopts ``port``: ``inet6`` or ``inet``."""
    return "inet6" if getattr(port.getHost(), "type", "TCP") == "TCP6" else "inet"


def _why(reason: Failure) -> str:
    value = reason.value
    if isinstance(value, error.ProcessTerminated) and value.signal is not None:
        return f"signal {value.signal}"
    exit_code = getattr(value, "exitCode", None)
    return f"exit status {exit_code}"


def pool_service(
    config: Config, reactor: Any, root: MultiService, plugins: Sequence[object]
) -> MultiService:
    """The parent's service tree: the pool of workers, with the audit trail of the node's
    start and stop.

    The node a worker builds is built here once too, and dropped, so that a
    mistake it holds (certificates, identity checking, the audit file) stops
    the start with the ``ConfigError`` a daemon of one process raises.
    """
    app.with_tls(config, app.node_factory(config, plugins, clock=reactor))
    pool = WorkerPool(config, reactor, plugins, app.audit_trail(config, reactor))
    pool.setName("dicom")
    pool.setServiceParent(root)
    return root

"""The node's audit trail: where each audit record goes, and the records of its own life.

`AuditTrail` is a Twisted service: started before the listener, it writes
Application Start; stopped after it, Application Stop, then lets its sinks
finish.  Its sinks are a local file (one record per line) and a syslog
collector (`dicomd.audit.syslog`).  Writing a record never blocks the
reactor: the file is appended to in a worker thread, a batch at a time.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from dicomd.audit.backlog import Backlog
from dicomd.audit.events import LocalNode, application_activity, divided
from dicomd.audit.messages import MOST_RECORD, AuditMessage, AuditSource, to_xml
from dicomd.dimse.work import Worker


class AuditSink(Protocol):
    """Takes each record (the XML) with its time; never blocks."""

    def start(self) -> None: ...

    def write(self, record: bytes, time: float) -> None: ...

    def stop(self) -> defer.Deferred[None]: ...


class Session(Protocol):
    """An association's records: `ended` writes what it still holds and its Logout, once."""

    def ended(self) -> None: ...


class AuditFile:
    """Appends records to ``path``, one per line, in the order they were made.

    One append is in flight at a time; records made meanwhile wait (a bounded
    `Backlog`) and are joined into the next one, so a slow disk costs one
    write per batch, not per record, and a stalled one a bounded backlog.
    """

    def __init__(self, path: Path, worker: Worker) -> None:
        """Opens ``path`` at once, so that one that cannot be written to stops the start
        (``OSError``) instead of losing every record later."""
        self.path = path
        self.worker = worker
        self.backlog = Backlog(str(path))
        self._writing: defer.Deferred[None] | None = None
        self._descriptor: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    def start(self) -> None:
        """Nothing to do: the file is open."""

    def write(self, record: bytes, time: float) -> None:
        self.backlog.add(record + b"\n")
        if self._writing is None:
            self._write_next()

    def _write_next(self) -> None:
        records = self.backlog.take()
        self._writing = self.worker.run(self._append, b"".join(records))
        self._writing.addCallbacks(self._written, self._failed, errbackArgs=(len(records),))
        self._writing.addCallback(self._next)

    def _append(self, batch: bytes) -> None:
        assert self._descriptor is not None, "started"
        view = memoryview(batch)
        while view:
            view = view[os.write(self._descriptor, view) :]

    def _written(self, _: None) -> None:
        self.backlog.delivered()

    def _failed(self, failure: Any, records: int) -> None:
        self.backlog.lost(f"cannot append: {failure.getErrorMessage()}", records)

    def _next(self, _: None) -> None:
        self._writing = None
        if self.backlog:
            self._write_next()

    def stop(self) -> defer.Deferred[None]:
        """Once every record made so far is in the file, close it."""
        d: defer.Deferred[None] = defer.Deferred()

        def wait(_: object = None) -> None:
            if self._writing is not None:
                self._writing.addBoth(wait)
            else:
                if self._descriptor is not None:
                    os.close(self._descriptor)
                    self._descriptor = None
                self.backlog.close()
                d.callback(None)

        wait()
        return d


class AuditTrail(Service):
    """Builds each record from an `AuditMessage` and gives it to every sink.

    Once stopped it writes nothing more (an association that a stopping node
    still accepts): one line in the log says so.

    ``seconds`` is the clock the records' times come from (the reactor's).
    A trail without sinks records nothing and costs nothing: the node asks
    `enabled` before it gathers what a record needs.
    """

    log = Logger()

    def __init__(
        self,
        node: LocalNode,
        source: AuditSource,
        sinks: Sequence[AuditSink],
        seconds: Callable[[], float],
    ) -> None:
        self.node = node
        self.source = source
        self.sinks = tuple(sinks)
        self.seconds = seconds
        self.records_activity = True
        """False in a worker process: its parent records the node's start and stop."""
        self._sessions: set[Session] = set()
        self._stopped = False
        self._late = 0

    @property
    def enabled(self) -> bool:
        return bool(self.sinks)

    def now(self) -> float:
        return self.seconds()

    def opened(self, session: Session) -> None:
        """An association logged in: if the node stops before it ends, it is ended first."""
        self._sessions.add(session)

    def closed(self, session: Session) -> None:
        self._sessions.discard(session)

    def record(self, message: AuditMessage) -> None:
        if not self.sinks:
            return
        if self._stopped:
            self._late += 1
            if self._late == 1:
                self.log.warn(
                    "audit records made after the trail stopped are not written (the first:"
                    " event {event}): the node's stop must be its last record",
                    event=message.event.code,
                )
            return
        for xml in self._serialized(message):
            for sink in self.sinks:
                sink.write(xml, message.time)

    def _serialized(self, message: AuditMessage) -> list[bytes]:
        """The message as records of at most `MOST_RECORD` bytes: one, or as many as its
        studies take (a peer that stores or moves hundreds of studies at once).  A long one
        is shared out in records of some three quarters of the bound, so that it is
        serialized about twice in all, not once for each halving."""
        xml = to_xml(message, self.source)
        if len(xml) <= MOST_RECORD:
            return [xml]
        parts = divided(message, -(-4 * len(xml) // (3 * MOST_RECORD)))
        if parts is None:
            return [xml]
        return [record for part in parts for record in self._serialized(part)]

    def startService(self) -> None:
        super().startService()
        for sink in self.sinks:
            sink.start()
        if self.records_activity:
            self.record(application_activity(self.node, self.now(), started=True))

    def stopService(self) -> defer.Deferred[Any]:
        """Associations still open end here, with their records, before the node's stop: the
        connections are dropped only after the trail has stopped, too late to be recorded."""
        super().stopService()
        for session in list(self._sessions):
            session.ended()
        if self.records_activity:
            self.record(application_activity(self.node, self.now(), started=False))
        self._stopped = True
        return defer.gatherResults([sink.stop() for sink in self.sinks], consumeErrors=True)

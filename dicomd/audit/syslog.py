"""Audit records to a syslog collector: RFC 5424 messages over UDP (RFC 5426) or TLS (RFC 5425).

PS3.15 A.6 and A.7 fix the header: facility 10 (security/authorization),
severity 5, so PRI ``<85>``; MSGID ``DICOM+RFC3881``; the XML as MSG, in
UTF-8 behind a byte order mark.  Over TLS each message is framed by its
length (octet counting); over UDP each is one datagram.

Neither transport ever blocks the node nor holds more than a bounded backlog
(`dicomd.audit.backlog`): records wait while the collector's name is not
resolved, while its TLS connection is down or not yet through its handshake,
and while the collector does not read what was sent (the connection pauses
its writer); past the bound they are dropped and counted.  Stopping closes
the connection gracefully, or aborts it after `STOP_DEADLINE` seconds when
the collector does not take what is left.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from twisted.application.internet import ClientService
from twisted.internet import defer, endpoints
from twisted.internet.error import MessageLengthError
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IPushProducer,
)
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from zope.interface import implementer

from dicomd.audit.backlog import Backlog

PRI: Final = b"<85>"
"""Facility 10 (security/authorization) * 8 + severity 5 (notice)."""
MSGID: Final = "DICOM+RFC3881"
APP_NAME: Final = "dicomd"
UTF8_BOM: Final = b"\xef\xbb\xbf"
HANDSHAKE_DEADLINE: Final = 10.0
"""Seconds a collector has to finish the TLS handshake before the connection is dropped (and
made again later): records written before it would wait in the TLS layer, unbounded."""
FIRST_RESOLVE_RETRY: Final = 1.0
LONGEST_RESOLVE_RETRY: Final = 60.0
FIRST_CONNECT_RETRY: Final = 1.0
LONGEST_CONNECT_RETRY: Final = 60.0
STOP_DEADLINE: Final = 5.0
"""Seconds stopping waits for the collector to take what was sent before it aborts."""


@dataclass(frozen=True, slots=True)
class SyslogHeader:
    """The parts of the RFC 5424 header that name the sender."""

    host_name: str
    process_id: int

    def message(self, record: bytes, time: float) -> bytes:
        """One SYSLOG-MSG: header, no structured data, the record as MSG-UTF8."""
        stamp = datetime.fromtimestamp(time, UTC).isoformat(timespec="milliseconds")
        stamp = stamp.replace("+00:00", "Z")
        header = f"1 {stamp} {self.host_name or '-'} {APP_NAME} {self.process_id} {MSGID} - "
        return PRI + header.encode("ascii") + UTF8_BOM + record


def octet_counted(message: bytes) -> bytes:
    """RFC 5425 4.3: the message preceded by its length in decimal and a space."""
    return b"%d " % len(message) + message


class UDPSyslog(DatagramProtocol):
    """Sends each record as one datagram to ``host``:``port`` once the name is resolved."""

    noisy = False  # the port it sends from is nothing to log

    def __init__(self, reactor: Any, host: str, port: int, header: SyslogHeader) -> None:
        self.reactor = reactor
        self.host, self.port = host, port
        self.header = header
        self.backlog = Backlog(f"udp://{host}:{port}")
        self._port: Any = None
        self._address: tuple[str, int] | None = None
        self._retry: Any = None

    def start(self) -> None:
        self._port = self.reactor.listenUDP(0, self)
        self._resolve(FIRST_RESOLVE_RETRY)

    def _resolve(self, retry: float) -> None:
        """Ask for the collector's address; while its name does not resolve (a resolver down
        at the node's start), ask again later each time, up to `LONGEST_RESOLVE_RETRY`."""
        self._retry = None
        d = self.reactor.resolve(self.host)
        d.addCallbacks(self._resolved, self._unresolved, errbackArgs=(retry,))

    def _resolved(self, address: str) -> None:
        self._address = (address, self.port)
        for message in self.backlog.take():
            self._send(message)

    def _unresolved(self, failure: Any, retry: float) -> None:
        if retry == FIRST_RESOLVE_RETRY:
            self.backlog.log.warn(
                "audit collector {host} cannot be resolved ({problem}); its records wait while"
                " it is asked again",
                host=self.host,
                problem=failure.getErrorMessage(),
            )
        self._retry = self.reactor.callLater(
            retry, self._resolve, min(retry * 2, LONGEST_RESOLVE_RETRY)
        )

    def write(self, record: bytes, time: float) -> None:
        message = self.header.message(record, time)
        if self._address is None:
            self.backlog.add(message)
        else:
            self._send(message)

    def _send(self, message: bytes) -> None:
        assert self.transport is not None and self._address is not None
        try:
            self.transport.write(message, self._address)
        except (OSError, MessageLengthError) as error:  # a record too long, ENOBUFS
            self.backlog.lost(f"a datagram of {len(message)} bytes was not sent: {error}")
        else:
            self.backlog.delivered()

    def stop(self) -> defer.Deferred[None]:
        if self._retry is not None:
            self._retry.cancel()
        self.backlog.close()
        if self._port is not None:
            return defer.maybeDeferred(self._port.stopListening)
        return defer.succeed(None)


@implementer(IHandshakeListener, IPushProducer)
class _Sender(Protocol):
    """One TLS connection to the collector: it writes, the collector only reads.  It is ready
    for records once its handshake is done, and again each time the connection, whose
    buffer the collector had let fill, resumes it."""

    factory: _SenderFactory

    def connectionMade(self) -> None:
        self.handshaken = False
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self._deadline = self.factory.reactor.callLater(
            HANDSHAKE_DEADLINE,
            self.transport.abortConnection,  # type: ignore[union-attr]
        )
        self.factory.sink.connected(self)

    def handshakeCompleted(self) -> None:
        self.handshaken = True
        self._deadline.cancel()
        self.factory.sink.ready(self)

    def pauseProducing(self) -> None:
        self.factory.sink.paused(self)

    def resumeProducing(self) -> None:
        if self.handshaken:
            self.factory.sink.ready(self)

    def stopProducing(self) -> None:
        """The connection ends: `connectionLost` follows."""

    def connectionLost(self, reason: Any = None) -> None:
        if self._deadline.active():
            self._deadline.cancel()
        self.factory.sink.lost(self, None if self.handshaken else reason)


class _SenderFactory(Factory):
    protocol = _Sender
    noisy = False  # each attempt is no news; the sink says when the collector is not there

    def __init__(self, sink: TLSSyslog, reactor: Any) -> None:
        self.sink, self.reactor = sink, reactor


class TLSSyslog:
    """Keeps a TLS connection to the collector, reconnecting with backoff, and writes each
    record to it framed by its length while it takes them; otherwise records wait."""

    def __init__(
        self,
        reactor: Any,
        host: str,
        port: int,
        header: SyslogHeader,
        options: IOpenSSLClientConnectionCreator,
    ) -> None:
        self.reactor = reactor
        self.header = header
        self.backlog = Backlog(f"tls://{host}:{port}")
        self._connection: _Sender | None = None
        self._ready: _Sender | None = None
        endpoint = endpoints.wrapClientTLS(
            options,
            endpoints.HostnameEndpoint(reactor, host.encode("idna"), port),
        )
        self._failures = 0
        """Connections lost before their handshake since the last that went through: TCP
        connected, so the service counts no failed attempt, and would try again in a second
        or two for ever."""
        self._service = ClientService(
            endpoint, _SenderFactory(self, reactor), retryPolicy=self._retry_delay
        )

    def _retry_delay(self, failed_attempts: int) -> float:
        """1, 2, 4... up to `LONGEST_CONNECT_RETRY` seconds, counting connections that failed
        and handshakes that did."""
        exponent = min(max(failed_attempts - 1, self._failures), 16)
        return min(FIRST_CONNECT_RETRY * 2**exponent, LONGEST_CONNECT_RETRY)

    def start(self) -> None:
        self._service.startService()

    def connected(self, sender: _Sender) -> None:
        self._connection = sender

    def ready(self, sender: _Sender) -> None:
        """The handshake is done, or the collector read enough: send what waits."""
        if sender is not self._connection:
            return
        if self._failures:
            self.backlog.log.info("audit collector {what} connected", what=self.backlog.what)
            self._failures = 0
        self._ready = sender
        for message in self.backlog.take():
            sender.transport.write(octet_counted(message))  # type: ignore[union-attr]
        self.backlog.delivered()

    def paused(self, sender: _Sender) -> None:
        if self._ready is sender:
            self._ready = None

    def lost(self, sender: _Sender, before_handshake: Any) -> None:
        """The connection ended; ``before_handshake`` is why, when it ended before its
        handshake was through (an untrusted certificate, a collector that is no TLS server):
        the first such reason in a row goes to the log."""
        if self._connection is sender:
            self._connection = None
        self.paused(sender)
        if before_handshake is not None:
            if not self._failures:
                self.backlog.log.warn(
                    "audit collector {what}: no TLS connection ({problem}); its records wait"
                    " and it is tried again, later each time",
                    what=self.backlog.what,
                    problem=before_handshake.getErrorMessage(),
                )
            self._failures += 1

    def write(self, record: bytes, time: float) -> None:
        message = self.header.message(record, time)
        if self._ready is None:
            self.backlog.add(message)
        else:
            self._ready.transport.write(octet_counted(message))  # type: ignore[union-attr]

    def stop(self) -> defer.Deferred[None]:
        """Close the connection once what was written has gone (a TLS close is orderly), or
        abort it after `STOP_DEADLINE` seconds: a collector that does not read cannot hold
        the node's stop."""
        connection = self._connection
        if connection is not None:  # TLS closes once no producer is registered
            connection.transport.unregisterProducer()  # type: ignore[union-attr]
        deadline = self.reactor.callLater(
            STOP_DEADLINE,
            lambda: connection.transport.abortConnection() if connection else None,  # type: ignore[union-attr]
        )

        def stopped(result: object) -> object:
            if deadline.active():
                deadline.cancel()
            self.backlog.close()
            return result

        return self._service.stopService().addBoth(stopped)

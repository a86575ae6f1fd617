"""Audit records to a syslog collector: RFC 5424 messages over UDP (RFC 5426) or TLS (RFC 5425).

PS3.15 A.6 and A.7 fix the header: facility 10 (security/authorization),
severity 5, so PRI ``<85>``; MSGID ``DICOM+RFC3881``; the XML as MSG, in
UTF-8 behind a byte order mark.  Over TLS each message is framed by its
length (octet counting); over UDP each is one datagram.

Neither transport ever blocks the node: records wait in a bounded queue
while the collector is unreachable, and past that bound the oldest are
dropped and counted, with one line in the log.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from twisted.application.internet import ClientService
from twisted.internet import defer, endpoints
from twisted.internet.error import MessageLengthError
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.logger import Logger

PRI: Final = b"<85>"
"""Facility 10 (security/authorization) * 8 + severity 5 (notice)."""
MSGID: Final = "DICOM+RFC3881"
APP_NAME: Final = "dicomd"
UTF8_BOM: Final = b"\xef\xbb\xbf"
MOST_WAITING: Final = 10_000
"""Records kept while the collector cannot take them: at a few KiB each, tens of MiB at most."""


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


class _Waiting:
    """Messages not yet handed to a transport, oldest dropped first past ``MOST_WAITING``."""

    log = Logger()

    def __init__(self, what: str) -> None:
        self.what = what
        self.messages: deque[bytes] = deque()
        self.dropped = 0

    def add(self, message: bytes) -> None:
        if len(self.messages) >= MOST_WAITING:
            self.messages.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % MOST_WAITING == 0:
                self.log.warn(
                    "audit records to {what} are being dropped: {dropped} so far, the"
                    " collector does not take them",
                    what=self.what,
                    dropped=self.dropped,
                )
        self.messages.append(message)

    def take(self) -> list[bytes]:
        taken = list(self.messages)
        self.messages.clear()
        return taken


class UDPSyslog(DatagramProtocol):
    """Sends each record as one datagram to ``host``:``port`` once the name is resolved."""

    noisy = False  # the port it sends from is nothing to log

    def __init__(self, reactor: object, host: str, port: int, header: SyslogHeader) -> None:
        self.reactor = reactor
        self.host, self.port = host, port
        self.header = header
        self.waiting = _Waiting(f"udp://{host}:{port}")
        self._port: object | None = None
        self._address: tuple[str, int] | None = None

    def start(self) -> None:
        self._port = self.reactor.listenUDP(0, self)  # type: ignore[attr-defined]
        d = self.reactor.resolve(self.host)  # type: ignore[attr-defined]
        d.addCallbacks(self._resolved, self._unresolved)

    def _resolved(self, address: str) -> None:
        self._address = (address, self.port)
        for message in self.waiting.take():
            self._send(message)

    def _unresolved(self, failure: object) -> None:
        self.waiting.log.warn(
            "audit collector {host} cannot be resolved; its records wait", host=self.host
        )

    def write(self, record: bytes, time: float) -> None:
        message = self.header.message(record, time)
        if self._address is None:
            self.waiting.add(message)
        else:
            self._send(message)

    def _send(self, message: bytes) -> None:
        assert self.transport is not None and self._address is not None
        try:
            self.transport.write(message, self._address)
        except (OSError, MessageLengthError) as error:  # a record too long, ENOBUFS
            self.waiting.log.warn(
                "audit record of {size} bytes not sent to {what}: {problem}",
                size=len(message),
                what=self.waiting.what,
                problem=error,
            )

    def stop(self) -> defer.Deferred[None]:
        if self._port is not None:
            return defer.maybeDeferred(self._port.stopListening)  # type: ignore[attr-defined]
        return defer.succeed(None)


class _Sender(Protocol):
    """One TLS connection to the collector: it writes, the collector only reads."""

    factory: _SenderFactory

    def connectionMade(self) -> None:
        self.factory.connected(self)

    def connectionLost(self, reason: object = None) -> None:
        self.factory.lost(self)


class _SenderFactory(Factory):
    protocol = _Sender

    def __init__(self, connected: Callable[[_Sender], None], lost: Callable[[_Sender], None]):
        self.connected, self.lost = connected, lost


class TLSSyslog:
    """Keeps a TLS connection to the collector, reconnecting with backoff, and writes each
    record to it framed by its length; while it is down, records wait."""

    def __init__(
        self,
        reactor: object,
        host: str,
        port: int,
        header: SyslogHeader,
        options: IOpenSSLClientConnectionCreator,
    ) -> None:
        self.header = header
        self.waiting = _Waiting(f"tls://{host}:{port}")
        self._sender: _Sender | None = None
        endpoint = endpoints.wrapClientTLS(
            options,
            endpoints.HostnameEndpoint(reactor, host.encode("idna"), port),  # type: ignore[arg-type]
        )
        self._service = ClientService(endpoint, _SenderFactory(self._connected, self._lost))

    def start(self) -> None:
        self._service.startService()

    def _connected(self, sender: _Sender) -> None:
        self._sender = sender
        for message in self.waiting.take():
            sender.transport.write(octet_counted(message))  # type: ignore[union-attr]

    def _lost(self, sender: _Sender) -> None:
        if self._sender is sender:
            self._sender = None

    def write(self, record: bytes, time: float) -> None:
        message = self.header.message(record, time)
        if self._sender is None:
            self.waiting.add(message)
        else:
            self._sender.transport.write(octet_counted(message))  # type: ignore[union-attr]

    def stop(self) -> defer.Deferred[None]:
        """Close the connection once what was written has gone (a TLS close is orderly)."""
        return self._service.stopService()

"""Syslog collectors for e2e tests: UDP (RFC 5426) and TLS (RFC 5425, octet counting).

Each runs a thread that keeps every message it receives; `records` checks
each message's RFC 5424 header as PS3.15 A.6/A.7 fix it and returns the
audit records (the XML after the byte order mark).
"""

from __future__ import annotations

import re
import socket
import ssl
import threading
import time
from pathlib import Path

from tests.support.audit import Record, parse_record

_HEADER = re.compile(
    rb"<85>1 \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \S+ dicomd \d+ DICOM\+RFC3881 - \xef\xbb\xbf"
)


class Collector:
    """What a collector received, in order."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.lock = threading.Lock()

    def keep(self, message: bytes) -> None:
        with self.lock:
            self.messages.append(message)

    def records(self) -> list[Record]:
        with self.lock:
            messages = list(self.messages)
        records = []
        for message in messages:
            header = _HEADER.match(message)
            assert header, f"not an RFC 5424 audit message: {message[:120]!r}"
            records.append(parse_record(message[header.end() :]))
        return records

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Record]:
        """At least ``count`` records, or what arrived by ``timeout``."""
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.records()


class UDPCollector(Collector):
    def __init__(self) -> None:
        super().__init__()
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.settimeout(0.2)
        self.port = self.socket.getsockname()[1]
        self._running = True
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while self._running:
            try:
                self.keep(self.socket.recv(65535))
            except TimeoutError:
                continue

    def close(self) -> None:
        self._running = False
        self._thread.join(2)
        self.socket.close()


class TLSCollector(Collector):
    """A TLS syslog server that requires a client certificate signed by ``ca``."""

    def __init__(self, certificate: Path, private_key: Path, ca: Path) -> None:
        super().__init__()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certificate, private_key)
        context.load_verify_locations(ca)
        context.verify_mode = ssl.CERT_REQUIRED
        self.context = context
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.client_subjects: list[object] = []
        self._running = True
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while self._running:
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            try:
                with self.context.wrap_socket(connection, server_side=True) as tls:
                    self.client_subjects.append(tls.getpeercert()["subject"])
                    self._read_frames(tls)
            except (ssl.SSLError, OSError):
                continue

    def _read_frames(self, tls: ssl.SSLSocket) -> None:
        buffer = b""
        tls.settimeout(0.2)
        while self._running:
            try:
                data = tls.recv(65536)
            except TimeoutError:
                continue
            if not data:
                return
            buffer += data
            while b" " in buffer:
                length, _, rest = buffer.partition(b" ")
                assert length.isdigit(), f"not octet counting: {buffer[:40]!r}"
                if len(rest) < int(length):
                    break
                self.keep(rest[: int(length)])
                buffer = rest[int(length) :]

    def close(self) -> None:
        self._running = False
        self._thread.join(2)
        self.listener.close()

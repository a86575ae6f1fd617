"""Hostile and silent peers on a raw socket: the daemon aborts, times out and keeps serving.

Byte layouts follow PS3.8 section 9.3; A-ABORT is ``07 00 00000004 00 00 source reason``.
After sending an A-ABORT the daemon is in Sta13 and closes the connection when
ARTIM expires (PS3.8 table 9-10, AA-8 then AA-2), so these daemons run with a
one-second ARTIM: the abort must come at once, the close within a few seconds.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass

from tests.support.daemons import RunningDaemon, log_lines_with
from tests.support.processes import LOCALHOST

A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ABORT = 0x07
SERVICE_PROVIDER = 2
UNRECOGNIZED_PDU = 1
UNEXPECTED_PDU = 2
DEFINED_ABORT_REASONS = {0, 1, 2, 4, 5, 6}
PDU_HEADER = struct.Struct(">BxI")
ITEM_HEADER = struct.Struct(">BxH")
MIB = 1024
ARTIM = 1.0
IDLE = 1.0
ABORT_PROMPTLY = 0.5
CLOSE_GRACE = 2.0


@dataclass(frozen=True, slots=True)
class PeerView:
    """What a raw peer saw: the bytes received and whether the daemon closed the connection."""

    address: str
    received: bytes
    closed: bool
    seconds: float
    first_data_seconds: float | None

    def pdus(self) -> list[tuple[int, bytes]]:
        pdus, rest = [], self.received
        while len(rest) >= PDU_HEADER.size:
            pdu_type, length = PDU_HEADER.unpack_from(rest)
            end = PDU_HEADER.size + length
            pdus.append((pdu_type, rest[PDU_HEADER.size : end]))
            rest = rest[end:]
        return pdus

    def abort(self) -> tuple[int, int]:
        """``(source, reason)`` of the A-ABORT that must be the last PDU received."""
        pdus = self.pdus()
        assert pdus, f"no PDU received, only {self.received!r}"
        pdu_type, body = pdus[-1]
        assert (pdu_type, len(body)) == (A_ABORT, 4), f"expected an A-ABORT, got {self.received!r}"
        return body[2], body[3]


def watch(connection: socket.socket, timeout: float) -> PeerView:
    """Read until the daemon closes the connection or ``timeout`` passes."""
    started = time.monotonic()
    received = b""
    first_data_seconds = None
    closed = False
    while (remaining := timeout - (time.monotonic() - started)) > 0:
        connection.settimeout(remaining)
        try:
            chunk = connection.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            closed = True
            break
        if first_data_seconds is None:
            first_data_seconds = time.monotonic() - started
        received += chunk
    host, port = connection.getsockname()[:2]
    return PeerView(
        f"{host}:{port}", received, closed, time.monotonic() - started, first_data_seconds
    )


def send_and_watch(port: int, payload: bytes, timeout: float = 5.0) -> PeerView:
    with socket.create_connection((LOCALHOST, port), timeout=timeout) as connection:
        connection.sendall(payload)
        return watch(connection, timeout)


def item(item_type: int, value: bytes) -> bytes:
    return ITEM_HEADER.pack(item_type, len(value)) + value


def pdu(pdu_type: int, body: bytes) -> bytes:
    return PDU_HEADER.pack(pdu_type, len(body)) + body


def associate_rq_fixed_fields(called_ae: str, calling_ae: str) -> bytes:
    """Protocol version, reserved, called and calling AE titles, 32 reserved bytes."""
    return (
        struct.pack(">H2x", 1)
        + called_ae.ljust(16).encode("ascii")
        + calling_ae.ljust(16).encode("ascii")
        + bytes(32)
    )


def verification_associate_rq(called_ae: str, calling_ae: str) -> bytes:
    application_context = item(0x10, b"1.2.840.10008.3.1.1.1")
    presentation_context = item(
        0x20,
        bytes([1, 0, 0, 0]) + item(0x30, b"1.2.840.10008.1.1") + item(0x40, b"1.2.840.10008.1.2"),
    )
    user_information = item(
        0x50,
        item(0x51, struct.pack(">I", 16384)) + item(0x52, b"1.2.826.0.1.3680043.9.9999.2"),
    )
    return pdu(
        A_ASSOCIATE_RQ,
        associate_rq_fixed_fields(called_ae, calling_ae)
        + application_context
        + presentation_context
        + user_information,
    )


def assert_abort_logged(daemon: RunningDaemon, seen: PeerView) -> None:
    """An operator must be able to tell from the log which peer was aborted."""
    log = daemon.wait_for_log(lambda text: bool(aborts_logged(text, seen.address)))
    assert aborts_logged(log, seen.address), log


def aborts_logged(log: str, address: str) -> list[str]:
    return log_lines_with(log, address, "abort") or log_lines_with(log, address, "invalid")


def assert_aborted_at_once_then_closed(seen: PeerView) -> tuple[int, int]:
    source, reason = seen.abort()
    assert seen.first_data_seconds is not None
    assert seen.first_data_seconds < ABORT_PROMPTLY, "the A-ABORT must not wait for ARTIM"
    assert seen.closed, "the connection must close when ARTIM expires"
    assert seen.seconds < ARTIM + CLOSE_GRACE
    return source, reason


def test_unknown_pdu_type_is_aborted_and_the_daemon_keeps_serving(start_dicomd, echoscu):
    daemon = start_dicomd(timeouts={"artim": ARTIM})
    garbage = b"\x99" + bytes((7 * i + 3) % 256 for i in range(63))

    seen = send_and_watch(daemon.port, garbage)

    assert assert_aborted_at_once_then_closed(seen) == (SERVICE_PROVIDER, UNRECOGNIZED_PDU)
    assert_abort_logged(daemon, seen)
    assert echoscu(daemon).returncode == 0


def test_item_overrunning_its_pdu_is_aborted_and_the_daemon_keeps_serving(start_dicomd, echoscu):
    """A well-formed A-ASSOCIATE-RQ header whose application context item claims 256 bytes of 4."""
    daemon = start_dicomd(timeouts={"artim": ARTIM})
    bogus = pdu(
        A_ASSOCIATE_RQ,
        associate_rq_fixed_fields("DICOMD", "RAW") + ITEM_HEADER.pack(0x10, 256) + b"1.2.",
    )

    seen = send_and_watch(daemon.port, bogus)

    source, reason = assert_aborted_at_once_then_closed(seen)
    assert source == SERVICE_PROVIDER
    assert reason in DEFINED_ABORT_REASONS - {UNRECOGNIZED_PDU, UNEXPECTED_PDU}, (
        "the PDU type is known and expected here; only a parameter is wrong"
    )
    assert_abort_logged(daemon, seen)
    assert echoscu(daemon).returncode == 0


def test_huge_pdu_length_is_aborted_without_buffering(start_dicomd, echoscu):
    daemon = start_dicomd(timeouts={"artim": ARTIM})
    rss_before = daemon.rss_kib()

    seen = send_and_watch(daemon.port, PDU_HEADER.pack(A_ASSOCIATE_RQ, 0xFFFFFFF0))

    source, reason = assert_aborted_at_once_then_closed(seen)
    assert source == SERVICE_PROVIDER
    assert reason in DEFINED_ABORT_REASONS
    assert daemon.rss_kib() - rss_before < 8 * MIB
    assert_abort_logged(daemon, seen)
    assert echoscu(daemon).returncode == 0


def test_artim_closes_a_silent_connection(start_dicomd):
    """PS3.8 Sta2 + ARTIM expiry is AA-2: close the transport, send nothing."""
    daemon = start_dicomd(timeouts={"artim": ARTIM})

    seen = send_and_watch(daemon.port, b"")

    assert seen.closed
    assert ARTIM / 2 < seen.seconds < ARTIM + CLOSE_GRACE
    assert seen.received == b""


def test_idle_association_is_aborted(start_dicomd):
    daemon = start_dicomd(timeouts={"network_idle": IDLE, "artim": ARTIM})

    seen = send_and_watch(daemon.port, verification_associate_rq("DICOMD", "RAW"))

    pdu_types = [pdu_type for pdu_type, _ in seen.pdus()]
    assert pdu_types == [A_ASSOCIATE_AC, A_ABORT], seen.received
    source, reason = seen.abort()
    assert source in {0, SERVICE_PROVIDER}
    assert reason in DEFINED_ABORT_REASONS
    assert seen.closed
    assert IDLE / 2 < seen.seconds < IDLE + ARTIM + CLOSE_GRACE
    assert_abort_logged(daemon, seen)

"""Hostile peers against the audit trail of a real daemon.

Whatever a peer puts in what a record names (its AE title, the user name
it logs in with, a patient's name in any character set, an identifier), each
record stays one line of XML that the PS3.15 schema accepts, carries no
field or record the peer wrote, and fits the 32 KiB a collector takes.
A collector that does not read costs the node bounded memory and two log
lines, never its C-ECHOes nor its stop.
"""

from __future__ import annotations

import socket
import ssl
import struct
import threading
import time
from pathlib import Path

import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.pdu_primitives import UserIdentityNegotiation
from pynetdicom.sop_class import Verification

from dicomd.dimse.command import Command
from dicomd.dimse.messages import PDV_COMMAND, PDV_LAST
from dicomd.uids import STUDY_ROOT_FIND, STUDY_ROOT_MOVE
from dicomd.ul.pdu import PresentationDataValue
from tests.support.attacks import (
    EchoesDuring,
    RawAssociation,
    associate_rq,
    element,
    replaced,
    stalls_ms,
    wait_for_lag_monitor,
    worst_stall_ms,
)
from tests.support.audit import records_in, summary
from tests.support.certificates import Authority
from tests.support.daemons import log_lines_with, users_file
from tests.support.datasets import ct_dataset
from tests.support.dcmtk import run_echoscu
from tests.support.processes import LOCALHOST, status_kib
from tests.support.raw_peer import RawPeer, find_command, move_command, store_command
from tests.support.syslog import TLSCollector, UDPCollector

VERIFICATION = "1.2.840.10008.1.1"
MOST_RECORD = 32 * 1024
FORGED_AE = b"<\x85]]>\n&\x01"
"""8 bytes of AE title: markup, NEL (latin-1 0x85), a line feed and a control character."""
FORGED_NAME = (
    b"\xef\xbf\xbe]]></ParticipantObjectName>\n<AuditMessage>\r\xff\xc3\x85\xe2\x80\xa8&#0;"
)
"""A patient's name in UTF-8 (ISO_IR 192): U+FFFE, markup that would close the element and
open a record, CR and LF, an invalid byte, NEL and U+2028, a character reference to NUL."""


@pytest.fixture
def udp_collector():
    collector = UDPCollector()
    yield collector
    collector.close()


def forged_ae_association(daemon) -> None:
    request = associate_rq(daemon, [(VERIFICATION, ["1.2.840.10008.1.2"])], "ATTACKER")
    peer = RawAssociation(daemon, replaced(request, b"ATTACKER", FORGED_AE))
    peer.close()


def forged_login(daemon, user: bytes) -> bool:
    ae = AE(ae_title="PACSUSER")
    ae.add_requested_context(Verification)
    item = UserIdentityNegotiation()
    item.user_identity_type = 2
    item.primary_field, item.secondary_field = user, b"wrong"
    association = ae.associate(LOCALHOST, daemon.port, ae_title=daemon.ae_title, ext_neg=[item])
    accepted = association.is_established
    if accepted:
        association.release()
    return accepted


def forged_instance() -> tuple[str, bytes]:
    """A CT instance whose PatientName is `FORGED_NAME` and PatientID 60 000 characters of
    markup: each collected as the walker collects a value, up to 64 KiB."""
    dataset = ct_dataset(generate_uid(), generate_uid(), 1, rows=8, columns=8)
    dataset.SpecificCharacterSet = "ISO_IR 192"
    placeholder = "Z" * len(FORGED_NAME)
    dataset.PatientName = placeholder
    dataset.PatientID = "<>&" * 20_000
    encoded = DicomBytesIO()
    encoded.is_little_endian, encoded.is_implicit_VR = True, False
    write_dataset(encoded, dataset)
    return dataset.SOPInstanceUID, replaced(encoded.getvalue(), placeholder.encode(), FORGED_NAME)


def store_forged_instance(daemon) -> int:
    uid, data = forged_instance()
    peer = RawPeer(daemon)
    peer.send(PresentationDataValue(1, PDV_COMMAND | PDV_LAST, store_command(uid)))
    peer.send(PresentationDataValue(1, PDV_LAST, data))
    status = peer.response().status
    peer.release()
    return status


def forged_query(daemon) -> int:
    """A C-FIND whose identifier carries the same name and a 40 000-byte private value."""
    identifier = (
        element(0x00080005, "CS", b"ISO_IR 192")
        + element(0x00080052, "CS", b"STUDY")
        + element(0x00090010, "LO", b"ATTACKER")
        + element(0x00091000, "OB", b"</AuditMessage>\n" * 2500)
        + element(0x00100010, "PN", FORGED_NAME)
        + element(0x0020000D, "UI", b"")
    )
    request = associate_rq(daemon, [(STUDY_ROOT_FIND, [ExplicitVRLittleEndian])])
    peer = RawAssociation(daemon, request)
    peer.send_fragment(1, PDV_COMMAND | PDV_LAST, find_command(3))
    peer.send_fragment(1, PDV_LAST, identifier)
    final = None
    while final is None:
        for pdv in peer.receive().pdvs:
            if pdv.control & PDV_COMMAND:
                status = Command.decode(pdv.data).status
                final = status if status not in (0xFF00, 0xFF01) else None
    peer.release()
    return final


def test_what_a_peer_names_never_breaks_a_record_nor_forges_one(
    start_dicomd, tmp_path, udp_collector
):
    users = users_file(tmp_path)
    audit_file = tmp_path / "audit.log"
    daemon = start_dicomd(
        workers=1,  # one process: the records in the order the peers made them
        plugins=[{"plugin": "archive"}],
        authentication={"users_file": str(users)},
        audit={"file": str(audit_file), "syslog": f"udp://{LOCALHOST}:{udp_collector.port}"},
    )

    forged_ae_association(daemon)
    long_user = b"alice</UserID>\n<AuditMessage>\xff\xfe" + b"&" * 65_000
    assert not forged_login(daemon, long_user)
    assert store_forged_instance(daemon) in (0x0000, 0xB000, 0xB007, 0xB006)
    assert forged_query(daemon) == 0x0000
    daemon.stop()

    expected = [
        ("110100", "110120", "0"),
        ("110113", "110126", "4"),  # the AE title with markup in it: rejected
        ("110114", "110122", "4"),  # the long user's wrong passcode
        ("110113", "110126", "4"),
        ("110114", "110122", "0"),  # the forged instance
        ("110104", None, "0"),
        ("110114", "110123", "0"),
        ("110114", "110122", "0"),  # the forged query
        ("110112", None, "0"),
        ("110114", "110123", "0"),
        ("110100", "110121", "0"),
    ]
    lines = audit_file.read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(len(line) <= MOST_RECORD for line in lines)
    kept = records_in(audit_file)  # each line one record the schema accepts
    sent = udp_collector.wait_for(len(expected))
    assert summary(kept) == expected, [r.description for r in kept]
    assert summary(sent) == expected
    stored = kept[5]
    (patient,) = stored.objects[-1:]
    name = patient.find("ParticipantObjectName").text
    assert name.startswith("\ufffd]]></ParticipantObjectName>\ufffd<AuditMessage>")
    assert "\n" not in name and "\x85" not in name and "\u2028" not in name
    assert len(patient.get("ParticipantObjectID")) == 1024
    assert len(kept[2].description) <= 1024
    assert "Traceback" not in daemon.log_text()


class SilentCollector:
    """A syslog collector that accepts its connection and then never reads from it: with
    ``handshake``, once the TLS handshake is done; without, not even the handshake."""

    def __init__(self, handshake: bool, certificate: Path, private_key: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(certificate, private_key)
        self.handshake = handshake
        self.listener = socket.create_server((LOCALHOST, 0))
        self.port = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            if self.handshake:
                try:
                    connection = self.context.wrap_socket(connection, server_side=True)
                except (ssl.SSLError, OSError):
                    continue
            self.held.append(connection)

    def close(self) -> None:
        self.listener.close()
        for connection in self.held:
            connection.close()


@pytest.fixture
def collector_pki(tmp_path: Path):
    folder = tmp_path / "pki"
    folder.mkdir()
    authority = Authority(folder, "hospital")
    return authority, authority.issue("audit", server=True)


def find_again_and_again(daemon, count: int, blob: int) -> None:
    """``count`` C-FINDs on one association, each identifier carrying ``blob`` private bytes:
    each Query record some 4/3 of ``blob`` long."""
    identifier = (
        element(0x00080052, "CS", b"STUDY")
        + element(0x00090010, "LO", b"ATTACKER")
        + element(0x00091000, "OB", bytes(blob))
        + element(0x0020000D, "UI", b"")
    )
    request = associate_rq(daemon, [(STUDY_ROOT_FIND, [ExplicitVRLittleEndian])])
    peer = RawAssociation(daemon, request)
    for message_id in range(1, count + 1):
        peer.send_fragment(1, PDV_COMMAND | PDV_LAST, find_command(message_id & 0xFFFF))
        peer.send_fragment(1, PDV_LAST, identifier)
        final = False
        while not final:
            for pdv in peer.receive().pdvs:
                if pdv.control & PDV_COMMAND:
                    final = Command.decode(pdv.data).status not in (0xFF00, 0xFF01)
    peer.release()


def stop_and_time(daemon, deadline: float = 20.0) -> float:
    started = time.monotonic()
    daemon.process.terminate()
    daemon.process.wait(deadline)
    return time.monotonic() - started


@pytest.mark.parametrize("handshake", [True, False], ids=["never-reads", "never-handshakes"])
def test_a_collector_that_takes_nothing_costs_bounded_memory_and_never_holds_the_node(
    start_dicomd, collector_pki, handshake
):
    authority, issued = collector_pki
    collector = SilentCollector(handshake, issued.certificate, issued.private_key)
    try:
        daemon = start_dicomd(
            workers=1,
            plugins=[{"plugin": "archive"}],
            audit={
                "syslog": f"tls://{LOCALHOST}:{collector.port}",
                "ca_certificates": str(authority.path),
            },
        )
        find_again_and_again(daemon, 20, 16_000)  # the node's own memory, warmed up
        daemon.reset_peak_memory()
        before = status_kib(daemon.pid, "VmRSS") / 1024
        with EchoesDuring(daemon) as echoes:
            find_again_and_again(daemon, 2500, 16_000)  # 2 500 records of 22 KB: 55 MB
        grown = daemon.peak_memory_mib() - before
        took = stop_and_time(daemon)
    finally:
        collector.close()

    assert grown < 30, f"VmHWM grew by {grown:.0f} MiB"
    assert echoes.results and not echoes.failures()
    assert max(seconds for seconds, _ in echoes.results) < 5
    assert daemon.process.returncode in (0, -15) and took < 12, took  # twistd ends by its signal
    log = daemon.log_text()
    assert len(log_lines_with(log, "audit records", "are being dropped")) == 1, log[-3000:]
    (counted,) = log_lines_with(log, "audit records to tls://", "were dropped")
    assert int(counted.split("] ")[1].split()[0]) > 2000
    assert "Traceback" not in log


def implicit(tag: int, value: bytes) -> bytes:
    """One implicit VR little endian element: a UI value of more than 64 KiB needs its
    4-byte length."""
    return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(value)) + value


def test_a_move_naming_80_000_studies_is_recorded_in_bounded_work(start_dicomd, receiver, tmp_path):
    """One identifier of some 900 KB names 80 000 studies: the record names 256 of them and
    says how many more, in a few records, and the reactor does not stall over them."""
    audit_file = tmp_path / "audit.log"
    daemon = start_dicomd(
        workers=1,
        plugins=[{"plugin": "archive"}],
        destinations={"RECEIVER": {"host": LOCALHOST, "port": receiver.port}},
        audit={"file": str(audit_file)},
    )
    wait_for_lag_monitor(daemon)
    studies = "\\".join(f"1.2.{number}" for number in range(80_000)).encode()
    identifier = implicit(0x00080052, b"STUDY ") + implicit(0x0020000D, studies + b"\0")
    request = associate_rq(daemon, [(STUDY_ROOT_MOVE, [ImplicitVRLittleEndian])])
    peer = RawAssociation(daemon, request)
    peer.send_fragment(1, PDV_COMMAND | PDV_LAST, move_command(5, "RECEIVER"))
    peer.send_stream(1, 0, [identifier], 200_000)
    final = None
    while final is None:
        for pdv in peer.receive().pdvs:
            if pdv.control & PDV_COMMAND:
                status = Command.decode(pdv.data).status
                final = status if status != 0xFF00 else None
    peer.release()
    daemon.stop()

    moves = [record for record in records_in(audit_file) if record.event_id == "110104"]
    assert sum(len(record.object_ids("110180")) for record in moves) == 256
    assert all(record.description.endswith("; 79744 more studies asked for are not named")
               for record in moves)  # fmt: skip
    assert len(moves) <= 4
    assert worst_stall_ms(daemon) < 100, daemon.log_text()[-2000:]
    assert "Traceback" not in daemon.log_text()


def test_a_collector_whose_certificate_is_not_trusted_is_one_line_and_retried_later_each_time(
    start_dicomd, collector_pki, tmp_path
):
    authority, _ = collector_pki
    impostor = Authority(tmp_path, "impostor").issue("audit", server=True)
    collector = TLSCollector(impostor.certificate, impostor.private_key, authority.path)
    try:
        daemon = start_dicomd(
            workers=1,
            audit={
                "syslog": f"tls://{LOCALHOST}:{collector.port}",
                "ca_certificates": str(authority.path),
            },
        )
        for _ in range(3):
            assert run_echoscu(daemon).returncode == 0
        time.sleep(8)
        daemon.stop()
    finally:
        collector.close()
    assert not collector.messages
    log = daemon.log_text()
    (refused,) = log_lines_with(log, "audit collector", "no TLS connection")
    assert "certificate verify failed" in refused
    assert len(log_lines_with(log, "Scheduling retry")) <= 4  # after 2, 4 and 8 s
    assert not log_lines_with(log, "Starting factory <dicomd.audit")
    (counted,) = log_lines_with(log, "audit records to tls://", "were dropped")
    assert counted.split("] ")[1].startswith("8 audit records")  # start, 3 logins and logouts, stop
    assert "Traceback" not in log


def refused_again_and_again(daemon, count: int) -> None:
    """``count`` associations asking for an AE title the node is not: each refused, each a
    Security Alert."""
    request = associate_rq(daemon, [(VERIFICATION, ["1.2.840.10008.1.2"])], "FLOODER")
    wrong = replaced(request, daemon.ae_title.encode(), b"NOTME"[: len(daemon.ae_title)].ljust(6))
    for _ in range(count):
        with socket.create_connection((LOCALHOST, daemon.port), timeout=10) as peer:
            peer.sendall(wrong)
            peer.recv(64)


def test_a_flood_of_refused_associations_with_the_collector_down_keeps_the_node_answering(
    start_dicomd, tmp_path
):
    audit_file = tmp_path / "audit.log"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed:
        closed.bind((LOCALHOST, 0))
        nobody = closed.getsockname()[1]  # nobody listens there once this is closed
    daemon = start_dicomd(
        workers=1,
        audit={"file": str(audit_file), "syslog": f"udp://{LOCALHOST}:{nobody}"},
    )
    wait_for_lag_monitor(daemon)
    flooders = [
        threading.Thread(target=refused_again_and_again, args=(daemon, 500)) for _ in range(6)
    ]
    with EchoesDuring(daemon) as echoes:
        for flooder in flooders:
            flooder.start()
        for flooder in flooders:
            flooder.join(120)
    daemon.stop()

    assert echoes.results and not echoes.failures()
    assert max(seconds for seconds, _ in echoes.results) < 5
    assert worst_stall_ms(daemon) < 500, stalls_ms(daemon.log_text())
    events = summary(records_in(audit_file))
    assert events.count(("110113", "110126", "4")) == 3000
    assert "Traceback" not in daemon.log_text()


def test_a_patient_name_too_long_to_collect_does_not_hide_the_patient(start_dicomd, tmp_path):
    """A 70 KB Patient's Name is left in the file by the walker (the archive reads it from
    there); the record of the store still names the patient's ID and the study."""
    audit_file = tmp_path / "audit.log"
    daemon = start_dicomd(
        workers=1, plugins=[{"plugin": "archive"}], audit={"file": str(audit_file)}
    )
    dataset = ct_dataset(generate_uid(), generate_uid(), 1, rows=8, columns=8)
    dataset.PatientID = "VICTIM"
    dataset.PatientName = "Doe^" + "J" * 70_000
    encoded = DicomBytesIO()
    encoded.is_little_endian, encoded.is_implicit_VR = True, False
    write_dataset(encoded, dataset)
    peer = RawPeer(daemon)
    command = store_command(dataset.SOPInstanceUID)
    peer.send(PresentationDataValue(1, PDV_COMMAND | PDV_LAST, command))
    peer.send(PresentationDataValue(1, PDV_LAST, encoded.getvalue()))
    assert peer.response().status == 0x0000
    peer.release()
    daemon.stop()
    (stored,) = [record for record in records_in(audit_file) if record.event_id == "110104"]
    assert stored.object_ids("2") == ["VICTIM"]
    assert list(stored.instance_counts()) == [dataset.StudyInstanceUID]

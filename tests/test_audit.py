"""The audit trail: each record is a DICOM audit message the PS3.15 schema accepts, the syslog
framing is RFC 5424/5425's, and a session on an in-memory node leaves one record per event."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid
from twisted.internet.task import Clock
from zope.interface import implementer

from dicomd import uids
from dicomd.app import audit_trail
from dicomd.audit.events import (
    QUERY_KEPT,
    LocalNode,
    Patient,
    Peer,
    application_activity,
    instances_transferred,
    query,
    security_alert,
    user_authentication,
)
from dicomd.audit.messages import DESTINATION, SOURCE, AuditSource, to_xml
from dicomd.audit.syslog import SyslogHeader, octet_counted
from dicomd.audit.trail import AuditFile, AuditTrail
from dicomd.client import AssociationRejected
from dicomd.config import AuthorizationRule, ConfigError, parse_config
from dicomd.dimse.datasets import encode_dataset
from dicomd.dimse.work import InlineWorker
from dicomd.interfaces import FindQuery, IFindHandler, IStoreHandler, ReceivedInstance
from dicomd.testing import MemoryNode
from tests.support.audit import parse_record, records_in, summary
from tests.support.datasets import ct_dataset

NODE = LocalNode(4242, "DICOMD", "pacs.example.org")
PEER = Peer("CT01", "10.0.0.7")
SOURCE_ID = AuditSource("DICOMD", "General Hospital")
WHEN = 1_790_000_000.25


def record_of(message):
    return parse_record(to_xml(message, SOURCE_ID))


def test_application_activity_names_the_process_and_its_ae_title() -> None:
    record = record_of(application_activity(NODE, WHEN, started=True))
    assert (record.event_id, record.event_type, record.outcome) == ("110100", "110120", "0")
    (node,) = record.participants
    assert (node.user_id, node.alternative, node.role) == ("4242", "AETITLES=DICOMD", "110150")
    assert record.source_id == "DICOMD"


def test_a_refused_login_is_a_minor_failure_with_its_reason() -> None:
    record = record_of(
        user_authentication(NODE, PEER, WHEN, login=True, refusal="wrong passcode for alice")
    )
    assert (record.event_id, record.event_type, record.outcome) == ("110114", "110122", "4")
    assert record.description == "wrong passcode for alice"
    peer = record.participants[0]
    assert (peer.user_id, peer.requestor, peer.address) == ("CT01", True, "10.0.0.7")


def test_a_security_alert_describes_its_subject_node() -> None:
    record = record_of(
        security_alert(NODE, PEER, WHEN, description="CT01 may not store", restricted_function=True)
    )
    assert (record.event_id, record.event_type, record.outcome) == ("110113", "110132", "4")
    assert record.object_ids("110182") == ["10.0.0.7"]
    (detail,) = record.objects[0].iter("ParticipantObjectDetail")
    assert detail.get("type") == "Alert Description"


def test_a_query_carries_the_identifier_as_sent_with_its_transfer_syntax() -> None:
    identifier = encode_dataset(Dataset(), ExplicitVRLittleEndian) + b"\x10\x00\x10\x00PN\x00\x00"
    record = record_of(
        query(
            NODE,
            PEER,
            WHEN,
            sop_class_uid=uids.STUDY_ROOT_FIND,
            identifier=identifier,
            transfer_syntax=ExplicitVRLittleEndian,
            succeeded=True,
        )
    )
    assert record.query() == identifier
    assert record.object_ids("110181") == [uids.STUDY_ROOT_FIND]


def test_a_query_longer_than_a_record_holds_is_cut_and_says_so() -> None:
    record = record_of(
        query(
            NODE,
            PEER,
            WHEN,
            sop_class_uid=uids.STUDY_ROOT_FIND,
            identifier=b"\x00" * (QUERY_KEPT + 10),
            transfer_syntax=ExplicitVRLittleEndian,
            succeeded=True,
        )
    )
    assert len(record.query()) == QUERY_KEPT
    kinds = [d.get("type") for d in record.objects[0].iter("ParticipantObjectDetail")]
    assert kinds == ["TransferSyntax", "QueryTruncatedFrom"]


def test_instances_transferred_counts_instances_by_study_and_class() -> None:
    record = record_of(
        instances_transferred(
            PEER.participant(requestor=True, role=SOURCE),
            NODE.participant(role=DESTINATION),
            WHEN,
            studies={"1.2.3": {CTImageStorage: 2}, "1.2.4": {MRImageStorage: 1}},
            patient=Patient("P1", "Doe^Jane"),
            action="C",
            succeeded=True,
        )
    )
    assert record.instance_counts() == {
        "1.2.3": {CTImageStorage: 2},
        "1.2.4": {MRImageStorage: 1},
    }
    assert record.object_ids("2") == ["P1"]
    assert [p.role for p in record.participants] == ["110153", "110152"]


@given(
    st.text(max_size=40),
    st.text(max_size=40),
)
def test_whatever_a_peer_names_itself_the_record_stays_one_valid_line(user, patient) -> None:
    peer = Peer("CT01", "10.0.0.7", user or None)
    xml = to_xml(
        instances_transferred(
            peer.participant(requestor=True, role=SOURCE),
            NODE.participant(role=DESTINATION),
            WHEN,
            studies={"1.2.3": {}},
            patient=Patient(patient, patient or None),
            action="C",
            succeeded=True,
        ),
        SOURCE_ID,
    )
    assert b"\n" not in xml and b"\r" not in xml
    parse_record(xml)


def test_syslog_message_has_the_header_ps3_15_asks_for() -> None:
    message = SyslogHeader("pacs", 4242).message(b"<AuditMessage/>", WHEN)
    assert message == (
        b"<85>1 2026-09-21T14:13:20.250Z pacs dicomd 4242 DICOM+RFC3881 - "
        b"\xef\xbb\xbf<AuditMessage/>"
    )
    assert octet_counted(b"abc") == b"3 abc"


def test_the_audit_file_gets_records_in_order_one_a_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    sink = AuditFile(path, InlineWorker())
    for number in range(3):
        sink.write(b"<r%d/>" % number, WHEN)
    closed = sink.stop()
    assert closed.called
    assert path.read_bytes() == b"<r0/>\n<r1/>\n<r2/>\n"


def test_an_audit_file_that_cannot_be_opened_stops_the_start(tmp_path: Path) -> None:
    config = parse_config({"audit": {"file": str(tmp_path / "missing" / "audit.log")}})
    with pytest.raises(ConfigError, match=r"audit\.file: cannot append to .*audit\.log"):
        audit_trail(config, Clock())


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("syslog.example.org:514", "is not udp://host"),
        ("tcp://collector", "is not udp://host"),
        ("udp://collector:0", "is not a port number"),
        ("tls://bad host", "neither an IP address nor a host name"),
    ],
)
def test_a_collector_that_is_no_syslog_address_is_a_config_error(value, problem) -> None:
    with pytest.raises(ConfigError, match=problem):
        parse_config({"audit": {"syslog": value}})


def test_a_collector_port_defaults_to_its_transports() -> None:
    udp = parse_config({"audit": {"syslog": "udp://10.0.0.9"}}).audit.syslog
    tls = parse_config({"audit": {"syslog": "tls://audit.example.org:7514"}}).audit.syslog
    assert (udp.transport, udp.host, udp.port) == ("udp", "10.0.0.9", 514)
    assert (tls.transport, tls.host, tls.port) == ("tls", "audit.example.org", 7514)


# A session on an in-memory node


@implementer(IStoreHandler)
class Accept:
    def store(self, instance: ReceivedInstance) -> int:
        return 0


@implementer(IFindHandler)
class OneMatch:
    find_models = (uids.STUDY_ROOT_FIND,)

    def find(self, query: FindQuery) -> list[Dataset]:
        match = Dataset()
        match.StudyInstanceUID = "1.2.3"
        return [match]


def audited_node(tmp_path: Path) -> tuple[MemoryNode, AuditTrail, Path]:
    path = tmp_path / "audit.log"
    config = parse_config({"audit": {"file": str(path)}, "storage": {"path": str(tmp_path)}})
    config = dataclasses.replace(
        config,
        authorization=(
            AuthorizationRule(("CT01",), ("echo", "store", "find")),
            AuthorizationRule(("WS01",), ("echo",)),
        ),
    )
    clock = Clock()
    trail = audit_trail(config, clock)
    node = MemoryNode([Accept(), OneMatch()], config=config, clock=clock, audit=trail)
    trail.startService()
    return node, trail, path


def test_a_session_leaves_one_record_per_event(tmp_path: Path) -> None:
    node, trail, path = audited_node(tmp_path)
    study = generate_uid()
    first, second = ct_dataset(study, generate_uid(), 1), ct_dataset(study, generate_uid(), 2)
    other = ct_dataset(generate_uid(), generate_uid(), 3)
    other.PatientID, other.PatientName = "P2", "Other^Patient"
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = ""

    scanner = node.associate([CTImageStorage, uids.STUDY_ROOT_FIND], calling_ae_title="CT01")
    for dataset in (first, second, other):
        assert node.result(scanner.store(dataset)).status == 0
    assert len(node.result(scanner.find(uids.STUDY_ROOT_FIND, identifier)).matches) == 1
    node.result(scanner.release())
    workstation = node.associate([CTImageStorage], calling_ae_title="WS01")
    assert node.result(workstation.store(first)).status == uids.Status.NOT_AUTHORIZED
    node.result(workstation.release())
    with pytest.raises(AssociationRejected):
        node.associate(calling_ae_title="NOBODY")
    trail.stopService()

    records = records_in(path)
    assert summary(records) == [
        ("110100", "110120", "0"),  # application start
        ("110114", "110122", "0"),  # CT01 logs in
        ("110112", None, "0"),  # and queries
        ("110104", None, "0"),  # STORE1's two instances, written as CT01 leaves
        ("110104", None, "0"),  # P2's one
        ("110114", "110123", "0"),  # CT01 logs out
        ("110114", "110122", "0"),  # WS01 logs in
        ("110113", "110132", "4"),  # and may not store
        ("110114", "110123", "0"),  # WS01 logs out
        ("110113", "110126", "4"),  # NOBODY is refused
        ("110100", "110121", "0"),  # application stop
    ]
    stored = {r.object_ids("2")[0]: r for r in records if r.event_id == "110104"}
    assert stored["STORE1"].instance_counts() == {study: {CTImageStorage: 2}}
    assert stored["P2"].instance_counts() == {other.StudyInstanceUID: {CTImageStorage: 1}}
    assert stored["STORE1"].action == "C"
    source, destination = stored["STORE1"].participants
    assert (source.user_id, source.role, destination.role) == ("CT01", "110153", "110152")
    assert records[2].query() == encode_dataset(identifier, ExplicitVRLittleEndian)
    assert "WS01 may not store" in records[7].description
    refused = records[9]
    assert refused.description == "no authorization rule names this peer"
    assert [p.user_id for p in refused.participants] == [str(os.getpid()), "NOBODY"]

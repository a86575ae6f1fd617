"""The audit trail: each record is a DICOM audit message the PS3.15 schema accepts, the syslog
framing is RFC 5424/5425's, and a session on an in-memory node leaves one record per event."""

from __future__ import annotations

import dataclasses
import os
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from zope.interface import implementer

from dicomd import uids
from dicomd.app import audit_trail
from dicomd.audit.backlog import MOST_WAITING
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
from dicomd.audit.messages import (
    DESTINATION,
    MOST_CHARACTERS,
    MOST_RECORD,
    SOURCE,
    AuditSource,
    to_xml,
)
from dicomd.audit.syslog import UTF8_BOM, SyslogHeader, UDPSyslog, octet_counted
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


ANY_CHARACTER = st.characters(codec=None, categories=None)
"""Every code point, surrogates, U+FFFE, NEL and U+2028 included: what a peer's bytes can
decode to (latin-1 AE titles, any Specific Character Set, pydicom's replacement)."""
PEER_TEXT = st.one_of(
    st.text(ANY_CHARACTER, max_size=40),
    st.sampled_from(["]]>", "<AuditMessage>", "&amp;", "\ufffe", "\ud800", "a\x85b", "\u2028"]),
    st.builds(
        lambda s, n: s * n, st.text(ANY_CHARACTER, min_size=1, max_size=3), st.integers(1, 5000)
    ),
)


def one_line_records(message) -> list[bytes]:
    """What the trail writes for ``message``: each record one line of UTF-8 XML, as any
    reader splits lines (str.splitlines ends a line at NEL and U+2028 too), within the size
    a collector takes, and valid against the schema."""
    path_free = AuditTrail(NODE, SOURCE_ID, [], lambda: WHEN)
    records = path_free._serialized(message)
    for xml in records:
        assert len(xml.decode("utf-8").splitlines()) == 1, xml[:200]
        assert len(xml) <= MOST_RECORD
        parse_record(xml)
    return records


@given(ae_title=PEER_TEXT, user=PEER_TEXT, patient=PEER_TEXT, study=PEER_TEXT, why=PEER_TEXT)
def test_whatever_a_peer_names_itself_each_record_stays_one_valid_line(
    ae_title, user, patient, study, why
) -> None:
    peer = Peer(ae_title, "10.0.0.7", user or None)
    for message in (
        user_authentication(NODE, peer, WHEN, login=True, refusal=why or None),
        security_alert(NODE, peer, WHEN, description=why),
        instances_transferred(
            peer.participant(requestor=True, role=SOURCE),
            NODE.participant(role=DESTINATION),
            WHEN,
            studies={study: {study: 1}},
            patient=Patient(patient, patient or None),
            action="C",
            succeeded=True,
        ),
    ):
        assert len(one_line_records(message)) == 1


def test_a_value_longer_than_a_record_holds_is_cut_and_says_so() -> None:
    (xml,) = one_line_records(
        security_alert(NODE, Peer("CT01", "10.0.0.7"), WHEN, description="x" * 70_000)
    )
    description = parse_record(xml).description
    assert description == "x" * (MOST_CHARACTERS - 1) + "\u2026"


def test_a_transfer_of_more_studies_than_one_record_holds_is_written_as_several() -> None:
    studies = {f"1.2.{number}": {CTImageStorage: 2, MRImageStorage: 1} for number in range(2000)}
    message = instances_transferred(
        PEER.participant(requestor=True, role=SOURCE),
        NODE.participant(role=DESTINATION),
        WHEN,
        studies=studies,
        patient=Patient("P1", "Doe^Jane"),
        action="C",
        succeeded=True,
    )
    records = [parse_record(xml) for xml in one_line_records(message)]
    assert len(records) > 1
    assert all(record.object_ids("2") == ["P1"] for record in records)
    counted: dict[str, dict[str, int]] = {}
    for record in records:
        counted.update(record.instance_counts())
    assert counted == studies


def test_one_study_of_more_sop_classes_than_one_record_holds_is_written_as_several() -> None:
    classes = {f"1.2.840.10008.5.1.4.1.1.{number}." + "9" * 40: 1 for number in range(400)}
    message = instances_transferred(
        PEER.participant(requestor=True, role=SOURCE),
        NODE.participant(role=DESTINATION),
        WHEN,
        studies={"1.2.3": classes},
        patient=None,
        action="C",
        succeeded=True,
    )
    records = [parse_record(xml) for xml in one_line_records(message)]
    assert len(records) > 1
    assert sum(len(record.instance_counts()["1.2.3"]) for record in records) == 400


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


class StalledDisk:
    """A worker whose appends finish only when the test says so: a disk that stalls."""

    def __init__(self) -> None:
        self.appends: list[tuple[defer.Deferred[None], bytes]] = []

    def run(self, function, batch: bytes) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        self.appends.append((d, batch))
        return d

    def finish(self, failure: Exception | None = None) -> bytes:
        d, batch = self.appends.pop(0)
        if failure is None:
            d.callback(None)
        else:
            d.errback(failure)
        return batch


def test_a_stalled_disk_holds_a_bounded_backlog_and_the_log_counts_what_was_dropped(
    tmp_path: Path,
) -> None:
    disk = StalledDisk()
    sink = AuditFile(tmp_path / "audit.log", disk)
    record = b"<r>" + b"x" * 1000 + b"</r>"
    with capturedLogs() as logged:
        for _ in range(3 * MOST_WAITING // len(record)):
            sink.write(record, WHEN)
        assert sink.backlog.size <= MOST_WAITING
        disk.finish()  # the first record; then the backlog goes in one batch
        batch = disk.finish()
    assert len(batch) <= MOST_WAITING
    assert not disk.appends
    lines = [formatEvent(event) for event in logged]
    assert len(lines) == 2, lines
    assert "are being dropped" in lines[0]
    dropped = 3 * MOST_WAITING // len(record) - 1 - batch.count(b"\n")
    assert lines[1] == f"{dropped} audit records to {tmp_path / 'audit.log'} were dropped"


def test_a_disk_that_fails_costs_one_line_until_it_writes_again(tmp_path: Path) -> None:
    disk = StalledDisk()
    sink = AuditFile(tmp_path / "audit.log", disk)
    with capturedLogs() as logged:
        for _ in range(100):
            sink.write(b"<r/>", WHEN)
            disk.finish(OSError(28, "No space left on device"))
        sink.write(b"<r/>", WHEN)
        disk.finish()
    lines = [formatEvent(event) for event in logged]
    assert len(lines) == 2, lines
    assert "No space left on device" in lines[0]
    assert lines[1].startswith("100 audit records")


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


def test_an_association_open_when_the_node_stops_logs_out_before_the_stop(
    tmp_path: Path,
) -> None:
    node, trail, path = audited_node(tmp_path)
    scanner = node.associate([CTImageStorage], calling_ae_title="CT01")
    assert node.result(scanner.store(ct_dataset(generate_uid(), generate_uid(), 1))).status == 0
    trail.stopService()
    node.result(scanner.release())  # the connection ends after the trail stopped
    assert summary(records_in(path)) == [
        ("110100", "110120", "0"),
        ("110114", "110122", "0"),
        ("110104", None, "0"),  # what it stored, as at its end
        ("110114", "110123", "0"),
        ("110100", "110121", "0"),
    ]


class FlakyResolver(Clock):
    """A reactor whose resolver fails ``failures`` times, then answers; its UDP port keeps
    what is sent."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def resolve(self, name: str) -> defer.Deferred[str]:
        if self.failures:
            self.failures -= 1
            return defer.fail(OSError(f"{name}: temporary failure in name resolution"))
        return defer.succeed("10.0.0.9")

    def listenUDP(self, port: int, protocol):
        protocol.transport = SimpleNamespace(write=lambda data, to: self.sent.append((data, to)))
        return SimpleNamespace(stopListening=lambda: None)


def test_a_collector_whose_name_does_not_resolve_yet_is_asked_for_again_later() -> None:
    reactor = FlakyResolver(failures=3)
    sink = UDPSyslog(reactor, "audit.example.org", 514, SyslogHeader("pacs", 4242))
    with capturedLogs() as logged:
        sink.start()
        sink.write(b"<r/>", WHEN)
        reactor.advance(1.0)
        reactor.advance(2.0)
        assert not reactor.sent
        reactor.advance(4.0)  # the fourth question is answered
        sink.write(b"<s/>", WHEN)
    assert [(data.split(UTF8_BOM)[1], to) for data, to in reactor.sent] == [
        (b"<r/>", ("10.0.0.9", 514)),
        (b"<s/>", ("10.0.0.9", 514)),
    ]
    assert len(logged) == 1 and "cannot be resolved" in formatEvent(logged[0])
    sink.stop()
    assert not reactor.getDelayedCalls()


def held_while_storing(node: MemoryNode, instances: list[Dataset]) -> int:
    """The bytes allocated, and still held, while one association stores ``instances``."""
    scanner = node.associate([CTImageStorage], calling_ae_title="CT01")
    tracemalloc.start()
    try:
        for dataset in instances:
            assert node.result(scanner.store(dataset)).status == 0
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    node.result(scanner.release())
    return held


def test_what_an_open_association_keeps_for_its_records_is_cut_short(tmp_path: Path) -> None:
    """Until its records are written, an association keeps the patient and study of up to
    256 groups of instances: a peer's 60 000-character values are kept cut, as the records
    will hold them (100 instances kept 12 MB of them; 256 would keep 30, in each association)."""
    instances = []
    for number in range(100):
        dataset = ct_dataset(generate_uid(), generate_uid(), 1)
        dataset.PatientID = f"{number:05}" + "I" * 60_000
        dataset.PatientName = f"{number:05}" + "N" * 60_000
        instances.append(dataset)
    audited, _, path = audited_node(tmp_path)
    unaudited = MemoryNode([Accept()], config=audited.config, clock=Clock())
    # first without audit: the client keeps what it encodes (pydicom's PersonName does)
    baseline = held_while_storing(unaudited, instances)
    assert held_while_storing(audited, instances) - baseline < 1024 * 1024
    stored = [record for record in records_in(path) if record.event_id == "110104"]
    assert len(stored) == 100
    assert all(len(record.object_ids("2")[0]) == MOST_CHARACTERS for record in stored)

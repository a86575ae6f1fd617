"""The audit trail of a real daemon: a scripted session of dcmtk and pynetdicom peers leaves
one record per event at a syslog collector (UDP, and TLS with the node's certificate) and in
the local file, each a DICOM audit message the PS3.15 schema accepts."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE
from pynetdicom.pdu_primitives import UserIdentityNegotiation
from pynetdicom.sop_class import Verification

from tests.support.audit import records_in, summary
from tests.support.certificates import Authority
from tests.support.daemons import users_file
from tests.support.dcmtk import run_dcmtk, run_echoscu
from tests.support.processes import LOCALHOST
from tests.support.syslog import TLSCollector, UDPCollector

CT = Path(get_testdata_file("CT_small.dcm"))
CT_STUDY = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"
CT_PATIENT = "1CT1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture
def udp_collector():
    collector = UDPCollector()
    yield collector
    collector.close()


def as_peer(daemon, tool: str, calling: str, *options: str, files: tuple[str, ...] = ()):
    return run_dcmtk(
        tool, "-aet", calling, "-aec", daemon.ae_title, *options, LOCALHOST, str(daemon.port),
        *files,
    )  # fmt: skip


def node_processes(daemon) -> list[int]:
    """The daemon's process and, with workers, theirs: each names itself by its PID."""
    children = Path(f"/proc/{daemon.pid}/task/{daemon.pid}/children").read_text().split()
    return [daemon.pid, *map(int, children)]


def login_as(daemon, user: bytes, passcode: bytes) -> bool:
    ae = AE(ae_title="PACSUSER")
    ae.add_requested_context(Verification)
    item = UserIdentityNegotiation()
    item.user_identity_type = 2
    item.primary_field, item.secondary_field = user, passcode
    association = ae.associate(LOCALHOST, daemon.port, ae_title=daemon.ae_title, ext_neg=[item])
    accepted = association.is_established
    if accepted:
        association.release()
    return accepted


@pytest.mark.parametrize("workers", [1, 2])
def test_a_scripted_session_leaves_one_record_per_event(
    start_dicomd, tmp_path, udp_collector, receiver, workers
):
    users = users_file(tmp_path)
    audit_file = tmp_path / "audit.log"
    daemon = start_dicomd(
        workers=workers,
        plugins=[{"plugin": "archive"}],
        destinations={"RECEIVER": {"host": LOCALHOST, "port": receiver.port}},
        authentication={"users_file": str(users)},
        authorization=[
            {"peers": ["CT01"], "may": ["echo", "store", "find", "move", "get"]},
            {"peers": ["FINDER", "PACSUSER"], "may": ["echo", "find"]},
        ],
        audit={
            "file": str(audit_file),
            "syslog": f"udp://{LOCALHOST}:{udp_collector.port}",
            "enterprise_site": "General Hospital",
        },
    )

    got = tmp_path / "got"
    got.mkdir()
    steps = [
        as_peer(daemon, "echoscu", "CT01"),
        as_peer(daemon, "storescu", "CT01", files=(str(CT),)),
        as_peer(daemon, "findscu", "CT01", "-S", "-k", "QueryRetrieveLevel=STUDY",
                "-k", "StudyInstanceUID", "-k", "PatientID"),
        as_peer(daemon, "movescu", "CT01", "-S", "-aem", "RECEIVER",
                "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={CT_STUDY}"),
        as_peer(daemon, "getscu", "CT01", "-S", "-od", str(got),
                "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={CT_STUDY}"),
    ]  # fmt: skip
    for step in steps:
        assert step.returncode == 0, step.stdout + step.stderr + receiver.log_text()
    refused_store = as_peer(daemon, "storescu", "FINDER", "-v", files=(str(CT),))
    assert "Status: 0x124" in refused_store.stderr
    assert as_peer(daemon, "echoscu", "NOBODY").returncode != 0
    assert not login_as(daemon, b"alice", b"wrong")
    assert login_as(daemon, b"alice", b"right")
    processes = {str(pid) for pid in node_processes(daemon)}
    daemon.stop()

    login, logout = ("110114", "110122", "0"), ("110114", "110123", "0")
    expected = [
        ("110100", "110120", "0"),  # the node starts
        login, logout,  # CT01 echoes
        login, ("110104", None, "0"), logout,  # CT01 stores
        login, ("110112", None, "0"), logout,  # CT01 queries
        login, ("110104", None, "0"), logout,  # CT01 moves to RECEIVER
        login, ("110104", None, "0"), logout,  # CT01 gets it back
        login, ("110113", "110132", "4"), logout,  # FINDER may not store
        ("110113", "110126", "4"),  # NOBODY is named by no rule
        ("110114", "110122", "4"), ("110113", "110126", "4"),  # alice's wrong passcode
        login, logout,  # alice's right one
        ("110100", "110121", "0"),  # the node stops
    ]  # fmt: skip
    sent = udp_collector.wait_for(len(expected))
    kept = records_in(audit_file)
    assert summary(sent) == expected
    # Workers append to the file each from its own thread: the same records, maybe reordered.
    assert sorted(summary(kept), key=str) == sorted(expected, key=str)

    stored, moved = sent[4], sent[10]
    assert stored.action == "C" and moved.action == "R"
    assert stored.instance_counts() == {CT_STUDY: {CT_IMAGE_STORAGE: 1}}
    assert stored.object_ids("2") == [CT_PATIENT]
    assert [(p.user_id, p.role) for p in stored.participants] == [
        ("CT01", "110153"),
        (stored.participants[1].user_id, "110152"),
    ]
    assert stored.participants[1].user_id in processes
    assert [(p.user_id, p.role, p.requestor) for p in moved.participants] == [
        (moved.participants[0].user_id, "110153", False),
        ("RECEIVER", "110152", False),
        ("CT01", None, True),
    ]
    assert moved.object_ids("110180") == [CT_STUDY]
    assert moved.description == "1 completed, 0 warning, 0 failed"
    assert b"1CT1" not in sent[7].query()  # the identifier as sent: PatientID asked, empty
    got_back = sent[13]
    assert [(p.user_id, p.role, p.requestor) for p in got_back.participants] == [
        (got_back.participants[0].user_id, "110153", False),
        ("CT01", "110152", True),
    ]
    assert got_back.description == "1 completed, 0 warning, 0 failed"
    assert sent[16].description == "FINDER may not store"
    assert "alice" in sent[19].description
    assert sent[21].participants[0].user_id == "alice"  # the user, not the AE title
    assert all(record.source_id == "DICOMD" for record in sent)
    assert "Traceback" not in daemon.log_text()


@pytest.fixture
def pki(tmp_path: Path):
    folder = tmp_path / "pki"
    folder.mkdir()
    ca = Authority(folder, "hospital")
    return {"ca": ca, "node": ca.issue("dicomd", server=True), "modality": ca.issue("CT01"),
            "collector": ca.issue("audit", server=True)}  # fmt: skip


def test_records_reach_a_tls_collector_with_the_nodes_certificate(start_dicomd, pki):
    collector = TLSCollector(pki["collector"].certificate, pki["collector"].private_key,
                             pki["ca"].path)  # fmt: skip
    try:
        daemon = start_dicomd(
            workers=1,  # one process: one TLS connection, its records in order
            tls={
                "certificate": str(pki["node"].certificate),
                "private_key": str(pki["node"].private_key),
                "ca_certificates": str(pki["ca"].path),
                "client_certificates": "required",
            },
            audit={"syslog": f"tls://{LOCALHOST}:{collector.port}",
                   "ca_certificates": str(pki["ca"].path)},
        )  # fmt: skip
        trust = ("+cf", str(pki["ca"].path))
        modality = pki["modality"]
        echoed = run_echoscu(
            daemon, "+tls", str(modality.private_key), str(modality.certificate), *trust
        )
        assert echoed.returncode == 0, echoed.stdout + echoed.stderr
        assert run_echoscu(daemon, "+tla", *trust).returncode != 0
        daemon.wait_for_log(lambda log: "TLS handshake" in log)
        daemon.stop()

        expected = [
            ("110100", "110120", "0"),
            ("110114", "110122", "0"),
            ("110114", "110123", "0"),
            ("110113", "110126", "4"),  # the client without a certificate
            ("110100", "110121", "0"),
        ]
        records = collector.wait_for(len(expected))
        assert summary(records) == expected
        assert "TLS handshake: peer did not return a certificate" in records[3].description
        assert records[3].object_ids("110182") == [LOCALHOST]
        subject = dict(field[0] for field in collector.client_subjects[0])
        assert subject["commonName"] == "dicomd"
    finally:
        collector.close()

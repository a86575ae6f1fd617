"""DICOM TLS on the listen endpoint, with client certificates: dcmtk and pynetdicom as peers.

Each test makes its own CA, a server certificate for 127.0.0.1 and client
certificates.  A site validator writes down the certificate each association
presents (its subject, or "none"), so the tests see what validators see.
"""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from dicomd.part10 import read_header
from tests.support.certificates import Authority
from tests.support.daemons import DEFAULT_CONFIG, deep_merge, run_dicomd, stderr_lines, write_config
from tests.support.dcmtk import dcmtk_peer, run_echoscu
from tests.support.processes import LOCALHOST

CT = Path(get_testdata_file("CT_small.dcm"))
CT_STUDY = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"

SITE_VALIDATOR = '''
"""Writes down, one JSON line each, the certificate every association presents."""

import json

from zope.interface import implementer

from dicomd.interfaces import ACCEPT, IAssociationValidator


@implementer(IAssociationValidator)
class Certificates:
    def __init__(self, seen):
        self.seen = seen

    def validate(self, request):
        certificate = request.peer_certificate
        with open(self.seen, "a") as file:
            file.write(json.dumps(None if certificate is None else {
                "subject": certificate.subject,
                "names": list(certificate.subject_alternative_names),
                "fingerprint": certificate.sha256_fingerprint,
            }) + "\\n")
        return ACCEPT
'''


@pytest.fixture
def pki(tmp_path: Path):
    folder = tmp_path / "pki"
    folder.mkdir()
    ca = Authority(folder, "hospital")
    return {
        "ca": ca,
        "server": ca.issue("dicomd", server=True),
        "modality": ca.issue("CT01"),
        "stranger": Authority(folder, "elsewhere").issue("CT99"),
    }


def start_tls_daemon(start_dicomd, tmp_path: Path, pki, mode: str):
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "site_certificates.py").write_text(SITE_VALIDATOR)
    seen = tmp_path / f"seen-{mode}.jsonl"
    daemon = start_dicomd(
        plugins=[{"plugin": "site_certificates.Certificates", "options": {"seen": str(seen)}}],
        pythonpath=[site],
        tls={
            "certificate": str(pki["server"].certificate),
            "private_key": str(pki["server"].private_key),
            "ca_certificates": str(pki["ca"].path),
            "client_certificates": mode,
        },
    )
    return daemon, seen


def seen_certificates(seen: Path) -> list[dict | None]:
    if not seen.exists():
        return []
    return [json.loads(line) for line in seen.read_text().splitlines()]


def echo_with(daemon, pki, client: str | None):
    """dcmtk echoscu over TLS, with a client's certificate or anonymous (+tla)."""
    trust = ["+cf", str(pki["ca"].path)]
    if client is None:
        return run_echoscu(daemon, "+tla", *trust)
    issued = pki[client]
    return run_echoscu(daemon, "+tls", str(issued.private_key), str(issued.certificate), *trust)


def test_a_client_certificate_signed_by_the_ca_passes_and_its_subject_reaches_validators(
    start_dicomd, tmp_path, pki
):
    daemon, seen = start_tls_daemon(start_dicomd, tmp_path, pki, "required")

    echoed = echo_with(daemon, pki, "modality")

    assert echoed.returncode == 0, echoed.stdout + echoed.stderr
    assert seen_certificates(seen) == [
        {
            "subject": "CN=CT01,O=dicomd tests",
            "names": ["ct01.example"],
            "fingerprint": pki["modality"].sha256_fingerprint,
        }
    ]
    assert "Traceback" not in daemon.log_text()


@pytest.mark.parametrize(
    ("client", "reason"),
    [(None, "peer did not return a certificate"), ("stranger", "certificate verify failed")],
    ids=["no certificate", "another CA"],
)
def test_required_refuses_a_client_without_a_certificate_from_the_ca(
    start_dicomd, tmp_path, pki, client, reason
):
    daemon, seen = start_tls_daemon(start_dicomd, tmp_path, pki, "required")

    echoed = echo_with(daemon, pki, client)

    assert echoed.returncode != 0
    assert seen_certificates(seen) == []  # refused in the handshake, before any association
    log = daemon.wait_for_log(lambda text: "TLS handshake" in text)
    assert f"failed: {reason}" in log
    assert "Traceback" not in log
    assert echo_with(daemon, pki, "modality").returncode == 0  # the node serves on


def test_optional_lets_an_anonymous_client_in_and_still_checks_a_presented_one(
    start_dicomd, tmp_path, pki
):
    daemon, seen = start_tls_daemon(start_dicomd, tmp_path, pki, "optional")

    anonymous = echo_with(daemon, pki, None)
    stranger = echo_with(daemon, pki, "stranger")

    assert anonymous.returncode == 0, anonymous.stdout + anonymous.stderr
    assert stranger.returncode != 0
    assert seen_certificates(seen) == [None]


def test_pynetdicom_with_an_ssl_context_and_a_client_certificate(start_dicomd, tmp_path, pki):
    daemon, seen = start_tls_daemon(start_dicomd, tmp_path, pki, "required")
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki["ca"].path))
    context.load_cert_chain(str(pki["modality"].certificate), str(pki["modality"].private_key))
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(Verification)

    association = ae.associate(
        LOCALHOST, daemon.port, ae_title=daemon.ae_title, tls_args=(context, "localhost")
    )
    assert association.is_established
    status = association.send_c_echo()
    association.release()

    assert status.Status == 0x0000
    assert [entry["subject"] for entry in seen_certificates(seen)] == ["CN=CT01,O=dicomd tests"]


def test_plain_tcp_is_refused_where_tls_is_served(start_dicomd, tmp_path, pki):
    daemon, _ = start_tls_daemon(start_dicomd, tmp_path, pki, "none")

    plain = run_echoscu(daemon)
    anonymous = echo_with(daemon, pki, None)

    assert plain.returncode != 0
    assert anonymous.returncode == 0, anonymous.stdout + anonymous.stderr


def test_a_certificate_file_that_is_no_certificate_stops_the_daemon_with_one_line(
    tmp_path, twistd, pki
):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    tls = {"certificate": str(junk), "private_key": str(pki["server"].private_key)}
    config = deep_merge(DEFAULT_CONFIG, {"listen": "tcp:0:interface=127.0.0.1", "tls": tls})

    result = twistd(write_config(tmp_path, config))

    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert output.strip() == f"dicomd: tls.certificate: {junk} holds no PEM certificate"


def dicomd_echo(daemon, *options: str):
    return run_dicomd("echo", "-aec", daemon.ae_title, *options, LOCALHOST, str(daemon.port))


def test_dicomd_echo_speaks_tls_with_dcmtk_s_options(start_dicomd, tmp_path, pki):
    daemon, seen = start_tls_daemon(start_dicomd, tmp_path, pki, "required")
    modality, ca = pki["modality"], str(pki["ca"].path)

    with_certificate = dicomd_echo(
        daemon, "+tls", str(modality.private_key), str(modality.certificate), "+cf", ca
    )
    anonymous = dicomd_echo(daemon, "+tla", "+cf", ca)
    untrusting = dicomd_echo(daemon, "+tla")  # the system's CAs do not know this server

    assert with_certificate.returncode == 0, with_certificate.stderr
    assert "Success" in with_certificate.stdout
    assert [entry["subject"] for entry in seen_certificates(seen)] == ["CN=CT01,O=dicomd tests"]
    assert anonymous.returncode == 1
    assert stderr_lines(anonymous) == [
        f"dicomd echo: TLS handshake with {LOCALHOST}:{daemon.port} failed:"
        " tlsv13 alert certificate required"
    ]
    assert untrusting.returncode == 1
    assert "certificate verify failed" in untrusting.stderr
    assert len(stderr_lines(untrusting)) == 1


def test_a_client_certificate_from_an_intermediate_ca_is_sent_with_its_chain(
    start_dicomd, tmp_path, pki
):
    daemon, seen = start_tls_daemon(start_dicomd, tmp_path, pki, "required")
    issued = pki["ca"].intermediate("ward").issue("US01")  # the node trusts the root only

    echoed = dicomd_echo(
        daemon, "+tls", str(issued.private_key), str(issued.certificate), "+cf", str(pki["ca"].path)
    )

    assert echoed.returncode == 0, echoed.stderr
    assert [entry["subject"] for entry in seen_certificates(seen)] == ["CN=US01,O=dicomd tests"]


def test_dicomd_echo_ic_takes_a_server_certificate_nobody_vouches_for(start_dicomd, tmp_path, pki):
    daemon, _ = start_tls_daemon(start_dicomd, tmp_path, pki, "optional")
    stranger = pki["stranger"]  # signed by a CA the client was not told of

    unverified = dicomd_echo(daemon, "+tla", "-ic")
    presenting = dicomd_echo(
        daemon, "+tls", str(pki["modality"].private_key), str(pki["modality"].certificate), "-ic"
    )
    verified = dicomd_echo(daemon, "+tls", str(stranger.private_key), str(stranger.certificate))

    assert unverified.returncode == 0, unverified.stderr
    assert "Success" in unverified.stdout
    assert presenting.returncode == 0, presenting.stderr
    assert verified.returncode == 1  # without -ic the unknown server CA is refused
    assert "certificate verify failed" in verified.stderr


@pytest.mark.parametrize("own_certificate", [True, False], ids=["with tls:", "without"])
def test_a_move_to_a_destination_that_requires_a_client_certificate_presents_the_node_s_own(
    start_dicomd, tmp_path, pki, own_certificate
):
    """The node's tls: certificate is its identity both ways: a storescp that requires
    client certificates signed by the hospital CA takes what it moves; a node without
    one gets nothing there."""
    receiver = pki["ca"].issue("receiver", server=True)
    folder = tmp_path / "received"
    folder.mkdir()
    ca = str(pki["ca"].path)
    own = {
        "certificate": str(pki["server"].certificate),
        "private_key": str(pki["server"].private_key),
    }
    with dcmtk_peer(
        "storescp", folder, "+tls", str(receiver.private_key), str(receiver.certificate),
        "+cf", ca, "+B", "-od", str(folder),
    ) as storescp:  # fmt: skip
        daemon = start_dicomd(
            plugins=[{"plugin": "archive"}],
            tls=own if own_certificate else None,
            destinations={
                "SECURE": {
                    "host": "localhost",
                    "port": storescp.port,
                    "tls": True,
                    "ca_certificates": ca,
                }
            },
        )
        tls = ("+tla", "+cf", ca) if own_certificate else ()
        address = (LOCALHOST, str(daemon.port))
        stored = run_dicomd("store", *tls, "-aec", daemon.ae_title, *address, str(CT))
        assert stored.returncode == 0, stored.stdout + stored.stderr
        moved = run_dicomd(
            "move", *tls, "-S", "-aec", daemon.ae_title, "--dest", "SECURE",
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={CT_STUDY}",
            LOCALHOST, str(daemon.port),
        )  # fmt: skip

        arrived = list(folder.iterdir())
    if own_certificate:
        assert moved.returncode == 0, moved.stdout + moved.stderr
        assert [read_header(path).sop_instance_uid for path in arrived] == [
            read_header(CT).sop_instance_uid
        ]
    else:
        assert moved.returncode == 1
        assert arrived == []

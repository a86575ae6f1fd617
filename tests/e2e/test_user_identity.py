"""User identity negotiation against a real daemon: pynetdicom logs in with a user name
and passcode from the users file that ``dicomd user`` writes, or with a JWT."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import jwt
import pytest
from pynetdicom import AE
from pynetdicom.pdu_primitives import UserIdentityNegotiation
from pynetdicom.sop_class import Verification

from tests.support.daemons import users_file
from tests.support.processes import LOCALHOST

SECRET = "a shared secret of enough length for HS256"
ISSUER = "https://login.hospital.example"


@pytest.fixture
def daemon(start_dicomd, tmp_path):
    users = users_file(tmp_path)
    return start_dicomd(
        authentication={
            "required": True,
            "users_file": str(users),
            "jwt": {"secret": SECRET, "issuer": ISSUER, "audience": "dicomd"},
        }
    )


def associate(daemon, kind: int | None, primary: bytes = b"", secondary: bytes = b""):
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(Verification)
    negotiation = []
    if kind is not None:
        item = UserIdentityNegotiation()
        item.user_identity_type = kind
        item.primary_field = primary
        item.secondary_field = secondary
        item.positive_response_requested = True
        negotiation.append(item)
    return ae.associate(LOCALHOST, daemon.port, ae_title=daemon.ae_title, ext_neg=negotiation)


def rejections(daemon) -> list[str]:
    text = daemon.wait_for_log(lambda log: "association rejected" in log)
    return [line.split("-> ")[1] for line in text.splitlines() if "association rejected" in line]


def test_a_right_passcode_is_accepted_with_a_positive_response(daemon):
    association = associate(daemon, 2, b"alice", b"right")

    assert association.is_established
    assert association.acceptor.user_identity is not None  # the positive response came
    assert association.send_c_echo().Status == 0x0000
    association.release()
    assert "PYNETDICOM at 127.0.0.1" in daemon.log_text()
    assert "authenticated as alice" in daemon.log_text()


@pytest.mark.parametrize(
    ("kind", "primary", "secondary", "why"),
    [
        (2, b"alice", b"wrong", "unknown user or wrong passcode for 'alice'"),
        (2, b"mallory", b"wrong", "unknown user or wrong passcode for 'mallory'"),
        (5, b"junk.jwt.token", b"", "JWT refused"),
        (None, b"", b"", "no user identity was sent"),
    ],
    ids=["wrong passcode", "unknown user", "junk JWT", "none"],
)
def test_a_wrong_or_missing_identity_is_rejected_1_1_1(daemon, kind, primary, secondary, why):
    association = associate(daemon, kind, primary, secondary)

    assert association.is_rejected
    assert rejections(daemon) == ["DICOMD: user identity refused (result 1, source 1, reason 1)"]
    assert why in daemon.log_text()
    assert "Traceback" not in daemon.log_text()


def test_a_jwt_is_accepted_until_it_expires(daemon):
    claims = {"sub": "dr.who", "iss": ISSUER, "aud": "dicomd"}
    valid = jwt.encode({**claims, "exp": time.time() + 60}, SECRET).encode()
    expired = jwt.encode({**claims, "exp": time.time() - 1}, SECRET).encode()

    accepted = associate(daemon, 5, valid)
    assert accepted.is_established
    accepted.release()
    refused = associate(daemon, 5, expired)

    assert refused.is_rejected
    log = daemon.wait_for_log(lambda text: "JWT refused" in text)  # workers' lines trail
    assert "authenticated as dr.who" in log
    assert "JWT refused: Signature has expired" in log


def test_a_flood_of_logins_is_checked_a_few_at_a_time(daemon):
    """Each passcode check takes scrypt's 16 MiB; 24 peers logging in at once are checked
    two at a time, so the daemon's peak stays near its idle size instead of growing by
    16 MiB for every worker thread."""
    with ThreadPoolExecutor(24) as pool:
        attempts = list(pool.map(lambda _: associate(daemon, 2, b"alice", b"wrong"), range(24)))

    assert all(attempt.is_rejected for attempt in attempts)
    peak = daemon.peak_memory_mib()
    assert peak < 160, f"VmHWM {peak:.0f} MiB"  # 118 measured; 230 checking ten at a time
    assert "Traceback" not in daemon.log_text()

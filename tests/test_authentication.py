"""User identity negotiation: the users file, the built-in authenticators, and what an
association request with a right, wrong or missing identity gets."""

from __future__ import annotations

import dataclasses
import hashlib
import tempfile
import time
from pathlib import Path

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from dicomd.app import node_factory
from dicomd.config import JWT, Authentication, ConfigError
from dicomd.interfaces import (
    AssociationRequest,
    Authenticated,
    AuthenticationFailed,
    UserIdentity,
)
from dicomd.node.authentication import JWTAuthenticator, JWTSettings, PasswordAuthenticator
from dicomd.ul.pdu import AAssociateAC, AAssociateRJ, UserIdentityAC, UserIdentityRQ
from dicomd.users import UsersFile, UsersFileError, name_problem
from tests.wire import Peer, bare_config, request

REQUEST = AssociationRequest("DICOMD", "CT01", "10.0.0.7", 40000, (), None, None, None)
SECRET = "a shared secret of enough length for HS256"


def users_file(tmp_path: Path, **users: str) -> Path:
    path = tmp_path / "users"
    for name, passcode in users.items():
        UsersFile(path).add(name, passcode.encode())
    return path


# -- the users file ------------------------------------------------------------------------


@settings(max_examples=8, deadline=None)
@given(
    name=st.text(min_size=1, max_size=20).filter(lambda name: name_problem(name) is None),
    passcode=st.binary(min_size=1, max_size=40),
)
def test_a_user_added_logs_in_with_that_passcode_only(name: str, passcode: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        users = UsersFile(Path(folder) / "users")
        users.add(name, passcode)
        assert users.verify(name, passcode)
        assert not users.verify(name, passcode + b"x")
        assert list(users.read()) == [name]


def test_remove_and_a_file_that_is_no_users_file(tmp_path: Path) -> None:
    path = users_file(tmp_path, alice="one", bob="two")
    users = UsersFile(path)
    assert users.remove("alice") and not users.remove("alice")
    assert list(users.read()) == ["bob"]
    assert path.stat().st_mode & 0o077 == 0  # the owner's alone
    path.write_text("no colon here\n")
    with pytest.raises(UsersFileError, match="line 1"):
        users.read()
    with pytest.raises(UsersFileError, match="no ':'"):
        users.add("a:b", b"passcode")


# -- the built-in authenticators --------------------------------------------------------------


def identity(kind: int, primary: bytes, secondary: bytes = b"", positive: bool = False):
    return UserIdentity(kind, positive, primary, secondary)


def test_a_passcode_is_checked_against_the_users_file(tmp_path: Path) -> None:
    authenticator = PasswordAuthenticator(users_file(tmp_path, alice="right"))

    assert authenticator.authenticate(identity(2, b"alice", b"right"), REQUEST) == Authenticated(
        "alice"
    )
    with pytest.raises(AuthenticationFailed, match="wrong passcode"):
        authenticator.authenticate(identity(2, b"alice", b"wrong"), REQUEST)
    with pytest.raises(AuthenticationFailed, match="without a passcode"):
        authenticator.authenticate(identity(1, b"alice"), REQUEST)
    assert authenticator.authenticate(identity(5, b"token"), REQUEST) is None


def token(**claims: object) -> bytes:
    payload = {
        "sub": "dr.who",
        "iss": "https://login.example",
        "aud": "dicomd",
        "exp": time.time() + 60,
    }
    payload.update(claims)
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, SECRET).encode()


JWT_SETTINGS = JWTSettings(SECRET, None, "https://login.example", "dicomd", ("HS256",))


def test_a_jwt_is_checked_for_signature_expiry_issuer_and_audience() -> None:
    authenticator = JWTAuthenticator(JWT_SETTINGS)

    assert authenticator.authenticate(identity(5, token()), REQUEST) == Authenticated("dr.who")
    for wrong, why in [
        (token(exp=time.time() - 10), "expired"),
        (token(aud="another"), "Audience"),
        (token(iss="https://elsewhere"), "(?i)issuer"),
        (token(exp=None), "exp"),
        (jwt.encode({"sub": "x"}, "another secret of enough length").encode(), "Signature"),
        (b"junk", "Not enough segments"),
    ]:
        with pytest.raises(AuthenticationFailed, match=why):
            authenticator.authenticate(identity(5, wrong), REQUEST)
    assert authenticator.authenticate(identity(2, b"alice", b"x"), REQUEST) is None


# -- what the peer gets -----------------------------------------------------------------------


def node(tmp_path: Path, required: bool = False) -> Peer:
    path = users_file(tmp_path, alice="right")
    config = dataclasses.replace(
        bare_config(), authentication=Authentication(required=required, users_file=path)
    )
    return Peer(config)


def answer_to(peer: Peer, sent: UserIdentityRQ | None) -> object:
    peer.send(request(user_identity_rq=sent).encode())
    (answer,) = peer.received()
    return answer


def test_a_right_passcode_is_accepted_and_confirmed_when_asked(tmp_path: Path) -> None:
    confirmed = answer_to(node(tmp_path), UserIdentityRQ(2, True, b"alice", b"right"))
    unconfirmed = answer_to(node(tmp_path), UserIdentityRQ(2, False, b"alice", b"right"))

    assert isinstance(confirmed, AAssociateAC)
    assert confirmed.user_information.user_identity_ac == UserIdentityAC(b"")
    assert isinstance(unconfirmed, AAssociateAC)
    assert unconfirmed.user_information.user_identity_ac is None


def test_a_wrong_identity_or_a_missing_required_one_is_rejected_1_1_1(tmp_path: Path) -> None:
    assert answer_to(node(tmp_path), UserIdentityRQ(2, True, b"alice", b"wrong")) == AAssociateRJ(
        1, 1, 1
    )
    assert answer_to(node(tmp_path), UserIdentityRQ(5, True, b"a.jwt.token", b"")) == AAssociateRJ(
        1, 1, 1
    )  # nobody here verifies tokens
    assert answer_to(node(tmp_path, required=True), None) == AAssociateRJ(1, 1, 1)
    assert isinstance(answer_to(node(tmp_path), None), AAssociateAC)  # not required


def test_requiring_an_identity_with_nothing_to_check_it_is_a_configuration_error() -> None:
    config = dataclasses.replace(bare_config(), authentication=Authentication(required=True))
    with pytest.raises(ConfigError, match=r"authentication\.required: nothing can check"):
        node_factory(config, clock=Clock())


def test_an_unknown_name_costs_the_same_scrypt_as_a_known_one(tmp_path, monkeypatch) -> None:
    """The time of a refusal must not tell which names exist."""
    users = UsersFile(users_file(tmp_path, alice="right"))
    calls: list[bytes] = []
    real_scrypt = hashlib.scrypt

    def counting_scrypt(password: bytes, **parameters: object) -> bytes:
        calls.append(password)
        return real_scrypt(password, **parameters)

    monkeypatch.setattr(hashlib, "scrypt", counting_scrypt)
    assert not users.verify("alice", b"wrong")
    assert not users.verify("mallory", b"wrong")
    assert calls == [b"wrong", b"wrong"]


def test_a_user_name_that_is_no_user_name_is_refused_whoever_vouches_for_it(tmp_path) -> None:
    """A token's sub goes into logs and rules: a line break in it would forge a log line."""
    jwt_settings = JWT(SECRET, None, "https://login.example", "dicomd", ("HS256",))
    config = dataclasses.replace(bare_config(), authentication=Authentication(jwt=jwt_settings))
    forged = token(sub="bob\n2026-01-01T00:00:00+0000 [Acceptor#info] admin authenticated")

    assert answer_to(Peer(config), UserIdentityRQ(5, True, forged, b"")) == AAssociateRJ(1, 1, 1)
    assert isinstance(answer_to(Peer(config), UserIdentityRQ(5, True, token(), b"")), AAssociateAC)


def test_a_flood_of_logins_past_the_queue_is_turned_away_transiently(tmp_path) -> None:
    peer = node(tmp_path)
    logins = peer.factory.settings.logins
    for _ in range(2 + 32):  # both checks busy, 32 logins waiting their turn
        logins.acquire()

    answer = answer_to(peer, UserIdentityRQ(2, True, b"alice", b"right"))

    assert answer == AAssociateRJ(2, 3, 1)

"""The DICOMweb site's core: routing to the right operation, authentication (401), the
node's rules (403), CORS, the body limit, and the parsers of Accept and Authorization.

Each request is written as bytes into the site's HTTP channel over a StringTransport and
the answer read back from it: no socket, no service module (a request the rules refuse
never reaches one).
"""

from __future__ import annotations

import base64
import time
from dataclasses import replace
from pathlib import Path

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

from dicomd.interfaces import IFindHandler, UserIdentity
from dicomd.node.authentication import JWTAuthenticator, JWTSettings, PasswordAuthenticator
from dicomd.node.authorization import Rule, RulesAuthorizer
from dicomd.uids import STUDY_ROOT_FIND
from dicomd.users import UsersFile
from dicomd.web.accept import MOST_RANGES, choose, parse_accept, parse_media_range
from dicomd.web.auth import REMEMBERED_FOR, parse_authorization
from dicomd.web.context import WebContext
from dicomd.web.errors import WebError
from dicomd.web.site import web_site

STUDY = "1.2.3"
SERIES = "1.2.3.4"
INSTANCE = "1.2.3.4.5"
SECRET = "a shared secret of at least thirty-two bytes"


def context(tmp_path: Path, **changes: object) -> WebContext:
    base = WebContext(
        ae_title="DICOMD",
        find_handlers=(),
        retrieve_source=None,
        store_handlers=(),
        incoming=tmp_path,
        reactor=Clock(),
        base_url=None,
        max_stow_length=1000,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


class Answer:
    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers: dict[str, list[str]] = {}
        for line in lines:
            name, _, value = line.partition(":")
            self.headers.setdefault(name.strip().lower(), []).append(value.strip())
        if self.header("transfer-encoding") == "chunked":
            self.body = dechunked(self.body)

    def header(self, name: str) -> str | None:
        values = self.headers.get(name)
        return values[0] if values else None


def dechunked(body: bytes) -> bytes:
    whole = b""
    while body:
        size, _, body = body.partition(b"\r\n")
        length = int(size, 16)
        whole, body = whole + body[:length], body[length + 2 :]
        if length == 0:
            break
    return whole


def ask(
    web: WebContext,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> tuple[Answer, StringTransport]:
    site = web_site(web, None, timeout=60)
    address = IPv4Address("TCP", "10.0.0.7", 40000)
    channel = site.buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    channel.makeConnection(transport)
    lines = [f"{method} {path} HTTP/1.1", "Host: dicomd.test"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    channel.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    for _ in range(10):  # what the services schedule (pacing cooperators) runs meanwhile
        web.reactor.advance(0.1)
    return Answer(transport.value()), transport


def basic(name: str, passcode: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:{passcode}".encode()).decode()


def token(subject: str, **claims: object) -> str:
    payload = {"sub": subject, "iss": "idp", "aud": "dicomd", "exp": time.time() + 600}
    return "Bearer " + jwt.encode({**payload, **claims}, SECRET, algorithm="HS256")


@pytest.fixture(scope="module")
def users_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("users") / "users"
    users = UsersFile(path)
    for name in ("alice", "bob", "carol"):
        users.add(name, b"s3cret")
    return path


@pytest.fixture
def secured(tmp_path: Path, users_file: Path) -> WebContext:
    """alice may find, bob may get, carol may store; authentication required."""
    own_users = tmp_path / "users"
    own_users.write_bytes(users_file.read_bytes())
    return context(
        tmp_path,
        authenticators=(
            PasswordAuthenticator(own_users),
            JWTAuthenticator(JWTSettings(SECRET, None, "idp", "dicomd", ("HS256",))),
        ),
        identity_required=True,
        authorizer=RulesAuthorizer(
            [
                Rule(("user:alice",), frozenset({"find"})),
                Rule(("user:bob",), frozenset({"get"})),
                Rule(("user:carol",), frozenset({"store"})),
            ]
        ),
    )


ROUTES = [
    ("GET", "/dicom-web/studies", "find"),
    ("GET", "/dicom-web/series", "find"),
    ("GET", "/dicom-web/instances", "find"),
    ("GET", f"/dicom-web/studies/{STUDY}/series", "find"),
    ("GET", f"/dicom-web/studies/{STUDY}/instances", "find"),
    ("GET", f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances", "find"),
    ("GET", f"/dicom-web/studies/{STUDY}", "get"),
    ("GET", f"/dicom-web/studies/{STUDY}/series/{SERIES}", "get"),
    ("GET", f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{INSTANCE}", "get"),
    ("GET", f"/dicom-web/studies/{STUDY}/metadata", "get"),
    ("GET", f"/dicom-web/studies/{STUDY}/series/{SERIES}/metadata", "get"),
    ("GET", f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{INSTANCE}/metadata", "get"),
    ("GET", f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{INSTANCE}/frames/1,2", "get"),
    (
        "GET",
        f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{INSTANCE}/bulkdata/7fe00010",
        "get",
    ),
    ("GET", f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{INSTANCE}/rendered", "get"),
    ("GET", f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{INSTANCE}/thumbnail", "get"),
    (
        "GET",
        f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{INSTANCE}/frames/2/rendered",
        "get",
    ),
    ("POST", "/dicom-web/studies", "store"),
    ("POST", f"/dicom-web/studies/{STUDY}", "store"),
]
OPERATION_OF_USER = {"find": "alice", "get": "bob", "store": "carol"}


@pytest.mark.parametrize(("method", "path", "operation"), ROUTES)
def test_each_route_is_refused_to_users_the_rules_do_not_let_do_its_operation(
    secured: WebContext, method: str, path: str, operation: str
) -> None:
    for user in set(OPERATION_OF_USER.values()) - {OPERATION_OF_USER[operation]}:
        answer, _ = ask(secured, method, path, {"Authorization": basic(user, "s3cret")})
        assert answer.status == 403, (user, answer.body)
        assert answer.body == f"user {user!r} may not {operation}\n".encode()
        assert answer.header("content-type") == "text/plain; charset=utf-8"


@pytest.mark.parametrize(("method", "path", "operation"), ROUTES)
def test_each_route_reaches_its_service_which_answers_a_node_without_plugins(
    tmp_path: Path, method: str, path: str, operation: str
) -> None:
    """Past the rules, each route's service answers (not found, not implemented...), never a
    defect: a 500 or an error in the log would say the route called it wrong."""
    errors: list[dict[str, object]] = []

    def observe(event: dict[str, object]) -> None:
        if event.get("log_failure") is not None or event.get("isError"):
            errors.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        answer, _ = ask(context(tmp_path), method, path)
    finally:
        globalLogPublisher.removeObserver(observe)
    assert not errors, errors
    assert 400 <= answer.status < 600 and answer.status not in (401, 403, 500), answer.body


@pytest.mark.parametrize(("method", "path", "operation"), ROUTES)
def test_each_route_asks_for_credentials_when_none_or_wrong_ones_are_given(
    secured: WebContext, method: str, path: str, operation: str
) -> None:
    for headers in ({}, {"Authorization": basic("alice", "wrong")}, {"Authorization": "Digest x"}):
        answer, _ = ask(secured, method, path, headers)
        assert answer.status == 401, answer.body
        assert answer.header("www-authenticate") == 'Basic realm="dicomd", Bearer realm="dicomd"'


@implementer(IFindHandler)
class NoStudies:
    """A find handler of an empty archive."""

    find_models = (STUDY_ROOT_FIND,)

    def find(self, query: object) -> list[object]:
        return []


def test_a_user_the_rules_allow_is_answered(secured: WebContext) -> None:
    web = replace(secured, find_handlers=(NoStudies(),))
    for credentials in (basic("alice", "s3cret"), token("alice")):
        answer, _ = ask(web, "GET", "/dicom-web/studies", {"Authorization": credentials})
        assert (answer.status, answer.body) == (200, b"[]")


def test_bearer_tokens_are_checked_like_a_jwt_user_identity(secured: WebContext) -> None:
    for bad in (
        token("alice", exp=time.time() - 10),
        token("alice", aud="someone else"),
        "Bearer " + jwt.encode({"sub": "alice"}, "another secret of thirty-two bytes!!"),
    ):
        answer, _ = ask(secured, "GET", "/dicom-web/studies", {"Authorization": bad})
        assert answer.status == 401
        assert answer.body.startswith(b"JWT refused")


def test_a_verified_basic_header_is_remembered_for_a_while(secured: WebContext) -> None:
    site = web_site(secured, None, timeout=60)
    address = IPv4Address("TCP", "10.0.0.7", 40000)
    headers = f"Authorization: {basic('bob', 's3cret')}\r\nHost: x\r\n\r\n".encode()
    request = b"GET /dicom-web/studies HTTP/1.1\r\n" + headers

    def status() -> int:
        channel = site.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        channel.makeConnection(transport)
        channel.dataReceived(request)
        return Answer(transport.value()).status

    assert status() == 403
    (secured.authenticators[0].users.path).write_text("")  # bob removed from the file
    assert status() == 403  # still bob, from memory: no scrypt for every request
    secured.reactor.advance(REMEMBERED_FOR)
    assert status() == 401


def test_without_authentication_anonymous_requests_meet_the_rules(tmp_path: Path) -> None:
    rules = RulesAuthorizer([Rule(("*",), frozenset({"get"}))])
    web = context(tmp_path, authorizer=rules)
    answer, _ = ask(web, "GET", "/dicom-web/studies")
    assert answer.status == 403
    assert answer.body == b"an anonymous client may not find\n"
    answer, _ = ask(web, "GET", "/dicom-web/studies", {"Authorization": basic("x", "y")})
    assert answer.status == 403  # credentials nobody can check are not believed


def test_anonymous_clients_refused_by_the_rules_are_asked_to_sign_in(
    secured: WebContext,
) -> None:
    web = replace(secured, identity_required=False)
    answer, _ = ask(web, "GET", "/dicom-web/studies")
    assert answer.status == 401
    assert answer.header("www-authenticate") is not None


def test_unknown_paths_methods_and_uids(tmp_path: Path) -> None:
    web = context(tmp_path)
    answer, _ = ask(web, "GET", "/dicom-web/nothing-here")
    assert (answer.status, answer.body) == (404, b"no such resource\n")
    answer, _ = ask(web, "GET", "/")
    assert answer.status == 404  # no viewer configured
    answer, _ = ask(web, "DELETE", "/dicom-web/studies")
    assert answer.status == 405
    assert set(answer.header("allow").split(", ")) >= {"GET", "POST"}
    answer, _ = ask(web, "GET", "/dicom-web/studies/1.2.x/metadata")
    assert answer.status == 400
    assert answer.body == b"'1.2.x' is not a UID: it holds characters other than digits and dots\n"
    path = f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{INSTANCE}/frames/0/rendered"
    answer, _ = ask(web, "GET", path)
    assert (answer.status, answer.body) == (400, b"'0' is not a frame number\n")


def test_cors_names_configured_origins_only(tmp_path: Path) -> None:
    web = context(tmp_path, cors_origins=frozenset({"https://viewer.example"}))
    answer, _ = ask(web, "GET", "/dicom-web/nothing", {"Origin": "https://viewer.example"})
    assert answer.header("access-control-allow-origin") == "https://viewer.example"
    assert answer.header("vary") == "Origin"
    answer, _ = ask(web, "GET", "/dicom-web/nothing", {"Origin": "https://evil.example"})
    assert answer.header("access-control-allow-origin") is None
    answer, _ = ask(web, "GET", "/dicom-web/nothing")
    assert answer.header("access-control-allow-origin") is None


def test_preflight_is_answered_without_credentials(secured: WebContext) -> None:
    web = replace(secured, cors_origins=frozenset({"https://viewer.example"}))
    asking = {
        "Origin": "https://viewer.example",
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization, accept",
    }
    answer, _ = ask(web, "OPTIONS", "/dicom-web/studies", asking)
    assert answer.status == 204
    assert answer.header("access-control-allow-origin") == "https://viewer.example"
    assert "Authorization" in answer.header("access-control-allow-headers")
    assert "POST" in answer.header("access-control-allow-methods")
    answer, _ = ask(web, "OPTIONS", "/dicom-web/studies", {**asking, "Origin": "https://evil"})
    assert answer.status == 403
    assert answer.header("access-control-allow-origin") is None


def test_any_origin(tmp_path: Path) -> None:
    web = context(tmp_path, cors_origins=frozenset({"*"}))
    answer, _ = ask(web, "GET", "/dicom-web/nothing", {"Origin": "https://anywhere.example"})
    assert answer.header("access-control-allow-origin") == "*"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_each_request_counts_as_an_operation_of_its_web_service_refused_or_not(
    secured: WebContext,
) -> None:
    """QIDO-RS, WADO-RS and STOW-RS requests are operations like C-FINDs, C-GETs and
    C-STOREs in the node's metrics: a refusal (401, 403) counts as a failure."""
    before = {
        service: sample("dicomd_operations_total", service=service, status="failure")
        for service in ("qido", "wado", "stow")
    }
    ask(secured, "GET", "/dicom-web/studies")
    ask(secured, "GET", f"/dicom-web/studies/{STUDY}", {"Authorization": basic("eve", "x")})
    ask(secured, "POST", "/dicom-web/studies")

    after = {
        service: sample("dicomd_operations_total", service=service, status="failure")
        for service in ("qido", "wado", "stow")
    }
    assert {service: after[service] - before[service] for service in after} == {
        "qido": 1,
        "wado": 1,
        "stow": 1,
    }


def test_a_body_past_the_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    web = context(tmp_path, max_stow_length=1000)
    hits_before = sample("dicomd_limit_hits_total", limit="max_stow_length")
    site = web_site(web, None, timeout=60)
    address = IPv4Address("TCP", "10.0.0.7", 40000)
    channel = site.buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    channel.makeConnection(transport)
    channel.dataReceived(
        b"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000000\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    answer = Answer(transport.value())
    assert answer.status == 413
    assert sample("dicomd_limit_hits_total", limit="max_stow_length") == hits_before + 1
    assert b"100 Continue" not in transport.value()
    assert transport.disconnecting
    channel.dataReceived(b"x" * 100_000)  # what was already on its way is dropped

    channel = site.buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    channel.makeConnection(transport)
    channel.dataReceived(
        b"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    for _ in range(3):
        channel.dataReceived(b"190\r\n" + b"y" * 400 + b"\r\n")
    answer = Answer(transport.value())
    assert answer.status == 413
    assert transport.disconnecting


@settings(max_examples=150, deadline=None)
@given(
    path=st.one_of(
        st.binary(max_size=80).filter(lambda raw: not set(raw) & set(b" \r\n")),
        st.lists(
            st.sampled_from(
                [
                    *(b"studies", b"series", b"instances", b"metadata", b"frames", b"1,0"),
                    *(b"rendered", b"thumbnail", b"bulkdata", b"1.2.3", b"1.2.x", b"0", b""),
                    *(b"..", b".", b"%ff", b"%00", b"%2F", b"%C3%A9", b"?x=%ff", b"#", b";"),
                ]
            ),
            max_size=10,
        ).map(b"/".join),
    ),
    host=st.binary(min_size=0, max_size=40).filter(lambda raw: not set(raw) & set(b"\r\n")),
    method=st.sampled_from([b"GET", b"POST", b"OPTIONS", b"HEAD", b"PUT", b"GETX"]),
)
def test_any_request_line_and_host_get_an_answer_and_log_no_error(
    path: bytes, host: bytes, method: bytes
) -> None:
    """Hostile paths (percent-escapes of any bytes, dots, slashes) and Host headers: an
    answer other than 500 (a node without plugins answers 501 for what it cannot serve)
    and no error in the log, in particular no traceback."""
    errors: list[dict[str, object]] = []

    def observe(event: dict[str, object]) -> None:
        if event.get("log_failure") is not None or event.get("isError"):
            errors.append(event)

    web = context(Path("/nonexistent"), cors_origins=frozenset({"*"}))
    site = web_site(web, None, timeout=60)
    address = IPv4Address("TCP", "10.0.0.7", 40000)
    channel = site.buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    channel.makeConnection(transport)
    globalLogPublisher.addObserver(observe)
    try:
        channel.dataReceived(
            method + b" /dicom-web/" + path + b" HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"
        )
    finally:
        globalLogPublisher.removeObserver(observe)
    assert not errors, errors
    raw = transport.value()
    if raw:  # a request line Twisted cannot parse is closed with its own 400
        assert Answer(raw).status != 500, raw


def test_connections_past_the_limit_are_answered_503_and_closed(tmp_path: Path) -> None:
    site = web_site(context(tmp_path), None, timeout=60, max_connections=2)
    address = IPv4Address("TCP", "10.0.0.7", 40000)
    open_ones = []
    for _ in range(2):
        channel = site.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        channel.makeConnection(transport)
        open_ones.append((channel, transport))
    refused = site.buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    refused.makeConnection(transport)
    assert Answer(transport.value()).status == 503
    assert transport.disconnecting

    channel, transport = open_ones.pop()
    channel.connectionLost(Failure(ConnectionDone()))
    again = site.buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    again.makeConnection(transport)
    again.dataReceived(b"GET /dicom-web/nothing HTTP/1.1\r\nHost: x\r\n\r\n")
    assert Answer(transport.value()).status == 404


# The parsers of Accept and Authorization: bytes from anyone


def test_accept_orders_by_quality_then_specificity_then_order() -> None:
    ranges = parse_accept(
        [
            b'*/*;q=0.1, application/json;q=0.5, multipart/related; type="application/dicom";'
            b" transfer-syntax=*, application/dicom+json, text/html;q=0"
        ]
    )
    assert [(r.media_type, dict(r.parameters), r.quality) for r in ranges] == [
        ("multipart/related", {"type": "application/dicom", "transfer-syntax": "*"}, 1.0),
        ("application/dicom+json", {}, 1.0),
        ("application/json", {}, 0.5),
        ("*/*", {}, 0.1),
    ]


def test_accept_matching_with_parameters() -> None:
    wanted = parse_media_range('multipart/related; type="Application/DICOM"')
    assert wanted is not None
    stored = parse_media_range(
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'
    )
    assert stored is not None and wanted.matches(stored)
    octets = parse_media_range('multipart/related; type="application/octet-stream"')
    assert octets is not None and not wanted.matches(octets)
    exact = parse_media_range("multipart/related; transfer-syntax=1.2.840.10008.1.2.1")
    assert exact is not None and not exact.matches(stored)


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [
        (None, "application/dicom+json"),
        (b"application/json", "application/json"),
        (b"application/*;q=0.2, application/json;q=0.9", "application/json"),
        (b"*/*", "application/dicom+json"),
    ],
)
def test_choose(accept: bytes | None, chosen: str) -> None:
    from twisted.web.test.requesthelper import DummyRequest

    request = DummyRequest([b""])
    if accept is not None:
        request.requestHeaders.setRawHeaders(b"accept", [accept])
    assert choose(request, ["application/dicom+json", "application/json"]) == chosen


def test_choose_refuses_with_406() -> None:
    from twisted.web.test.requesthelper import DummyRequest

    request = DummyRequest([b""])
    request.requestHeaders.setRawHeaders(b"accept", [b"image/png, text/*;q=0.5"])
    with pytest.raises(WebError) as refused:
        choose(request, ["application/dicom+json"])
    assert refused.value.status == 406


@given(st.lists(st.binary(max_size=300), max_size=4))
def test_any_accept_header_parses_within_bounds(values: list[bytes]) -> None:
    ranges = parse_accept(values)
    assert len(ranges) <= MOST_RANGES
    assert all(0 < r.quality <= 1 for r in ranges)


@given(
    st.lists(
        st.sampled_from(
            [
                "application/dicom+json",
                "*/*",
                "multipart/related",
                'type="application/dicom"',
                "transfer-syntax=*",
                "q=0.5",
                "q=2",
                ";",
                ",",
                '"',
                "\\",
                " ",
                "=",
            ]
        ),
        max_size=30,
    )
)
def test_accept_made_of_its_own_pieces_never_fails(pieces: list[str]) -> None:
    for found in parse_accept(["".join(pieces).encode()]):
        assert found.type and found.subtype


@given(st.binary(max_size=400))
def test_any_authorization_header_is_an_identity_or_a_401(value: bytes) -> None:
    try:
        identity = parse_authorization(value)
    except WebError as refused:
        assert refused.status == 401
        assert refused.headers["WWW-Authenticate"]
    else:
        assert identity.identity_type in (2, 5)


@given(st.text(max_size=40).filter(lambda n: ":" not in n), st.binary(max_size=40))
def test_basic_credentials_round_trip(name: str, passcode: bytes) -> None:
    value = b"Basic " + base64.b64encode(name.encode() + b":" + passcode)
    assert parse_authorization(value) == UserIdentity(2, False, name.encode(), passcode)


def test_an_overlong_authorization_is_refused_unread() -> None:
    with pytest.raises(WebError):
        parse_authorization(b"Bearer " + b"a" * 100_000)


# The listener in the node's service tree


def test_the_node_listens_for_the_web_when_the_section_is_there(tmp_path: Path) -> None:
    from twisted.internet.testing import MemoryReactorClock

    from dicomd.app import service_tree
    from dicomd.config import parse_config
    from dicomd.web.site import ConnectionLimit, WebServerSite

    config = parse_config(
        {
            "storage": {"path": str(tmp_path)},
            "workers": 1,
            "plugins": [],
            "web": {"listen": "tcp:8042:interface=127.0.0.1", "max_stow_length": 1 << 20},
        }
    )
    reactor = MemoryReactorClock()
    root = service_tree(config, (), reactor)
    web = root.getServiceNamed("web")
    web.privilegedStartService()
    web.startService()
    port, site, _, interface = reactor.tcpServers[-1]
    assert (port, interface) == (8042, "127.0.0.1")
    assert isinstance(site, ConnectionLimit)
    assert site.most == 256
    assert isinstance(site.wrappedFactory, WebServerSite)
    assert site.wrappedFactory.max_body_length == 1 << 20

    without = service_tree(parse_config({"workers": 1, "plugins": []}), (), MemoryReactorClock())
    assert "web" not in [service.name for service in without]

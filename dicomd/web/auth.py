"""Who makes an HTTP request: its ``Authorization`` header checked by the node's authenticators.

HTTP Basic becomes the user identity a DIMSE peer sends as user name and
passcode (type 2), and ``Bearer`` the JWT identity (type 5), so the same
`IAuthenticator`s decide (the users file, the JWT settings, plugins), in a
worker thread as for an association.  What they prove is then asked of the
node's rules like an association's (`dicomd.web.context.allowed`).

Browsers and clients send the same header with every request, and the users
file's scrypt takes tens of milliseconds: a verified Basic header is
remembered for `REMEMBERED_FOR` seconds (by its SHA-256), so a viewer's
hundreds of requests cost one check.  A user removed from the file is
refused once that time is over.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any, Final

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from dicomd.dimse.work import worker_for
from dicomd.interfaces import Authenticated, AuthenticationFailed, IAuthenticator, UserIdentity
from dicomd.node.acceptor import _first_answer
from dicomd.users import name_problem
from dicomd.web.context import WebContext, WebUser, association_request, user_of
from dicomd.web.errors import WebError

USERNAME_AND_PASSCODE: Final = 2
JWT: Final = 5
CHALLENGE: Final = 'Basic realm="dicomd", Bearer realm="dicomd"'
"""``WWW-Authenticate`` of every 401."""
MOST_HEADER_LENGTH: Final = 16384
"""An Authorization header longer than this is refused unread (a JWT is a few hundred bytes)."""
REMEMBERED_FOR: Final = 30.0
"""Seconds a verified Basic header is taken as verified without asking the users file."""
MOST_REMEMBERED: Final = 1024
CHECKS_AT_ONCE: Final = 2
MOST_CHECKS_WAITING: Final = 32
"""Credentials checked in threads at once, and how many may wait; past that, 503."""


def parse_authorization(value: bytes) -> UserIdentity:
    """The user identity an ``Authorization`` header value carries: ``Basic`` (user name and
    passcode) or ``Bearer`` (a JWT).  Raises `WebError` 401 for anything else."""
    if len(value) > MOST_HEADER_LENGTH:
        raise unauthorized("the Authorization header is too long")
    scheme, _, credentials = value.strip().partition(b" ")
    credentials = credentials.strip()
    if scheme.lower() == b"basic":
        try:
            decoded = base64.b64decode(credentials, validate=True)
        except (binascii.Error, ValueError):
            raise unauthorized("Basic credentials are not base64") from None
        name, colon, passcode = decoded.partition(b":")
        if not colon:
            raise unauthorized("Basic credentials have no ':' between name and passcode")
        return UserIdentity(USERNAME_AND_PASSCODE, False, name, passcode)
    if scheme.lower() == b"bearer":
        if not credentials or not credentials.isascii():
            raise unauthorized("the Bearer token is empty or not ASCII")
        return UserIdentity(JWT, False, credentials, b"")
    raise unauthorized("the Authorization scheme is neither Basic nor Bearer")


def unauthorized(why: str) -> WebError:
    """The 401 of missing or wrong credentials, with the schemes a client may use."""
    return WebError(HTTPStatus.UNAUTHORIZED, why, {"WWW-Authenticate": CHALLENGE})


class Authentication:
    """Checks each request's credentials with the node's authenticators."""

    log = Logger()

    def __init__(self, context: WebContext) -> None:
        self.context = context
        self.worker = worker_for(context.reactor)
        self.checks = defer.DeferredSemaphore(CHECKS_AT_ONCE)
        self.remembered: OrderedDict[bytes, tuple[str, float]] = OrderedDict()

    async def user(self, request: Any) -> WebUser:
        """Who ``request`` proves to be (``name`` None when anonymous).  Raises `WebError`
        401 for wrong credentials, or for none when ``authentication.required``.

        Without authenticators, credentials are neither checked nor believed, as an
        association's user identity is not: the request is anonymous."""
        anonymous = user_of(request)
        values = request.requestHeaders.getRawHeaders(b"authorization")
        checkers: Sequence[IAuthenticator] = self.context.authenticators
        if not values or not checkers:
            if self.context.identity_required:
                raise unauthorized("credentials are required")
            return anonymous
        if len(values) > 1:
            raise unauthorized("more than one Authorization header")
        identity = parse_authorization(values[0])
        key = hashlib.sha256(values[0]).digest() if identity.identity_type == 2 else None
        name = self._recall(key)
        if name is None:
            name = await self._check(identity, anonymous)
            self._remember(key, name)
        return WebUser(name, anonymous.host)

    async def _check(self, identity: UserIdentity, anonymous: WebUser) -> str:
        if len(self.checks.waiting) >= MOST_CHECKS_WAITING:
            raise WebError(HTTPStatus.SERVICE_UNAVAILABLE, "too many logins wait to be checked")
        request = association_request(self.context, anonymous)
        try:
            answer: Authenticated | None = await self.checks.run(
                self.worker.run, _first_answer, self.context.authenticators, identity, request
            )
        except AuthenticationFailed as refusal:
            self.log.warn("HTTP client at {host} refused: {why}", host=anonymous.host, why=refusal)
            raise unauthorized(str(refusal)) from None
        except Exception:
            self.log.failure("an authenticator failed", Failure())
            raise unauthorized("the authenticator failed") from None
        if answer is None:
            raise unauthorized(f"no authenticator knows identity type {identity.identity_type}")
        problem = name_problem(answer.user)
        if problem is not None:
            raise unauthorized(f"user {answer.user[:80]!r}: {problem}")
        return answer.user

    def _recall(self, key: bytes | None) -> str | None:
        if key is None or key not in self.remembered:
            return None
        name, until = self.remembered[key]
        if self.context.reactor.seconds() >= until:
            del self.remembered[key]
            return None
        return name

    def _remember(self, key: bytes | None, name: str) -> None:
        if key is None:
            return
        self.remembered[key] = (name, self.context.reactor.seconds() + REMEMBERED_FOR)
        self.remembered.move_to_end(key)
        while len(self.remembered) > MOST_REMEMBERED:
            self.remembered.popitem(last=False)

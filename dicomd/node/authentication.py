"""The built-in authenticators: a users file of scrypt hashes, and JWT bearer tokens.

Both answer only the identity types they know (None for the others) and
raise `AuthenticationFailed` for a wrong identity; `dicomd.node.acceptor`
turns that into A-ASSOCIATE-RJ (1, 1, 1) and one log line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import jwt
from zope.interface import implementer

from dicomd.interfaces import (
    AssociationRequest,
    Authenticated,
    AuthenticationFailed,
    IAuthenticator,
    UserIdentity,
)
from dicomd.users import UsersFile, UsersFileError

USERNAME = 1
USERNAME_AND_PASSCODE = 2
JWT = 5


@implementer(IAuthenticator)
class PasswordAuthenticator:
    """User name and passcode, checked against the users file (`dicomd.users`)."""

    def __init__(self, users_file: Path) -> None:
        self.users = UsersFile(users_file)

    def authenticate(
        self, identity: UserIdentity, request: AssociationRequest
    ) -> Authenticated | None:
        if identity.identity_type not in (USERNAME, USERNAME_AND_PASSCODE):
            return None
        name = identity.primary_field.decode("utf-8", "replace")
        if identity.identity_type == USERNAME:
            raise AuthenticationFailed(f"user {name!r} gave a name without a passcode")
        try:
            known = self.users.verify(name, identity.secondary_field)
        except UsersFileError as error:
            raise AuthenticationFailed(str(error)) from None
        if not known:
            raise AuthenticationFailed(f"unknown user or wrong passcode for {name!r}")
        return Authenticated(name)


@dataclass(frozen=True, slots=True)
class JWTSettings:
    """How bearer tokens are checked: a shared ``secret`` (HMAC) or a ``public_key`` file
    (PEM, RSA or EC), the ``issuer`` and ``audience`` they must name, the algorithms."""

    secret: str | None
    public_key: Path | None
    issuer: str
    audience: str
    algorithms: Sequence[str]


@implementer(IAuthenticator)
class JWTAuthenticator:
    """A JSON Web Token (identity type 5) verified with PyJWT: signature, issuer, audience
    and expiry, all required; the user is its ``sub`` claim."""

    def __init__(self, settings: JWTSettings) -> None:
        self.settings = settings
        self.key = (
            settings.public_key.read_text() if settings.public_key is not None else settings.secret
        )

    def authenticate(
        self, identity: UserIdentity, request: AssociationRequest
    ) -> Authenticated | None:
        if identity.identity_type != JWT:
            return None
        token = identity.primary_field.decode("ascii", "replace").strip()
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=list(self.settings.algorithms),
                audience=self.settings.audience,
                issuer=self.settings.issuer,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as error:
            raise AuthenticationFailed(f"JWT refused: {error}") from None
        return Authenticated(str(claims["sub"]))

"""The users file: who may authenticate with a user name and passcode (PS3.7 D.3.3.7).

One line per user, ``name:scrypt:N:r:p:salt:hash`` with hex salt and hash:
scrypt (``hashlib.scrypt``) is slow and memory-hard on purpose, so that a
stolen file does not give the passcodes away.  ``dicomd user`` writes it;
the node reads it again at each authentication, so a user added or removed
counts at once.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Final

_N: Final = 1 << 14
_R: Final = 8
_P: Final = 1
_SALT_BYTES: Final = 16
_HASH_BYTES: Final = 32
MAX_NAME_LENGTH: Final = 64


_UNKNOWN_USER: Final = f"scrypt:{_N}:{_R}:{_P}:{'00' * _SALT_BYTES}:{'00' * _HASH_BYTES}"
"""A stored hash no passcode matches, checked for names that are not in the file."""


class UsersFileError(ValueError):
    """A users file that cannot be read or a name that cannot be in one."""


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a user name here, or None."""
    if not 1 <= len(name) <= MAX_NAME_LENGTH:
        return f"a user name has 1 to {MAX_NAME_LENGTH} characters"
    if ":" in name or not name.isprintable() or name != name.strip():
        return "a user name has no ':', no control characters and no surrounding spaces"
    return None


def hashed(passcode: bytes) -> str:
    """The line's tail for ``passcode``: parameters, a fresh salt and the scrypt hash."""
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.scrypt(passcode, salt=salt, n=_N, r=_R, p=_P, dklen=_HASH_BYTES)
    return f"scrypt:{_N}:{_R}:{_P}:{salt.hex()}:{digest.hex()}"


def matches(stored: str, passcode: bytes) -> bool:
    """Whether ``passcode`` is the one ``stored`` (a `hashed` value) was made from."""
    try:
        scheme, n, r, p, salt, digest = stored.split(":")
        if scheme != "scrypt":
            return False
        expected = bytes.fromhex(digest)
        computed = hashlib.scrypt(
            passcode, salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except ValueError:
        return False
    return hmac.compare_digest(computed, expected)


class UsersFile:
    """The users file at ``path``; a missing file has no users."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict[str, str]:
        """User name -> stored hash."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as error:
            raise UsersFileError(f"cannot read {self.path}: {error}") from None
        users = {}
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            name, separator, stored = line.partition(":")
            if not separator or name_problem(name) is not None:
                raise UsersFileError(f"{self.path} line {number}: not 'name:scrypt:...'")
            users[name] = stored
        return users

    def verify(self, name: str, passcode: bytes) -> bool:
        """Whether ``name`` is a user with that passcode.  An unknown name costs the same
        scrypt as a known one, so that the time of a refusal does not tell names apart."""
        stored = self.read().get(name)
        if stored is None:
            matches(_UNKNOWN_USER, passcode)
            return False
        return matches(stored, passcode)

    def add(self, name: str, passcode: bytes) -> None:
        """Add ``name``, or give it a new passcode."""
        problem = name_problem(name)
        if problem is not None:
            raise UsersFileError(problem)
        users = self.read()
        users[name] = hashed(passcode)
        self._write(users)

    def remove(self, name: str) -> bool:
        """Remove ``name``; False when there was no such user."""
        users = self.read()
        if users.pop(name, None) is None:
            return False
        self._write(users)
        return True

    def _write(self, users: dict[str, str]) -> None:
        """Replace the file in one step, readable by its owner only."""
        temporary = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}")
        text = "".join(f"{name}:{stored}\n" for name, stored in sorted(users.items()))
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.path)

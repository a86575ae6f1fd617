"""The one way a DICOMweb route fails: a `WebError`, which the site turns into the answer."""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from types import MappingProxyType


class WebError(Exception):
    """An HTTP error status and one line that says why (the body of the answer).

    400 bad query, 401 no or bad credentials, 403 forbidden, 404 not found,
    406 no acceptable media type, 409 STOW conflict, 413 too large.
    ``headers`` go out with the answer (``WWW-Authenticate`` of a 401, ``Allow``...).
    """

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        self.status = HTTPStatus(status)
        self.message = " ".join(message.split())
        self.headers: Mapping[str, str] = MappingProxyType(dict(headers or {}))
        super().__init__(f"{self.status.value} {self.status.phrase}: {self.message}")

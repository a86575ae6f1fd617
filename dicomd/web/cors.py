"""Cross-origin reads for browser viewers (the Fetch standard's CORS protocol).

A viewer served from another origin may read our answers only if they name
its origin in ``Access-Control-Allow-Origin``; before a request with
``Authorization`` or a DICOMweb ``Accept``, its browser first asks with an
``OPTIONS`` preflight, which carries no credentials and is answered here,
before authentication.  Only the origins of ``web.cors_origins`` are named
(``*`` names any); for the others no header is added and the browser keeps
the answer from the page.
"""

from __future__ import annotations

from collections.abc import Set
from http import HTTPStatus
from typing import Any, Final

from dicomd.web.context import ANY_ORIGIN

ALLOWED_METHODS: Final = b"GET, HEAD, POST, OPTIONS"
ALLOWED_HEADERS: Final = b"Accept, Authorization, Content-Type"
EXPOSED_HEADERS: Final = b"Content-Location, Content-Length, Warning"
"""Headers a page may read beyond the safelisted ones (STOW's Content-Location, Warning)."""
PREFLIGHT_MAX_AGE: Final = b"600"
"""Seconds a browser may reuse a preflight's answer."""


def allowed_origin(request: Any, origins: Set[str]) -> bytes | None:
    """The ``Access-Control-Allow-Origin`` value for ``request``'s ``Origin``, or None when it
    sends none or one that ``origins`` does not name."""
    values = request.requestHeaders.getRawHeaders(b"origin")
    if not values or len(values) > 1:
        return None
    origin = values[0]
    if ANY_ORIGIN in origins:
        return b"*"
    try:
        text = origin.decode("ascii")
    except UnicodeDecodeError:
        return None
    return origin if text in origins else None


def add_cors_headers(request: Any, origins: Set[str]) -> None:
    """Name the request's origin in the answer when ``origins`` allows it."""
    if not origins:
        return
    request.responseHeaders.addRawHeader(b"vary", b"Origin")
    origin = allowed_origin(request, origins)
    if origin is not None:
        request.setHeader(b"access-control-allow-origin", origin)
        request.setHeader(b"access-control-expose-headers", EXPOSED_HEADERS)


def is_preflight(request: Any) -> bool:
    """An ``OPTIONS`` that asks whether a cross-origin request may be made."""
    return (
        request.method == b"OPTIONS"
        and request.requestHeaders.hasHeader(b"origin")
        and request.requestHeaders.hasHeader(b"access-control-request-method")
    )


def answer_preflight(request: Any, origins: Set[str]) -> bytes:
    """204 with the methods and headers allowed, for an allowed origin; 403 otherwise."""
    if allowed_origin(request, origins) is None:
        request.setResponseCode(HTTPStatus.FORBIDDEN)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"cross-origin requests from this origin are not allowed\n"
    request.setResponseCode(HTTPStatus.NO_CONTENT)
    request.setHeader(b"access-control-allow-methods", ALLOWED_METHODS)
    request.setHeader(b"access-control-allow-headers", ALLOWED_HEADERS)
    request.setHeader(b"access-control-max-age", PREFLIGHT_MAX_AGE)
    return b""

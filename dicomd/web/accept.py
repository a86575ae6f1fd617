"""Content negotiation: the ``Accept`` header parsed once, and the choice among what a route
can answer (PS3.18 8.7.3, RFC 9110 12.5.1).

DICOMweb asks for more than a media type: ``multipart/related;
type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50``.  A media
range here keeps its parameters, and an offer matches a range when their
types match (``*`` standing for any) and each parameter the range names
(but ``q``) has the same value in the offer, ``*`` standing for any value.

The header comes from the network: it is read within bounds (`MOST_RANGES`
ranges, `MOST_LENGTH` bytes), a malformed range is skipped, never fatal,
and nothing acceptable is a 406 (`WebError`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from types import MappingProxyType
from typing import Any, Final

from dicomd.web.errors import WebError

MOST_RANGES: Final = 64
"""Ranges read from one request's Accept headers; the rest are ignored."""
MOST_LENGTH: Final = 8192
"""Bytes of Accept read from one request; the rest are ignored."""

_TOKEN: Final = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_RANGE: Final = re.compile(rf"\s*({_TOKEN})/({_TOKEN})\s*")
_PARAMETER: Final = re.compile(  # a bare type=application/dicom too: viewers send it unquoted
    rf"\s*;\s*({_TOKEN})\s*=\s*(?:({_TOKEN}(?:/{_TOKEN})?)|\"((?:[^\"\\\x00-\x08\x0a-\x1f\x7f]|\\[^\x00-\x08\x0a-\x1f\x7f])*)\")\s*"
)
_QUALITY: Final = re.compile(r"(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)")
_QUOTED_PAIR: Final = re.compile(r"\\(.)")


@dataclass(frozen=True)
class MediaRange:
    """One media range (or offer): lower-case type and subtype, parameters with lower-case
    names (values as sent, unquoted), and its quality (``q``, 1 when absent)."""

    type: str
    subtype: str
    parameters: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    quality: float = 1.0

    @property
    def media_type(self) -> str:
        """``type/subtype``, without parameters."""
        return f"{self.type}/{self.subtype}"

    def matches(self, offer: MediaRange) -> bool:
        """Whether this range accepts ``offer`` (a media type with parameters, no wildcard)."""
        if self.type != "*" and self.type != offer.type:
            return False
        if self.subtype != "*" and self.subtype != offer.subtype:
            return False
        return all(
            value == "*" or _same_value(name, value, offer.parameters.get(name))
            for name, value in self.parameters.items()
        )

    def specificity(self) -> int:
        """How precisely it names a type, to order ranges of equal quality (RFC 9110 12.5.1)."""
        return (self.type != "*") + (self.subtype != "*") + len(self.parameters)


ANY: Final = MediaRange("*", "*")
"""What a request without ``Accept`` accepts."""


def parse_media_range(text: str) -> MediaRange | None:
    """One range (``type/subtype;name=value;q=0.5``), or None when it is malformed."""
    found = _RANGE.match(text)
    if found is None:
        return None
    kind, subtype = found.group(1).lower(), found.group(2).lower()
    if kind == "*" and subtype != "*":
        return None
    parameters: dict[str, str] = {}
    quality = 1.0
    position = found.end()
    while position < len(text):
        parameter = _PARAMETER.match(text, position)
        if parameter is None:
            return None
        position = parameter.end()
        name = parameter.group(1).lower()
        token, quoted = parameter.group(2), parameter.group(3)
        value = token if token is not None else _QUOTED_PAIR.sub(r"\1", quoted)
        if name == "q":
            if token is None or not _QUALITY.fullmatch(token):
                return None
            quality = float(token)
            continue
        if name in parameters:
            return None
        parameters[name] = value
    return MediaRange(kind, subtype, MappingProxyType(parameters), quality)


def parse_accept(values: Sequence[bytes] | None) -> tuple[MediaRange, ...]:
    """The ranges of ``Accept`` header values (as twisted.web gives them), best first: by
    quality, then the more specific, then in the order sent.  Ranges of quality 0 and
    malformed ones are left out; no header at all is ``*/*``."""
    if not values:
        return (ANY,)
    text = b",".join(values)[:MOST_LENGTH].decode("latin-1")
    ranges = []
    for part in _split(text)[:MOST_RANGES]:
        found = parse_media_range(part)
        if found is not None and found.quality > 0:
            ranges.append(found)
    order = sorted(
        range(len(ranges)), key=lambda index: (-ranges[index].quality, -ranges[index].specificity())
    )
    return tuple(ranges[index] for index in order)


def accepted(request: Any) -> tuple[MediaRange, ...]:
    """The ranges ``request`` accepts, best first (see `parse_accept`)."""
    return parse_accept(request.requestHeaders.getRawHeaders(b"accept"))


def choose(request: Any, offers: Sequence[str]) -> str:
    """The offer ``request`` accepts best, as written in ``offers`` (the route's answers,
    its preferred first): the best range that matches any offer picks the first offer it
    matches.  Raises `WebError` 406 naming the offers when it accepts none."""
    parsed = [(offer, parse_media_range(offer)) for offer in offers]
    for wanted in accepted(request):
        for offer, media in parsed:
            if media is not None and wanted.matches(media):
                return offer
    raise not_acceptable(offers)


def not_acceptable(offers: Sequence[str]) -> WebError:
    """The 406 of a request that accepts none of ``offers``."""
    return WebError(
        HTTPStatus.NOT_ACCEPTABLE, f"Accept allows none of the answers: {', '.join(offers)}"
    )


def _same_value(name: str, wanted: str, offered: str | None) -> bool:
    if offered is None:
        return False
    if name in ("type", "charset"):  # case-insensitive, as a media type and a charset are
        return wanted.lower() == offered.lower()
    return wanted == offered


def _split(text: str) -> list[str]:
    """The header split at commas that are outside quoted strings."""
    parts: list[str] = []
    start = 0
    quoted = False
    escaped = False
    for index, character in enumerate(text):
        if escaped:
            escaped = False
        elif character == "\\" and quoted:
            escaped = True
        elif character == '"':
            quoted = not quoted
        elif character == "," and not quoted:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return [part for part in (piece.strip() for piece in parts) if part]

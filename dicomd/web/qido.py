"""QIDO-RS (PS3.18 10.6): search studies, series and instances, answered in DICOM JSON.

A search is a Study Root C-FIND in HTTP clothes.  Its query parameters
become an identifier (`parse_parameters`, `identifier`): attribute matching
by keyword or tag with the C-FIND engine's rules (wildcards ``*`` and ``?``,
ranges ``20200101-20201231``, lists of UIDs separated by commas or
backslashes), return keys from PS3.18's default attributes of the level plus
``includefield``.  The node's find handlers answer it exactly as they answer
C-FIND: the same `FindQuery` (relational, since ``/series`` and
``/instances`` name no parent), and the matches taken by the C-FIND service's
own `stream_matches`, so that the archive's pages are read in its threads as
the client takes the answers.  Each match is shaped to the requested keys as
a C-FIND answer is (`AnswerForm.shape`), gets its RetrieveURL, and goes out as
one object of a JSON array written at the client's pace (`PacedBody`): a
search over the whole archive never holds more than a page of matches.  The
archive's matches come as the index's values, made into DICOM JSON in its
threads as each page is read (`AnswerShape.encode`, a tenth of pydicom's
cost); a plugin's Datasets go through pydicom's ``to_json_dict`` on the
reactor, a few milliseconds' worth per turn.

No match is ``200`` with ``[]``.  PS3.18 8.3.4.4.1 asks for 204, which RFC
9110 forbids to carry a body and CP-2473 replaces with 200; every client
(dicomweb-client, OHIF) reads an empty array.

``fuzzymatching=true`` is honoured by an archive configured with
``case_insensitive_names`` (its person names always match ignoring case and
width, whatever the parameter says); any other handler matches literally, and
the answer carries PS3.18's Warning.  ``limit`` and ``offset`` page through
the matches in the handler's order; the node sets no limit of its own.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final, TypeVar

from pydicom import Dataset, config
from pydicom.datadict import dictionary_VR, keyword_dict, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.tag import BaseTag, Tag
from twisted.internet import defer, task
from twisted.logger import Logger
from zope.interface import implementer

from dicomd.interfaces import (
    FindQuery,
    IAnswerEncoder,
    IEncodedMatches,
    IFindHandler,
    InvalidIdentifier,
    ISupportedKeys,
    Unavailable,
)
from dicomd.node.services.answers import ADDED_KEYS, AnswerForm
from dicomd.node.services.find import Cancelled, stream_matches
from dicomd.uids import EXPLICIT_VR_LITTLE_ENDIAN, STUDY_ROOT_FIND, uid_problem
from dicomd.web.accept import choose
from dicomd.web.context import WebContext, user_of
from dicomd.web.dicomjson import JsonElement, Value, dumps, element_json, tag_key
from dicomd.web.errors import WebError
from dicomd.web.streaming import ClientGone, PacedBody

log = Logger()
_T = TypeVar("_T")

OFFERS: Final = ("application/dicom+json; charset=utf-8", "application/json; charset=utf-8")
"""What a search answers, preferred first; ``*/*`` gets DICOM JSON.  JSON is UTF-8
(RFC 8259): a client may ask for ``charset=utf-8``, and the answer's Content-Type goes
without it, as RFC 8259 defines none."""
FUZZY_WARNING: Final = (
    '299 dicomd: "The fuzzymatching parameter is not supported.'
    ' Only literal matching has been performed."'
)
"""PS3.18 8.3.4.3's Warning for a ``fuzzymatching=true`` the handler cannot honour."""
INCLUDE_ALL: Final = "all"
MOST_DIGITS: Final = 9
"""``limit`` and ``offset`` are whole numbers of at most this many digits."""
FLUSH_BYTES: Final = 1 << 16
"""Answers are written to the client this many bytes at a time."""

LEVELS: Final = ("STUDY", "SERIES", "IMAGE")
DEFAULT_KEYS: Final = {
    "STUDY": (
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "InstanceAvailability",
        "ModalitiesInStudy",
        "ReferringPhysicianName",
        "TimezoneOffsetFromUTC",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyID",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    "SERIES": (
        "Modality",
        "TimezoneOffsetFromUTC",
        "SeriesDescription",
        "SeriesInstanceUID",
        "SeriesNumber",
        "NumberOfSeriesRelatedInstances",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
    ),
    "IMAGE": (
        "SOPClassUID",
        "SOPInstanceUID",
        "InstanceAvailability",
        "TimezoneOffsetFromUTC",
        "InstanceNumber",
        "Rows",
        "Columns",
        "BitsAllocated",
        "NumberOfFrames",
    ),
}
"""PS3.18 Tables 10.6.3-3 to -5 (RetrieveURL is added to every answer).  A handler that
names its supported keys gets only those of them it holds: the rest would always be empty."""
UNIQUE_KEYS: Final = {
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}
_RESOURCES: Final = {"STUDY": "studies", "SERIES": "series", "IMAGE": "instances"}
_PARAMETERS: Final = frozenset({"includefield", "fuzzymatching", "limit", "offset"})
_TAG: Final = re.compile(r"[0-9A-Fa-f]{8}")
_LIST_VRS: Final = frozenset({"UI", "CS"})
"""VRs whose values cannot hold a comma: there it separates values, as in a UID list."""
_RETRIEVE_URL: Final = BaseTag(0x00081190)
_RETRIEVE_URL_KEY: Final = tag_key(_RETRIEVE_URL)
_LEFT_OUT: Final = frozenset(Tag(keyword) for keyword in ADDED_KEYS)
"""What a C-FIND answer adds that a DICOM JSON answer has no use for: JSON is UTF-8, and
the level and AE title are the URL's and RetrieveURL's business."""
_NOT_DATA_GROUPS: Final = frozenset({0x0000, 0x0002, 0xFFFE})
"""Command, file meta and item delimitation groups: never in a data set."""
_ROOT_END: Final = re.compile(r"/(?:studies|series|instances)(?:/|$)")


@dataclass(frozen=True)
class Parameters:
    """A search's query parameters, checked: attribute values by tag (several values joined
    with backslashes), the ``includefield`` tags (or all), and the paging."""

    matches: Mapping[BaseTag, str]
    includes: frozenset[BaseTag]
    include_all: bool
    fuzzy: bool
    limit: int | None
    offset: int


def parse_parameters(args: Mapping[bytes, Sequence[bytes]]) -> Parameters:
    """The parameters of a query string as twisted.web parses it (``request.args``).

    Raises `WebError` 400 naming the first parameter that is not UTF-8, not an
    attribute of the dictionary (by keyword or by tag), or not a valid value.
    A repeated attribute matches any of its values.
    """
    matches: dict[BaseTag, list[str]] = {}
    includes: set[BaseTag] = set()
    include_all = False
    fuzzy = False
    limit: int | None = None
    offset = 0
    for raw_name, raw_values in args.items():
        name = _text(raw_name, "a parameter name")
        values = [_text(value, name) for value in raw_values]
        if name == "includefield":
            for field in (field.strip() for value in values for field in value.split(",")):
                if field == INCLUDE_ALL:
                    include_all = True
                elif field:
                    includes.add(_attribute(field, "includefield"))
        elif name == "fuzzymatching":
            fuzzy = _boolean(name, _single(name, values))
        elif name == "limit":
            limit = _count(name, _single(name, values))
        elif name == "offset":
            offset = _count(name, _single(name, values))
        else:
            tag = _attribute(name, name)
            vr = _vr(tag)
            if vr == "SQ":
                raise _bad(name, "a sequence cannot be matched")
            for value in values:
                if vr in _LIST_VRS:
                    value = value.replace(",", "\\")
                matches.setdefault(tag, []).append(value)
    return Parameters(
        {tag: "\\".join(values) for tag, values in matches.items()},
        frozenset(includes),
        include_all,
        fuzzy,
        limit,
        offset,
    )


def identifier(
    parameters: Parameters,
    level: str,
    study: str | None,
    series: str | None,
    supported: Collection[str] | None,
) -> Dataset:
    """The C-FIND identifier of a search at ``level`` within ``study`` and ``series`` (their
    UIDs from the path, or None): the matching keys with their values, the unique keys of
    the level and of those above it, the default keys of every level not fixed by the path,
    and the included ones; ``supported`` (the handler's keys, None when it does not say)
    filters the defaults and names what ``includefield=all`` adds."""
    fixed = {"StudyInstanceUID": study, "SeriesInstanceUID": series}
    for keyword, uid in fixed.items():
        if uid is not None and Tag(keyword) in parameters.matches:
            raise _bad(keyword, "it is already in the path")
    depth = LEVELS.index(level)
    keywords: list[str] = [UNIQUE_KEYS[above] for above in LEVELS[: depth + 1]]
    for above in LEVELS[: depth + 1]:
        if fixed.get(UNIQUE_KEYS[above]) is None:
            keywords += [k for k in DEFAULT_KEYS[above] if supported is None or k in supported]
    if parameters.include_all and supported is not None:
        keywords += sorted(supported)
    tags = {Tag(keyword) for keyword in keywords}
    tags |= parameters.includes
    tags |= set(parameters.matches)
    tags -= {_RETRIEVE_URL, *_LEFT_OUT}
    values = {Tag(keyword): uid for keyword, uid in fixed.items() if uid is not None}
    values.update(parameters.matches)
    found = Dataset()
    for tag in sorted(tags):
        found.add(_element(tag, values.get(tag)))
    found.QueryRetrieveLevel = level
    return found


async def search(
    request: Any, context: WebContext, level: str, study: str | None, series: str | None
) -> None:
    """Answer a QIDO-RS search at ``level`` ("STUDY", "SERIES" or "IMAGE") within ``study``
    and ``series`` (UIDs from the path, or None): a DICOM JSON array written to
    ``request``.  Raises `WebError` 400 for a bad query, 406 when the client takes no
    JSON, 501 when no find handler answers Study Root queries, 503 when it cannot now."""
    media = choose(request, OFFERS)
    parameters = parse_parameters(request.args)
    handler = study_root_handler(context.find_handlers)
    supported = await _supported_keys(handler, level)
    query = FindQuery(
        identifier(parameters, level, study, series, supported),
        STUDY_ROOT_FIND,
        level,
        calling_ae_title="",
        called_ae_title=context.ae_title,
        peer_host=user_of(request).host,
        relational=True,
    )
    try:
        found = await _closed_if_cancelled(defer.maybeDeferred(handler.find, query))
    except InvalidIdentifier as error:
        raise WebError(HTTPStatus.BAD_REQUEST, str(error)) from None
    except Unavailable as error:
        raise WebError(HTTPStatus.SERVICE_UNAVAILABLE, str(error)) from None
    request.setHeader(b"content-type", media.partition(";")[0].encode("ascii"))
    if parameters.fuzzy and not matches_names_fuzzily(handler):
        request.setHeader(b"warning", FUZZY_WARNING.encode("ascii"))
    shape = AnswerShape(query, service_root(request, context))
    await _JsonAnswers(request, shape, parameters).write_all(found, context.reactor)


def study_root_handler(handlers: Iterable[IFindHandler]) -> IFindHandler:
    """The handler the C-FIND service would ask for a Study Root query: the first naming it."""
    for handler in handlers:
        if STUDY_ROOT_FIND in handler.find_models:
            return handler
    raise WebError(HTTPStatus.NOT_IMPLEMENTED, "no find handler answers Study Root queries")


def matches_names_fuzzily(handler: IFindHandler) -> bool:
    """Whether ``handler`` matches person names ignoring case: PS3.18's fuzzy matching, as
    far as dicomd goes.  The archive says so by its query engine's
    ``case_insensitive_names`` (read here by name: this layer does not import the
    archive); any other handler is taken to match literally."""
    engine = getattr(handler, "query", None)
    return getattr(engine, "case_insensitive_names", False) is True


def service_root(request: Any, context: WebContext) -> str:
    """Where the DICOMweb service is rooted, for RetrieveURLs: ``context.base_url``, else
    the request's scheme and Host with the path before its first ``/studies``,
    ``/series`` or ``/instances``."""
    if context.base_url:
        return context.base_url.rstrip("/")
    path = request.path.decode("utf-8", "replace")
    found = _ROOT_END.search(path)
    prefix = path[: found.start()] if found else path.rstrip("/")
    host_header = request.getHeader(b"host")
    if host_header:
        host = host_header.decode("latin-1")
    else:
        address = request.getHost()
        host = f"{address.host}:{address.port}"
    scheme = "https" if request.isSecure() else "http"
    return f"{scheme}://{host}{prefix}"


def retrieve_url(root: str, level: str, value_of: Callable[[str], Any]) -> str | None:
    """The WADO-RS URL of a match at ``level``, whose UIDs ``value_of`` gives by keyword;
    None when one is missing or is not one UID."""
    parts = [root]
    for above in LEVELS[: LEVELS.index(level) + 1]:
        uid = value_of(UNIQUE_KEYS[above])
        if not isinstance(uid, str) or uid_problem(uid) is not None:
            return None
        parts += [_RESOURCES[above], str(uid)]
    return "/".join(parts)


@implementer(IAnswerEncoder)
class AnswerShape:
    """The DICOM JSON answer to ``query`` for one match: the C-FIND answer's keys
    (`AnswerForm.shape`) without its Specific Character Set, level and AE title, and the
    match's RetrieveURL under ``root``.

    A match comes as a Dataset (`of_dataset`, the reference, through pydicom) or as
    the index's values (`encode`, ``IAnswerEncoder``: the same bytes, made straight
    from the values in the archive's threads as it reads each page).
    """

    def __init__(self, query: FindQuery, root: str) -> None:
        self.form = AnswerForm(query, "", EXPLICIT_VR_LITTLE_ENDIAN)
        self.level = query.level
        self.root = root
        self.encodes_values = all(key.vr != "SQ" for key in self.form.keys)
        """Whether `encode` may make answers (else it always answers None)."""
        entries = [
            (tag_key(key.tag), keyword_for_tag(key.tag), _vr(key.tag), key.vr)
            for key in self.form.keys
            if key.tag not in _LEFT_OUT
        ]
        entries.append((_RETRIEVE_URL_KEY, None, "UR", "UR"))  # None: the match's URL
        self._entries = sorted(entries)

    def of_dataset(self, match: Dataset) -> bytes:
        answer = self.form.shape(match)
        for tag in _LEFT_OUT:
            if tag in answer:
                del answer[tag]
        url = retrieve_url(self.root, self.level, answer.get)
        if url is not None:
            answer.add(DataElement(_RETRIEVE_URL, "UR", url))
        as_json = answer.to_json_dict(bulk_data_threshold=1 << 30, suppress_invalid_tags=True)
        return dumps(dict(sorted(as_json.items())))  # pydicom keeps the order of insertion

    def encode(self, values: Mapping[str, Value]) -> bytes | None:
        """The answer `of_dataset` gives for a Dataset holding ``values`` (each of its
        keyword's dictionary VR), or None when only pydicom can write it."""
        if not self.encodes_values:
            return None
        answer: dict[str, JsonElement] = {}
        for name, keyword, vr, empty_vr in self._entries:
            if keyword is None:
                url = retrieve_url(self.root, self.level, values.get)
                if url is not None:
                    answer[name] = {"vr": vr, "Value": [url]}
                continue
            value = values.get(keyword)
            element = element_json(empty_vr if value is None else vr, value)
            if element is None:
                return None
            answer[name] = element
        return dumps(answer)


class _JsonAnswers:
    """The answers to one search, written as a JSON array at the client's pace."""

    def __init__(self, request: Any, shape: AnswerShape, parameters: Parameters) -> None:
        self.request = request
        self.shape = shape
        self.limit = parameters.limit
        self.to_skip = parameters.offset
        self.sent = 0
        self.body = PacedBody(request)
        self.pending: list[bytes] = [b"["]
        self.pending_bytes = 1

    def stopped(self) -> bool:
        """The client left, or has all it asked for."""
        return self.body.gone or (self.limit is not None and self.sent >= self.limit)

    async def write_all(
        self, found: Iterable[Dataset] | AsyncIterable[Dataset], reactor: Any
    ) -> None:
        """Write every match the client asked for, then close the array.  Matches that fail
        before any of the answer went out are a 503; after, the connection is cut."""
        if self.shape.encodes_values and IEncodedMatches.providedBy(found):
            found = found.encoded(self.shape)
        cooperator = task.Cooperator(scheduler=lambda work: reactor.callLater(0, work))
        try:
            try:
                await stream_matches(cooperator, found, self._take, self.stopped)
            except Cancelled:
                if self.body.gone:
                    return
            self.pending.append(b"]")
            await self._flush()
        except ClientGone:
            return
        except (Unavailable, OSError) as error:
            if not self.request.startedWriting:
                raise WebError(HTTPStatus.SERVICE_UNAVAILABLE, str(error)) from None
            log.warn(
                "QIDO-RS: answer cut short after {sent} matches: {why}", sent=self.sent, why=error
            )
            await self._abort()
        finally:
            self.body.close()

    def _take(self, match: Dataset | bytes) -> defer.Deferred[None] | None:
        if self.to_skip:
            self.to_skip -= 1
            return None
        if self.limit is not None and self.sent >= self.limit:
            return None
        text = match if isinstance(match, bytes) else self.shape.of_dataset(match)
        self.pending.append(b"," + text if self.sent else text)
        self.pending_bytes += len(text) + 1
        self.sent += 1
        if self.pending_bytes < FLUSH_BYTES:
            return None
        return defer.ensureDeferred(self._flush())

    async def _flush(self) -> None:
        data = b"".join(self.pending)
        self.pending = []
        self.pending_bytes = 0
        await self.body.write(data)

    async def _abort(self) -> None:
        """End an answer that cannot be whole so that the client sees it cut short, and
        wait for the connection to be gone (the route must not finish the request)."""
        finished = self.request.notifyFinish()
        finished.addErrback(lambda _: None)
        self.request.channel.transport.abortConnection()
        await finished


def _closed_if_cancelled(finding: defer.Deferred[_T]) -> defer.Deferred[_T]:
    """``finding``, whose cancellation (the client left) lets the handler finish and then
    closes what it answers (``aclose``), so that the read it opened ends at once."""

    def cancel(waiting: defer.Deferred[_T]) -> None:
        finding.addCallbacks(_close_matches, lambda _: None)

    def hand_over(result: Any) -> Any:
        if waiting.called:
            return result  # the cancelled search's, for cancel's callbacks
        waiting.callback(result)
        return None

    waiting: defer.Deferred[_T] = defer.Deferred(cancel)
    finding.addBoth(hand_over)
    return waiting


def _close_matches(found: Any) -> None:
    close = getattr(found, "aclose", None)
    if close is not None:
        defer.ensureDeferred(close()).addErrback(
            lambda failure: log.failure("could not close a search's matches", failure)
        )


async def _supported_keys(handler: IFindHandler, level: str) -> frozenset[str] | None:
    if not ISupportedKeys.providedBy(handler):
        return None
    return frozenset(await defer.maybeDeferred(handler.supported_keys, level))


def _element(tag: BaseTag, value: str | None) -> DataElement:
    """An identifier's element: its dictionary VR (the first of an ambiguous one), the value
    as the client wrote it, judged by the find handler and not here."""
    return DataElement(tag, _vr(tag), value, validation_mode=config.IGNORE)


def _vr(tag: BaseTag) -> str:
    return dictionary_VR(tag).split(" or ")[0]


def _attribute(text: str, parameter: str) -> BaseTag:
    """The tag of a keyword or of eight hexadecimal digits; public dictionary attributes
    only, since the handlers know no others."""
    tag = None
    if _TAG.fullmatch(text):
        tag = Tag(int(text, 16))
        tag = tag if keyword_for_tag(tag) else None
    elif text in keyword_dict:
        tag = Tag(keyword_dict[text])
    if tag is not None and tag.group not in _NOT_DATA_GROUPS and tag.element != 0:
        return tag
    raise _bad(parameter, f"{text[:64]!r} is not an attribute of the DICOM dictionary")


def _text(raw: bytes, parameter: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad(parameter[:64], "it is not UTF-8") from None


def _single(name: str, values: Sequence[str]) -> str:
    if len(values) != 1:
        raise _bad(name, "it may be given once")
    return values[0]


def _boolean(name: str, value: str) -> bool:
    if value not in ("true", "false"):
        raise _bad(name, f"expected true or false, got {value[:32]!r}")
    return value == "true"


def _count(name: str, value: str) -> int:
    if not (value.isascii() and value.isdigit() and len(value) <= MOST_DIGITS):
        raise _bad(
            name, f"expected a whole number of at most {MOST_DIGITS} digits, got {value[:32]!r}"
        )
    return int(value)


def _bad(parameter: str, why: str) -> WebError:
    return WebError(HTTPStatus.BAD_REQUEST, f"query parameter {parameter[:64]!r}: {why}")

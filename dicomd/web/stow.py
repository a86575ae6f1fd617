"""STOW-RS (PS3.18 10.5): Part 10 files POSTed as ``multipart/related``, each stored as the
data set of a C-STORE is.

twisted.web has spooled the body (to a temporary file past 100 kB) by the
time the route runs.  A thread reads it a piece at a time through the
streaming `MultipartReader`: each part's File Meta Information gives what a
C-STORE's command gives (SOP Class and Instance UIDs, transfer syntax), the
same refusals apply (UIDs that break the rules, a SOP class or transfer
syntax the node does not take), and its data set streams into the incoming
folder behind our File Meta, followed by the walker as a C-STORE's is
(`CheckedFile`, with the same inflation limits).  On the reactor, the
node's C-STORE chain then judges it through `store_received`, exactly as it
judges a C-STORE: a success means the instance is whole, durable and
indexed, and the file no handler kept is removed.  A few parts are judged
while the thread reads the next ones.

The answer is the Store Instances Response Module (PS3.18 Annex I) in
DICOM JSON (or XML when asked): 200 when every instance was stored, 202
when some failed or drew a warning, 409 when none was stored.  The request
itself can be refused: 415 for a body that is not Part 10 files, 400 for
one that is not a readable multipart body, 413 past ``web.max_stow_length``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, BinaryIO, Final
from xml.sax.saxutils import escape

from pydicom import Dataset
from pydicom.datadict import keyword_for_tag
from pydicom.tag import Tag
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from dicomd import uids
from dicomd.dimse.storage import CheckedFile, Status, attributes_read, store_received, uid_refusal
from dicomd.dimse.walker import checker_for
from dicomd.part10 import IncomingFile, Part10Error, Part10Header, file_meta, read_header_from
from dicomd.web.accept import choose, parse_media_range
from dicomd.web.context import StoreSettings, WebContext, user_of
from dicomd.web.errors import WebError
from dicomd.web.multipart_reader import PART_END, MultipartError, MultipartReader, PartHeaders

log = Logger()

DICOM: Final = "application/dicom"
DICOM_JSON: Final = "application/dicom+json"
DICOM_XML: Final = "application/dicom+xml"
ANSWERS: Final = (DICOM_JSON, "application/json", DICOM_XML)
BASE: Final = "/dicom-web"

STUDY_MISMATCH: Final = 0xA901
"""Failure Reason of an instance of another study than the one the request names: in the
A9xx range of PS3.18 Table I.2-2, the code other DICOMweb archives use for it."""
TRANSFER_SYNTAX_NOT_SUPPORTED: Final = 0xC122
"""PS3.18 Table I.2-2."""

_PIECE: Final = 1 << 20
"""Bytes of the spooled body read at a time."""
_MOST_META: Final = 64 * 1024
"""Bytes of a part gathered to read its File Meta Information; a larger meta is refused."""
MOST_PARTS: Final = 50_000
"""Parts one request may hold: a large study's instances, not a million empty parts whose
answer alone would take the node's memory."""
_MOST_LOGGED: Final = 10
"""Parts not stored that one request logs a line each for; one more line counts the rest."""
_IN_FLIGHT: Final = 32
"""Parts judged by the store chain at once, while the next ones are read: more than the
archive has threads, so that stores waiting for a flush or a commit share it (small
instances: 32 store about twice as many per second as 8, 64 little more than 32)."""
_WHERE: Final = frozenset(
    int(Tag(keyword)) for keyword in ("StudyInstanceUID", "SeriesInstanceUID")
)
"""Collected from every part: the study it must belong to, and its RetrieveURL."""


class BodyTooLong(Exception):
    """The body is longer than the node takes (``web.max_stow_length``), or holds more parts
    than `MOST_PARTS`; the message says which."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one part: its SOP Class and Instance UIDs when it named them, the
    status the store chain (or a refusal) gave it, and where it can be retrieved."""

    status: Status
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None

    @property
    def stored(self) -> bool:
        return uids.status_category(self.status.code) in ("success", "warning")


@dataclass(frozen=True, slots=True)
class ReceivedPart:
    """A part whose data set was written into the incoming folder, checked as it went."""

    checked: CheckedFile
    header: Part10Header

    def collected(self, keyword: str) -> str | None:
        """A UID the walker collected from the data set's top level, or None."""
        attributes = self.checked.checker.collected_in_part if self.checked.checker else None
        if attributes is None or keyword not in attributes:
            return None
        try:
            value = attributes[keyword].value
        except Exception:  # a hostile value pydicom cannot decode is no UID
            return None
        return str(value).strip("\0 ") if value else None


async def store(request: Any, context: WebContext, study: str | None) -> bytes:
    """Store each Part 10 file of the request's body and answer what became of each."""
    boundary = _boundary(request)
    answer_type = choose(request, ANSWERS)
    declared = request.getHeader(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > context.max_stow_length:
        raise WebError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, _too_long(context.max_stow_length))
    reader = PartReader(request.content, boundary, context)
    outcomes = await _store_parts(request, context, study, reader)
    if not outcomes:
        raise WebError(HTTPStatus.BAD_REQUEST, "the body holds no part")
    _log_failures(request, outcomes)
    reactor = context.reactor
    root = _root(request, context)
    code, content_type, body = await deferToThreadPool(
        reactor, reactor.getThreadPool(), _answer, root, study, outcomes, answer_type
    )
    request.setResponseCode(code)
    request.setHeader(b"content-type", content_type)
    return body


async def _store_parts(
    request: Any, context: WebContext, study: str | None, reader: PartReader
) -> list[Outcome]:
    """Read the parts in a thread, one after the other, and judge up to `_IN_FLIGHT` at
    once; once the body has been read (or found wrong), wait for every judgement.

    The parts judged when the client leaves are judged to the end (their files are kept
    or removed as the chain says), and the part being read is removed once read.
    """
    turns = defer.DeferredSemaphore(_IN_FLIGHT)
    judged: list[defer.Deferred[Outcome]] = []
    problem: WebError | None = None
    while True:
        try:
            await turns.acquire()
        except defer.CancelledError:
            reader.close()
            raise
        try:
            part = await _next_part(context.reactor, reader)
        except MultipartError as error:
            message = f"the body is not a multipart body: {error}"
            problem = WebError(HTTPStatus.BAD_REQUEST, _after(message, len(judged)))
        except BodyTooLong as error:
            problem = WebError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, _after(str(error), len(judged)))
        if problem is not None or part is None:
            turns.release()
            reader.close()
            break
        judgement = _judge(request, context, study, part)
        judgement.addBoth(_released, turns)
        judged.append(judgement)
    everything = defer.DeferredList(judged, consumeErrors=True)
    outcomes = [outcome for _, outcome in await _shielded(everything, lambda _: None)]
    if problem is not None:
        raise problem
    for outcome in outcomes:
        if not isinstance(outcome, Outcome):
            outcome.raiseException()  # a defect: the site logs it
    return outcomes


def _next_part(reactor: Any, reader: PartReader) -> defer.Deferred[ReceivedPart | Outcome | None]:
    """The reader's next part, read in a thread.  Cancelled (the client left), the thread
    still reads to the end of its part: the file it wrote is then removed and the reader
    closed, rather than left in the incoming folder."""

    def too_late(result: object) -> None:
        if isinstance(result, ReceivedPart):
            result.checked.file.remove()
        reader.close()

    reading = deferToThreadPool(reactor, reactor.getThreadPool(), reader.next_part)
    return _shielded(reading, too_late)


def _shielded(work: defer.Deferred[Any], too_late: Any) -> defer.Deferred[Any]:
    """A Deferred of ``work``'s result that can be cancelled without cancelling ``work``
    (a thread, or a store chain, which must run to its end): a result that comes after
    the cancellation goes to ``too_late``."""
    answer: defer.Deferred[Any] = defer.Deferred()

    def hand_over(result: object) -> None:
        if answer.called:
            too_late(result)
        else:
            answer.callback(result)  # a Failure goes down the errbacks

    work.addBoth(hand_over)
    return answer


def _released(result: object, turns: defer.DeferredSemaphore) -> object:
    turns.release()
    return result


def _judge(
    request: Any, context: WebContext, study: str | None, part: ReceivedPart | Outcome
) -> defer.Deferred[Outcome]:
    """On the reactor: the store chain's answer about one received part, as for a C-STORE."""
    if isinstance(part, Outcome):
        return defer.succeed(part)
    header = part.header
    named = {
        "sop_class_uid": header.sop_class_uid,
        "sop_instance_uid": header.sop_instance_uid,
        "study_uid": part.collected("StudyInstanceUID"),
        "series_uid": part.collected("SeriesInstanceUID"),
    }
    if study is not None and named["study_uid"] != study:
        part.checked.file.remove()
        refused = Outcome(Status(STUDY_MISMATCH, f"of study {named['study_uid']}"), **named)
        return defer.succeed(refused)
    address = request.getClientAddress()
    stored = store_received(
        context.store_handlers,
        part.checked,
        calling_ae_title="",
        called_ae_title=context.ae_title,
        peer_host=user_of(request).host,
        peer_port=int(getattr(address, "port", 0) or 0),
        sop_class_uid=header.sop_class_uid,
        sop_instance_uid=header.sop_instance_uid,
        transfer_syntax=header.transfer_syntax,
    )
    return stored.addCallback(lambda status: Outcome(status, **named))


def _log_failures(request: Any, outcomes: Sequence[Outcome]) -> None:
    """A line for each part not stored, up to `_MOST_LOGGED`, and one for the rest."""
    failed = [outcome for outcome in outcomes if not outcome.stored]
    host = user_of(request).host
    for outcome in failed[:_MOST_LOGGED]:
        log.warn(
            "STOW-RS from {host}: {uid} not stored, {code}: {comment}",
            host=host,
            uid=outcome.sop_instance_uid or "a part",
            code=f"{outcome.status.code:04X}",
            comment=outcome.status.comment,
        )
    if len(failed) > _MOST_LOGGED:
        log.warn(
            "STOW-RS from {host}: {count} more parts of the request not stored",
            host=host,
            count=len(failed) - _MOST_LOGGED,
        )


class PartReader:
    """Blocking, in a thread: the parts of a spooled STOW-RS body, one per call.

    Each part is read and written whole before the call returns; memory
    holds one piece of the body and the head of one part.  Calls must not
    overlap.
    """

    def __init__(self, content: BinaryIO, boundary: str, context: WebContext) -> None:
        self.content = content
        self.reader = MultipartReader(boundary)
        self.incoming = context.incoming
        self.settings: StoreSettings = context.store_settings
        self.most = context.max_stow_length
        self.wanted = attributes_read(context.store_handlers) | _WHERE
        self.transfer_syntaxes = frozenset(self.settings.transfer_syntaxes) | (
            uids.KNOWN_TRANSFER_SYNTAXES
        )
        self._read = 0
        self._events: Iterator[Any] = iter(())
        self._writing: CheckedFile | None = None

    def next_part(self) -> ReceivedPart | Outcome | None:
        """The next part, written and checked (`ReceivedPart`) or refused (`Outcome`); None
        after the last.  Raises `MultipartError` or `BodyTooLong`."""
        headers = self._next_event()
        if headers is None:
            return None
        assert isinstance(headers, PartHeaders)
        if self.reader.parts > MOST_PARTS:
            raise BodyTooLong(f"the body holds more than {MOST_PARTS} parts")
        media = headers.content_type
        if media is not None and media.media_type != DICOM:
            self._skip_part()
            return Outcome(Status(uids.Status.CANNOT_UNDERSTAND, f"a part of {media.media_type}"))
        head = bytearray()
        ended = False
        while len(head) < _MOST_META:
            event = self._next_event()
            if event is PART_END:
                ended = True
                break
            head += event
        try:
            header = _meta_of(bytes(head), ended)
        except Part10Error as error:
            if not ended:
                self._skip_part()
            return Outcome(Status(uids.Status.CANNOT_UNDERSTAND, f"not a Part 10 file: {error}"))
        refusal = self._refusal(header)
        if refusal is not None:
            if not ended:
                self._skip_part()
            return Outcome(refusal, header.sop_class_uid, header.sop_instance_uid)
        return ReceivedPart(
            self._write(header, memoryview(head)[header.data_set_offset :], ended), header
        )

    def close(self) -> None:
        """Remove the file of a part cut short by an error; not while `next_part` runs."""
        writing, self._writing = self._writing, None
        if writing is not None:
            writing.discard()

    def _refusal(self, header: Part10Header) -> Status | None:
        """What a C-STORE of this instance would be refused with before its data set."""
        refusal = uid_refusal(header.sop_class_uid, header.sop_instance_uid)
        if refusal is not None:
            return refusal
        if not (
            header.sop_class_uid in uids.STORAGE_SOP_CLASSES
            or self.settings.accept_unknown_sop_classes
        ):
            return Status(uids.Status.SOP_CLASS_NOT_SUPPORTED, "SOP class not supported")
        if header.transfer_syntax not in self.transfer_syntaxes:
            return Status(TRANSFER_SYNTAX_NOT_SUPPORTED, "transfer syntax not supported")
        return None

    def _write(self, header: Part10Header, start: memoryview, ended: bool) -> CheckedFile:
        meta = file_meta(header.sop_class_uid, header.sop_instance_uid, header.transfer_syntax, "")
        checker = checker_for(header.transfer_syntax, self.settings.inflation, self.wanted)
        checked = self._writing = CheckedFile(IncomingFile(self.incoming, meta), checker)
        checked.write(bytes(start))
        while not ended:
            event = self._next_event()
            if event is PART_END:
                break
            checked.write(event)
        self._writing = None
        return checked.finish()

    def _skip_part(self) -> None:
        while self._next_event() is not PART_END:
            pass

    def _next_event(self) -> Any:
        """The reader's next event, reading the body as needed; None at its end."""
        while True:
            event = next(self._events, None)
            if event is not None:
                return event
            piece = self.content.read(_PIECE)
            if not piece:
                self.reader.end()
                return None
            self._read += len(piece)
            if self._read > self.most:
                raise BodyTooLong(_too_long(self.most))
            self._events = self.reader.feed(piece)


def _meta_of(head: bytes, ended: bool) -> Part10Header:
    """The File Meta Information at the start of a part (``head``, the whole part when it
    ``ended``); raises `Part10Error`."""
    header = read_header_from(io.BytesIO(head), len(head))
    if not ended and len(head) - header.data_set_offset < 8:
        raise Part10Error(f"its file meta is longer than {_MOST_META} bytes")
    return header


def _boundary(request: Any) -> str:
    """The boundary of a ``multipart/related; type="application/dicom"`` body: 415 for
    any other type, 400 when it has no boundary that can be one."""
    raw = request.getHeader(b"content-type")
    media = parse_media_range(raw.decode("latin-1")) if raw is not None else None
    if media is None or media.media_type != "multipart/related":
        raise WebError(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            f'STOW-RS takes multipart/related; type="{DICOM}", not {_shown(raw)}',
        )
    root = media.parameters.get("type", DICOM).lower()
    if root != DICOM:
        raise WebError(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            f"STOW-RS takes parts of {DICOM}, not {root[:80]!r} (no metadata and bulk data)",
        )
    boundary = media.parameters.get("boundary")
    if boundary is None:
        raise WebError(HTTPStatus.BAD_REQUEST, "the Content-Type names no boundary")
    try:
        MultipartReader(boundary)
    except MultipartError as error:
        raise WebError(HTTPStatus.BAD_REQUEST, str(error)) from None
    return boundary


def _after(message: str, judged: int) -> str:
    """The message of a request refused once ``judged`` of its parts were judged: those
    stored stay stored."""
    if not judged:
        return message
    return f"{message} (the {judged} parts before were judged: those stored stay)"


def _too_long(most: int) -> str:
    return f"the body is longer than {most} bytes (web.max_stow_length)"


def _shown(raw: bytes | None) -> str:
    if raw is None:
        return "a body without Content-Type"
    return repr(raw.decode("latin-1")[:80])


# -- The answer (PS3.18 10.5.3 and Annex I) ------------------------------------------------------


def _answer(
    root: str, study: str | None, outcomes: Sequence[Outcome], answer_type: str
) -> tuple[HTTPStatus, bytes, bytes]:
    """In a thread (tens of thousands of parts take seconds): the HTTP status, the
    Content-Type and the body of the answer."""
    stored = [outcome for outcome in outcomes if outcome.stored]
    if not stored:
        code = HTTPStatus.CONFLICT
    elif len(stored) == len(outcomes) and all(o.status.code == 0 for o in stored):
        code = HTTPStatus.OK
    else:
        code = HTTPStatus.ACCEPTED
    response = response_dataset(root, study, outcomes)
    if answer_type == DICOM_XML:
        return code, b"application/dicom+xml; charset=utf-8", native_xml(response)
    encoded = json.dumps(response.to_json_dict(), separators=(",", ":")).encode("utf-8")
    return code, answer_type.encode("ascii"), encoded


def response_dataset(root: str, study: str | None, outcomes: Sequence[Outcome]) -> Dataset:
    """The Store Instances Response Module (PS3.18 Table I.1-1) of ``outcomes``."""
    response = Dataset()
    stored = [outcome for outcome in outcomes if outcome.stored]
    studies = {outcome.study_uid for outcome in stored}
    study_of_all = study or (studies.pop() if len(studies) == 1 else None)
    response.RetrieveURL = f"{root}/studies/{study_of_all}" if stored and study_of_all else ""
    failed = [o for o in outcomes if not o.stored and o.sop_instance_uid and o.sop_class_uid]
    others = [o for o in outcomes if not o.stored and not (o.sop_instance_uid and o.sop_class_uid)]
    if failed:
        response.FailedSOPSequence = [_reference(outcome) for outcome in failed]
        for item, outcome in zip(response.FailedSOPSequence, failed, strict=True):
            item.FailureReason = outcome.status.code
    if stored:
        response.ReferencedSOPSequence = [_reference(outcome) for outcome in stored]
        for item, outcome in zip(response.ReferencedSOPSequence, stored, strict=True):
            item.RetrieveURL = _instance_url(root, outcome)
            if outcome.status.code:
                item.WarningReason = outcome.status.code
    if others:
        response.OtherFailuresSequence = [_failure(outcome) for outcome in others]
    return response


def _reference(outcome: Outcome) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = outcome.sop_class_uid
    item.ReferencedSOPInstanceUID = outcome.sop_instance_uid
    return item


def _failure(outcome: Outcome) -> Dataset:
    item = Dataset()
    item.FailureReason = outcome.status.code
    return item


def _instance_url(root: str, outcome: Outcome) -> str:
    if not (outcome.study_uid and outcome.series_uid):
        return ""
    return (
        f"{root}/studies/{outcome.study_uid}/series/{outcome.series_uid}"
        f"/instances/{outcome.sop_instance_uid}"
    )


def _root(request: Any, context: WebContext) -> str:
    """Where the DICOMweb services are rooted: ``web.base_url``, else the request's own
    scheme and host, and `BASE`."""
    if context.base_url:
        return context.base_url.rstrip("/")
    host = (request.getHeader(b"host") or b"localhost").decode("ascii", "replace")
    scheme = "https" if request.isSecure() else "http"
    return f"{scheme}://{host}{BASE}"


def native_xml(dataset: Dataset) -> bytes:
    """``dataset`` in the Native DICOM Model (PS3.19 A.1), for the few VRs of the response
    (UI, UR, US and sequences of them)."""
    lines = ['<?xml version="1.0" encoding="UTF-8"?>']
    lines.append('<NativeDicomModel xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM">')
    _xml_attributes(dataset, lines)
    lines.append("</NativeDicomModel>")
    return "\n".join(lines).encode("utf-8") + b"\n"


def _xml_attributes(dataset: Dataset, lines: list[str]) -> None:
    for element in dataset:
        tag = f"{element.tag:08X}"
        keyword = keyword_for_tag(element.tag)
        lines.append(f'<DicomAttribute tag="{tag}" vr="{element.VR}" keyword="{keyword}">')
        if element.VR == "SQ":
            for number, item in enumerate(element.value, start=1):
                lines.append(f'<Item number="{number}">')
                _xml_attributes(item, lines)
                lines.append("</Item>")
        elif element.value not in (None, ""):
            lines.append(f'<Value number="1">{escape(str(element.value))}</Value>')
        lines.append("</DicomAttribute>")

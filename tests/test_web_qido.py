"""QIDO-RS over a real archive (started on the reactor, in a temporary folder).

Each search goes through `dicomd.web.qido.search` with a real twisted.web
``Request`` on an in-memory channel, as the site's route would call it; the
answer is read back from the bytes the channel was given.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import Dataset, config
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.tag import Tag
from twisted.internet import reactor
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    ensureDeferred,
    gatherResults,
    inlineCallbacks,
)
from twisted.internet.error import ConnectionLost
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web import server
from twisted.web.test.requesthelper import DummyChannel

from dicomd.archive import ArchiveHandler
from dicomd.archive.query import ArchiveQuery
from dicomd.interfaces import FindQuery, Unavailable
from dicomd.uids import STUDY_ROOT_FIND
from dicomd.web.context import WebContext
from dicomd.web.errors import WebError
from dicomd.web.qido import FUZZY_WARNING, AnswerShape, identifier, parse_parameters, search
from tests.support.received import ct_small, received, status_of

HOST = "pacs.example:8042"
ROOT = f"http://{HOST}/dicom-web"


def uid(*parts: int) -> str:
    return "1.2.826.0.1.3680043.10.14." + ".".join(map(str, parts))


STUDIES = [
    # (study, patient name, patient id, date, modality, series count, instances per series)
    (1, "Doe^John", "P1", "20200115", "CT", 2, 3),
    (2, "Doe^Jane", "P2", "20200620", "MR", 1, 2),
    (3, "Roe^Richard", "P3", "20210301", "CT", 1, 1),
]


def instances() -> list[Dataset]:
    made = []
    for study, name, patient, date, modality, series_count, per_series in STUDIES:
        for series in range(1, series_count + 1):
            for number in range(1, per_series + 1):
                made.append(
                    ct_small(
                        PatientName=name,
                        PatientID=patient,
                        StudyInstanceUID=uid(study),
                        StudyDate=date,
                        StudyDescription=f"study {study}",
                        SeriesInstanceUID=uid(study, series),
                        SeriesNumber=series,
                        Modality=modality,
                        SOPInstanceUID=uid(study, series, number),
                        InstanceNumber=number,
                    )
                )
    return made


class Answer:
    """What the channel was sent: the status, the headers and the body."""

    def __init__(self, written: bytes) -> None:
        head, _, self.body = written.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()

    def json(self) -> list[dict[str, Any]]:
        return json.loads(self.body)

    def values(self, keyword_tag: str) -> list[Any]:
        """Each answer's first value of the attribute of that tag (None when it has none)."""
        return [(found.get(keyword_tag, {}).get("Value") or [None])[0] for found in self.json()]


def get_request(url: str, accept: str | None = None) -> server.Request:
    """A GET of ``url`` (path and query) as twisted.web hands it to a resource."""
    channel = DummyChannel()
    request = server.Request(channel)
    request.method = b"GET"
    request.clientproto = b"HTTP/1.0"  # an answer without chunks: the body as written
    request.uri = url.encode("utf-8")
    parts = urlsplit(url)
    request.path = parts.path.encode("utf-8")
    request.args = {
        name.encode(): [v.encode() for v in values]
        for name, values in parse_qs(parts.query, keep_blank_values=True).items()
    }
    request.requestHeaders.setRawHeaders(b"host", [HOST.encode()])
    if accept is not None:
        request.requestHeaders.setRawHeaders(b"accept", [accept.encode()])
    return request


class QidoTests(unittest.TestCase):
    options: ClassVar[dict[str, Any]] = {}

    def setUp(self) -> Any:
        self.folder = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.folder)
        archive = self.folder / "archive"
        self.handler = ArchiveHandler(archive, reactor=reactor, **self.options)
        self.handler.startService()
        self.addCleanup(lambda: self.handler.stopService() if self.handler.running else None)
        self.context = self.context_with([self.handler])
        stored = [self.handler.store(received(archive, ds)) for ds in instances()]
        return gatherResults(stored).addCallback(self.all_stored)

    def all_stored(self, answers: list[Any]) -> None:
        self.assertEqual({status_of(answer)[0] for answer in answers}, {0})

    def context_with(self, handlers: list[Any]) -> WebContext:
        return WebContext(
            ae_title="DICOMD",
            find_handlers=handlers,
            retrieve_source=self.handler,
            store_handlers=[self.handler],
            incoming=self.folder / "archive" / ".incoming",
            reactor=reactor,
            base_url=None,
            max_stow_length=1 << 20,
        )

    async def answer(
        self,
        url: str,
        level: str,
        study: str | None = None,
        series: str | None = None,
        accept: str | None = None,
        context: WebContext | None = None,
    ) -> Answer:
        request = get_request("/dicom-web" + url, accept)
        transport = request.channel.transport
        await search(request, context or self.context, level, study, series)
        request.finish()
        return Answer(transport.written.getvalue())

    def search(self, url: str, level: str, *args: Any, **kwargs: Any) -> Any:
        return ensureDeferred(self.answer(url, level, *args, **kwargs))

    def refused(self, url: str, level: str, *args: Any, **kwargs: Any) -> Any:
        """The `WebError` a search raises (the site makes it the answer)."""
        d = self.search(url, level, *args, **kwargs)
        return self.assertFailure(d, WebError)


class StudySearchTests(QidoTests):
    @inlineCallbacks
    def test_every_study_once_with_the_default_keys_counts_and_retrieve_url(self):
        answer = yield self.search("/studies", "STUDY")

        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.headers["content-type"], "application/dicom+json")
        studies = {found["0020000D"]["Value"][0]: found for found in answer.json()}
        self.assertEqual(set(studies), {uid(1), uid(2), uid(3)})
        first = studies[uid(1)]
        self.assertEqual(first["00100010"], {"vr": "PN", "Value": [{"Alphabetic": "Doe^John"}]})
        self.assertEqual(first["00080020"]["Value"], ["20200115"])
        self.assertEqual(first["00080061"]["Value"], ["CT"])
        self.assertEqual(first["00201206"]["Value"], [2])  # series in the study
        self.assertEqual(first["00201208"]["Value"], [6])  # instances in the study
        self.assertEqual(first["00081190"], {"vr": "UR", "Value": [f"{ROOT}/studies/{uid(1)}"]})
        for left_out in ("00080005", "00080052", "00080054"):
            self.assertNotIn(left_out, first)

    @inlineCallbacks
    def test_attribute_matching_by_keyword_or_tag_with_wildcards_ranges_and_uid_lists(self):
        by_name = yield self.search("/studies?PatientName=Doe*", "STUDY")
        by_tag = yield self.search("/studies?00100010=D?e%5EJane", "STUDY")
        by_date = yield self.search("/studies?StudyDate=20200101-20201231", "STUDY")
        by_uids = yield self.search(f"/studies?StudyInstanceUID={uid(1)},{uid(3)}", "STUDY")
        repeated = yield self.search("/studies?PatientID=P2&PatientID=P3", "STUDY")

        self.assertEqual(sorted(by_name.values("0020000D")), [uid(1), uid(2)])
        self.assertEqual(by_tag.values("0020000D"), [uid(2)])
        self.assertEqual(sorted(by_date.values("0020000D")), [uid(1), uid(2)])
        self.assertEqual(sorted(by_uids.values("0020000D")), [uid(1), uid(3)])
        self.assertEqual(sorted(repeated.values("0020000D")), [uid(2), uid(3)])

    @inlineCallbacks
    def test_no_match_is_an_empty_array(self):
        answer = yield self.search("/studies?PatientID=nobody", "STUDY")

        self.assertEqual((answer.status, answer.json()), (200, []))

    @inlineCallbacks
    def test_limit_and_offset_page_through_the_matches_in_order(self):
        whole = yield self.search("/studies", "STUDY")
        pages = []
        for offset in range(0, 4, 2):
            page = yield self.search(f"/studies?limit=2&offset={offset}", "STUDY")
            pages += page.values("0020000D")
        none = yield self.search("/studies?limit=0", "STUDY")
        past = yield self.search("/studies?offset=3", "STUDY")

        self.assertEqual(pages, whole.values("0020000D"))
        self.assertEqual((none.json(), past.json()), ([], []))

    @inlineCallbacks
    def test_includefield_adds_keywords_and_tags_and_all_adds_what_the_index_holds(self):
        default = yield self.search("/studies", "STUDY")
        some = yield self.search("/studies?includefield=StudyDescription,00100021", "STUDY")
        every = yield self.search("/studies?includefield=all", "STUDY")

        self.assertNotIn("00081030", default.json()[0])
        self.assertIn("study 1", some.values("00081030"))
        self.assertEqual(some.json()[0]["00100021"], {"vr": "LO"})  # asked for, held by none
        self.assertIn("00081030", every.json()[0])  # StudyDescription: the index holds it

    @inlineCallbacks
    def test_json_is_answered_to_clients_that_take_it_and_406_to_others(self):
        plain_json = yield self.search("/studies", "STUDY", accept="application/json")
        anything = yield self.search("/studies", "STUDY", accept="*/*")
        utf8 = yield self.search("/studies", "STUDY", accept="application/json; charset=UTF-8")
        error = yield self.refused("/studies", "STUDY", accept="text/html")
        latin1 = yield self.refused("/studies", "STUDY", accept="application/json;charset=latin1")

        self.assertEqual(plain_json.headers["content-type"], "application/json")
        self.assertEqual(anything.headers["content-type"], "application/dicom+json")
        self.assertEqual(utf8.headers["content-type"], "application/json")
        self.assertEqual((error.status, latin1.status), (406, 406))

    @inlineCallbacks
    def test_bad_parameters_are_400_naming_the_parameter(self):
        cases = {
            "/studies?NoSuchKeyword=1": "NoSuchKeyword",
            "/studies?00991010=1": "00991010",
            "/studies?includefield=Nope": "includefield",
            "/studies?limit=-1": "limit",
            "/studies?offset=ten": "offset",
            "/studies?limit=1&limit=2": "limit",
            "/studies?fuzzymatching=maybe": "fuzzymatching",
            "/studies?ReferencedStudySequence=1": "ReferencedStudySequence",
            "/studies?StudyDate=2020*": "StudyDate",
        }
        for url, parameter in cases.items():
            error = yield self.refused(url, "STUDY")
            self.assertEqual(error.status, 400, url)
            self.assertIn(parameter, error.message, url)
            self.assertNotIn("\n", error.message)

    @inlineCallbacks
    def test_fuzzymatching_warns_that_names_matched_literally(self):
        fuzzy = yield self.search("/studies?PatientName=doe*&fuzzymatching=true", "STUDY")
        literal = yield self.search("/studies?PatientName=Doe*&fuzzymatching=false", "STUDY")

        self.assertEqual(fuzzy.headers["warning"], FUZZY_WARNING)
        self.assertEqual(fuzzy.json(), [])  # case matters to this archive
        self.assertNotIn("warning", literal.headers)
        self.assertEqual(len(literal.json()), 2)

    @inlineCallbacks
    def test_a_plugin_answering_a_list_is_searched_as_c_find_searches_it(self):
        plugin = ListHandler()
        answer = yield self.search(
            "/studies?PatientID=X1&fuzzymatching=true",
            "STUDY",
            context=self.context_with([plugin, self.handler]),
        )

        self.assertEqual(answer.values("0020000D"), ["1.2.3"])
        self.assertEqual(answer.json()[0]["00100020"]["Value"], ["X1"])
        self.assertEqual(answer.headers["warning"], FUZZY_WARNING)
        self.assertEqual(plugin.queries[0].identifier.PatientID, "X1")
        self.assertTrue(plugin.queries[0].relational)


class CaseInsensitiveArchiveTests(QidoTests):
    options: ClassVar[dict[str, Any]] = {"case_insensitive_names": True}

    @inlineCallbacks
    def test_an_archive_matching_names_ignoring_case_honours_fuzzymatching(self):
        answer = yield self.search("/studies?PatientName=doe*&fuzzymatching=true", "STUDY")

        self.assertNotIn("warning", answer.headers)
        self.assertEqual(sorted(answer.values("0020000D")), [uid(1), uid(2)])


class LowerLevelTests(QidoTests):
    @inlineCallbacks
    def test_series_of_a_study_and_series_of_every_study(self):
        within = yield self.search(f"/studies/{uid(1)}/series", "SERIES", uid(1))
        every = yield self.search("/series?Modality=CT", "SERIES")

        self.assertEqual(sorted(within.values("0020000E")), [uid(1, 1), uid(1, 2)])
        self.assertEqual(
            within.json()[0]["00081190"]["Value"][0].rsplit("/series/", 1)[0],
            f"{ROOT}/studies/{uid(1)}",
        )
        self.assertNotIn("00100010", within.json()[0])  # study keys are the path's
        self.assertEqual(sorted(every.values("0020000E")), [uid(1, 1), uid(1, 2), uid(3, 1)])
        self.assertIn("00100010", every.json()[0])  # no study in the path: study keys too

    @inlineCallbacks
    def test_instances_of_a_series_of_a_study_and_of_the_archive(self):
        of_series = yield self.search(
            f"/studies/{uid(1)}/series/{uid(1, 2)}/instances", "IMAGE", uid(1), uid(1, 2)
        )
        of_study = yield self.search(f"/studies/{uid(1)}/instances", "IMAGE", uid(1))
        listed = yield self.search(
            f"/instances?SOPInstanceUID={uid(2, 1, 2)},{uid(3, 1, 1)}", "IMAGE"
        )

        self.assertEqual(sorted(of_series.values("00080018")), [uid(1, 2, n) for n in (1, 2, 3)])
        self.assertEqual(
            of_series.json()[0]["00081190"]["Value"][0],
            f"{ROOT}/studies/{uid(1)}/series/{uid(1, 2)}/instances/{uid(1, 2, 1)}",
        )
        self.assertEqual(len(of_study.json()), 6)
        self.assertIn("00080060", of_study.json()[0])  # series keys: no series in the path
        self.assertEqual(sorted(listed.values("00080018")), [uid(2, 1, 2), uid(3, 1, 1)])

    @inlineCallbacks
    def test_a_uid_of_the_path_cannot_be_a_parameter_too(self):
        error = yield self.refused(
            f"/studies/{uid(1)}/series?StudyInstanceUID={uid(2)}", "SERIES", uid(1)
        )

        self.assertEqual(error.status, 400)
        self.assertIn("StudyInstanceUID", error.message)


class StreamTests(QidoTests):
    @inlineCallbacks
    def test_a_limit_reached_ends_the_archive_s_read_before_its_last_page(self):
        self.handler.query.page_rows = 2
        answer = yield self.search("/instances?limit=3", "IMAGE")

        self.assertEqual(len(answer.json()), 3)
        yield until(lambda: self.handler.query.idle_connections == 1)  # read closed, kept

    @inlineCallbacks
    def test_matches_that_fail_before_any_answer_went_out_are_a_503(self):
        context = self.context_with([FailingHandler(matches=1)])

        error = yield self.refused("/studies", "STUDY", context=context)

        self.assertEqual((error.status, error.message), (503, "the archive is stopping"))

    @inlineCallbacks
    def test_matches_that_fail_half_way_cut_the_answer_short_with_one_log_line(self):
        request = get_request("/dicom-web/studies")
        transport = AbortingTransport(request)
        request.channel.transport = transport
        context = self.context_with([FailingHandler(matches=500)])  # past a write or two

        with capturedLogs() as events:
            yield ensureDeferred(search(request, context, "STUDY", None, None))

        self.assertTrue(transport.aborted)
        self.assertTrue(transport.written.getvalue().startswith(b"HTTP/1.0 200"))
        lines = [formatEvent(event) for event in events]
        self.assertEqual(len(lines), 1, lines)
        self.assertRegex(lines[0], r"cut short after \d+ matches: the archive is stopping")
        self.assertFalse(any(event.get("log_failure") for event in events))

    def test_a_client_gone_while_the_handler_finds_has_its_matches_closed(self):
        handler = SlowHandler()
        searching = ensureDeferred(
            search(
                get_request("/dicom-web/studies"), self.context_with([handler]), "STUDY", None, None
            )
        )
        searching.addErrback(lambda failure: failure.trap(CancelledError))

        searching.cancel()  # what klein does when the connection is lost
        self.assertFalse(handler.matches.closed)
        handler.finding.callback(handler.matches)

        self.assertTrue(handler.matches.closed)


class AbortingTransport(DummyChannel.TCP):
    """A transport whose abort loses the request's connection, as a real one does."""

    def __init__(self, request: server.Request) -> None:
        super().__init__()
        self.request = request
        self.aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        reactor.callLater(0, self.request.connectionLost, Failure(ConnectionLost()))


class FailingHandler:
    """A find plugin whose matches fail after the first few: their source went away."""

    find_models = (STUDY_ROOT_FIND,)

    def __init__(self, matches: int) -> None:
        self.matches = matches

    def find(self, query: FindQuery) -> AsyncIterator[Dataset]:
        async def matches() -> AsyncIterator[Dataset]:
            for number in range(self.matches):
                match = Dataset()
                match.StudyInstanceUID = f"1.2.3.{number}"
                yield match
            raise Unavailable("the archive is stopping")

        return matches()


class ClosableMatches:
    """Matches that say whether they were closed."""

    def __init__(self) -> None:
        self.closed = False

    def __aiter__(self) -> ClosableMatches:
        return self

    async def __anext__(self) -> Dataset:
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self.closed = True


class SlowHandler:
    """A find plugin that answers when the test says."""

    find_models = (STUDY_ROOT_FIND,)

    def __init__(self) -> None:
        self.finding: Deferred[ClosableMatches] = Deferred()
        self.matches = ClosableMatches()

    def find(self, query: FindQuery) -> Deferred[ClosableMatches]:
        return self.finding


def until(condition: Callable[[], bool]) -> Deferred[None]:
    """Fires on the first turn of the reactor on which ``condition`` holds."""
    reached: Deferred[None] = Deferred()

    def check() -> None:
        if condition():
            reached.callback(None)
        else:
            reactor.callLater(0.001, check)

    check()
    return reached


class ListHandler:
    """A find plugin that answers every Study Root query with one study, as a list."""

    find_models = (STUDY_ROOT_FIND,)

    def __init__(self) -> None:
        self.queries: list[FindQuery] = []

    def find(self, query: FindQuery) -> list[Dataset]:
        self.queries.append(query)
        match = Dataset()
        match.StudyInstanceUID = "1.2.3"
        match.PatientID = query.identifier.PatientID
        return [match]


# The query string parser, on hostile input

names = st.one_of(
    st.sampled_from(
        [
            b"includefield",
            b"limit",
            b"offset",
            b"fuzzymatching",
            b"PatientName",
            b"00100010",
            b"StudyInstanceUID",
            b"ReferencedStudySequence",
            b"0020000D",
            b"FFFEE000",
            b"00000000",
        ]
    ),
    st.binary(max_size=12),
)
values = st.one_of(
    st.sampled_from([b"all", b"true", b"false", b"10", b"-1", b"1,2", b"*", b"PatientName"]),
    st.binary(max_size=24),
    st.text(max_size=24).map(lambda text: text.encode("utf-8", "surrogatepass")),
)


@settings(max_examples=400, deadline=None)
@given(
    st.dictionaries(names, st.lists(values, min_size=1, max_size=3), max_size=6),
    st.sampled_from(["STUDY", "SERIES", "IMAGE"]),
    st.sampled_from([None, "1.2.3"]),
    st.booleans(),
)
def test_any_query_string_is_parameters_or_a_400(args, level, study, archive_keys):
    supported = ArchiveQuery(lambda: None).supported_keys(level) if archive_keys else None
    try:
        parameters = parse_parameters(args)
        found = identifier(parameters, level, study, None, supported)
    except WebError as error:
        assert error.status == 400
        assert "\n" not in error.message
        return
    assert found.QueryRetrieveLevel == level
    assert "StudyInstanceUID" in found
    assert parameters.offset >= 0
    assert parameters.limit is None or parameters.limit >= 0


# Answers made from the index's values are those pydicom makes of a Dataset of them

TEXT_KEYWORDS = [
    "PatientName",
    "ReferringPhysicianName",
    "PatientID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyDescription",
    "Modality",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
]
NUMBER_KEYWORDS = ["InstanceNumber", "SeriesNumber", "NumberOfStudyRelatedInstances"]
texts = st.text(alphabet=st.sampled_from("Ab1.^=\\ -éあ"), max_size=12)
index_values = st.fixed_dictionaries(
    {},
    optional={
        **{keyword: st.one_of(st.none(), texts) for keyword in TEXT_KEYWORDS},
        **{
            keyword: st.one_of(st.none(), st.integers(0, 10**6), texts)
            for keyword in NUMBER_KEYWORDS
        },
        "ModalitiesInStudy": st.lists(st.sampled_from(["CT", "MR", ""]), max_size=3),
    },
)


def dataset_of(values: dict[str, Any]) -> Dataset:
    """The values as the archive makes a match of them: each of its dictionary VR."""
    found = Dataset()
    for keyword, value in values.items():
        if value is not None and value != "":
            tag = Tag(keyword)
            found.add(DataElement(tag, dictionary_VR(tag), value, validation_mode=config.IGNORE))
    return found


@settings(max_examples=500, deadline=None)
@given(index_values, st.sampled_from(["STUDY", "SERIES", "IMAGE"]))
def test_answers_from_values_are_those_pydicom_writes(values, level):
    keywords = [*TEXT_KEYWORDS, *NUMBER_KEYWORDS, "ModalitiesInStudy"]
    parameters = parse_parameters({b"includefield": [",".join(keywords).encode()]})
    query = FindQuery(
        identifier(parameters, level, None, None, None), STUDY_ROOT_FIND, level, "", "DICOMD", "h"
    )
    shape = AnswerShape(query, ROOT)

    encoded = shape.encode(values)

    if encoded is not None:
        assert encoded == shape.of_dataset(dataset_of(values))
    plain = all(
        isinstance(value, int)
        or (
            isinstance(value, str)
            and (value.isdigit() or keyword not in NUMBER_KEYWORDS)
            and value.isalnum()
        )
        for keyword, value in values.items()
    )
    assert encoded is not None or not plain

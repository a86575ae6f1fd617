"""STOW-RS through the site, into a real archive in a temporary folder.

Each request is written as bytes into the site's HTTP channel over a
StringTransport (no socket); the archive runs its threads on the real
reactor, which ``twisted.trial`` spins until each test's Deferred fires.
What the archive kept is compared with what was sent, byte for byte.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.http import HTTPChannel

from dicomd.archive import ArchiveHandler
from dicomd.dimse.walker import InflationLimits
from dicomd.part10 import read_header
from dicomd.web import stow
from dicomd.web.context import StoreSettings, WebContext
from dicomd.web.multipart_reader import MultipartError
from dicomd.web.site import web_site
from dicomd.web.stow import STUDY_MISMATCH, TRANSFER_SYNTAX_NOT_SUPPORTED
from tests.support.archive import ArchiveView
from tests.support.received import ct_small

BOUNDARY = "stow-test-boundary"
STUDY = "1.2.826.0.1.3680043.10.9.1"
OTHER_STUDY = "1.2.826.0.1.3680043.10.9.2"
SERIES = "1.2.826.0.1.3680043.10.9.1.1"
RELATED = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def instance(
    n: int, study: str = STUDY, syntax: str = ExplicitVRLittleEndian, **changes: Any
) -> bytes:
    """A Part 10 file of CT_small with UIDs of its own."""
    ds = ct_small(
        StudyInstanceUID=study,
        SeriesInstanceUID=SERIES,
        SOPInstanceUID=f"1.2.826.0.1.3680043.10.9.1.1.{n}",
        **changes,
    )
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    out = io.BytesIO()
    if syntax == DeflatedExplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(out, enforce_file_format=True)
    else:
        ds.save_as(out, enforce_file_format=True, implicit_vr=False, little_endian=True)
    return out.getvalue()


def data_set_of(part10: bytes) -> bytes:
    """The data set's bytes, after the File Meta Information."""
    with tempfile.NamedTemporaryFile() as file:
        file.write(part10)
        file.flush()
        return part10[read_header(file.name).data_set_offset :]


def multipart(parts: Sequence[bytes | tuple[str, bytes]], close: bool = True) -> bytes:
    out = io.BytesIO()
    for part in parts:
        kind, content = part if isinstance(part, tuple) else ("application/dicom", part)
        out.write(f"--{BOUNDARY}\r\nContent-Type: {kind}\r\n\r\n".encode())
        out.write(content + b"\r\n")
    if close:
        out.write(f"--{BOUNDARY}--\r\n".encode())
    return out.getvalue()


class Answer:
    """An HTTP answer read from the transport: its body whole, chunked or not."""

    def __init__(self, head: bytes, body: bytes) -> None:
        status_line, *lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines)
        }
        self.body = body

    def json(self) -> dict[str, Any]:
        assert self.headers["content-type"] == "application/dicom+json", self.headers
        return json.loads(self.body)  # type: ignore[no-any-return]


def answer_in(raw: bytes) -> Answer | None:
    """The answer ``raw`` holds, or None while it is not all there."""
    head, found, rest = raw.partition(b"\r\n\r\n")
    if not found:
        return None
    answer = Answer(head, b"")
    if "content-length" in answer.headers:
        length = int(answer.headers["content-length"])
        answer.body = rest[:length]
        return answer if len(rest) >= length else None
    body = b""
    while True:  # chunked
        size_line, found, rest = rest.partition(b"\r\n")
        if not found:
            return None
        size = int(size_line, 16)
        if size == 0:
            answer.body = body
            return answer
        if len(rest) < size + 2:
            return None
        body, rest = body + rest[:size], rest[size + 2 :]


def sequence(answer: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    return answer.get(tag, {}).get("Value", [])


def value(item: dict[str, Any], tag: str) -> Any:
    return item[tag]["Value"][0] if "Value" in item.get(tag, {}) else None


class StowTests(unittest.TestCase):
    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.folder)
        self.archive_path = self.folder / "archive"
        self.view = ArchiveView(self.archive_path)

    def web(self, max_stow_length: int = 1 << 30, **options: Any) -> WebContext:
        settings = options.pop("store_settings", StoreSettings())
        archive = ArchiveHandler(self.archive_path, reactor=reactor, **options)
        archive.startService()
        self.addCleanup(lambda: archive.stopService() if archive.running else None)
        self.archive = archive
        return WebContext(
            ae_title="DICOMD",
            find_handlers=(archive,),
            retrieve_source=archive,
            store_handlers=(archive,),
            incoming=self.archive_path / ".incoming",
            reactor=reactor,
            base_url=None,
            max_stow_length=max_stow_length,
            store_settings=settings,
        )

    def post(
        self,
        web: WebContext,
        body: bytes,
        path: str = "/dicom-web/studies",
        content_type: str = RELATED,
        headers: dict[str, str] | None = None,
    ) -> Deferred[Answer]:
        """POST ``body`` and fire with the answer once it is all written."""
        transport = self.send(web, body, path, content_type, headers)[1]
        answered: Deferred[Answer] = Deferred()

        def check() -> None:
            answer = answer_in(transport.value())
            if answer is not None:
                answered.callback(answer)
            else:
                reactor.callLater(0.001, check)

        check()
        return answered

    def send(
        self,
        web: WebContext,
        body: bytes,
        path: str = "/dicom-web/studies",
        content_type: str = RELATED,
        headers: dict[str, str] | None = None,
    ) -> tuple[HTTPChannel, StringTransport]:
        """Write the request into a new HTTP channel of the site."""
        site = web_site(web, None, timeout=60)
        address = IPv4Address("TCP", "10.0.0.7", 40000)
        channel = site.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        channel.makeConnection(transport)
        self.addCleanup(channel.connectionLost, Failure(ConnectionDone()))
        lines = [f"POST {path} HTTP/1.1", "Host: dicomd.test", f"Content-Type: {content_type}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        lines.append(f"Content-Length: {len(body)}")
        channel.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        return channel, transport

    def settled(self) -> Deferred[None]:
        """Fires once nothing has moved for a while: no thread of the reactor's pool or of
        the archive working or waiting to, and nothing in the incoming folder, on five
        checks in a row (a thread's result reaches the reactor between two of them); or
        after ten seconds, for the test's assertions to say what is left."""
        done: Deferred[None] = Deferred()
        pool = reactor.getThreadPool()
        quiet = [0]
        deadline = reactor.seconds() + 10

        def check() -> None:
            busy = pool.working or pool.q.qsize() or self.archive._in_flight.count
            quiet[0] = 0 if busy or self.view.incoming() else quiet[0] + 1
            if quiet[0] >= 5 or reactor.seconds() > deadline:
                done.callback(None)
            else:
                reactor.callLater(0.01, check)

        reactor.callLater(0.01, check)
        return done

    def kept(self) -> dict[str, bytes]:
        """SOP Instance UID -> the data set of the file the archive keeps for it."""
        return {
            uid: data_set_of((self.archive_path / path).read_bytes())
            for uid, path in self.view.indexed().items()
        }

    @inlineCallbacks
    def test_stores_every_part_as_sent_and_answers_where_to_retrieve_it(self):
        web = self.web()
        sent = [instance(n) for n in range(5)]
        answer = yield self.post(web, multipart(sent))
        self.assertEqual(answer.status, 200, answer.body)
        response = answer.json()
        self.assertEqual(
            value(response, "00081190"), f"http://dicomd.test/dicom-web/studies/{STUDY}"
        )
        referenced = sequence(response, "00081199")
        self.assertEqual(len(referenced), 5)
        self.assertNotIn("00081198", response)
        uid = value(referenced[2], "00081155")
        self.assertEqual(
            value(referenced[2], "00081190"),
            f"http://dicomd.test/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{uid}",
        )
        self.assertEqual(value(referenced[2], "00081150"), "1.2.840.10008.5.1.4.1.1.2")
        kept = self.kept()
        self.assertEqual(sorted(kept), sorted(dcmread(io.BytesIO(p)).SOPInstanceUID for p in sent))
        for part in sent:
            self.assertEqual(kept[dcmread(io.BytesIO(part)).SOPInstanceUID], data_set_of(part))
        self.assertEqual(self.view.partial_files(), [])

    @inlineCallbacks
    def test_a_large_body_spooled_to_disk_is_stored_whole(self):
        web = self.web()
        pixels = bytes(range(256)) * (3 * 1024 * 4)  # 3 MiB of pixel data
        sent = [
            instance(
                n,
                Rows=1024,
                Columns=1536,
                BitsAllocated=16,
                BitsStored=16,
                HighBit=15,
                PixelData=pixels,
            )
            for n in range(3)
        ]
        answer = yield self.post(web, multipart(sent))
        self.assertEqual(answer.status, 200, answer.body)
        kept = self.kept()
        for part in sent:
            self.assertEqual(kept[dcmread(io.BytesIO(part)).SOPInstanceUID], data_set_of(part))

    @inlineCallbacks
    def test_an_instance_of_another_study_than_the_target_is_refused(self):
        web = self.web()
        mine, other = instance(1), instance(2, study=OTHER_STUDY)
        answer = yield self.post(web, multipart([mine, other]), path=f"/dicom-web/studies/{STUDY}")
        self.assertEqual(answer.status, 202, answer.body)
        response = answer.json()
        failed = sequence(response, "00081198")
        self.assertEqual([value(item, "00081197") for item in failed], [STUDY_MISMATCH])
        self.assertEqual(value(failed[0], "00081155"), dcmread(io.BytesIO(other)).SOPInstanceUID)
        self.assertEqual(len(sequence(response, "00081199")), 1)
        self.assertEqual(list(self.kept()), [dcmread(io.BytesIO(mine)).SOPInstanceUID])
        self.assertEqual(self.view.partial_files(), [])

        answer = yield self.post(web, multipart([other]), path=f"/dicom-web/studies/{STUDY}")
        self.assertEqual(answer.status, 409, answer.body)
        self.assertNotIn("00081199", answer.json())
        self.assertEqual(self.view.partial_files(), [])

    @inlineCallbacks
    def test_duplicates_answer_the_archives_status(self):
        web = self.web(duplicates="reject")
        yield self.post(web, multipart([instance(1)]))
        answer = yield self.post(web, multipart([instance(1)]))
        self.assertEqual(answer.status, 409)
        self.assertEqual(value(sequence(answer.json(), "00081198")[0], "00081197"), 0x0111)
        answer = yield self.post(web, multipart([instance(1), instance(2)]))
        self.assertEqual(answer.status, 202)
        self.assertEqual(self.view.partial_files(), [])

    @inlineCallbacks
    def test_a_duplicate_kept_first_is_a_warning(self):
        web = self.web(duplicates="keep-first")
        yield self.post(web, multipart([instance(1)]))
        answer = yield self.post(web, multipart([instance(1)]))
        self.assertEqual(answer.status, 202)
        referenced = sequence(answer.json(), "00081199")
        self.assertEqual(value(referenced[0], "00081196"), 0xB000)

    @inlineCallbacks
    def test_parts_that_are_not_whole_part10_files_fail_with_a_reason(self):
        web = self.web()
        good = instance(1)
        cut_short = instance(2)[:-100]
        no_prefix = b"\x00" * 200
        meta_disagrees = instance(3).replace(
            b"1.2.826.0.1.3680043.10.9.1.1.3", b"1.2.826.0.1.3680043.10.9.1.1.4", 1
        )
        with capturedLogs() as events:
            answer = yield self.post(
                web,
                multipart([good, ("text/plain", b"hello"), cut_short, no_prefix, meta_disagrees]),
            )
        self.assertEqual(answer.status, 202, answer.body)
        response = answer.json()
        failed = {
            value(item, "00081155"): value(item, "00081197")
            for item in sequence(response, "00081198")
        }
        self.assertEqual(
            failed,
            {
                "1.2.826.0.1.3680043.10.9.1.1.2": 0xC000,  # the walker: not whole
                "1.2.826.0.1.3680043.10.9.1.1.4": 0x0117,  # the archive: the data set is another
            },
        )
        others = [value(item, "00081197") for item in sequence(response, "0008119A")]
        self.assertEqual(others, [0xC000, 0xC000])
        self.assertEqual(list(self.kept()), ["1.2.826.0.1.3680043.10.9.1.1.1"])
        self.assertEqual(self.view.partial_files(), [])
        logged = [event["log_format"] for event in events if "log_failure" not in event]
        self.assertEqual(sum("not stored" in line for line in logged), 4)
        self.assertFalse(any("log_failure" in event for event in events))

    @inlineCallbacks
    def test_refusals_before_the_data_set_are_those_of_c_store(self):
        web = self.web()
        unknown_class = instance(1, SOPClassUID="1.2.3.4.5.6")
        private_syntax = instance(2).replace(
            b"1.2.840.10008.1.2.1\x00", b"1.2.3.4.5.6.7.8.9.1\x00", 1
        )
        answer = yield self.post(web, multipart([unknown_class, private_syntax]))
        self.assertEqual(answer.status, 409, answer.body)
        reasons = sorted(value(item, "00081197") for item in sequence(answer.json(), "00081198"))
        self.assertEqual(reasons, [0x0122, TRANSFER_SYNTAX_NOT_SUPPORTED])
        self.assertEqual(self.view.partial_files(), [])

    @inlineCallbacks
    def test_a_deflated_instance_is_stored_and_a_deflate_bomb_is_not(self):
        web = self.web(store_settings=StoreSettings(inflation=InflationLimits(max_length=1 << 20)))
        deflated = instance(1, syntax=DeflatedExplicitVRLittleEndian)
        bomb_ds = ct_small(
            SOPInstanceUID="1.2.826.0.1.3680043.10.9.1.1.9", PixelData=bytes(8 << 20)
        )
        bomb_ds.file_meta.MediaStorageSOPInstanceUID = bomb_ds.SOPInstanceUID
        bomb_ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        out = io.BytesIO()
        bomb_ds.save_as(out, enforce_file_format=True)
        answer = yield self.post(web, multipart([deflated, out.getvalue()]))
        self.assertEqual(answer.status, 202, answer.body)
        failed = sequence(answer.json(), "00081198")
        self.assertEqual(value(failed[0], "00081155"), "1.2.826.0.1.3680043.10.9.1.1.9")
        self.assertEqual(value(failed[0], "00081197"), 0xC000)
        self.assertEqual(list(self.kept()), ["1.2.826.0.1.3680043.10.9.1.1.1"])
        self.assertLess(len(out.getvalue()), 1 << 20)

    @inlineCallbacks
    def test_answers_in_xml_when_asked(self):
        web = self.web()
        answer = yield self.post(
            web,
            multipart([instance(1), ("text/plain", b"x")]),
            headers={"Accept": "application/dicom+xml"},
        )
        self.assertEqual(answer.status, 202)
        self.assertTrue(answer.headers["content-type"].startswith("application/dicom+xml"))
        root = ElementTree.fromstring(answer.body)
        ns = {"d": "http://dicom.nema.org/PS3.19/models/NativeDICOM"}
        referenced = root.find("d:DicomAttribute[@keyword='ReferencedSOPSequence']", ns)
        assert referenced is not None
        url = referenced.find("d:Item/d:DicomAttribute[@tag='00081190']/d:Value", ns)
        assert url is not None and url.text is not None
        self.assertTrue(url.text.endswith("/instances/1.2.826.0.1.3680043.10.9.1.1.1"))
        other = root.find(
            "d:DicomAttribute[@keyword='OtherFailuresSequence']/d:Item/d:DicomAttribute", ns
        )
        assert other is not None
        self.assertEqual(other.get("tag"), "00081197")

    @inlineCallbacks
    def test_bad_requests_are_refused_with_one_line(self):
        web = self.web(max_stow_length=50_000)
        cases = [
            (multipart([instance(1)]), "application/dicom", 415),
            (
                multipart([instance(1)]),
                'multipart/related; type="application/dicom+json"; boundary=x',
                415,
            ),
            (multipart([instance(1)]), 'multipart/related; type="application/dicom"', 400),
            (
                multipart([instance(1)]),
                f'multipart/related; type="application/dicom"; boundary="{"x" * 71}"',
                400,
            ),
            (multipart([instance(1)], close=False), RELATED, 400),
            (b"no boundary anywhere", RELATED, 400),
            (multipart([]), RELATED, 400),
            (multipart([instance(1)] * 20), RELATED, 413),
        ]
        for body, content_type, status in cases:
            answer = yield self.post(web, body, content_type=content_type)
            self.assertEqual(answer.status, status, (content_type, answer.body))
            self.assertEqual(answer.body.count(b"\n"), 1, answer.body)
        self.assertEqual(self.kept(), {})
        self.assertEqual(self.view.partial_files(), [])

    @inlineCallbacks
    def test_a_body_of_too_many_parts_is_413_and_failures_are_logged_ten_at_most(self):
        self.patch(stow, "MOST_PARTS", 14)
        web = self.web()
        with capturedLogs() as events:
            answer = yield self.post(web, multipart([("text/plain", b"x")] * 12 + [instance(1)]))
        self.assertEqual(answer.status, 202)
        lines = [formatEvent(event) for event in events if "STOW-RS" in formatEvent(event)]
        self.assertEqual(len(lines), 11, lines)
        self.assertIn("2 more parts of the request not stored", lines[-1])
        answer = yield self.post(web, multipart([instance(2)] + [("text/plain", b"x")] * 14))
        self.assertEqual(answer.status, 413)
        self.assertEqual(
            answer.body,
            b"the body holds more than 14 parts (the 14 parts before were judged: "
            b"those stored stay)\n",
        )
        self.assertEqual(len(self.kept()), 2)
        self.assertEqual(self.view.partial_files(), [])

    @inlineCallbacks
    def test_a_client_leaving_right_after_its_request_leaves_no_file_behind(self):
        web = self.web()
        pixels = bytes(1 << 20)
        big = {"Rows": 512, "Columns": 1024, "BitsAllocated": 16, "PixelData": pixels}
        sent = [instance(n, **big) for n in range(30)]
        channel, _transport = self.send(web, multipart(sent))
        channel.connectionLost(Failure(ConnectionDone()))
        yield self.settled()
        self.assertLess(len(self.view.indexed()), 30)
        self.assertEqual(self.view.partial_files(), [])

    @inlineCallbacks
    def test_an_unacceptable_answer_type_is_406(self):
        web = self.web()
        answer = yield self.post(web, multipart([instance(1)]), headers={"Accept": "text/html"})
        self.assertEqual(answer.status, 406)
        self.assertEqual(self.kept(), {})

    @inlineCallbacks
    def test_many_small_parts_in_one_body(self):
        web = self.web()
        sent = [instance(n) for n in range(60)]
        answer = yield self.post(web, multipart(sent))
        self.assertEqual(answer.status, 200)
        self.assertEqual(len(sequence(answer.json(), "00081199")), 60)
        self.assertEqual(len(self.kept()), 60)
        self.assertEqual(self.view.partial_files(), [])


# -- The reader of parts, alone: hostile bodies -------------------------------------------------

SMALL = [instance(n, Rows=8, Columns=8, PixelData=bytes(128)) for n in (1, 2)]
VALID = multipart([SMALL[0], ("text/plain", b"x"), SMALL[1]])


def reader_context(folder: Path, max_stow_length: int = 1 << 20) -> WebContext:
    return WebContext(
        ae_title="DICOMD",
        find_handlers=(),
        retrieve_source=None,
        store_handlers=(),
        incoming=folder,
        reactor=None,
        base_url=None,
        max_stow_length=max_stow_length,
    )


def read_all(body: bytes, folder: Path, max_stow_length: int = 1 << 20) -> list[object]:
    """Every part the reader gives, files removed; what it raised, last."""
    reader = stow.PartReader(io.BytesIO(body), BOUNDARY, reader_context(folder, max_stow_length))
    found: list[object] = []
    try:
        while (part := reader.next_part()) is not None:
            if isinstance(part, stow.ReceivedPart):
                assert part.checked.file.path.is_file()
                part.checked.file.remove()
            found.append(part)
    except (MultipartError, stow.BodyTooLong) as error:
        assert "\n" not in str(error)
        found.append(error)
    finally:
        reader.close()
    return found


def test_the_reader_gives_received_parts_and_refusals(tmp_path: Path) -> None:
    found = read_all(VALID, tmp_path)
    assert [type(part).__name__ for part in found] == ["ReceivedPart", "Outcome", "ReceivedPart"]
    received = found[0]
    assert isinstance(received, stow.ReceivedPart) and received.checked.problem is None
    assert received.collected("StudyInstanceUID") == STUDY
    assert list(tmp_path.iterdir()) == []


def test_the_reader_stops_past_the_longest_body(tmp_path: Path) -> None:
    found = read_all(VALID, tmp_path, max_stow_length=len(VALID) - 1)
    assert isinstance(found[-1], stow.BodyTooLong)
    assert list(tmp_path.iterdir()) == []


@given(
    edits=st.lists(
        st.tuples(st.integers(min_value=0), st.integers(0, 3), st.binary(max_size=8)), max_size=4
    ),
    end=st.integers(min_value=0),
)
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_hostile_bodies_leave_no_file_and_raise_nothing_else(
    tmp_path: Path, edits: list[tuple[int, int, bytes]], end: int
) -> None:
    """A valid body with bytes replaced, removed or put in anywhere, and cut anywhere."""
    body = bytearray(VALID)
    for at, removed, put in edits:
        at %= len(body) + 1
        body[at : at + removed] = put
    read_all(bytes(body[: end % (len(body) + 1)] if end % 3 else body), tmp_path)
    assert list(tmp_path.iterdir()) == []

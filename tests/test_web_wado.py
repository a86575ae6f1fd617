"""WADO-RS over a real archive in a temporary folder: instances byte for byte, metadata and
its BulkDataURIs, frames, bulk data, rendered images, the error statuses, and the body
paced by the client.

Each request is written as bytes into the site's HTTP channel over a StringTransport;
the archive's threads and WADO's own run for real and hand their results back through
`ThreadedClock`, which the test drains until the answer is whole (no socket, no sleep).
"""

from __future__ import annotations

import io
import json
import queue
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.threadpool import ThreadPool

from dicomd.archive import ArchiveHandler
from dicomd.dimse.transcode import Decompressor
from dicomd.interfaces import RetrieveItem
from dicomd.web.context import WebContext
from dicomd.web.metadata import MetadataError, instance_json, locate
from dicomd.web.multipart import MultipartWriter
from dicomd.web.pixels import PixelsError, pixels_of, read_frame
from dicomd.web.rendering import RenderingError, RenderOptions, render
from dicomd.web.site import web_site
from dicomd.web.streaming import CHUNK
from dicomd.web.wado import MAX_FRAMES, frame_numbers
from tests.support.received import received

CT = Path(get_testdata_file("CT_small.dcm"))
MR = Path(get_testdata_file("MR_small.dcm"))
JPEG = Path(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
MULTI_FRAME = Path(get_testdata_file("emri_small.dcm"))
DEADLINE = 20.0


class ThreadedClock(Clock):
    """A Clock whose ``callFromThread`` queues calls for the test to run, and a real pool."""

    def __init__(self) -> None:
        super().__init__()
        self._calls: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...]]] = queue.Queue()
        self._pool = ThreadPool(minthreads=1, maxthreads=4, name="test-wado")
        self._pool.start()

    def callFromThread(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self._calls.put((lambda: function(*args, **kwargs), ()))

    def getThreadPool(self) -> ThreadPool:
        return self._pool

    def run_until(self, condition: Callable[[], bool]) -> None:
        """Run the calls the threads hand back until ``condition`` holds."""
        deadline = time.monotonic() + DEADLINE
        while not condition():
            assert time.monotonic() < deadline, "the answer never came"
            try:
                call, _ = self._calls.get(timeout=0.05)
            except queue.Empty:
                continue
            call()

    def run_pending(self) -> None:
        """Run what the threads handed back until they have been quiet for a moment."""
        while True:
            try:
                call, _ = self._calls.get(timeout=0.2)
            except queue.Empty:
                return
            call()

    def stop(self) -> None:
        self._pool.stop()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def parts(self) -> list[tuple[dict[str, str], bytes]]:
        """The parts of a multipart/related body, each with its headers."""
        boundary = re.search(r"boundary=([^;\s]+)", self.headers["content-type"])
        assert boundary is not None, self.headers["content-type"]
        delimiter = b"--" + boundary.group(1).encode()
        pieces = self.body.split(b"\r\n" + delimiter)
        first = pieces[0]
        assert first.startswith(delimiter)
        pieces[0] = first[len(delimiter) :]
        assert pieces[-1] == b"--\r\n", pieces[-1][:40]
        parts = []
        for piece in pieces[:-1]:
            head, _, content = piece[2:].partition(b"\r\n\r\n")
            headers = dict(
                (name.strip().lower(), value.strip())
                for name, _, value in (
                    line.partition(":") for line in head.decode("latin-1").split("\r\n")
                )
            )
            if "content-length" in headers:
                assert int(headers["content-length"]) == len(content)
            parts.append((headers, content))
        return parts


def parse_answer(raw: bytes) -> Answer | None:
    """The answer in ``raw`` once it is whole, else None."""
    head, separator, rest = raw.partition(b"\r\n\r\n")
    if not separator:
        return None
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = bytearray()
        while True:
            size_line, found, rest = rest.partition(b"\r\n")
            if not found:
                return None
            size = int(size_line, 16)
            if len(rest) < size + 2:
                return None
            body += rest[:size]
            rest = rest[size + 2 :]
            if size == 0:
                return Answer(int(status_line.split()[1]), headers, bytes(body))
    length = int(headers.get("content-length", "0"))
    if len(rest) < length:
        return None
    return Answer(int(status_line.split()[1]), headers, rest[:length])


class Node:
    """An archive and the web site over it."""

    def __init__(self, folder: Path, decompressor: Decompressor | None = None) -> None:
        self.reactor = ThreadedClock()
        self.failures: list[str] = []
        globalLogPublisher.addObserver(self._observe)
        self.archive = ArchiveHandler(folder / "archive", reactor=self.reactor, threads=2)
        self.archive.startService()
        self.context = WebContext(
            ae_title="DICOMD",
            find_handlers=(self.archive,),
            retrieve_source=self.archive,
            store_handlers=(self.archive,),
            incoming=folder / "archive" / ".incoming",
            reactor=self.reactor,
            base_url=None,
            max_stow_length=1 << 20,
        )
        self.context = replace(self.context, decompressor=decompressor)

    def keep(self, source: Path | Dataset) -> Dataset:
        ds = source if isinstance(source, Dataset) else dcmread(source)
        answer = self.archive.archive(received(self.archive.path, ds))
        assert getattr(answer, "status", answer) == 0
        return ds

    def connect(self, context: WebContext | None = None) -> tuple[Any, StringTransport]:
        site = web_site(context or self.context, None, timeout=60)
        address = IPv4Address("TCP", "10.0.0.7", 40000)
        channel = site.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        channel.makeConnection(transport)
        return channel, transport

    def get(
        self, path: str, accept: str | None = None, context: WebContext | None = None
    ) -> Answer:
        channel, transport = self.connect(context)
        send(channel, path, accept)
        answers: list[Answer] = []

        def whole() -> bool:
            answer = parse_answer(transport.value())
            if answer is not None:
                answers.append(answer)
            return answer is not None

        self.reactor.run_until(whole)
        return answers[0]

    def _observe(self, event: dict[str, Any]) -> None:
        failure = event.get("log_failure") or event.get("failure")  # new or legacy logging
        if failure is not None:
            self.failures.append(f"{formatEvent(event)}: {failure.value!r}")

    def close(self) -> None:
        """Stop the archive; no traceback may have been logged meanwhile."""
        stopped = self.archive.stopService()
        done: list[object] = []
        stopped.addBoth(done.append)
        self.reactor.run_until(lambda: bool(done))
        self.reactor.stop()
        globalLogPublisher.removeObserver(self._observe)
        assert not self.failures, self.failures


def send(channel: Any, path: str, accept: str | None) -> None:
    lines = [f"GET /dicom-web{path} HTTP/1.1", "Host: dicomd.test"]
    if accept is not None:
        lines.append(f"Accept: {accept}")
    channel.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    node = Node(tmp_path)
    for source in (CT, MR, JPEG, MULTI_FRAME):
        node.keep(source)
    yield node
    node.close()


def data_set_bytes(part10: bytes) -> bytes:
    """The data set of a Part 10 file: what follows the File Meta."""
    ds = dcmread(io.BytesIO(part10), stop_before_pixels=True)
    meta_length = int(ds.file_meta.FileMetaInformationGroupLength)
    return part10[132 + 12 + meta_length :]


def uids_of(path: Path) -> tuple[str, str, str]:
    ds = dcmread(path, stop_before_pixels=True)
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


def instance_url(path: Path) -> str:
    study, series, instance = uids_of(path)
    return f"/studies/{study}/series/{series}/instances/{instance}"


DICOM_PARTS = 'multipart/related; type="application/dicom"'


# -- Instances -------------------------------------------------------------------------------


@pytest.mark.parametrize("level", ["study", "series", "instance"])
@pytest.mark.parametrize("source", [CT, JPEG, MULTI_FRAME], ids=["ct", "jpeg", "multi-frame"])
def test_each_level_answers_the_stored_files_byte_for_byte(
    node: Node, source: Path, level: str
) -> None:
    study, series, instance = uids_of(source)
    path = {
        "study": f"/studies/{study}",
        "series": f"/studies/{study}/series/{series}",
        "instance": f"/studies/{study}/series/{series}/instances/{instance}",
    }[level]

    answer = node.get(path, DICOM_PARTS)

    assert answer.status == 200
    assert answer.headers["content-type"].startswith(DICOM_PARTS + "; boundary=")
    [(headers, content)] = answer.parts()
    assert headers["content-type"] == "application/dicom"
    assert data_set_bytes(content) == data_set_bytes(source.read_bytes())
    assert dcmread(io.BytesIO(content)).SOPInstanceUID == instance


def test_a_study_of_several_series_answers_each_instance_once(tmp_path: Path) -> None:
    node = Node(tmp_path)
    try:
        kept = []
        for number in range(5):
            ds = dcmread(CT)
            ds.SeriesInstanceUID = f"{ds.SeriesInstanceUID}.{number % 2}"
            ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{number}"
            kept.append(node.keep(ds).SOPInstanceUID)

        answer = node.get(f"/studies/{ds.StudyInstanceUID}", "*/*")

        got = [dcmread(io.BytesIO(content)).SOPInstanceUID for _, content in answer.parts()]
        assert sorted(got) == sorted(kept)
    finally:
        node.close()


@pytest.mark.parametrize(
    "accept",
    [
        f"{DICOM_PARTS}; transfer-syntax=*",
        f"{DICOM_PARTS}; transfer-syntax=1.2.840.10008.1.2.4.50",
        "multipart/related; type=application/dicom; transfer-syntax=*",  # unquoted, as viewers send
        "multipart/related",
        "*/*",
        None,
    ],
)
def test_the_stored_syntax_goes_for_any_or_its_own(node: Node, accept: str | None) -> None:
    answer = node.get(instance_url(JPEG), accept)

    [(_, content)] = answer.parts()
    assert content == JPEG.read_bytes()[-len(content) :] or data_set_bytes(
        content
    ) == data_set_bytes(JPEG.read_bytes())


def test_another_syntax_without_a_decompressor_is_not_acceptable(node: Node) -> None:
    answer = node.get(instance_url(JPEG), f"{DICOM_PARTS}; transfer-syntax=1.2.840.10008.1.2.1")

    assert answer.status == 406
    assert b"cannot be sent in 1.2.840.10008.1.2.1" in answer.body


def test_a_compressed_instance_is_decompressed_into_the_syntax_asked(tmp_path: Path) -> None:
    node = Node(tmp_path, Decompressor(tmp_path / "spool", processes=0))
    try:
        node.keep(JPEG)

        answer = node.get(
            instance_url(JPEG), f"{DICOM_PARTS}; transfer-syntax={ExplicitVRLittleEndian}"
        )

        [(headers, content)] = answer.parts()
        assert (
            headers["content-type"]
            == f"application/dicom; transfer-syntax={ExplicitVRLittleEndian}"
        )
        sent = dcmread(io.BytesIO(content))
        assert sent.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert np.array_equal(sent.pixel_array, dcmread(JPEG).pixel_array)
        assert list((tmp_path / "spool").iterdir()) == []
    finally:
        node.close()


@pytest.mark.parametrize(
    ("path", "accept", "status"),
    [
        ("/studies/1.2.3", DICOM_PARTS, 404),
        ("/studies/1.2.3/series/4.5", DICOM_PARTS, 404),
        ("/studies/1.2.3/series/4.5/instances/6.7", DICOM_PARTS, 404),
        ("/studies/1.2.3/metadata", "application/dicom+json", 404),
        ("/studies/1.2.3/series/4.5/instances/6.7/frames/1", "*/*", 404),
        ("/studies/1.2.3/series/4.5/instances/6.7/rendered", "image/png", 404),
        ("/studies/abc", DICOM_PARTS, 400),
    ],
)
def test_unknown_uids_are_not_found(node: Node, path: str, accept: str, status: int) -> None:
    answer = node.get(path, accept)

    assert answer.status == status
    assert answer.headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize(
    ("suffix", "accept"),
    [
        ("", "application/json"),
        ("", 'multipart/related; type="image/jpeg"'),
        ("/metadata", "application/dicom"),
        ("/frames/1", 'multipart/related; type="image/jpeg"'),
        ("/rendered", "application/pdf"),
        ("/thumbnail", "image/gif"),
        ("/bulkdata/7FE00010", "image/png"),
    ],
)
def test_unacceptable_media_types_are_406(node: Node, suffix: str, accept: str) -> None:
    answer = node.get(instance_url(CT) + suffix, accept)

    assert answer.status == 406, answer.body


# -- Metadata and bulk data -------------------------------------------------------------------


def test_metadata_is_pydicoms_json_with_bulk_data_uris(node: Node) -> None:
    answer = node.get(instance_url(CT) + "/metadata", "application/dicom+json")

    assert answer.headers["content-type"] == "application/dicom+json"
    [attributes] = json.loads(answer.body)
    expected = dcmread(CT).to_json_dict(bulk_data_threshold=1 << 30)
    url = "http://dicomd.test/dicom-web" + instance_url(CT) + "/bulkdata/"
    assert attributes.pop("7FE00010") == {"vr": "OW", "BulkDataURI": url + "7FE00010"}
    assert attributes.pop("00431029") == {"vr": "OB", "BulkDataURI": url + "00431029"}
    del expected["7FE00010"], expected["00431029"], expected["FFFCFFFC"]  # trailing padding
    assert attributes == expected


def test_series_metadata_lists_every_instance(node: Node) -> None:
    study, series, _ = uids_of(MULTI_FRAME)

    answer = node.get(f"/studies/{study}/series/{series}/metadata", None)

    [attributes] = json.loads(answer.body)
    assert attributes["00280008"] == {"vr": "IS", "Value": [10]}


def test_a_bulk_data_uri_answers_the_value(node: Node) -> None:
    [attributes] = json.loads(node.get(instance_url(CT) + "/metadata").body)
    for tag, keyword in (("7FE00010", "PixelData"), ("00431029", 0x00431029)):
        uri = attributes[tag]["BulkDataURI"]
        path = uri.removeprefix("http://dicomd.test/dicom-web")

        bare = node.get(path, "application/octet-stream")
        multipart = node.get(path, 'multipart/related; type="application/octet-stream"')

        value = dcmread(CT)[keyword].value
        assert bare.headers["content-type"] == "application/octet-stream"
        assert bare.body == value
        [(_headers, content)] = multipart.parts()
        assert content == value


def test_bulk_data_inside_a_sequence_item(tmp_path: Path) -> None:
    node = Node(tmp_path)
    try:
        ds = dcmread(CT)
        item = Dataset()
        item.add_new(0x00091010, "OB", bytes(range(256)) * 8)
        ds.add_new(0x00091011, "SQ", [item])
        ds.add_new(0x00090010, "LO", "PRIVATE")
        node.keep(ds)
        [attributes] = json.loads(node.get(instance_url(CT) + "/metadata").body)
        uri = attributes["00091011"]["Value"][0]["00091010"]["BulkDataURI"]
        assert uri.endswith("/bulkdata/00091011/0/00091010")

        answer = node.get(
            uri.removeprefix("http://dicomd.test/dicom-web"), "application/octet-stream"
        )

        assert answer.body == bytes(range(256)) * 8
    finally:
        node.close()


@pytest.mark.parametrize(
    ("tag_path", "status"),
    [("00100010x", 400), ("0010", 400), ("00081140/x/00081150", 400), ("00091234", 404)],
)
def test_bad_or_absent_bulk_data_paths(node: Node, tag_path: str, status: int) -> None:
    answer = node.get(instance_url(CT) + "/bulkdata/" + tag_path, "*/*")

    assert answer.status == status


# -- Frames ------------------------------------------------------------------------------------


def test_native_frames_are_octet_streams_in_the_order_asked(node: Node) -> None:
    ds = dcmread(MULTI_FRAME)
    length = ds.Rows * ds.Columns * 2

    answer = node.get(instance_url(MULTI_FRAME) + "/frames/3,1,10", None)

    assert answer.headers["content-type"].startswith(
        'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1'
    )
    frames = [content for _, content in answer.parts()]
    assert frames == [ds.PixelData[(n - 1) * length : n * length] for n in (3, 1, 10)]


def test_an_image_without_rows_is_not_found_before_any_answer_begins(tmp_path: Path) -> None:
    node = Node(tmp_path)
    try:
        ds = dcmread(MR)
        del ds.Rows
        node.keep(ds)

        frames = node.get(instance_url(MR) + "/frames/1", None)
        image = node.get(instance_url(MR) + "/rendered", "image/png")

        assert (frames.status, image.status) == (404, 404)
        assert frames.body == b"the instance cannot be read\n"
    finally:
        node.close()


def test_big_endian_frames_go_little_endian(tmp_path: Path) -> None:
    node = Node(tmp_path)
    try:
        node.keep(Path(get_testdata_file("MR_small_bigendian.dcm")))

        answer = node.get(instance_url(MR) + "/frames/1", None)

        [(_, content)] = answer.parts()
        assert content == dcmread(MR).PixelData
    finally:
        node.close()


def test_compressed_frames_go_in_their_syntax_media_type(node: Node) -> None:
    accept = 'multipart/related; type="image/jpeg"; transfer-syntax=1.2.840.10008.1.2.4.50'

    answer = node.get(instance_url(JPEG) + "/frames/1", accept)

    [(headers, content)] = answer.parts()
    assert headers["content-type"] == "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50"
    assert content == next(generate_frames(dcmread(JPEG).PixelData, number_of_frames=1))


def test_compressed_frames_asked_for_as_octet_streams_of_any_syntax_go_as_stored(
    node: Node,
) -> None:
    accept = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'

    answer = node.get(instance_url(JPEG) + "/frames/1", accept)

    [(headers, content)] = answer.parts()
    assert headers["content-type"] == (
        "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.4.50"
    )
    assert content == next(generate_frames(dcmread(JPEG).PixelData, number_of_frames=1))


def test_compressed_frames_asked_for_as_native_octet_streams_are_decoded(node: Node) -> None:
    answer = node.get(
        instance_url(JPEG) + "/frames/1", 'multipart/related; type="application/octet-stream"'
    )

    [(headers, content)] = answer.parts()
    assert (
        headers["content-type"] == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
    )
    assert content == dcmread(JPEG).pixel_array.astype("<u1").tobytes()


@pytest.mark.parametrize(
    ("frames", "status"),
    [("11", 404), ("1,2,99", 404), ("0", 400), ("1,,2", 400), ("x", 400), ("-1", 400)],
)
def test_frames_out_of_range_or_malformed(node: Node, frames: str, status: int) -> None:
    answer = node.get(instance_url(MULTI_FRAME) + f"/frames/{frames}", None)

    assert answer.status == status


@given(st.lists(st.integers(1, 10**9 - 1), min_size=1, max_size=50))
def test_frame_lists_read_back_as_written(numbers: list[int]) -> None:
    assert frame_numbers(",".join(map(str, numbers))) == numbers


@given(st.text(max_size=60))
def test_any_frame_list_is_numbers_or_a_value_error(text: str) -> None:
    try:
        numbers = frame_numbers(text)
    except ValueError as error:
        assert str(error)
        return
    assert numbers and all(number >= 1 for number in numbers)
    assert ",".join(map(str, numbers)) == ",".join(piece.lstrip("0") for piece in text.split(","))


def test_a_frame_list_longer_than_the_most_is_refused() -> None:
    with pytest.raises(ValueError, match="more than"):
        frame_numbers(",".join(["1"] * (MAX_FRAMES + 1)))


SOURCES = {path.name: path.read_bytes() for path in (CT, JPEG, MULTI_FRAME)}


@settings(max_examples=150, deadline=None)
@given(
    name=st.sampled_from(sorted(SOURCES)),
    cut=st.one_of(st.none(), st.integers(132, 40_000)),
    changes=st.lists(
        st.tuples(st.integers(300, 40_000), st.binary(min_size=1, max_size=4)), max_size=6
    ),
)
def test_a_damaged_file_fails_each_reader_in_one_line(
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    cut: int | None,
    changes: list[tuple[int, bytes]],
) -> None:
    content = bytearray(SOURCES[name])
    for position, replacement in changes:
        position %= len(content)
        content[position : position + len(replacement)] = replacement
    if cut is not None:
        content = content[: cut % len(content)]
    path = tmp_path_factory.mktemp("damaged") / "instance.dcm"
    path.write_bytes(bytes(content))

    def frames_and_image() -> None:
        pixels = pixels_of(path)
        if pixels.present:  # the routes answer 404 or 406 for an instance without pixels
            with path.open("rb") as file:
                read_frame(file, pixels, pixels.number_of_frames)
            render(path, pixels, 1, RenderOptions("image/png", thumbnail=True))

    readers = (
        lambda: instance_json(path, "http://dicomd.test/dicom-web"),
        lambda: locate(path, (0x7FE00010,)),
        frames_and_image,
    )

    for reader in readers:
        try:
            reader()
        except (PixelsError, MetadataError, RenderingError) as error:
            assert "\n" not in str(error)


# -- Rendered ----------------------------------------------------------------------------------


def decoded(answer: Answer) -> Image.Image:
    assert answer.status == 200, answer.body
    image = Image.open(io.BytesIO(answer.body))
    image.load()
    return image


@pytest.mark.parametrize(
    ("accept", "kind"), [("image/png", "PNG"), ("image/jpeg", "JPEG"), (None, "JPEG")]
)
def test_rendered_instances_are_images_of_their_size(
    node: Node, accept: str | None, kind: str
) -> None:
    image = decoded(node.get(instance_url(CT) + "/rendered", accept))

    assert image.format == kind
    assert image.size == (128, 128)
    assert image.mode == "L"


def test_rendered_colour_jpeg_stays_colour(node: Node) -> None:
    image = decoded(node.get(instance_url(JPEG) + "/rendered", "image/png"))

    assert image.mode == "RGB"
    reference = dcmread(JPEG).pixel_array
    assert np.abs(np.asarray(image).astype(int) - reference.astype(int)).max() <= 1


def test_rendering_uses_the_instances_window(node: Node) -> None:
    ds = dcmread(MR)
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    image = np.asarray(decoded(node.get(instance_url(MR) + "/rendered", "image/png"))).astype(int)

    values = ds.pixel_array.astype(float) * float(ds.get("RescaleSlope", 1)) + float(
        ds.get("RescaleIntercept", 0)
    )
    expected = np.clip(np.rint(((values - (center - 0.5)) / (width - 1) + 0.5) * 255), 0, 255)
    assert np.abs(image - expected).max() <= 1


def test_a_window_in_the_query_overrides_the_instances(node: Node) -> None:
    default = np.asarray(decoded(node.get(instance_url(MR) + "/rendered", "image/png")))
    narrow = np.asarray(
        decoded(node.get(instance_url(MR) + "/rendered?window=100,50", "image/png"))
    )

    assert (narrow == 255).sum() > (default == 255).sum()


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    node = Node(tmp_path)
    try:
        ds = dcmread(MR)
        normal = node.keep(ds)
        inverted = dcmread(MR)
        inverted.SOPInstanceUID = normal.SOPInstanceUID + ".1"
        inverted.PhotometricInterpretation = "MONOCHROME1"
        node.keep(inverted)
        study, series = ds.StudyInstanceUID, ds.SeriesInstanceUID
        base = f"/studies/{study}/series/{series}/instances/"

        one = np.asarray(decoded(node.get(base + normal.SOPInstanceUID + "/rendered", "image/png")))
        two = np.asarray(
            decoded(node.get(base + inverted.SOPInstanceUID + "/rendered", "image/png"))
        )

        assert np.array_equal(one.astype(int), 255 - two.astype(int))
    finally:
        node.close()


def test_thumbnails_fit_128_pixels_unless_a_viewport_says(node: Node) -> None:
    small = decoded(node.get(instance_url(CT) + "/thumbnail", "image/jpeg"))
    sized = decoded(node.get(instance_url(CT) + "/thumbnail?viewport=32,32", "image/jpeg"))
    framed = decoded(node.get(instance_url(MULTI_FRAME) + "/frames/10/thumbnail", "image/png"))

    assert max(small.size) <= 128
    assert sized.size == (32, 32)
    assert framed.size == (64, 64)


@pytest.mark.parametrize(
    ("query", "status"),
    [("viewport=0,10", 400), ("viewport=abc", 400), ("window=1", 400), ("quality=101", 400)],
)
def test_bad_rendering_parameters_are_400(node: Node, query: str, status: int) -> None:
    answer = node.get(instance_url(CT) + "/rendered?" + query, "image/jpeg")

    assert answer.status == status


def test_jpeg_2000_is_neither_rendered_nor_decoded_here(tmp_path: Path) -> None:
    node = Node(tmp_path)
    try:
        j2k = Path(get_testdata_file("MR2_J2KR.dcm"))
        node.keep(j2k)

        image = node.get(instance_url(j2k) + "/rendered", "image/png")
        native = node.get(
            instance_url(j2k) + "/frames/1", "multipart/related; type=application/octet-stream"
        )
        stored = node.get(instance_url(j2k) + "/frames/1", "*/*")

        assert (image.status, native.status) == (406, 406)
        [(headers, _)] = stored.parts()
        assert headers["content-type"] == "image/jp2; transfer-syntax=1.2.840.10008.1.2.4.90"
    finally:
        node.close()


def test_a_rendered_frame_out_of_range_is_404(node: Node) -> None:
    answer = node.get(instance_url(MULTI_FRAME) + "/frames/11/rendered", "image/png")

    assert answer.status == 404


# -- Pace and spool files ------------------------------------------------------------------------


def large_multi_frame(frames: int) -> Dataset:
    ds = dcmread(MULTI_FRAME)
    ds.Rows = ds.Columns = 512
    ds.NumberOfFrames = frames
    ds.PixelData = (
        np.random.default_rng(7).integers(0, 4096, (frames, 512, 512), np.uint16).tobytes()
    )
    ds.SOPInstanceUID = generate_uid()
    return ds


def test_a_paused_client_is_sent_no_more_than_a_chunk_or_two(tmp_path: Path) -> None:
    node = Node(tmp_path)
    try:
        ds = node.keep(large_multi_frame(40))  # 20 MiB
        channel, transport = node.connect()
        url = f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        send(channel, url + f"/instances/{ds.SOPInstanceUID}", None)
        node.reactor.run_until(lambda: len(transport.value()) > 0)
        transport.producer.pauseProducing()  # the channel, as a full send buffer would
        started_at = len(transport.value())
        node.reactor.run_pending()

        assert len(transport.value()) - started_at <= 2 * CHUNK

        transport.producer.resumeProducing()
        node.reactor.run_until(lambda: parse_answer(transport.value()) is not None)
        answer = parse_answer(transport.value())
        assert answer is not None
        [(_, content)] = answer.parts()
        assert dcmread(io.BytesIO(content)).PixelData == ds.PixelData
    finally:
        node.close()


@dataclass
class FetchingSource:
    """A retrieve source whose instance must be fetched into a spool file first."""

    original: Path
    spool: Path
    retrieve_models = ()

    def instances(self, query: Any) -> list[RetrieveItem]:
        def fetch() -> Any:
            from twisted.internet import defer

            self.spool.write_bytes(self.original.read_bytes())
            return defer.succeed(self.spool)

        ds = dcmread(self.original, stop_before_pixels=True)
        return [
            RetrieveItem(
                None, ds.SOPClassUID, ds.SOPInstanceUID, "1.2.840.10008.1.2.1", fetch=fetch
            )
        ]

    def may_move(self, query: Any, destination: str) -> bool:
        return True


def test_a_fetched_instance_is_sent_then_its_spool_file_removed(node: Node, tmp_path: Path) -> None:
    spool = tmp_path / "spooled.dcm"
    context = replace(node.context, retrieve_source=FetchingSource(CT, spool))

    answer = node.get(instance_url(CT), DICOM_PARTS, context)

    [(_, content)] = answer.parts()
    assert content == CT.read_bytes()
    assert not spool.exists()


def test_a_client_gone_mid_answer_removes_the_spool_file(tmp_path: Path) -> None:
    node = Node(tmp_path)
    try:
        ds = large_multi_frame(40)
        source = tmp_path / "large.dcm"
        ds.save_as(source, enforce_file_format=True)
        spool = tmp_path / "spooled.dcm"
        context = replace(node.context, retrieve_source=FetchingSource(source, spool))
        channel, transport = node.connect(context)
        send(channel, instance_url(source), None)
        node.reactor.run_until(lambda: len(transport.value()) > CHUNK)

        channel.connectionLost(Exception("gone"))
        node.reactor.run_pending()

        assert not spool.exists()
        assert len(transport.value()) < len(ds.PixelData)
    finally:
        node.close()


@dataclass
class DatasetSource:
    """A plugin's retrieve source that answers data sets, not files."""

    dataset: Dataset
    retrieve_models = ()

    def instances(self, query: Any) -> list[RetrieveItem]:
        ds = self.dataset
        syntax = ds.file_meta.TransferSyntaxUID
        return [RetrieveItem(None, ds.SOPClassUID, ds.SOPInstanceUID, syntax, dataset=ds)]

    def may_move(self, query: Any, destination: str) -> bool:
        return True


def test_a_plugins_data_set_is_sent_as_a_part10_file(node: Node) -> None:
    context = replace(node.context, retrieve_source=DatasetSource(dcmread(MR)))

    answer = node.get(instance_url(MR), DICOM_PARTS, context)

    [(_, content)] = answer.parts()
    assert data_set_bytes(content) == data_set_bytes(MR.read_bytes())
    assert list(node.context.incoming.iterdir()) == []


@dataclass
class SlowSource:
    """A retrieve source whose fetch ends when the test says."""

    original: Path
    fetched: defer.Deferred[Path]
    retrieve_models = ()

    def instances(self, query: Any) -> list[RetrieveItem]:
        ds = dcmread(self.original, stop_before_pixels=True)
        syntax = ds.file_meta.TransferSyntaxUID
        return [
            RetrieveItem(
                None, ds.SOPClassUID, ds.SOPInstanceUID, syntax, fetch=lambda: self.fetched
            )
        ]

    def may_move(self, query: Any, destination: str) -> bool:
        return True


def test_a_fetch_ending_after_the_client_left_removes_its_spool_file(
    node: Node, tmp_path: Path
) -> None:
    source = SlowSource(CT, defer.Deferred())
    channel, transport = node.connect(replace(node.context, retrieve_source=source))
    send(channel, instance_url(CT), None)
    node.reactor.run_pending()

    channel.connectionLost(Exception("gone"))
    spool = tmp_path / "late.dcm"
    spool.write_bytes(CT.read_bytes())
    source.fetched.callback(spool)
    node.reactor.run_pending()

    assert not spool.exists()
    assert transport.value() == b""


def test_the_multipart_writer_frames_each_part() -> None:
    writer = MultipartWriter(
        "application/octet-stream", transfer_syntax="1.2.840.10008.1.2.1", boundary="B"
    )

    body = writer.whole([b"one", b""])

    assert writer.content_type == (
        'multipart/related; type="application/octet-stream"; '
        "transfer-syntax=1.2.840.10008.1.2.1; boundary=B"
    )
    assert body == (
        b"--B\r\nContent-Type: application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1\r\n"
        b"Content-Length: 3\r\n\r\none\r\n"
        b"--B\r\nContent-Type: application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1\r\n"
        b"Content-Length: 0\r\n\r\n\r\n--B--\r\n"
    )

"""The streaming multipart/related reader: the same parts however the body is cut, bounded
headers, and nothing raised from hostile bytes but its own one-line error."""

from __future__ import annotations

import email.generator
import email.mime.application
import email.mime.multipart
import io
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dicomd.web.multipart_reader import (
    PART_END,
    MultipartError,
    MultipartReader,
    PartHeaders,
    check_boundary,
)

BOUNDARY = "dicomd-boundary-7f3a"


def body_of(parts: list[tuple[dict[str, str], bytes]], boundary: str = BOUNDARY) -> bytes:
    """A multipart body as RFC 2046 writes it: CRLF before each delimiter."""
    out = io.BytesIO()
    for headers, content in parts:
        out.write(b"--" + boundary.encode() + b"\r\n")
        for name, value in headers.items():
            out.write(f"{name}: {value}\r\n".encode())
        out.write(b"\r\n" + content + b"\r\n")
    out.write(b"--" + boundary.encode() + b"--\r\n")
    return out.getvalue()


def read(pieces: list[bytes], boundary: str = BOUNDARY, **options: int) -> list[tuple[dict, bytes]]:
    """The parts the reader finds in ``pieces``: their headers and whole content."""
    reader = MultipartReader(boundary, **options)
    parts: list[tuple[dict, bytes]] = []
    content: list[bytes] = []
    for piece in pieces:
        for event in reader.feed(piece):
            if isinstance(event, PartHeaders):
                assert not content
                parts.append((dict(event.fields), b""))
            elif event is PART_END:
                parts[-1] = (parts[-1][0], b"".join(content))
                content = []
            else:
                assert isinstance(event, bytes) and event
                content.append(event)
    reader.end()
    return parts


def cut(data: bytes, points: list[int]) -> list[bytes]:
    edges = sorted({0, len(data), *(point % (len(data) + 1) for point in points)})
    return [data[a:b] for a, b in itertools.pairwise(edges)]


DICOM = {"Content-Type": "application/dicom"}


def test_reads_the_parts_and_their_headers() -> None:
    body = body_of([(DICOM, b"first"), ({"Content-Type": "text/plain", "X-A": "b"}, b"")])
    assert read([body]) == [
        ({"content-type": "application/dicom"}, b"first"),
        ({"content-type": "text/plain", "x-a": "b"}, b""),
    ]


def test_skips_preamble_and_epilogue_and_takes_padding_after_a_delimiter() -> None:
    body = (
        b"a preamble\r\n--" + BOUNDARY.encode() + b" \t\r\nContent-Type: application/dicom\r\n"
        b"\r\nDATA\r\n--" + BOUNDARY.encode() + b"--\r\nan epilogue --" + BOUNDARY.encode()
    )
    assert read([body]) == [({"content-type": "application/dicom"}, b"DATA")]


def test_a_part_without_headers_and_folded_header_lines() -> None:
    body = (
        b"--" + BOUNDARY.encode() + b"\r\n\r\nno headers\r\n--" + BOUNDARY.encode() + b"\r\n"
        b"Content-Type: application/dicom;\r\n transfer-syntax=1.2.840.10008.1.2.1\r\n\r\nx\r\n"
        b"--" + BOUNDARY.encode() + b"--"
    )
    assert read([body]) == [
        ({}, b"no headers"),
        ({"content-type": "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"}, b"x"),
    ]


def test_agrees_with_the_standard_library_writer() -> None:
    message = email.mime.multipart.MIMEMultipart("related", boundary=BOUNDARY)
    for content in (b"\x00" * 300, b"--" + BOUNDARY.encode() + b"x", b"\r\n\r\n"):
        message.attach(
            email.mime.application.MIMEApplication(content, "dicom", _encoder=lambda p: None)
        )
    out = io.BytesIO()
    email.generator.BytesGenerator(
        out, mangle_from_=False, policy=message.policy.clone(linesep="\r\n")
    ).flatten(message)
    body = out.getvalue().split(b"\r\n\r\n", 1)[1]  # past the message's own headers
    assert [content for _headers, content in read([body])] == [
        b"\x00" * 300,
        b"--" + BOUNDARY.encode() + b"x",
        b"\r\n\r\n",
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "no boundary delimiter"),
        (b"just some text, no multipart at all", "no boundary delimiter"),
        (b"--" + BOUNDARY.encode() + b"\r\nContent-Type: a/b\r\n\r\ncut", "before its closing"),
        (b"--" + BOUNDARY.encode() + b"\r\nContent-Type: a/b", "before its closing"),
        (b"--" + BOUNDARY.encode(), "before its closing"),
        (b"--" + BOUNDARY.encode() + b"junk\r\n\r\n", "other text on its line"),
        (b"--" + BOUNDARY.encode() + b"\r\nno colon here\r\n\r\nx", "no header field"),
        (b"--" + BOUNDARY.encode() + b"\r\nA: 1\r\na: 2\r\n\r\nx", "its a header twice"),
        (b"--" + BOUNDARY.encode() + b" " * 2000 + b"\r\n", "a line of padding"),
    ],
)
def test_refuses_what_is_not_a_whole_multipart_body(body: bytes, message: str) -> None:
    with pytest.raises(MultipartError, match=message):
        read([body])


def test_bounds_the_headers_of_a_part() -> None:
    header = b"X-Long: " + b"a" * 20_000 + b"\r\n\r\n"
    body = b"--" + BOUNDARY.encode() + b"\r\n" + header
    with pytest.raises(MultipartError, match="longer than 16384 bytes"):
        read([body])
    reader = MultipartReader(BOUNDARY, max_header_length=100)
    list(reader.feed(b"--" + BOUNDARY.encode() + b"\r\n" + b"X: " + b"b" * 90))
    with pytest.raises(MultipartError, match="longer than 100 bytes"):
        list(reader.feed(b"b" * 20))


@pytest.mark.parametrize("boundary", ["", "a" * 71, "ends in space ", 'quote"', "ünïcode"])
def test_refuses_a_boundary_rfc_2046_does_not_allow(boundary: str) -> None:
    with pytest.raises(MultipartError, match="is not one RFC 2046 allows"):
        MultipartReader(boundary)


def test_takes_every_boundary_rfc_2046_allows() -> None:
    for boundary in ("a", "a" * 70, "'()+_,-./:=? z", "0123456789"):
        check_boundary(boundary)


def test_a_parts_content_type_reads_as_a_media_type() -> None:
    headers = PartHeaders(
        {"content-type": 'Application/DICOM; transfer-syntax="1.2.840.10008.1.2.1"'}
    )
    assert headers.content_type is not None
    assert headers.content_type.media_type == "application/dicom"
    assert dict(headers.content_type.parameters) == {"transfer-syntax": "1.2.840.10008.1.2.1"}
    assert PartHeaders({"content-type": "not a type"}).content_type is None
    assert PartHeaders({}).content_type is None


part_contents = st.binary(max_size=300) | st.sampled_from(
    [b"\r\n", b"\r\n--", b"\r\n--" + BOUNDARY.encode()[:-1], b"--" + BOUNDARY.encode() + b"-"]
)


@given(
    contents=st.lists(part_contents, max_size=6),
    points=st.lists(st.integers(min_value=0), max_size=30),
)
@settings(max_examples=300, deadline=None)
def test_any_split_of_the_body_gives_the_same_parts(
    contents: list[bytes], points: list[int]
) -> None:
    contents = [
        content for content in contents if b"\r\n--" + BOUNDARY.encode() not in content + b"\r\n"
    ]
    body = body_of([(DICOM, content) for content in contents])
    expected = [({"content-type": "application/dicom"}, content) for content in contents]
    assert read([body]) == expected
    assert read(cut(body, points)) == expected
    assert read([bytes([byte]) for byte in body]) == expected


@given(garbage=st.binary(max_size=2000), points=st.lists(st.integers(min_value=0), max_size=10))
@settings(max_examples=500, deadline=None)
def test_random_bytes_raise_nothing_but_the_readers_error(
    garbage: bytes, points: list[int]
) -> None:
    try:
        read(cut(garbage, points), boundary="b", max_header_length=64)
    except MultipartError as error:
        assert "\n" not in str(error)


@given(
    prefix=st.binary(max_size=50),
    middle=st.binary(max_size=200),
    points=st.lists(st.integers(min_value=0), max_size=10),
)
@settings(max_examples=500, deadline=None)
def test_mangled_bodies_raise_nothing_but_the_readers_error(
    prefix: bytes, middle: bytes, points: list[int]
) -> None:
    """A well-formed body with bytes put in, in the spots a hostile client would aim at."""
    body = prefix + body_of([(DICOM, middle), ({}, b"x" * 10)])[len(prefix) :]
    try:
        read(cut(body, points), max_header_length=64)
    except MultipartError as error:
        assert "\n" not in str(error)


@given(
    length=st.integers(min_value=0, max_value=10_000),
    piece=st.integers(min_value=1, max_value=4096),
)
@settings(max_examples=50, deadline=None)
def test_holds_no_more_than_a_piece_and_a_delimiter(length: int, piece: int) -> None:
    body = body_of([(DICOM, b"\xaa" * length)])
    reader = MultipartReader(BOUNDARY)
    # a delimiter cut by a piece, or the part's headers until their blank line
    held = len(b"\r\n--" + BOUNDARY.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n")
    for start in range(0, len(body), piece):
        for _event in reader.feed(body[start : start + piece]):
            pass
        assert reader.buffered <= piece + held
    reader.end()

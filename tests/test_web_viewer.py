"""The viewer's files at ``/``: what the site answers from a viewer folder made here (an
``index.html``, a hashed bundle, a WebAssembly module, the package's own
``app-config.js``), with a secret beside the folder that no path may reach.

Requests are written into the site's HTTP channel over a StringTransport, as in
`tests.test_web_site`; files are read in a real thread pool whose results the test's
clock hands back (`tests.test_web_wado.ThreadedClock`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from dicomd.web.site import BASE, web_site
from dicomd.web.streaming import CHUNK
from dicomd.web.viewer import ViewerFiles, app_config
from tests.test_web_site import Answer, context
from tests.test_web_wado import ThreadedClock

INDEX = b"<!doctype html><title>OHIF Viewer</title>"
BUNDLE = "app.bundle.0f6159c501addfe9.js"
WASM = "0ddf166f7a343eda.wasm"
SECRET = b"not for the web"


def viewer_folder(tmp_path: Path) -> Path:
    """A viewer folder in ``tmp_path``, and a secret beside it linked from inside."""
    viewer = tmp_path / "viewer"
    (viewer / "assets").mkdir(parents=True)
    (viewer / "index.html").write_bytes(INDEX)
    (viewer / BUNDLE).write_bytes(b"console.log('bundle');")
    (viewer / WASM).write_bytes(b"\0asm\1\0\0\0")
    (viewer / "assets" / "logo.svg").write_bytes(b"<svg/>")
    (viewer / "app-config.js").write_bytes(b"window.config = {demo: true};")
    (viewer / ".dicomd-viewer-version").write_bytes(b"3.13.2\n")
    (tmp_path / "secret.txt").write_bytes(SECRET)
    (viewer / "outside.txt").symlink_to(tmp_path / "secret.txt")
    (viewer / "outside").symlink_to(tmp_path)
    return viewer


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return viewer_folder(tmp_path)


@pytest.fixture(scope="module")
def shared_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One viewer folder for all the examples of the property test."""
    return viewer_folder(tmp_path_factory.mktemp("property"))


@pytest.fixture
def reactor() -> Iterator[ThreadedClock]:
    clock = ThreadedClock()
    yield clock
    clock.stop()


def ask(
    reactor: ThreadedClock, folder: Path, path: str, method: str = "GET", **headers: str
) -> Answer:
    """The site's whole answer to ``method path`` (its head alone for ``HEAD``)."""
    transport = send(reactor, folder, path, method, **headers)
    if method != "HEAD":
        reactor.run_until(lambda: _whole(transport.value()))
    return Answer(transport.value())


def send(
    reactor: ThreadedClock, folder: Path, path: str, method: str = "GET", **headers: str
) -> StringTransport:
    """The connection to the site once the request is written to it."""
    site = web_site(context(folder.parent, reactor=reactor), folder, timeout=60)
    address = IPv4Address("TCP", "10.0.0.7", 40000)
    channel = site.buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    channel.makeConnection(transport)
    lines = [f"{method} {path} HTTP/1.1", "Host: dicomd.test"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    channel.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    return transport


def _whole(raw: bytes) -> bool:
    """Whether ``raw`` holds an answer's head and all of its Content-Length."""
    head, separator, body = raw.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length: *(\d+)", head)
    return bool(separator) and length is not None and len(body) >= int(length[1])


def test_the_index_and_client_routes_are_the_index_page(
    reactor: ThreadedClock, folder: Path
) -> None:
    for path in ("/", "/viewer?StudyInstanceUIDs=1.2.3", "/viewer/dicomweb", "/segmentation"):
        answer = ask(reactor, folder, path)
        assert (answer.status, answer.body) == (200, INDEX), path
        assert answer.header("content-type") == "text/html"
        assert answer.header("cache-control") == "no-cache"
        assert answer.header("cross-origin-opener-policy") == "same-origin"
        assert answer.header("cross-origin-embedder-policy") == "require-corp"


def test_files_have_the_types_browsers_insist_on(reactor: ThreadedClock, folder: Path) -> None:
    bundle = ask(reactor, folder, "/" + BUNDLE)
    assert (bundle.status, bundle.body) == (200, b"console.log('bundle');")
    assert bundle.header("content-type") == "text/javascript"
    assert bundle.header("cache-control") == "public, max-age=31536000, immutable"
    wasm = ask(reactor, folder, "/" + WASM)
    assert wasm.header("content-type") == "application/wasm"
    logo = ask(reactor, folder, "/assets/logo.svg")
    assert (logo.status, logo.header("content-type")) == (200, "image/svg+xml")
    assert logo.header("cache-control") == "no-cache"  # its name carries no content hash


def test_head_and_revalidation(reactor: ThreadedClock, folder: Path) -> None:
    head = ask(reactor, folder, "/", "HEAD")
    assert (head.status, head.body, head.header("content-length")) == (200, b"", str(len(INDEX)))
    missing = ask(reactor, folder, "/missing.js", "HEAD")
    assert (missing.status, missing.body) == (404, b"")
    since = ask(reactor, folder, "/").header("last-modified")
    assert since is not None
    unchanged = ask(reactor, folder, "/", If_Modified_Since=since)
    assert (unchanged.status, unchanged.body) == (304, b"")


def test_a_file_of_many_chunks_goes_out_whole(reactor: ThreadedClock, folder: Path) -> None:
    content = bytes(range(256)) * (3 * CHUNK // 256 + 7)
    (folder / "5130ccb17e3f3f5b.wasm").write_bytes(content)
    answer = ask(reactor, folder, "/5130ccb17e3f3f5b.wasm")
    assert (answer.status, answer.header("content-length")) == (200, str(len(content)))
    assert answer.body == content


def test_a_file_that_shrinks_while_sent_cuts_the_answer_short(
    reactor: ThreadedClock, folder: Path
) -> None:
    bundle = folder / "5731.bundle.694bce33e168bf29.js"
    bundle.write_bytes(b"x" * (2 * CHUNK))
    transport = send(reactor, folder, "/" + bundle.name)
    # before the first chunk is read in its thread; at once (a rewrite would pass through 0)
    os.truncate(bundle, CHUNK)
    reactor.run_until(lambda: transport.disconnecting)
    answer = Answer(transport.value())
    assert (answer.status, answer.header("content-length")) == (200, str(2 * CHUNK))
    assert len(answer.body) < 2 * CHUNK


def test_app_config_names_our_dicomweb_not_the_packages(
    reactor: ThreadedClock, folder: Path
) -> None:
    answer = ask(reactor, folder, "/app-config.js")
    assert answer.status == 200
    assert answer.header("content-type") == "text/javascript; charset=utf-8"
    assert answer.header("cache-control") == "no-cache"
    assert answer.body == app_config(BASE)
    assert b"demo" not in answer.body
    text = answer.body.decode()
    assert text.rstrip().endswith(f"}})(window.location.origin + {json.dumps(BASE)});")
    settings = json.loads(re.search(r"const settings = (\{.*?\n\});", text, re.S)[1])  # type: ignore[index]
    (source,) = settings["dataSources"]
    assert settings["defaultDataSourceName"] == source["sourceName"]
    assert source["namespace"] == "@ohif/extension-default.dataSourcesModule.dicomweb"
    configuration = source["configuration"]
    assert configuration["imageRendering"] == "wadors"
    assert configuration["qidoSupportsIncludeField"] is True
    assert configuration["staticWado"] is False
    assert configuration["enableStudyLazyLoad"] is True
    for root in ("qidoRoot", "wadoRoot", "wadoUriRoot"):
        assert f"{root}: dicomweb," in text


@pytest.mark.parametrize(
    "path",
    [
        "/missing.js",
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/assets/..%2F..%2Fsecret.txt",
        "/outside.txt",
        "/outside/secret.txt",
        "/.dicomd-viewer-version",
        "/assets/%00.svg",
    ],
)
def test_nothing_outside_the_folder_nor_a_dotfile(
    reactor: ThreadedClock, folder: Path, path: str
) -> None:
    answer = ask(reactor, folder, path)
    assert (answer.status, answer.body) == (404, b"no such file in the viewer\n")


def test_a_folder_without_the_viewer_says_what_to_run(
    reactor: ThreadedClock, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    answer = ask(reactor, empty, "/viewer")
    assert answer.status == 404
    assert answer.body == f"{empty} has no index.html: see scripts/viewer\n".encode()


segment = st.one_of(
    st.sampled_from([b"..", b".", b"", b"outside", b"outside.txt", b"secret.txt", b"assets"]),
    st.binary(max_size=12),
)


@given(segments=st.lists(segment, max_size=5))
def test_any_path_names_a_file_of_the_folder_or_none(
    shared_folder: Path, segments: list[bytes]
) -> None:
    viewer = ViewerFiles(shared_folder, BASE)
    found = viewer.file_named([part for part in segments if part])
    if found is not None:
        assert found.is_relative_to(viewer.folder)
        assert found.read_bytes() != SECRET

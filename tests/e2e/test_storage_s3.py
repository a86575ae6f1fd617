"""The archive's S3 object storage against moto's standalone S3 server over HTTP.

The storage runs in this process, so its memory is this process's: a large
instance must go up and come back in parts, its peak resident set growing by
far less than the file.  Threads share its one client.  The start-up check
must fail in one line, and within its timeouts, when the endpoint or the
bucket is not there or the endpoint does not answer.
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import pytest

from dicomd.archive.objects import MIB, ObjectStorageError, S3Storage
from tests.support.processes import LOCALHOST, free_tcp_port, reset_peak_memory, status_kib
from tests.support.s3 import MotoS3, moto_s3_server, random_file, use_aws_environment

PART = 5 * MIB
CONCURRENCY = 2
THREADS = 4
LARGE = 40 * MIB
MEMORY_BOUND = PART * CONCURRENCY
"""A part's worth for each part in flight, 10 MiB: a quarter of the file (measured: under 1 MiB)."""


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    with moto_s3_server(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture
def storage(moto: MotoS3, monkeypatch: pytest.MonkeyPatch) -> S3Storage:
    use_aws_environment(monkeypatch, moto.environment)
    return S3Storage(
        moto.url, moto.endpoint_url, part_size=PART, concurrency=CONCURRENCY, threads=THREADS
    )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


def peak_growth(action: Callable[[], object]) -> int:
    """How far this process's resident set rose above its size before ``action``, in bytes:
    the kernel's peak (VmHWM) or the highest of samples taken every 2 ms meanwhile, whichever
    is higher.  The kernel may update its peak lazily, after a buffer is gone again.

    The allocator's free memory goes back to the system first: in a long test session it
    would otherwise hold tens of MiB already resident, which an action could use unseen.
    """
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    reset_peak_memory("self")
    before = status_kib("self", "VmRSS")
    highest = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.002):
            highest[0] = max(highest[0], status_kib("self", "VmRSS"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        action()
    finally:
        done.set()
        sampler.join()
    return (max(status_kib("self", "VmHWM"), highest[0]) - before) * 1024


def test_a_large_instance_goes_up_in_parts_and_comes_back_in_bounded_memory(
    storage: S3Storage, tmp_path: Path
) -> None:
    warm_up = tmp_path / "warm-up"
    random_file(warm_up, 2 * PART + 1)
    storage.put(warm_up, "warm-up.dcm")
    storage.fetch("warm-up.dcm", tmp_path / "warm-up-fetched")
    source = tmp_path / "large.dcm"
    digest = random_file(source, LARGE)

    put_growth = peak_growth(lambda: storage.put(source, "1.2.3/large.dcm"))
    into = tmp_path / "fetched.dcm"
    fetch_growth = peak_growth(lambda: storage.fetch("1.2.3/large.dcm", into))

    assert sha256_of(into) == digest
    assert storage.size("1.2.3/large.dcm") == LARGE
    assert put_growth < MEMORY_BOUND, f"put of 40 MiB grew the peak RSS by {put_growth} bytes"
    assert fetch_growth < MEMORY_BOUND, f"fetch of 40 MiB grew the peak RSS by {fetch_growth}"
    # The measure itself sees a file read whole, even after the memory the calls above used.
    assert peak_growth(source.read_bytes) > LARGE * 0.9


def test_the_multipart_upload_is_one_object_of_eight_parts(
    storage: S3Storage, moto: MotoS3, tmp_path: Path
) -> None:
    source = tmp_path / "large.dcm"
    random_file(source, LARGE)
    storage.put(source, "eight-parts.dcm")
    client = boto3.client("s3", endpoint_url=moto.endpoint_url)
    head = client.head_object(Bucket=moto.bucket, Key="archive/eight-parts.dcm")
    assert head["ETag"].endswith('-8"')
    assert "Uploads" not in client.list_multipart_uploads(Bucket=moto.bucket)


def test_the_check_passes_on_a_writable_bucket(storage: S3Storage) -> None:
    storage.check()


def test_the_check_names_a_closed_port_in_one_line_within_seconds(
    moto: MotoS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_aws_environment(monkeypatch, moto.environment)
    endpoint_url = f"http://127.0.0.1:{free_tcp_port()}"
    storage = S3Storage(moto.url, endpoint_url)
    started = time.monotonic()
    with pytest.raises(ObjectStorageError) as error:
        storage.check()
    assert time.monotonic() - started < 10
    assert str(error.value) == (
        f"object storage {moto.url} at {endpoint_url} is not usable: "
        "cannot connect ([Errno 111] Connection refused)"
    )


def test_the_check_names_a_missing_bucket_in_one_line(
    moto: MotoS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_aws_environment(monkeypatch, moto.environment)
    storage = S3Storage("s3://no-such-bucket/archive", moto.endpoint_url)
    with pytest.raises(ObjectStorageError) as error:
        storage.check()
    assert str(error.value) == (
        f"object storage s3://no-such-bucket/archive at {moto.endpoint_url} is not usable: "
        "NoSuchBucket: The specified bucket does not exist"
    )


def test_the_check_gives_up_on_a_silent_endpoint_within_its_timeouts(
    moto: MotoS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An endpoint that takes connections and never answers (a hung server): three tries
    of 10 s each, then one line, rather than botocore's default of minutes."""
    use_aws_environment(monkeypatch, moto.environment)
    with socket.create_server((LOCALHOST, 0), backlog=8) as silent:
        endpoint_url = f"http://{LOCALHOST}:{silent.getsockname()[1]}"
        storage = S3Storage(moto.url, endpoint_url)
        started = time.monotonic()
        with pytest.raises(ObjectStorageError) as error:
            storage.check()
        elapsed = time.monotonic() - started
    assert 20 < elapsed < 40
    assert str(error.value) == (
        f"object storage {moto.url} at {endpoint_url} is not usable: no answer within 10 s"
    )


def test_archive_threads_share_one_client_within_its_connection_pool(
    storage: S3Storage, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """As many threads as the storage was made for store and fetch small and multipart
    instances at once: every object comes back whole, and urllib3 never has to open a
    connection beyond the pool (it says so in a warning, on the daemon's stderr)."""
    sources = [tmp_path / f"{number}.dcm" for number in range(THREADS * 3)]
    digests = {
        source: random_file(source, 2 * PART + 1 if number % 5 == 0 else 200_000)
        for number, source in enumerate(sources)
    }

    def round_trip(source: Path) -> str:
        storage.put(source, f"parallel/{source.name}")
        into = source.with_suffix(".fetched")
        storage.fetch(f"parallel/{source.name}", into)
        return sha256_of(into)

    with ThreadPoolExecutor(THREADS) as threads:
        fetched = dict(zip(sources, threads.map(round_trip, sources), strict=True))
    assert fetched == digests
    assert [record.getMessage() for record in caplog.records if record.levelno >= 30] == []

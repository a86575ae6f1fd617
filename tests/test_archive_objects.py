"""The archive's S3 object storage against moto's in-process S3 (``mock_aws``): no socket.

moto answers botocore's requests inside this process, so every request goes
through boto3 and s3transfer as it would to a real server, and the objects
can be looked at with a client of the test's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError, ResponseStreamingError
from botocore.response import StreamingBody
from zope.interface.verify import verifyObject

from dicomd.archive.objects import MIB, ObjectStorageError, S3Storage, parse_url
from dicomd.interfaces import IInstanceStorage
from tests.support.s3 import aws_environment, in_process_bucket, random_file, use_aws_environment

BUCKET = "dicomd-archive"
PART = 5 * MIB


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[boto3.client]:
    """moto's S3 in this process with one empty bucket, and a client to look into it."""
    with in_process_bucket(monkeypatch, tmp_path, BUCKET) as client:
        yield client


@pytest.fixture
def storage(aws: boto3.client) -> S3Storage:
    return S3Storage(f"s3://{BUCKET}/site/archive", part_size=PART, concurrency=2)


def file_of(path: Path, size: int) -> Path:
    random_file(path, size)
    return path


def one_line(error: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(error.value)
    assert message and "\n" not in message, message
    return message


@pytest.mark.parametrize(
    ("url", "bucket", "prefix"),
    [
        ("s3://dicomd-archive", "dicomd-archive", ""),
        ("s3://dicomd-archive/", "dicomd-archive", ""),
        ("s3://dicomd-archive/site", "dicomd-archive", "site/"),
        ("s3://dicomd-archive//site/a/", "dicomd-archive", "site/a/"),
        ("s3://Legacy_Bucket.1/x", "Legacy_Bucket.1", "x/"),
    ],
)
def test_an_s3_url_names_the_bucket_and_the_prefix(url: str, bucket: str, prefix: str) -> None:
    assert parse_url(url) == (bucket, prefix)


@pytest.mark.parametrize(
    "url",
    [
        "",
        "dicomd-archive/site",
        "http://dicomd-archive/site",
        "s3://",
        "s3:///site",
        "s3://ab/site",
        "s3://dicomd archive/site",
        "s3://dicomd-archive:9000/site",
        "s3://dicomd-archive/site?versionId=1",
        "s3://dicomd-archive/site#here",
    ],
)
def test_anything_else_is_refused_in_one_line(url: str) -> None:
    with pytest.raises(ValueError) as error:
        parse_url(url)
    assert "s3://bucket/prefix" in one_line(error)


def test_credentials_in_the_url_are_refused_without_repeating_them() -> None:
    with pytest.raises(ValueError) as error:
        parse_url("s3://AKIAEXAMPLE:hunter2@dicomd-archive/site")
    message = one_line(error)
    assert "hunter2" not in message and "AKIAEXAMPLE" not in message
    assert "AWS environment" in message


def test_credentials_in_the_endpoint_url_are_refused_without_repeating_them() -> None:
    with pytest.raises(ValueError) as error:
        S3Storage(f"s3://{BUCKET}", "http://minioadmin:hunter2@127.0.0.1:9000")
    message = one_line(error)
    assert "hunter2" not in message and "minioadmin" not in message
    assert "AWS environment" in message


@pytest.mark.parametrize("endpoint_url", ["127.0.0.1:9000", "ftp://minio:9000", "http://"])
def test_an_endpoint_url_is_http_or_https(endpoint_url: str) -> None:
    with pytest.raises(ValueError) as error:
        S3Storage(f"s3://{BUCKET}", endpoint_url)
    assert endpoint_url in one_line(error)


def test_parts_smaller_than_s3_accepts_are_refused() -> None:
    with pytest.raises(ValueError) as error:
        S3Storage(f"s3://{BUCKET}", part_size=MIB)
    assert "5 MiB" in one_line(error)


def test_it_is_an_instance_storage(storage: S3Storage) -> None:
    assert verifyObject(IInstanceStorage, storage)


def test_a_file_goes_up_and_comes_back_byte_for_byte(
    storage: S3Storage, aws: boto3.client, tmp_path: Path
) -> None:
    source = file_of(tmp_path / "instance.dcm", 70_000)
    storage.put(source, "1.2.3/1.2.3.4/1.2.3.4.5.dcm")

    stored = aws.get_object(Bucket=BUCKET, Key="site/archive/1.2.3/1.2.3.4/1.2.3.4.5.dcm")
    assert stored["Body"].read() == source.read_bytes()
    assert storage.exists("1.2.3/1.2.3.4/1.2.3.4.5.dcm")
    assert storage.size("1.2.3/1.2.3.4/1.2.3.4.5.dcm") == 70_000
    assert storage.local_path("1.2.3/1.2.3.4/1.2.3.4.5.dcm") is None
    into = tmp_path / "fetched.dcm"
    storage.fetch("1.2.3/1.2.3.4/1.2.3.4.5.dcm", into)
    assert into.read_bytes() == source.read_bytes()


def test_fetching_empties_the_file_it_writes_into(storage: S3Storage, tmp_path: Path) -> None:
    storage.put(file_of(tmp_path / "small.dcm", 10), "small.dcm")
    into = file_of(tmp_path / "fetched.dcm", 1000)
    storage.fetch("small.dcm", into)
    assert into.read_bytes() == (tmp_path / "small.dcm").read_bytes()


def test_an_empty_file_is_an_empty_object(storage: S3Storage, tmp_path: Path) -> None:
    storage.put(file_of(tmp_path / "empty", 0), "empty")
    assert storage.size("empty") == 0


def test_a_file_of_one_part_is_one_request_and_a_larger_one_a_multipart_upload(
    storage: S3Storage, aws: boto3.client, tmp_path: Path
) -> None:
    one_part = file_of(tmp_path / "one-part", PART)
    three_parts = file_of(tmp_path / "three-parts", 2 * PART + 1)
    storage.put(one_part, "one-part")
    storage.put(three_parts, "three-parts")

    assert "-" not in aws.head_object(Bucket=BUCKET, Key="site/archive/one-part")["ETag"]
    assert aws.head_object(Bucket=BUCKET, Key="site/archive/three-parts")["ETag"].endswith('-3"')
    into = tmp_path / "fetched"
    storage.fetch("three-parts", into)
    assert into.read_bytes() == three_parts.read_bytes()
    assert storage.size("three-parts") == 2 * PART + 1


def answer_with_error(
    storage: S3Storage, operation: str, code: str, message: str, *, part: int | None = None
) -> None:
    """Make the server's answer to ``operation`` (to its part ``part`` only, if given) an
    error, injected into botocore's request path before the request is sent."""

    def refuse(params: dict[str, object], **_: object) -> None:
        if part is None or params["PartNumber"] == part:
            raise ClientError({"Error": {"Code": code, "Message": message}}, operation)

    storage._client.meta.events.register(f"provide-client-params.s3.{operation}", refuse)


def test_a_failed_multipart_upload_leaves_neither_object_nor_parts(
    storage: S3Storage, aws: boto3.client, tmp_path: Path
) -> None:
    answer_with_error(storage, "UploadPart", "InternalError", "We encountered an\nerror.", part=2)
    with pytest.raises(ObjectStorageError) as error:
        storage.put(file_of(tmp_path / "large", 3 * PART), "large")

    assert one_line(error) == (
        f"cannot store s3://{BUCKET}/site/archive/large at {storage.endpoint_url}: "
        "InternalError: We encountered an error."
    )
    assert isinstance(error.value, OSError)
    assert not storage.exists("large")
    assert "Uploads" not in aws.list_multipart_uploads(Bucket=BUCKET)


def test_the_check_says_when_a_missing_object_is_forbidden_rather_than_missing(
    storage: S3Storage,
) -> None:
    """What S3 answers a HEAD of a missing object when the credentials may not list the
    bucket: ``exists`` could never say False, so the archive must not start."""
    answer_with_error(storage, "HeadObject", "403", "Forbidden")
    with pytest.raises(ObjectStorageError) as error:
        storage.check()
    assert one_line(error).endswith(
        "is not usable: a missing object answers 403, not 404 (allow s3:ListBucket on the bucket)"
    )


class CutShort:
    """An object's body whose connection is reset after ``limit`` bytes."""

    def __init__(self, body: StreamingBody, limit: int) -> None:
        self._body = body
        self._limit = limit

    def iter_chunks(self, size: int) -> Iterator[bytes]:
        given = 0
        for chunk in self._body.iter_chunks(size):
            if given + len(chunk) > self._limit:
                yield chunk[: self._limit - given]
                raise ResponseStreamingError(error="[Errno 104] Connection reset by peer")
            given += len(chunk)
            yield chunk

    def close(self) -> None:
        self._body.close()


def cut_bodies_short(storage: S3Storage, times: int) -> list[dict[str, object]]:
    """The first ``times`` object bodies the storage gets stop after a MiB; the list fills
    with the parameters of its GetObject requests."""
    requests: list[dict[str, object]] = []

    def record(params: dict[str, object], **_: object) -> None:
        requests.append(dict(params))

    def cut(parsed: dict[str, object], **_: object) -> None:
        if len(requests) <= times:
            parsed["Body"] = CutShort(parsed["Body"], MIB)

    storage._client.meta.events.register("provide-client-params.s3.GetObject", record)
    storage._client.meta.events.register("after-call.s3.GetObject", cut)
    return requests


def test_a_body_cut_short_is_fetched_on_from_where_it_stopped(
    storage: S3Storage, tmp_path: Path
) -> None:
    source = file_of(tmp_path / "instance.dcm", 3 * MIB)
    storage.put(source, "instance.dcm")
    requests = cut_bodies_short(storage, times=2)
    into = tmp_path / "fetched.dcm"
    storage.fetch("instance.dcm", into)

    assert into.read_bytes() == source.read_bytes()
    assert [request.get("Range") for request in requests] == [
        None,
        f"bytes={MIB}-",
        f"bytes={2 * MIB}-",
    ]
    assert len({request.get("IfMatch") for request in requests[1:]}) == 1


def test_a_body_cut_short_three_times_fails_the_fetch_in_one_line(
    storage: S3Storage, tmp_path: Path
) -> None:
    storage.put(file_of(tmp_path / "instance.dcm", 5 * MIB), "instance.dcm")
    cut_bodies_short(storage, times=3)
    with pytest.raises(ObjectStorageError) as error:
        storage.fetch("instance.dcm", tmp_path / "fetched.dcm")
    assert one_line(error) == (
        f"cannot fetch s3://{BUCKET}/site/archive/instance.dcm at {storage.endpoint_url}: "
        "An error occurred while reading from response stream: "
        "[Errno 104] Connection reset by peer"
    )


def test_an_object_replaced_while_it_was_fetched_is_not_pieced_together(
    storage: S3Storage, aws: boto3.client, tmp_path: Path
) -> None:
    storage.put(file_of(tmp_path / "first.dcm", 3 * MIB), "instance.dcm")
    cut_bodies_short(storage, times=1)

    def replace(**_: object) -> None:
        aws.put_object(Bucket=BUCKET, Key="site/archive/instance.dcm", Body=b"another copy")

    storage._client.meta.events.register("after-call.s3.GetObject", replace)
    with pytest.raises(ObjectStorageError) as error:
        storage.fetch("instance.dcm", tmp_path / "fetched.dcm")
    assert "PreconditionFailed" in one_line(error)


def test_a_missing_object_is_file_not_found(storage: S3Storage, tmp_path: Path) -> None:
    into = tmp_path / "fetched"
    with pytest.raises(FileNotFoundError) as error:
        storage.fetch("1.2.3/missing.dcm", into)
    assert one_line(error) == (
        f"cannot fetch s3://{BUCKET}/site/archive/1.2.3/missing.dcm at {storage.endpoint_url}: "
        "no such object"
    )
    assert not storage.exists("1.2.3/missing.dcm")
    assert storage.size("1.2.3/missing.dcm") is None


def test_removing_is_quiet_about_an_object_already_gone(storage: S3Storage, tmp_path: Path) -> None:
    storage.put(file_of(tmp_path / "instance.dcm", 100), "instance.dcm")
    storage.remove("instance.dcm")
    assert not storage.exists("instance.dcm")
    storage.remove("instance.dcm")


def test_keys_are_relative_to_the_prefix(storage: S3Storage, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        storage.put(file_of(tmp_path / "instance.dcm", 1), "/etc/passwd")
    with pytest.raises(ValueError):
        storage.exists("")


def test_the_check_leaves_nothing_behind(storage: S3Storage, aws: boto3.client) -> None:
    storage.check()
    assert "Contents" not in aws.list_objects_v2(Bucket=BUCKET)


def test_a_missing_bucket_fails_the_check_and_every_store_in_one_line(
    aws: boto3.client, tmp_path: Path
) -> None:
    storage = S3Storage("s3://no-such-bucket/archive", part_size=PART)
    with pytest.raises(ObjectStorageError) as error:
        storage.check()
    assert one_line(error) == (
        f"object storage s3://no-such-bucket/archive at {storage.endpoint_url} is not usable: "
        "NoSuchBucket: The specified bucket does not exist"
    )
    with pytest.raises(ObjectStorageError) as error:
        storage.put(file_of(tmp_path / "instance.dcm", 10), "instance.dcm")
    assert one_line(error).endswith("NoSuchBucket: The specified bucket does not exist")
    with pytest.raises(ObjectStorageError):
        storage.fetch("instance.dcm", tmp_path / "fetched")


def test_without_credentials_the_check_says_so_before_any_request(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No credentials in the environment nor in ``~/.aws``: botocore cannot sign, so it
    never connects (the endpoint is a port nothing listens on, and it is not reached)."""
    environment = aws_environment({}, tmp_path)
    del environment["AWS_ACCESS_KEY_ID"], environment["AWS_SECRET_ACCESS_KEY"]
    use_aws_environment(monkeypatch, environment)
    storage = S3Storage(f"s3://{BUCKET}/archive", "http://127.0.0.1:9")
    with pytest.raises(ObjectStorageError) as error:
        storage.check()
    assert one_line(error) == (
        f"object storage s3://{BUCKET}/archive at http://127.0.0.1:9 is not usable: "
        "no AWS credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or ~/.aws)"
    )

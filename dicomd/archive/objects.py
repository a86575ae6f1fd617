"""Instances in S3-compatible object storage (AWS S3, MinIO, Ceph RGW) through boto3.

The archive receives each instance into a local file first, as it does for
the local file tree; this backend then copies that file to its object and
fetches objects back into local files for retrieval.  Every method blocks
and is called from the archive's threads, never from the reactor.

Why it is built this way:

- One boto3 client, shared by every thread (botocore clients are
  thread-safe), with a connection pool large enough for all of them at once:
  a smaller pool makes urllib3 open and drop extra connections and print a
  warning on stderr.
- Timeouts and retries are bounded (botocore's ``standard`` retry mode,
  three tries in all, 5 s to connect, 10 s of silence while waiting for an
  answer): a refused connection ends a store with an error at once, a silent
  endpoint in about 30 s, where botocore's defaults would hold the thread
  for minutes.  Standard and ``~/.aws`` settings still apply to the rest
  (``AWS_REQUEST_CHECKSUM_CALCULATION=when_required`` for servers that
  refuse boto3's default checksums).
- A file no larger than one part goes up as one ``PutObject`` from the
  calling thread.  A larger file goes up as a multipart upload through one
  s3transfer manager shared by all threads: its ``concurrency`` worker
  threads send every part of every upload, each part read from the file as
  it is sent, so memory stays bounded by parts in flight, not by file
  size.  S3 makes a ``PutObject`` or a completed multipart upload visible
  whole or not at all, and the manager aborts an upload that failed.
- Fetching streams the object into a file in small chunks; botocore checks
  its length, and its checksum where the store keeps one; a body cut short
  is asked for again from where it stopped.
- Credentials come from boto3's default chain (environment, ``~/.aws``
  files, instance roles), never from dicomd's configuration.
- Every failure becomes one ``OSError`` with one line naming the object, the
  endpoint and the cause, so the archive can answer "out of resources" and
  log a line; a missing object is a ``FileNotFoundError``.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import BinaryIO, Final, NoReturn
from urllib.parse import urlsplit

import boto3
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    IncompleteReadError,
    NoCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from botocore.response import StreamingBody
from zope.interface import implementer

from dicomd.interfaces import IInstanceStorage

MIB: Final = 1024 * 1024
MINIMUM_PART_SIZE: Final = 5 * MIB
"""S3 refuses smaller parts (all but the last) of a multipart upload."""
CONNECT_TIMEOUT: Final = 5.0
READ_TIMEOUT: Final = 10.0
ATTEMPTS: Final = 3
"""Tries of one request in all, with botocore's ``standard`` back-off between them."""
FETCH_CHUNK: Final = MIB
"""How much of an object is held in memory at once while it is fetched."""

_BUCKET: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]")
"""What S3 and the compatible servers accept as a bucket name, at its widest (AWS's
legacy names); a server with stricter rules says so when the bucket is checked."""
_MISSING: Final = frozenset({"404", "NoSuchKey", "NotFound"})
_CUT_SHORT: Final = (ResponseStreamingError, ReadTimeoutError, IncompleteReadError)
"""A body that stopped coming before its end: what ``fetch`` asks for again."""


class ObjectStorageError(OSError):
    """The object store failed: one line naming the object, the endpoint and the cause."""


def parse_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> ``(bucket, "prefix/")``; ``s3://bucket`` -> ``(bucket, "")``.

    A ``ValueError`` of one line for anything else, and in particular for
    credentials in the URL: they belong in the environment or ``~/.aws``.
    """
    parts = urlsplit(url)
    if parts.scheme != "s3":
        raise ValueError(f"not an S3 URL (s3://bucket/prefix): {url!r}")
    if "@" in parts.netloc:
        raise ValueError(
            f"credentials do not belong in the S3 URL {parts.scheme}://...@{parts.hostname}: "
            "use the AWS environment or ~/.aws files"
        )
    if parts.query or parts.fragment or not _BUCKET.fullmatch(parts.netloc):
        raise ValueError(f"not an S3 URL (s3://bucket/prefix): {url!r}")
    prefix = parts.path.strip("/")
    return parts.netloc, f"{prefix}/" if prefix else ""


def check_endpoint_url(endpoint_url: str) -> str:
    """The endpoint URL of an S3-compatible server as given, or a one-line ``ValueError``."""
    parts = urlsplit(endpoint_url)
    if "@" in parts.netloc:
        raise ValueError(
            f"credentials do not belong in the endpoint URL {parts.scheme}://...@{parts.hostname}: "
            "use the AWS environment or ~/.aws files"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) endpoint URL: {endpoint_url!r}")
    return endpoint_url


@implementer(IInstanceStorage)
class S3Storage:
    """Instances as objects under ``s3://bucket/prefix``, each stored and fetched whole.

    ``part_size`` is the largest file sent as one request and the size of a
    multipart upload's parts; ``concurrency`` is how many parts are in flight
    at once, across all uploads; ``threads`` is how many archive threads may
    call at once (it sizes the connection pool).
    """

    def __init__(
        self,
        url: str,
        endpoint_url: str | None = None,
        *,
        part_size: int = 8 * MIB,
        concurrency: int = 4,
        threads: int = 8,
    ) -> None:
        if part_size < MINIMUM_PART_SIZE:
            raise ValueError(f"S3 part size must be at least 5 MiB, not {part_size} bytes")
        if concurrency < 1 or threads < 1:
            raise ValueError("S3 concurrency and threads must be at least 1")
        self.url = url
        self.bucket, self.prefix = parse_url(url)
        self.part_size = part_size
        config = Config(
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
            retries={"mode": "standard", "total_max_attempts": ATTEMPTS},
            max_pool_connections=threads + concurrency,
            # Custom endpoints (MinIO, Ceph RGW, moto) rarely resolve bucket.host names.
            s3={"addressing_style": "path"} if endpoint_url else None,
        )
        self._client = boto3.session.Session().client(
            "s3",
            endpoint_url=check_endpoint_url(endpoint_url) if endpoint_url else None,
            config=config,
        )
        self.endpoint_url: str = self._client.meta.endpoint_url
        self._transfers = create_transfer_manager(
            self._client,
            TransferConfig(
                multipart_threshold=part_size,
                multipart_chunksize=part_size,
                max_concurrency=concurrency,
                preferred_transfer_client="classic",
            ),
        )

    def check(self) -> None:
        """Store, read back, remove and look for a probe object: the bucket is there and
        ours to use, and a missing object is told from a forbidden one.

        S3 answers 403, not 404, for a missing object to credentials that may
        not list the bucket: every ``exists`` would then fail, so it is said
        here, once.  Each node's probe has a name of its own, so nodes sharing
        a bucket can check at the same time.
        """
        key = self._object(f".dicomd-check/{uuid.uuid4().hex}")
        probe = b"dicomd checks that it can write here\n"
        try:
            self._client.put_object(Bucket=self.bucket, Key=key, Body=probe)
            read_back = self._client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            self._client.delete_object(Bucket=self.bucket, Key=key)
        except (BotoCoreError, ClientError) as error:
            raise self._unusable(cause(error)) from None
        if read_back != probe:
            raise self._unusable("it gave back another probe than it was given")
        try:
            self._client.head_object(Bucket=self.bucket, Key=key)
        except (BotoCoreError, ClientError) as error:
            if _is_missing(error):
                return
            if _is_forbidden(error):
                raise self._unusable(
                    "a missing object answers 403, not 404 (allow s3:ListBucket on the bucket)"
                ) from None
            raise self._unusable(cause(error)) from None
        raise self._unusable("it kept the probe once removed")

    def _unusable(self, why: str) -> ObjectStorageError:
        where = f"{self.url} at {self.endpoint_url}"
        return ObjectStorageError(f"object storage {where} is not usable: {why}")

    def put(self, source: Path, key: str) -> None:
        """Store ``source``'s content as the object ``key``; it exists whole when this returns."""
        try:
            if source.stat().st_size <= self.part_size:
                with source.open("rb") as body:
                    self._client.put_object(Bucket=self.bucket, Key=self._object(key), Body=body)
            else:
                self._transfers.upload(str(source), self.bucket, self._object(key)).result()
        except (BotoCoreError, ClientError) as error:
            self._fail("store", key, error)

    def fetch(self, key: str, into: Path) -> None:
        """Write the object ``key`` into the file ``into`` (made or emptied), a chunk at a time.

        A body cut short (a connection reset, a silence past the read
        timeout) is asked for again from where it stopped, and only of the
        same object (its ETag), three tries in all: botocore retries a request
        until its answer begins, not while its body streams.  On an error
        ``into`` may hold a part of the object: the caller owns it.
        """
        request = {"Bucket": self.bucket, "Key": self._object(key)}
        try:
            with into.open("wb") as out:
                answer = self._client.get_object(**request)
                for tries_left in reversed(range(ATTEMPTS)):
                    try:
                        _copy(answer["Body"], out)
                        return
                    except _CUT_SHORT:
                        if not tries_left:
                            raise
                    resumed = {"Range": f"bytes={out.tell()}-", "IfMatch": answer["ETag"]}
                    answer = self._client.get_object(**request, **resumed)
        except (BotoCoreError, ClientError) as error:
            self._fail("fetch", key, error)

    def local_path(self, key: str) -> None:
        """No object is a file on this machine: every instance sent is fetched first."""
        return None

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def size(self, key: str) -> int | None:
        """The object's size in bytes, or ``None`` if there is no such object."""
        try:
            answer = self._client.head_object(Bucket=self.bucket, Key=self._object(key))
        except (BotoCoreError, ClientError) as error:
            if _is_missing(error):
                return None
            self._fail("look up", key, error)
        return answer["ContentLength"]

    def remove(self, key: str) -> None:
        """Remove the object ``key``; removing an object that is not there is no error."""
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._object(key))
        except (BotoCoreError, ClientError) as error:
            self._fail("remove", key, error)

    def _object(self, key: str) -> str:
        if not key or key.startswith("/"):
            raise ValueError(f"not a relative object key: {key!r}")
        return self.prefix + key

    def _fail(self, action: str, key: str, error: BotoCoreError | ClientError) -> NoReturn:
        where = f"s3://{self.bucket}/{self._object(key)} at {self.endpoint_url}"
        if _is_missing(error):
            raise FileNotFoundError(f"cannot {action} {where}: no such object") from None
        raise ObjectStorageError(f"cannot {action} {where}: {cause(error)}") from None


def _copy(body: StreamingBody, out: BinaryIO) -> None:
    """Not ``with body``: botocore's body enters as its raw stream, which checks neither
    the length nor the checksum of what it reads."""
    try:
        for chunk in body.iter_chunks(FETCH_CHUNK):
            out.write(chunk)
    finally:
        body.close()


def cause(error: BotoCoreError | ClientError) -> str:
    """What went wrong, in one line a site's administrator can act on."""
    if isinstance(error, NoCredentialsError):
        return "no AWS credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or ~/.aws)"
    if isinstance(error, EndpointConnectionError):
        reason = str(error.kwargs.get("error", "")).rpartition(": ")[2]
        return f"cannot connect ({reason or 'no connection'})"
    if isinstance(error, ConnectTimeoutError):
        return f"no connection within {CONNECT_TIMEOUT:g} s"
    if isinstance(error, ReadTimeoutError):
        return f"no answer within {READ_TIMEOUT:g} s"
    if isinstance(error, ClientError):
        message = error.response.get("Error", {}).get("Message") or "no message"
        return " ".join(f"{_code(error)}: {message}".split())
    return " ".join(str(error).split())


def _code(error: ClientError) -> str:
    return error.response.get("Error", {}).get("Code") or "error"


def _is_forbidden(error: BotoCoreError | ClientError) -> bool:
    return isinstance(error, ClientError) and _code(error) in ("403", "AccessDenied")


def _is_missing(error: BotoCoreError | ClientError) -> bool:
    return isinstance(error, ClientError) and _code(error) in _MISSING

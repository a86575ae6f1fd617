"""moto's standalone S3 server: a real HTTP endpoint for the object storage tests.

The server runs as a process of its own on a free port of 127.0.0.1, so the
code under test talks to it through boto3's whole HTTP stack, as it would to
AWS, MinIO or Ceph.  Credentials are dummies put in the environment the
standard way (``AWS_ACCESS_KEY_ID``...); the environment also keeps the
developer's own ``~/.aws`` files, profile and instance metadata out of the
tests.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import (
    LOCALHOST,
    STARTUP_DEADLINE,
    OutputCollector,
    free_tcp_port,
    stop_process,
    wait_until_listening,
)

BUCKET = "dicomd-archive"
REGION = "us-east-1"


def aws_environment(base: Mapping[str, str], configuration_folder: Path) -> dict[str, str]:
    """``base`` with dummy AWS credentials, and nothing else boto3 would look for.

    ``configuration_folder`` (empty) stands in for ``~/.aws``.
    """
    env = {name: value for name, value in base.items() if not name.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID="dicomd-test",
        AWS_SECRET_ACCESS_KEY="dicomd-test-secret",
        AWS_DEFAULT_REGION=REGION,
        AWS_CONFIG_FILE=str(configuration_folder / "config"),
        AWS_SHARED_CREDENTIALS_FILE=str(configuration_folder / "credentials"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    return env


@dataclass(frozen=True)
class MotoS3:
    """A running moto S3 server with one empty bucket."""

    endpoint_url: str
    bucket: str
    environment: dict[str, str]
    """The environment of a process that uses it: this one's, with dummy AWS credentials."""
    pid: int

    @property
    def url(self) -> str:
        """The ``storage.url`` of an archive in the bucket."""
        return f"s3://{self.bucket}/archive"


@contextlib.contextmanager
def moto_s3_server(folder: Path) -> Iterator[MotoS3]:
    """Start ``python -m moto.server`` on a free port, make a bucket, stop it at the end.

    ``folder`` receives an empty stand-in for ``~/.aws``.  A missing moto is a
    failure, not a skip: ``pip install -e .[test]`` installs it.
    """
    try:
        import moto.server  # noqa: F401
    except ImportError as error:
        pytest.fail(f"moto[server] is not installed ({error}): pip install -e '.[test]'")
    configuration_folder = folder / "aws"
    configuration_folder.mkdir(exist_ok=True)
    environment = aws_environment(os.environ, configuration_folder)
    port = free_tcp_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", LOCALHOST, "-p", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=environment,
    )
    output = OutputCollector(process.stdout)
    endpoint_url = f"http://{LOCALHOST}:{port}"
    try:
        wait_until_listening(process, port, output, name="moto's S3 server")
        _create_bucket(endpoint_url, BUCKET)
        yield MotoS3(endpoint_url, BUCKET, environment, process.pid)
    finally:
        stop_process(process)


def _create_bucket(endpoint_url: str, bucket: str) -> None:
    """``PUT /bucket``, which also waits for the server to answer its first request.

    moto checks no signature, so no client library is needed here.
    """
    request = urllib.request.Request(f"{endpoint_url}/{bucket}", method="PUT")
    with urllib.request.urlopen(request, timeout=STARTUP_DEADLINE) as answer:
        assert answer.status == 200, f"creating bucket {bucket} answered {answer.status}"


def use_aws_environment(monkeypatch: pytest.MonkeyPatch, environment: Mapping[str, str]) -> None:
    """Make this process's AWS variables those of ``environment``, for code run in-process."""
    for name in list(os.environ):
        if name.startswith("AWS_") and name not in environment:
            monkeypatch.delenv(name)
    for name, value in environment.items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)


@contextlib.contextmanager
def in_process_bucket(monkeypatch: pytest.MonkeyPatch, folder: Path, bucket: str) -> Iterator[Any]:
    """moto's S3 inside this process (``mock_aws``: no socket) with one empty ``bucket``,
    and a boto3 client to look into it; the AWS environment is the dummy one."""
    import boto3
    from moto import mock_aws

    use_aws_environment(monkeypatch, aws_environment({}, folder))
    with mock_aws():
        client = boto3.client("s3", region_name=REGION)
        client.create_bucket(Bucket=bucket)
        yield client


def random_file(path: Path, size: int) -> str:
    """Write ``size`` random bytes to ``path`` a MiB at a time; their SHA-256.

    Random, so that no part of a multipart upload repeats another.
    """
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for start in range(0, size, 1024 * 1024):
            chunk = os.urandom(min(1024 * 1024, size - start))
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()

"""Several dicomd nodes sharing one archive: a PostgreSQL index and a bucket of moto's S3.

Each node is a daemon of its own (``twistd -n dicomd``) on its own port and in
its own folder (``storage.path``, where its incoming files go); all of them name
one database (``index.url``) and one prefix of one bucket (``storage.url``).
The tests drive them with dcmtk, as sites do, and judge the archive from
outside: the rows through psycopg, the objects through boto3.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import IO, Any, Final

import boto3
import psycopg
import pytest
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from tests.support.archive import archive_plugin
from tests.support.daemons import RunningDaemon, start_daemon
from tests.support.dcmtk import DcmtkPeer, dcmtk_environment, dcmtk_peer, require_dcmtk, run_dcmtk
from tests.support.postgres import Cluster
from tests.support.processes import LOCALHOST
from tests.support.s3 import MotoS3, moto_s3_server

DESTINATION = "STORESCP"
"""The AE title of the move destination (`storescp_fixture`)."""
SENDER_TIMEOUT = 120.0
"""Seconds a storescu run may take: hundreds of instances on a machine of two shared cores."""
TROUBLE_WORDS = ("Traceback", "Unhandled")
"""What a daemon's log never says: a traceback, or Twisted's unhandled error in a Deferred."""


@pytest.fixture(scope="module", name="moto")
def moto_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    """moto's S3 server for the tests of one module."""
    with moto_s3_server(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture(scope="module", name="storescp")
def storescp_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DcmtkPeer]:
    """A move destination for the tests of one module: storescp keeping each data set bit
    for bit (``+B``), under the AE title ``DESTINATION``."""
    folder = tmp_path_factory.mktemp("storescp")
    with dcmtk_peer("storescp", folder, "+B", "-aet", DESTINATION, "-od", str(folder)) as peer:
        yield peer


def destinations(storescp: DcmtkPeer) -> dict[str, dict[str, Any]]:
    """The ``destinations:`` of a node that may move to ``storescp``."""
    return {DESTINATION: {"host": LOCALHOST, "port": storescp.port}}


@dataclass(frozen=True)
class SharedArchive:
    """One archive several nodes share: a database of the cluster and a prefix of the bucket."""

    name: str
    index_url: str
    s3: MotoS3

    @classmethod
    def create(cls, cluster: Cluster, s3: MotoS3, name: str) -> SharedArchive:
        """A new archive: an empty database ``name``, and the prefix ``name`` of the bucket."""
        cluster.create_database(name)
        return cls(name, cluster.tcp_url(name), s3)

    @property
    def storage_url(self) -> str:
        return f"s3://{self.s3.bucket}/{self.name}"

    def start_node(
        self, directory: Path, *, workers: int = 1, duplicates: str = "keep-first", **config: Any
    ) -> RunningDaemon:
        """Start (or start again) the node whose folder is ``directory``: this archive, its
        ``workers`` processes, the archive plugin under a ``duplicates`` policy, and
        ``config`` beside."""
        directory.mkdir(parents=True, exist_ok=True)
        overrides = {
            "workers": workers,
            "index": {"url": self.index_url},
            "storage": {"url": self.storage_url, "endpoint_url": self.s3.endpoint_url},
            "plugins": [archive_plugin(duplicates=duplicates)],
            **config,
        }
        return start_daemon(directory, overrides, environment=self.aws_environment)

    @property
    def aws_environment(self) -> dict[str, str]:
        """The dummy credentials moto takes, the standard way: the variables boto3 reads."""
        return {key: value for key, value in self.s3.environment.items() if key.startswith("AWS_")}

    def rows(self) -> dict[str, str]:
        """SOP Instance UID -> object key (relative to the prefix), from the index's rows."""
        with psycopg.connect(self.index_url) as connection:
            return dict(connection.execute("SELECT SOPInstanceUID, path FROM instances"))

    def row_counts(self) -> dict[str, int]:
        """How many rows each table of the index holds."""
        with psycopg.connect(self.index_url) as connection:
            return {
                table: connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                for table in ("patients", "studies", "series", "instances")
            }

    @cached_property
    def _client(self) -> Any:
        """One boto3 client for the test's look-ups (making one costs a tenth of a second)."""
        session = boto3.session.Session(
            aws_access_key_id=self.aws_environment["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.aws_environment["AWS_SECRET_ACCESS_KEY"],
            region_name=self.aws_environment["AWS_DEFAULT_REGION"],
        )
        return session.client("s3", endpoint_url=self.s3.endpoint_url)

    def object_keys(self) -> set[str]:
        """The keys of every object under the prefix, relative to it."""
        client = self._client
        keys: set[str] = set()
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=self.s3.bucket, Prefix=f"{self.name}/"
        ):
            keys.update(
                item["Key"].removeprefix(f"{self.name}/") for item in page.get("Contents", [])
            )
        return keys

    def object_bytes(self, key: str) -> bytes:
        kept = self._client.get_object(Bucket=self.s3.bucket, Key=f"{self.name}/{key}")
        return kept["Body"].read()


@dataclass(frozen=True)
class Sent:
    """One instance as it was written to be sent."""

    path: Path
    study_uid: str
    series_uid: str
    sop_instance_uid: str


def ct_small_copies(
    folder: Path,
    *,
    studies: int,
    series_per_study: int,
    per_series: int,
    parts: int = 1,
    image_comments: str = "",
) -> list[Sent]:
    """Copies of pydicom's CT_small.dcm with fresh UIDs: ``studies`` patients each with a
    study of ``series_per_study`` series of ``per_series`` images.

    The files are dealt in turn into ``folder/part0`` ... so that every study, and every
    series, is spread over the parts (each part goes to another node).
    """
    source = dcmread(get_testdata_file("CT_small.dcm"))
    del source.DataSetTrailingPadding  # storescu leaves it out: the sent bytes would differ
    sent = []
    for study in range(studies):
        study_uid = generate_uid()
        for series_number in range(1, series_per_study + 1):
            series_uid = generate_uid()
            for number in range(1, per_series + 1):
                dataset = source.copy()
                dataset.PatientID, dataset.PatientName = f"NODES{study}", f"Nodes^Patient{study}"
                dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study_uid, series_uid
                dataset.SeriesNumber, dataset.InstanceNumber = series_number, number
                dataset.SOPInstanceUID = generate_uid()
                dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
                if image_comments:
                    dataset.ImageComments = image_comments
                part = folder / f"part{len(sent) % parts}"
                part.mkdir(parents=True, exist_ok=True)
                path = part / f"{dataset.SOPInstanceUID}.dcm"
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    dataset.save_as(path, enforce_file_format=True)
                sent.append(Sent(path, study_uid, series_uid, dataset.SOPInstanceUID))
    return sent


def part(sent: Iterable[Sent], number: int) -> list[Path]:
    """The files ``ct_small_copies`` dealt into part ``number``."""
    return [instance.path for instance in sent if instance.path.parent.name == f"part{number}"]


def rewritten(sent: Iterable[Sent], folder: Path, image_comments: str) -> list[Sent]:
    """The same instances (same UIDs, same length) with other Image Comments, in ``folder``:
    a second copy that can be told from the first."""
    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for instance in sent:
        dataset = dcmread(instance.path)
        dataset.ImageComments = image_comments
        path = folder / instance.path.name
        dataset.save_as(path, enforce_file_format=True)
        copies.append(
            Sent(path, instance.study_uid, instance.series_uid, instance.sop_instance_uid)
        )
    return copies


def start_storescu(
    node: RunningDaemon, files: Sequence[Path], output: IO[str]
) -> subprocess.Popen[str]:
    """storescu sending ``files`` in their order to ``node`` on one association, going on
    after a failed store (``-nh``), each response printed (``-v``)."""
    command = [require_dcmtk("storescu"), "-v", "-nh", "-aec", node.ae_title]
    return subprocess.Popen(
        [*command, LOCALHOST, str(node.port), *map(str, files)],
        env=dcmtk_environment(),
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT,
        text=True,
    )


DCMTK_STATUS_NAMES: Final = {
    "Success": 0x0000,
    "Warning: CoercionOfDataElements": 0xB000,
    "Refused: OutOfResources": 0xA700,
    "Error: CannotUnderstand": 0xC000,
}
"""What storescu ``-v`` prints for the statuses it names; others it prints as "Unknown
Status: 0x111"."""


def store_responses(storescu_output: str) -> dict[str, int]:
    """File name -> the status storescu ``-v`` was answered, for each file whose response it
    received."""
    responses, sending = {}, None
    for line in storescu_output.splitlines():
        if "Sending file: " in line:
            sending = Path(line.split("Sending file: ", 1)[1].strip()).name
        elif "Received Store Response (" in line and sending is not None:
            responses[sending] = _status_code(line.split("Received Store Response (", 1)[1])
            sending = None
    return responses


def _status_code(text: str) -> int:
    """The status code in what storescu printed between the parentheses."""
    name = text.rstrip().removesuffix(")")
    if name in DCMTK_STATUS_NAMES:
        return DCMTK_STATUS_NAMES[name]
    number = re.search(r"0x([0-9a-fA-F]+)", name)
    assert number is not None, f"storescu printed a status this test cannot read: {name}"
    return int(number.group(1), 16)


def find(node: RunningDaemon, folder: Path, level: str, *keys: str) -> list[Dataset]:
    """What ``findscu`` (Study Root) gets from ``node`` at ``level`` for ``keys``
    (``Keyword=value`` or a bare ``Keyword`` to return), each answer kept in ``folder``."""
    folder.mkdir(parents=True)
    found = run_dcmtk(
        "findscu", "-S", "-X", "-od", str(folder), "-aec", node.ae_title,
        "-k", f"QueryRetrieveLevel={level}", *(arg for key in keys for arg in ("-k", key)),
        LOCALHOST, str(node.port),
        timeout=SENDER_TIMEOUT,
    )  # fmt: skip
    assert found.returncode == 0, found.stdout[-3000:] + found.stderr[-3000:]
    return [dcmread(path) for path in sorted(folder.iterdir())]


def move_study(node: RunningDaemon, study_uid: str, destination: str) -> str:
    """``movescu`` of one study through ``node`` to ``destination``; its output."""
    moved = run_dcmtk(
        "movescu", "-v", "-S", "-aec", node.ae_title, "-aem", destination,
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
        LOCALHOST, str(node.port),
        timeout=SENDER_TIMEOUT,
    )  # fmt: skip
    output = moved.stdout + moved.stderr
    assert moved.returncode == 0, output[-3000:]
    return output


def received_files(folder: Path) -> dict[str, Path]:
    """SOP Instance UID -> file, for every file storescp wrote into ``folder``."""
    return {
        str(dcmread(path, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID): path
        for path in folder.iterdir()
    }


def kill_node(node: RunningDaemon) -> None:
    """SIGKILL the node and every worker process of it, the daemon first (it would start
    a worker again): the node's power cut."""
    pids = [node.pid, *(pid for pid in node.serving_processes() if pid != node.pid)]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    node.process.wait(10)
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids[1:]):  # orphaned workers: whoever reaps them
        assert time.monotonic() < deadline, f"workers {pids[1:]} outlived SIGKILL"
        time.sleep(0.01)


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie, dead and not yet reaped, does not)."""
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def assert_clean_logs(nodes: Sequence[RunningDaemon]) -> None:
    """No node logged a traceback or an unhandled error."""
    for node in nodes:
        log = node.log_text()
        for word in TROUBLE_WORDS:
            assert word not in log, f"node on port {node.port} logged {word!r}:\n{log[-5000:]}"

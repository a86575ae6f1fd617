"""SIGKILL of one node of a shared archive (PostgreSQL index, S3 bucket) in the middle of
ingest, then its restart on the same folder, while another node goes on receiving.

A store answers 0000 only once its object is uploaded and its row committed,
and a node that dies leaves in its incoming folder a file for each store it
had not finished: at restart it removes the copies those name that no row
holds.  So every instance a peer was answered 0000 for must be found and
retrieved whole; the index may also hold instances whose answer the peer
never saw (committed just before the kill), but only whole ones; and no
object may be left that no row names.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.archive import archive_of
from tests.support.daemons import RunningDaemon, log_lines_with
from tests.support.datasets import dataset_bytes
from tests.support.dcmtk import DcmtkPeer
from tests.support.nodes import (
    DESTINATION,
    SENDER_TIMEOUT,
    Sent,
    SharedArchive,
    assert_clean_logs,
    ct_small_copies,
    destinations,
    find,
    kill_node,
    moto_fixture,  # noqa: F401 (moto)
    move_study,
    part,
    received_files,
    start_storescu,
    store_responses,
    storescp_fixture,  # noqa: F401 (storescp)
)
from tests.support.postgres import (
    Cluster,
    pg_cluster_fixture,  # noqa: F401 (pg_cluster)
)
from tests.support.s3 import MotoS3

pytestmark = pytest.mark.usefixtures("report_module_daemons")

SUCCESS, KEPT_FIRST = 0x0000, 0xB000
VICTIM_SERIES, BYSTANDER_SERIES, PER_SERIES = 4, 3, 100
ACKNOWLEDGED_BEFORE_KILL = 80
"""How many 0000 answers the killed node gives first: well into its ingest, far from its end."""


def wait_for_answers(outputs: list[Path], count: int) -> None:
    """Until the storescu runs writing ``outputs`` have been answered ``count`` times in all."""
    deadline = time.monotonic() + SENDER_TIMEOUT
    while sum(len(store_responses(output.read_text())) for output in outputs) < count:
        assert time.monotonic() < deadline, "the node did not store what it was sent"
        time.sleep(0.02)


def test_a_node_killed_mid_ingest_restarts_with_every_acknowledged_instance_whole(
    pg_cluster: Cluster,
    moto: MotoS3,
    storescp: DcmtkPeer,
    tmp_path: Path,
    module_daemons: list[RunningDaemon],
) -> None:
    archive = SharedArchive.create(pg_cluster, moto, "sigkill")
    victim_folder = tmp_path / "victim"
    victim = archive.start_node(victim_folder, workers=2, destinations=destinations(storescp))
    bystander = archive.start_node(tmp_path / "bystander")
    module_daemons.extend([victim, bystander])
    victim_sent = ct_small_copies(
        tmp_path / "to-victim", studies=1, series_per_study=VICTIM_SERIES,
        per_series=PER_SERIES, parts=2,
    )  # fmt: skip
    bystander_sent = ct_small_copies(
        tmp_path / "to-bystander", studies=1, series_per_study=BYSTANDER_SERIES,
        per_series=PER_SERIES,
    )  # fmt: skip

    # two associations at once into the victim, killed mid-way
    parts = [part(victim_sent, number) for number in range(2)]
    outputs = [tmp_path / f"victim-storescu{n}.txt" for n in range(2)]
    senders = []
    for files, path in zip(parts, outputs, strict=True):
        with path.open("w") as output:
            senders.append(start_storescu(victim, files, output))
    wait_for_answers(outputs, ACKNOWLEDGED_BEFORE_KILL)
    kill_node(victim)
    # the other node receives while the killed one restarts and reconciles
    bystander_output = tmp_path / "bystander-storescu.txt"
    with bystander_output.open("w") as output:
        steady = start_storescu(bystander, [s.path for s in bystander_sent], output)
    for sender in senders:
        sender.wait(SENDER_TIMEOUT)
    restarted = archive.start_node(victim_folder, workers=2, destinations=destinations(storescp))
    module_daemons.append(restarted)
    assert steady.poll() is None, "the other node's ingest should overlap the restart"
    steady.wait(SENDER_TIMEOUT)

    acknowledged = {
        name.removesuffix(".dcm")
        for output in outputs
        for name, status in store_responses(output.read_text()).items()
        if status == SUCCESS
    }
    assert ACKNOWLEDGED_BEFORE_KILL <= len(acknowledged) < len(victim_sent)
    bystander_answers = store_responses(bystander_output.read_text())
    assert bystander_answers == {s.path.name: SUCCESS for s in bystander_sent}

    reconciled = log_lines_with(restarted.log_text(), "removed", "incoming files", "copies")
    assert len(reconciled) == 1, restarted.log_text()
    assert archive_of(restarted).incoming() == []

    listed = found_instances(restarted, victim_sent, tmp_path / "found")
    assert acknowledged <= listed <= {s.sop_instance_uid for s in victim_sent}
    rows = archive.rows()
    assert set(rows) == listed | {s.sop_instance_uid for s in bystander_sent}
    assert archive.object_keys() == set(rows.values()), "an object no row names, or a row without"

    move_study(restarted, victim_sent[0].study_uid, DESTINATION)
    received = received_files(storescp.directory)
    assert set(received) == listed
    by_uid = {s.sop_instance_uid: s for s in victim_sent}
    for uid, path in received.items():
        assert dataset_bytes(path) == dataset_bytes(by_uid[uid].path), uid

    # the peer sends again all it sent: what was indexed before the kill is a duplicate
    # (keep-first), the rest is stored now, the keys of the copies removed included
    with (tmp_path / "again.txt").open("w") as output:
        start_storescu(restarted, [s.path for s in victim_sent], output).wait(SENDER_TIMEOUT)
    answers = store_responses((tmp_path / "again.txt").read_text())
    assert answers == {
        s.path.name: KEPT_FIRST if s.sop_instance_uid in listed else SUCCESS for s in victim_sent
    }
    rows = archive.rows()
    assert set(rows) == {s.sop_instance_uid for s in victim_sent + bystander_sent}
    assert archive.object_keys() == set(rows.values())

    assert_clean_logs([victim, restarted, bystander])  # the killed one's log up to its end


def found_instances(node: RunningDaemon, sent: list[Sent], folder: Path) -> set[str]:
    """Every SOP Instance UID ``findscu`` lists at IMAGE level in the series of ``sent``."""
    listed: set[str] = set()
    for series_uid in sorted({s.series_uid for s in sent}):
        study_uid = sent[0].study_uid
        answers = find(node, folder / series_uid, "IMAGE", f"StudyInstanceUID={study_uid}",
                       f"SeriesInstanceUID={series_uid}", "SOPInstanceUID")  # fmt: skip
        listed |= {str(answer.SOPInstanceUID) for answer in answers}
    return listed

"""Three dicomd nodes, one archive: a PostgreSQL index and an S3 bucket (moto) they share.

Each node is its own daemon on its own port, with its own folder for incoming
files; the throw-away PostgreSQL cluster and moto's S3 server serve the module.
dcmtk drives them as a site would: three ``storescu`` runs at once, each
sending a third of every study to another node; ``findscu`` against one node
finds what the other two received; ``movescu`` through the third node sends a
study to a bit-preserving ``storescp``, whose files must hold the very data
sets first sent.  Then two nodes receive the same instances at the same time,
under each policy that keeps one copy: the index's unique constraint and the
nodes' locks must leave one row and one object, the copy answered 0000, and
the documented status on the other.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.archive import archive_of
from tests.support.daemons import RunningDaemon
from tests.support.datasets import dataset_bytes, split_part10
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
    moto_fixture,  # noqa: F401 (moto)
    move_study,
    part,
    received_files,
    rewritten,
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

NODES = 3
STUDIES, SERIES_PER_STUDY, PER_SERIES = 4, 5, 50  # 1000 instances
SUCCESS = 0x0000


@dataclass(frozen=True)
class Fleet:
    """Three nodes of one archive, and the 1000 instances sent to them."""

    archive: SharedArchive
    nodes: list[RunningDaemon]
    sent: list[Sent]
    responses: list[dict[str, int]]
    """For each node, what storescu was answered for each file of its part."""


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory,
    pg_cluster: Cluster,
    moto: MotoS3,
    storescp: DcmtkPeer,
    module_daemons: list[RunningDaemon],
) -> Fleet:
    """Three nodes (the third knows the move destination), each sent a third of every study
    by a storescu of its own, the three at once."""
    folder = tmp_path_factory.mktemp("fleet")
    archive = SharedArchive.create(pg_cluster, moto, "fleet")
    nodes = []
    for number in range(NODES):
        nodes.append(
            archive.start_node(folder / f"node{number}", destinations=destinations(storescp))
        )
        module_daemons.append(nodes[-1])
    sent = ct_small_copies(
        folder / "sent",
        studies=STUDIES,
        series_per_study=SERIES_PER_STUDY,
        per_series=PER_SERIES,
        parts=NODES,
    )
    parts = [part(sent, number) for number in range(NODES)]
    responses = send_at_once(list(zip(nodes, parts, strict=True)), folder)
    return Fleet(archive, nodes, sent, responses)


def send_at_once(
    sends: list[tuple[RunningDaemon, list[Path]]], folder: Path
) -> list[dict[str, int]]:
    """One storescu per (node, files), all started together; what each was answered, by
    file name."""
    outputs = [folder / f"storescu{n}.txt" for n in range(len(sends))]

    def send(number: int) -> dict[str, int]:
        node, files = sends[number]
        with outputs[number].open("w") as output:
            sender = start_storescu(node, files, output)
            sender.wait(SENDER_TIMEOUT)
        return store_responses(outputs[number].read_text())

    with ThreadPoolExecutor(len(sends)) as senders:
        return list(senders.map(send, range(len(sends))))


def test_every_instance_sent_to_any_node_is_answered_0000_and_kept_once(fleet: Fleet) -> None:
    for number, responses in enumerate(fleet.responses):
        assert set(responses) == {path.name for path in part(fleet.sent, number)}
        assert set(responses.values()) == {SUCCESS}
    rows = fleet.archive.rows()
    assert set(rows) == {s.sop_instance_uid for s in fleet.sent}
    assert fleet.archive.object_keys() == set(rows.values())
    assert fleet.archive.row_counts() == {
        "patients": STUDIES,
        "studies": STUDIES,
        "series": STUDIES * SERIES_PER_STUDY,
        "instances": STUDIES * SERIES_PER_STUDY * PER_SERIES,
    }
    assert_clean_logs(fleet.nodes)


def test_findscu_against_one_node_finds_what_every_node_received(
    fleet: Fleet, tmp_path: Path
) -> None:
    """Every node received a third of each series: each finds every study whole, and the
    second node lists every series and every instance, two thirds of them sent elsewhere."""
    studies = {s.study_uid for s in fleet.sent}
    for number, node in enumerate(fleet.nodes):
        found = find(node, tmp_path / f"studies{number}", "STUDY", "StudyInstanceUID",
                     "NumberOfStudyRelatedInstances")  # fmt: skip
        counts = {a.StudyInstanceUID: a.NumberOfStudyRelatedInstances for a in found}
        assert counts == dict.fromkeys(studies, SERIES_PER_STUDY * PER_SERIES)
    node = fleet.nodes[1]
    series = set()
    for study_uid in studies:
        found = find(node, tmp_path / study_uid, "SERIES", f"StudyInstanceUID={study_uid}",
                     "SeriesInstanceUID", "NumberOfSeriesRelatedInstances")  # fmt: skip
        assert {a.NumberOfSeriesRelatedInstances for a in found} == {PER_SERIES}
        series |= {(study_uid, a.SeriesInstanceUID) for a in found}
    assert series == {(s.study_uid, s.series_uid) for s in fleet.sent}
    images = set()
    for study_uid, series_uid in series:
        found = find(node, tmp_path / series_uid, "IMAGE", f"StudyInstanceUID={study_uid}",
                     f"SeriesInstanceUID={series_uid}", "SOPInstanceUID")  # fmt: skip
        images |= {a.SOPInstanceUID for a in found}
    assert images == {s.sop_instance_uid for s in fleet.sent}
    assert_clean_logs(fleet.nodes)


def test_movescu_through_the_third_node_sends_a_study_byte_for_byte(
    fleet: Fleet, storescp: DcmtkPeer
) -> None:
    study_uid = fleet.sent[0].study_uid
    study = {s.sop_instance_uid: s for s in fleet.sent if s.study_uid == study_uid}
    output = move_study(fleet.nodes[2], study_uid, DESTINATION)
    received = received_files(storescp.directory)
    assert set(received) == set(study), output[-3000:]
    for uid, path in received.items():
        assert dataset_bytes(path) == dataset_bytes(study[uid].path), uid
    # each instance was fetched from the bucket into a spool file, sent, and removed
    assert [archive_of(node).incoming() for node in fleet.nodes] == [[]] * NODES
    assert_clean_logs(fleet.nodes)


# --------------------------------------------------------------------------------------------
# The same instances on two nodes at once

RACED = 100
DUPLICATE_ANSWERS = {"reject": 0x0111, "keep-first": 0xB000}


@pytest.mark.parametrize("policy", DUPLICATE_ANSWERS)
def test_two_nodes_receiving_the_same_instances_at_once_keep_one_copy_of_each(
    policy: str,
    pg_cluster: Cluster,
    moto: MotoS3,
    tmp_path: Path,
    module_daemons: list[RunningDaemon],
) -> None:
    """Two storescu send the same 100 UIDs in the same order to two nodes, the copies told
    apart by their Image Comments.  Each UID gets 0000 on one node and the policy's answer on
    the other, and the row and the object are those of the copy answered 0000."""
    archive = SharedArchive.create(pg_cluster, moto, f"race_{policy.replace('-', '_')}")
    nodes = [archive.start_node(tmp_path / f"node{n}", duplicates=policy) for n in range(2)]
    module_daemons.extend(nodes)
    first = ct_small_copies(
        tmp_path / "first", studies=1, series_per_study=1, per_series=RACED, image_comments="A"
    )
    second = rewritten(first, tmp_path / "second", "B")
    copies = [{s.sop_instance_uid: s for s in first}, {s.sop_instance_uid: s for s in second}]
    responses = send_at_once(
        [(nodes[0], [s.path for s in first]), (nodes[1], [s.path for s in second])], tmp_path
    )
    names = {s.path.name for s in first}
    assert [set(answered) for answered in responses] == [names, names]
    answers = {uid: [responses[n][f"{uid}.dcm"] for n in range(2)] for uid in copies[0]}
    expected = sorted([SUCCESS, DUPLICATE_ANSWERS[policy]])
    assert {uid: sorted(pair) for uid, pair in answers.items()} == dict.fromkeys(answers, expected)
    rows = archive.rows()
    assert set(rows) == set(copies[0])
    assert archive.object_keys() == set(rows.values())
    for uid, pair in answers.items():
        kept = copies[pair.index(SUCCESS)][uid]
        assert split_part10(archive.object_bytes(rows[uid]))[1] == dataset_bytes(kept.path), uid
    assert_clean_logs(nodes)

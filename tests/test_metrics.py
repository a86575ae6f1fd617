"""The node's Prometheus metrics move as a node in memory (`MemoryNode`, iosim) works.

The metrics live in the process' registry, which every test shares: each
test reads the text a scrape writes (`dicomd.metrics.exposition`), parsed
with prometheus-client's own parser, before and after, and checks the
difference.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from twisted.internet import defer, task
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.test.requesthelper import DummyChannel, DummyRequest
from zope.interface import implementer

from dicomd import metrics, uids
from dicomd.archive.handler import ArchiveHandler
from dicomd.client import AssociationRejected
from dicomd.config import default_config
from dicomd.dimse.command import Command, CommandField
from dicomd.interfaces import (
    FindQuery,
    IAuthenticator,
    IFindHandler,
    IStoreHandler,
    Kept,
    ReceivedInstance,
)
from dicomd.testing import MemoryNode, received_instance
from dicomd.ul.pdu import PresentationContextRQ, encode_pdata
from dicomd.web.metrics import MetricsResource, observe_request
from tests.wire import IMPLICIT, Peer, request

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(extra: tuple[object, ...] = ()) -> Samples:
    """Every sample of a scrape, by name and labels."""
    text = metrics.exposition(extra).decode("utf-8")  # type: ignore[arg-type]
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


class Moves:
    """What a block of a test moved: the difference of two scrapes."""

    def __init__(self) -> None:
        self.before = scrape()
        self.after: Samples = {}

    def __call__(self, name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return self.after.get(key, 0.0) - self.before.get(key, 0.0)


@contextmanager
def moves() -> Iterator[Moves]:
    moved = Moves()
    yield moved
    moved.after = scrape()


@implementer(IStoreHandler)
class KeepAfter:
    """Answers success ``seconds`` later on the node's clock."""

    def __init__(self, clock: Clock, seconds: float) -> None:
        self.clock = clock
        self.seconds = seconds
        self.sizes: list[int] = []

    def store(self, instance: ReceivedInstance) -> defer.Deferred[int]:
        self.sizes.append(instance.size)
        return task.deferLater(self.clock, self.seconds, lambda: uids.Status.SUCCESS)


@implementer(IFindHandler)
class ThreeStudies:
    find_models = (uids.STUDY_ROOT_FIND,)

    def find(self, query: FindQuery) -> list[Dataset]:
        studies = []
        for number in range(3):
            match = Dataset()
            match.StudyInstanceUID = f"1.2.3.{number}"
            studies.append(match)
        return studies


def study_query(**keys: object) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = ""
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    return identifier


def test_an_echo_opens_and_closes_an_association_and_counts_one_successful_operation() -> None:
    node = MemoryNode()
    with moves() as moved:
        association = node.associate()
        assert node.result(association.echo()) == uids.Status.SUCCESS
        with moves() as during:
            pass
        node.result(association.release())
    assert during.after[("dicomd_associations_open", frozenset())] >= 1
    assert moved("dicomd_associations_accepted_total") == 1
    assert moved("dicomd_associations_open") == 0
    assert moved("dicomd_operations_total", service="echo", status="success") == 1
    assert moved("dicomd_operation_duration_seconds_count", service="echo") == 1


def test_a_rejected_association_is_counted_by_its_reason() -> None:
    node = MemoryNode()
    with moves() as moved, pytest.raises(AssociationRejected):
        node.associate(called_ae_title="SOMEONE")
    reason = "called AE title not recognized"
    assert moved("dicomd_associations_rejected_total", reason=reason) == 1
    assert moved("dicomd_associations_accepted_total") == 0
    assert moved("dicomd_associations_open") == 0


@implementer(IAuthenticator)
class NobodyKnown:
    def authenticate(self, identity: object, request: object) -> None:
        return None


def test_a_refused_user_identity_has_a_reason_of_its_own() -> None:
    config = default_config()
    required = dataclasses.replace(config.authentication, required=True)
    node = MemoryNode([NobodyKnown()], authentication=required)
    with moves() as moved, pytest.raises(AssociationRejected):
        node.associate()  # without an identity
    assert moved("dicomd_associations_rejected_total", reason="user identity refused") == 1
    assert moved("dicomd_associations_rejected_total", reason="no reason given") == 0


def test_an_association_past_a_limit_counts_the_rejection_and_the_limit() -> None:
    config = default_config()
    limits = dataclasses.replace(config.limits, max_associations_per_calling_ae=1)
    node = MemoryNode(limits=limits)
    with moves() as moved:
        node.associate()
        with pytest.raises(AssociationRejected):
            node.associate()
    assert moved("dicomd_associations_rejected_total", reason="local limit exceeded") == 1
    assert moved("dicomd_limit_hits_total", limit="max_associations_per_calling_ae") == 1
    assert moved("dicomd_associations_open") == 1


def test_a_store_counts_the_instance_its_bytes_and_its_duration(tmp_path: Path) -> None:
    clock = Clock()
    keep = KeepAfter(clock, 0.3)
    node = MemoryNode([keep], storage_path=tmp_path, clock=clock)
    dataset = dcmread(get_testdata_file("CT_small.dcm"))
    association = node.associate([CT_STORAGE])
    with moves() as moved:
        sending = association.store(dataset)
        node.flush()
        node.advance(0.3)
        assert node.result(sending).status == uids.Status.SUCCESS
    assert moved("dicomd_instances_received_total") == 1
    assert moved("dicomd_received_bytes_total") == keep.sizes[0] > 0
    assert moved("dicomd_operations_total", service="store", status="success") == 1
    assert moved("dicomd_operation_duration_seconds_count", service="store") == 1
    assert moved("dicomd_operation_duration_seconds_bucket", service="store", le="0.25") == 0
    assert moved("dicomd_operation_duration_seconds_bucket", service="store", le="0.5") == 1
    assert moved("dicomd_operation_duration_seconds_sum", service="store") == pytest.approx(0.3)


def test_a_find_counts_one_operation_whatever_its_number_of_matches() -> None:
    node = MemoryNode([ThreeStudies()])
    association = node.associate([uids.STUDY_ROOT_FIND])
    with moves() as moved:
        result = node.result(association.find(uids.STUDY_ROOT_FIND, study_query()))
    assert len(result.matches) == 3
    assert moved("dicomd_operations_total", service="find", status="success") == 1
    assert moved("dicomd_operation_duration_seconds_count", service="find") == 1


def test_an_identifier_of_too_many_keys_is_a_failure_and_a_limit_hit() -> None:
    config = default_config()
    node = MemoryNode(
        [ThreeStudies()], limits=dataclasses.replace(config.limits, max_identifier_keys=16)
    )
    association = node.associate([uids.STUDY_ROOT_FIND])
    identifier = study_query()
    for element in range(0x1000, 0x1020):
        identifier.add_new((0x0009, element), "LO", "private")
    with moves() as moved:
        result = node.result(association.find(uids.STUDY_ROOT_FIND, identifier))
    assert result.status == uids.Status.OUT_OF_RESOURCES
    assert moved("dicomd_limit_hits_total", limit="max_identifier_keys") == 1
    assert moved("dicomd_operations_total", service="find", status="failure") == 1


def test_a_pdu_longer_than_announced_and_a_command_set_that_never_ends_are_limit_hits() -> None:
    with moves() as moved:
        peer = Peer()
        peer.associate()
        peer.send(b"\x04\x00" + (300000).to_bytes(4, "big"))
        assert peer.closed or peer.received()
        commands = Peer()
        commands.associate()
        for _ in range(70):
            commands.send(encode_pdata(1, 0x01, b"\x00" * 1024))  # command, never the last
    assert moved("dicomd_limit_hits_total", limit="max_pdu_length") == 1
    assert moved("dicomd_limit_hits_total", limit="max_command_length") == 1


def test_a_request_no_service_answers_is_a_failure_of_its_operation() -> None:
    peer = Peer()
    peer.associate(request(contexts=(PresentationContextRQ(1, uids.VERIFICATION, (IMPLICIT,)),)))
    with moves() as moved:
        peer.send_command(
            1,
            Command(
                command_field=CommandField.C_FIND_RQ,
                message_id=7,
                affected_sop_class_uid=uids.VERIFICATION,
                priority=0,
                command_data_set_type=0x0101,
            ),
        )
        (response,) = peer.responses()
    assert response.status == uids.Status.UNRECOGNIZED_OPERATION
    assert moved("dicomd_operations_total", service="find", status="failure") == 1


def test_web_services_count_through_observe_operation() -> None:
    with moves() as moved:
        metrics.observe_operation("qido", "success", 0.002)
        metrics.observe_operation("stow", "warning")
    assert moved("dicomd_operations_total", service="qido", status="success") == 1
    assert moved("dicomd_operation_duration_seconds_bucket", service="qido", le="0.0025") == 1
    assert moved("dicomd_operations_total", service="stow", status="warning") == 1
    assert moved("dicomd_operation_duration_seconds_count", service="stow") == 0


def test_the_archive_counts_its_indexed_instances(tmp_path: Path) -> None:
    archive = ArchiveHandler(tmp_path / "archive")
    archive.open()
    try:
        assert archive.query.count_instances() == 0
        for name in ("CT_small.dcm", "MR_small.dcm"):
            instance = received_instance(dcmread(get_testdata_file(name)), tmp_path / "archive")
            kept = archive.archive(instance)
            assert isinstance(kept, Kept) and kept.status == uids.Status.SUCCESS
        assert archive.query.count_instances() == 2
    finally:
        archive.query.close()
        archive.close()


@implementer(metrics.IIndexSize)
class Index:
    def __init__(self, count: int | Exception) -> None:
        self.count = count

    def indexed_instances(self) -> defer.Deferred[int]:
        if isinstance(self.count, Exception):
            return defer.fail(self.count)
        return defer.succeed(self.count)


def get(resource: MetricsResource) -> DummyRequest:
    request = DummyRequest([b""])
    request.method = b"GET"
    resource.render(request)
    assert request.finished
    return request


def inline(function: object, *arguments: object) -> defer.Deferred[object]:
    return defer.maybeDeferred(function, *arguments)  # type: ignore[arg-type]


def test_the_resource_answers_the_text_format_with_the_index_size() -> None:
    request = get(MetricsResource(Index(1234), inline))
    assert request.responseCode in (None, 200)
    content_type = request.responseHeaders.getRawHeaders(b"content-type")
    assert content_type == [metrics.CONTENT_TYPE.encode()]
    families = {
        family.name: family
        for family in text_string_to_metric_families(b"".join(request.written).decode())
    }
    assert families["dicomd_index_instances"].samples[0].value == 1234
    assert families["dicomd_associations_open"].type == "gauge"
    assert families["dicomd_operations"].type == "counter"


def test_an_index_that_cannot_be_counted_leaves_only_its_gauge_out() -> None:
    request = get(MetricsResource(Index(OSError("the index is gone")), inline))
    names = {
        family.name for family in text_string_to_metric_families(b"".join(request.written).decode())
    }
    assert "dicomd_index_instances" not in names
    assert "dicomd_operations" in names


def test_a_dead_workers_open_associations_leave_its_counts_stay(tmp_path: Path) -> None:
    folder = metrics.multiprocess_folder()
    try:
        assert list(folder.iterdir()) == []
        (folder / "gauge_livesum_4242.db").write_bytes(b"")
        (folder / "counter_4242.db").write_bytes(b"")
        metrics.forget_process(folder, 4242)
        assert sorted(path.name for path in folder.iterdir()) == ["counter_4242.db"]
    finally:
        metrics.remove_folder(folder)
    assert not folder.exists()


def finished_request(code: int) -> server.Request:
    request = server.Request(DummyChannel())
    request.method = b"GET"
    request.setResponseCode(code)
    return request


@pytest.mark.parametrize(
    ("code", "status"),
    [(200, "success"), (204, "success"), (202, "warning"), (404, "failure"), (503, "failure")],
)
def test_a_web_request_counts_when_its_answer_has_gone(code: int, status: str) -> None:
    clock = Clock()
    request = finished_request(code)
    with moves() as moved:
        observe_request(request, "wado", clock)
        clock.advance(2)
        with moves() as streaming:
            pass
        request.finish()
    assert streaming("dicomd_operations_total", service="wado", status=status) == 0
    assert moved("dicomd_operations_total", service="wado", status=status) == 1
    assert moved("dicomd_operation_duration_seconds_sum", service="wado") == 2


def test_a_web_request_whose_client_went_away_is_cancelled() -> None:
    request = finished_request(200)
    with moves() as moved:
        observe_request(request, "qido", Clock())
        request.connectionLost(Failure(ConnectionDone()))
    assert moved("dicomd_operations_total", service="qido", status="cancel") == 1
    assert moved("dicomd_operations_total", service="qido", status="success") == 0

"""Relational queries and retrievals negotiated in SOP Class Extended Negotiation (PS3.7
D.3.3.5, PS3.4 C.5): the answer in the A-ASSOCIATE-AC, and what C-FIND and C-GET then accept,
over the wire of an in-memory node whose handlers search a real archive index."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom import Dataset, dcmwrite
from zope.interface import implementer

from dicomd import uids
from dicomd.archive.index import ArchiveIndex, record_from_dataset
from dicomd.archive.query import ArchiveQuery
from dicomd.config import QueryRetrieve, default_config
from dicomd.dimse.command import Command, CommandField
from dicomd.dimse.datasets import encode_dataset
from dicomd.dimse.negotiation import (
    RELATIONAL_SOP_CLASSES,
    AcceptedContext,
    negotiate_relational,
)
from dicomd.interfaces import FindQuery, IFindHandler, IRetrieveSource, RetrieveItem
from dicomd.ul.pdu import (
    AAssociateAC,
    PresentationContextRQ,
    RoleSelection,
    SOPClassExtendedNegotiation,
)
from tests.support.datasets import ct_dataset
from tests.test_find_service import answers, send_find
from tests.test_retrieve_service import retrieve_command, run_get
from tests.wire import EXPLICIT, Peer, request

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
FIND, GET, MOVE = uids.STUDY_ROOT_FIND, uids.STUDY_ROOT_GET, uids.STUDY_ROOT_MOVE
RELATIONAL = b"\x01"

# The answer, as a pure function.


def accepted(*abstract_syntaxes: str) -> dict[int, AcceptedContext]:
    return {
        2 * number + 1: AcceptedContext(2 * number + 1, syntax, EXPLICIT)
        for number, syntax in enumerate(abstract_syntaxes)
    }


def item(sop_class_uid: str, info: bytes = RELATIONAL) -> SOPClassExtendedNegotiation:
    return SOPClassExtendedNegotiation(sop_class_uid, info)


def test_relational_is_agreed_for_each_query_retrieve_class_the_peer_asks_for() -> None:
    contexts = accepted(FIND, GET, CT_IMAGE)
    answer = negotiate_relational([item(FIND), item(GET)], contexts, willing=True)
    assert answer.answers == (item(FIND), item(GET))
    assert [context.relational for context in answer.accepted.values()] == [True, True, False]
    assert contexts[1].relational is False  # the caller's contexts are not changed


def test_the_answer_is_one_byte_whatever_the_peer_offered() -> None:
    """Combined date-time, fuzzy names, timezone and multi-frame conversion (C-FIND bytes 2 to
    5) are never agreed: a one-byte answer reads as 0 for each."""
    answer = negotiate_relational(
        [item(FIND, b"\x01\x01\x01\x01\x01")], accepted(FIND), willing=True
    )
    assert answer.answers == (item(FIND, RELATIONAL),)


@pytest.mark.parametrize("info", [b"", b"\x00", b"\x00\x01", b"\x02"])
def test_a_peer_that_does_not_ask_for_relational_gets_0(info: bytes) -> None:
    answer = negotiate_relational([item(FIND, info)], accepted(FIND), willing=True)
    assert answer.answers == (item(FIND, b"\x00"),)
    assert not answer.accepted[1].relational


def test_an_unwilling_node_answers_0() -> None:
    answer = negotiate_relational([item(MOVE)], accepted(MOVE), willing=False)
    assert answer.answers == (item(MOVE, b"\x00"),)
    assert not answer.accepted[1].relational


def test_only_proposed_accepted_query_retrieve_classes_get_an_answer() -> None:
    proposed = [item(CT_IMAGE), item(uids.PATIENT_ROOT_FIND), item(uids.MODALITY_WORKLIST_FIND)]
    answer = negotiate_relational(proposed, accepted(CT_IMAGE, FIND), willing=True)
    assert answer.answers == ()
    assert not any(context.relational for context in answer.accepted.values())


def test_a_second_item_for_the_same_class_is_ignored() -> None:
    answer = negotiate_relational([item(FIND), item(FIND, b"\x00")], accepted(FIND), willing=True)
    assert answer.answers == (item(FIND),)


SOP_CLASSES = sorted(RELATIONAL_SOP_CLASSES | {CT_IMAGE, uids.MODALITY_WORKLIST_FIND})


@given(
    proposed=st.lists(
        st.builds(item, st.sampled_from(SOP_CLASSES), st.binary(max_size=6)), max_size=8
    ),
    served=st.sets(st.sampled_from(SOP_CLASSES)),
    willing=st.booleans(),
)
def test_every_answer_is_one_byte_for_a_proposed_served_class(
    proposed: list[SOPClassExtendedNegotiation], served: set[str], willing: bool
) -> None:
    contexts = accepted(*sorted(served))
    answer = negotiate_relational(proposed, contexts, willing=willing)
    first = {}
    for offered in proposed:
        first.setdefault(offered.sop_class_uid, offered.application_info)
    expected = {
        uid: b"\x01" if willing and info[:1] == b"\x01" else b"\x00"
        for uid, info in first.items()
        if uid in served and uid in RELATIONAL_SOP_CLASSES
    }
    assert {answer.sop_class_uid: answer.application_info for answer in answer.answers} == (
        expected
    )
    assert len(answer.answers) == len(expected)
    for context_id, context in answer.accepted.items():
        assert context == dataclasses.replace(
            contexts[context_id], relational=expected.get(context.abstract_syntax) == b"\x01"
        )


# Over the wire, against a real index.


@implementer(IFindHandler, IRetrieveSource)
class IndexedFiles:
    """Finds and retrieves what an archive index holds, on the reactor: queries are tiny."""

    find_models = (uids.STUDY_ROOT_FIND, uids.PATIENT_ROOT_FIND)
    retrieve_models = (uids.STUDY_ROOT_GET, uids.STUDY_ROOT_MOVE)

    def __init__(self, engine: ArchiveQuery) -> None:
        self.engine = engine
        self.queries: list[FindQuery] = []
        self.written: dict[str, list[str]] = {}

    def find(self, query: FindQuery) -> list[Dataset]:
        self.queries.append(query)
        return self.engine.find(query)

    def instances(self, query: FindQuery) -> list[RetrieveItem]:
        self.queries.append(query)
        return [
            RetrieveItem(Path(path), sop_class, sop_instance, syntax)
            for path, sop_class, sop_instance, syntax in self.engine.instances(query)
        ]

    def may_move(self, query: FindQuery, destination: str) -> bool:
        return True


STUDY, OTHER_STUDY = "1.2.826.0.1.3680043.2.1125.1", "1.2.826.0.1.3680043.2.1125.2"


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IndexedFiles]:
    """Two CT series of one study (two instances and one) and a second study of one."""
    folder = tmp_path_factory.mktemp("relational")
    index = ArchiveIndex(folder / "index.sqlite")
    index.open()
    layout = [(STUDY, f"{STUDY}.1", 1), (STUDY, f"{STUDY}.1", 2), (STUDY, f"{STUDY}.2", 1)]
    written = []
    for study_uid, series_uid, number in [*layout, (OTHER_STUDY, f"{OTHER_STUDY}.1", 1)]:
        dataset = ct_dataset(study_uid, series_uid, number)
        written.append(dataset)
        path = folder / f"{dataset.SOPInstanceUID}.dcm"
        dcmwrite(path, dataset, enforce_file_format=True)
        index.add(
            record_from_dataset(
                dataset, path=str(path), size=path.stat().st_size, calling_ae_title="CT"
            )
        )
    engine = ArchiveQuery(index.connect_reader)
    indexed = IndexedFiles(engine)
    for dataset in written:
        indexed.written.setdefault(dataset.StudyInstanceUID, []).append(dataset.SOPInstanceUID)
    yield indexed
    engine.close()
    index.close()


def instances_of(indexed: IndexedFiles, study_uid: str) -> list[str]:
    return sorted(indexed.written[study_uid])


def node(
    indexed: IndexedFiles, relational: str = "negotiated", *extended: SOPClassExtendedNegotiation
) -> tuple[Peer, AAssociateAC]:
    """A node over ``indexed``, associated proposing Study Root FIND, GET and CT storage (the
    SCP role for C-GET), with the extended negotiation sub-items ``extended``."""
    config = dataclasses.replace(default_config(), query_retrieve=QueryRetrieve(relational))
    peer = Peer(config, plugins=(indexed,))
    contexts = (
        PresentationContextRQ(1, FIND, (EXPLICIT,)),
        PresentationContextRQ(3, CT_IMAGE, (EXPLICIT,)),
        PresentationContextRQ(5, GET, (EXPLICIT,)),
    )
    ac = peer.associate(
        request(
            contexts=contexts,
            role_selections=(RoleSelection(CT_IMAGE, False, True),),
            sop_class_extended=extended,
        )
    )
    assert [context.result for context in ac.presentation_contexts] == [0, 0, 0]
    return peer, ac


def image_identifier(**keys: object) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE"
    identifier.SOPInstanceUID = ""
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    return identifier


def find_all(peer: Peer, identifier: Dataset) -> tuple[list[str], int]:
    """The SOP Instance UIDs of a C-FIND's matches, and its final status."""
    send_find(peer, identifier)
    responses = answers(peer)
    matches = [match.SOPInstanceUID for _, match in responses if match is not None]
    return sorted(matches), responses[-1][0]


def get_all(peer: Peer, identifier: Dataset) -> tuple[list[str], Command]:
    """The SOP Instance UIDs a C-GET sent back, and its final response."""
    peer.send_command(
        5,
        retrieve_command(CommandField.C_GET_RQ, GET),
        encode_dataset(identifier, EXPLICIT),
    )
    seen = run_get(peer)
    stored = [
        c.affected_sop_instance_uid for c, _ in seen if c.command_field == CommandField.C_STORE_RQ
    ]
    final = [c for c, _ in seen if c.command_field == CommandField.C_GET_RSP][-1]
    return sorted(stored), final


def test_the_a_associate_ac_agrees_to_what_was_negotiated(indexed: IndexedFiles) -> None:
    _, ac = node(indexed, "negotiated", item(FIND, b"\x01\x01"), item(GET), item(CT_IMAGE))
    assert ac.user_information.sop_class_extended == (item(FIND), item(GET))
    _, ac = node(indexed, "never", item(FIND))
    assert ac.user_information.sop_class_extended == (item(FIND, b"\x00"),)
    _, ac = node(indexed, "always")
    assert ac.user_information.sop_class_extended == ()


def test_a_negotiated_image_query_with_only_the_study_lists_the_whole_study(
    indexed: IndexedFiles,
) -> None:
    peer, _ = node(indexed, "negotiated", item(FIND))
    matches, status = find_all(peer, image_identifier(StudyInstanceUID=STUDY))
    assert (matches, status) == (instances_of(indexed, STUDY), 0x0000)
    assert len(matches) == 3
    assert indexed.queries[-1].relational


@pytest.mark.parametrize(
    ("relational", "extended"),
    [("negotiated", ()), ("never", (item(FIND),)), ("negotiated", (item(GET),))],
)
def test_without_agreement_a_non_hierarchical_query_is_a900(
    indexed: IndexedFiles, relational: str, extended: tuple[SOPClassExtendedNegotiation, ...]
) -> None:
    peer, _ = node(indexed, relational, *extended)
    assert find_all(peer, image_identifier(StudyInstanceUID=STUDY)) == ([], 0xA900)
    assert not indexed.queries[-1].relational
    # A hierarchical one is answered as ever.
    series = image_identifier(StudyInstanceUID=STUDY, SeriesInstanceUID=f"{STUDY}.1")
    matches, status = find_all(peer, series)
    assert (len(matches), status) == (2, 0x0000)


def test_relational_always_answers_peers_that_do_not_negotiate(indexed: IndexedFiles) -> None:
    peer, _ = node(indexed, "always")
    assert find_all(peer, image_identifier(StudyInstanceUID=OTHER_STUDY)) == (
        instances_of(indexed, OTHER_STUDY),
        0x0000,
    )
    sent, final = get_all(peer, image_identifier(StudyInstanceUID=STUDY))
    assert (sent, final.status) == (instances_of(indexed, STUDY), 0x0000)


def test_a_negotiated_get_with_only_the_study_sends_the_whole_study(
    indexed: IndexedFiles,
) -> None:
    peer, _ = node(indexed, "negotiated", item(GET))
    sent, final = get_all(peer, image_identifier(StudyInstanceUID=STUDY))
    assert sent == instances_of(indexed, STUDY)
    assert (final.status, final.number_of_completed_suboperations) == (0x0000, 3)


def test_without_agreement_a_non_hierarchical_get_is_a900(indexed: IndexedFiles) -> None:
    peer, _ = node(indexed, "negotiated", item(FIND))
    sent, final = get_all(peer, image_identifier(StudyInstanceUID=STUDY))
    assert (sent, final.status) == ([], 0xA900)

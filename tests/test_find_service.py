"""The C-FIND service in memory: handler styles, shaping, character sets, cancel, statuses."""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator, Iterator

import pytest
from pydicom import Dataset
from twisted.internet import defer
from twisted.logger import formatEvent, globalLogPublisher
from zope.interface import alsoProvides, implementer

from dicomd import uids
from dicomd.config import default_config
from dicomd.dimse.command import Command, CommandField
from dicomd.dimse.datasets import decode_dataset, encode_dataset
from dicomd.interfaces import (
    FindQuery,
    IAnswerEncoder,
    IEncodedMatches,
    IFindHandler,
    InvalidIdentifier,
    ISupportedKeys,
    Unavailable,
)
from dicomd.ul.pdu import PresentationContextRQ
from tests.wire import EXPLICIT, IMPLICIT, Peer, request

DEFLATED = uids.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN

STUDY_ROOT = uids.STUDY_ROOT_FIND
PATIENT_ROOT = uids.PATIENT_ROOT_FIND


def study(patient_id: str, name: str = "DOE^JOHN") -> Dataset:
    match = Dataset()
    match.PatientID = patient_id
    match.PatientName = name
    match.StudyInstanceUID = f"1.2.3.{patient_id}"
    match.StudyDescription = "not asked for"
    return match


@implementer(IFindHandler)
class Handler:
    """Answers every query with ``answer`` (called with the query if callable)."""

    find_models = (STUDY_ROOT, PATIENT_ROOT)

    def __init__(self, answer: object) -> None:
        self.answer = answer
        self.queries: list[FindQuery] = []

    def find(self, query: FindQuery) -> object:
        self.queries.append(query)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer(query) if callable(self.answer) else self.answer


def find_peer(handler: object, syntax: str = EXPLICIT) -> Peer:
    peer = Peer(default_config(), plugins=(handler,))
    ac = peer.associate(
        request(
            contexts=(
                PresentationContextRQ(1, STUDY_ROOT, (syntax,)),
                PresentationContextRQ(3, PATIENT_ROOT, (syntax,)),
            )
        )
    )
    assert [c.result for c in ac.presentation_contexts] == [0, 0]
    return peer


def identifier(level: str = "STUDY", **keys: object) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def send_find(peer: Peer, ident: Dataset, context_id: int = 1, message_id: int = 5) -> None:
    model = STUDY_ROOT if context_id == 1 else PATIENT_ROOT
    command = Command(
        command_field=CommandField.C_FIND_RQ,
        message_id=message_id,
        affected_sop_class_uid=model,
        priority=0,
        command_data_set_type=0x0001,
    )
    peer.send_command(context_id, command, encode_dataset(ident, EXPLICIT))


def answers(peer: Peer) -> list[tuple[int, Dataset | None]]:
    """(status, identifier) of every response so far, letting the cooperator run."""
    peer.clock.advance(0)
    for _ in range(50):
        peer.clock.advance(0)
    result = []
    for command, data in peer.messages():
        assert command.command_field == CommandField.C_FIND_RSP
        ds = decode_dataset(data, EXPLICIT) if data is not None else None
        result.append((command.status, ds))
    return result


@pytest.mark.parametrize(
    "style",
    ["list", "generator", "async generator", "deferred"],
)
def test_every_handler_style_streams_matches_then_success(style: str) -> None:
    matches = [study("1"), study("2")]

    def generator(_: FindQuery) -> Iterator[Dataset]:
        yield from matches

    async def async_generator(_: FindQuery) -> AsyncIterator[Dataset]:
        for match in matches:
            yield match

    answer = {
        "list": matches,
        "generator": generator,
        "async generator": async_generator,
        "deferred": defer.succeed(matches),
    }[style]
    peer = find_peer(Handler(answer))
    send_find(peer, identifier(PatientID="", PatientName="DOE*"))
    responses = answers(peer)
    assert [status for status, _ in responses] == [0xFF00, 0xFF00, 0x0000]
    assert [ds.PatientID for _, ds in responses[:2]] == ["1", "2"]
    assert responses[-1][1] is None


def test_answers_hold_exactly_the_requested_keys() -> None:
    peer = find_peer(Handler([study("1")]))
    send_find(peer, identifier(PatientID="", PatientBirthDate="", StudyInstanceUID=""))
    ((_, match), _) = answers(peer)
    keywords = {element.keyword for element in match}
    assert keywords == {
        "PatientID",
        "PatientBirthDate",
        "StudyInstanceUID",
        "QueryRetrieveLevel",
        "RetrieveAETitle",
    }
    assert match.PatientBirthDate in (None, "")
    assert match.RetrieveAETitle == "DICOMD"
    assert match.QueryRetrieveLevel == "STUDY"


@implementer(IEncodedMatches)
class EncodableMatches:
    """Matches held as values (``IEncodedMatches``): the first encoded, the second left a
    Dataset, as a source does with a value its encoder refuses."""

    def __init__(self) -> None:
        self.encoders: list[IAnswerEncoder] = []

    def __iter__(self) -> Iterator[Dataset]:
        return iter([study("1"), study("2")])

    def encoded(self, encoder: IAnswerEncoder) -> list[bytes | Dataset]:
        self.encoders.append(encoder)
        encoded = encoder.encode({"PatientID": "1", "PatientName": "DOE^JOHN", "Modality": "CT"})
        assert encoded is not None
        return [encoded, study("2")]


def test_matches_that_come_encoded_go_out_as_they_are_and_the_rest_is_shaped() -> None:
    matches = EncodableMatches()
    peer = find_peer(Handler(matches))
    send_find(peer, identifier(PatientID="", PatientName="", StudyInstanceUID=""))
    responses = answers(peer)
    assert [status for status, _ in responses] == [0xFF00, 0xFF00, 0x0000]
    assert len(matches.encoders) == 1
    first, second = (ds for _, ds in responses[:2])
    assert (first.PatientID, first.PatientName, first.StudyInstanceUID) == ("1", "DOE^JOHN", "")
    assert (second.PatientID, second.StudyInstanceUID) == ("2", "1.2.3.2")
    for answer in (first, second):
        assert {element.keyword for element in answer} == {
            "PatientID",
            "PatientName",
            "StudyInstanceUID",
            "QueryRetrieveLevel",
            "RetrieveAETitle",
        }


def test_matches_are_asked_for_datasets_when_only_pydicom_can_write_the_answers() -> None:
    matches = EncodableMatches()
    peer = find_peer(Handler(matches))
    send_find(peer, identifier(SpecificCharacterSet=["", "ISO 2022 IR 87"], PatientID=""))
    responses = answers(peer)
    assert [ds.PatientID for _, ds in responses[:2]] == ["1", "2"]
    assert matches.encoders == []


def test_the_handler_sees_the_query() -> None:
    handler = Handler([])
    peer = find_peer(handler)
    send_find(peer, identifier("PATIENT", PatientID="X"), context_id=3)
    assert answers(peer) == [(0x0000, None)]
    (query,) = handler.queries
    assert (query.model, query.level, query.calling_ae_title) == (
        PATIENT_ROOT,
        "PATIENT",
        "ECHOSCU",
    )
    assert query.identifier.PatientID == "X"


def test_a_level_outside_the_model_is_a900_and_the_handler_is_not_asked() -> None:
    handler = Handler([study("1")])
    peer = find_peer(handler)
    send_find(peer, identifier("PATIENT", PatientID=""), context_id=1)  # Study Root has no PATIENT
    ((status, _),) = answers(peer)
    assert status == 0xA900
    assert handler.queries == []


def test_invalid_identifier_from_the_handler_is_a900() -> None:
    peer = find_peer(Handler(InvalidIdentifier("SERIES level needs StudyInstanceUID")))
    send_find(peer, identifier("SERIES", SeriesInstanceUID=""))
    ((status, _),) = answers(peer)
    assert status == 0xA900
    command, _ = peer.last_command
    assert "StudyInstanceUID" in command.error_comment


def test_a_failing_handler_is_c000_with_a_comment_and_the_association_stays_up() -> None:
    peer = find_peer(Handler(RuntimeError("database is locked")))
    send_find(peer, identifier(PatientID=""))
    ((status, _),) = answers(peer)
    assert 0xC000 <= status <= 0xCFFF
    assert "database is locked" in peer.last_command[0].error_comment
    send_find(peer, identifier(PatientID=""), message_id=6)
    assert answers(peer)[0][0] >= 0xC000


def test_cancel_stops_a_long_result_with_fe00() -> None:
    cancel = Command(command_field=CommandField.C_CANCEL_RQ, message_id_being_responded_to=9)
    peer: Peer

    def endless(_: FindQuery) -> Iterator[Dataset]:
        """Matches without end; the peer cancels after the fifth."""
        number = 0
        while True:
            number += 1
            if number == 6:
                peer.send_command(1, cancel)
            yield study(str(number))

    peer = find_peer(Handler(endless))
    send_find(peer, identifier(PatientID=""), message_id=9)
    statuses = [status for status, _ in answers(peer)]
    assert statuses[-1] == 0xFE00
    assert set(statuses[:-1]) == {0xFF00}
    assert len(statuses) <= 7


def test_unsupported_optional_keys_give_ff01() -> None:
    handler = Handler([study("1")])
    handler.supported_keys = lambda level: frozenset({"PatientID", "StudyInstanceUID"})  # type: ignore[attr-defined]
    alsoProvides(handler, ISupportedKeys)
    peer = find_peer(handler)
    send_find(peer, identifier(PatientID="", StudyComments=""))
    assert [status for status, _ in answers(peer)] == [0xFF01, 0x0000]


def test_non_ascii_answers_use_the_querys_character_set_when_it_fits() -> None:
    peer = find_peer(Handler([study("1", "MÜLLER^JÜRGEN")]))
    send_find(peer, identifier(SpecificCharacterSet="ISO_IR 100", PatientName=""))
    ((_, match), _) = answers(peer)
    assert match.SpecificCharacterSet == "ISO_IR 100"
    assert match.PatientName == "MÜLLER^JÜRGEN"


def test_answers_fall_back_to_utf8_when_the_query_set_cannot_carry_them() -> None:
    peer = find_peer(Handler([study("1", "Yamada^Tarou=山田^太郎")]))
    send_find(peer, identifier(SpecificCharacterSet="ISO_IR 100", PatientName=""))
    ((_, match), _) = answers(peer)
    assert match.SpecificCharacterSet == "ISO_IR 192"
    assert str(match.PatientName) == "Yamada^Tarou=山田^太郎"


def test_implicit_little_endian_identifiers_work_too() -> None:
    peer = find_peer(Handler([study("7")]), syntax=IMPLICIT)
    command = Command(
        command_field=CommandField.C_FIND_RQ,
        message_id=1,
        affected_sop_class_uid=STUDY_ROOT,
        priority=0,
        command_data_set_type=0x0001,
    )
    peer.send_command(1, command, encode_dataset(identifier(PatientID=""), IMPLICIT))
    peer.clock.advance(0)
    (first, _), *_ = peer.messages()
    assert first.status == 0xFF00


def test_an_identifier_past_the_limit_is_refused_with_a700_and_the_association_stays() -> None:
    handler = Handler([study("1")])
    peer = find_peer(handler)
    huge = identifier(PatientID="", StudyDescription="x" * 2_000_000)
    send_find(peer, huge, message_id=5)
    [(status, _)] = answers(peer)
    assert status == 0xA700
    assert handler.queries == []
    send_find(peer, identifier(PatientID=""), message_id=6)  # the association goes on
    assert [status for status, _ in answers(peer)] == [0xFF00, 0x0000]


def test_a_deflated_identifier_that_inflates_past_the_limit_is_refused_with_a700() -> None:
    handler = Handler([study("1")])
    peer = find_peer(handler, syntax=DEFLATED)
    bomb = identifier(PatientID="", StudyDescription=" " * 8_000_000)
    command = Command(command_field=CommandField.C_FIND_RQ, message_id=5,
                      affected_sop_class_uid=STUDY_ROOT, priority=0,
                      command_data_set_type=0x0001)  # fmt: skip
    data = encode_dataset(bomb, DEFLATED)
    assert len(data) < 64 * 1024  # small on the wire
    peer.send_command(1, command, data)
    [(status, _)] = answers(peer)
    assert status == 0xA700
    assert "inflates to more than 1048576 bytes" in peer.last_command[0].error_comment
    assert handler.queries == []


def test_an_identifier_of_more_keys_than_the_limit_is_refused_with_a700() -> None:
    handler = Handler([study("1")])
    peer = find_peer(handler)
    many = identifier(PatientID="")
    for element in range(1024):
        many.add_new((0x0009, 0x1000 + element), "LO", "")

    send_find(peer, many)

    [(status, _)] = answers(peer)
    assert status == 0xA700
    assert peer.last_command[0].error_comment == "an identifier of more than 1024 keys"
    assert handler.queries == []


def test_answers_to_an_identifier_of_many_keys_hold_every_key() -> None:
    """Past 64 keys the answers are made in the worker; they are the same answers."""
    peer = find_peer(Handler([study("1"), study("2")]))
    many = identifier(PatientID="")
    for element in range(200):
        many.add_new((0x0009, 0x1000 + element), "LO", "")

    send_find(peer, many)

    responses = answers(peer)
    assert [status for status, _ in responses] == [0xFF00, 0xFF00, 0x0000]
    for (_, answer), patient in zip(responses, ["1", "2"], strict=False):
        assert answer.PatientID == patient
        assert len(answer) == 203  # the 201 asked for, QueryRetrieveLevel, RetrieveAETitle


@pytest.mark.parametrize("style", ["generator", "async generator"])
def test_a_peer_that_does_not_read_holds_up_the_matches(style: str) -> None:
    """While the transport is full, no further match is even taken from the handler; once
    the peer reads, the rest follow."""
    taken: list[int] = []

    def generator(_: FindQuery) -> Iterator[Dataset]:
        for number in range(20):
            taken.append(number)
            yield study(str(number))

    async def async_generator(query: FindQuery) -> AsyncIterator[Dataset]:
        for match in generator(query):
            yield match

    peer = find_peer(Handler(generator if style == "generator" else async_generator))
    outbox = peer.transport.producer
    outbox.pauseProducing()  # what Twisted's transport does when its buffer is full

    send_find(peer, identifier(PatientID=""))

    assert answers(peer) == []
    assert taken == [0]
    outbox.resumeProducing()
    statuses = [status for status, _ in answers(peer)]
    assert statuses == [0xFF00] * 20 + [0x0000]


@pytest.mark.parametrize(
    "error",
    [
        Unavailable("the archive is stopping"),
        ConnectionAbortedError(errno.ECONNABORTED, "index: the archive is stopping"),
    ],
)
def test_a_handler_that_cannot_answer_now_is_a700_with_its_reason_and_no_traceback(
    error: Exception,
) -> None:
    """A stopping archive, or an index it cannot reach, is no fault of the query: the peer
    hears A700, the log gets one line."""
    observed: list[dict] = []
    globalLogPublisher.addObserver(observed.append)
    try:
        peer = find_peer(Handler(error))
        send_find(peer, identifier(PatientID=""))
    finally:
        globalLogPublisher.removeObserver(observed.append)
    ((status, _),) = answers(peer)
    assert status == 0xA700
    assert "the archive is stopping" in peer.last_command[0].error_comment
    assert not [event for event in observed if "log_failure" in event]
    assert any("the archive is stopping" in formatEvent(event) for event in observed)

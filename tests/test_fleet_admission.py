"""The association limits of a node of worker processes: the parent's book, and a worker asking
it over AMP (connected in memory with iosim)."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.protocols import amp
from twisted.test.iosim import connectedServerAndClient

from dicomd.fleet.admission import (
    ADMIT_DEADLINE,
    Admissions,
    AdmissionServer,
    DestinationTurns,
    SharedLimit,
    SharedTurns,
)
from dicomd.interfaces import ACCEPT, AssociationRequest, Rejection
from dicomd.node.factory import AssociationLimits, PassedLimit

LIMITS = AssociationLimits(total=4, per_host=2, per_calling_ae=3)


def test_each_limit_counts_every_workers_associations() -> None:
    book = Admissions(LIMITS)
    assert book.admit(1, "a", "10.0.0.1", "CT01") is None
    assert book.admit(2, "b", "10.0.0.1", "CT01") is None
    assert book.admit(1, "c", "10.0.0.1", "CT02") == PassedLimit(
        "max_associations_per_host", "more than 2 associations from 10.0.0.1"
    )
    assert book.admit(2, "d", "10.0.0.2", "CT01") is None
    assert book.admit(1, "e", "10.0.0.3", "CT01") == PassedLimit(
        "max_associations_per_calling_ae", "more than 3 associations for CT01"
    )
    assert book.admit(1, "f", "10.0.0.3", "CT03") is None
    assert book.admit(2, "g", "10.0.0.4", "CT04") == PassedLimit(
        "max_associations", "more than 4 associations"
    )
    book.leave(2, "b")
    assert book.admit(2, "g", "10.0.0.4", "CT04") is None


def test_a_worker_that_ends_frees_what_it_held() -> None:
    book = Admissions(LIMITS)
    book.admit(1, "a", "10.0.0.1", "CT01")
    book.admit(2, "a", "10.0.0.1", "CT01")  # the same key in another worker is another association
    book.forget(2)
    assert book.held() == 1
    book.leave(1, "unknown")  # a key never admitted changes nothing
    assert book.held() == 1


def request(host: str, port: int, calling: str = "CT01") -> AssociationRequest:
    return AssociationRequest("DICOMD", calling, host, port, (), None, None, None)


def connected_worker(book: Admissions, number: int, clock: Clock | None = None):
    worker = amp.AMP()
    server, _client, pump = connectedServerAndClient(
        lambda: AdmissionServer(book, DestinationTurns(), number), lambda: worker
    )
    return SharedLimit(worker, clock or Clock()), pump, server


def answer(limit: SharedLimit, pump, asked: AssociationRequest):
    d = limit.validate(asked)
    pump.flush()
    results: list[object] = []
    d.addBoth(results.append)
    return results[0]


def test_two_workers_share_the_limit_from_one_host_and_release_it() -> None:
    book = Admissions(LIMITS)
    first, first_pump, _ = connected_worker(book, 1)
    second, second_pump, _ = connected_worker(book, 2)

    assert answer(first, first_pump, request("10.0.0.1", 40001)) is ACCEPT
    assert answer(second, second_pump, request("10.0.0.1", 40002)) is ACCEPT
    refused = answer(second, second_pump, request("10.0.0.1", 40003))
    assert isinstance(refused, Rejection)
    assert (refused.result, refused.source, refused.reason) == (2, 3, 2)
    assert refused.message == "local limit exceeded: more than 2 associations from 10.0.0.1"

    first.left("10.0.0.1", 40001)
    first_pump.flush()
    assert answer(second, second_pump, request("10.0.0.1", 40003)) is ACCEPT


def test_a_connection_that_was_never_admitted_releases_nothing() -> None:
    book = Admissions(LIMITS)
    limit, pump, _ = connected_worker(book, 1)
    assert answer(limit, pump, request("10.0.0.1", 40001)) is ACCEPT
    limit.left("10.0.0.9", 1)  # rejected earlier, or never asked about
    pump.flush()
    assert book.held() == 1


def test_a_connection_that_ends_while_the_parent_decides_gives_its_admission_back() -> None:
    book = Admissions(LIMITS)
    limit, pump, _ = connected_worker(book, 1)
    deciding = limit.validate(request("10.0.0.1", 40001))
    limit.left("10.0.0.1", 40001)  # the peer reset before the parent's answer came
    pump.flush()
    outcome: list[object] = []
    deciding.addBoth(outcome.append)
    assert isinstance(outcome[0], Rejection)
    assert book.held() == 0


def test_a_worker_whose_parent_is_gone_admits_nothing() -> None:
    book = Admissions(LIMITS)
    limit, pump, server = connected_worker(book, 1)
    server.transport.loseConnection()
    pump.flush()
    refused = answer(limit, pump, request("10.0.0.1", 40001))
    assert isinstance(refused, Rejection)
    assert refused.message == "local limit exceeded: the parent is gone"
    assert book.held() == 0


def connected_turns(turns: DestinationTurns, number: int):
    worker = amp.AMP()
    server, _client, pump = connectedServerAndClient(
        lambda: AdmissionServer(Admissions(LIMITS), turns, number), lambda: worker
    )
    return SharedTurns(worker, "VIEWER", 1), pump, server


def test_a_destination_takes_one_association_at_a_time_from_all_workers() -> None:
    turns = DestinationTurns()
    first, first_pump, _ = connected_turns(turns, 1)
    second, second_pump, _ = connected_turns(turns, 2)

    taken = first.acquire()
    first_pump.flush()
    waiting = second.acquire()
    second_pump.flush()
    assert taken.called and not waiting.called
    assert turns.held("VIEWER") == 1

    first.release()
    first_pump.flush()
    second_pump.flush()
    assert waiting.called
    assert turns.held("VIEWER") == 1


def test_a_worker_that_ends_gives_back_its_turns_and_those_it_waited_for() -> None:
    turns = DestinationTurns()
    first, first_pump, first_server = connected_turns(turns, 1)
    second, second_pump, second_server = connected_turns(turns, 2)
    third, third_pump, _ = connected_turns(turns, 3)
    first.acquire()
    first_pump.flush()
    second.acquire()  # waits behind the first
    second_pump.flush()
    waiting = third.acquire()
    third_pump.flush()

    second_server.transport.loseConnection()  # the waiting worker ends
    second_pump.flush()
    first_server.transport.loseConnection()  # then the holder
    first_pump.flush()
    third_pump.flush()

    assert waiting.called
    assert turns.held("VIEWER") == 1  # the third's, and nothing left for the dead ones


def test_a_parent_that_does_not_decide_in_time_admits_nothing_even_later() -> None:
    book = Admissions(LIMITS)
    clock = Clock()
    limit, pump, _ = connected_worker(book, 1, clock)
    deciding = limit.validate(request("10.0.0.1", 40001))  # the parent is stalled: no pump
    clock.advance(ADMIT_DEADLINE)
    outcome: list[object] = []
    deciding.addBoth(outcome.append)
    assert isinstance(outcome[0], Rejection)
    assert outcome[0].message == "local limit exceeded: the parent did not answer in time"
    pump.flush()  # the parent wakes: it admits, then hears that the worker gave it back
    assert book.held() == 0

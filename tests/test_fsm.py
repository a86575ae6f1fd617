"""The PS3.8 state machine: transitions, actions and the aborts the tables prescribe."""

from __future__ import annotations

import pytest

from dicomd.ul import fsm
from dicomd.ul.fsm import (
    TRANSITIONS,
    ByRole,
    Event,
    Input,
    InvalidPrimitive,
    State,
    StateMachine,
)
from dicomd.ul.pdu import (
    AAbort,
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    AReleaseRP,
    AReleaseRQ,
    PDataTF,
    PresentationContextAC,
    PresentationContextRQ,
    PresentationDataValue,
    UserInformation,
    decode,
)

RQ = AAssociateRQ(
    "SCP",
    "SCU",
    (PresentationContextRQ(1, "1.2.840.10008.1.1", ("1.2.840.10008.1.2",)),),
    UserInformation(max_length=16384),
)
AC = AAssociateAC(
    "SCP",
    "SCU",
    (PresentationContextAC(1, 0, "1.2.840.10008.1.2"),),
    UserInformation(max_length=16384),
)
RJ = AAssociateRJ(1, 1, 7)
PDATA = PDataTF((PresentationDataValue(1, 3, b"\x00" * 4),))


class Recorder:
    """Both ports of the machine, writing down what it was asked to do."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.machine: StateMachine | None = None
        self.answer_association_with: AAssociateAC | AAssociateRJ | None = None

    # provider port
    def write(self, data: bytes) -> None:
        self.calls.append(("write", decode(data)))

    def open_transport(self) -> None:
        self.calls.append(("open",))

    def close_transport(self) -> None:
        self.calls.append(("close",))

    def start_artim(self) -> None:
        self.calls.append(("start_artim",))

    def stop_artim(self) -> None:
        self.calls.append(("stop_artim",))

    # user port
    def associate_indication(self, request: AAssociateRQ) -> None:
        self.calls.append(("associate_indication", request))
        if self.answer_association_with is not None:
            assert self.machine is not None
            self.machine.associate_response(self.answer_association_with)

    def associate_accepted(self, accept: AAssociateAC) -> None:
        self.calls.append(("accepted", accept))

    def associate_rejected(self, reject: AAssociateRJ) -> None:
        self.calls.append(("rejected", reject))

    def data_indication(self, data: PDataTF) -> None:
        self.calls.append(("data", data))

    def release_indication(self, collision: bool) -> None:
        self.calls.append(("release_indication", collision))

    def release_confirmation(self) -> None:
        self.calls.append(("release_confirmation",))

    def abort_indication(self, source: int, reason: int) -> None:
        self.calls.append(("abort_indication", source, reason))

    def take(self) -> list[tuple]:
        calls, self.calls = self.calls, []
        return calls


def machine_in(state: State, *, requestor: bool = False) -> tuple[StateMachine, Recorder]:
    recorder = Recorder()
    machine = StateMachine(recorder, recorder, requestor=requestor)
    recorder.machine = machine
    machine.state = state
    return machine, recorder


def test_table_covers_every_pdu_event_in_every_connected_state() -> None:
    """Every PDU arriving in any state with a connection has a prescribed action."""
    connected = [s for s in State if s not in (State.STA1, State.STA4)]
    for event in (3, 4, 6, 10, 12, 13, 16, 19):
        missing = [s.name for s in connected if s not in TRANSITIONS[Event(event)]]
        assert missing == [], f"Evt{event} has no action in {missing}"


# The state each action leads to, from PS3.8 Tables 9-6 to 9-9; AR-8 alone
# depends on the role (Sta9 for the requestor, Sta10 for the acceptor).
STANDARD_NEXT_STATE: dict[str, State | ByRole] = {
    "AE_1": State.STA4,
    "AE_2": State.STA5,
    "AE_3": State.STA6,
    "AE_4": State.STA1,
    "AE_5": State.STA2,
    "AE_6": State.STA3,
    "AE_7": State.STA6,
    "AE_8": State.STA13,
    "DT_1": State.STA6,
    "DT_2": State.STA6,
    "AR_1": State.STA7,
    "AR_2": State.STA8,
    "AR_3": State.STA1,
    "AR_4": State.STA13,
    "AR_5": State.STA1,
    "AR_6": State.STA7,
    "AR_7": State.STA8,
    "AR_8": ByRole(requestor=State.STA9, acceptor=State.STA10),
    "AR_9": State.STA11,
    "AR_10": State.STA12,
    "AA_1": State.STA13,
    "AA_2": State.STA1,
    "AA_3": State.STA1,
    "AA_4": State.STA1,
    "AA_5": State.STA1,
    "AA_6": State.STA13,
    "AA_7": State.STA13,
    "AA_8": State.STA13,
}


def test_every_cell_leads_to_the_state_its_action_prescribes() -> None:
    wrong = [
        (event.name, state.name, action.__name__, next_state)
        for event, row in TRANSITIONS.items()
        for state, (action, next_state) in row.items()
        if STANDARD_NEXT_STATE[action.__name__] != next_state
    ]
    assert wrong == []


def test_the_table_binds_action_functions_not_names() -> None:
    """Each cell holds the action function of the module itself, nothing looked up by name."""
    actions = {action for row in TRANSITIONS.values() for action, _ in row.values()}
    assert all(callable(action) for action in actions)
    assert {action.__name__ for action in actions} == set(STANDARD_NEXT_STATE)
    assert all(getattr(fsm, action.__name__) is action for action in actions)
    assert not any(hasattr(StateMachine, action.__name__) for action in actions)


def test_an_input_carries_its_data_to_the_action() -> None:
    """An action reads its input, not the machine: calling one directly changes no field."""
    machine, rec = machine_in(State.STA2)
    before = dict(vars(machine))
    fsm.AE_6(machine, Input(Event.EVT6, pdu=RQ))
    fsm.AA_8(machine, Input(Event.EVT19, abort=AAbort(2, 6)))
    assert vars(machine) == before
    assert rec.take() == [
        ("stop_artim",),
        ("associate_indication", RQ),
        ("write", AAbort(2, 6)),
        ("abort_indication", 2, 6),
        ("start_artim",),
    ]
    with pytest.raises(AttributeError):
        Input(Event.EVT10, pdu=PDATA).pdu = RQ  # type: ignore[misc]


def test_interleaved_machines_keep_their_own_data() -> None:
    """Inputs fed alternately to two machines reach each one's actions unmixed."""
    other_rq = AAssociateRQ("OTHER", "PEER", RQ.presentation_contexts, RQ.user_information)
    one, rec_one = machine_in(State.STA1, requestor=True)
    two, rec_two = machine_in(State.STA1, requestor=True)
    one.associate_request(RQ)
    two.associate_request(other_rq)
    two.connection_confirmed()
    one.connection_confirmed()
    assert rec_one.take() == [("open",), ("write", RQ)]
    assert rec_two.take() == [("open",), ("write", other_rq)]

    one.pdu_received(AC)
    two.pdu_received(RQ)  # unexpected in Sta5: AA-8 with the provider's reason
    one.invalid_pdu_received(6)
    assert rec_one.take() == [
        ("accepted", AC),
        ("write", AAbort(2, 6)),
        ("abort_indication", 2, 6),
        ("start_artim",),
    ]
    assert rec_two.take() == [
        ("write", AAbort(2, 2)),
        ("abort_indication", 2, 2),
        ("start_artim",),
    ]


def test_acceptor_happy_path() -> None:
    machine, rec = machine_in(State.STA1)
    machine.connection_indicated()
    assert machine.state is State.STA2
    assert rec.take() == [("start_artim",)]

    machine.pdu_received(RQ)
    assert machine.state is State.STA3
    assert rec.take() == [("stop_artim",), ("associate_indication", RQ)]

    machine.associate_response(AC)
    assert machine.state is State.STA6
    assert rec.take() == [("write", AC)]

    machine.pdu_received(PDATA)
    assert rec.take() == [("data", PDATA)]
    machine.data_request(PDATA.encode())
    assert rec.take() == [("write", PDATA)]

    machine.pdu_received(AReleaseRQ())
    assert machine.state is State.STA8
    assert rec.take() == [("release_indication", False)]
    machine.release_response()
    assert machine.state is State.STA13
    assert rec.take() == [("write", AReleaseRP()), ("start_artim",)]

    machine.connection_closed()
    assert machine.state is State.STA1
    assert rec.take() == [("stop_artim",)]


def test_synchronous_answer_from_inside_the_indication() -> None:
    """A user may answer A-ASSOCIATE from inside the indication: the state is already Sta3."""
    machine, rec = machine_in(State.STA2)
    rec.answer_association_with = AC
    machine.pdu_received(RQ)
    assert machine.state is State.STA6
    assert rec.take() == [("stop_artim",), ("associate_indication", RQ), ("write", AC)]


def test_acceptor_rejects() -> None:
    machine, rec = machine_in(State.STA3)
    machine.associate_response(RJ)
    assert machine.state is State.STA13
    assert rec.take() == [("write", RJ), ("start_artim",)]
    machine.artim_expired()
    assert machine.state is State.STA1
    assert rec.take() == [("stop_artim",), ("close",)]


def test_requestor_happy_path() -> None:
    machine, rec = machine_in(State.STA1, requestor=True)
    machine.associate_request(RQ)
    assert machine.state is State.STA4
    assert rec.take() == [("open",)]
    machine.connection_confirmed()
    assert machine.state is State.STA5
    assert rec.take() == [("write", RQ)]
    machine.pdu_received(AC)
    assert machine.state is State.STA6
    assert rec.take() == [("accepted", AC)]
    machine.release_request()
    assert machine.state is State.STA7
    assert rec.take() == [("write", AReleaseRQ())]
    machine.pdu_received(PDATA)  # AR-6: data still arrives while we wait
    assert machine.state is State.STA7
    assert rec.take() == [("data", PDATA)]
    machine.pdu_received(AReleaseRP())
    assert machine.state is State.STA1
    assert rec.take() == [("release_confirmation",), ("close",)]


def test_requestor_rejected() -> None:
    machine, rec = machine_in(State.STA5, requestor=True)
    machine.pdu_received(RJ)
    assert machine.state is State.STA1
    assert rec.take() == [("rejected", RJ), ("close",)]


def test_release_collision_requestor_side() -> None:
    """Sta7 + RQ -> Sta9 -> (response) Sta11 -> (RP) Sta1."""
    machine, rec = machine_in(State.STA7, requestor=True)
    machine.pdu_received(AReleaseRQ())
    assert machine.state is State.STA9
    assert rec.take() == [("release_indication", True)]
    machine.release_response()
    assert machine.state is State.STA11
    assert rec.take() == [("write", AReleaseRP())]
    machine.pdu_received(AReleaseRP())
    assert machine.state is State.STA1
    assert rec.take() == [("release_confirmation",), ("close",)]


def test_release_collision_acceptor_side() -> None:
    """Sta7 + RQ -> Sta10 -> (RP) Sta12 -> (response) Sta13."""
    machine, rec = machine_in(State.STA7, requestor=False)
    machine.pdu_received(AReleaseRQ())
    assert machine.state is State.STA10
    assert rec.take() == [("release_indication", True)]
    machine.pdu_received(AReleaseRP())
    assert machine.state is State.STA12
    assert rec.take() == [("release_confirmation",)]
    machine.release_response()
    assert machine.state is State.STA13
    assert rec.take() == [("write", AReleaseRP()), ("start_artim",)]


@pytest.mark.parametrize("pdu", [AC, RJ, PDATA, AReleaseRP(), AReleaseRQ()])
def test_unexpected_pdu_before_association_is_aa1(pdu: object) -> None:
    machine, rec = machine_in(State.STA2)
    machine.pdu_received(pdu)
    assert machine.state is State.STA13
    assert rec.take() == [("write", AAbort(2, 2)), ("start_artim",)]


@pytest.mark.parametrize("pdu", [AC, RJ, RQ])
def test_unexpected_pdu_on_an_association_is_aa8(pdu: object) -> None:
    machine, rec = machine_in(State.STA6)
    machine.pdu_received(pdu)
    assert machine.state is State.STA13
    assert rec.take() == [
        ("write", AAbort(2, 2)),
        ("abort_indication", 2, 2),
        ("start_artim",),
    ]


def test_invalid_pdu_carries_its_reason() -> None:
    machine, rec = machine_in(State.STA2)
    machine.invalid_pdu_received(1)
    assert rec.take() == [("write", AAbort(2, 1)), ("start_artim",)]
    machine, rec = machine_in(State.STA6)
    machine.invalid_pdu_received(6)
    assert rec.take() == [
        ("write", AAbort(2, 6)),
        ("abort_indication", 2, 6),
        ("start_artim",),
    ]


def test_pdus_while_closing_are_ignored_but_a_new_request_is_aborted() -> None:
    machine, rec = machine_in(State.STA13)
    machine.pdu_received(PDATA)
    assert machine.state is State.STA13
    assert rec.take() == []
    machine.pdu_received(RQ)
    assert rec.take() == [("write", AAbort(2, 2))]


def test_peer_abort_is_indicated_and_closes() -> None:
    machine, rec = machine_in(State.STA6)
    machine.pdu_received(AAbort(0, 0))
    assert machine.state is State.STA1
    assert rec.take() == [("abort_indication", 0, 0), ("close",)]


def test_local_abort_sends_the_users_source_and_reason() -> None:
    machine, rec = machine_in(State.STA6)
    machine.abort_request()
    assert machine.state is State.STA13
    assert rec.take() == [("write", AAbort(0, 0)), ("start_artim",)]


def test_transport_lost_on_an_association() -> None:
    machine, rec = machine_in(State.STA6)
    machine.connection_closed()
    assert machine.state is State.STA1
    assert rec.take() == [("abort_indication", 2, 0)]


def test_artim_in_sta2_closes_the_connection() -> None:
    machine, rec = machine_in(State.STA2)
    machine.artim_expired()
    assert machine.state is State.STA1
    assert rec.take() == [("stop_artim",), ("close",)]


def test_local_primitive_in_the_wrong_state_raises() -> None:
    machine, _ = machine_in(State.STA2)
    with pytest.raises(InvalidPrimitive):
        machine.data_request(PDATA.encode())
    with pytest.raises(InvalidPrimitive):
        machine.release_request()

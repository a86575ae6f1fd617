"""The DICOM Upper Layer state machine of PS3.8 section 9.2, free of I/O.

Every input to the machine is an `Input`: one event of PS3.8 Table 9-10
together with the data its action needs (the PDU received, the A-ASSOCIATE-RQ
or response to send, the encoded P-DATA-TF, the A-ABORT to send).  The
transition table maps each (event, state) cell to the action function of
Tables 9-6 to 9-9 and the next state, and the machine calls that function with
itself and the input.  So nothing is looked up by name, and no field of the
machine is set to smuggle data to an action; the one piece of state that spans
two events (the A-ASSOCIATE-RQ held between AE-1 and AE-2) is kept by the
action that receives it.

The machine never touches a socket or a clock: it reaches the outside only
through two narrow ports, the *provider* (write bytes, close or open the
transport, start and stop ARTIM) and the *user* (the indications and
confirmations the standard's service user receives).  `dicomd.ul.protocol`
implements the provider port on a Twisted transport; the association object
implements the user port.

One deliberate reading of the standard: AA-1 says "service-user source", but
when AA-1 answers a PDU that is unexpected or invalid the abort is the
provider's own decision, and PS3.8 9.3.8 makes the reason field significant
only for source 2.  So an abort caused by a received PDU carries source 2 and
the reason that explains it; an abort the local user asked for carries the
user's source and reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Protocol, TypeAlias

from dicomd.ul.pdu import (
    PDU,
    AAbort,
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    AbortReason,
    AbortSource,
    AReleaseRP,
    AReleaseRQ,
    PDataTF,
)


class State(Enum):
    """The thirteen states of PS3.8 Table 9-10."""

    STA1 = "Idle"
    STA2 = "Transport connection open (awaiting A-ASSOCIATE-RQ PDU)"
    STA3 = "Awaiting local A-ASSOCIATE response primitive"
    STA4 = "Awaiting transport connection opening to complete"
    STA5 = "Awaiting A-ASSOCIATE-AC or A-ASSOCIATE-RJ PDU"
    STA6 = "Association established and ready for data transfer"
    STA7 = "Awaiting A-RELEASE-RP PDU"
    STA8 = "Awaiting local A-RELEASE response primitive"
    STA9 = "Release collision requestor side; awaiting A-RELEASE response primitive"
    STA10 = "Release collision acceptor side; awaiting A-RELEASE-RP PDU"
    STA11 = "Release collision requestor side; awaiting A-RELEASE-RP PDU"
    STA12 = "Release collision acceptor side; awaiting A-RELEASE response primitive"
    STA13 = "Awaiting transport connection close indication"


class Event(IntEnum):
    """The nineteen events of PS3.8 Table 9-10."""

    EVT1 = 1  # A-ASSOCIATE request (local user)
    EVT2 = 2  # transport connect confirmation (local transport service)
    EVT3 = 3  # A-ASSOCIATE-AC PDU received
    EVT4 = 4  # A-ASSOCIATE-RJ PDU received
    EVT5 = 5  # transport connection indication
    EVT6 = 6  # A-ASSOCIATE-RQ PDU received
    EVT7 = 7  # A-ASSOCIATE response primitive (accept)
    EVT8 = 8  # A-ASSOCIATE response primitive (reject)
    EVT9 = 9  # P-DATA request primitive
    EVT10 = 10  # P-DATA-TF PDU received
    EVT11 = 11  # A-RELEASE request primitive
    EVT12 = 12  # A-RELEASE-RQ PDU received
    EVT13 = 13  # A-RELEASE-RP PDU received
    EVT14 = 14  # A-RELEASE response primitive
    EVT15 = 15  # A-ABORT request primitive
    EVT16 = 16  # A-ABORT PDU received
    EVT17 = 17  # transport connection closed indication
    EVT18 = 18  # ARTIM timer expired
    EVT19 = 19  # unrecognized or invalid PDU received


# The primitives of the local user: one the current state does not allow is
# the caller's mistake, not the peer's.
_LOCAL_PRIMITIVES = frozenset(
    (Event.EVT1, Event.EVT7, Event.EVT8, Event.EVT9, Event.EVT11, Event.EVT14, Event.EVT15)
)


class ProviderPort(Protocol):
    """What the machine needs from the transport and the clock."""

    def write(self, data: bytes) -> None: ...
    def open_transport(self) -> None: ...
    def close_transport(self) -> None: ...
    def start_artim(self) -> None: ...
    def stop_artim(self) -> None: ...


class UserPort(Protocol):
    """The primitives the machine issues to the Upper Layer service user."""

    def associate_indication(self, request: AAssociateRQ) -> None: ...
    def associate_accepted(self, accept: AAssociateAC) -> None: ...
    def associate_rejected(self, reject: AAssociateRJ) -> None: ...
    def data_indication(self, data: PDataTF) -> None: ...
    def release_indication(self, collision: bool) -> None: ...
    def release_confirmation(self) -> None: ...
    def abort_indication(self, source: int, reason: int) -> None: ...


class InvalidPrimitive(RuntimeError):
    """The local user issued a primitive the current state does not allow."""


_UNEXPECTED_PDU_ABORT = AAbort(AbortSource.SERVICE_PROVIDER, AbortReason.UNEXPECTED_PDU)
_RELEASE_RQ = AReleaseRQ().encode()
_RELEASE_RP = AReleaseRP().encode()


@dataclass(frozen=True, slots=True)
class Input:
    """One event of Table 9-10 with the data its action needs.

    ``pdu`` is the PDU received (Evt3, 4, 6, 10, 12, 13, 16) or the one the
    local user asks to send (the A-ASSOCIATE-RQ of Evt1, the A-ASSOCIATE-AC or
    -RJ of Evt7 and Evt8).  ``encoded_pdata`` is the P-DATA-TF of Evt9, already
    encoded.  ``abort`` is the A-ABORT that AA-1, AA-7 and AA-8 send: by
    default the provider's "unexpected PDU", the reason of an invalid PDU for
    Evt19, and the user's source and reason for Evt15.
    """

    event: Event
    pdu: PDU | None = None
    encoded_pdata: bytes = b""
    abort: AAbort = _UNEXPECTED_PDU_ABORT


# -- association establishment (Table 9-6) -------------------------------


def AE_1(machine: StateMachine, input: Input) -> None:
    machine._pending_request = input.pdu
    machine.provider.open_transport()


def AE_2(machine: StateMachine, input: Input) -> None:
    request = machine._pending_request
    assert request is not None, "Evt2 without a pending A-ASSOCIATE request"
    machine._pending_request = None
    machine.provider.write(request.encode())


def AE_3(machine: StateMachine, input: Input) -> None:
    machine.user.associate_accepted(input.pdu)


def AE_4(machine: StateMachine, input: Input) -> None:
    machine.user.associate_rejected(input.pdu)
    machine.provider.close_transport()


def AE_5(machine: StateMachine, input: Input) -> None:
    machine.provider.start_artim()


def AE_6(machine: StateMachine, input: Input) -> None:
    machine.provider.stop_artim()
    machine.user.associate_indication(input.pdu)


def AE_7(machine: StateMachine, input: Input) -> None:
    machine.provider.write(input.pdu.encode())


def AE_8(machine: StateMachine, input: Input) -> None:
    machine.provider.write(input.pdu.encode())
    machine.provider.start_artim()


# -- data transfer (Table 9-7) -------------------------------------------


def DT_1(machine: StateMachine, input: Input) -> None:
    machine.provider.write(input.encoded_pdata)


def DT_2(machine: StateMachine, input: Input) -> None:
    machine.user.data_indication(input.pdu)


# -- release (Table 9-8) -------------------------------------------------


def AR_1(machine: StateMachine, input: Input) -> None:
    machine.provider.write(_RELEASE_RQ)


def AR_2(machine: StateMachine, input: Input) -> None:
    machine.user.release_indication(collision=False)


def AR_3(machine: StateMachine, input: Input) -> None:
    machine.user.release_confirmation()
    machine.provider.close_transport()


def AR_4(machine: StateMachine, input: Input) -> None:
    machine.provider.write(_RELEASE_RP)
    machine.provider.start_artim()


def AR_5(machine: StateMachine, input: Input) -> None:
    machine.provider.stop_artim()


def AR_6(machine: StateMachine, input: Input) -> None:
    machine.user.data_indication(input.pdu)


def AR_7(machine: StateMachine, input: Input) -> None:
    machine.provider.write(input.encoded_pdata)


def AR_8(machine: StateMachine, input: Input) -> None:
    machine.user.release_indication(collision=True)


def AR_9(machine: StateMachine, input: Input) -> None:
    machine.provider.write(_RELEASE_RP)


def AR_10(machine: StateMachine, input: Input) -> None:
    machine.user.release_confirmation()


# -- abort (Table 9-9) ---------------------------------------------------


def AA_1(machine: StateMachine, input: Input) -> None:
    machine.provider.write(input.abort.encode())
    machine.provider.start_artim()


def AA_2(machine: StateMachine, input: Input) -> None:
    machine.provider.stop_artim()
    machine.provider.close_transport()


def AA_3(machine: StateMachine, input: Input) -> None:
    machine.user.abort_indication(input.pdu.source, input.pdu.reason)
    machine.provider.close_transport()


def AA_4(machine: StateMachine, input: Input) -> None:
    machine.user.abort_indication(AbortSource.SERVICE_PROVIDER, AbortReason.NOT_SPECIFIED)


def AA_5(machine: StateMachine, input: Input) -> None:
    machine.provider.stop_artim()


def AA_6(machine: StateMachine, input: Input) -> None:
    """Ignore the PDU: the connection is closing anyway."""


def AA_7(machine: StateMachine, input: Input) -> None:
    machine.provider.write(input.abort.encode())


def AA_8(machine: StateMachine, input: Input) -> None:
    machine.provider.write(input.abort.encode())
    machine.user.abort_indication(input.abort.source, input.abort.reason)
    machine.provider.start_artim()


# -- the transition table (Table 9-10) -----------------------------------


@dataclass(frozen=True, slots=True)
class ByRole:
    """A next state that depends on the role; only AR-8 (release collision) has one."""

    requestor: State
    acceptor: State


Action: TypeAlias = Callable[["StateMachine", Input], None]
Transition: TypeAlias = tuple[Action, "State | ByRole"]

_S = State
_ALL_ESTABLISHED = (_S.STA6, _S.STA7, _S.STA8, _S.STA9, _S.STA10, _S.STA11, _S.STA12)
_AFTER_ACCEPT = (_S.STA8, _S.STA9, _S.STA10, _S.STA11, _S.STA12)


def _rows(transition: Transition, *states: State) -> dict[State, Transition]:
    return dict.fromkeys(states, transition)


# PS3.8 Table 9-10, one event per entry: in each state, the action and the
# state it leads to (Tables 9-6 to 9-9).  A state an event does not list is an
# empty cell of the table.
TRANSITIONS: dict[Event, dict[State, Transition]] = {
    Event.EVT1: {_S.STA1: (AE_1, _S.STA4)},
    Event.EVT2: {_S.STA4: (AE_2, _S.STA5)},
    Event.EVT3: {
        _S.STA2: (AA_1, _S.STA13),
        _S.STA5: (AE_3, _S.STA6),
        _S.STA13: (AA_6, _S.STA13),
        **_rows((AA_8, _S.STA13), _S.STA3, *_ALL_ESTABLISHED),
    },
    Event.EVT4: {
        _S.STA2: (AA_1, _S.STA13),
        _S.STA5: (AE_4, _S.STA1),
        _S.STA13: (AA_6, _S.STA13),
        **_rows((AA_8, _S.STA13), _S.STA3, *_ALL_ESTABLISHED),
    },
    Event.EVT5: {_S.STA1: (AE_5, _S.STA2)},
    Event.EVT6: {
        _S.STA2: (AE_6, _S.STA3),
        _S.STA13: (AA_7, _S.STA13),
        **_rows((AA_8, _S.STA13), _S.STA3, _S.STA5, *_ALL_ESTABLISHED),
    },
    Event.EVT7: {_S.STA3: (AE_7, _S.STA6)},
    Event.EVT8: {_S.STA3: (AE_8, _S.STA13)},
    Event.EVT9: {_S.STA6: (DT_1, _S.STA6), _S.STA8: (AR_7, _S.STA8)},
    Event.EVT10: {
        _S.STA2: (AA_1, _S.STA13),
        _S.STA6: (DT_2, _S.STA6),
        _S.STA7: (AR_6, _S.STA7),
        _S.STA13: (AA_6, _S.STA13),
        **_rows((AA_8, _S.STA13), _S.STA3, _S.STA5, *_AFTER_ACCEPT),
    },
    Event.EVT11: {_S.STA6: (AR_1, _S.STA7)},
    Event.EVT12: {
        _S.STA2: (AA_1, _S.STA13),
        _S.STA6: (AR_2, _S.STA8),
        _S.STA7: (AR_8, ByRole(requestor=_S.STA9, acceptor=_S.STA10)),
        _S.STA13: (AA_6, _S.STA13),
        **_rows((AA_8, _S.STA13), _S.STA3, _S.STA5, *_AFTER_ACCEPT),
    },
    Event.EVT13: {
        _S.STA2: (AA_1, _S.STA13),
        _S.STA7: (AR_3, _S.STA1),
        _S.STA10: (AR_10, _S.STA12),
        _S.STA11: (AR_3, _S.STA1),
        _S.STA13: (AA_6, _S.STA13),
        **_rows((AA_8, _S.STA13), _S.STA3, _S.STA5, _S.STA6, _S.STA8, _S.STA9, _S.STA12),
    },
    Event.EVT14: {
        _S.STA8: (AR_4, _S.STA13),
        _S.STA9: (AR_9, _S.STA11),
        _S.STA12: (AR_4, _S.STA13),
    },
    Event.EVT15: {
        _S.STA4: (AA_2, _S.STA1),
        **_rows((AA_1, _S.STA13), _S.STA3, _S.STA5, *_ALL_ESTABLISHED),
    },
    Event.EVT16: {
        _S.STA2: (AA_2, _S.STA1),
        _S.STA13: (AA_2, _S.STA1),
        **_rows((AA_3, _S.STA1), _S.STA3, _S.STA5, *_ALL_ESTABLISHED),
    },
    Event.EVT17: {
        _S.STA2: (AA_5, _S.STA1),
        _S.STA13: (AR_5, _S.STA1),
        **_rows((AA_4, _S.STA1), _S.STA3, _S.STA4, _S.STA5, *_ALL_ESTABLISHED),
    },
    Event.EVT18: {_S.STA2: (AA_2, _S.STA1), _S.STA13: (AA_2, _S.STA1)},
    Event.EVT19: {
        _S.STA2: (AA_1, _S.STA13),
        _S.STA13: (AA_7, _S.STA13),
        **_rows((AA_8, _S.STA13), _S.STA3, _S.STA5, *_ALL_ESTABLISHED),
    },
}

_PDU_EVENTS: dict[type, Event] = {
    AAssociateAC: Event.EVT3,
    AAssociateRJ: Event.EVT4,
    AAssociateRQ: Event.EVT6,
    PDataTF: Event.EVT10,
    AReleaseRQ: Event.EVT12,
    AReleaseRP: Event.EVT13,
    AAbort: Event.EVT16,
}


class StateMachine:
    """One association's Upper Layer state, driven by inputs.

    The machine enters the next state *before* it runs the action, so that a
    service user answering synchronously from inside an indication (say, an
    A-ASSOCIATE response from inside the A-ASSOCIATE indication) meets the
    state the standard says it is in.  ``requestor`` matters only for release
    collisions (AR-8), where requestor and acceptor take different paths.
    """

    def __init__(self, provider: ProviderPort, user: UserPort, *, requestor: bool) -> None:
        self.provider = provider
        self.user = user
        self.requestor = requestor
        self.state = State.STA1
        # The A-ASSOCIATE-RQ that AE-1 keeps until AE-2 can send it.
        self._pending_request: AAssociateRQ | None = None

    @property
    def is_established(self) -> bool:
        """True from A-ASSOCIATE acceptance until release or abort."""
        return self.state in _ALL_ESTABLISHED

    # -- events from the transport and the peer --------------------------

    def connection_indicated(self) -> None:
        """Evt5: a peer connected to us (acceptor)."""
        self._fire(Input(Event.EVT5))

    def connection_confirmed(self) -> None:
        """Evt2: our outgoing connection is open (requestor)."""
        self._fire(Input(Event.EVT2))

    def pdu_received(self, pdu: PDU) -> None:
        """Evt3, 4, 6, 10, 12, 13 or 16, by the type of the decoded PDU."""
        self._fire(Input(_PDU_EVENTS[type(pdu)], pdu=pdu))

    def invalid_pdu_received(self, reason: int) -> None:
        """Evt19: bytes that are not a PDU we understand; ``reason`` goes in the A-ABORT."""
        self._fire(Input(Event.EVT19, abort=AAbort(AbortSource.SERVICE_PROVIDER, reason)))

    def connection_closed(self) -> None:
        """Evt17: the transport is gone."""
        self._fire(Input(Event.EVT17))

    def artim_expired(self) -> None:
        """Evt18."""
        self._fire(Input(Event.EVT18))

    # -- primitives from the local user ----------------------------------

    def associate_request(self, request: AAssociateRQ) -> None:
        """Evt1: open the transport; the request is sent once it is open."""
        self._fire(Input(Event.EVT1, pdu=request))

    def associate_response(self, response: AAssociateAC | AAssociateRJ) -> None:
        """Evt7 (accept) or Evt8 (reject)."""
        event = Event.EVT7 if isinstance(response, AAssociateAC) else Event.EVT8
        self._fire(Input(event, pdu=response))

    def data_request(self, encoded_pdata: bytes) -> None:
        """Evt9: send one already encoded P-DATA-TF PDU."""
        self._fire(Input(Event.EVT9, encoded_pdata=encoded_pdata))

    def release_request(self) -> None:
        """Evt11."""
        self._fire(Input(Event.EVT11))

    def release_response(self) -> None:
        """Evt14."""
        self._fire(Input(Event.EVT14))

    def abort_request(
        self,
        source: int = AbortSource.SERVICE_USER,
        reason: int = AbortReason.NOT_SPECIFIED,
    ) -> None:
        """Evt15: abort the association, or the attempt to open one."""
        self._fire(Input(Event.EVT15, abort=AAbort(source, reason)))

    def _fire(self, input: Input) -> None:
        transition = TRANSITIONS[input.event].get(self.state)
        if transition is None:
            if input.event in _LOCAL_PRIMITIVES:
                raise InvalidPrimitive(f"{input.event.name} is not allowed in {self.state.name}")
            # A transport event the table leaves empty (the connection
            # closing after the machine already went idle) changes nothing.
            return
        action, next_state = transition
        if isinstance(next_state, ByRole):
            next_state = next_state.requestor if self.requestor else next_state.acceptor
        self.state = next_state
        action(self, input)

"""The DICOM Upper Layer state machine of PS3.8 section 9.2, free of I/O.

The machine is the transition table of PS3.8 Table 9-10 written out as a
dictionary from (state, event) to action, and the actions of Tables 9-6 to
9-9 as methods.  It never touches a socket or a clock: it reaches the outside
only through two narrow ports, the *provider* (write bytes, close or open the
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
from enum import Enum, IntEnum
from typing import Any, Protocol

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


_S = State
_ALL_ESTABLISHED = (_S.STA6, _S.STA7, _S.STA8, _S.STA9, _S.STA10, _S.STA11, _S.STA12)
_AFTER_ACCEPT = (_S.STA8, _S.STA9, _S.STA10, _S.STA11, _S.STA12)


def _rows(action: str, *states: State) -> dict[State, str]:
    return dict.fromkeys(states, action)


# PS3.8 Table 9-10, one event per entry; the value names the action.
TRANSITIONS: dict[Event, dict[State, str]] = {
    Event.EVT1: {_S.STA1: "AE_1"},
    Event.EVT2: {_S.STA4: "AE_2"},
    Event.EVT3: {
        _S.STA2: "AA_1",
        _S.STA5: "AE_3",
        _S.STA13: "AA_6",
        **_rows("AA_8", _S.STA3, *_ALL_ESTABLISHED),
    },
    Event.EVT4: {
        _S.STA2: "AA_1",
        _S.STA5: "AE_4",
        _S.STA13: "AA_6",
        **_rows("AA_8", _S.STA3, *_ALL_ESTABLISHED),
    },
    Event.EVT5: {_S.STA1: "AE_5"},
    Event.EVT6: {
        _S.STA2: "AE_6",
        _S.STA13: "AA_7",
        **_rows("AA_8", _S.STA3, _S.STA5, *_ALL_ESTABLISHED),
    },
    Event.EVT7: {_S.STA3: "AE_7"},
    Event.EVT8: {_S.STA3: "AE_8"},
    Event.EVT9: {_S.STA6: "DT_1", _S.STA8: "AR_7"},
    Event.EVT10: {
        _S.STA2: "AA_1",
        _S.STA6: "DT_2",
        _S.STA7: "AR_6",
        _S.STA13: "AA_6",
        **_rows("AA_8", _S.STA3, _S.STA5, *_AFTER_ACCEPT),
    },
    Event.EVT11: {_S.STA6: "AR_1"},
    Event.EVT12: {
        _S.STA2: "AA_1",
        _S.STA6: "AR_2",
        _S.STA7: "AR_8",
        _S.STA13: "AA_6",
        **_rows("AA_8", _S.STA3, _S.STA5, *_AFTER_ACCEPT),
    },
    Event.EVT13: {
        _S.STA2: "AA_1",
        _S.STA7: "AR_3",
        _S.STA10: "AR_10",
        _S.STA11: "AR_3",
        _S.STA13: "AA_6",
        **_rows("AA_8", _S.STA3, _S.STA5, _S.STA6, _S.STA8, _S.STA9, _S.STA12),
    },
    Event.EVT14: {_S.STA8: "AR_4", _S.STA9: "AR_9", _S.STA12: "AR_4"},
    Event.EVT15: {
        _S.STA4: "AA_2",
        **_rows("AA_1", _S.STA3, _S.STA5, *_ALL_ESTABLISHED),
    },
    Event.EVT16: {
        _S.STA2: "AA_2",
        _S.STA13: "AA_2",
        **_rows("AA_3", _S.STA3, _S.STA5, *_ALL_ESTABLISHED),
    },
    Event.EVT17: {
        _S.STA2: "AA_5",
        _S.STA13: "AR_5",
        **_rows("AA_4", _S.STA3, _S.STA4, _S.STA5, *_ALL_ESTABLISHED),
    },
    Event.EVT18: {_S.STA2: "AA_2", _S.STA13: "AA_2"},
    Event.EVT19: {
        _S.STA2: "AA_1",
        _S.STA13: "AA_7",
        **_rows("AA_8", _S.STA3, _S.STA5, *_ALL_ESTABLISHED),
    },
}

# The state each action leads to (Tables 9-6 to 9-9).  AR-8 alone depends on
# the role, so the machine decides it.
NEXT_STATE: dict[str, State] = {
    "AE_1": _S.STA4,
    "AE_2": _S.STA5,
    "AE_3": _S.STA6,
    "AE_4": _S.STA1,
    "AE_5": _S.STA2,
    "AE_6": _S.STA3,
    "AE_7": _S.STA6,
    "AE_8": _S.STA13,
    "DT_1": _S.STA6,
    "DT_2": _S.STA6,
    "AR_1": _S.STA7,
    "AR_2": _S.STA8,
    "AR_3": _S.STA1,
    "AR_4": _S.STA13,
    "AR_5": _S.STA1,
    "AR_6": _S.STA7,
    "AR_7": _S.STA8,
    "AR_9": _S.STA11,
    "AR_10": _S.STA12,
    "AA_1": _S.STA13,
    "AA_2": _S.STA1,
    "AA_3": _S.STA1,
    "AA_4": _S.STA1,
    "AA_5": _S.STA1,
    "AA_6": _S.STA13,
    "AA_7": _S.STA13,
    "AA_8": _S.STA13,
}

_UNEXPECTED_PDU_ABORT = AAbort(AbortSource.SERVICE_PROVIDER, AbortReason.UNEXPECTED_PDU)
_RELEASE_RQ = AReleaseRQ().encode()
_RELEASE_RP = AReleaseRP().encode()

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
    """One association's Upper Layer state, driven by events.

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
        self._request: AAssociateRQ | None = None
        self._pdu: Any = None
        self._abort = _UNEXPECTED_PDU_ABORT
        self._actions: dict[str, Callable[[], None]] = {
            name: getattr(self, name) for table in TRANSITIONS.values() for name in table.values()
        }

    @property
    def is_established(self) -> bool:
        """True from A-ASSOCIATE acceptance until release or abort."""
        return self.state in _ALL_ESTABLISHED

    # -- events from the transport and the peer --------------------------

    def connection_indicated(self) -> None:
        """Evt5: a peer connected to us (acceptor)."""
        self._fire(Event.EVT5)

    def connection_confirmed(self) -> None:
        """Evt2: our outgoing connection is open (requestor)."""
        self._fire(Event.EVT2)

    def pdu_received(self, pdu: PDU) -> None:
        """Evt3, 4, 6, 10, 12, 13 or 16, by the type of the decoded PDU."""
        self._pdu = pdu
        self._abort = _UNEXPECTED_PDU_ABORT
        self._fire(_PDU_EVENTS[type(pdu)])

    def invalid_pdu_received(self, reason: int) -> None:
        """Evt19: bytes that are not a PDU we understand; ``reason`` goes in the A-ABORT."""
        self._abort = AAbort(AbortSource.SERVICE_PROVIDER, reason)
        self._fire(Event.EVT19)

    def connection_closed(self) -> None:
        """Evt17: the transport is gone."""
        self._fire(Event.EVT17)

    def artim_expired(self) -> None:
        """Evt18."""
        self._fire(Event.EVT18)

    # -- primitives from the local user ----------------------------------

    def associate_request(self, request: AAssociateRQ) -> None:
        """Evt1: open the transport; the request is sent once it is open."""
        self._request = request
        self._fire(Event.EVT1, local=True)

    def associate_response(self, response: AAssociateAC | AAssociateRJ) -> None:
        """Evt7 (accept) or Evt8 (reject)."""
        self._pdu = response
        self._fire(Event.EVT7 if isinstance(response, AAssociateAC) else Event.EVT8, local=True)

    def data_request(self, encoded_pdata: bytes) -> None:
        """Evt9: send one already encoded P-DATA-TF PDU."""
        self._pdu = encoded_pdata
        self._fire(Event.EVT9, local=True)

    def release_request(self) -> None:
        """Evt11."""
        self._fire(Event.EVT11, local=True)

    def release_response(self) -> None:
        """Evt14."""
        self._fire(Event.EVT14, local=True)

    def abort_request(
        self,
        source: int = AbortSource.SERVICE_USER,
        reason: int = AbortReason.NOT_SPECIFIED,
    ) -> None:
        """Evt15: abort the association, or the attempt to open one."""
        self._abort = AAbort(source, reason)
        self._fire(Event.EVT15, local=True)

    def _fire(self, event: Event, local: bool = False) -> None:
        action = TRANSITIONS[event].get(self.state)
        if action is None:
            if local:
                raise InvalidPrimitive(f"{event.name} is not allowed in {self.state.name}")
            # A transport event the table leaves empty (the connection
            # closing after the machine already went idle) changes nothing.
            return
        if action == "AR_8":
            self.state = State.STA9 if self.requestor else State.STA10
        else:
            self.state = NEXT_STATE[action]
        self._actions[action]()

    # -- association establishment (Table 9-6) ---------------------------

    def AE_1(self) -> None:
        self.provider.open_transport()

    def AE_2(self) -> None:
        assert self._request is not None, "Evt2 without a pending A-ASSOCIATE request"
        self.provider.write(self._request.encode())

    def AE_3(self) -> None:
        self.user.associate_accepted(self._pdu)

    def AE_4(self) -> None:
        self.user.associate_rejected(self._pdu)
        self.provider.close_transport()

    def AE_5(self) -> None:
        self.provider.start_artim()

    def AE_6(self) -> None:
        self.provider.stop_artim()
        self.user.associate_indication(self._pdu)

    def AE_7(self) -> None:
        self.provider.write(self._pdu.encode())

    def AE_8(self) -> None:
        self.provider.write(self._pdu.encode())
        self.provider.start_artim()

    # -- data transfer (Table 9-7) ---------------------------------------

    def DT_1(self) -> None:
        self.provider.write(self._pdu)

    def DT_2(self) -> None:
        self.user.data_indication(self._pdu)

    # -- release (Table 9-8) ---------------------------------------------

    def AR_1(self) -> None:
        self.provider.write(_RELEASE_RQ)

    def AR_2(self) -> None:
        self.user.release_indication(collision=False)

    def AR_3(self) -> None:
        self.user.release_confirmation()
        self.provider.close_transport()

    def AR_4(self) -> None:
        self.provider.write(_RELEASE_RP)
        self.provider.start_artim()

    def AR_5(self) -> None:
        self.provider.stop_artim()

    def AR_6(self) -> None:
        self.user.data_indication(self._pdu)

    def AR_7(self) -> None:
        self.provider.write(self._pdu)

    def AR_8(self) -> None:
        self.user.release_indication(collision=True)

    def AR_9(self) -> None:
        self.provider.write(_RELEASE_RP)

    def AR_10(self) -> None:
        self.user.release_confirmation()

    # -- abort (Table 9-9) -----------------------------------------------

    def AA_1(self) -> None:
        self.provider.write(self._abort.encode())
        self.provider.start_artim()

    def AA_2(self) -> None:
        self.provider.stop_artim()
        self.provider.close_transport()

    def AA_3(self) -> None:
        self.user.abort_indication(self._pdu.source, self._pdu.reason)
        self.provider.close_transport()

    def AA_4(self) -> None:
        self.user.abort_indication(AbortSource.SERVICE_PROVIDER, AbortReason.NOT_SPECIFIED)

    def AA_5(self) -> None:
        self.provider.stop_artim()

    def AA_6(self) -> None:
        """Ignore the PDU: the connection is closing anyway."""

    def AA_7(self) -> None:
        self.provider.write(self._abort.encode())

    def AA_8(self) -> None:
        self.provider.write(self._abort.encode())
        self.user.abort_indication(self._abort.source, self._abort.reason)
        self.provider.start_artim()

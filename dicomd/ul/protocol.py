"""The Twisted side of the Upper Layer: bytes in, PDUs out, timers.

`UpperLayerProtocol` only frames and decodes PDUs, feeds them to the state
machine of `dicomd.ul.fsm`, and implements the machine's provider port (write,
close, ARTIM) on a Twisted transport with an injectable clock.  What an
association *does* lives in the service user it is given (`dicomd.node.acceptor`
for the acceptor), so that parsing, protocol rules and services stay apart.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from dicomd.ul.fsm import State, StateMachine, UserPort
from dicomd.ul.pdu import (
    HEADER_LENGTH,
    AbortReason,
    AbortSource,
    PDUError,
    PDUType,
    decode_pdu,
    parse_header,
)
from dicomd.ul.timer import Timer
from dicomd.ul.tls import handshake_failure

# The largest A-ASSOCIATE-RQ/AC we take.  Our maximum PDU length bounds only
# P-DATA-TF (PS3.8 9.3.1); an association request proposing 128 contexts of
# 38 transfer syntaxes each is about 130 KB, so 1 MiB leaves ample room while
# keeping a lying length field from making us buffer without end.
MAX_ASSOCIATE_PDU_LENGTH = 1 << 20

# A-ASSOCIATE-RJ, A-RELEASE-RQ/RP and A-ABORT have a four-byte body.
_FIXED_LENGTH_TYPES = {
    PDUType.ASSOCIATE_RJ,
    PDUType.RELEASE_RQ,
    PDUType.RELEASE_RP,
    PDUType.ABORT,
}
_KNOWN_TYPES = {int(t) for t in PDUType}

UserFactory = Callable[["UpperLayerProtocol"], UserPort]


class UpperLayerProtocol(Protocol):
    """One TCP connection carrying one DICOM association.

    ``max_pdu_length`` is what we announced: a P-DATA-TF longer than that is
    answered with an A-ABORT before its body is read.  ``idle_timeout`` aborts
    an association whose peer has gone quiet, ``pdu_timeout`` one whose peer
    began a PDU and does not finish it (every byte resets the idle timer, so
    a trickle would otherwise hold the association forever); ARTIM
    (``artim_timeout``) covers the moments the standard gives it.
    """

    log = Logger()
    tls_failure: str | None = None
    """OpenSSL's reason when the connection ended in its TLS handshake."""

    def __init__(
        self,
        make_user: UserFactory,
        clock: IReactorTime,
        *,
        requestor: bool,
        max_pdu_length: int,
        artim_timeout: float,
        idle_timeout: float,
        pdu_timeout: float,
    ) -> None:
        self.clock = clock
        self.max_pdu_length = max_pdu_length
        self.artim_timeout = artim_timeout
        self.idle_timeout = idle_timeout
        self.user = make_user(self)
        self.machine = StateMachine(self, self.user, requestor=requestor)
        self._buffer = bytearray()
        self._discarding = False
        self._artim = Timer(clock, artim_timeout, self._artim_expired)
        self._idle = Timer(clock, idle_timeout, self._idle_expired)
        self._pdu_deadline = Timer(clock, pdu_timeout, self._pdu_expired)

    # -- Twisted Protocol ------------------------------------------------

    def connectionMade(self) -> None:
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        self._idle.start()
        if self.machine.requestor:
            self.machine.connection_confirmed()
        else:
            self.machine.connection_indicated()

    def dataReceived(self, data: bytes) -> None:
        if self._discarding:
            return
        self._idle.push_back()
        buffer = self._buffer
        buffer += data
        while len(buffer) >= HEADER_LENGTH and not self._discarding:
            pdu_type, length = parse_header(bytes(buffer[:HEADER_LENGTH]))
            problem = self._framing_problem(pdu_type, length)
            if problem is not None:
                self.log.warn(
                    "invalid PDU header from {peer} (type 0x{type:02X}, length {length});"
                    " aborting: {problem}",
                    peer=self.peer,
                    type=pdu_type,
                    length=length,
                    problem=problem.name.lower().replace("_", " "),
                )
                self._invalid(problem)
                return
            end = HEADER_LENGTH + length
            if len(buffer) < end:
                if not self._pdu_deadline.running:
                    self._pdu_deadline.start()
                return
            body = bytes(buffer[HEADER_LENGTH:end])
            del buffer[:end]
            self._pdu_deadline.stop()
            try:
                pdu = decode_pdu(pdu_type, body)
            except PDUError as error:
                self.log.warn(
                    "invalid PDU from {peer}; aborting: {error}",
                    peer=self.peer,
                    error=str(error),
                )
                self._invalid(error.reason)
                return
            self.machine.pdu_received(pdu)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        refused = handshake_failure(reason)
        if refused is not None:
            self.log.warn("TLS handshake with {peer} failed: {why}", peer=self.peer, why=refused)
            self.tls_failure = refused
        self._idle.stop()
        self._pdu_deadline.stop()
        self.stop_artim()
        self.machine.connection_closed()

    # -- provider port of the state machine -------------------------------

    def write(self, data: bytes) -> None:
        self._idle.push_back()
        self.transport.write(data)

    def open_transport(self) -> None:
        """The endpoint opened the connection before this protocol existed."""

    def close_transport(self) -> None:
        self._discarding = True
        self._idle.stop()
        self.transport.loseConnection()

    def start_artim(self) -> None:
        self._artim.start()

    def stop_artim(self) -> None:
        self._artim.stop()

    # -- internals --------------------------------------------------------

    def _framing_problem(self, pdu_type: int, length: int) -> AbortReason | None:
        """Judge a PDU by its header alone, so a lying length costs us nothing."""
        if pdu_type not in _KNOWN_TYPES:
            return AbortReason.UNRECOGNIZED_PDU
        if pdu_type in _FIXED_LENGTH_TYPES:
            return None if length == 4 else AbortReason.INVALID_PDU_PARAMETER_VALUE
        if pdu_type == PDUType.P_DATA_TF:
            if self.max_pdu_length and length > self.max_pdu_length:
                from dicomd import metrics  # here: clients load prometheus-client only if so

                metrics.limit_hit("max_pdu_length")
                return AbortReason.INVALID_PDU_PARAMETER_VALUE
            return None
        if length > MAX_ASSOCIATE_PDU_LENGTH:
            return AbortReason.INVALID_PDU_PARAMETER_VALUE
        return None

    def _invalid(self, reason: int) -> None:
        """Evt19: the byte stream can no longer be framed, so stop reading it."""
        self._discarding = True
        self._buffer.clear()
        self.machine.invalid_pdu_received(reason)

    def _artim_expired(self) -> None:
        self.log.info("ARTIM expired for {peer}; closing", peer=self.peer)
        self.machine.artim_expired()
        # The peer had ARTIM's time to close.  A graceful close would wait for it to read
        # what is still unsent, which a peer that stopped reading never does.
        self.transport.abortConnection()

    def _pdu_expired(self) -> None:
        """A PDU begun ``pdu_timeout`` ago is still not whole: a peer trickling bytes to hold
        the association open gets an A-ABORT; before there is an association, the
        connection is closed."""
        self.log.warn(
            "{peer} began a PDU {seconds}s ago and has not finished it; aborting",
            peer=self.peer,
            seconds=self._pdu_deadline.seconds,
        )
        self._discarding = True
        self._buffer.clear()
        if self.machine.state in (State.STA1, State.STA2, State.STA4, State.STA13):
            self.close_transport()
        else:
            self.machine.abort_request(AbortSource.SERVICE_PROVIDER, AbortReason.NOT_SPECIFIED)

    def _idle_expired(self) -> None:
        state = self.machine.state
        if state in (State.STA1, State.STA2, State.STA4, State.STA13):
            return  # ARTIM or the transport owns these moments
        self.log.info(
            "no data from {peer} for {seconds}s; aborting",
            peer=self.peer,
            seconds=self.idle_timeout,
        )
        self.machine.abort_request(AbortSource.SERVICE_PROVIDER, AbortReason.NOT_SPECIFIED)

    @property
    def peer(self) -> str:
        """The peer's address as ``host:port``, for log lines."""
        peer = self.transport.getPeer() if self.transport is not None else None
        host, port = getattr(peer, "host", "?"), getattr(peer, "port", "?")
        return f"{host}:{port}"

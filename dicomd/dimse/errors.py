"""What can go wrong with an association, as either role sees it.

Every failure of a DIMSE operation once connected is an `AssociationError`;
the requestor's public facade (`dicomd.client`) re-exports these, and the
node's services see the same ones for the requests they make themselves (the
C-STOREs of a C-GET).
"""

from __future__ import annotations

from dicomd.ul.pdu import AbortReason, AbortSource


class AssociationError(Exception):
    """The association could not be opened or ended abnormally."""


class AssociationRejected(AssociationError):
    """The peer answered A-ASSOCIATE-RJ."""

    def __init__(self, result: int, source: int, reason: int) -> None:
        super().__init__(f"association rejected: result {result}, source {source}, reason {reason}")
        self.result, self.source, self.reason = result, source, reason


class AssociationAborted(AssociationError):
    """An A-ABORT (from the peer, or from the provider when the connection broke)."""

    def __init__(self, source: int, reason: int) -> None:
        super().__init__(f"association aborted: source {source}, reason {reason}")
        self.source, self.reason = source, reason


class TLSHandshakeFailed(AssociationAborted):
    """The connection ended in its TLS handshake: the peer refused our certificate (or our
    lack of one), or we refused its.  ``problem`` is OpenSSL's reason."""

    def __init__(self, problem: str) -> None:
        super().__init__(AbortSource.SERVICE_PROVIDER, AbortReason.NOT_SPECIFIED)
        self.args = (f"TLS handshake failed: {problem}",)
        self.problem = problem


class AssociationTimeout(AssociationAborted):
    """Our ACSE timer ran out: the peer did not answer A-ASSOCIATE-RQ or A-RELEASE-RQ in time.

    We then aborted the association ourselves (A-ABORT, source 0 service
    user, reason 0), so this is an `AssociationAborted` with those numbers
    too: code that only asks whether the association was aborted keeps
    working, and code that asks why can tell our timeout from a peer's
    A-ABORT, which carries the same numbers.
    """

    def __init__(self, waiting_for: str, timeout: float) -> None:
        super().__init__(AbortSource.SERVICE_USER, AbortReason.NOT_SPECIFIED)
        self.waiting_for, self.timeout = waiting_for, timeout

    def __str__(self) -> str:
        return f"no answer to {self.waiting_for} within {self.timeout:g} s; association aborted"


class AssociationReleased(AssociationError):
    """The association was released while a request of ours still waited for its response."""


class NoAcceptedContext(AssociationError):
    """The peer accepted no presentation context for what was to be sent."""


class DimseTimeout(AssociationError):
    """No DIMSE response within the DIMSE timeout; the association was aborted."""

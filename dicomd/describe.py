"""Human-readable texts for the numbers a DICOM peer answers with.

Status codes (PS3.7 Annex C, PS3.4 B.2.3 and C.4), association rejections
(PS3.8 Table 9-21) and aborts (PS3.8 Table 9-26) arrive as bare numbers; a
person reading an error message needs their meaning, and a person who knows
the standard wants the numbers too.  Every such text lives here so that the
command line, logs and error messages all say the same thing.
"""

from __future__ import annotations

from typing import Final, Literal

from dicomd.uids import Status, status_category

Service = Literal["echo", "store", "find", "move", "get"]

_GENERAL_MEANINGS: Final[dict[int, str]] = {
    Status.SUCCESS: "success",
    Status.WARNING: "warning",
    Status.NO_SUCH_ATTRIBUTE: "no such attribute",
    Status.INVALID_ATTRIBUTE_VALUE: "invalid attribute value",
    Status.ATTRIBUTE_LIST_ERROR: "attribute list error",
    Status.PROCESSING_FAILURE: "processing failure",
    Status.DUPLICATE_SOP_INSTANCE: "duplicate SOP instance",
    Status.NO_SUCH_SOP_INSTANCE: "no such SOP instance",
    Status.NO_SUCH_EVENT_TYPE: "no such event type",
    Status.NO_SUCH_ARGUMENT: "no such argument",
    Status.INVALID_ARGUMENT_VALUE: "invalid argument value",
    Status.ATTRIBUTE_VALUE_OUT_OF_RANGE: "attribute value out of range",
    Status.INVALID_OBJECT_INSTANCE: "invalid object instance",
    Status.NO_SUCH_SOP_CLASS: "no such SOP class",
    Status.CLASS_INSTANCE_CONFLICT: "class-instance conflict",
    Status.MISSING_ATTRIBUTE: "missing attribute",
    Status.MISSING_ATTRIBUTE_VALUE: "missing attribute value",
    Status.SOP_CLASS_NOT_SUPPORTED: "SOP class not supported",
    Status.NO_SUCH_ACTION: "no such action",
    Status.NOT_AUTHORIZED: "not authorized",
    Status.DUPLICATE_INVOCATION: "duplicate invocation",
    Status.UNRECOGNIZED_OPERATION: "unrecognized operation",
    Status.MISTYPED_ARGUMENT: "mistyped argument",
    Status.RESOURCE_LIMITATION: "resource limitation",
    Status.OUT_OF_RESOURCES: "out of resources",
    Status.OUT_OF_RESOURCES_UNABLE_TO_CALCULATE_MATCHES: (
        "out of resources, unable to calculate the number of matches"
    ),
    Status.OUT_OF_RESOURCES_UNABLE_TO_PERFORM_SUB_OPERATIONS: (
        "out of resources, unable to perform sub-operations"
    ),
    Status.MOVE_DESTINATION_UNKNOWN: "move destination unknown",
    Status.ELEMENTS_DISCARDED: "elements discarded",
    Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS_WARNING: "data set does not match SOP class",
    Status.CANCEL: "cancelled",
    Status.PENDING: "pending",
    Status.PENDING_WARNING: "pending, some optional keys are not supported",
}
"""Codes whose meaning is the same in every service."""

_SERVICE_MEANINGS: Final[dict[Service, dict[int, str]]] = {
    "store": {
        Status.COERCION_OF_DATA_ELEMENTS: "coercion of data elements",
    },
    "find": {Status.CANCEL: "matching terminated due to cancel"},
    "move": {
        Status.SUB_OPERATIONS_COMPLETE_WITH_FAILURES: "sub-operations complete, some failed",
        Status.CANCEL: "sub-operations terminated due to cancel",
    },
    "get": {
        Status.SUB_OPERATIONS_COMPLETE_WITH_FAILURES: "sub-operations complete, some failed",
        Status.CANCEL: "sub-operations terminated due to cancel",
    },
}
"""Codes that mean something particular to one service (PS3.4 B.2.3, C.4.1 to C.4.3)."""

_QUERY_SERVICES: Final = frozenset({"find", "move", "get"})


def status_meaning(code: int, service: Service | None = None) -> str:
    """What a status code means, in lower case ("out of resources").

    The Storage service assigns whole ranges (A7xx, A9xx, Cxxx) where the
    query services use single codes, and 0xB000 means one thing to C-STORE and
    another to C-MOVE; ``service`` picks the reading.  A code nobody assigned
    is described by its category alone.
    """
    if service is not None and code in _SERVICE_MEANINGS.get(service, {}):
        return _SERVICE_MEANINGS[service][code]
    if code in _GENERAL_MEANINGS:
        return _GENERAL_MEANINGS[code]
    if 0xA700 <= code <= 0xA7FF:
        return "out of resources"
    if 0xA900 <= code <= 0xA9FF:
        if service in _QUERY_SERVICES:
            return "identifier does not match SOP class"
        return "data set does not match SOP class"
    if 0xC000 <= code <= 0xCFFF:
        if service == "store":
            return "cannot understand"
        return "unable to process"
    if code == 0xB000:
        return "warning"
    return f"unknown {status_category(code)} status"


def describe_status(code: int, service: Service | None = None) -> str:
    """The code, then its meaning: ``0xA700 out of resources``."""
    return f"0x{code:04X} {status_meaning(code, service)}"


_REJECT_RESULTS: Final = {1: "permanent", 2: "transient"}

_REJECT_SOURCES: Final = {
    1: "service user",
    2: "service provider (ACSE)",
    3: "service provider (presentation)",
}

_REJECT_REASONS: Final[dict[tuple[int, int], str]] = {
    (1, 1): "no reason given",
    (1, 2): "application context name not supported",
    (1, 3): "calling AE title not recognized",
    (1, 7): "called AE title not recognized",
    (2, 1): "no reason given",
    (2, 2): "protocol version not supported",
    (3, 1): "temporary congestion",
    (3, 2): "local limit exceeded",
}


def describe_rejection(result: int, source: int, reason: int) -> str:
    """An A-ASSOCIATE-RJ in words, then its numbers (PS3.8 Table 9-21).

    ``called AE title not recognized (permanent, service user, reason 7)``
    """
    meaning = rejection_reason(source, reason)
    result_text = _REJECT_RESULTS.get(result, f"result {result}")
    source_text = _REJECT_SOURCES.get(source, f"source {source}")
    return f"{meaning} ({result_text}, {source_text}, reason {reason})"


def rejection_reason(source: int, reason: int) -> str:
    """The reason of an A-ASSOCIATE-RJ from ``source`` as PS3.8 names it: ``local limit
    exceeded``."""
    return _REJECT_REASONS.get((source, reason), "reserved reason")


_ABORT_REASONS: Final = {
    0: "reason not specified",
    1: "unrecognized PDU",
    2: "unexpected PDU",
    4: "unrecognized PDU parameter",
    5: "unexpected PDU parameter",
    6: "invalid PDU parameter value",
}


def describe_abort(source: int, reason: int) -> str:
    """An A-ABORT in words, then its numbers (PS3.8 Table 9-26).

    The reason is significant only when the service provider aborted; a
    service user (the peer application, or this one) gives none.  A provider
    abort without a reason is also what a connection closed without any
    A-ABORT looks like (PS3.8 9.2.2, AA-4).
    """
    if source == 0:
        return "aborted by the service user (source 0)"
    if source == 2:
        meaning = _ABORT_REASONS.get(reason, "reserved reason")
        return f"aborted by the service provider: {meaning} (source 2, reason {reason})"
    return f"aborted (reserved source {source}, reason {reason})"

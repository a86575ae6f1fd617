"""The UIDs and status codes that dicomd speaks of by name.

The tables that change with every edition of the standard (storage SOP
classes, transfer syntaxes) are built from pydicom's UID registry rather than
copied here, so that upgrading pydicom is how dicomd learns new ones.
"""

from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING, Final, Literal

from dicomd import __version__

APPLICATION_CONTEXT: Final = "1.2.840.10008.3.1.1.1"
VERIFICATION: Final = "1.2.840.10008.1.1"

PATIENT_ROOT_FIND: Final = "1.2.840.10008.5.1.4.1.2.1.1"
PATIENT_ROOT_MOVE: Final = "1.2.840.10008.5.1.4.1.2.1.2"
PATIENT_ROOT_GET: Final = "1.2.840.10008.5.1.4.1.2.1.3"
STUDY_ROOT_FIND: Final = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE: Final = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET: Final = "1.2.840.10008.5.1.4.1.2.2.3"
MODALITY_WORKLIST_FIND: Final = "1.2.840.10008.5.1.4.31"

FIND_SOP_CLASSES: Final = frozenset({PATIENT_ROOT_FIND, STUDY_ROOT_FIND, MODALITY_WORKLIST_FIND})
MOVE_SOP_CLASSES: Final = frozenset({PATIENT_ROOT_MOVE, STUDY_ROOT_MOVE})
GET_SOP_CLASSES: Final = frozenset({PATIENT_ROOT_GET, STUDY_ROOT_GET})

_PATIENT_ROOT_LEVELS: Final = frozenset({"PATIENT", "STUDY", "SERIES", "IMAGE"})
_STUDY_ROOT_LEVELS: Final = frozenset({"STUDY", "SERIES", "IMAGE"})
QUERY_RETRIEVE_LEVELS: Final = {
    **dict.fromkeys((PATIENT_ROOT_FIND, PATIENT_ROOT_MOVE, PATIENT_ROOT_GET), _PATIENT_ROOT_LEVELS),
    **dict.fromkeys((STUDY_ROOT_FIND, STUDY_ROOT_MOVE, STUDY_ROOT_GET), _STUDY_ROOT_LEVELS),
}
"""The Query/Retrieve Levels each Patient Root and Study Root model allows (PS3.4 C.3)."""

IMPLICIT_VR_LITTLE_ENDIAN: Final = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN: Final = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN: Final = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN: Final = "1.2.840.10008.1.2.2"

DEFAULT_TRANSFER_SYNTAX_PREFERENCE: Final = (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
)
"""The native (unencapsulated) syntaxes, best first: explicit VR keeps the VR of
private elements, implicit VR is the one every peer accepts, deflate costs CPU,
and big endian is retired but still sent by old equipment."""

_NATIVE_TRANSFER_SYNTAXES: Final = frozenset(DEFAULT_TRANSFER_SYNTAX_PREFERENCE)

UNCOMPRESSED_SYNTAXES: Final = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)
"""What a requestor proposes by default, best first: every SCP accepts the second."""

IMPLEMENTATION_CLASS_UID: Final = "2.25.176406262734583710505728729895178301289"
"""Derived once from the random UUID 84b69c41-b827-4ae3-85d0-ed8b86536f69 (PS3.5 B.2)."""

IMPLEMENTATION_VERSION_NAME: Final = ("DICOMD_" + __version__.replace(".", ""))[:16]
"""Sent in A-ASSOCIATE user information; at most 16 characters (PS3.7 D.3.3.2)."""


def _is_storage_sop_class(uid: str, name: str, uid_type: str) -> bool:
    """Whether a registry entry is a SOP class that the Storage service (C-STORE) carries.

    Every such class is named "... Storage", sometimes with a suffix
    ("- For Presentation", "- Trial"); two SOP classes that merely mention
    storage are something else: Storage Commitment (N-ACTION/N-EVENT-REPORT)
    and Media Storage Directory Storage (the DICOMDIR, which lives on media
    and is never sent with C-STORE).
    """
    return (
        uid_type == "SOP Class"
        and "Storage" in name
        and not name.startswith("Storage Commitment")
        and uid != "1.2.840.10008.1.3.10"
    )


_Registry = dict[str, tuple[str, str, str, str, str]]
"""pydicom's UID registry: each UID's name, type, info, retired and keyword."""


def _storage_sop_classes(registry: _Registry) -> frozenset[str]:
    """Every storage SOP class pydicom knows, retired ones included.

    Retired classes are kept on purpose: an archive is where old equipment sends
    its images (the retired Ultrasound and Nuclear Medicine classes are still
    common), and accepting an instance costs nothing more than accepting a
    current one.
    """
    return frozenset(
        uid
        for uid, (name, uid_type, _info, _retired, _keyword) in registry.items()
        if _is_storage_sop_class(uid, name, uid_type)
    )


def _all_transfer_syntaxes(registry: _Registry) -> frozenset[str]:
    """Every current transfer syntax in pydicom's registry, plus explicit VR big
    endian: it is retired, but it is one of the native encodings dicomd can read
    and write, and peers still propose it."""
    return (
        frozenset(
            uid
            for uid, (_name, uid_type, _info, retired, _keyword) in registry.items()
            if uid_type == "Transfer Syntax" and not retired
        )
        | _NATIVE_TRANSFER_SYNTAXES
    )


def _known_transfer_syntaxes(registry: _Registry) -> frozenset[str]:
    """Every transfer syntax in pydicom's registry, retired ones included: what the
    storage service accepts, since an archive keeps instances as they were sent."""
    return frozenset(
        uid
        for uid, (_name, uid_type, _info, _retired, _keyword) in registry.items()
        if uid_type == "Transfer Syntax"
    )


_FROM_REGISTRY: Final = {
    "STORAGE_SOP_CLASSES": _storage_sop_classes,
    "ALL_TRANSFER_SYNTAXES": _all_transfer_syntaxes,
    "KNOWN_TRANSFER_SYNTAXES": _known_transfer_syntaxes,
}
"""The tables read from pydicom's UID registry: ``STORAGE_SOP_CLASSES``,
``ALL_TRANSFER_SYNTAXES`` and ``KNOWN_TRANSFER_SYNTAXES`` (frozensets of UIDs).

Each is made the first time it is asked for, and kept: importing pydicom
takes about 200 ms, which a C-ECHO (``dicomd echo``) or a command line
that only names UIDs need not pay.  pynetdicom, if imported before that,
adds the syntaxes newer than pydicom's edition to the registry.
"""

if TYPE_CHECKING:
    STORAGE_SOP_CLASSES: frozenset[str]
    ALL_TRANSFER_SYNTAXES: frozenset[str]
    KNOWN_TRANSFER_SYNTAXES: frozenset[str]


def __getattr__(name: str) -> frozenset[str]:
    """A table of `_FROM_REGISTRY`, made now and kept as a module attribute."""
    make = _FROM_REGISTRY.get(name)
    if make is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from pydicom._uid_dict import UID_dictionary

    table = make(UID_dictionary)
    globals()[name] = table
    return table


def is_encapsulated(transfer_syntax: str) -> bool:
    """Whether pixel data in this syntax travels as encapsulated fragments (PS3.5 A.4).

    Only the four native encodings carry pixel data as a plain value; every
    other syntax, known or private, is treated as encapsulated, as pydicom does.
    """
    return transfer_syntax not in _NATIVE_TRANSFER_SYNTAXES


class Status(IntEnum):
    """DIMSE status codes (PS3.7 Annex C and the service definitions of PS3.4).

    Some services give one code different meanings, so a few names are aliases
    of the same value (``0xB000``, ``0xA900``, ``0xC000``).
    """

    SUCCESS = 0x0000

    # Warnings (PS3.7 C.3, C.4)
    WARNING = 0x0001
    ATTRIBUTE_LIST_ERROR = 0x0107
    ATTRIBUTE_VALUE_OUT_OF_RANGE = 0x0116
    COERCION_OF_DATA_ELEMENTS = 0xB000
    SUB_OPERATIONS_COMPLETE_WITH_FAILURES = 0xB000
    ELEMENTS_DISCARDED = 0xB006
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS_WARNING = 0xB007

    # General failures (PS3.7 C.5)
    NO_SUCH_ATTRIBUTE = 0x0105
    INVALID_ATTRIBUTE_VALUE = 0x0106
    PROCESSING_FAILURE = 0x0110
    DUPLICATE_SOP_INSTANCE = 0x0111
    NO_SUCH_SOP_INSTANCE = 0x0112
    NO_SUCH_EVENT_TYPE = 0x0113
    NO_SUCH_ARGUMENT = 0x0114
    INVALID_ARGUMENT_VALUE = 0x0115
    INVALID_OBJECT_INSTANCE = 0x0117
    NO_SUCH_SOP_CLASS = 0x0118
    CLASS_INSTANCE_CONFLICT = 0x0119
    MISSING_ATTRIBUTE = 0x0120
    MISSING_ATTRIBUTE_VALUE = 0x0121
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    NO_SUCH_ACTION = 0x0123
    NOT_AUTHORIZED = 0x0124
    DUPLICATE_INVOCATION = 0x0210
    UNRECOGNIZED_OPERATION = 0x0211
    MISTYPED_ARGUMENT = 0x0212
    RESOURCE_LIMITATION = 0x0213

    # Service failures (PS3.4 B.2.3, C.4.1 to C.4.3)
    OUT_OF_RESOURCES = 0xA700
    OUT_OF_RESOURCES_UNABLE_TO_CALCULATE_MATCHES = 0xA701
    OUT_OF_RESOURCES_UNABLE_TO_PERFORM_SUB_OPERATIONS = 0xA702
    MOVE_DESTINATION_UNKNOWN = 0xA801
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    UNABLE_TO_PROCESS = 0xC000

    CANCEL = 0xFE00
    PENDING = 0xFF00
    PENDING_WARNING = 0xFF01


StatusCategory = Literal["success", "warning", "failure", "cancel", "pending"]

_WARNING_CODES: Final = frozenset({0x0001, 0x0107, 0x0116})


def status_category(code: int) -> StatusCategory:
    """The category of a status code (PS3.7 Annex C).

    Codes the standard does not assign are reported as failures: a requester
    that cannot tell what happened must not assume it worked.
    """
    if code == 0x0000:
        return "success"
    if code in (0xFF00, 0xFF01):
        return "pending"
    if code == 0xFE00:
        return "cancel"
    if code in _WARNING_CODES or 0xB000 <= code <= 0xBFFF:
        return "warning"
    return "failure"


_AE_TITLE_CHARACTERS: Final = frozenset(map(chr, range(0x20, 0x7F))) - {"\\"}
"""The default character repertoire without backslash and control characters (PS3.5 6.2)."""


def ae_title_problem(text: str) -> str | None:
    """Why ``text`` cannot be an AE title (PS3.5 6.2, VR AE), or None if it can.

    The one check of AE titles, for the configuration and the command line alike.
    """
    if not text.strip(" "):
        return "an AE title cannot be empty or all spaces"
    if len(text) > 16:
        return f"an AE title is at most 16 characters, {text!r} is longer"
    if not set(text) <= _AE_TITLE_CHARACTERS:
        return f"an AE title is printable ASCII without backslash, {text!r} is not"
    return None


def error_comment(text: str) -> str:
    """Text fit for Error Comment (0000,0902), an LO of the default repertoire: one line of
    at most 64 printable ASCII characters, no backslash.  Peer text quoted in a comment
    may hold any byte; what the repertoire lacks becomes "?", so the answer can be sent."""
    printable = "".join(c if c.isspace() or _fits_lo(c) else "?" for c in text)
    return " ".join(printable.split())[:64]


def _fits_lo(character: str) -> bool:
    return " " <= character <= "~" and character != "\\"


def uid_problem(text: str) -> str | None:
    """Why ``text`` cannot be a UID (PS3.5 9.1), or None if it can: at most 64 characters,
    digits and dots only.  Leading zeros, which the rules forbid but some writers use,
    pass: refusing them would refuse instances that exist."""
    if not text:
        return "is empty"
    if len(text) > 64:
        return f"is {len(text)} characters long, more than 64"
    if text.strip("0123456789."):
        return "holds characters other than digits and dots"
    return None

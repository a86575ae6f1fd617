"""DICOM Upper Layer PDUs (PS3.8 section 9.3) and their items (PS3.7 Annex D.3.3).

Pure, byte-exact encode and decode: no I/O, no Twisted, stdlib only, so the
state machine and the protocol can be tested against plain bytes.

Decoding is liberal where the standard allows it and strict where a peer
would otherwise be misunderstood:

- reserved fields are written as zero and never read;
- items are walked by their length fields; a length that runs past its
  enclosing field, or a missing mandatory item, is a `PDUError`;
- unknown user information sub-items are kept (the standard asks an acceptor
  to ignore what it does not know there), any other unknown item is an error;
- `decode_pdu` raises nothing but `PDUError`, whose `reason` is the
  `AbortReason` to put in the A-ABORT the caller sends back.

Text (AE titles, UIDs, the implementation version name) is decoded as
latin-1: every byte maps to one character, so decoding never fails and a
peer's odd bytes reach the association validator, which can reject the
association with a precise reason instead of an abort. Encoding is ASCII
only: we never put anything else on the wire.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, TypeAlias

from dicomd.uids import APPLICATION_CONTEXT


class PDUType(IntEnum):
    """PDU types (PS3.8 Table 9-1)."""

    ASSOCIATE_RQ = 1
    ASSOCIATE_AC = 2
    ASSOCIATE_RJ = 3
    P_DATA_TF = 4
    RELEASE_RQ = 5
    RELEASE_RP = 6
    ABORT = 7


class ItemType(IntEnum):
    """Item and sub-item types of the A-ASSOCIATE PDUs (PS3.8 9.3, PS3.7 D.3.3)."""

    APPLICATION_CONTEXT = 0x10
    PRESENTATION_CONTEXT_RQ = 0x20
    PRESENTATION_CONTEXT_AC = 0x21
    ABSTRACT_SYNTAX = 0x30
    TRANSFER_SYNTAX = 0x40
    USER_INFORMATION = 0x50
    MAXIMUM_LENGTH = 0x51
    IMPLEMENTATION_CLASS_UID = 0x52
    ASYNC_OPERATIONS_WINDOW = 0x53
    ROLE_SELECTION = 0x54
    IMPLEMENTATION_VERSION_NAME = 0x55
    SOP_CLASS_EXTENDED = 0x56
    SOP_CLASS_COMMON_EXTENDED = 0x57
    USER_IDENTITY_RQ = 0x58
    USER_IDENTITY_AC = 0x59


class AbortSource(IntEnum):
    """A-ABORT source (PS3.8 Table 9-26)."""

    SERVICE_USER = 0
    RESERVED = 1
    SERVICE_PROVIDER = 2


class AbortReason(IntEnum):
    """A-ABORT reason/diagnostic when the source is the service provider."""

    NOT_SPECIFIED = 0
    UNRECOGNIZED_PDU = 1
    UNEXPECTED_PDU = 2
    UNRECOGNIZED_PDU_PARAMETER = 4
    UNEXPECTED_PDU_PARAMETER = 5
    INVALID_PDU_PARAMETER_VALUE = 6


class RejectResult(IntEnum):
    """A-ASSOCIATE-RJ result (PS3.8 Table 9-21)."""

    PERMANENT = 1
    TRANSIENT = 2


class RejectSource(IntEnum):
    """A-ASSOCIATE-RJ source (PS3.8 Table 9-21)."""

    SERVICE_USER = 1
    SERVICE_PROVIDER_ACSE = 2
    SERVICE_PROVIDER_PRESENTATION = 3


class ContextResult(IntEnum):
    """Presentation context result/reason in an A-ASSOCIATE-AC (PS3.8 Table 9-18)."""

    ACCEPTANCE = 0
    USER_REJECTION = 1
    NO_REASON = 2
    ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
    TRANSFER_SYNTAXES_NOT_SUPPORTED = 4


class PDUError(ValueError):
    """Bytes that are not a valid PDU. `.reason` is the AbortReason to send in the A-ABORT."""

    def __init__(
        self,
        message: str,
        reason: AbortReason = AbortReason.INVALID_PDU_PARAMETER_VALUE,
    ) -> None:
        super().__init__(message)
        self.reason = reason


HEADER_LENGTH = 6

_HEADER = struct.Struct(">BxL")
# Protocol version, reserved, called AE, calling AE, 32 reserved bytes.
_ASSOCIATE_FIXED = struct.Struct(">Hxx16s16s32x")
_ITEM_HEADER = struct.Struct(">BxH")
_U16 = struct.Struct(">H")
_TWO_U8 = struct.Struct(">BB")
_TWO_U16 = struct.Struct(">HH")
# Context ID then three reserved bytes (the RQ's result/reason is reserved).
_CONTEXT_RQ_FIXED = struct.Struct(">B3x")
# Context ID, reserved, result/reason, reserved.
_CONTEXT_AC_FIXED = struct.Struct(">BxBx")
_U32 = struct.Struct(">L")
_PDV_HEADER = struct.Struct(">LBB")
_P_DATA_ONE_PDV_HEADER = struct.Struct(">BxLLBB")
_ASSOCIATE_RJ = struct.Struct(">BxLxBBB")
_RELEASE = struct.Struct(">BxL4x")
_ABORT = struct.Struct(">BxLxxBB")
# The fixed tail of A-ASSOCIATE-RJ and A-ABORT bodies, both four bytes.
_THREE_TRAILING_BYTES = struct.Struct(">xBBB")
_FIXED_BODY_LENGTH = 4


# --------------------------------------------------------------------------
# Encoding helpers


def _pack(packer: struct.Struct, *values: int | bytes) -> bytes:
    """Pack, turning an out-of-range field into the ValueError callers expect."""
    try:
        return packer.pack(*values)
    except struct.error as exc:
        raise ValueError(f"field value out of range: {exc}") from exc


def _ascii(text: str, what: str) -> bytes:
    try:
        return text.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"{what} {text!r} is not ASCII") from None


def _encode_ae_title(title: str, what: str) -> bytes:
    encoded = _ascii(title, what)
    if len(encoded) > 16:
        raise ValueError(f"{what} {title!r} is longer than 16 characters")
    return encoded.ljust(16, b" ")


def _item(item_type: int, value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise ValueError(f"item 0x{item_type:02X} holds {len(value)} bytes, more than 65535")
    return _ITEM_HEADER.pack(item_type, len(value)) + value


def _length_prefixed(value: bytes) -> bytes:
    """A 2-byte length followed by the value, as used inside user info sub-items."""
    return _pack(_U16, len(value)) + value


# --------------------------------------------------------------------------
# Decoding helpers


def _decode_ae_title(raw: bytes) -> str:
    return raw.decode("latin-1").strip(" \0")


def _decode_uid(raw: bytes) -> str:
    # Some implementations pad UIDs to even length with NUL, others with space.
    return raw.decode("latin-1").rstrip("\0 ")


class _Reader:
    """A bounds-checked cursor over one field, so no length can escape its enclosure."""

    __slots__ = ("_data", "_offset", "_what")

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._offset = 0
        self._what = what

    def take(self, count: int) -> bytes:
        end = self._offset + count
        if end > len(self._data):
            raise PDUError(f"{self._what} is truncated")
        chunk = self._data[self._offset : end]
        self._offset = end
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return _U16.unpack(self.take(2))[0]

    def u32(self) -> int:
        return _U32.unpack(self.take(4))[0]

    def length_prefixed(self) -> bytes:
        return self.take(self.u16())

    def rest(self) -> bytes:
        return self.take(len(self._data) - self._offset)

    @property
    def at_end(self) -> bool:
        return self._offset == len(self._data)

    def expect_end(self) -> None:
        if not self.at_end:
            raise PDUError(f"{self._what} has {len(self._data) - self._offset} extra bytes")


def _items(data: bytes, what: str) -> Iterator[tuple[int, bytes]]:
    """Walk items (type, reserved, 2-byte length, value) filling `data` exactly."""
    offset = 0
    end = len(data)
    while offset < end:
        if end - offset < _ITEM_HEADER.size:
            raise PDUError(f"truncated item header in {what}")
        item_type, length = _ITEM_HEADER.unpack_from(data, offset)
        start = offset + _ITEM_HEADER.size
        offset = start + length
        if offset > end:
            raise PDUError(f"item 0x{item_type:02X} of length {length} runs past the end of {what}")
        yield item_type, data[start:offset]


def _misplaced(item_type: int, where: str) -> PDUError:
    """The error for an item that may not appear where it was found.

    A type this module knows is merely in the wrong place (unexpected); any
    other type is one we do not understand (unrecognized).
    """
    if item_type in _KNOWN_ITEM_TYPES:
        return PDUError(
            f"unexpected item 0x{item_type:02X} in {where}",
            AbortReason.UNEXPECTED_PDU_PARAMETER,
        )
    return PDUError(
        f"unrecognized item 0x{item_type:02X} in {where}",
        AbortReason.UNRECOGNIZED_PDU_PARAMETER,
    )


def _duplicate(what: str, where: str) -> PDUError:
    return PDUError(f"more than one {what} in {where}", AbortReason.UNEXPECTED_PDU_PARAMETER)


_KNOWN_ITEM_TYPES = frozenset(ItemType)


# --------------------------------------------------------------------------
# Presentation contexts


@dataclass(frozen=True, slots=True)
class PresentationContextRQ:
    """A proposed presentation context: one abstract syntax, its transfer syntaxes."""

    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]

    def encode(self) -> bytes:
        sub_items = _item(
            ItemType.ABSTRACT_SYNTAX, _ascii(self.abstract_syntax, "abstract syntax")
        ) + b"".join(
            _item(ItemType.TRANSFER_SYNTAX, _ascii(uid, "transfer syntax"))
            for uid in self.transfer_syntaxes
        )
        return _item(
            ItemType.PRESENTATION_CONTEXT_RQ,
            _pack(_CONTEXT_RQ_FIXED, self.context_id) + sub_items,
        )


def _decode_presentation_context_rq(value: bytes) -> PresentationContextRQ:
    where = "presentation context item"
    if len(value) < 4:
        raise PDUError(f"{where} is shorter than 4 bytes")
    abstract_syntax: str | None = None
    transfer_syntaxes: list[str] = []
    for item_type, sub_value in _items(value[4:], where):
        if item_type == ItemType.ABSTRACT_SYNTAX:
            if abstract_syntax is not None:
                raise _duplicate("abstract syntax", where)
            abstract_syntax = _decode_uid(sub_value)
        elif item_type == ItemType.TRANSFER_SYNTAX:
            transfer_syntaxes.append(_decode_uid(sub_value))
        else:
            raise _misplaced(item_type, where)
    if abstract_syntax is None:
        raise PDUError(f"{where} {value[0]} has no abstract syntax")
    if not transfer_syntaxes:
        raise PDUError(f"{where} {value[0]} has no transfer syntax")
    return PresentationContextRQ(value[0], abstract_syntax, tuple(transfer_syntaxes))


@dataclass(frozen=True, slots=True)
class PresentationContextAC:
    """The acceptor's answer for one presentation context.

    `transfer_syntax` is meaningful only when `result` is acceptance (0); a
    rejection is still encoded with a transfer syntax sub-item, as PS3.8
    Table 9-18 lays out, and decoded liberally without one.
    """

    context_id: int
    result: int
    transfer_syntax: str

    def encode(self) -> bytes:
        return _item(
            ItemType.PRESENTATION_CONTEXT_AC,
            _pack(_CONTEXT_AC_FIXED, self.context_id, self.result)
            + _item(
                ItemType.TRANSFER_SYNTAX,
                _ascii(self.transfer_syntax, "transfer syntax"),
            ),
        )


def _decode_presentation_context_ac(value: bytes) -> PresentationContextAC:
    where = "presentation context item"
    if len(value) < 4:
        raise PDUError(f"{where} is shorter than 4 bytes")
    context_id, result = value[0], value[2]
    transfer_syntax: str | None = None
    for item_type, sub_value in _items(value[4:], where):
        if item_type != ItemType.TRANSFER_SYNTAX:
            raise _misplaced(item_type, where)
        if transfer_syntax is not None:
            raise _duplicate("transfer syntax", where)
        transfer_syntax = _decode_uid(sub_value)
    if transfer_syntax is None:
        if result == ContextResult.ACCEPTANCE:
            raise PDUError(f"accepted {where} {context_id} has no transfer syntax")
        transfer_syntax = ""
    return PresentationContextAC(context_id, result, transfer_syntax)


# --------------------------------------------------------------------------
# User information sub-items (PS3.7 Annex D.3.3, PS3.8 Annex D.1)


@dataclass(frozen=True, slots=True)
class AsyncOperationsWindow:
    """Asynchronous operations window negotiation (PS3.7 D.3.3.3); 0 means unlimited."""

    max_invoked: int
    max_performed: int

    def encode(self) -> bytes:
        return _item(
            ItemType.ASYNC_OPERATIONS_WINDOW,
            _pack(_TWO_U16, self.max_invoked, self.max_performed),
        )


def _decode_async_operations_window(reader: _Reader) -> AsyncOperationsWindow:
    return AsyncOperationsWindow(reader.u16(), reader.u16())


@dataclass(frozen=True, slots=True)
class RoleSelection:
    """SCP/SCU role selection for one SOP class (PS3.7 D.3.3.4)."""

    sop_class_uid: str
    scu_role: bool
    scp_role: bool

    def encode(self) -> bytes:
        return _item(
            ItemType.ROLE_SELECTION,
            _length_prefixed(_ascii(self.sop_class_uid, "SOP class UID"))
            + bytes((bool(self.scu_role), bool(self.scp_role))),
        )


def _decode_role_selection(reader: _Reader) -> RoleSelection:
    uid = _decode_uid(reader.length_prefixed())
    return RoleSelection(uid, bool(reader.u8()), bool(reader.u8()))


@dataclass(frozen=True, slots=True)
class SOPClassExtendedNegotiation:
    """Service-class specific application information for one SOP class (PS3.7 D.3.3.5)."""

    sop_class_uid: str
    application_info: bytes

    def encode(self) -> bytes:
        return _item(
            ItemType.SOP_CLASS_EXTENDED,
            _length_prefixed(_ascii(self.sop_class_uid, "SOP class UID")) + self.application_info,
        )


def _decode_sop_class_extended(reader: _Reader) -> SOPClassExtendedNegotiation:
    uid = _decode_uid(reader.length_prefixed())
    return SOPClassExtendedNegotiation(uid, reader.rest())


@dataclass(frozen=True, slots=True)
class SOPClassCommonExtendedNegotiation:
    """A SOP class's service class and related general SOP classes (PS3.7 D.3.3.6)."""

    sop_class_uid: str
    service_class_uid: str
    related_general_sop_classes: tuple[str, ...] = ()

    def encode(self) -> bytes:
        related = b"".join(
            _length_prefixed(_ascii(uid, "related general SOP class UID"))
            for uid in self.related_general_sop_classes
        )
        value = (
            _length_prefixed(_ascii(self.sop_class_uid, "SOP class UID"))
            + _length_prefixed(_ascii(self.service_class_uid, "service class UID"))
            + _length_prefixed(related)
        )
        # The byte after the type is the sub-item version, 0 in this version.
        return _item(ItemType.SOP_CLASS_COMMON_EXTENDED, value)


def _decode_sop_class_common_extended(
    reader: _Reader,
) -> SOPClassCommonExtendedNegotiation:
    sop_class_uid = _decode_uid(reader.length_prefixed())
    service_class_uid = _decode_uid(reader.length_prefixed())
    related_reader = _Reader(reader.length_prefixed(), "related general SOP class identification")
    related: list[str] = []
    while not related_reader.at_end:
        related.append(_decode_uid(related_reader.length_prefixed()))
    # What follows is reserved for later versions of the sub-item: ignored.
    reader.rest()
    return SOPClassCommonExtendedNegotiation(sop_class_uid, service_class_uid, tuple(related))


@dataclass(frozen=True, slots=True)
class UserIdentityRQ:
    """The requestor's user identity (PS3.7 D.3.3.7.1).

    `identity_type`: 1 username, 2 username and passcode (the passcode in
    `secondary_field`), 3 Kerberos ticket, 4 SAML assertion, 5 JWT.
    """

    identity_type: int
    positive_response_requested: bool
    primary_field: bytes
    secondary_field: bytes = b""

    def encode(self) -> bytes:
        return _item(
            ItemType.USER_IDENTITY_RQ,
            _pack(
                _TWO_U8,
                self.identity_type,
                bool(self.positive_response_requested),
            )
            + _length_prefixed(self.primary_field)
            + _length_prefixed(self.secondary_field),
        )


def _decode_user_identity_rq(reader: _Reader) -> UserIdentityRQ:
    identity_type = reader.u8()
    positive_response_requested = bool(reader.u8())
    primary_field = reader.length_prefixed()
    # Some requestors omit the secondary field length when there is no secondary field.
    secondary_field = b"" if reader.at_end else reader.length_prefixed()
    return UserIdentityRQ(
        identity_type, positive_response_requested, primary_field, secondary_field
    )


@dataclass(frozen=True, slots=True)
class UserIdentityAC:
    """The acceptor's answer to a user identity with a positive response requested."""

    server_response: bytes

    def encode(self) -> bytes:
        return _item(ItemType.USER_IDENTITY_AC, _length_prefixed(self.server_response))


def _decode_user_identity_ac(reader: _Reader) -> UserIdentityAC:
    return UserIdentityAC(reader.length_prefixed())


@dataclass(frozen=True, slots=True)
class UserInformation:
    """The user information item (0x50) and its sub-items.

    `max_length` is the largest P-DATA-TF PDU the sender will receive (0: no
    limit); None means the sub-item is absent. `unknown_items` holds
    sub-items this module does not know, as (type, value), re-encoded verbatim.
    """

    max_length: int | None = None
    implementation_class_uid: str | None = None
    implementation_version_name: str | None = None
    async_operations_window: AsyncOperationsWindow | None = None
    role_selections: tuple[RoleSelection, ...] = ()
    sop_class_extended: tuple[SOPClassExtendedNegotiation, ...] = ()
    sop_class_common_extended: tuple[SOPClassCommonExtendedNegotiation, ...] = ()
    user_identity_rq: UserIdentityRQ | None = None
    user_identity_ac: UserIdentityAC | None = None
    unknown_items: tuple[tuple[int, bytes], ...] = ()

    def encode(self) -> bytes:
        """The whole user information item.

        Sub-items go in ascending type order, except that the implementation
        version name follows the implementation class UID, as dcmtk and
        pynetdicom send them.
        """
        parts: list[bytes] = []
        if self.max_length is not None:
            parts.append(_item(ItemType.MAXIMUM_LENGTH, _pack(_U32, self.max_length)))
        if self.implementation_class_uid is not None:
            uid = _ascii(self.implementation_class_uid, "implementation class UID")
            parts.append(_item(ItemType.IMPLEMENTATION_CLASS_UID, uid))
        if self.implementation_version_name is not None:
            name = _ascii(self.implementation_version_name, "implementation version name")
            parts.append(_item(ItemType.IMPLEMENTATION_VERSION_NAME, name))
        if self.async_operations_window is not None:
            parts.append(self.async_operations_window.encode())
        parts.extend(role.encode() for role in self.role_selections)
        parts.extend(item.encode() for item in self.sop_class_extended)
        parts.extend(item.encode() for item in self.sop_class_common_extended)
        if self.user_identity_rq is not None:
            parts.append(self.user_identity_rq.encode())
        if self.user_identity_ac is not None:
            parts.append(self.user_identity_ac.encode())
        parts.extend(_item(item_type, value) for item_type, value in self.unknown_items)
        return _item(ItemType.USER_INFORMATION, b"".join(parts))


def _decode_max_length(reader: _Reader) -> int:
    return reader.u32()


def _decode_text_sub_item(reader: _Reader) -> str:
    return _decode_uid(reader.rest())


# Sub-item type -> (UserInformation field, decoder of the sub-item's value).
_USER_INFORMATION_SUB_ITEMS = {
    ItemType.MAXIMUM_LENGTH: ("max_length", _decode_max_length),
    ItemType.IMPLEMENTATION_CLASS_UID: (
        "implementation_class_uid",
        _decode_text_sub_item,
    ),
    ItemType.IMPLEMENTATION_VERSION_NAME: (
        "implementation_version_name",
        _decode_text_sub_item,
    ),
    ItemType.ASYNC_OPERATIONS_WINDOW: (
        "async_operations_window",
        _decode_async_operations_window,
    ),
    ItemType.ROLE_SELECTION: ("role_selections", _decode_role_selection),
    ItemType.SOP_CLASS_EXTENDED: ("sop_class_extended", _decode_sop_class_extended),
    ItemType.SOP_CLASS_COMMON_EXTENDED: (
        "sop_class_common_extended",
        _decode_sop_class_common_extended,
    ),
    ItemType.USER_IDENTITY_RQ: ("user_identity_rq", _decode_user_identity_rq),
    ItemType.USER_IDENTITY_AC: ("user_identity_ac", _decode_user_identity_ac),
}
_REPEATABLE_SUB_ITEMS = frozenset(
    {
        ItemType.ROLE_SELECTION,
        ItemType.SOP_CLASS_EXTENDED,
        ItemType.SOP_CLASS_COMMON_EXTENDED,
    }
)


def _decode_user_information(value: bytes) -> UserInformation:
    where = "user information item"
    singles: dict[str, object] = {}
    repeated: dict[str, list[object]] = {}
    unknown: list[tuple[int, bytes]] = []
    for item_type, sub_value in _items(value, where):
        known = _USER_INFORMATION_SUB_ITEMS.get(item_type)
        if known is None:
            if item_type in _KNOWN_ITEM_TYPES:
                raise _misplaced(item_type, where)
            unknown.append((item_type, sub_value))
            continue
        field, decoder = known
        reader = _Reader(sub_value, f"sub-item 0x{item_type:02X}")
        decoded = decoder(reader)
        reader.expect_end()
        if item_type in _REPEATABLE_SUB_ITEMS:
            repeated.setdefault(field, []).append(decoded)
        elif field in singles:
            raise _duplicate(f"sub-item 0x{item_type:02X}", where)
        else:
            singles[field] = decoded
    return UserInformation(
        **singles,
        **{field: tuple(values) for field, values in repeated.items()},
        unknown_items=tuple(unknown),
    )


# --------------------------------------------------------------------------
# A-ASSOCIATE-RQ and A-ASSOCIATE-AC (PS3.8 9.3.2, 9.3.3)


def _encode_associate(pdu: AAssociateRQ | AAssociateAC) -> bytes:
    items = (
        _item(
            ItemType.APPLICATION_CONTEXT,
            _ascii(pdu.application_context, "application context name"),
        )
        + b"".join(context.encode() for context in pdu.presentation_contexts)
        + pdu.user_information.encode()
    )
    fixed = _pack(
        _ASSOCIATE_FIXED,
        pdu.protocol_version,
        _encode_ae_title(pdu.called_ae_title, "called AE title"),
        _encode_ae_title(pdu.calling_ae_title, "calling AE title"),
    )
    body_length = len(fixed) + len(items)
    return _pack(_HEADER, pdu.pdu_type, body_length) + fixed + items


@dataclass(frozen=True, slots=True)
class AAssociateRQ:
    """A-ASSOCIATE-RQ (PS3.8 Table 9-11).

    `protocol_version` is kept as received (bit 0 set means version 1) so the
    acceptor can reject versions it does not support.
    """

    pdu_type: ClassVar[PDUType] = PDUType.ASSOCIATE_RQ

    called_ae_title: str
    calling_ae_title: str
    presentation_contexts: tuple[PresentationContextRQ, ...]
    user_information: UserInformation
    application_context: str = APPLICATION_CONTEXT
    protocol_version: int = 1

    def encode(self) -> bytes:
        return _encode_associate(self)


@dataclass(frozen=True, slots=True)
class AAssociateAC:
    """A-ASSOCIATE-AC (PS3.8 Table 9-17).

    The AE titles are reserved fields in the AC: sent back as received in the
    RQ, decoded but not to be tested.
    """

    pdu_type: ClassVar[PDUType] = PDUType.ASSOCIATE_AC

    called_ae_title: str
    calling_ae_title: str
    presentation_contexts: tuple[PresentationContextAC, ...]
    user_information: UserInformation
    application_context: str = APPLICATION_CONTEXT
    protocol_version: int = 1

    def encode(self) -> bytes:
        return _encode_associate(self)


def _decode_associate(
    body: bytes, pdu_class: type[AAssociateRQ | AAssociateAC]
) -> AAssociateRQ | AAssociateAC:
    where = f"{pdu_class.pdu_type.name} PDU"
    if len(body) < _ASSOCIATE_FIXED.size:
        raise PDUError(f"{where} is shorter than its {_ASSOCIATE_FIXED.size} fixed bytes")
    protocol_version, called, calling = _ASSOCIATE_FIXED.unpack_from(body)
    if pdu_class is AAssociateRQ:
        context_item_type = ItemType.PRESENTATION_CONTEXT_RQ
        decode_context = _decode_presentation_context_rq
    else:
        context_item_type = ItemType.PRESENTATION_CONTEXT_AC
        decode_context = _decode_presentation_context_ac
    application_context: str | None = None
    contexts = []
    user_information: UserInformation | None = None
    for item_type, value in _items(body[_ASSOCIATE_FIXED.size :], where):
        if item_type == ItemType.APPLICATION_CONTEXT:
            if application_context is not None:
                raise _duplicate("application context item", where)
            application_context = _decode_uid(value)
        elif item_type == context_item_type:
            contexts.append(decode_context(value))
        elif item_type == ItemType.USER_INFORMATION:
            if user_information is not None:
                raise _duplicate("user information item", where)
            user_information = _decode_user_information(value)
        else:
            raise _misplaced(item_type, where)
    if application_context is None:
        raise PDUError(f"{where} has no application context item")
    if not contexts:
        raise PDUError(f"{where} has no presentation context item")
    if user_information is None:
        # Mandatory, but its absence harms nothing: read it as "nothing said".
        user_information = UserInformation()
    return pdu_class(
        called_ae_title=_decode_ae_title(called),
        calling_ae_title=_decode_ae_title(calling),
        presentation_contexts=tuple(contexts),
        user_information=user_information,
        application_context=application_context,
        protocol_version=protocol_version,
    )


def _decode_associate_rq(body: bytes | memoryview) -> AAssociateRQ:
    return _decode_associate(bytes(body), AAssociateRQ)


def _decode_associate_ac(body: bytes | memoryview) -> AAssociateAC:
    return _decode_associate(bytes(body), AAssociateAC)


# --------------------------------------------------------------------------
# The fixed-size PDUs


@dataclass(frozen=True, slots=True)
class AAssociateRJ:
    """A-ASSOCIATE-RJ (PS3.8 Table 9-21): see RejectResult and RejectSource."""

    pdu_type: ClassVar[PDUType] = PDUType.ASSOCIATE_RJ

    result: int
    source: int
    reason: int

    def encode(self) -> bytes:
        return _pack(
            _ASSOCIATE_RJ,
            self.pdu_type,
            _FIXED_BODY_LENGTH,
            self.result,
            self.source,
            self.reason,
        )


@dataclass(frozen=True, slots=True)
class AReleaseRQ:
    """A-RELEASE-RQ (PS3.8 Table 9-24)."""

    pdu_type: ClassVar[PDUType] = PDUType.RELEASE_RQ

    def encode(self) -> bytes:
        return _RELEASE.pack(self.pdu_type, _FIXED_BODY_LENGTH)


@dataclass(frozen=True, slots=True)
class AReleaseRP:
    """A-RELEASE-RP (PS3.8 Table 9-25)."""

    pdu_type: ClassVar[PDUType] = PDUType.RELEASE_RP

    def encode(self) -> bytes:
        return _RELEASE.pack(self.pdu_type, _FIXED_BODY_LENGTH)


@dataclass(frozen=True, slots=True)
class AAbort:
    """A-ABORT (PS3.8 Table 9-26): see AbortSource and AbortReason."""

    pdu_type: ClassVar[PDUType] = PDUType.ABORT

    source: int
    reason: int

    def encode(self) -> bytes:
        return _pack(_ABORT, self.pdu_type, _FIXED_BODY_LENGTH, self.source, self.reason)


def _fixed_body(body: bytes, pdu_type: PDUType) -> tuple[int, int, int]:
    if len(body) != _FIXED_BODY_LENGTH:
        raise PDUError(f"{pdu_type.name} PDU length is {len(body)}, not {_FIXED_BODY_LENGTH}")
    return _THREE_TRAILING_BYTES.unpack(body)


def _decode_associate_rj(body: bytes) -> AAssociateRJ:
    return AAssociateRJ(*_fixed_body(body, PDUType.ASSOCIATE_RJ))


def _decode_release_rq(body: bytes) -> AReleaseRQ:
    _fixed_body(body, PDUType.RELEASE_RQ)
    return AReleaseRQ()


def _decode_release_rp(body: bytes) -> AReleaseRP:
    _fixed_body(body, PDUType.RELEASE_RP)
    return AReleaseRP()


def _decode_abort(body: bytes) -> AAbort:
    _, source, reason = _fixed_body(body, PDUType.ABORT)
    return AAbort(source, reason)


# --------------------------------------------------------------------------
# P-DATA-TF (PS3.8 9.3.5, Annex E.2): the hot path


@dataclass(frozen=True, slots=True)
class PresentationDataValue:
    """One PDV: a fragment of a command or data set on one presentation context.

    `control` is the message control header (PS3.8 E.2): bit 0 set for a
    command fragment, bit 1 set for the last fragment.
    """

    context_id: int
    control: int
    data: bytes

    @property
    def is_command(self) -> bool:
        return bool(self.control & 0x01)

    @property
    def is_last(self) -> bool:
        return bool(self.control & 0x02)

    def encode(self) -> bytes:
        """The PDV item: 4-byte length, context ID, control header, fragment."""
        return _pack(_PDV_HEADER, len(self.data) + 2, self.context_id, self.control) + self.data


@dataclass(frozen=True, slots=True)
class PDataTF:
    """P-DATA-TF (PS3.8 Table 9-22): one or more PDVs."""

    pdu_type: ClassVar[PDUType] = PDUType.P_DATA_TF

    pdvs: tuple[PresentationDataValue, ...]

    def encode(self) -> bytes:
        items = b"".join(pdv.encode() for pdv in self.pdvs)
        return _pack(_HEADER, self.pdu_type, len(items)) + items


def encode_pdata(context_id: int, control: int, data: bytes | memoryview) -> bytes:
    """A P-DATA-TF holding one PDV, built without dataclasses for the sender's hot path."""
    try:
        header = _P_DATA_ONE_PDV_HEADER.pack(
            PDUType.P_DATA_TF, len(data) + 6, len(data) + 2, context_id, control
        )
    except struct.error as exc:
        raise ValueError(f"field value out of range: {exc}") from exc
    return b"".join((header, data))


def _decode_p_data_tf(body: bytes | memoryview) -> PDataTF:
    unpack_pdv_header = _PDV_HEADER.unpack_from
    pdvs = []
    offset = 0
    end = len(body)
    while offset < end:
        if end - offset < _PDV_HEADER.size:
            raise PDUError("truncated PDV item header in P-DATA-TF PDU")
        length, context_id, control = unpack_pdv_header(body, offset)
        start = offset + _PDV_HEADER.size
        offset += 4 + length
        if length < 2:
            raise PDUError(f"PDV item length {length} is less than 2")
        if offset > end:
            raise PDUError(f"PDV item length {length} runs past the end of P-DATA-TF")
        # bytes() of a bytes slice is the slice itself; of a memoryview, one copy.
        pdvs.append(PresentationDataValue(context_id, control, bytes(body[start:offset])))
    if not pdvs:
        raise PDUError("P-DATA-TF PDU holds no PDV item")
    return PDataTF(tuple(pdvs))


# --------------------------------------------------------------------------
# Entry points

PDU: TypeAlias = (
    AAssociateRQ | AAssociateAC | AAssociateRJ | PDataTF | AReleaseRQ | AReleaseRP | AAbort
)

_DECODERS = {
    PDUType.ASSOCIATE_RQ: _decode_associate_rq,
    PDUType.ASSOCIATE_AC: _decode_associate_ac,
    PDUType.ASSOCIATE_RJ: _decode_associate_rj,
    PDUType.P_DATA_TF: _decode_p_data_tf,
    PDUType.RELEASE_RQ: _decode_release_rq,
    PDUType.RELEASE_RP: _decode_release_rp,
    PDUType.ABORT: _decode_abort,
}


def parse_header(header: bytes) -> tuple[int, int]:
    """The (PDU type, PDU length) of a 6-byte PDU header; the type may be unknown."""
    if len(header) < HEADER_LENGTH:
        raise PDUError(f"PDU header needs {HEADER_LENGTH} bytes, got {len(header)}")
    return _HEADER.unpack_from(header)


def decode_pdu(pdu_type: int, body: bytes | memoryview) -> PDU:
    """Decode the `length` bytes that follow a PDU header.

    Raises only PDUError: unknown PDU types with UNRECOGNIZED_PDU, anything
    else malformed with the reason the A-ABORT should carry.
    """
    decoder = _DECODERS.get(pdu_type)
    if decoder is None:
        raise PDUError(f"unrecognized PDU type 0x{pdu_type:02X}", AbortReason.UNRECOGNIZED_PDU)
    if not isinstance(body, bytes):
        body = memoryview(body).cast("B")
    try:
        return decoder(body)
    except PDUError:
        raise
    except (struct.error, IndexError, ValueError, TypeError) as exc:
        # A safety net: the decoders check bounds themselves, but no malformed
        # input may ever escape as anything but PDUError.
        raise PDUError(f"malformed {PDUType(pdu_type).name} PDU: {exc}") from exc


def decode(data: bytes | memoryview) -> PDU:
    """Decode one whole PDU, header included; its length must match exactly."""
    pdu_type, length = parse_header(data)
    if len(data) - HEADER_LENGTH != length:
        raise PDUError(
            f"PDU length field says {length} bytes but {len(data) - HEADER_LENGTH} follow"
        )
    return decode_pdu(pdu_type, memoryview(data)[HEADER_LENGTH:])

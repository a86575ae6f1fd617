"""DIMSE command sets (PS3.7 section 6 and Annex E), encoded by hand.

A command set is always implicit VR little endian, small, and on the hot path
of every message, so it is encoded and decoded here rather than by pydicom.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Final


class CommandField(IntEnum):
    """The value of (0000,0100) CommandField for each DIMSE operation (PS3.7 E.1)."""

    C_STORE_RQ = 0x0001
    C_STORE_RSP = 0x8001
    C_GET_RQ = 0x0010
    C_GET_RSP = 0x8010
    C_FIND_RQ = 0x0020
    C_FIND_RSP = 0x8020
    C_MOVE_RQ = 0x0021
    C_MOVE_RSP = 0x8021
    C_ECHO_RQ = 0x0030
    C_ECHO_RSP = 0x8030
    N_EVENT_REPORT_RQ = 0x0100
    N_EVENT_REPORT_RSP = 0x8100
    N_GET_RQ = 0x0110
    N_GET_RSP = 0x8110
    N_SET_RQ = 0x0120
    N_SET_RSP = 0x8120
    N_ACTION_RQ = 0x0130
    N_ACTION_RSP = 0x8130
    N_CREATE_RQ = 0x0140
    N_CREATE_RSP = 0x8140
    N_DELETE_RQ = 0x0150
    N_DELETE_RSP = 0x8150
    C_CANCEL_RQ = 0x0FFF


NO_DATA_SET: Final = 0x0101
"""(0000,0800) CommandDataSetType value meaning that no data set follows."""

DATA_SET_PRESENT: Final = 0x0001
"""The value dicomd sends when a data set follows; the standard accepts any
value other than :data:`NO_DATA_SET`."""

_RESPONSE_BIT: Final = 0x8000

# The value representations that occur in the command group.
_US, _UI, _AE, _LO, _AT = range(5)

# (element, Command attribute, VR) for every command element dicomd knows, in
# ascending tag order so that encoding needs no sort (PS3.7 E.1, E.2).
_ELEMENTS: Final = (
    (0x0002, "affected_sop_class_uid", _UI),
    (0x0003, "requested_sop_class_uid", _UI),
    (0x0100, "command_field", _US),
    (0x0110, "message_id", _US),
    (0x0120, "message_id_being_responded_to", _US),
    (0x0600, "move_destination", _AE),
    (0x0700, "priority", _US),
    (0x0800, "command_data_set_type", _US),
    (0x0900, "status", _US),
    (0x0901, "offending_element", _AT),
    (0x0902, "error_comment", _LO),
    (0x0903, "error_id", _US),
    (0x1000, "affected_sop_instance_uid", _UI),
    (0x1001, "requested_sop_instance_uid", _UI),
    (0x1002, "event_type_id", _US),
    (0x1005, "attribute_identifier_list", _AT),
    (0x1008, "action_type_id", _US),
    (0x1020, "number_of_remaining_suboperations", _US),
    (0x1021, "number_of_completed_suboperations", _US),
    (0x1022, "number_of_failed_suboperations", _US),
    (0x1023, "number_of_warning_suboperations", _US),
    (0x1030, "move_originator_application_entity_title", _AE),
    (0x1031, "move_originator_message_id", _US),
)
_ECHOED: Final = (
    "affected_sop_class_uid",
    "requested_sop_class_uid",
    "affected_sop_instance_uid",
    "requested_sop_instance_uid",
    "move_destination",
    "move_originator_application_entity_title",
)
"""The string fields a response repeats, or that name files and peers."""

_BY_ELEMENT: Final = {element: (name, vr) for element, name, vr in _ELEMENTS}
_GROUP_LENGTH: Final = 0x0000

_HEADER = struct.Struct("<HHI")
_US_ELEMENT = struct.Struct("<HHIH")
_US_VALUE = struct.Struct("<H")


class CommandError(ValueError):
    """A command set that cannot be encoded or decoded."""


@dataclass(slots=True)
class Command:
    """A DIMSE command set (group 0000); absent elements are ``None``.

    ``extra`` keeps group 0000 elements this class does not name (retired
    ones, say), keyed by tag, as raw values, so that decoding and encoding
    again loses nothing.
    """

    command_field: int
    message_id: int | None = None
    message_id_being_responded_to: int | None = None
    affected_sop_class_uid: str | None = None
    requested_sop_class_uid: str | None = None
    affected_sop_instance_uid: str | None = None
    requested_sop_instance_uid: str | None = None
    priority: int | None = None
    command_data_set_type: int = NO_DATA_SET
    status: int | None = None
    error_comment: str | None = None
    error_id: int | None = None
    offending_element: tuple[int, ...] | None = None
    move_destination: str | None = None
    move_originator_application_entity_title: str | None = None
    move_originator_message_id: int | None = None
    number_of_remaining_suboperations: int | None = None
    number_of_completed_suboperations: int | None = None
    number_of_failed_suboperations: int | None = None
    number_of_warning_suboperations: int | None = None
    event_type_id: int | None = None
    action_type_id: int | None = None
    attribute_identifier_list: tuple[int, ...] | None = None
    extra: dict[int, bytes] = field(default_factory=dict)

    @property
    def has_data_set(self) -> bool:
        """Whether a data set follows this command (PS3.7 E.1, CommandDataSetType)."""
        return self.command_data_set_type != NO_DATA_SET

    @property
    def is_response(self) -> bool:
        """Whether this is a response: bit 15 of the command field is set."""
        return bool(self.command_field & _RESPONSE_BIT)

    def unanswerable(self) -> str | None:
        """What in this command cannot be echoed back in a response, or None.

        Values arrive read as Latin-1 so that decoding never fails; a UID or
        AE title a response must carry again has to be ASCII to be sent.
        """
        for name in _ECHOED:
            value = getattr(self, name)
            if value is not None and not value.isascii():
                return f"{name.replace('_', ' ')} {value!r} is not ASCII"
        return None

    def encode(self) -> bytes:
        """The command set as implicit VR little endian bytes, group length first.

        Strings are sent in the default repertoire (ASCII) and padded to even
        length, UIDs with NUL and text with a space (PS3.5 6.2, 9.1).
        """
        parts = [
            _encode_element(element, vr, getattr(self, name))
            for element, name, vr in _ELEMENTS
            if getattr(self, name) is not None
        ]
        if self.extra:
            parts = _merge_extra(parts, self.extra)
        body = b"".join(parts)
        return _HEADER.pack(0, _GROUP_LENGTH, 4) + struct.pack("<I", len(body)) + body

    @classmethod
    def decode(cls, data: bytes) -> Command:
        """Parse a command set.

        The PDV framing, not the group length, delimits a command set, so
        (0000,0000) may be missing or wrong.  Elements may come in any order;
        trailing spaces and NULs are stripped from strings, and text is read
        as Latin-1 so that a stray byte in an error comment does not cost the
        association.
        """
        values: dict[str, object] = {}
        extra: dict[int, bytes] = {}
        seen: set[int] = set()
        offset = 0
        end = len(data)
        while offset < end:
            if end - offset < _HEADER.size:
                raise CommandError(f"command set ends inside an element header at byte {offset}")
            group, element, length = _HEADER.unpack_from(data, offset)
            offset += _HEADER.size
            if group != 0:
                raise CommandError(
                    f"element ({group:04X},{element:04X}) is outside the command group 0000"
                )
            if length > end - offset:
                raise CommandError(
                    f"element (0000,{element:04X}) claims {length} bytes"
                    f" but only {end - offset} remain"
                )
            if element in seen:
                raise CommandError(f"element (0000,{element:04X}) occurs twice")
            seen.add(element)
            raw = data[offset : offset + length]
            offset += length
            known = _BY_ELEMENT.get(element)
            if known is not None:
                name, vr = known
                values[name] = _decode_value(element, vr, raw)
            elif element != _GROUP_LENGTH:
                extra[element] = bytes(raw)
        if values.get("command_field") is None:
            raise CommandError("command set has no (0000,0100) CommandField")
        if values.get("command_data_set_type", NO_DATA_SET) is None:
            raise CommandError("(0000,0800) CommandDataSetType is empty")
        return cls(**values, extra=extra)  # type: ignore[arg-type]


def _encode_element(element: int, vr: int, value: object) -> bytes:
    if vr == _US:
        if not isinstance(value, int) or not 0 <= value <= 0xFFFF:
            raise CommandError(
                f"(0000,{element:04X}) must be an integer in 0..65535, not {value!r}"
            )
        return _US_ELEMENT.pack(0, element, 2, value)
    if vr == _AT:
        try:
            raw = b"".join(struct.pack("<HH", tag >> 16, tag & 0xFFFF) for tag in value)  # type: ignore[attr-defined]
        except (TypeError, struct.error) as e:
            raise CommandError(
                f"(0000,{element:04X}) must be a sequence of 32-bit tags, not {value!r}"
            ) from e
        return _HEADER.pack(0, element, len(raw)) + raw
    try:
        raw = value.encode("ascii")  # type: ignore[attr-defined]
    except (AttributeError, UnicodeEncodeError) as e:
        raise CommandError(f"(0000,{element:04X}) must be an ASCII string, not {value!r}") from e
    if len(raw) % 2:
        raw += b"\0" if vr == _UI else b" "
    return _HEADER.pack(0, element, len(raw)) + raw


def _merge_extra(parts: list[bytes], extra: dict[int, bytes]) -> list[bytes]:
    """Slot the raw ``extra`` elements among the encoded ones in tag order."""
    keyed: list[tuple[int, bytes]] = []
    for tag, raw in extra.items():
        if not isinstance(tag, int) or not 0 < tag <= 0xFFFF or tag in _BY_ELEMENT:
            raise CommandError(f"extra element {tag!r} is not an unnamed tag of group 0000")
        if len(raw) % 2:
            raw += b"\0"
        keyed.append((tag, _HEADER.pack(0, tag, len(raw)) + raw))
    keyed.extend((struct.unpack_from("<H", part, 2)[0], part) for part in parts)
    keyed.sort(key=lambda item: item[0])
    return [part for _tag, part in keyed]


def _decode_value(element: int, vr: int, raw: bytes) -> object:
    if vr == _US:
        if not raw:
            return None
        if len(raw) != 2:
            raise CommandError(f"(0000,{element:04X}) is US but {len(raw)} bytes long")
        return _US_VALUE.unpack(raw)[0]
    if vr == _AT:
        if len(raw) % 4:
            raise CommandError(f"(0000,{element:04X}) is AT but {len(raw)} bytes long")
        pairs = struct.unpack(f"<{len(raw) // 2}H", raw)
        return tuple((pairs[i] << 16) | pairs[i + 1] for i in range(0, len(pairs), 2))
    text = bytes(raw).decode("latin-1")
    if vr == _UI:
        return text.rstrip("\0 ")
    return text.strip(" \0")

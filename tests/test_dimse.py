"""DIMSE command sets, fragmentation, reassembly and data set helpers.

pydicom's implicit VR little endian writer is the independent reference for
the hand-written command codec.
"""

import itertools
import struct
import weakref
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence

from dicomd import uids
from dicomd.dimse.association import Request
from dicomd.dimse.command import DATA_SET_PRESENT, NO_DATA_SET, Command, CommandError, CommandField
from dicomd.dimse.datasets import DataSetError, decode_dataset, encode_dataset
from dicomd.dimse.messages import (
    PDV_COMMAND,
    PDV_LAST,
    AssemblyError,
    CommandReceived,
    DataReceived,
    MessageAssembler,
)
from dicomd.ul.pdu import AAbort
from tests.wire import Peer, fragment

# The pydicom keyword of every Command attribute.
KEYWORDS = {
    "affected_sop_class_uid": "AffectedSOPClassUID",
    "requested_sop_class_uid": "RequestedSOPClassUID",
    "command_field": "CommandField",
    "message_id": "MessageID",
    "message_id_being_responded_to": "MessageIDBeingRespondedTo",
    "move_destination": "MoveDestination",
    "priority": "Priority",
    "command_data_set_type": "CommandDataSetType",
    "status": "Status",
    "offending_element": "OffendingElement",
    "error_comment": "ErrorComment",
    "error_id": "ErrorID",
    "affected_sop_instance_uid": "AffectedSOPInstanceUID",
    "requested_sop_instance_uid": "RequestedSOPInstanceUID",
    "event_type_id": "EventTypeID",
    "attribute_identifier_list": "AttributeIdentifierList",
    "action_type_id": "ActionTypeID",
    "number_of_remaining_suboperations": "NumberOfRemainingSuboperations",
    "number_of_completed_suboperations": "NumberOfCompletedSuboperations",
    "number_of_failed_suboperations": "NumberOfFailedSuboperations",
    "number_of_warning_suboperations": "NumberOfWarningSuboperations",
    "move_originator_application_entity_title": "MoveOriginatorApplicationEntityTitle",
    "move_originator_message_id": "MoveOriginatorMessageID",
}
US_FIELDS = [
    "message_id",
    "message_id_being_responded_to",
    "priority",
    "status",
    "error_id",
    "event_type_id",
    "action_type_id",
    "number_of_remaining_suboperations",
    "number_of_completed_suboperations",
    "number_of_failed_suboperations",
    "number_of_warning_suboperations",
    "move_originator_message_id",
]
UI_FIELDS = [
    "affected_sop_class_uid",
    "requested_sop_class_uid",
    "affected_sop_instance_uid",
    "requested_sop_instance_uid",
]
AE_FIELDS = ["move_destination", "move_originator_application_entity_title"]
AT_FIELDS = ["offending_element", "attribute_identifier_list"]

ECHO_UID = b"1.2.840.10008.1.1\x00"
C_ECHO_RQ_BYTES = (
    bytes.fromhex("0000 0000 04000000 38000000")  # CommandGroupLength = 56
    + bytes.fromhex("0000 0200 12000000")  # AffectedSOPClassUID, 18 bytes
    + ECHO_UID
    + bytes.fromhex("0000 0001 02000000 3000")  # CommandField = C-ECHO-RQ
    + bytes.fromhex("0000 1001 02000000 0100")  # MessageID = 1
    + bytes.fromhex("0000 0008 02000000 0101")  # CommandDataSetType = no data set
)
C_ECHO_RSP_BYTES = (
    bytes.fromhex("0000 0000 04000000 42000000")  # CommandGroupLength = 66
    + bytes.fromhex("0000 0200 12000000")
    + ECHO_UID
    + bytes.fromhex("0000 0001 02000000 3080")  # CommandField = C-ECHO-RSP
    + bytes.fromhex("0000 2001 02000000 0100")  # MessageIDBeingRespondedTo = 1
    + bytes.fromhex("0000 0008 02000000 0101")
    + bytes.fromhex("0000 0009 02000000 0000")  # Status = success
)


def pydicom_encode(command: Command) -> bytes:
    """The command as pydicom writes it: the reference encoding."""
    elements = Dataset()
    for attribute, keyword in KEYWORDS.items():
        value = getattr(command, attribute)
        if value is not None:
            setattr(elements, keyword, list(value) if isinstance(value, tuple) else value)
    body = _write_implicit_le(elements)
    full = Dataset()
    full.CommandGroupLength = len(body)
    full.update(elements)
    return _write_implicit_le(full)


def _write_implicit_le(ds: Dataset) -> bytes:
    fp = DicomBytesIO()
    fp.is_implicit_VR = True
    fp.is_little_endian = True
    write_dataset(fp, ds)
    return fp.getvalue()


# -- strategies --------------------------------------------------------------

us_values = st.integers(0, 0xFFFF)
uid_values = st.from_regex(r"(0|[1-9][0-9]{0,5})(\.(0|[1-9][0-9]{0,5})){0,8}", fullmatch=True)
printable = st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="\\")


def _text(max_size: int) -> st.SearchStrategy[str]:
    """Text that survives the trip: no backslash, no leading or trailing space."""
    inner = st.text(printable | st.just(" "), max_size=max(0, max_size - 2))
    return st.one_of(
        st.just(""),
        st.builds(lambda a, mid, b: a + mid + b, printable, inner, printable),
    )


KNOWN_ELEMENTS = {
    0x0002, 0x0003, 0x0100, 0x0110, 0x0120, 0x0600, 0x0700, 0x0800, 0x0900, 0x0901,
    0x0902, 0x0903, 0x1000, 0x1001, 0x1002, 0x1005, 0x1008, 0x1020, 0x1021, 0x1022,
    0x1023, 0x1030, 0x1031,
}  # fmt: skip

at_values = st.lists(st.integers(0, 0xFFFFFFFF), min_size=1, max_size=4).map(tuple)


@st.composite
def commands(draw, with_extra=False):
    values = {"command_field": draw(st.sampled_from(CommandField) | us_values)}
    values["command_data_set_type"] = draw(st.sampled_from([NO_DATA_SET, DATA_SET_PRESENT, 0]))
    for name in US_FIELDS:
        values[name] = draw(st.none() | us_values)
    for name in UI_FIELDS:
        values[name] = draw(st.none() | uid_values)
    for name in AE_FIELDS:
        values[name] = draw(st.none() | _text(16))
    values["error_comment"] = draw(st.none() | _text(64))
    for name in AT_FIELDS:
        values[name] = draw(st.none() | at_values)
    if with_extra:
        tags = st.integers(1, 0xFFFF).filter(lambda t: t not in KNOWN_ELEMENTS)
        even_bytes = st.binary(max_size=12).map(lambda b: b[: len(b) & ~1])
        values["extra"] = draw(st.dictionaries(tags, even_bytes, max_size=3))
    return Command(**values)


# -- command set codec -------------------------------------------------------


def test_c_echo_rq_hand_vector():
    command = Command(
        CommandField.C_ECHO_RQ, message_id=1, affected_sop_class_uid=uids.VERIFICATION
    )
    assert command.encode() == C_ECHO_RQ_BYTES
    assert Command.decode(C_ECHO_RQ_BYTES) == command


def test_c_echo_rsp_hand_vector():
    command = Command(
        CommandField.C_ECHO_RSP,
        message_id_being_responded_to=1,
        affected_sop_class_uid=uids.VERIFICATION,
        status=uids.Status.SUCCESS,
    )
    assert command.encode() == C_ECHO_RSP_BYTES
    assert Command.decode(C_ECHO_RSP_BYTES) == command
    assert command.is_response
    assert not command.has_data_set


def test_every_element_against_pydicom():
    command = Command(
        CommandField.C_MOVE_RSP,
        message_id=7,
        message_id_being_responded_to=6,
        affected_sop_class_uid=uids.STUDY_ROOT_MOVE,
        requested_sop_class_uid="1.2.3",
        affected_sop_instance_uid="1.2.3.4",
        requested_sop_instance_uid="1.2.3.45",
        priority=2,
        command_data_set_type=DATA_SET_PRESENT,
        status=0xFF00,
        error_comment="odd",
        error_id=3,
        offending_element=(0x00100010, 0x7FE00010),
        move_destination="STORESCP",
        move_originator_application_entity_title="ODD",
        move_originator_message_id=9,
        number_of_remaining_suboperations=10,
        number_of_completed_suboperations=11,
        number_of_failed_suboperations=12,
        number_of_warning_suboperations=13,
        event_type_id=14,
        action_type_id=15,
        attribute_identifier_list=(0x00080018,),
    )
    encoded = command.encode()
    assert encoded == pydicom_encode(command)
    assert Command.decode(encoded) == command


def test_c_store_rq_against_pydicom():
    command = Command(
        CommandField.C_STORE_RQ,
        message_id=1,
        affected_sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        affected_sop_instance_uid="1.2.826.0.1.3680043.8.498.1",
        priority=0,
        command_data_set_type=DATA_SET_PRESENT,
        move_originator_application_entity_title="MOVESCU",
        move_originator_message_id=3,
    )
    assert command.encode() == pydicom_encode(command)
    assert command.has_data_set
    assert not command.is_response


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(commands())
def test_encoding_matches_pydicom(command):
    assert command.encode() == pydicom_encode(command)


@settings(deadline=None)
@given(commands())
def test_decodes_what_pydicom_encodes(command):
    assert Command.decode(pydicom_encode(command)) == command


@given(commands(with_extra=True))
def test_round_trip(command):
    assert Command.decode(command.encode()) == command


def test_group_length_is_optional_and_not_trusted():
    without = C_ECHO_RQ_BYTES[12:]
    wrong = C_ECHO_RQ_BYTES[:8] + struct.pack("<I", 999) + without
    expected = Command.decode(C_ECHO_RQ_BYTES)
    assert Command.decode(without) == expected
    assert Command.decode(wrong) == expected


def test_elements_in_any_order():
    elements = [
        C_ECHO_RQ_BYTES[12:38],
        C_ECHO_RQ_BYTES[38:48],
        C_ECHO_RQ_BYTES[48:58],
        C_ECHO_RQ_BYTES[58:],
    ]
    assert Command.decode(b"".join(reversed(elements))) == Command.decode(C_ECHO_RQ_BYTES)


def test_space_padded_uid_and_padded_text_are_stripped():
    data = (
        struct.pack("<HHI", 0, 0x0002, 18) + b"1.2.840.10008.1.1 "
        + struct.pack("<HHIH", 0, 0x0100, 2, 0x8030)
        + struct.pack("<HHI", 0, 0x0600, 10) + b" STORESCP "
        + struct.pack("<HHI", 0, 0x0902, 4) + b"bad\x00"
    )  # fmt: skip
    command = Command.decode(data)
    assert command.affected_sop_class_uid == uids.VERIFICATION
    assert command.move_destination == "STORESCP"
    assert command.error_comment == "bad"


def test_non_ascii_error_comment_is_read_as_latin1():
    data = struct.pack("<HHIH", 0, 0x0100, 2, 0x8001) + struct.pack("<HHI", 0, 0x0902, 2) + b"\xe9!"
    assert Command.decode(data).error_comment == "\xe9!"


def test_unknown_elements_are_kept_in_extra_and_encoded_in_order():
    data = (
        struct.pack("<HHIH", 0, 0x0100, 2, 0x0030)
        + struct.pack("<HHI", 0, 0x0200, 4) + b"ABCD"  # retired Initiator
        + struct.pack("<HHIH", 0, 0x0800, 2, NO_DATA_SET)
        + struct.pack("<HHI", 0, 0x5010, 2) + b"XY"  # retired MessageSetID
    )  # fmt: skip
    command = Command.decode(data)
    assert command.extra == {0x0200: b"ABCD", 0x5010: b"XY"}
    assert command.encode() == struct.pack("<HHII", 0, 0, 4, len(data)) + data


def test_empty_values():
    data = (
        struct.pack("<HHIH", 0, 0x0100, 2, 0x0030)
        + struct.pack("<HHI", 0, 0x0110, 0)
        + struct.pack("<HHI", 0, 0x0002, 0)
        + struct.pack("<HHI", 0, 0x1005, 0)
    )
    command = Command.decode(data)
    assert command.message_id is None
    assert command.affected_sop_class_uid == ""
    assert command.attribute_identifier_list == ()


def test_missing_command_data_set_type_means_none():
    command = Command.decode(struct.pack("<HHIH", 0, 0x0100, 2, 0x0030))
    assert command.command_data_set_type == NO_DATA_SET


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "no \\(0000,0100\\)"),
        (struct.pack("<HHIH", 0, 0x0110, 2, 1), "no \\(0000,0100\\)"),
        (struct.pack("<HHI", 0, 0x0100, 0), "no \\(0000,0100\\)"),
        (C_ECHO_RQ_BYTES + b"\x00\x00", "inside an element header"),
        (C_ECHO_RQ_BYTES[:-1], "claims 2 bytes"),
        (C_ECHO_RQ_BYTES + struct.pack("<HHIH", 8, 0x0018, 2, 0), "outside the command group"),
        (C_ECHO_RQ_BYTES + C_ECHO_RQ_BYTES[48:58], "occurs twice"),
        (struct.pack("<HHIL", 0, 0x0100, 4, 0x30), "is US but 4 bytes"),
        (C_ECHO_RQ_BYTES + struct.pack("<HHIH", 0, 0x0901, 2, 0), "is AT but 2 bytes"),
        (C_ECHO_RQ_BYTES[:-10] + struct.pack("<HHI", 0, 0x0800, 0), "CommandDataSetType is empty"),
        (struct.pack("<HHI", 0, 0x0100, 0xFFFFFFFF), "claims 4294967295 bytes"),
    ],
)
def test_malformed_command_sets(data, message):
    with pytest.raises(CommandError, match=message):
        Command.decode(data)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"message_id": 0x10000}, "0..65535"),
        ({"message_id": -1}, "0..65535"),
        ({"priority": "high"}, "0..65535"),
        ({"move_destination": "ÄE"}, "ASCII"),
        ({"affected_sop_class_uid": 1.2}, "ASCII"),
        ({"offending_element": (0x1_0000_0000,)}, "32-bit tags"),
        ({"offending_element": ("x",)}, "32-bit tags"),
        ({"extra": {0x0100: b""}}, "unnamed tag"),
        ({"extra": {0x0000: b""}}, "unnamed tag"),
        ({"extra": {0x00080018: b""}}, "unnamed tag"),
    ],
)
def test_unencodable_commands(changes, message):
    command = Command(CommandField.C_ECHO_RQ, **changes)
    with pytest.raises(CommandError, match=message):
        command.encode()


def test_odd_extra_values_are_padded():
    command = Command(CommandField.C_ECHO_RQ, extra={0x0200: b"ABC"})
    assert Command.decode(command.encode()).extra == {0x0200: b"ABC\x00"}


def test_command_field_values():
    assert {field.name: field.value for field in CommandField} == {
        "C_STORE_RQ": 0x0001, "C_STORE_RSP": 0x8001, "C_GET_RQ": 0x0010, "C_GET_RSP": 0x8010,
        "C_FIND_RQ": 0x0020, "C_FIND_RSP": 0x8020, "C_MOVE_RQ": 0x0021, "C_MOVE_RSP": 0x8021,
        "C_ECHO_RQ": 0x0030, "C_ECHO_RSP": 0x8030, "N_EVENT_REPORT_RQ": 0x0100,
        "N_EVENT_REPORT_RSP": 0x8100, "N_GET_RQ": 0x0110, "N_GET_RSP": 0x8110,
        "N_SET_RQ": 0x0120, "N_SET_RSP": 0x8120, "N_ACTION_RQ": 0x0130, "N_ACTION_RSP": 0x8130,
        "N_CREATE_RQ": 0x0140, "N_CREATE_RSP": 0x8140, "N_DELETE_RQ": 0x0150,
        "N_DELETE_RSP": 0x8150, "C_CANCEL_RQ": 0x0FFF,
    }  # fmt: skip
    assert not Command(CommandField.C_CANCEL_RQ).is_response


@given(st.binary(max_size=200))
def test_decode_arbitrary_bytes_raises_only_command_error(data):
    try:
        command = Command.decode(data)
    except CommandError:
        return
    assert isinstance(command.command_field, int)


element_tags = st.sampled_from(sorted(KNOWN_ELEMENTS)) | st.integers(0, 0xFFFF)


@given(
    st.lists(
        st.tuples(
            st.sampled_from([0, 0, 0, 8]), element_tags, st.binary(max_size=10), st.integers(-2, 2)
        ),
        max_size=12,
    )
)
def test_decode_structured_garbage_raises_only_command_error(elements):
    data = b"".join(
        struct.pack("<HHI", group, element, max(0, len(value) + skew)) + value
        for group, element, value, skew in elements
    )
    try:
        command = Command.decode(data)
    except CommandError:
        return
    assert isinstance(command.command_field, int)


# -- fragmentation -----------------------------------------------------------


def parse_pdata(pdu: bytes) -> list[tuple[int, int, bytes]]:
    """Split a P-DATA-TF by hand: (context id, control, fragment) of each PDV."""
    pdu_type, pdu_length = struct.unpack_from(">BxL", pdu)
    assert pdu_type == 4
    assert pdu_length == len(pdu) - 6
    pdvs = []
    offset = 6
    while offset < len(pdu):
        item_length, context_id, control = struct.unpack_from(">LBB", pdu, offset)
        pdvs.append((context_id, control, pdu[offset + 6 : offset + 4 + item_length]))
        offset += 4 + item_length
    assert offset == len(pdu)
    return pdvs


def test_unlimited_fragmentation_is_one_pdu_of_two_pdvs():
    pdus = list(fragment(5, b"CMD!", b"DATA", 0))
    assert pdus == [
        bytes.fromhex("04 00 00000014 00000006 05 03")
        + b"CMD!"
        + bytes.fromhex("00000006 05 02")
        + b"DATA"
    ]


def test_no_data_set_sends_only_the_command():
    assert [parse_pdata(p) for p in fragment(1, b"CC", None, 0)] == [[(1, 3, b"CC")]]


def test_empty_data_set_is_one_empty_last_fragment():
    pdus = [parse_pdata(p) for p in fragment(1, b"CC", b"", 16)]
    assert pdus == [[(1, 3, b"CC"), (1, 2, b"")]]


def test_the_data_set_begins_in_the_command_s_pdu_as_far_as_it_fits():
    pdus = [parse_pdata(p) for p in fragment(3, b"CC", b"0123456789abcdefghijk", 21)]
    assert pdus == [
        [(3, 3, b"CC"), (3, 0, b"012345")],  # 6 + 2 + 6 + 6 = 20: 7 bytes would be odd
        [(3, 0, b"6789abcdefghij")],
        [(3, 2, b"k")],
    ]


def test_fragments_are_cut_at_even_offsets():
    pdus = [parse_pdata(p) for p in fragment(3, b"0123456789", b"abcde", 11)]
    assert pdus == [
        [(3, 1, b"0123")],
        [(3, 1, b"4567")],
        [(3, 3, b"89")],  # no room left for data after the command in 11 bytes
        [(3, 0, b"abcd")],
        [(3, 2, b"e")],
    ]


@pytest.mark.parametrize("max_pdu_length", [1, 6, 7, -1])
def test_too_small_max_pdu_length(max_pdu_length):
    with pytest.raises(ValueError, match="no room"):
        list(fragment(1, b"CC", None, max_pdu_length))


@given(
    st.integers(1, 255),
    st.binary(max_size=300),
    st.none() | st.binary(max_size=600),
    st.just(0) | st.integers(8, 200),
)
def test_fragmentation_respects_the_limit_and_loses_nothing(
    context_id, command, data, max_pdu_length
):
    parsed = []
    for pdu in fragment(context_id, command, data, max_pdu_length):
        if max_pdu_length:
            assert len(pdu) - 6 <= max_pdu_length
        pdvs = parse_pdata(pdu)
        assert len(pdvs) == 1 or [c & PDV_COMMAND for _, c, _ in pdvs] == [PDV_COMMAND, 0]
        parsed.extend(pdvs)
    assert all(ctx == context_id for ctx, _, _ in parsed)
    command_parts = [(c, f) for _, c, f in parsed if c & PDV_COMMAND]
    data_parts = [(c, f) for _, c, f in parsed if not c & PDV_COMMAND]
    assert [c for _, c, _ in parsed[: len(command_parts)]] == [c for c, _ in command_parts]
    for parts, payload in ((command_parts, command), (data_parts, data)):
        if payload is None:
            assert parts == []
            continue
        assert b"".join(f for _, f in parts) == payload
        assert [bool(c & PDV_LAST) for c, _ in parts] == [False] * (len(parts) - 1) + [True]
        assert all(len(f) % 2 == 0 for _, f in parts[:-1])


@given(
    commands(),
    st.binary(max_size=500),
    st.integers(8, 128),
)
def test_fragments_reassemble(command, data, max_pdu_length):
    command.command_data_set_type = DATA_SET_PRESENT
    assembler = MessageAssembler()
    events = []
    for pdu in fragment(9, command.encode(), data, max_pdu_length):
        for pdv in parse_pdata(pdu):
            events.extend(assembler.feed(*pdv))
    assert events[0] == CommandReceived(9, command)
    assert b"".join(e.data for e in events[1:]) == data
    assert [e.last for e in events[1:]] == [False] * (len(events) - 2) + [True]
    assert assembler.idle


# -- reassembly --------------------------------------------------------------

ECHO_RQ = Command.decode(C_ECHO_RQ_BYTES)
STORE_RQ = Command(
    CommandField.C_STORE_RQ,
    message_id=2,
    affected_sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
    affected_sop_instance_uid="1.2.3.4",
    priority=0,
    command_data_set_type=DATA_SET_PRESENT,
)
COMMAND, COMMAND_LAST, DATA, DATA_LAST = PDV_COMMAND, PDV_COMMAND | PDV_LAST, 0, PDV_LAST


def test_command_without_data_set():
    assembler = MessageAssembler()
    assert assembler.idle
    assert assembler.feed(1, COMMAND_LAST, C_ECHO_RQ_BYTES) == [CommandReceived(1, ECHO_RQ)]
    assert assembler.idle


def test_command_in_fragments_then_data_streamed_through():
    encoded = STORE_RQ.encode()
    assembler = MessageAssembler()
    assert assembler.feed(3, COMMAND, encoded[:5]) == []
    assert not assembler.idle
    assert assembler.feed(3, COMMAND, b"") == []
    assert assembler.feed(3, COMMAND_LAST, encoded[5:]) == [CommandReceived(3, STORE_RQ)]
    assert not assembler.idle
    assert assembler.feed(3, DATA, b"abc") == [DataReceived(3, b"abc", False)]
    assert assembler.feed(3, DATA, b"") == [DataReceived(3, b"", False)]
    assert assembler.feed(3, DATA_LAST, b"d") == [DataReceived(3, b"d", True)]
    assert assembler.idle
    assert assembler.feed(5, COMMAND_LAST, C_ECHO_RQ_BYTES) == [CommandReceived(5, ECHO_RQ)]


def _expecting_data() -> MessageAssembler:
    assembler = MessageAssembler()
    assembler.feed(1, COMMAND_LAST, STORE_RQ.encode())
    return assembler


def _mid_command() -> MessageAssembler:
    assembler = MessageAssembler()
    assembler.feed(1, COMMAND, STORE_RQ.encode()[:10])
    return assembler


@pytest.mark.parametrize(
    ("make", "pdv", "message"),
    [
        (MessageAssembler, (1, DATA_LAST, b"x"), "no command announced a data set"),
        (_mid_command, (2, COMMAND_LAST, b"x"), "command on context 1 is incomplete"),
        (_mid_command, (1, DATA, b"x"), "while a command set is incomplete"),
        (
            _expecting_data,
            (1, COMMAND_LAST, C_ECHO_RQ_BYTES),
            "data set on context 1 is incomplete",
        ),
        (_expecting_data, (2, DATA, b"x"), "announced its data set on context 1"),
    ],
)
def test_out_of_order_fragments(make, pdv, message):
    assembler = make()
    with pytest.raises(AssemblyError, match=message):
        assembler.feed(*pdv)


def test_data_after_a_command_without_data_set():
    assembler = MessageAssembler()
    assembler.feed(1, COMMAND_LAST, C_ECHO_RQ_BYTES)
    with pytest.raises(AssemblyError, match="no command announced"):
        assembler.feed(1, DATA_LAST, b"x")


def test_data_after_the_last_data_fragment():
    assembler = _expecting_data()
    assembler.feed(1, DATA_LAST, b"x")
    with pytest.raises(AssemblyError, match="no command announced"):
        assembler.feed(1, DATA, b"y")


def test_rejected_fragment_leaves_the_state_alone():
    assembler = _expecting_data()
    with pytest.raises(AssemblyError):
        assembler.feed(2, DATA, b"x")
    assert assembler.feed(1, DATA_LAST, b"x") == [DataReceived(1, b"x", True)]


def test_undecodable_command_leaves_the_assembler_idle():
    assembler = MessageAssembler()
    with pytest.raises(CommandError):
        assembler.feed(1, COMMAND_LAST, b"\x00\x00")
    assert assembler.idle
    assert assembler.feed(1, COMMAND_LAST, C_ECHO_RQ_BYTES) == [CommandReceived(1, ECHO_RQ)]


def test_reserved_control_bits_are_ignored():
    assembler = MessageAssembler()
    assert assembler.feed(1, 0xFC | COMMAND_LAST, C_ECHO_RQ_BYTES) == [CommandReceived(1, ECHO_RQ)]


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted(min(c, len(data)) for c in cuts)
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@given(
    commands(),
    st.binary(max_size=300),
    st.lists(st.integers(0, 400), max_size=8),
    st.lists(st.integers(0, 300), max_size=8),
    st.integers(1, 255),
)
def test_random_splits_reassemble(command, data, command_cuts, data_cuts, context_id):
    command.command_data_set_type = DATA_SET_PRESENT
    assembler = MessageAssembler()
    events = []
    command_pieces = _split(command.encode(), command_cuts)
    for i, piece in enumerate(command_pieces):
        last = PDV_LAST if i == len(command_pieces) - 1 else 0
        events.extend(assembler.feed(context_id, PDV_COMMAND | last, piece))
    data_pieces = _split(data, data_cuts)
    for i, piece in enumerate(data_pieces):
        last = PDV_LAST if i == len(data_pieces) - 1 else 0
        events.extend(assembler.feed(context_id, last, piece))
    assert events[0] == CommandReceived(context_id, command)
    assert all(isinstance(e, DataReceived) and e.context_id == context_id for e in events[1:])
    assert b"".join(e.data for e in events[1:]) == data
    assert assembler.idle


pdvs = st.tuples(
    st.integers(1, 3),
    st.integers(0, 3),
    st.sampled_from([C_ECHO_RQ_BYTES, STORE_RQ.encode()]) | st.binary(max_size=30),
)


@given(st.lists(pdvs, max_size=20))
def test_assembler_raises_only_its_own_errors(stream):
    assembler = MessageAssembler()
    for pdv in stream:
        try:
            events = assembler.feed(*pdv)
        except (AssemblyError, CommandError):
            continue
        assert all(isinstance(e, CommandReceived | DataReceived) for e in events)


# -- data sets ---------------------------------------------------------------


def find_identifier() -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientName = "DOE^JANE"
    ds.PatientID = "12345"
    ds.StudyDate = "20240101-"
    ds.StudyInstanceUID = ""
    ds.NumberOfStudyRelatedInstances = None
    item = Dataset()
    item.CodeValue = "T-A0100"
    item.CodingSchemeDesignator = "SRT"
    ds.ProcedureCodeSequence = Sequence([item])
    return ds


@pytest.mark.parametrize("ts", [*uids.DEFAULT_TRANSFER_SYNTAX_PREFERENCE, "1.2.840.10008.1.2.4.50"])
def test_data_set_round_trip(ts):
    decoded = decode_dataset(encode_dataset(find_identifier(), ts), ts)
    assert decoded == find_identifier()
    assert decoded.ProcedureCodeSequence[0].CodeValue == "T-A0100"


def patient_name_only() -> Dataset:
    ds = Dataset()
    ds.PatientName = "DOE^J"
    return ds


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (uids.IMPLICIT_VR_LITTLE_ENDIAN, "1000 1000 06000000" + "444f455e4a20"),
        (uids.EXPLICIT_VR_LITTLE_ENDIAN, "1000 1000 504e 0600" + "444f455e4a20"),
        (uids.EXPLICIT_VR_BIG_ENDIAN, "0010 0010 504e 0006" + "444f455e4a20"),
    ],
)
def test_data_set_hand_vectors(ts, expected):
    encoded = encode_dataset(patient_name_only(), ts)
    assert encoded == bytes.fromhex(expected)
    assert decode_dataset(encoded, ts).PatientName == "DOE^J"


def test_deflated_is_raw_deflate_of_explicit_little_endian():
    encoded = encode_dataset(find_identifier(), uids.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN)
    explicit = encode_dataset(find_identifier(), uids.EXPLICIT_VR_LITTLE_ENDIAN)
    assert zlib.decompress(encoded, wbits=-15) == explicit
    compressor = zlib.compressobj(wbits=-15)
    foreign = compressor.compress(explicit) + compressor.flush()
    assert decode_dataset(foreign, uids.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN) == find_identifier()


def test_real_file_survives_every_native_syntax():
    original = dcmread(get_testdata_file("CT_small.dcm"))
    body = Dataset(original)
    for ts in uids.DEFAULT_TRANSFER_SYNTAX_PREFERENCE:
        decoded = decode_dataset(encode_dataset(Dataset(body), ts), ts)
        assert decoded.SOPInstanceUID == original.SOPInstanceUID
        assert decoded.PixelData == original.PixelData
        assert decoded.Rows == original.Rows


@pytest.mark.parametrize("name", ["SC_rgb_jpeg_dcmtk.dcm", "JPEG2000.dcm", "rtplan.dcm"])
def test_real_file_in_its_own_syntax(name):
    original = dcmread(get_testdata_file(name))
    ts = original.file_meta.TransferSyntaxUID
    body = Dataset(original)
    assert decode_dataset(encode_dataset(body, ts), ts) == body


@pytest.mark.parametrize("ts", uids.DEFAULT_TRANSFER_SYNTAX_PREFERENCE)
def test_undefined_length_sequence(ts):
    ds = find_identifier()
    ds["ProcedureCodeSequence"].is_undefined_length = True
    encoded = encode_dataset(ds, ts)
    assert decode_dataset(encoded, ts) == ds
    with pytest.raises(DataSetError):
        decode_dataset(encoded[:-3], ts)


def test_unknown_transfer_syntax():
    with pytest.raises(DataSetError, match="not a transfer syntax"):
        encode_dataset(patient_name_only(), "1.2.3.4")
    with pytest.raises(DataSetError, match="not a transfer syntax"):
        decode_dataset(b"", uids.VERIFICATION)


def test_unencodable_data_set():
    ds = Dataset()
    ds.Rows = "many"
    with pytest.raises(DataSetError, match="cannot encode"):
        encode_dataset(ds, uids.IMPLICIT_VR_LITTLE_ENDIAN)


NAME_ELEMENT = bytes.fromhex("1000 1000 504e 0600") + b"DOE^J "


@pytest.mark.parametrize(
    ("data", "ts", "message"),
    [
        (NAME_ELEMENT[:-1], uids.EXPLICIT_VR_LITTLE_ENDIAN, "truncated"),
        (NAME_ELEMENT[:8], uids.EXPLICIT_VR_LITTLE_ENDIAN, "truncated"),
        (NAME_ELEMENT + b"\x10\x00", uids.EXPLICIT_VR_LITTLE_ENDIAN, "2 stray bytes"),
        (NAME_ELEMENT[:5], uids.EXPLICIT_VR_LITTLE_ENDIAN, "5 stray bytes"),
        (
            bytes.fromhex("1000 1000 ffff0000") + b"DOE",
            uids.IMPLICIT_VR_LITTLE_ENDIAN,
            "cannot decode",
        ),
        (b"\xff\xff not deflate", uids.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, "cannot decode"),
    ],
)
def test_undecodable_data_sets(data, ts, message):
    with pytest.raises(DataSetError, match=message):
        decode_dataset(data, ts)


def test_empty_data_set():
    assert decode_dataset(b"", uids.IMPLICIT_VR_LITTLE_ENDIAN) == Dataset()


@settings(deadline=None)
@given(st.binary(max_size=200), st.sampled_from(uids.DEFAULT_TRANSFER_SYNTAX_PREFERENCE))
def test_decode_dataset_raises_only_data_set_error(data, ts):
    try:
        ds = decode_dataset(data, ts)
    except DataSetError:
        return
    assert isinstance(ds, Dataset)


@settings(max_examples=60, deadline=None)
@given(name=st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ^", max_size=40))
def test_deflated_data_sets_are_padded_to_an_even_length(name):
    ds = Dataset()
    ds.PatientName = name
    encoded = encode_dataset(ds, uids.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN)
    assert len(encoded) % 2 == 0
    assert decode_dataset(encoded, uids.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN).PatientName == name


# -- several PDVs in one PDU ---------------------------------------------------


def find_on_verification(message_id: int) -> Command:
    """A C-FIND request on the Verification context, which the node answers 0211."""
    return Command(
        CommandField.C_FIND_RQ,
        message_id=message_id,
        affected_sop_class_uid=uids.VERIFICATION,
        priority=0,
        command_data_set_type=DATA_SET_PRESENT,
    )


def test_a_command_and_its_data_set_in_one_pdu_are_one_message():
    peer = Peer()
    peer.associate()
    identifier = encode_dataset(Dataset(), uids.IMPLICIT_VR_LITTLE_ENDIAN)
    find = find_on_verification(message_id=4)
    (pdu,) = fragment(1, find.encode(), identifier, 16384)
    assert len(parse_pdata(pdu)) == 2

    peer.send(pdu)

    (response,) = peer.responses()
    assert response.message_id_being_responded_to == 4
    assert response.status == uids.Status.UNRECOGNIZED_OPERATION


def test_pdvs_after_one_that_aborts_are_not_read():
    peer = Peer()
    peer.associate()
    unknown = Command(0x0999, message_id=1, command_data_set_type=DATA_SET_PRESENT)
    (pdu,) = fragment(1, unknown.encode(), b"\x08\x00\x52\x00\x00\x00\x00\x00", 16384)

    peer.send(pdu)

    assert peer.received() == [AAbort(2, 6)]


def test_responses_to_one_request_carry_each_its_own_status_and_data_set_type():
    peer = Peer()
    peer.associate()
    association = peer.protocol.user
    find = find_on_verification(message_id=6)
    request = Request(association.contexts[1], find, None)

    association.respond(request, uids.Status.PENDING, b"first")
    association.respond(request, uids.Status.PENDING, b"second")
    association.respond(request, uids.Status.PENDING, None)
    association.respond(request, uids.Status.SUCCESS, error_comment="done")
    association.respond(request, uids.Status.SUCCESS)

    answered = [
        (command.status, command.has_data_set, command.error_comment, data)
        for command, data in peer.messages()
    ]
    assert answered == [
        (uids.Status.PENDING, True, None, b"first"),
        (uids.Status.PENDING, True, None, b"second"),
        (uids.Status.PENDING, False, None, None),
        (uids.Status.SUCCESS, False, "done", None),
        (uids.Status.SUCCESS, False, None, None),
    ]


def test_a_final_response_lets_go_of_its_request():
    """The pending responses' command set is kept for the next one, not beyond the last:
    the request it names holds the identifier, as large as the peer made it."""
    peer = Peer()
    peer.associate()
    association = peer.protocol.user
    identifier = Dataset()
    request = Request(association.contexts[1], find_on_verification(message_id=7), identifier)
    association.respond(request, uids.Status.PENDING, b"match")
    association.respond(request, uids.Status.SUCCESS)
    kept = weakref.ref(identifier)
    del request, identifier
    assert kept() is None

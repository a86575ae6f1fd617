"""Tests for dicomd.ul.pdu: byte-exact vectors from PS3.8 9.3 and PS3.7 D.3.3,
round trips, robustness against malformed bytes, and a cross-check with
pynetdicom's independent codec."""

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pynetdicom.pdu import A_ASSOCIATE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
    UserIdentityNegotiation,
)
from pynetdicom.presentation import build_context

from dicomd.ul.pdu import (
    HEADER_LENGTH,
    PDU,
    AAbort,
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    AbortReason,
    AbortSource,
    AReleaseRP,
    AReleaseRQ,
    AsyncOperationsWindow,
    ContextResult,
    ItemType,
    PDataTF,
    PDUError,
    PDUType,
    PresentationContextAC,
    PresentationContextRQ,
    PresentationDataValue,
    RejectResult,
    RejectSource,
    RoleSelection,
    SOPClassCommonExtendedNegotiation,
    SOPClassExtendedNegotiation,
    UserIdentityAC,
    UserIdentityRQ,
    UserInformation,
    decode,
    decode_pdu,
    encode_pdata,
    parse_header,
)

h = bytes.fromhex

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
DCMTK_CLASS_UID = "1.2.276.0.7230010.3.0.3.6.7"
RESERVED_32 = bytes(32)


def echoscu_associate_rq(reserved_result_byte: str) -> bytes:
    """The A-ASSOCIATE-RQ dcmtk 3.6.7 `echoscu -aet ECHOSCU -aec ANY-SCP` sends.

    dcmtk puts FF in the presentation context's reserved result/reason
    byte; we write 00 there, so the vector is built for either.
    """
    return (
        h("01 00 000000CD")  # A-ASSOCIATE-RQ, reserved, PDU length 205
        + h("0001 0000")  # protocol version 1, reserved
        + b"ANY-SCP         "  # called AE title, space padded to 16
        + b"ECHOSCU         "  # calling AE title
        + RESERVED_32
        + h("10 00 0015")  # application context item, reserved, length 21
        + b"1.2.840.10008.3.1.1.1"
        + h("20 00 002E")  # presentation context item (RQ), reserved, length 46
        + h(f"01 00 {reserved_result_byte} 00")  # context ID 1, reserved x3
        + h("30 00 0011")  # abstract syntax sub-item, length 17
        + b"1.2.840.10008.1.1"
        + h("40 00 0011")  # transfer syntax sub-item, length 17
        + b"1.2.840.10008.1.2"
        + h("50 00 003A")  # user information item, length 58
        + h("51 00 0004 00004000")  # maximum length sub-item: 16384
        + h("52 00 001B")  # implementation class UID sub-item, length 27
        + b"1.2.276.0.7230010.3.0.3.6.7"
        + h("55 00 000F")  # implementation version name sub-item, length 15
        + b"OFFIS_DCMTK_367"
    )


ECHOSCU_RQ = AAssociateRQ(
    called_ae_title="ANY-SCP",
    calling_ae_title="ECHOSCU",
    presentation_contexts=(PresentationContextRQ(1, VERIFICATION, (IMPLICIT_VR_LE,)),),
    user_information=UserInformation(
        max_length=16384,
        implementation_class_uid=DCMTK_CLASS_UID,
        implementation_version_name="OFFIS_DCMTK_367",
    ),
)

ASSOCIATE_AC_BYTES = (
    h("02 00 000000AE")  # A-ASSOCIATE-AC, reserved, PDU length 174
    + h("0001 0000")  # protocol version 1, reserved
    + b"ANY-SCP         "  # reserved: called AE title as in the RQ
    + b"ECHOSCU         "  # reserved: calling AE title as in the RQ
    + RESERVED_32
    + h("10 00 0015")  # application context item, length 21
    + b"1.2.840.10008.3.1.1.1"
    + h("21 00 0019")  # presentation context item (AC), length 25
    + h("01 00 00 00")  # context ID 1, reserved, result 0 acceptance, reserved
    + h("40 00 0011")  # transfer syntax sub-item, length 17
    + b"1.2.840.10008.1.2"
    + h("21 00 0008")  # presentation context item (AC), length 8
    + h("03 00 03 00")  # context ID 3, reserved, 3 abstract syntax not supported
    + h("40 00 0000")  # transfer syntax sub-item, empty: not significant
    + h("50 00 0024")  # user information item, length 36
    + h("51 00 0004 00008000")  # maximum length: 32768
    + h("52 00 0005")  # implementation class UID, length 5
    + b"1.2.3"
    + h("55 00 0006")  # implementation version name, length 6
    + b"DICOMD"
    + h("59 00 0005 0003")  # user identity (AC), length 5, server response length 3
    + b"tok"
)

ASSOCIATE_AC = AAssociateAC(
    called_ae_title="ANY-SCP",
    calling_ae_title="ECHOSCU",
    presentation_contexts=(
        PresentationContextAC(1, ContextResult.ACCEPTANCE, IMPLICIT_VR_LE),
        PresentationContextAC(3, ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED, ""),
    ),
    user_information=UserInformation(
        max_length=32768,
        implementation_class_uid="1.2.3",
        implementation_version_name="DICOMD",
        user_identity_ac=UserIdentityAC(b"tok"),
    ),
)

P_DATA_TF_BYTES = (
    h("04 00 00000013")  # P-DATA-TF, reserved, PDU length 19
    + h("00000006 01 03")  # PDV item length 6, context 1, command + last fragment
    + h("DEADBEEF")  # fragment
    + h("00000005 01 02")  # PDV item length 5, context 1, data set + last fragment
    + b"abc"  # fragment
)

FIXED_VECTORS = [
    (
        h("03 00 00000004 00 01 01 07"),  # RJ: reserved, permanent, user, called AE
        AAssociateRJ(RejectResult.PERMANENT, RejectSource.SERVICE_USER, reason=7),
    ),
    (
        h("03 00 00000004 00 02 03 02"),  # RJ: transient, presentation, local limit
        AAssociateRJ(RejectResult.TRANSIENT, RejectSource.SERVICE_PROVIDER_PRESENTATION, 2),
    ),
    (h("05 00 00000004 00000000"), AReleaseRQ()),  # A-RELEASE-RQ, 4 reserved
    (h("06 00 00000004 00000000"), AReleaseRP()),  # A-RELEASE-RP, 4 reserved
    (
        h("07 00 00000004 00 00 02 06"),  # A-ABORT: reserved x2, provider, invalid
        AAbort(AbortSource.SERVICE_PROVIDER, AbortReason.INVALID_PDU_PARAMETER_VALUE),
    ),
    (h("07 00 00000004 00 00 00 00"), AAbort(AbortSource.SERVICE_USER, 0)),
    (
        P_DATA_TF_BYTES,
        PDataTF(
            (
                PresentationDataValue(1, 0x03, h("DEADBEEF")),
                PresentationDataValue(1, 0x02, b"abc"),
            )
        ),
    ),
]

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"

# (sub-item bytes, the UserInformation holding just that sub-item)
USER_INFORMATION_SUB_ITEMS = [
    (
        h("51 00 0004 00000000"),  # maximum length 0: no limit
        UserInformation(max_length=0),
    ),
    (
        h("52 00 0005") + b"1.2.3",  # implementation class UID
        UserInformation(implementation_class_uid="1.2.3"),
    ),
    (
        h("55 00 000F") + b"OFFIS_DCMTK_367",  # implementation version name
        UserInformation(implementation_version_name="OFFIS_DCMTK_367"),
    ),
    (
        h("53 00 0004 0005 0001"),  # async window: 5 invoked, 1 performed
        UserInformation(async_operations_window=AsyncOperationsWindow(5, 1)),
    ),
    (
        h("54 00 001D 0019")  # role selection, length 29, UID length 25
        + b"1.2.840.10008.5.1.4.1.1.2"
        + h("00 01"),  # SCU role 0, SCP role 1
        UserInformation(role_selections=(RoleSelection(CT_IMAGE_STORAGE, False, True),)),
    ),
    (
        h("56 00 0020 001B")  # SOP class extended, length 32, UID length 27
        + b"1.2.840.10008.5.1.4.1.2.2.1"
        + h("01 01 00"),  # service class application information
        UserInformation(
            sop_class_extended=(
                SOPClassExtendedNegotiation("1.2.840.10008.5.1.4.1.2.2.1", h("01 01 00")),
            )
        ),
    ),
    (
        h("57 00 0053")  # common extended, sub-item version 0, length 83
        + h("001D")  # SOP class UID length 29
        + b"1.2.840.10008.5.1.4.1.1.88.22"
        + h("0011")  # service class UID length 17
        + b"1.2.840.10008.4.2"
        + h("001F")  # related general SOP class identification length 31
        + h("001D")  # related general SOP class UID length 29
        + b"1.2.840.10008.5.1.4.1.1.88.11",
        UserInformation(
            sop_class_common_extended=(
                SOPClassCommonExtendedNegotiation(
                    "1.2.840.10008.5.1.4.1.1.88.22",
                    "1.2.840.10008.4.2",
                    ("1.2.840.10008.5.1.4.1.1.88.11",),
                ),
            )
        ),
    ),
    (
        h("58 00 0010")  # user identity (RQ), length 16
        + h("02 01")  # type 2 username and passcode, positive response requested
        + h("0004")  # primary field length
        + b"user"
        + h("0006")  # secondary field length
        + b"secret",
        UserInformation(user_identity_rq=UserIdentityRQ(2, True, b"user", b"secret")),
    ),
    (
        h("59 00 0003 0001") + b"t",  # user identity (AC), server response length 1
        UserInformation(user_identity_ac=UserIdentityAC(b"t")),
    ),
    (
        h("7A 00 0002 ABCD"),  # a sub-item type this codec does not know
        UserInformation(unknown_items=((0x7A, h("ABCD")),)),
    ),
]


def associate_rq_around(variable_items: bytes) -> bytes:
    """An A-ASSOCIATE-RQ with the fixed fields of the echoscu vector and these items."""
    return (
        bytes([PDUType.ASSOCIATE_RQ, 0])
        + (68 + len(variable_items)).to_bytes(4, "big")
        + h("0001 0000")
        + b"ANY-SCP         "
        + b"ECHOSCU         "
        + RESERVED_32
        + variable_items
    )


def item(item_type: int, value: bytes) -> bytes:
    return bytes([item_type, 0]) + len(value).to_bytes(2, "big") + value


APPLICATION_CONTEXT_ITEM = item(0x10, b"1.2.840.10008.3.1.1.1")
VERIFICATION_CONTEXT_ITEM = item(
    0x20,
    h("01 00 00 00") + item(0x30, VERIFICATION.encode()) + item(0x40, b"1.2.840.10008.1.2"),
)


def rq_with_user_information(sub_items: bytes) -> bytes:
    return associate_rq_around(
        APPLICATION_CONTEXT_ITEM + VERIFICATION_CONTEXT_ITEM + item(0x50, sub_items)
    )


def assert_pdu_error(data: bytes, reason: AbortReason) -> None:
    with pytest.raises(PDUError) as caught:
        decode(data)
    assert caught.value.reason is reason


# --------------------------------------------------------------------------
# Byte-exact vectors


def test_parse_header_reads_type_and_length_even_for_unknown_types():
    assert parse_header(h("01 00 000000CD")) == (1, 205)
    assert parse_header(h("FF 7F FFFFFFFF")) == (0xFF, 0xFFFFFFFF)
    assert HEADER_LENGTH == 6


def test_parse_header_rejects_short_header():
    with pytest.raises(PDUError):
        parse_header(h("01 00 0000"))


def test_decode_dcmtk_echoscu_associate_rq_ignoring_reserved_byte():
    assert decode(echoscu_associate_rq(reserved_result_byte="FF")) == ECHOSCU_RQ


def test_encode_associate_rq_writes_reserved_fields_as_zero():
    assert ECHOSCU_RQ.encode() == echoscu_associate_rq(reserved_result_byte="00")


def test_associate_ac_vector():
    assert decode(ASSOCIATE_AC_BYTES) == ASSOCIATE_AC
    assert ASSOCIATE_AC.encode() == ASSOCIATE_AC_BYTES


@pytest.mark.parametrize(("data", "pdu"), FIXED_VECTORS)
def test_fixed_and_p_data_vectors(data, pdu):
    assert decode(data) == pdu
    assert decode_pdu(data[0], data[HEADER_LENGTH:]) == pdu
    assert pdu.encode() == data


@pytest.mark.parametrize(("sub_item", "user_information"), USER_INFORMATION_SUB_ITEMS)
def test_user_information_sub_item_vectors(sub_item, user_information):
    pdu = decode(rq_with_user_information(sub_item))
    assert pdu.user_information == user_information
    assert user_information.encode() == item(0x50, sub_item)


@pytest.mark.parametrize(
    ("sub_item", "value"),
    [
        (h("53 00 0004 0005 0001"), AsyncOperationsWindow(5, 1)),
        (h("54 00 0005 0001") + b"1" + h("01 00"), RoleSelection("1", True, False)),
        (h("56 00 0004 0001") + b"1" + h("FF"), SOPClassExtendedNegotiation("1", b"\xff")),
        (
            h("57 00 0008 0001") + b"1" + h("0001") + b"2" + h("0000"),
            SOPClassCommonExtendedNegotiation("1", "2"),
        ),
        (h("58 00 0007 01 00 0001") + b"u" + h("0000"), UserIdentityRQ(1, False, b"u")),
        (h("59 00 0002 0000"), UserIdentityAC(b"")),
    ],
)
def test_sub_item_dataclasses_encode_their_own_item(sub_item, value):
    assert value.encode() == sub_item


def test_presentation_context_items_encode_byte_exact():
    assert PresentationContextRQ(1, VERIFICATION, (IMPLICIT_VR_LE,)).encode() == (
        VERIFICATION_CONTEXT_ITEM
    )
    assert PresentationContextAC(5, 4, "").encode() == h(
        "21 00 0008 05 00 04 00 40 00 0000"  # ID 5, transfer syntaxes not supported
    )


def test_encode_pdata_matches_the_dataclass_encoding():
    fragment = h("DEADBEEF")
    expected = h("04 00 0000000A 00000006 07 01") + fragment  # command, not last
    assert encode_pdata(7, 0x01, fragment) == expected
    assert encode_pdata(7, 0x01, memoryview(fragment)) == expected
    assert PDataTF((PresentationDataValue(7, 0x01, fragment),)).encode() == expected


def test_pdv_control_bits():
    assert PresentationDataValue(1, 0x03, b"").is_command
    assert PresentationDataValue(1, 0x03, b"").is_last
    assert not PresentationDataValue(1, 0x00, b"").is_command
    assert not PresentationDataValue(1, 0x01, b"").is_last


def test_p_data_decode_from_memoryview_gives_bytes():
    pdu = decode_pdu(PDUType.P_DATA_TF, memoryview(P_DATA_TF_BYTES)[HEADER_LENGTH:])
    assert [type(pdv.data) for pdv in pdu.pdvs] == [bytes, bytes]
    assert pdu.pdvs[1].data == b"abc"


def test_pdu_types_are_class_attributes():
    assert [pdu.pdu_type for _, pdu in FIXED_VECTORS] == [3, 3, 5, 6, 7, 7, 4]
    assert (AAssociateRQ.pdu_type, AAssociateAC.pdu_type) == (1, 2)


# --------------------------------------------------------------------------
# Text fields


def test_ae_title_decode_strips_padding_and_uid_decode_strips_nul():
    context = item(
        0x20,
        h("01 00 00 00")
        + item(0x30, b"1.2.840.10008.1.1\0")  # padded with NUL
        + item(0x40, b"1.2.840.10008.1.2 "),  # padded with space
    )
    data = associate_rq_around(APPLICATION_CONTEXT_ITEM + context)
    pdu = decode(data.replace(b"ANY-SCP         ", b"  ANY-SCP       "))
    assert pdu.called_ae_title == "ANY-SCP"
    assert pdu.presentation_contexts == ECHOSCU_RQ.presentation_contexts


@pytest.mark.parametrize("title", ["A" * 17, "CAFÉ"])
def test_encode_rejects_ae_titles_that_do_not_fit(title):
    pdu = AAssociateRQ(title, "ME", ECHOSCU_RQ.presentation_contexts, UserInformation())
    with pytest.raises(ValueError):
        pdu.encode()


def test_encode_rejects_out_of_range_numbers():
    with pytest.raises(ValueError):
        AAbort(0, 256).encode()
    with pytest.raises(ValueError):
        encode_pdata(256, 0, b"")
    with pytest.raises(ValueError):
        UserInformation(unknown_items=((0x7A, bytes(0x10000)),)).encode()


def test_non_ascii_text_decodes_as_latin_1():
    data = rq_with_user_information(item(0x55, b"caf\xe9"))
    assert decode(data).user_information.implementation_version_name == "café"


# --------------------------------------------------------------------------
# Liberal and strict decoding


def test_missing_user_information_reads_as_defaults():
    data = associate_rq_around(APPLICATION_CONTEXT_ITEM + VERIFICATION_CONTEXT_ITEM)
    assert decode(data).user_information == UserInformation()


def test_items_in_any_order_and_protocol_version_kept():
    data = associate_rq_around(
        item(0x50, b"") + VERIFICATION_CONTEXT_ITEM + APPLICATION_CONTEXT_ITEM
    )
    data = data[:6] + h("0002") + data[8:]  # protocol version 2
    pdu = decode(data)
    assert pdu.protocol_version == 2
    assert pdu.presentation_contexts == ECHOSCU_RQ.presentation_contexts


def test_rejected_context_without_transfer_syntax_sub_item():
    data = ASSOCIATE_AC_BYTES.replace(
        h("21 00 0008 03 00 03 00 40 00 0000"), h("21 00 0004 03 00 03 00")
    )
    data = data[:2] + h("000000AA") + data[6:]
    assert decode(data).presentation_contexts[1] == PresentationContextAC(3, 3, "")


def test_user_identity_rq_without_secondary_field_length():
    data = rq_with_user_information(h("58 00 0005 01 00 0001") + b"u")
    assert decode(data).user_information.user_identity_rq == UserIdentityRQ(1, False, b"u")


def test_common_extended_negotiation_ignores_reserved_trailing_fields():
    sub_item = h("57 00 000A 0001") + b"1" + h("0001") + b"2" + h("0000 FFFF")
    assert decode(rq_with_user_information(sub_item)).user_information == (
        UserInformation(sop_class_common_extended=(SOPClassCommonExtendedNegotiation("1", "2"),))
    )


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (h("08 00 00000004 00000000"), AbortReason.UNRECOGNIZED_PDU),
        (h("00 00 00000000"), AbortReason.UNRECOGNIZED_PDU),
        (
            associate_rq_around(VERIFICATION_CONTEXT_ITEM + item(0x50, b"")),
            AbortReason.INVALID_PDU_PARAMETER_VALUE,  # no application context
        ),
        (
            associate_rq_around(APPLICATION_CONTEXT_ITEM + item(0x50, b"")),
            AbortReason.INVALID_PDU_PARAMETER_VALUE,  # no presentation context
        ),
        (
            associate_rq_around(
                APPLICATION_CONTEXT_ITEM
                + VERIFICATION_CONTEXT_ITEM
                + item(0x60, b"")  # an item type PS3.8 does not define
            ),
            AbortReason.UNRECOGNIZED_PDU_PARAMETER,
        ),
        (
            associate_rq_around(
                APPLICATION_CONTEXT_ITEM
                + item(0x21, h("01 00 00 00") + item(0x40, b"1.2"))  # AC item in RQ
            ),
            AbortReason.UNEXPECTED_PDU_PARAMETER,
        ),
        (
            associate_rq_around(APPLICATION_CONTEXT_ITEM * 2 + VERIFICATION_CONTEXT_ITEM),
            AbortReason.UNEXPECTED_PDU_PARAMETER,
        ),
        (
            associate_rq_around(
                APPLICATION_CONTEXT_ITEM + item(0x20, h("01 00 00 00") + item(0x40, b"1"))
            ),
            AbortReason.INVALID_PDU_PARAMETER_VALUE,  # no abstract syntax
        ),
        (
            associate_rq_around(
                APPLICATION_CONTEXT_ITEM + item(0x20, h("01 00 00 00") + item(0x30, b"1"))
            ),
            AbortReason.INVALID_PDU_PARAMETER_VALUE,  # no transfer syntax
        ),
        (
            associate_rq_around(APPLICATION_CONTEXT_ITEM + h("20 00 0010 01 00 00 00")),
            AbortReason.INVALID_PDU_PARAMETER_VALUE,  # item runs past the PDU
        ),
        (
            rq_with_user_information(h("51 00 0002 0000")),
            AbortReason.INVALID_PDU_PARAMETER_VALUE,  # maximum length too short
        ),
        (
            rq_with_user_information(h("51 00 0004 00004000") * 2),
            AbortReason.UNEXPECTED_PDU_PARAMETER,
        ),
        (
            rq_with_user_information(item(0x40, b"1.2")),
            AbortReason.UNEXPECTED_PDU_PARAMETER,  # transfer syntax in user info
        ),
        (
            rq_with_user_information(h("54 00 0005 0009") + b"1" + h("0101")),
            AbortReason.INVALID_PDU_PARAMETER_VALUE,  # UID length past the sub-item
        ),
        (h("04 00 00000006 00000001 0100"), AbortReason.INVALID_PDU_PARAMETER_VALUE),
        (h("04 00 00000006 00000003 01 02"), AbortReason.INVALID_PDU_PARAMETER_VALUE),
        (h("04 00 00000000"), AbortReason.INVALID_PDU_PARAMETER_VALUE),
        (h("04 00 00000003 000000"), AbortReason.INVALID_PDU_PARAMETER_VALUE),
        (h("05 00 00000005 0000000000"), AbortReason.INVALID_PDU_PARAMETER_VALUE),
        (h("07 00 00000003 000000"), AbortReason.INVALID_PDU_PARAMETER_VALUE),
        (h("01 00 00000004 00010000"), AbortReason.INVALID_PDU_PARAMETER_VALUE),
        (h("03 00 00000005 00010107"), AbortReason.INVALID_PDU_PARAMETER_VALUE),
    ],
)
def test_malformed_pdus_raise_pdu_error_with_reason(data, reason):
    assert_pdu_error(data, reason)


def test_decode_requires_the_length_field_to_match():
    with pytest.raises(PDUError):
        decode(h("05 00 00000004 00000000 00"))
    with pytest.raises(PDUError):
        decode(h("05 00 00000004 000000"))
    with pytest.raises(PDUError):
        decode(h("05 00"))


# --------------------------------------------------------------------------
# Round trips

_KNOWN_ITEM_TYPES = {int(item_type) for item_type in ItemType}

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
uids = st.lists(st.integers(0, 10**8), min_size=1, max_size=8).map(
    lambda parts: ".".join(map(str, parts))
)
ae_titles = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=16
).map(lambda title: title.strip(" "))
version_names = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E),
    min_size=1,
    max_size=16,
)
small_binary = st.binary(max_size=40)

presentation_contexts_rq = st.builds(
    PresentationContextRQ,
    u8,
    uids,
    st.lists(uids, min_size=1, max_size=4).map(tuple),
)
presentation_contexts_ac = st.builds(PresentationContextAC, u8, u8, uids | st.just(""))
async_windows = st.builds(AsyncOperationsWindow, u16, u16)
role_selections = st.builds(RoleSelection, uids, st.booleans(), st.booleans())
sop_class_extended = st.builds(SOPClassExtendedNegotiation, uids, small_binary)
sop_class_common_extended = st.builds(
    SOPClassCommonExtendedNegotiation,
    uids,
    uids,
    st.lists(uids, max_size=3).map(tuple),
)
user_identities_rq = st.builds(UserIdentityRQ, u8, st.booleans(), small_binary, small_binary)
user_identities_ac = st.builds(UserIdentityAC, small_binary)
unknown_sub_items = st.tuples(
    u8.filter(lambda item_type: item_type not in _KNOWN_ITEM_TYPES), small_binary
)


def tuples_of(strategy):
    return st.lists(strategy, max_size=3).map(tuple)


user_information = st.builds(
    UserInformation,
    max_length=st.none() | u32,
    implementation_class_uid=st.none() | uids,
    implementation_version_name=st.none() | version_names,
    async_operations_window=st.none() | async_windows,
    role_selections=tuples_of(role_selections),
    sop_class_extended=tuples_of(sop_class_extended),
    sop_class_common_extended=tuples_of(sop_class_common_extended),
    user_identity_rq=st.none() | user_identities_rq,
    user_identity_ac=st.none() | user_identities_ac,
    unknown_items=tuples_of(unknown_sub_items),
)


def associate_pdus(pdu_class, contexts):
    return st.builds(
        pdu_class,
        called_ae_title=ae_titles,
        calling_ae_title=ae_titles,
        presentation_contexts=st.lists(contexts, min_size=1, max_size=4).map(tuple),
        user_information=user_information,
        application_context=uids,
        protocol_version=u16,
    )


pdvs = st.builds(PresentationDataValue, u8, u8, st.binary(max_size=200))
pdus = st.one_of(
    associate_pdus(AAssociateRQ, presentation_contexts_rq),
    associate_pdus(AAssociateAC, presentation_contexts_ac),
    st.builds(AAssociateRJ, u8, u8, u8),
    st.builds(PDataTF, st.lists(pdvs, min_size=1, max_size=4).map(tuple)),
    st.just(AReleaseRQ()),
    st.just(AReleaseRP()),
    st.builds(AAbort, u8, u8),
)


@given(pdus)
def test_every_pdu_round_trips(pdu):
    data = pdu.encode()
    assert parse_header(data) == (pdu.pdu_type, len(data) - HEADER_LENGTH)
    assert decode(data) == pdu


@given(u8, u8, st.binary(max_size=300))
def test_encode_pdata_round_trips(context_id, control, fragment):
    pdu = decode(encode_pdata(context_id, control, fragment))
    assert pdu == PDataTF((PresentationDataValue(context_id, control, fragment),))


# --------------------------------------------------------------------------
# Robustness: only PDUError ever escapes


def assert_decodes_or_pdu_error(decoder, *args) -> None:
    try:
        pdu = decoder(*args)
    except PDUError as exc:
        assert isinstance(exc.reason, AbortReason)
    else:
        assert isinstance(pdu, PDU)


@given(u8, st.binary(max_size=300))
def test_random_bodies(pdu_type, body):
    assert_decodes_or_pdu_error(decode_pdu, pdu_type, body)


@given(st.binary(max_size=300))
def test_random_whole_pdus(data):
    assert_decodes_or_pdu_error(decode, data)


@given(pdus, st.data())
def test_truncated_pdus(pdu, data):
    encoded = pdu.encode()
    cut = data.draw(st.integers(HEADER_LENGTH, len(encoded) - 1), label="cut")
    assert_decodes_or_pdu_error(decode_pdu, encoded[0], encoded[HEADER_LENGTH:cut])
    assert_pdu_error(encoded[:cut], AbortReason.INVALID_PDU_PARAMETER_VALUE)


@given(pdus, st.data())
def test_single_byte_mutations(pdu, data):
    encoded = bytearray(pdu.encode())
    position = data.draw(st.integers(0, len(encoded) - 1), label="position")
    encoded[position] = data.draw(u8, label="value")
    assert_decodes_or_pdu_error(decode_pdu, encoded[0], bytes(encoded[HEADER_LENGTH:]))


# --------------------------------------------------------------------------
# Cross-check with pynetdicom, an independent implementation


def test_pynetdicom_associate_rq_decodes_and_ours_decodes_in_pynetdicom():
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = "PYNETDICOM"
    primitive.called_ae_title = "DICOMD"
    context = build_context(VERIFICATION, [IMPLICIT_VR_LE, "1.2.840.10008.1.2.1"])
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16382
    class_uid = ImplementationClassUIDNotification()
    class_uid.implementation_class_uid = "1.2.826.0.1.3680043.9.3811"
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = "PYNETDICOM"
    role = SCP_SCU_RoleSelectionNegotiation()
    role.sop_class_uid, role.scu_role, role.scp_role = CT_IMAGE_STORAGE, False, True
    identity = UserIdentityNegotiation()
    identity.user_identity_type = 2
    identity.positive_response_requested = True
    identity.primary_field, identity.secondary_field = b"alice", b"secret"
    primitive.user_information = [max_length, class_uid, version, role, identity]
    theirs = A_ASSOCIATE_RQ(primitive).encode()

    expected = AAssociateRQ(
        called_ae_title="DICOMD",
        calling_ae_title="PYNETDICOM",
        presentation_contexts=(
            PresentationContextRQ(1, VERIFICATION, (IMPLICIT_VR_LE, "1.2.840.10008.1.2.1")),
        ),
        user_information=UserInformation(
            max_length=16382,
            implementation_class_uid="1.2.826.0.1.3680043.9.3811",
            implementation_version_name="PYNETDICOM",
            role_selections=(RoleSelection(CT_IMAGE_STORAGE, False, True),),
            user_identity_rq=UserIdentityRQ(2, True, b"alice", b"secret"),
        ),
    )
    assert decode(theirs) == expected
    # Both order the user information sub-items the same way.
    assert expected.encode() == theirs

    reread = A_ASSOCIATE_RQ()
    reread.decode(expected.encode())
    assert reread.called_ae_title == "DICOMD"
    assert reread.user_information.maximum_length == 16382


def test_pynetdicom_reads_our_p_data_tf():
    theirs = P_DATA_TF()
    theirs.decode(encode_pdata(3, 0x02, b"fragment"))
    [pdv] = theirs.presentation_data_value_items
    assert pdv.presentation_context_id == 3
    assert pdv.presentation_data_value == b"\x02fragment"

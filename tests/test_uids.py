"""UID tables and status codes, checked against pydicom's registry and pynetdicom."""

import re

import pydicom.uid
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom._uid_dict import UID_dictionary
from pydicom.uid import UID
from pynetdicom.sop_class import _STORAGE_CLASSES
from pynetdicom.status import code_to_category

from dicomd import uids
from dicomd.uids import Status, is_encapsulated, status_category

UID_BY_KEYWORD = {entry[4]: uid for uid, entry in UID_dictionary.items() if entry[4]}


@pytest.mark.parametrize(
    ("ours", "keyword"),
    [
        (uids.APPLICATION_CONTEXT, "DICOMApplicationContext"),
        (uids.VERIFICATION, "Verification"),
        (uids.PATIENT_ROOT_FIND, "PatientRootQueryRetrieveInformationModelFind"),
        (uids.PATIENT_ROOT_MOVE, "PatientRootQueryRetrieveInformationModelMove"),
        (uids.PATIENT_ROOT_GET, "PatientRootQueryRetrieveInformationModelGet"),
        (uids.STUDY_ROOT_FIND, "StudyRootQueryRetrieveInformationModelFind"),
        (uids.STUDY_ROOT_MOVE, "StudyRootQueryRetrieveInformationModelMove"),
        (uids.STUDY_ROOT_GET, "StudyRootQueryRetrieveInformationModelGet"),
        (uids.MODALITY_WORKLIST_FIND, "ModalityWorklistInformationModelFind"),
        (uids.IMPLICIT_VR_LITTLE_ENDIAN, "ImplicitVRLittleEndian"),
        (uids.EXPLICIT_VR_LITTLE_ENDIAN, "ExplicitVRLittleEndian"),
        (uids.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, "DeflatedExplicitVRLittleEndian"),
        (uids.EXPLICIT_VR_BIG_ENDIAN, "ExplicitVRBigEndian"),
    ],
)
def test_named_uids_match_the_registry(ours, keyword):
    assert ours == UID_BY_KEYWORD[keyword]


def test_query_retrieve_groups():
    find = {uids.PATIENT_ROOT_FIND, uids.STUDY_ROOT_FIND, uids.MODALITY_WORKLIST_FIND}
    move = {uids.PATIENT_ROOT_MOVE, uids.STUDY_ROOT_MOVE}
    get = {uids.PATIENT_ROOT_GET, uids.STUDY_ROOT_GET}
    assert find == uids.FIND_SOP_CLASSES
    assert move == uids.MOVE_SOP_CLASSES
    assert get == uids.GET_SOP_CLASSES


def test_default_preference_order():
    assert uids.DEFAULT_TRANSFER_SYNTAX_PREFERENCE == (
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.1.2",
        "1.2.840.10008.1.2.1.99",
        "1.2.840.10008.1.2.2",
    )


@pytest.mark.parametrize(
    "keyword",
    [
        "CTImageStorage",
        "MRImageStorage",
        "SecondaryCaptureImageStorage",
        "EnhancedCTImageStorage",
        "DigitalXRayImageStorageForPresentation",
        "BasicTextSRStorage",
        "EncapsulatedPDFStorage",
        "RTPlanStorage",
        "RTBeamsDeliveryInstructionStorage",
        "HangingProtocolStorage",
        "UltrasoundImageStorageRetired",
        "NuclearMedicineImageStorageRetired",
    ],
)
def test_storage_sop_classes_include(keyword):
    assert UID_BY_KEYWORD[keyword] in uids.STORAGE_SOP_CLASSES


@pytest.mark.parametrize(
    "keyword",
    [
        "Verification",
        "StorageCommitmentPushModel",
        "StorageCommitmentPullModel",
        "MediaStorageDirectoryStorage",
        "StudyRootQueryRetrieveInformationModelFind",
        "ModalityWorklistInformationModelFind",
        "BasicGrayscalePrintManagementMeta",
    ],
)
def test_storage_sop_classes_exclude(keyword):
    assert UID_BY_KEYWORD[keyword] not in uids.STORAGE_SOP_CLASSES


def test_storage_sop_classes_cover_pynetdicom_list():
    known_to_pydicom = {uid for uid in _STORAGE_CLASSES.values() if uid in UID_dictionary}
    assert known_to_pydicom <= uids.STORAGE_SOP_CLASSES


def test_storage_sop_classes_are_sop_classes():
    assert all(UID_dictionary[uid][1] == "SOP Class" for uid in uids.STORAGE_SOP_CLASSES)


def test_all_transfer_syntaxes_are_current_registry_entries():
    # Compared entry by entry: importing pynetdicom adds transfer syntaxes to
    # pydicom's registry, so the registry's size depends on import order.
    for ts in uids.ALL_TRANSFER_SYNTAXES - {uids.EXPLICIT_VR_BIG_ENDIAN}:
        _name, kind, _info, retired, _keyword = UID_dictionary[ts]
        assert kind == "Transfer Syntax"
        assert not retired


def test_all_transfer_syntaxes_cover_pydicom():
    assert set(pydicom.uid.AllTransferSyntaxes) <= uids.ALL_TRANSFER_SYNTAXES
    assert set(uids.DEFAULT_TRANSFER_SYNTAX_PREFERENCE) <= uids.ALL_TRANSFER_SYNTAXES
    assert "1.2.840.10008.1.2.1.98" in uids.ALL_TRANSFER_SYNTAXES  # encapsulated uncompressed
    assert "1.2.840.10008.1.2.4.94" in uids.ALL_TRANSFER_SYNTAXES  # JPIP referenced
    assert "1.2.840.10008.1.2.4.52" not in uids.ALL_TRANSFER_SYNTAXES  # retired JPEG
    assert "1.2.840.10008.1.20" not in uids.ALL_TRANSFER_SYNTAXES  # retired Papyrus 3


@pytest.mark.parametrize("ts", sorted(uids.ALL_TRANSFER_SYNTAXES))
def test_is_encapsulated_agrees_with_pydicom(ts):
    assert is_encapsulated(ts) is UID(ts).is_encapsulated


def test_native_syntaxes_are_not_encapsulated():
    assert not any(is_encapsulated(ts) for ts in uids.DEFAULT_TRANSFER_SYNTAX_PREFERENCE)
    assert is_encapsulated("1.2.840.10008.1.2.4.70")
    assert is_encapsulated("1.2.840.10008.1.2.5")


def test_implementation_class_uid_is_a_valid_uuid_derived_uid():
    assert re.fullmatch(r"2\.25\.(0|[1-9][0-9]*)", uids.IMPLEMENTATION_CLASS_UID)
    assert int(uids.IMPLEMENTATION_CLASS_UID[5:]) < 2**128
    assert UID(uids.IMPLEMENTATION_CLASS_UID).is_valid


def test_implementation_version_name():
    assert uids.IMPLEMENTATION_VERSION_NAME == "DICOMD_010"
    assert len(uids.IMPLEMENTATION_VERSION_NAME) <= 16


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (Status.SUCCESS, 0x0000),
        (Status.PENDING, 0xFF00),
        (Status.PENDING_WARNING, 0xFF01),
        (Status.CANCEL, 0xFE00),
        (Status.SOP_CLASS_NOT_SUPPORTED, 0x0122),
        (Status.NOT_AUTHORIZED, 0x0124),
        (Status.UNRECOGNIZED_OPERATION, 0x0211),
        (Status.MISTYPED_ARGUMENT, 0x0212),
        (Status.DUPLICATE_INVOCATION, 0x0210),
        (Status.INVALID_OBJECT_INSTANCE, 0x0117),
        (Status.PROCESSING_FAILURE, 0x0110),
        (Status.OUT_OF_RESOURCES, 0xA700),
        (Status.OUT_OF_RESOURCES_UNABLE_TO_CALCULATE_MATCHES, 0xA701),
        (Status.OUT_OF_RESOURCES_UNABLE_TO_PERFORM_SUB_OPERATIONS, 0xA702),
        (Status.MOVE_DESTINATION_UNKNOWN, 0xA801),
        (Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS, 0xA900),
        (Status.CANNOT_UNDERSTAND, 0xC000),
        (Status.COERCION_OF_DATA_ELEMENTS, 0xB000),
        (Status.ELEMENTS_DISCARDED, 0xB006),
        (Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS_WARNING, 0xB007),
    ],
)
def test_status_values(status, code):
    assert status == code


def test_status_aliases_share_a_value():
    assert Status.SUB_OPERATIONS_COMPLETE_WITH_FAILURES is Status.COERCION_OF_DATA_ELEMENTS
    assert Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS is Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS
    assert Status.UNABLE_TO_PROCESS is Status.CANNOT_UNDERSTAND


@pytest.mark.parametrize(
    ("code", "category"),
    [
        (0x0000, "success"),
        (0xFF00, "pending"),
        (0xFF01, "pending"),
        (0xFE00, "cancel"),
        (0x0001, "warning"),
        (0x0107, "warning"),
        (0x0116, "warning"),
        (0xB000, "warning"),
        (0xB007, "warning"),
        (0xBFFF, "warning"),
        (0x0122, "failure"),
        (0x0211, "failure"),
        (0xA700, "failure"),
        (0xA801, "failure"),
        (0xC000, "failure"),
        (0xCFFF, "failure"),
        (0x1234, "failure"),
    ],
)
def test_status_category(code, category):
    assert status_category(code) == category


@given(st.integers(0, 0xFFFF))
def test_status_category_agrees_with_pynetdicom(code):
    theirs = code_to_category(code)
    ours = status_category(code)
    if theirs == "Unknown":
        assert ours == "failure"
    else:
        assert ours == theirs.lower()


@pytest.mark.parametrize(
    ("text", "comment"),
    [
        ("Query/Retrieve Level '\x82ÚW\x05Y' is not in this model",
         "Query/Retrieve Level '??W?Y' is not in this model"),
        ("a\\b\nc", "a?b c"),
        ("x" * 80, "x" * 64),
    ],
)  # fmt: skip
def test_error_comments_are_one_line_of_the_default_repertoire(text: str, comment: str) -> None:
    assert uids.error_comment(text) == comment
    assert uids.error_comment(text).isascii()

"""Two small plugins and their tests: called directly, then through an in-memory node."""

from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.uid import CTImageStorage, generate_uid
from zope.interface import implementer

from dicomd.interfaces import IFindHandler, IStoreHandler
from dicomd.testing import MemoryNode, find_query, received_instance
from dicomd.uids import PATIENT_ROOT_FIND


@implementer(IStoreHandler)
class RequirePatientID:
    """Refuses instances without a Patient ID (A900), lets the others through."""

    def store(self, instance):
        # One element of the header: cheap enough to read on the reactor.
        header = dcmread(instance.path, specific_tags=["PatientID"])
        if header.get("PatientID"):
            return 0x0000
        status = Dataset()
        status.Status = 0xA900
        status.ErrorComment = "Patient ID is missing"
        return status


@implementer(IFindHandler)
class PatientList:
    """Answers Patient Root queries from a list of patients."""

    find_models = (PATIENT_ROOT_FIND,)

    def __init__(self, patients):
        self.patients = patients

    def find(self, query):
        wanted = query.identifier.get("PatientID", "")
        return [patient for patient in self.patients if wanted in ("", "*", patient.PatientID)]


def patient(patient_id, name):
    ds = Dataset()
    ds.PatientID, ds.PatientName = patient_id, name
    return ds


PATIENTS = [patient("1", "Lovelace^Ada"), patient("2", "Hopper^Grace")]


def ct_image(**attributes):
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


# -- each plugin called directly, with what the node would give it ------------


def test_an_instance_without_patient_id_is_refused(tmp_path: Path) -> None:
    instance = received_instance(ct_image(), tmp_path)
    status = RequirePatientID().store(instance)
    assert (status.Status, status.ErrorComment) == (0xA900, "Patient ID is missing")


def test_an_instance_with_a_patient_id_goes_through(tmp_path: Path) -> None:
    instance = received_instance(ct_image(PatientID="1"), tmp_path)
    assert RequirePatientID().store(instance) == 0x0000


def test_the_list_is_filtered_on_patient_id() -> None:
    query = find_query(
        {"PatientID": "2", "PatientName": ""}, model=PATIENT_ROOT_FIND, level="PATIENT"
    )
    assert [match.PatientName for match in PatientList(PATIENTS).find(query)] == ["Hopper^Grace"]


# -- the same plugins in a node, through a real association --------------------


def test_the_peer_gets_the_refusal(tmp_path: Path) -> None:
    node = MemoryNode([RequirePatientID()], storage_path=tmp_path)
    association = node.associate([CTImageStorage])
    refused = node.result(association.store(ct_image()))
    accepted = node.result(association.store(ct_image(PatientID="1")))
    assert (refused.status, refused.error_comment) == (0xA900, "Patient ID is missing")
    assert accepted.status == 0x0000
    node.result(association.release())


def test_a_find_answers_the_requested_keys() -> None:
    node = MemoryNode([PatientList(PATIENTS)])
    association = node.associate([PATIENT_ROOT_FIND])
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "PATIENT"
    identifier.PatientID = "*"
    identifier.PatientName = ""
    found = node.result(association.find(PATIENT_ROOT_FIND, identifier))
    assert found.status == 0x0000
    assert [(match.PatientID, match.PatientName) for match in found.matches] == [
        ("1", "Lovelace^Ada"),
        ("2", "Hopper^Grace"),
    ]
    node.result(association.release())

"""Every plugin method keeps the promise of `dicomd.interfaces`: it may answer directly,
with a Deferred that fires later, or fail; the node waits for the answer and turns a
failure into the status the standard gives, with the association still up.

Each plugin here answers through a `Reply`, made per test in one of three styles.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.data import get_testdata_file
from twisted.internet import defer
from zope.interface import implementer

from dicomd import uids
from dicomd.client import AssociationRejected, ClientAssociation
from dicomd.interfaces import (
    ACCEPT,
    REJECT_CALLING_AE,
    AssociationRequest,
    FindQuery,
    IAssociationValidator,
    IFindHandler,
    IRetrieveSource,
    IStoreHandler,
    ISupportedKeys,
    ReceivedInstance,
    RetrieveItem,
)
from dicomd.part10 import read_header
from dicomd.testing import MemoryNode, result_of

CT = Path(get_testdata_file("CT_small.dcm"))
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


class Reply:
    """How a plugin answers: ``direct`` returns the value, ``later`` a Deferred the test
    fires after the node has asked, ``failing`` raises."""

    def __init__(self, style: str, value: object) -> None:
        self.style = style
        self.value = value
        self.pending: list[defer.Deferred[object]] = []

    def __call__(self) -> object:
        if self.style == "failing":
            raise RuntimeError("the plugin broke")
        if self.style == "later":
            d: defer.Deferred[object] = defer.Deferred()
            self.pending.append(d)
            return d
        return self.value

    def release(self, node: MemoryNode) -> None:
        """Fire what the plugin left pending, then let the node carry on."""
        node.flush()
        for d in self.pending:
            d.callback(self.value)
        node.flush()


STYLES = ["direct", "later", "failing"]


@implementer(IAssociationValidator)
class Validator:
    def __init__(self, reply: Reply) -> None:
        self.reply = reply

    def validate(self, request: AssociationRequest) -> object:
        return self.reply()


@pytest.mark.parametrize("style", STYLES)
def test_validate(style: str) -> None:
    reply = Reply(style, REJECT_CALLING_AE)
    node = MemoryNode([Validator(reply)])
    connection = node.connect()
    reply.release(node)
    with pytest.raises(AssociationRejected) as rejected:
        result_of(connection.association.established)
    # a failing validator rejects with "no reason given" (1, 1, 1), the others as answered
    expected = (1, 1, 1) if style == "failing" else (1, 1, 3)
    assert (rejected.value.result, rejected.value.source, rejected.value.reason) == expected


@pytest.mark.parametrize("style", ["direct", "later"])
def test_validate_accepting(style: str) -> None:
    reply = Reply(style, ACCEPT)
    node = MemoryNode([Validator(reply)])
    connection = node.connect()
    reply.release(node)
    assert result_of(connection.association.established) is connection.association


@implementer(IStoreHandler)
class Store:
    def __init__(self, reply: Reply) -> None:
        self.reply = reply

    def store(self, instance: ReceivedInstance) -> object:
        return self.reply()


@pytest.mark.parametrize(("style", "status"), [("direct", 0xB000), ("later", 0xB000),
                                               ("failing", 0xC000)])  # fmt: skip
def test_store(style: str, status: int, tmp_path: Path) -> None:
    reply = Reply(style, 0xB000)
    node = MemoryNode([Store(reply)], storage_path=tmp_path)
    association = node.associate([CT_IMAGE, uids.VERIFICATION])
    stored = association.store(CT)
    reply.release(node)
    assert result_of(stored).status == status
    assert node.result(association.echo()) == 0x0000  # the association is still up


def study(patient_id: str) -> Dataset:
    match = Dataset()
    match.PatientID = patient_id
    match.StudyInstanceUID = f"1.2.3.{patient_id[1:]}"
    return match


def study_query(**keys: str) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.PatientID = ""
    identifier.StudyInstanceUID = ""
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    return identifier


@implementer(IFindHandler)
class Find:
    find_models = (uids.STUDY_ROOT_FIND,)

    def __init__(self, reply: Reply) -> None:
        self.reply = reply

    def find(self, query: FindQuery) -> object:
        return self.reply()


@pytest.mark.parametrize(("style", "status"), [("direct", 0x0000), ("later", 0x0000),
                                               ("failing", 0xC000)])  # fmt: skip
def test_find(style: str, status: int) -> None:
    reply = Reply(style, [study("P1"), study("P2")])
    node = MemoryNode([Find(reply)])
    association = node.associate([uids.STUDY_ROOT_FIND, uids.VERIFICATION])
    found = association.find(uids.STUDY_ROOT_FIND, study_query())
    reply.release(node)
    result = result_of(found)
    assert result.status == status
    assert [m.PatientID for m in result.matches] == ([] if style == "failing" else ["P1", "P2"])
    assert node.result(association.echo()) == 0x0000


@implementer(IFindHandler, ISupportedKeys)
class FindWithKeys(Find):
    def __init__(self, reply: Reply) -> None:
        super().__init__(Reply("direct", [study("P1")]))
        self.keys = reply

    def supported_keys(self, level: str) -> object:
        return self.keys()


@pytest.mark.parametrize(("style", "statuses"), [("direct", [0xFF01, 0x0000]),
                                                 ("later", [0xFF01, 0x0000]),
                                                 ("failing", [0xC000])])  # fmt: skip
def test_supported_keys(style: str, statuses: list[int]) -> None:
    reply = Reply(style, frozenset({"PatientID", "StudyInstanceUID"}))
    node = MemoryNode([FindWithKeys(reply)])
    association = node.associate([uids.STUDY_ROOT_FIND, uids.VERIFICATION])
    seen: list[Dataset] = []
    found = association.find(uids.STUDY_ROOT_FIND, study_query(StudyComments=""), seen.append)
    reply.release(node)
    result = result_of(found)
    assert [0xFF01] * len(seen) + [result.status] == statuses
    assert node.result(association.echo()) == 0x0000


@implementer(IRetrieveSource)
class Source:
    retrieve_models = (uids.STUDY_ROOT_GET,)

    def __init__(self, instances: Reply, may_move: Reply) -> None:
        self.instances_reply = instances
        self.may_move_reply = may_move

    def instances(self, query: FindQuery) -> object:
        return self.instances_reply()

    def may_move(self, query: FindQuery, destination: str) -> object:
        return self.may_move_reply()


def ct_item() -> RetrieveItem:
    header = read_header(CT)
    return RetrieveItem(CT, header.sop_class_uid, header.sop_instance_uid, header.transfer_syntax)


def get_ct(node: MemoryNode, folder: Path) -> tuple[ClientAssociation, defer.Deferred]:
    association = node.associate(
        [uids.STUDY_ROOT_GET, CT_IMAGE, uids.VERIFICATION], scp_roles=[CT_IMAGE]
    )
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = "1.2.3"
    return association, association.get(uids.STUDY_ROOT_GET, identifier, folder)


@pytest.mark.parametrize(("style", "status", "completed"), [("direct", 0x0000, 1),
                                                             ("later", 0x0000, 1),
                                                             ("failing", 0xA701, 0)])  # fmt: skip
def test_instances(style: str, status: int, completed: int, tmp_path: Path) -> None:
    reply = Reply(style, [ct_item()])
    node = MemoryNode([Source(reply, Reply("direct", True))])
    association, got = get_ct(node, tmp_path)
    reply.release(node)
    result = result_of(got)
    assert (result.status, result.completed) == (status, completed)
    assert node.result(association.echo()) == 0x0000


@pytest.mark.parametrize(("style", "allowed", "status"), [("direct", False, 0x0124),
                                                          ("later", False, 0x0124),
                                                          ("later", True, 0x0000),
                                                          ("failing", True, 0xA701)])  # fmt: skip
def test_may_move(style: str, allowed: bool, status: int, tmp_path: Path) -> None:
    reply = Reply(style, allowed)
    node = MemoryNode([Source(Reply("direct", [ct_item()]), reply)])
    association, got = get_ct(node, tmp_path)
    reply.release(node)
    assert result_of(got).status == status
    assert node.result(association.echo()) == 0x0000

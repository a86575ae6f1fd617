"""Who may do what: the rules of the authorization section, and the 0124 a request they
do not allow gets."""

from __future__ import annotations

import dataclasses

import pytest
from zope.interface import implementer

from dicomd import uids
from dicomd.config import AuthorizationRule, ConfigError, parse_config
from dicomd.dimse.command import Command, CommandField
from dicomd.interfaces import (
    AssociationRequest,
    IStoreHandler,
    PeerCertificate,
    ReceivedInstance,
    Rejection,
)
from dicomd.node.authorization import Rule, RulesAuthorizer
from dicomd.ul.pdu import AAssociateAC, AAssociateRJ, PresentationContextRQ
from tests.wire import IMPLICIT, Peer, bare_config, request


def association(
    calling: str = "CT01", host: str = "10.0.0.7", user: str | None = None, subject: str = ""
) -> AssociationRequest:
    certificate = PeerCertificate(subject, (), "00" * 32) if subject else None
    return AssociationRequest(
        "DICOMD", calling, host, 40000, (), None, None, None, certificate, user
    )


RULES = RulesAuthorizer(
    [
        Rule(("CT01@10.0.0.7", "subject:CN=CT02,O=Radiology"), frozenset({"echo", "store"})),
        Rule(("user:alice",), frozenset({"find", "move:VIEWER"})),
        Rule(("WS*",), frozenset({"echo"})),  # an AE title that happens to hold a star
        Rule(("*",), frozenset({"echo", "move"})),
    ]
)


@pytest.mark.parametrize(
    ("peer", "operation", "destination", "allowed"),
    [
        (association(), "store", None, True),
        (association(), "find", None, False),  # the first rule that names it decides
        (association(host="10.0.0.8"), "store", None, False),  # another host: the "*" rule
        (association("CT02", subject="CN=CT02,O=Radiology"), "store", None, True),
        (association("X", user="alice"), "find", None, True),
        (association("X", user="alice"), "move", "VIEWER", True),
        (association("X", user="alice"), "move", "ELSEWHERE", False),
        (association("X"), "move", "ELSEWHERE", True),
        (association("WS*"), "move", "ELSEWHERE", False),
    ],
)
def test_the_first_rule_naming_the_peer_decides(peer, operation, destination, allowed) -> None:
    assert RULES.may(peer, operation, destination) is allowed


def test_a_peer_no_rule_names_is_refused_the_association() -> None:
    only_ct = RulesAuthorizer([Rule(("CT01",), frozenset({"echo"}))])
    assert only_ct.validate(association("MR01")) == Rejection(
        1, 1, 3, "no authorization rule names this peer"
    )


def test_rules_from_the_configuration() -> None:
    config = parse_config(
        {"authorization": [{"peers": ["CT01", "user:alice"], "may": ["store", "move:VIEWER"]}]}
    )
    assert config.authorization == (
        AuthorizationRule(("CT01", "user:alice"), frozenset({"store", "move:VIEWER"})),
    )
    assert parse_config({}).authorization is None
    with pytest.raises(ConfigError, match=r"authorization\[0\].may\[0\]: 'delete' is none of"):
        parse_config({"authorization": [{"peers": ["*"], "may": ["delete"]}]})
    with pytest.raises(ConfigError, match=r"authorization\[0\].peers: names no peer"):
        parse_config({"authorization": [{"peers": [], "may": ["echo"]}]})


@implementer(IStoreHandler)
class Keeper:
    """A store handler that notes what it is given."""

    def __init__(self) -> None:
        self.given: list[ReceivedInstance] = []

    def store(self, instance: ReceivedInstance) -> int:
        self.given.append(instance)
        return 0


def test_a_store_the_rules_do_not_allow_is_read_dropped_and_answered_0124(tmp_path) -> None:
    rules = (AuthorizationRule(("ECHOSCU",), frozenset({"echo", "find"})),)
    config = dataclasses.replace(bare_config(), authorization=rules, storage_path=tmp_path)
    keeper = Keeper()
    peer = Peer(config, plugins=(keeper,))
    contexts = (
        PresentationContextRQ(1, uids.VERIFICATION, (IMPLICIT,)),
        PresentationContextRQ(3, "1.2.840.10008.5.1.4.1.1.2", (IMPLICIT,)),
    )
    assert isinstance(peer.associate(request(contexts=contexts)), AAssociateAC)
    store = Command(
        command_field=CommandField.C_STORE_RQ,
        message_id=1,
        affected_sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        affected_sop_instance_uid="1.2.3.4",
        priority=0,
        command_data_set_type=0x0001,
    )
    echo = Command(
        command_field=CommandField.C_ECHO_RQ,
        message_id=2,
        affected_sop_class_uid=uids.VERIFICATION,
        command_data_set_type=0x0101,
    )

    peer.send_command(3, store, b"\x08\x00\x16\x00\x02\x00\x00\x00")
    peer.send_command(1, echo)

    (stored, echoed) = peer.responses()
    assert (stored.status, stored.error_comment) == (0x0124, "ECHOSCU may not store")
    assert echoed.status == 0x0000
    assert keeper.given == []
    assert list(tmp_path.rglob("*.part")) == []


def test_a_peer_the_rules_do_not_name_is_rejected_1_1_3() -> None:
    rules = (AuthorizationRule(("CT01",), frozenset({"echo"})),)
    peer = Peer(dataclasses.replace(bare_config(), authorization=rules))
    peer.send(request().encode())
    assert peer.received() == [AAssociateRJ(1, 1, 3)]

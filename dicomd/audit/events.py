"""The audit messages a DICOM node writes, one builder per IHE ATNA event (PS3.15 A.5.3).

Each builder takes the plain facts of the event (who, when, what) and
returns an `AuditMessage`; the node decides when an event happened, the
trail where its record goes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Final, TypeVar

from dicomd.audit.messages import (
    APPLICATION,
    APPLICATION_ACTIVITY,
    APPLICATION_START,
    APPLICATION_STOP,
    DESTINATION,
    INSTANCES_TRANSFERRED,
    LOGIN,
    LOGOUT,
    MINOR_FAILURE,
    NODE_AUTHENTICATION,
    NODE_ID,
    PATIENT_NUMBER,
    QUERY,
    SECURITY_ALERT,
    SOP_CLASS_UID,
    SOURCE,
    STUDY_INSTANCE_UID,
    SUCCESS,
    USE_OF_RESTRICTED_FUNCTION,
    USER_AUTHENTICATION,
    AuditMessage,
    Code,
    Participant,
    ParticipantObject,
    StudyContents,
)

_T = TypeVar("_T")

QUERY_KEPT: Final = 16 * 1024
"""The bytes of an identifier a Query record carries: the record must fit the 32 KiB every
collector takes (PS3.15 A.6) and a UDP datagram; a longer one is recorded truncated."""


@dataclass(frozen=True, slots=True)
class Peer:
    """The other side of an association: its AE title, address, and verified user if any."""

    ae_title: str
    host: str
    user: str | None = None

    def participant(self, *, requestor: bool, role: Code | None = None) -> Participant:
        """A user is named by the name it logged in with, a node by its AE title."""
        return Participant(
            user_id=self.user or self.ae_title,
            is_requestor=requestor,
            role=role,
            ae_titles=(self.ae_title,),
            network_address=self.host,
        )


@dataclass(frozen=True, slots=True)
class LocalNode:
    """This node as a participant: its process, AE title and host name."""

    process_id: int
    ae_title: str
    host_name: str

    def participant(self, *, requestor: bool = False, role: Code | None = None) -> Participant:
        """UserID is the process ID, as the daemon's own logs and pid file name it (A.5.2.1)."""
        return Participant(
            user_id=str(self.process_id),
            is_requestor=requestor,
            role=role,
            ae_titles=(self.ae_title,),
            user_name="dicomd",
            network_address=self.host_name,
        )


def application_activity(node: LocalNode, time: float, *, started: bool) -> AuditMessage:
    """110100: the node started or stopped."""
    return AuditMessage(
        event=APPLICATION_ACTIVITY,
        action="E",
        outcome=SUCCESS,
        time=time,
        event_types=(APPLICATION_START if started else APPLICATION_STOP,),
        participants=(node.participant(role=APPLICATION),),
    )


def user_authentication(
    node: LocalNode,
    peer: Peer,
    time: float,
    *,
    login: bool,
    refusal: str | None = None,
) -> AuditMessage:
    """110114: an association began (Login) or ended (Logout); a refused Login carries why."""
    return AuditMessage(
        event=USER_AUTHENTICATION,
        action="E",
        outcome=SUCCESS if refusal is None else MINOR_FAILURE,
        outcome_description=refusal,
        time=time,
        event_types=(LOGIN if login else LOGOUT,),
        participants=(peer.participant(requestor=True), node.participant()),
    )


def security_alert(
    node: LocalNode,
    subject: Peer,
    time: float,
    *,
    description: str,
    restricted_function: bool = False,
) -> AuditMessage:
    """110113: something was refused for security: a node that failed to authenticate
    (TLS, AE title, identity, rules) or an operation the peer may not use."""
    return AuditMessage(
        event=SECURITY_ALERT,
        action="E",
        outcome=MINOR_FAILURE,
        outcome_description=description,
        time=time,
        event_types=(USE_OF_RESTRICTED_FUNCTION if restricted_function else NODE_AUTHENTICATION,),
        participants=(node.participant(requestor=False), subject.participant(requestor=True)),
        objects=(
            ParticipantObject(
                object_id=subject.host,
                id_type=NODE_ID,
                type_code="2",
                role="13",  # security resource
                name=subject.user or subject.ae_title or subject.host,
                details=(("Alert Description", description.encode("utf-8", "replace")),),
            ),
        ),
    )


def query(
    node: LocalNode,
    peer: Peer,
    time: float,
    *,
    sop_class_uid: str,
    identifier: bytes,
    transfer_syntax: str,
    succeeded: bool,
) -> AuditMessage:
    """110112: a C-FIND with its identifier as it arrived (base64, with its transfer syntax)."""
    details = [("TransferSyntax", transfer_syntax.encode("ascii"))]
    if len(identifier) > QUERY_KEPT:
        details.append(("QueryTruncatedFrom", str(len(identifier)).encode("ascii")))
    return AuditMessage(
        event=QUERY,
        action="E",
        outcome=SUCCESS if succeeded else MINOR_FAILURE,
        time=time,
        participants=(
            peer.participant(requestor=True, role=SOURCE),
            node.participant(role=DESTINATION),
        ),
        objects=(
            ParticipantObject(
                object_id=sop_class_uid,
                id_type=SOP_CLASS_UID,
                type_code="2",
                role="3",
                query=identifier[:QUERY_KEPT],
                details=tuple(details),
            ),
        ),
    )


@dataclass(frozen=True, slots=True)
class Patient:
    """The patient of a transfer, as its instances or identifier name it."""

    patient_id: str
    name: str | None = None


def instances_transferred(
    source: Participant,
    destination: Participant,
    time: float,
    *,
    studies: Mapping[str, Mapping[str, int]],
    patient: Patient | None,
    action: str,
    succeeded: bool,
    requestor: Participant | None = None,
    description: str | None = None,
) -> AuditMessage:
    """110104: instances went from ``source`` to ``destination``, for one patient.

    ``studies`` maps each Study Instance UID to the count of instances per
    SOP Class UID (empty when only the study is known).  ``action`` is C
    (the receiver created them), R (read: sent from here, or already held).
    """
    participants: Sequence[Participant] = (source, destination)
    if requestor is not None:
        participants = (*participants, requestor)
    objects = [
        ParticipantObject(
            object_id=study,
            id_type=STUDY_INSTANCE_UID,
            type_code="2",
            role="3",
            contents=tuple(StudyContents(uid, count) for uid, count in sorted(classes.items())),
        )
        for study, classes in sorted(studies.items())
    ]
    if patient is not None:
        objects.append(
            ParticipantObject(
                object_id=patient.patient_id,
                id_type=PATIENT_NUMBER,
                type_code="1",
                role="1",
                name=patient.name,
            )
        )
    return AuditMessage(
        event=INSTANCES_TRANSFERRED,
        action=action,
        outcome=SUCCESS if succeeded else MINOR_FAILURE,
        outcome_description=description,
        time=time,
        participants=participants,
        objects=tuple(objects),
    )


def divided(message: AuditMessage, parts: int) -> list[AuditMessage] | None:
    """A record too long for a collector (`MOST_RECORD`) as ``parts`` records (two at least):
    its studies shared between them, or a lone study's SOP classes; every other part (the
    patient, who took part) in each.  None when there is nothing to share (its values are
    already cut short)."""
    studies = [o for o in message.objects if o.id_type == STUDY_INSTANCE_UID]
    others = tuple(o for o in message.objects if o.id_type != STUDY_INSTANCE_UID)
    if len(studies) >= 2:
        groups = [tuple(share) for share in _shares(studies, parts)]
    elif len(studies) == 1 and len(studies[0].contents) >= 2:
        (study,) = studies
        groups = [
            (replace(study, contents=tuple(share)),) for share in _shares(study.contents, parts)
        ]
    else:
        return None
    return [replace(message, objects=(*group, *others)) for group in groups]


def _shares(items: Sequence[_T], parts: int) -> list[Sequence[_T]]:
    """``items`` in ``parts`` runs of nearly equal length: two at least, one item each at most."""
    parts = min(max(parts, 2), len(items))
    return [
        items[len(items) * part // parts : len(items) * (part + 1) // parts]
        for part in range(parts)
    ]

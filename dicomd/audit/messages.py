"""DICOM audit messages (PS3.15 A.5): what happened, who took part, what it touched, as XML.

A message is built from plain values here and serialized in one place,
`to_xml`, with ElementTree: every name and value a peer chose (an AE title,
a user name, a patient's name) is escaped there, never pasted into text.
The events are those of the IHE ATNA profile that a DICOM node reports:

- 110100 Application Activity: the node starts or stops;
- 110114 User Authentication: an association begins (Login) or ends
  (Logout), and whether its identity was accepted;
- 110113 Security Alert: a refused association, TLS handshake or operation;
- 110112 Query: a C-FIND received;
- 110104 DICOM Instances Transferred: instances stored here, or sent by
  C-MOVE or C-GET.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final
from xml.etree.ElementTree import Element, SubElement, tostring


@dataclass(frozen=True, slots=True)
class Code:
    """A coded value (csd-code, codeSystemName, originalText)."""

    code: str
    meaning: str
    scheme: str = "DCM"


APPLICATION_ACTIVITY: Final = Code("110100", "Application Activity")
INSTANCES_TRANSFERRED: Final = Code("110104", "DICOM Instances Transferred")
QUERY: Final = Code("110112", "Query")
SECURITY_ALERT: Final = Code("110113", "Security Alert")
USER_AUTHENTICATION: Final = Code("110114", "User Authentication")

APPLICATION_START: Final = Code("110120", "Application Start")
APPLICATION_STOP: Final = Code("110121", "Application Stop")
LOGIN: Final = Code("110122", "Login")
LOGOUT: Final = Code("110123", "Logout")
NODE_AUTHENTICATION: Final = Code("110126", "Node Authentication")
USE_OF_RESTRICTED_FUNCTION: Final = Code("110132", "Use of Restricted Function")

APPLICATION: Final = Code("110150", "Application")
DESTINATION: Final = Code("110152", "Destination Role ID")
SOURCE: Final = Code("110153", "Source Role ID")

STUDY_INSTANCE_UID: Final = Code("110180", "Study Instance UID")
SOP_CLASS_UID: Final = Code("110181", "SOP Class UID")
NODE_ID: Final = Code("110182", "Node ID")
PATIENT_NUMBER: Final = Code("2", "Patient Number", "RFC-3881")

MOST_RECORD: Final = 32 * 1024
"""The bytes of XML a record holds at most: the 32 KiB every collector takes (PS3.15 A.6), and
well within a UDP datagram.  A record past it is written as several (`events.divided`)."""
MOST_CHARACTERS: Final = 1024
"""A value a peer chose (a name, a UID, a reason) is cut to this many characters, so that
no value can push a record past `MOST_RECORD`: a record too long for its collector is lost."""

SUCCESS: Final = "0"
MINOR_FAILURE: Final = "4"
"""EventOutcomeIndicator: a refusal the node made is a minor failure; security held."""


@dataclass(frozen=True, slots=True)
class Participant:
    """An ActiveParticipant: a process, a node or a person that took part."""

    user_id: str
    is_requestor: bool
    role: Code | None = None
    ae_titles: Sequence[str] = ()
    user_name: str | None = None
    network_address: str | None = None
    """An IP address (NetworkAccessPointTypeCode 2) or, with a letter in it, a host name (1)."""


@dataclass(frozen=True, slots=True)
class StudyContents:
    """The instances of one SOP class in a study: a SOPClass element."""

    sop_class_uid: str
    count: int


@dataclass(frozen=True, slots=True)
class ParticipantObject:
    """A ParticipantObjectIdentification: a study, a patient, a query, a node."""

    object_id: str
    id_type: Code
    type_code: str
    role: str | None = None
    name: str | None = None
    query: bytes | None = None
    details: Sequence[tuple[str, bytes]] = ()
    contents: Sequence[StudyContents] = ()


@dataclass(frozen=True, slots=True)
class AuditMessage:
    """One audit record, before the source that reports it is named."""

    event: Code
    action: str
    outcome: str
    time: float
    participants: Sequence[Participant]
    event_types: Sequence[Code] = ()
    outcome_description: str | None = None
    objects: Sequence[ParticipantObject] = field(default=())


@dataclass(frozen=True, slots=True)
class AuditSource:
    """Who reports: AuditSourceID and the optional AuditEnterpriseSiteID."""

    source_id: str
    enterprise_site: str | None = None


def to_xml(message: AuditMessage, source: AuditSource) -> bytes:
    """The message as one line of UTF-8 XML, in the order the A.5.1 schema gives."""
    root = Element("AuditMessage")
    event = SubElement(
        root,
        "EventIdentification",
        EventActionCode=message.action,
        EventDateTime=_date_time(message.time),
        EventOutcomeIndicator=message.outcome,
    )
    _code(event, "EventID", message.event)
    for event_type in message.event_types:
        _code(event, "EventTypeCode", event_type)
    if message.outcome_description:
        SubElement(event, "EventOutcomeDescription").text = _text(message.outcome_description)
    for participant in message.participants:
        _participant(root, participant)
    attributes = {"AuditSourceID": _text(source.source_id)}
    if source.enterprise_site:
        attributes["AuditEnterpriseSiteID"] = _text(source.enterprise_site)
    audit_source = SubElement(root, "AuditSourceIdentification", attributes)
    SubElement(audit_source, "AuditSourceTypeCode", {"csd-code": "4"})  # application server
    for participant_object in message.objects:
        _object(root, participant_object)
    return tostring(root, encoding="utf-8", xml_declaration=False)


def _participant(root: Element, participant: Participant) -> None:
    attributes = {
        "UserID": _text(participant.user_id),
        "UserIsRequestor": "true" if participant.is_requestor else "false",
    }
    if participant.ae_titles:
        attributes["AlternativeUserID"] = _text("AETITLES=" + ";".join(participant.ae_titles))
    if participant.user_name:
        attributes["UserName"] = _text(participant.user_name)
    address = participant.network_address
    if address:
        attributes["NetworkAccessPointID"] = _text(address)
        attributes["NetworkAccessPointTypeCode"] = "1" if _is_host_name(address) else "2"
    element = SubElement(root, "ActiveParticipant", attributes)
    if participant.role is not None:
        _code(element, "RoleIDCode", participant.role)


def _object(root: Element, participant_object: ParticipantObject) -> None:
    attributes = {
        "ParticipantObjectID": _text(participant_object.object_id),
        "ParticipantObjectTypeCode": participant_object.type_code,
    }
    if participant_object.role is not None:
        attributes["ParticipantObjectTypeCodeRole"] = participant_object.role
    element = SubElement(root, "ParticipantObjectIdentification", attributes)
    _code(element, "ParticipantObjectIDTypeCode", participant_object.id_type)
    if participant_object.query is not None:
        SubElement(element, "ParticipantObjectQuery").text = base64.b64encode(
            participant_object.query
        ).decode("ascii")
    else:
        # The schema wants a name or a query; a study's name is its UID.
        name = participant_object.name or participant_object.object_id
        SubElement(element, "ParticipantObjectName").text = _text(name)
    for kind, value in participant_object.details:
        SubElement(
            element,
            "ParticipantObjectDetail",
            type=kind,
            value=base64.b64encode(value[:MOST_CHARACTERS]).decode("ascii"),
        )
    if participant_object.contents:
        description = SubElement(element, "ParticipantObjectDescription")
        for contents in participant_object.contents:
            SubElement(
                description,
                "SOPClass",
                UID=_text(contents.sop_class_uid),
                NumberOfInstances=str(contents.count),
            )


def _code(parent: Element, name: str, code: Code) -> None:
    SubElement(
        parent,
        name,
        {"csd-code": code.code, "codeSystemName": code.scheme, "originalText": code.meaning},
    )


def _date_time(seconds: float) -> str:
    """xsd:dateTime with its time zone (A.5.2.5), in UTC to the millisecond."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _is_host_name(address: str) -> bool:
    return any(character.isalpha() for character in address) and ":" not in address


_NOT_ON_ONE_LINE = re.compile(
    "[^\t\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"
)
"""What XML 1.0 cannot carry (control characters, surrogates, U+FFFE and U+FFFF) and what a
reader may take for the end of a line (C1 controls with NEL, U+2028, U+2029)."""


def cut(value: str) -> str:
    """``value`` as a record holds it: past `MOST_CHARACTERS` it is cut, and its last
    character (U+2026) says so.  What a node keeps for a record to come, it keeps cut."""
    if len(value) <= MOST_CHARACTERS:
        return value
    return value[: MOST_CHARACTERS - 1] + "\u2026"


def _text(value: str) -> str:
    """A value as one line of XML 1.0 may carry it, whatever a peer made of it: characters
    it cannot carry become U+FFFD, and a long one is `cut`."""
    return _NOT_ON_ONE_LINE.sub("\ufffd", cut(value))

"""Reading audit records in tests: each is checked against the PS3.15 A.5.1 schema, then
reduced to the fields tests compare."""

from __future__ import annotations

import base64
import functools
from dataclasses import dataclass
from pathlib import Path

import rnc2rng
from lxml import etree

SCHEMA = Path(__file__).with_name("audit-message.rnc")


@functools.cache
def schema() -> etree.RelaxNG:
    return etree.RelaxNG(etree.fromstring(rnc2rng.dumps(rnc2rng.load(str(SCHEMA))).encode()))


@dataclass(frozen=True)
class Participant:
    user_id: str
    requestor: bool
    role: str | None
    alternative: str | None
    address: str | None


@dataclass(frozen=True)
class Record:
    """One audit message: its event, outcome and the parts tests look at."""

    event_id: str
    event_type: str | None
    action: str
    outcome: str
    description: str | None
    participants: tuple[Participant, ...]
    objects: tuple[etree._Element, ...]
    source_id: str

    def object_ids(self, id_type: str) -> list[str]:
        return [
            element.get("ParticipantObjectID")
            for element in self.objects
            if element.find("ParticipantObjectIDTypeCode").get("csd-code") == id_type
        ]

    def query(self) -> bytes:
        (element,) = [o.find("ParticipantObjectQuery") for o in self.objects]
        return base64.b64decode(element.text)

    def instance_counts(self) -> dict[str, dict[str, int]]:
        """Study UID -> SOP Class UID -> NumberOfInstances."""
        return {
            study.get("ParticipantObjectID"): {
                sop_class.get("UID"): int(sop_class.get("NumberOfInstances"))
                for sop_class in study.iter("SOPClass")
            }
            for study in self.objects
            if study.find("ParticipantObjectIDTypeCode").get("csd-code") == "110180"
        }


def parse_record(xml: bytes) -> Record:
    """Raises AssertionError, naming the schema's complaint, for a record that breaks it."""
    root = etree.fromstring(xml)
    valid = schema().validate(root)
    assert valid, f"{schema().error_log}: {xml!r}"
    event = root.find("EventIdentification")
    event_type = event.find("EventTypeCode")
    description = event.find("EventOutcomeDescription")
    return Record(
        event_id=event.find("EventID").get("csd-code"),
        event_type=event_type.get("csd-code") if event_type is not None else None,
        action=event.get("EventActionCode"),
        outcome=event.get("EventOutcomeIndicator"),
        description=description.text if description is not None else None,
        participants=tuple(
            Participant(
                element.get("UserID"),
                element.get("UserIsRequestor") == "true",
                role.get("csd-code") if (role := element.find("RoleIDCode")) is not None else None,
                element.get("AlternativeUserID"),
                element.get("NetworkAccessPointID"),
            )
            for element in root.iter("ActiveParticipant")
        ),
        objects=tuple(root.iter("ParticipantObjectIdentification")),
        source_id=root.find("AuditSourceIdentification").get("AuditSourceID"),
    )


def records_in(path: Path) -> list[Record]:
    """The records of an audit file, one a line."""
    return [parse_record(line) for line in path.read_bytes().splitlines()]


def summary(records: list[Record]) -> list[tuple[str, str | None, str]]:
    """(EventID, EventTypeCode, EventOutcomeIndicator) of each record, in order."""
    return [(record.event_id, record.event_type, record.outcome) for record in records]

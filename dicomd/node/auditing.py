"""What one association adds to the node's audit trail, and when.

- Accepted: User Authentication, Login; released or aborted: Logout.
- Rejected: a Security Alert (Node Authentication) naming why; a refused
  identity is also a failed Login.
- A TLS handshake that failed: a Security Alert.
- An operation the peer may not use: a Security Alert (Use of Restricted
  Function), and nothing else for it.
- Each C-FIND: a Query record with the identifier as it arrived.
- C-STOREs: one Instances Transferred record per patient and outcome,
  counting instances by study and SOP class, written when the association
  ends (PS3.15 A.5.3.7 records the transfer's completion); a peer that stores
  many patients on one association has its records written every
  `_MOST_GROUPS` groups.
- Each C-MOVE and C-GET: an Instances Transferred record from this node to
  the destination, naming the studies and patient of the identifier.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from pydicom import Dataset

from dicomd import uids
from dicomd.audit.events import (
    Patient,
    Peer,
    instances_transferred,
    query,
    security_alert,
    user_authentication,
)
from dicomd.audit.messages import DESTINATION, SOURCE, cut
from dicomd.audit.trail import AuditTrail
from dicomd.dimse.association import Request
from dicomd.dimse.command import CommandField
from dicomd.dimse.storage import CheckedFile

AUDITED_ATTRIBUTES: Final = ("PatientID", "PatientName", "StudyInstanceUID")
"""What a store record names; the walker collects them as instances stream in."""

_MOST_GROUPS: Final = 256
"""Studies one record names at most before it is written (stores), or at all (a C-MOVE or
C-GET: an identifier of 1 MiB may list 100 000 of them, each record costs the reactor
some 25 us a study and the trail 150 bytes)."""

_StoreKey = tuple[str, str | None, bool, str]  # patient ID, name, succeeded, action


@dataclass(frozen=True, slots=True)
class _Retrieval:
    """What a C-MOVE or C-GET asked for: the studies its record names, and how many more."""

    studies: dict[str, dict[str, int]]
    patient: Patient | None
    unnamed: int


class AssociationAudit:
    """The audit records of one association offered to the node."""

    def __init__(self, trail: AuditTrail, host: str) -> None:
        self.trail = trail
        self.peer = Peer("", host)
        self.logged_in = False
        self._stored: dict[_StoreKey, dict[str, dict[str, int]]] = {}
        self._retrieved: dict[int, _Retrieval] = {}

    @property
    def enabled(self) -> bool:
        return self.trail.enabled

    def named(self, calling_ae_title: str, user: str | None = None) -> None:
        """The peer's AE title, and its user once authenticated."""
        self.peer = Peer(calling_ae_title, self.peer.host, user)

    # -- the association ----------------------------------------------------

    def accepted(self) -> None:
        self.logged_in = True
        self.trail.opened(self)
        self.trail.record(
            user_authentication(self.trail.node, self.peer, self.trail.now(), login=True)
        )

    def rejected(self, why: str, *, identity: bool) -> None:
        now = self.trail.now()
        if identity:
            self.trail.record(
                user_authentication(self.trail.node, self.peer, now, login=True, refusal=why)
            )
        self.trail.record(security_alert(self.trail.node, self.peer, now, description=why))

    def tls_refused(self, why: str) -> None:
        self.trail.record(
            security_alert(
                self.trail.node, self.peer, self.trail.now(), description=f"TLS handshake: {why}"
            )
        )

    def ended(self) -> None:
        """The association ended, or the node stops while it is open: once, either way."""
        if not self.logged_in:
            return
        self.logged_in = False
        self.trail.closed(self)
        self._write_stores()
        self.trail.record(
            user_authentication(self.trail.node, self.peer, self.trail.now(), login=False)
        )

    # -- operations -----------------------------------------------------------

    def refused(self, what: str) -> None:
        self.trail.record(
            security_alert(
                self.trail.node,
                self.peer,
                self.trail.now(),
                description=what,
                restricted_function=True,
            )
        )

    def identifier_read(self, request: Request, identifier: Dataset) -> None:
        """Remember what a C-MOVE or C-GET asks for, to name it in its record."""
        if request.command.command_field in (CommandField.C_MOVE_RQ, CommandField.C_GET_RQ):
            asked = dict.fromkeys(_values(identifier, "StudyInstanceUID"))
            studies = {uid: {} for uid in itertools.islice(asked, _MOST_GROUPS)}
            self._retrieved[request.command.message_id or 0] = _Retrieval(
                studies, _patient(identifier), len(asked) - len(studies)
            )

    def responded(self, request: Request, status: int, fields: Mapping[str, Any]) -> None:
        """A final response went out: record the operation it ends."""
        category = uids.status_category(status)
        if category == "pending" or status == uids.Status.NOT_AUTHORIZED:
            return  # a refusal was recorded as a security alert
        succeeded = category in ("success", "warning", "cancel")
        command = request.command
        field_value = command.command_field
        if field_value == CommandField.C_STORE_RQ:
            self._stored_one(request, category)
        elif field_value == CommandField.C_FIND_RQ:
            self.trail.record(
                query(
                    self.trail.node,
                    self.peer,
                    self.trail.now(),
                    sop_class_uid=command.affected_sop_class_uid or "",
                    identifier=request.data if isinstance(request.data, bytes) else b"",
                    transfer_syntax=request.context.transfer_syntax,
                    succeeded=succeeded,
                )
            )
        elif field_value in (CommandField.C_MOVE_RQ, CommandField.C_GET_RQ):
            self._retrieved_all(request, succeeded and category != "warning", fields)

    def _stored_one(self, request: Request, category: str) -> None:
        command = request.command
        attributes = _attributes(request.data)
        patient = _patient(attributes) if attributes is not None else None
        study = _text_of(attributes, "StudyInstanceUID") if attributes is not None else ""
        key: _StoreKey = (
            patient.patient_id if patient else "",
            patient.name if patient else None,
            category != "failure",
            "C" if category == "success" else "R",
        )
        studies = self._stored.setdefault(key, defaultdict(lambda: defaultdict(int)))
        studies[study or "unknown"][command.affected_sop_class_uid or ""] += 1
        if sum(len(studies) for studies in self._stored.values()) >= _MOST_GROUPS:
            self._write_stores()

    def _write_stores(self) -> None:
        stored, self._stored = self._stored, {}
        now = self.trail.now()
        for (patient_id, name, succeeded, action), studies in stored.items():
            self.trail.record(
                instances_transferred(
                    self.peer.participant(requestor=True, role=SOURCE),
                    self.trail.node.participant(role=DESTINATION),
                    now,
                    studies=studies,
                    patient=Patient(patient_id, name) if patient_id or name else None,
                    action=action,
                    succeeded=succeeded,
                )
            )

    def _retrieved_all(self, request: Request, succeeded: bool, fields: Mapping[str, Any]) -> None:
        command = request.command
        retrieval = self._retrieved.pop(command.message_id or 0, _Retrieval({}, None, 0))
        destination_ae = command.move_destination
        if destination_ae is None:  # C-GET: the peer receives
            destination = self.peer.participant(requestor=True, role=DESTINATION)
            requestor = None
        else:
            destination = Peer(destination_ae, "").participant(requestor=False, role=DESTINATION)
            requestor = self.peer.participant(requestor=True)
        counts = ", ".join(
            f"{fields.get(f'number_of_{kind}_suboperations') or 0} {kind}"
            for kind in ("completed", "warning", "failed")
        )
        if retrieval.unnamed:
            counts += f"; {retrieval.unnamed} more studies asked for are not named"
        self.trail.record(
            instances_transferred(
                self.trail.node.participant(role=SOURCE),
                destination,
                self.trail.now(),
                studies=retrieval.studies,
                patient=retrieval.patient,
                action="R",
                succeeded=succeeded,
                requestor=requestor,
                description=counts,
            )
        )


def _attributes(data: object) -> Dataset | None:
    """What the walker collected of a stored instance, even when a peer made another wanted
    attribute too long to collect: one 70 KB value must not hide the patient's ID."""
    if isinstance(data, CheckedFile) and data.checker is not None:
        return data.checker.collected_in_part
    return None


def _values(dataset: Dataset, keyword: str) -> list[str]:
    value = _read(dataset, keyword)
    if value is None or value == "":
        return []
    return [cut(str(value))] if isinstance(value, str) else [cut(str(item)) for item in value]


def _text_of(dataset: Dataset, keyword: str) -> str:
    """A value as the records to come hold it: an association keeps up to 256 groups of
    them, and a peer's may be 64 KiB long."""
    return cut(str(_read(dataset, keyword) or ""))


def _patient(dataset: Dataset) -> Patient | None:
    """The patient a data set names, or None when it names none."""
    patient_id = _text_of(dataset, "PatientID")
    name = _text_of(dataset, "PatientName") or None
    if not patient_id and name is None:
        return None
    return Patient(patient_id, name)


def _read(dataset: Dataset, keyword: str) -> Any:
    """A value decoded by pydicom as it is read; one a peer made undecodable counts as absent:
    the record is still written, without it."""
    try:
        return dataset.get(keyword)
    except Exception:  # pydicom raises many kinds on a malformed value
        return None

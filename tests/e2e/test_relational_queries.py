"""Relational queries and retrievals against the real daemon (PS3.4 C.4.1.2.2, C.4.2.2.2).

Two archives hold the same two studies (CT, written for the module: three
instances in two series, and one instance): one with the default
``query_retrieve.relational: negotiated``, one with ``always``.  pynetdicom
negotiates relational queries and retrieval in SOP Class Extended
Negotiation and reads the daemon's answer in the A-ASSOCIATE-AC; dcmtk's
``findscu`` and ``movescu`` never negotiate it.  C-MOVE sends to a pynetdicom
storage SCP in this process, which records what it receives.
"""

from __future__ import annotations

import re
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmwrite
from pynetdicom import AE, build_context, build_role, evt
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import SOPClassExtendedNegotiation
from pynetdicom.sop_class import (
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from tests.support.archive import archive_of, archive_plugin
from tests.support.daemons import RunningDaemon, start_daemon
from tests.support.datasets import ct_dataset
from tests.support.dcmtk import run_dcmtk
from tests.support.processes import LOCALHOST
from tests.support.pynetdicom_peers import pynetdicom_scp

pytestmark = pytest.mark.usefixtures("report_module_daemons")

PENDING, SUCCESS, IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xFF00, 0x0000, 0xA900
FIND = StudyRootQueryRetrieveInformationModelFind
MOVE = StudyRootQueryRetrieveInformationModelMove
GET = StudyRootQueryRetrieveInformationModelGet
PATIENT_FIND = PatientRootQueryRetrieveInformationModelFind
STUDY, OTHER_STUDY = "1.2.826.0.1.3680043.2.1125.7.1", "1.2.826.0.1.3680043.2.1125.7.2"
DESTINATION = "PYNETDICOM"


@dataclass
class Destination:
    """The pynetdicom storage SCP C-MOVE sends to: what it received, by SOP Instance UID."""

    port: int
    received: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self) -> list[str]:
        with self.lock:
            taken, self.received[:] = sorted(self.received), []
        return taken


@pytest.fixture(scope="module")
def destination() -> Iterator[Destination]:
    holder: list[Destination] = []

    def stored(event: Any) -> int:
        with holder[0].lock:
            holder[0].received.append(str(event.request.AffectedSOPInstanceUID))
        return SUCCESS

    with pynetdicom_scp([CTImageStorage], [(evt.EVT_C_STORE, stored)]) as port:
        holder.append(Destination(port))
        yield holder[0]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """The module's instances as Part 10 files, by Study Instance UID."""
    folder = tmp_path_factory.mktemp("relational-files")
    layout = [
        (STUDY, f"{STUDY}.1", 1),
        (STUDY, f"{STUDY}.1", 2),
        (STUDY, f"{STUDY}.2", 1),
        (OTHER_STUDY, f"{OTHER_STUDY}.1", 1),
    ]
    files: dict[str, list[Path]] = {}
    for study_uid, series_uid, number in layout:
        dataset = ct_dataset(study_uid, series_uid, number)
        path = folder / f"{dataset.SOPInstanceUID}.dcm"
        dcmwrite(path, dataset, enforce_file_format=True)
        files.setdefault(study_uid, []).append(path)
    return files


def uids_of(written: dict[str, list[Path]], study_uid: str) -> list[str]:
    return sorted(path.stem for path in written[study_uid])


def start_archive(
    folder: Path,
    module_daemons: list[RunningDaemon],
    destination: Destination,
    written: dict[str, list[Path]],
    relational: str,
) -> RunningDaemon:
    overrides = {
        "plugins": [archive_plugin()],
        "destinations": {DESTINATION: {"host": LOCALHOST, "port": destination.port}},
        "query_retrieve": {"relational": relational},
    }
    daemon = start_daemon(folder, overrides)
    module_daemons.append(daemon)
    paths = [str(path) for paths in written.values() for path in paths]
    stored = run_dcmtk("storescu", "-aec", daemon.ae_title, LOCALHOST, str(daemon.port), *paths)
    assert stored.returncode == 0, stored.stdout + stored.stderr
    assert set(archive_of(daemon).indexed()) == {Path(path).stem for path in paths}
    return daemon


@pytest.fixture(scope="module")
def negotiated(
    tmp_path_factory: pytest.TempPathFactory,
    module_daemons: list[RunningDaemon],
    destination: Destination,
    written: dict[str, list[Path]],
) -> RunningDaemon:
    folder = tmp_path_factory.mktemp("negotiated")
    return start_archive(folder, module_daemons, destination, written, "negotiated")


@pytest.fixture(scope="module")
def always(
    tmp_path_factory: pytest.TempPathFactory,
    module_daemons: list[RunningDaemon],
    destination: Destination,
    written: dict[str, list[Path]],
) -> RunningDaemon:
    folder = tmp_path_factory.mktemp("always")
    return start_archive(folder, module_daemons, destination, written, "always")


# pynetdicom, negotiating


def relational_item(sop_class_uid: str, info: bytes = b"\x01") -> SOPClassExtendedNegotiation:
    item = SOPClassExtendedNegotiation()
    item.sop_class_uid = sop_class_uid
    item.service_class_application_information = info
    return item


def associate(
    daemon: RunningDaemon,
    *extended: SOPClassExtendedNegotiation,
    handlers: list[tuple[Any, Any]] | None = None,
) -> Association:
    """A pynetdicom association proposing Study Root and Patient Root FIND, Study Root MOVE
    and GET, and CT storage with the SCP role (for C-GET)."""
    ae = AE(ae_title="RELATIONAL")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    contexts = [build_context(uid) for uid in (FIND, PATIENT_FIND, MOVE, GET, CTImageStorage)]
    assoc = ae.associate(
        LOCALHOST,
        daemon.port,
        contexts=contexts,
        ae_title=daemon.ae_title,
        ext_neg=[*extended, build_role(CTImageStorage, scp_role=True)],
        evt_handlers=handlers or [],
    )
    assert assoc.is_established
    return assoc


def image_query(study_uid: str) -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID = study_uid
    query.SOPInstanceUID = ""
    return query


def find(assoc: Association, query: Dataset, model: str = FIND) -> tuple[list[int], list[str]]:
    """Every status of a C-FIND in order, and the SOP Instance UIDs (or Study Instance UIDs,
    for a study query) of its matches, sorted."""
    statuses, matches = [], []
    for status, match in assoc.send_c_find(query, model):
        statuses.append(int(status.Status))
        if match is not None:
            unique = match.get("SOPInstanceUID") or match.get("StudyInstanceUID")
            matches.append(str(unique))
    return statuses, sorted(matches)


def answered(count: int) -> list[int]:
    return [PENDING] * count + [SUCCESS]


def test_the_a_associate_ac_agrees_to_what_pynetdicom_negotiated(
    negotiated: RunningDaemon,
) -> None:
    items = [relational_item(FIND, b"\x01\x01\x00\x00"), relational_item(MOVE)]
    assoc = associate(negotiated, *items, relational_item(GET, b"\x00"))
    try:
        assert assoc.acceptor.sop_class_extended == {
            FIND: b"\x01",
            MOVE: b"\x01",
            GET: b"\x00",
        }
    finally:
        assoc.release()
    assoc = associate(negotiated)
    try:
        assert assoc.acceptor.sop_class_extended == {}
    finally:
        assoc.release()


def test_a_negotiated_image_query_with_only_the_study_lists_every_instance(
    negotiated: RunningDaemon, written: dict[str, list[Path]]
) -> None:
    assoc = associate(negotiated, relational_item(FIND), relational_item(PATIENT_FIND))
    try:
        statuses, matches = find(assoc, image_query(STUDY))
        assert (statuses, matches) == (answered(3), uids_of(written, STUDY))
        patientless = Dataset()
        patientless.QueryRetrieveLevel = "STUDY"
        patientless.StudyInstanceUID = ""
        statuses, matches = find(assoc, patientless, PATIENT_FIND)
        assert (statuses, matches) == (answered(2), sorted([STUDY, OTHER_STUDY]))
    finally:
        assoc.release()


def test_pynetdicom_without_negotiation_gets_a900(negotiated: RunningDaemon) -> None:
    assoc = associate(negotiated, relational_item(MOVE))  # not for FIND
    try:
        assert find(assoc, image_query(STUDY)) == ([IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS], [])
    finally:
        assoc.release()


def test_a_negotiated_move_with_only_the_study_sends_every_instance(
    negotiated: RunningDaemon, destination: Destination, written: dict[str, list[Path]]
) -> None:
    destination.take()
    assoc = associate(negotiated, relational_item(MOVE))
    try:
        responses = list(assoc.send_c_move(image_query(STUDY), DESTINATION, MOVE))
    finally:
        assoc.release()
    final = responses[-1][0]
    assert (final.Status, final.NumberOfCompletedSuboperations) == (SUCCESS, 3)
    assert destination.take() == uids_of(written, STUDY)


def test_a_negotiated_get_with_only_the_study_sends_every_instance(
    negotiated: RunningDaemon, written: dict[str, list[Path]]
) -> None:
    received: list[str] = []

    def stored(event: Any) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return SUCCESS

    assoc = associate(negotiated, relational_item(GET), handlers=[(evt.EVT_C_STORE, stored)])
    try:
        responses = list(assoc.send_c_get(image_query(OTHER_STUDY), GET))
        final = responses[-1][0]
        assert (final.Status, final.NumberOfCompletedSuboperations) == (SUCCESS, 1)
        responses = list(assoc.send_c_get(image_query(STUDY), GET))
        final = responses[-1][0]
        assert (final.Status, final.NumberOfCompletedSuboperations) == (SUCCESS, 3)
    finally:
        assoc.release()
    assert sorted(received) == sorted(uids_of(written, OTHER_STUDY) + uids_of(written, STUDY))


# dcmtk, which never negotiates

_STATUS = re.compile(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})")
_COMPLETED = re.compile(r"Completed Suboperations\s*:\s*(\d+)")


def statuses_of(done: subprocess.CompletedProcess[str]) -> list[int]:
    output = done.stdout + done.stderr
    statuses = [int(status, 16) for status in _STATUS.findall(output)]
    assert statuses, output
    return statuses


def findscu(daemon: RunningDaemon, study_uid: str) -> list[int]:
    """findscu's statuses for an IMAGE query of Study Root naming only the study."""
    keys = ["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={study_uid}", "SOPInstanceUID"]
    done = run_dcmtk(
        "findscu", "-S", "-d", "-aec", daemon.ae_title,
        *(arg for key in keys for arg in ("-k", key)), LOCALHOST, str(daemon.port),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return statuses_of(done)


def movescu(daemon: RunningDaemon, study_uid: str) -> tuple[list[int], int | None]:
    """movescu's statuses for an IMAGE move of Study Root naming only the study, and the
    completed count of its final response."""
    keys = ["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={study_uid}"]
    done = run_dcmtk(
        "movescu", "-S", "-d", "-aec", daemon.ae_title, "-aem", DESTINATION,
        *(arg for key in keys for arg in ("-k", key)), LOCALHOST, str(daemon.port),
        timeout=60,
    )  # fmt: skip
    completed = _COMPLETED.findall(done.stdout + done.stderr)
    return statuses_of(done), int(completed[-1]) if completed else None


def test_findscu_and_movescu_without_negotiation_get_a900(
    negotiated: RunningDaemon, destination: Destination
) -> None:
    destination.take()
    assert findscu(negotiated, STUDY) == [IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS]
    statuses, _ = movescu(negotiated, STUDY)
    assert statuses == [IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS]
    assert destination.take() == []
    assert "Traceback" not in negotiated.log_text()  # a peer's identifier is no fault of ours


def test_relational_always_answers_findscu_and_movescu(
    always: RunningDaemon, destination: Destination, written: dict[str, list[Path]]
) -> None:
    destination.take()
    assert findscu(always, STUDY) == answered(3)
    statuses, completed = movescu(always, STUDY)
    assert (statuses[-1], completed) == (SUCCESS, 3)
    assert destination.take() == uids_of(written, STUDY)

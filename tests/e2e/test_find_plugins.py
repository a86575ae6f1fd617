"""C-FIND served by a site's own find handlers, written the way the README shows.

The site's module is written to a temporary folder on the daemon's
PYTHONPATH.  ``Worklist`` answers Modality Worklist queries from a list of
data sets, as the seed library's ``cfind`` handler does; ``Slow`` answers
through a Deferred fired two seconds later by the reactor, to show that a
query in progress stalls nothing else.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.support.archive import archive_plugin
from tests.support.dcmtk import run_echoscu

from .test_find_archive import SUCCESS, assert_success, findscu, raw_name

UNABLE_TO_PROCESS = 0xC000
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
SLOW_DELAY = 2.0

SITE_WORKLIST = '''
"""A site's Modality Worklist, in a list."""

from pathlib import Path

from pydicom import Dataset
from twisted.internet import defer, reactor
from zope.interface import implementer

from dicomd.interfaces import IFindHandler, InvalidIdentifier

MODALITY_WORKLIST = "1.2.840.10008.5.1.4.31"

SCHEDULE = [
    ("Carmack^John", "1", "A001", "CT"),
    ("Kernighan^Brian", "2", "A002", "MR"),
    ("Torvalds^Linus", "3", "A003", "CT"),
    ("Van Rossum^Guido", "4", "A004", "CT"),
    ("Valim^José", "5", "A005", "MR"),
]


def scheduled(name, patient_id, accession, modality, station):
    step = Dataset()
    step.Modality = modality
    step.ScheduledStationAETitle = station
    step.ScheduledProcedureStepStartDate = "20240301"
    item = Dataset()
    item.PatientName = name
    item.PatientID = patient_id
    item.AccessionNumber = accession
    item.ScheduledProcedureStepSequence = [step]
    return item


@implementer(IFindHandler)
class Worklist:
    """Today's schedule, filtered by modality; every data set, whatever else was asked."""

    find_models = (MODALITY_WORKLIST,)

    def __init__(self, station="CT1"):
        self.station = station

    def find(self, query):
        asked = query.identifier
        if asked.get("PatientID") == "BROKEN":
            raise RuntimeError("the schedule is unavailable")
        steps = asked.get("ScheduledProcedureStepSequence")
        if not steps:
            raise InvalidIdentifier("a worklist query needs a Scheduled Procedure Step")
        modality = steps[0].get("Modality") or ""
        return [
            scheduled(name, patient_id, accession, kind, self.station)
            for name, patient_id, accession, kind in SCHEDULE
            if modality in ("", kind)
        ]


@implementer(IFindHandler)
class Slow:
    """Takes its time: the answer comes from the reactor, ``delay`` seconds later."""

    find_models = (MODALITY_WORKLIST,)

    def __init__(self, marker, delay):
        self.marker = Path(marker)
        self.delay = delay

    def find(self, query):
        self.marker.write_text(query.calling_ae_title)
        answer = defer.Deferred()
        reactor.callLater(self.delay, answer.callback, [scheduled(*SCHEDULE[0], "CT1")])
        return answer
'''


def site_module(tmp_path: Path) -> Path:
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "site_worklist.py").write_text(SITE_WORKLIST)
    return folder


def start_worklist(start_dicomd, tmp_path):
    return start_dicomd(
        plugins=[
            archive_plugin(),
            {"plugin": "site_worklist.Worklist", "options": {"station": "CT1"}},
        ],
        pythonpath=[site_module(tmp_path)],
    )


STEP_KEYS = (
    "ScheduledProcedureStepSequence[0].Modality",
    "ScheduledProcedureStepSequence[0].ScheduledStationAETitle",
)


def test_a_worklist_plugin_answers_findscu(start_dicomd, tmp_path):
    daemon = start_worklist(start_dicomd, tmp_path)
    answer = findscu(
        daemon,
        "-W",
        "PatientName",
        "PatientID",
        "AccessionNumber",
        "ScheduledProcedureStepSequence[0].Modality=CT",
        "ScheduledProcedureStepSequence[0].ScheduledStationAETitle",
    )
    assert_success(answer)
    assert answer.values("PatientName") == ["Carmack^John", "Torvalds^Linus", "Van Rossum^Guido"]
    assert answer.values("PatientID") == ["1", "3", "4"]
    assert answer.values("AccessionNumber") == ["A001", "A003", "A004"]
    for match in answer.matches:
        assert "RetrieveAETitle" not in match  # a Query/Retrieve attribute, not a worklist one
        [step] = match.ScheduledProcedureStepSequence
        assert (step.Modality, step.ScheduledStationAETitle) == ("CT", "CT1")


def test_a_worklist_answer_holds_exactly_the_requested_keys(start_dicomd, tmp_path):
    daemon = start_worklist(start_dicomd, tmp_path)
    answer = findscu(daemon, "-W", "PatientName", *STEP_KEYS)
    assert_success(answer)
    for match in answer.matches:
        # Specific Character Set comes with a name that needs it (PS3.4 C.4.1.1.3.2)
        keys = set(match.dir()) - {"SpecificCharacterSet"}
        assert keys == {"PatientName", "ScheduledProcedureStepSequence"}


def test_a_worklist_answer_shapes_sequence_items_to_the_requested_keys(start_dicomd, tmp_path):
    daemon = start_worklist(start_dicomd, tmp_path)
    answer = findscu(daemon, "-W", "PatientID", "ScheduledProcedureStepSequence[0].Modality=CT")
    assert_success(answer)
    for match in answer.matches:
        [step] = match.ScheduledProcedureStepSequence
        assert step.dir() == ["Modality"]  # not ScheduledStationAETitle, nor the start date


def test_a_worklist_answer_leaves_out_what_was_not_asked(start_dicomd, tmp_path):
    daemon = start_worklist(start_dicomd, tmp_path)
    answer = findscu(daemon, "-W", "PatientID", "ScheduledProcedureStepSequence[0].Modality=CT")
    assert_success(answer)
    assert answer.values("PatientID") == ["1", "3", "4"]
    for match in answer.matches:
        assert "PatientName" not in match
        assert "RetrieveAETitle" not in match


def test_a_worklist_answer_in_utf8_where_a_name_needs_it(start_dicomd, tmp_path):
    daemon = start_worklist(start_dicomd, tmp_path)
    answer = findscu(daemon, "-W", "PatientName", "ScheduledProcedureStepSequence[0].Modality=MR")
    assert_success(answer)
    kernighan, valim = answer.matches
    assert raw_name(kernighan) == b"Kernighan^Brian"
    assert "SpecificCharacterSet" not in kernighan
    assert raw_name(valim) == "Valim^José".encode()
    assert valim.SpecificCharacterSet == "ISO_IR 192"
    assert str(valim.PatientName) == "Valim^José"


def test_a_worklist_plugin_error_is_a_c000_failure(start_dicomd, tmp_path):
    daemon = start_worklist(start_dicomd, tmp_path)
    broken = findscu(daemon, "-W", "PatientID=BROKEN", "ScheduledProcedureStepSequence[0].Modality")
    assert broken.statuses == [UNABLE_TO_PROCESS]
    assert broken.error_comment is not None
    assert "the schedule is unavailable" in broken.error_comment
    invalid = findscu(daemon, "-W", "PatientID", "PatientName")
    assert invalid.statuses == [IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS]
    assert invalid.error_comment is not None
    assert "Scheduled Procedure Step" in invalid.error_comment
    # the failures took nothing down: the next query is answered
    assert findscu(daemon, "-W", "PatientID", STEP_KEYS[0]).status == SUCCESS
    assert daemon.is_running()


def test_a_slow_query_stalls_no_other_association(start_dicomd, tmp_path):
    marker = tmp_path / "asked"
    daemon = start_dicomd(
        plugins=[
            {
                "plugin": "site_worklist.Slow",
                "options": {"marker": str(marker), "delay": SLOW_DELAY},
            }
        ],
        pythonpath=[site_module(tmp_path)],
    )
    with ThreadPoolExecutor(max_workers=1) as pool:
        started = time.monotonic()
        slow = pool.submit(findscu, daemon, "-W", "PatientName", *STEP_KEYS)
        while not marker.exists() and time.monotonic() - started < 10:
            time.sleep(0.01)
        assert marker.read_text() == "FINDSCU", "the slow query never reached the plugin"

        echo_started = time.monotonic()
        echo = run_echoscu(daemon)
        echo_seconds = time.monotonic() - echo_started
        assert echo.returncode == 0, echo.stderr
        assert not slow.done(), "the slow query ended before the echo could prove anything"

        answer = slow.result(timeout=30)
    assert echo_seconds < 1.0
    assert_success(answer)
    assert answer.values("PatientName") == ["Carmack^John"]
    assert time.monotonic() - started >= SLOW_DELAY

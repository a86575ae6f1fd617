"""C-FIND over 100 000 archived instances: the daemon answers a page at a time.

The archive's index is written straight into its tables, with an empty file
per instance (`LargeIndex`), once for the module; each test starts its own
daemon on it.  A relational IMAGE query naming no key asks for every
instance: the first match must come at once, the daemon's memory must not
grow with the number of matches, C-ECHO must be answered meanwhile, and the
query's read of the index must end when the peer cancels, stops reading or
the daemon stops.  A peer that stops reading is aborted once
``timeouts.network_idle`` passes without a byte either way, and its
connection dropped when ARTIM expires after that, however much is unsent.
Whether a read still holds its snapshot of the index is seen from outside: a
passive checkpoint of the WAL copies every frame only when no reader holds an
older snapshot (within `SNAPSHOT_SECONDS`, after which any read lets go).
"""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, build_context
from pynetdicom.pdu_primitives import SOPClassExtendedNegotiation

from dicomd import uids
from dicomd.dimse.command import Command
from dicomd.dimse.datasets import encode_dataset
from dicomd.dimse.messages import PDV_COMMAND, PDV_LAST
from dicomd.ul.pdu import AAssociateAC, PDataTF
from tests.support.archive import LargeIndex, archive_plugin
from tests.support.attacks import (
    EchoesDuring,
    RawAssociation,
    associate_rq,
    stalls_ms,
    wait_for_lag_monitor,
)
from tests.support.daemons import RunningDaemon
from tests.support.dcmtk import run_echoscu
from tests.support.processes import LOCALHOST, holds_within
from tests.support.raw_peer import find_command

PENDING, SUCCESS, CANCELLED = 0xFF00, 0x0000, 0xFE00
LARGE = LargeIndex()
GROWTH_MIB = 32
"""What a query of every instance may add to the daemon's peak memory: +6 to +11 MiB
measured; holding every match took +431 MiB."""
FIRST_MATCH_SECONDS = 3.0
"""0.2 to 0.9 s measured; 8 to 10 s when every match was made before the first was sent."""
ECHO_SECONDS = 2.0
"""The longest echoscu run (a process, an association, C-ECHO) while the matches stream:
0.5 s measured on a loaded machine."""
STALL_MS = 400
"""The longest the reactor may stall while the matches stream: the daemon's own garbage
collections took up to 240 ms on a loaded two-core machine."""


@pytest.fixture(scope="module")
def large_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("large") / "archive"
    LARGE.write_archive(root)
    return root


@pytest.fixture
def start_on_archive(
    start_dicomd: Callable[..., RunningDaemon], large_archive: Path
) -> Callable[..., RunningDaemon]:
    """Starts a daemon archiving to the large archive; keywords are more configuration."""

    def start(**overrides: object) -> RunningDaemon:
        daemon = start_dicomd(
            storage={"path": str(large_archive)}, plugins=[archive_plugin()], **overrides
        )
        wait_for_lag_monitor(daemon)
        return daemon

    return start


# -- a raw peer's C-FIND -----------------------------------------------------------------------


def every_image() -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE"
    identifier.StudyInstanceUID = ""
    identifier.SOPInstanceUID = ""
    identifier.InstanceNumber = ""
    return identifier


def raw_find(daemon: RunningDaemon) -> RawAssociation:
    """A raw peer that has asked for every instance (the daemon answers relational queries
    from anyone) and read nothing yet."""
    peer = RawAssociation(
        daemon, associate_rq(daemon, [(uids.STUDY_ROOT_FIND, [ExplicitVRLittleEndian])])
    )
    assert isinstance(peer.answer, AAssociateAC), peer.answer
    peer.send_fragment(1, PDV_COMMAND | PDV_LAST, find_command(1))
    peer.send_fragment(1, PDV_LAST, encode_dataset(every_image(), ExplicitVRLittleEndian))
    return peer


def statuses(peer: RawAssociation) -> Iterator[int]:
    """The status of each response as it arrives, up to the final one."""
    command = b""
    while True:
        pdu = peer.receive()
        assert isinstance(pdu, PDataTF), pdu
        for pdv in pdu.pdvs:
            if not pdv.control & PDV_COMMAND:
                continue
            command += pdv.data
            if pdv.control & PDV_LAST:
                status = Command.decode(command).status
                command = b""
                yield status
                if status != PENDING:
                    return


# -- the daemon seen from outside ---------------------------------------------------------------


def rss_mib(daemon: RunningDaemon) -> float:
    return daemon.rss_kib() / 1024


TOGGLE_SEX = "UPDATE patients SET PatientSex = CASE PatientSex WHEN 'M' THEN 'F' ELSE 'M' END"
"""A write that changes every patient, whatever it holds: SQLite writes nothing for an
UPDATE that changes no value."""


def wal_held_back(archive: Path) -> bool:
    """Write to the index, then checkpoint: True when a reader's snapshot keeps frames in
    the WAL that a checkpoint would otherwise copy."""
    connection = sqlite3.connect(archive / "index.sqlite", isolation_level=None, timeout=30)
    try:
        connection.execute(TOGGLE_SEX)
        _busy, logged, copied = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    finally:
        connection.close()
    return copied < logged


# -- the tests ---------------------------------------------------------------------------------


def test_every_instance_comes_at_once_in_bounded_memory_while_echoes_are_answered(
    start_on_archive: Callable[..., RunningDaemon],
) -> None:
    daemon = start_on_archive(query_retrieve={"relational": "always"})
    before = rss_mib(daemon)
    daemon.reset_peak_memory()

    with EchoesDuring(daemon) as echoes:
        started = time.monotonic()
        answers = statuses(raw_find(daemon))
        first = next(answers)
        first_after = time.monotonic() - started
        stalls_before = len(stalls_ms(daemon.log_text()))  # start-up reconciles 100 000 files
        rest = list(answers)
    peak = daemon.peak_memory_mib()
    stalls = stalls_ms(daemon.log_text())[stalls_before:]

    assert first == PENDING and first_after < FIRST_MATCH_SECONDS, first_after
    assert [first, *rest] == [PENDING] * LARGE.instances + [SUCCESS]
    assert peak - before < GROWTH_MIB, f"VmHWM {peak:.0f} MiB, {before:.0f} MiB before"
    assert echoes.results and not echoes.failures(), echoes.results
    assert max(seconds for seconds, _ in echoes.results) < ECHO_SECONDS, echoes.results
    assert max(stalls, default=0) <= STALL_MS, stalls
    assert "Traceback" not in daemon.log_text()


def relational_find(sop_class_uid: str) -> SOPClassExtendedNegotiation:
    item = SOPClassExtendedNegotiation()
    item.sop_class_uid = sop_class_uid
    item.service_class_application_information = b"\x01"
    return item


def test_pynetdicom_reading_slowly_then_cancelling_ends_the_query_s_read(
    start_on_archive: Callable[..., RunningDaemon], large_archive: Path
) -> None:
    daemon = start_on_archive()  # relational queries for the peers that negotiate them
    before = rss_mib(daemon)
    daemon.reset_peak_memory()
    ae = AE(ae_title="SLOWREADER")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate(
        LOCALHOST,
        daemon.port,
        contexts=[build_context(uids.STUDY_ROOT_FIND)],
        ae_title=daemon.ae_title,
        ext_neg=[relational_find(uids.STUDY_ROOT_FIND)],
    )
    assert assoc.is_established
    assert assoc.acceptor.sop_class_extended == {uids.STUDY_ROOT_FIND: b"\x01"}
    [context] = assoc.accepted_contexts
    seen: list[int] = []
    try:
        for status, _match in assoc.send_c_find(every_image(), uids.STUDY_ROOT_FIND, msg_id=7):
            seen.append(int(status.Status))
            if len(seen) == 300:
                assoc.send_c_cancel(7, context.context_id)
            time.sleep(0.002)  # a peer that takes its time with each match
        held_back_after = wal_held_back(large_archive)
        echo = run_echoscu(daemon)
    finally:
        assoc.release()

    assert seen[-1] == CANCELLED
    assert set(seen[:-1]) == {PENDING}
    assert 300 <= len(seen) - 1 < LARGE.instances
    assert not held_back_after  # the cancelled query reads the index no more
    assert echo.returncode == 0
    assert daemon.peak_memory_mib() - before < GROWTH_MIB
    assert "Traceback" not in daemon.log_text()


def test_a_peer_that_stops_reading_is_dropped_after_the_idle_timeout_and_its_query_ended(
    start_on_archive: Callable[..., RunningDaemon], large_archive: Path
) -> None:
    daemon = start_on_archive(
        query_retrieve={"relational": "always"}, timeouts={"network_idle": 2, "artim": 2}
    )
    before = rss_mib(daemon)
    daemon.reset_peak_memory()

    peer = raw_find(daemon)  # and it reads nothing more
    assert next(statuses(peer)) == PENDING
    log = daemon.wait_for_log(lambda text: "ARTIM expired" in text, timeout=90)

    assert "no data from" in log and "ARTIM expired" in log
    assert is_dropped(peer, seconds=30), "the daemon still holds the connection"
    assert holds_within(lambda: not wal_held_back(large_archive), 5), "the query still reads"
    assert run_echoscu(daemon).returncode == 0
    assert daemon.peak_memory_mib() - before < GROWTH_MIB
    assert "Traceback" not in daemon.log_text()
    peer.close()


def is_dropped(peer: RawAssociation, seconds: float) -> bool:
    """Read what the daemon had sent until it closes the connection; False if it does not
    within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        peer.socket.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            if not peer.socket.recv(1 << 20):
                return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
    return False


def test_sigterm_during_a_long_find_stops_the_daemon_at_once_and_cleanly(
    start_on_archive: Callable[..., RunningDaemon],
) -> None:
    daemon = start_on_archive(query_retrieve={"relational": "always"})
    peer = raw_find(daemon)
    answers = statuses(peer)
    assert next(answers) == PENDING
    reading = threading.Thread(target=read_slowly, args=(answers,), daemon=True)
    reading.start()
    time.sleep(1)  # the find is well under way, the peer taking a match every few ms

    started = time.monotonic()
    daemon.process.send_signal(signal.SIGTERM)
    code = daemon.process.wait(timeout=30)
    stopped_after = time.monotonic() - started

    assert code == -signal.SIGTERM  # twistd ends by raising it again, once shut down
    assert stopped_after < 5, stopped_after
    daemon.output.join(5)
    assert "Server Shut Down" in daemon.log_text()
    assert "Traceback" not in daemon.log_text()
    peer.close()


def read_slowly(answers: Iterator[int]) -> None:
    try:
        for _ in answers:
            time.sleep(0.005)
    except (AssertionError, OSError):
        pass  # the daemon went away

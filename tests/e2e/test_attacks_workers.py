"""Hostile peers against a node of worker processes (``workers: 2``): the association limits
the parent holds for every worker stay exact under floods, a worker killed under load is
replaced and takes only its own associations with it, and stopping the parent mid-flood
leaves no worker behind."""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tests.support.attacks import associate_rq
from tests.support.audit import records_in, summary
from tests.support.dcmtk import run_echoscu
from tests.support.destinations import (
    CountingReceiver,
    archive_with,
    move_until_served_by,
    served_moves,
)
from tests.support.processes import LOCALHOST, holds_within

VERIFICATION = "1.2.840.10008.1.1"


def workers_of(daemon) -> list[int]:
    children = Path(f"/proc/{daemon.pid}/task/{daemon.pid}/children").read_text().split()
    return sorted(int(pid) for pid in children)


def vanish_after_request(daemon, count: int) -> None:
    """``count`` peers that send an A-ASSOCIATE-RQ and reset the connection at once, while
    their worker still waits for the parent's decision."""
    request = associate_rq(daemon, [(VERIFICATION, [ImplicitVRLittleEndian])], "VANISHER")
    for _ in range(count):
        with socket.create_connection((LOCALHOST, daemon.port), timeout=10) as peer:
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            peer.sendall(request)


def hold(daemon, count: int, title: str = "HOLDER") -> list:
    held = []
    for _ in range(count):
        ae = AE(ae_title=title)
        ae.add_requested_context(Verification)
        held.append(ae.associate(LOCALHOST, daemon.port, ae_title=daemon.ae_title))
    return held


def release(associations: list) -> None:
    for association in associations:
        if association.is_established:
            association.release()


def test_peers_that_vanish_while_the_parent_decides_leave_no_association_counted(start_dicomd):
    daemon = start_dicomd(workers=2, limits={"max_associations": 4})
    vanish_after_request(daemon, 200)
    time.sleep(1.0)  # every worker has heard every decision and every connection's end

    held = hold(daemon, 4)
    try:
        assert [a.is_established for a in held] == [True] * 4, daemon.log_text()[-3000:]
        assert run_echoscu(daemon).returncode != 0  # the fifth is one too many
    finally:
        release(held)
    assert "Traceback" not in daemon.log_text()


def is_gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (reaped, or a zombie waiting for its reaper)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def local_port(association) -> int:
    return association.dul.socket.socket.getsockname()[1]


def worker_serving(log: str, port: int) -> str:
    """The number of the worker that accepted the association from ``port``."""
    (number,) = re.findall(rf"worker (\d+): .*association accepted: \S+ at [\d.]+:{port} ", log)
    return number


class HeldAcrossWorkers:
    """As many associations as ``max_associations`` allows, and the worker serving each."""

    def __init__(self, daemon) -> None:
        self.daemon = daemon
        count = daemon.config["limits"]["max_associations"]
        held = hold(daemon, count)
        assert all(a.is_established for a in held)
        log = daemon.wait_for_log(lambda text: text.count("association accepted") >= count)
        self.placed = [(a, worker_serving(log, local_port(a))) for a in held]
        self.victim = self.placed[0][1]
        """The worker of the first association: the one a test takes away."""
        self.victim_pid = int(
            dict(re.findall(r"worker (\d+) started \(pid (\d+)\)", log))[self.victim]
        )

    def check_only_the_victims_are_lost(self) -> None:
        """The victim's associations end, the others' answer C-ECHO, the victim is replaced,
        and the parent frees its places and no more."""
        survivors = [a for a, number in self.placed if number != self.victim]
        lost = [a for a, number in self.placed if number == self.victim]
        try:
            for association in survivors:
                assert association.send_c_echo().Status == 0
            assert holds_within(lambda: not any(a.is_established for a in lost), 10)
            assert holds_within(lambda: len(workers_of(self.daemon)) == 2, 20)
            again = hold(self.daemon, len(lost))
            assert all(a.is_established for a in again), self.daemon.log_text()[-2000:]
            assert run_echoscu(self.daemon).returncode != 0
            release(again)
        finally:
            release(survivors)
        assert "Traceback" not in self.daemon.log_text()


def test_a_worker_killed_under_load_takes_only_its_own_associations(start_dicomd):
    held = HeldAcrossWorkers(start_dicomd(workers=2, limits={"max_associations": 8}))
    os.kill(held.victim_pid, signal.SIGKILL)
    held.daemon.wait_for_log(lambda text: f"worker {held.victim} ended (signal 9)" in text)
    held.check_only_the_victims_are_lost()


def kill_worker_one(daemon, deaths: int) -> float:
    """SIGKILL worker 1, which ended ``deaths`` times before; the delay the parent says it
    waits before it starts another."""
    started = dict(re.findall(r"worker (\d+) started \(pid (\d+)\)", daemon.log_text()))
    os.kill(int(started["1"]), signal.SIGKILL)
    log = daemon.wait_for_log(lambda text: text.count("worker 1 ended") > deaths, 10)
    return float(re.findall(r"worker 1 ended .*another starts in ([\d.]+) s", log)[-1])


def worker_one_restarted(daemon, deaths: int, timeout: float) -> bool:
    return holds_within(lambda: daemon.log_text().count("worker 1 started") > deaths + 1, timeout)


def test_a_worker_that_dies_young_again_and_again_is_restarted_later_each_time(start_dicomd):
    daemon = start_dicomd(workers=2)
    delays = []
    for death in range(4):
        delays.append(kill_worker_one(daemon, death))
        assert run_echoscu(daemon).returncode == 0  # worker 2 serves meanwhile
        assert worker_one_restarted(daemon, death, delays[-1] + 15)
    assert delays == [0.5, 1.0, 2.0, 4.0]

    time.sleep(10.5)  # worker 1 now lives longer than a young one
    assert kill_worker_one(daemon, 4) == 0.0  # started again at once
    assert worker_one_restarted(daemon, 4, 15)
    assert kill_worker_one(daemon, 5) == 0.5  # and its backoff starts again from the first delay
    assert "Traceback" not in daemon.log_text()


class AssociationFlood:
    """Threads that associate, echo and release again and again until stopped."""

    def __init__(self, daemon, threads: int = 4) -> None:
        self.daemon = daemon
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        request = associate_rq(self.daemon, [(VERIFICATION, [ImplicitVRLittleEndian])], "FLOOD")
        while not self.stopping.is_set():
            try:
                with socket.create_connection((LOCALHOST, self.daemon.port), timeout=5) as peer:
                    peer.sendall(request)
                    peer.recv(1024)
            except OSError:
                time.sleep(0.01)

    def __enter__(self) -> AssociationFlood:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(10)


@pytest.mark.parametrize("workers", [1, 2], ids=["one process", "two workers"])
def test_sigterm_mid_flood_stops_every_worker_and_ends_the_trail_with_one_stop(
    start_dicomd, tmp_path, workers
):
    audit_file = tmp_path / "audit.log"
    daemon = start_dicomd(workers=workers, audit={"file": str(audit_file)})
    children = workers_of(daemon)
    held = hold(daemon, 3)
    assert all(a.is_established for a in held)
    with AssociationFlood(daemon):
        time.sleep(2)
        started = time.monotonic()
        daemon.process.terminate()
        daemon.process.wait(30)
        took = time.monotonic() - started
    assert took < 10, took
    assert holds_within(lambda: all(is_gone(pid) for pid in children), 5), children
    events = summary(records_in(audit_file))
    start, stop = ("110100", "110120", "0"), ("110100", "110121", "0")
    assert events.count(start) == 1 and events[0] == start
    assert events.count(stop) == 1 and events[-1] == stop
    # every association logged in logs out, those held at the stop too
    assert events.count(("110114", "110122", "0")) == events.count(("110114", "110123", "0"))
    log = daemon.log_text()
    assert "Traceback" not in log
    assert "another starts" not in log  # nothing restarted while stopping


def test_workers_of_a_parent_killed_outright_end_with_their_control_connection(start_dicomd):
    daemon = start_dicomd(workers=2)
    workers = workers_of(daemon)
    with AssociationFlood(daemon, threads=2):
        time.sleep(1)
        daemon.process.kill()
        daemon.process.wait(10)
        assert holds_within(lambda: all(is_gone(pid) for pid in workers), 15), workers


def test_a_replaced_worker_still_takes_turns_at_a_move_destination(start_dicomd):
    """The replacement of a killed worker is counted at a destination's ``max_associations``
    like any worker (it was let through without a turn: the parent took it for the dead one)."""
    receiver = CountingReceiver()
    try:
        daemon = archive_with(
            start_dicomd,
            {"COUNTER": {"host": LOCALHOST, "port": receiver.port, "max_associations": 1}},
            workers=2,
        )
        assert kill_worker_one(daemon, 0) == 0.5
        assert worker_one_restarted(daemon, 0, 15)
        restarted_at = len(daemon.log_text())
        moved = move_until_served_by(daemon, {"1", "2"}, rounds=6, after=restarted_at)
        assert served_moves(daemon, restarted_at) == {"1", "2"}
        assert len(receiver.stored) == moved
        assert receiver.most == 1
    finally:
        receiver.server.shutdown()
    assert "Traceback" not in daemon.log_text()


def associate_at_once(daemon, count: int, title: str) -> list:
    """``count`` associations asked for at the same moment from as many threads."""
    held: list = []
    lock = threading.Lock()
    go = threading.Barrier(count)

    def one() -> None:
        ae = AE(ae_title=title)
        ae.add_requested_context(Verification)
        go.wait()
        association = ae.associate(LOCALHOST, daemon.port, ae_title=daemon.ae_title)
        with lock:
            held.append(association)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return held


def test_limits_hold_exactly_across_workers_when_everyone_asks_at_once(start_dicomd):
    daemon = start_dicomd(
        workers=2, limits={"max_associations": 5, "max_associations_per_calling_ae": 3}
    )
    for _ in range(3):
        same_ae = associate_at_once(daemon, 12, "SAMEAE")
        try:
            assert sum(a.is_established for a in same_ae) == 3
            others = associate_at_once(daemon, 12, "OTHERAE")
            try:
                assert sum(a.is_established for a in others) == 2  # 5 in all
            finally:
                release(others)
        finally:
            release(same_ae)
        time.sleep(0.5)  # every Leave has reached the parent
    assert "Traceback" not in daemon.log_text()


def parent_end_of_control(parent: int, worker: int) -> int:
    """The parent's descriptor of its control connection to ``worker`` (from ``ss``)."""
    listed = subprocess.run(["ss", "-xpn"], capture_output=True, text=True, check=True).stdout
    sockets = {
        int(inode): (int(peer), int(pid), int(fd))
        for inode, peer, pid, fd in re.findall(
            r"\s(\d+)\s+\*\s+(\d+)\s+users:\(\(\"[^\"]+\",pid=(\d+),fd=(\d+)\)", listed
        )
    }
    (descriptor,) = [
        sockets[peer][2]
        for peer, pid, _ in sockets.values()
        if pid == worker and peer in sockets and sockets[peer][1] == parent
    ]
    return descriptor


def test_a_control_connection_cut_at_the_parent_ends_its_worker_and_frees_its_places(
    start_dicomd,
):
    held = HeldAcrossWorkers(start_dicomd(workers=2, limits={"max_associations": 6}))
    parent = held.daemon.pid
    descriptor = parent_end_of_control(parent, held.victim_pid)
    cut = subprocess.run(
        ["gdb", "-p", str(parent), "-batch", "-ex", f"call (int)shutdown({descriptor}, 2)"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "= 0" in cut.stdout, cut.stdout + cut.stderr
    assert holds_within(lambda: is_gone(held.victim_pid), 10)  # it ends with its connection
    held.check_only_the_victims_are_lost()


def test_a_parent_that_stalls_gets_associations_refused_not_queued_for_ever(start_dicomd):
    daemon = start_dicomd(workers=2, limits={"max_associations": 3})
    os.kill(daemon.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        refused = run_echoscu(daemon)
        waited = time.monotonic() - started
    finally:
        os.kill(daemon.pid, signal.SIGCONT)
    assert refused.returncode != 0
    assert 9 < waited < 20, waited  # the worker's deadline, not dcmtk's
    log = daemon.wait_for_log(lambda text: "did not decide within 10 s" in text)
    assert "local limit exceeded: the parent did not answer in time" in log
    time.sleep(0.5)  # the parent hears the late Admit, then the Leave that follows it
    held = hold(daemon, 3)
    try:
        assert all(a.is_established for a in held)
        assert run_echoscu(daemon).returncode != 0
    finally:
        release(held)
    assert "Traceback" not in daemon.log_text()

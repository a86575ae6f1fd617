"""A node of worker processes (``workers: 2``) against dcmtk and pynetdicom: every worker serves,
the archive they share indexes every instance once, the association limits hold across them,
a killed worker is replaced, and stopping the parent stops them all."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tests.support.daemons import DEFAULT_CONFIG, deep_merge, write_config
from tests.support.datasets import write_ct_files
from tests.support.dcmtk import dcmtk_environment, run_dcmtk, run_echoscu
from tests.support.processes import LOCALHOST


def workers_of(daemon) -> list[int]:
    """The parent's children: its worker processes."""
    children = Path(f"/proc/{daemon.pid}/task/{daemon.pid}/children").read_text().split()
    return sorted(int(pid) for pid in children)


def wait_for_workers(daemon, count: int, timeout: float = 20.0) -> str:
    """The log once ``count`` workers have said they listen."""
    return daemon.wait_for_log(
        lambda log: len(set(re.findall(r"worker (\d+): .*accepting connections", log))) >= count,
        timeout,
    )


def serving_workers(log: str) -> set[str]:
    return set(re.findall(r"worker (\d+): .*association accepted", log))


def test_every_worker_serves_and_the_shared_archive_indexes_each_instance_once(
    start_dicomd, tmp_path
):
    daemon = start_dicomd(workers=2, plugins=[{"plugin": "archive"}])
    wait_for_workers(daemon, 2)
    assert len(workers_of(daemon)) == 2
    files = write_ct_files(tmp_path / "ct", 40)

    stores = [
        run_dcmtk("storescu", "-aec", daemon.ae_title, LOCALHOST, str(daemon.port),
                  *map(str, files[part::4]))
        for part in range(4)
    ]  # fmt: skip
    for echo in range(40):
        if len(serving_workers(daemon.log_text())) == 2:
            break
        assert run_echoscu(daemon).returncode == 0, echo

    assert all(store.returncode == 0 for store in stores), [s.stderr for s in stores]
    first = dcmread(files[0], stop_before_pixels=True)
    found = run_dcmtk(
        "findscu", "-v", "-S", "-aec", daemon.ae_title, "-k", "QueryRetrieveLevel=IMAGE",
        "-k", f"StudyInstanceUID={first.StudyInstanceUID}",
        "-k", f"SeriesInstanceUID={first.SeriesInstanceUID}", "-k", "SOPInstanceUID",
        LOCALHOST, str(daemon.port),
    )  # fmt: skip
    assert found.returncode == 0, found.stderr
    assert len(re.findall(r"Find Response: \d+ \(Pending\)", found.stderr)) == 40
    assert "Received Final Find Response (Success)" in found.stderr
    assert serving_workers(daemon.log_text()) == {"1", "2"}
    archive = daemon.directory / daemon.config["storage"]["path"]
    assert len([p for p in archive.rglob("*.dcm") if ".incoming" not in p.parts]) == 40
    assert "Traceback" not in daemon.log_text()


def hold_associations(daemon, count: int) -> list:
    held = []
    for _ in range(count):
        ae = AE(ae_title="HOLDER")
        ae.add_requested_context(Verification)
        held.append(ae.associate(LOCALHOST, daemon.port, ae_title=daemon.ae_title))
    return held


def test_the_per_host_limit_holds_across_workers(start_dicomd):
    daemon = start_dicomd(workers=2, limits={"max_associations_per_host": 4})
    wait_for_workers(daemon, 2)
    held = hold_associations(daemon, 4)
    try:
        assert all(association.is_established for association in held)
        refused = run_echoscu(daemon)
        assert refused.returncode != 0
        log = daemon.wait_for_log(lambda text: "association rejected" in text)
        assert "more than 4 associations from 127.0.0.1" in log
        held.pop().release()
        time.sleep(0.5)  # the worker tells the parent when the connection has gone
        assert run_echoscu(daemon).returncode == 0
    finally:
        for association in held:
            association.release()


def test_a_killed_worker_is_replaced_and_the_node_serves_on(start_dicomd):
    daemon = start_dicomd(workers=2)
    wait_for_workers(daemon, 2)
    victim = workers_of(daemon)[0]

    os.kill(victim, signal.SIGKILL)
    log = daemon.wait_for_log(lambda text: "another starts" in text)
    assert re.search(r"worker \d ended \(signal 9\); another starts", log), log
    deadline = time.monotonic() + 20
    while len(workers_of(daemon)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)

    assert len(workers_of(daemon)) == 2 and victim not in workers_of(daemon)
    assert all(run_echoscu(daemon).returncode == 0 for _ in range(4))
    assert "Traceback" not in daemon.log_text()


def test_stopping_the_parent_stops_every_worker(start_dicomd):
    daemon = start_dicomd(workers=2)
    wait_for_workers(daemon, 2)
    workers = workers_of(daemon)

    daemon.stop()

    assert daemon.process.returncode == -signal.SIGTERM  # twistd ends by raising it again
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]
    assert "Traceback" not in daemon.log_text()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_second_sigterm_while_stopping_is_only_logged(start_dicomd, workers):
    """An init system and an operator may both stop the daemon: Twisted queued a stop per
    signal, and the second one logged a ReactorNotRunning traceback."""
    daemon = start_dicomd(workers=workers)  # started: its workers accept

    daemon.process.send_signal(signal.SIGTERM)
    time.sleep(0.01)
    daemon.process.send_signal(signal.SIGTERM)
    daemon.process.wait(30)
    daemon.stop()

    assert daemon.process.returncode == -signal.SIGTERM
    log = daemon.log_text()
    assert "Traceback" not in log and "ReactorNotRunning" not in log, log
    assert "Received SIGTERM, shutting down." in log


def test_an_archive_folder_of_unknown_files_stops_the_parent_with_one_line(twistd, tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / "somebody-elses.dcm").write_bytes(b"not ours")
    config = deep_merge(
        DEFAULT_CONFIG,
        {
            "listen": "tcp:0",
            "workers": 2,
            "storage": {"path": str(archive)},
            "plugins": [{"plugin": "archive"}],
        },
    )
    result = twistd(write_config(tmp_path, config))
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output, output
    assert (
        f"dicomd: cannot start: ArchiveError: {archive} holds files but no index (index.sqlite)"
        in output
    )
    assert "worker 1 started" not in output  # no worker began on an archive it must not touch


def test_a_port_in_use_stops_the_parent_with_one_line(twistd, tmp_path):
    with socket.socket() as taken:
        taken.bind((LOCALHOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = deep_merge(
            DEFAULT_CONFIG, {"listen": f"tcp:{port}:interface={LOCALHOST}", "workers": 2}
        )
        result = twistd(write_config(tmp_path, config))
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output, output
    assert f"dicomd: listen: cannot listen on {LOCALHOST}:{port}: Address already in use" in output


def test_a_mistake_only_the_node_finds_stops_the_parent_with_one_line(twistd, tmp_path):
    config = deep_merge(
        DEFAULT_CONFIG,
        {"listen": "tcp:0", "workers": 2, "authentication": {"required": True}},
    )
    result = twistd(write_config(tmp_path, config))
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode == 1
    assert len(lines) == 1 and lines[0].startswith("dicomd: authentication.required:"), lines


def test_one_instance_sent_at_once_to_both_workers_is_kept_once(start_dicomd, tmp_path):
    """keep-first across processes: one copy succeeds, every other is told B000.  Rounds of
    eight at once until both workers have taken some (the kernel picks the worker)."""
    daemon = start_dicomd(workers=2, plugins=[{"plugin": "archive"}])
    wait_for_workers(daemon, 2)
    (instance,) = write_ct_files(tmp_path / "ct", 1)

    statuses: list[str] = []
    for _ in range(4):
        senders = [
            subprocess.Popen(
                ["storescu", "-v", "-aec", daemon.ae_title, LOCALHOST, str(daemon.port),
                 str(instance)],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                env=dcmtk_environment(),
            )
            for _ in range(8)
        ]  # fmt: skip
        outputs = [sender.communicate(timeout=60)[0] for sender in senders]
        statuses += [re.search(r"Store Response \((\w+)", out).group(1) for out in outputs]
        if serving_workers(daemon.log_text()) == {"1", "2"}:
            break

    assert serving_workers(daemon.log_text()) == {"1", "2"}
    assert sorted(statuses) == ["Success"] + ["Warning"] * (len(statuses) - 1)
    archive = daemon.directory / daemon.config["storage"]["path"]
    assert len([p for p in archive.rglob("*.dcm") if ".incoming" not in p.parts]) == 1

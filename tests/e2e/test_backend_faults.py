"""The daemon on PostgreSQL and S3 while those fail: frozen, gone, or never there.

A frozen database must not stall C-ECHO, and the stores it held must all end well
once it thaws.  A database or an object store that goes away mid-ingest fails each
store with a status and one log line, never a traceback; the daemon keeps answering
C-ECHO, indexes nothing it did not store, and stores again once the database is back.
A backend that is not there at start-up stops the daemon with one line naming it.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dicomd.archive.postgres import OPEN_TIMEOUT
from tests.support.archive import archive_plugin
from tests.support.daemons import (
    DEFAULT_CONFIG,
    RunningDaemon,
    deep_merge,
    log_lines_with,
    run_twistd,
    write_config,
)
from tests.support.datasets import write_ct_files
from tests.support.faults import (
    Sender,
    crash_postgres,
    echo_for,
    find_answer,
    found_instances,
    frozen,
    postgres_processes,
    response_gaps,
    restart_postgres,
    start_sender,
    wait_for_responses,
)
from tests.support.nodes import assert_clean_logs
from tests.support.postgres import (
    Cluster,
    pg_cluster_fixture,  # noqa: F401 (pg_cluster)
    postgres_cluster,
)
from tests.support.processes import LOCALHOST, free_tcp_port
from tests.support.s3 import aws_environment, moto_s3_server, use_aws_environment

ECHO_DEADLINE = 1.0
"""Seconds within which a C-ECHO is answered, whatever the database is doing."""
FREEZE = 4.0
"""Seconds the database stays frozen."""
SENDERS = 3
PER_SENDER = 30
DIMSE_TIMEOUT = 20
"""The daemon's DIMSE timeout, and the peer's: a store not answered within it is given up."""
RECOVERY_DEADLINE = 15.0
"""Seconds after the database is back within which a store succeeds again."""
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
"""What the store service answers when a handler's storage fails (an ``OSError``)."""
START_DEADLINE = OPEN_TIMEOUT + 10
"""Seconds a daemon may take to give up on a backend that is not there: the index waits
``OPEN_TIMEOUT`` for its database to come up."""
LATE = 3.0
"""Seconds after the daemon's start at which its database comes up."""
NO_WAIT_DEADLINE = 15.0
"""Seconds a daemon may take to give up on a backend it does not wait for: its start-up
(a few seconds on a loaded machine) and three refused connections."""


def archive_node(start_dicomd: Callable[..., RunningDaemon], **overrides: Any) -> RunningDaemon:
    """A daemon of one process with the archive plugin (its log in a failing test's report)."""
    return start_dicomd(workers=1, plugins=[archive_plugin()], **overrides)


def test_a_frozen_database_stalls_no_echo_and_every_store_ends_well_once_it_thaws(
    pg_cluster: Cluster, start_dicomd: Callable[..., RunningDaemon], tmp_path: Path
) -> None:
    url = pg_cluster.tcp_url("frozen")
    pg_cluster.create_database("frozen")
    daemon = archive_node(start_dicomd, index={"url": url})
    folders = [tmp_path / f"send{number}" for number in range(SENDERS)]
    for folder in folders:
        write_ct_files(folder, PER_SENDER)
    senders = [
        start_sender(daemon, folder, tmp_path / f"storescu{n}.txt")
        for n, folder in enumerate(folders)
    ]
    for sender in senders:
        wait_for_responses(sender, 2, timeout=30)

    with frozen(postgres_processes(pg_cluster)):
        time.sleep(1.0)  # whatever was past the database has been answered
        answered_at_freeze = sum(len(sender.responses()) for sender in senders)
        echoes = echo_for(daemon, FREEZE)
        answered_while_frozen = sum(len(s.responses()) for s in senders) - answered_at_freeze
    thawed = time.monotonic()
    outputs = [sender.wait(timeout=90) for sender in senders]
    print(
        f"echo during {FREEZE:g} s frozen: {len(echoes)} echoes, "
        f"slowest {max(echoes):.3f} s, median {sorted(echoes)[len(echoes) // 2]:.3f} s; "
        f"stores ended {time.monotonic() - thawed:.1f} s after the thaw"
    )

    assert answered_while_frozen == 0, "the database was not frozen"
    assert max(echoes) < ECHO_DEADLINE, echoes
    for sender, folder, output in zip(senders, folders, outputs, strict=True):
        assert sender.process.returncode == 0, output[-3000:]
        responses = sender.responses()
        assert set(responses.values()) == {SUCCESS}, responses
        assert len(responses) == PER_SENDER, output[-3000:]
        sent = {path.stem for path in folder.iterdir()}
        assert found_instances(daemon, folder, tmp_path / f"found-{folder.name}") == sent
    assert_clean_logs([daemon])


def failure_lines(daemon: RunningDaemon, uids: set[str]) -> dict[str, list[str]]:
    """For each SOP Instance UID, the daemon's log lines that name it."""
    lines = daemon.log_text().splitlines()
    return {uid: [line for line in lines if uid in line] for uid in uids}


def raw_stderr_lines(daemon: RunningDaemon) -> list[str]:
    """What reached the log through stderr (a library's warnings, a print): never dicomd's
    way of saying anything, and often several lines for one event."""
    return [line for line in daemon.log_text().splitlines() if "[stderr#" in line]


def assert_outage_answered(
    daemon: RunningDaemon, sender: Sender, sent: int, echoes: list[float]
) -> None:
    """Every one of the ``sent`` stores was answered: some failed, each out of resources and
    in one log line, and nothing reached the log through stderr; every echo was answered
    in time meanwhile."""
    output = sender.output()[-3000:]
    assert sender.process.returncode == 0, output
    responses = sender.responses()
    assert len(responses) == sent, output
    failed = {Path(name).stem for name, said in responses.items() if said != SUCCESS}
    assert failed, f"no store failed: the backend went away after them all\n{output}"
    assert {responses[f"{uid}.dcm"] for uid in failed} == {OUT_OF_RESOURCES}, responses
    for uid, lines in failure_lines(daemon, failed).items():
        assert len(lines) == 1 and "cannot store" in lines[0], (uid, lines)
    assert raw_stderr_lines(daemon) == [], "\n".join(raw_stderr_lines(daemon))
    assert max(echoes) < ECHO_DEADLINE, echoes


def seconds_until_stored(daemon: RunningDaemon, probe: Path, output: Path) -> float:
    """Send the one file of ``probe`` again and again until it is stored; how long that took."""
    started = time.monotonic()
    while True:
        sender = start_sender(daemon, probe, output)
        response_gaps(sender, DIMSE_TIMEOUT)
        if set(sender.responses().values()) == {SUCCESS}:
            return time.monotonic() - started
        assert time.monotonic() - started < RECOVERY_DEADLINE, sender.output()[-3000:]
        time.sleep(0.5)


def test_a_database_gone_mid_ingest_fails_stores_in_a_line_each_and_they_succeed_once_it_is_back(
    start_dicomd: Callable[..., RunningDaemon], tmp_path: Path
) -> None:
    # The database goes while the node holds pooled connections from the first stores: the
    # stores after it meet those stale connections, then a database that refuses new ones.
    # (A crash timed between two stores of one storescu run raced its last stores.)
    write_ct_files(tmp_path / "before", 2)
    write_ct_files(tmp_path / "during", 4)
    write_ct_files(tmp_path / "probe", 1)
    write_ct_files(tmp_path / "after", 3)
    with postgres_cluster() as cluster:
        cluster.create_database("gone")
        daemon = archive_node(
            start_dicomd, index={"url": cluster.tcp_url("gone")}, timeouts={"dimse": DIMSE_TIMEOUT}
        )
        before = start_sender(daemon, tmp_path / "before", tmp_path / "before.txt")
        before.wait(timeout=30)
        crashed = time.monotonic()
        crash_postgres(cluster)
        sender = start_sender(daemon, tmp_path / "during", tmp_path / "during.txt")
        echoes = echo_for(daemon, 2.0)
        find_while_gone = find_answer(daemon, tmp_path / "found-while-gone")
        gaps = response_gaps(sender, DIMSE_TIMEOUT)
        failing_for = time.monotonic() - crashed
        restart_postgres(cluster)
        recovery = seconds_until_stored(daemon, tmp_path / "probe", tmp_path / "probe.txt")
        after = start_sender(daemon, tmp_path / "after", tmp_path / "after.txt")
        after.wait(timeout=60)
        # one series per folder: each is searched apart
        found_before = found_instances(daemon, tmp_path / "before", tmp_path / "found-before")
        found_during = found_instances(daemon, tmp_path / "during", tmp_path / "found-during")
        found_after = found_instances(daemon, tmp_path / "after", tmp_path / "found-after")
    print(
        f"database gone: the {len(sender.responses())} stores meanwhile ended "
        f"{failing_for:.1f} s after the crash, the slowest response "
        f"{max(gaps, default=0):.1f} s; slowest echo meanwhile {max(echoes):.3f} s; "
        f"C-FIND meanwhile: {find_while_gone}; stored again {recovery:.1f} s after the restart"
    )

    assert set(before.responses().values()) == {SUCCESS}, before.output()[-3000:]
    assert_outage_answered(daemon, sender, 4, echoes)
    assert find_while_gone == "Refused: OutOfResources"
    assert set(after.responses().values()) == {SUCCESS}, after.output()[-3000:]
    assert found_before == before.answered(SUCCESS)
    assert found_during == sender.answered(SUCCESS)
    assert found_after == after.answered(SUCCESS)
    assert_clean_logs([daemon])


def test_object_storage_gone_mid_ingest_fails_stores_in_a_line_each_and_indexes_none_of_them(
    pg_cluster: Cluster,
    start_dicomd: Callable[..., RunningDaemon],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write_ct_files(tmp_path / "send", 10)
    pg_cluster.create_database("objects")
    with moto_s3_server(tmp_path) as s3:
        use_aws_environment(monkeypatch, s3.environment)  # the daemon inherits it
        daemon = archive_node(
            start_dicomd,
            index={"url": pg_cluster.tcp_url("objects")},
            storage={"url": s3.url, "endpoint_url": s3.endpoint_url},
            timeouts={"dimse": DIMSE_TIMEOUT},
        )
        sender = start_sender(daemon, tmp_path / "send", tmp_path / "send.txt")
        wait_for_responses(sender, 3, timeout=30)
        killed = time.monotonic()
        os.kill(s3.pid, signal.SIGKILL)
        echoes = echo_for(daemon, 2.0)
        gaps = response_gaps(sender, DIMSE_TIMEOUT)
        failing_for = time.monotonic() - killed
    print(
        f"object storage gone: the {len(sender.responses())} stores ended {failing_for:.1f} s "
        f"after the kill, the slowest response {max(gaps, default=0):.1f} s; "
        f"slowest echo meanwhile {max(echoes):.3f} s"
    )

    assert_outage_answered(daemon, sender, 10, echoes)
    stored = sender.answered(SUCCESS)
    assert found_instances(daemon, tmp_path / "send", tmp_path / "found") == stored
    assert_clean_logs([daemon])


def closed_backends(port: int) -> dict[str, dict[str, Any]]:
    """The configuration of each backend, at ``port`` where nothing listens."""
    return {
        "index": {"index": {"url": f"postgresql://dicomd@{LOCALHOST}:{port}/dicomd"}},
        "object storage": {
            "storage": {
                "url": "s3://dicomd-archive/x",
                "endpoint_url": f"http://{LOCALHOST}:{port}",
            }
        },
    }


@pytest.mark.parametrize(
    ("backend", "waits"),
    [
        ("index", True),  # for the database to come up, OPEN_TIMEOUT
        ("object storage", False),  # a refused connection is an answer
    ],
)
def test_a_backend_that_is_not_there_stops_the_daemon_with_one_line_naming_it(
    backend: str, waits: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "aws").mkdir()
    use_aws_environment(monkeypatch, aws_environment({}, tmp_path / "aws"))  # the daemon's
    port = free_tcp_port()
    overrides = {
        "listen": f"tcp:{free_tcp_port()}:interface={LOCALHOST}",
        "plugins": [archive_plugin()],
        **closed_backends(port)[backend],
    }
    started = time.monotonic()
    result = run_twistd(
        write_config(tmp_path, deep_merge(DEFAULT_CONFIG, overrides)), START_DEADLINE
    )
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    print(f"{backend} at a closed port: exit status {result.returncode} after {elapsed:.1f} s")

    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    [line] = log_lines_with(output, "cannot start")
    assert f"{LOCALHOST}:{port}" in line or f"port {port}" in line, line
    assert "refused" in line.lower(), line
    # nothing else came through stderr (a library's warnings, several lines each)
    assert [said for said in output.splitlines() if "[stderr#" in said] == [line], output
    if waits:  # a line says so, naming what it waits for
        assert log_lines_with(output, "wait", str(port)), output
    else:
        assert elapsed < NO_WAIT_DEADLINE, output


def test_a_database_that_comes_up_late_is_waited_for(
    start_dicomd: Callable[..., RunningDaemon], tmp_path: Path
) -> None:
    write_ct_files(tmp_path / "send", 2)
    with postgres_cluster() as cluster:
        cluster.create_database("late")
        crash_postgres(cluster)  # the daemon listens while its archive waits for the database
        daemon = archive_node(start_dicomd, index={"url": cluster.tcp_url("late")})
        time.sleep(LATE)
        restart_postgres(cluster)
        restarted = time.monotonic()
        sender = start_sender(daemon, tmp_path / "send", tmp_path / "send.txt")
        sender.wait(timeout=OPEN_TIMEOUT)
        found = found_instances(daemon, tmp_path / "send", tmp_path / "found")
    print(f"database up {LATE:g} s late: stored {time.monotonic() - restarted:.1f} s after")

    assert set(sender.responses().values()) == {SUCCESS}, sender.output()[-3000:]
    assert found == sender.answered(SUCCESS)
    assert_clean_logs([daemon])  # that it says it waits: the test of the closed index.url

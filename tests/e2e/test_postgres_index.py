"""The PostgreSQL index: the index tests of tests/test_archive_index.py that hold for any
engine, against a throw-away cluster; and what only several nodes sharing one database
show: one row and one `DuplicateInstance` for an instance two nodes insert at once, one
migration for indexes opening a new database at once, cross-node locks, a refused newer
schema, a lost connection as an ``OSError``, and the factory that picks the engine."""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

import tests.test_archive_index as suite
from dicomd.archive.index import (
    ArchiveIndex,
    DuplicateInstance,
    IndexClosed,
    InstanceRecord,
    Transaction,
    Write,
    adding,
)
from dicomd.archive.indexes import index_for
from dicomd.archive.migrations import SCHEMA_VERSION, SchemaTooNew, migrate
from dicomd.archive.postgres import PostgresIndex
from tests.support.archive import index_rows
from tests.support.postgres import (
    Cluster,
    pg_cluster_fixture,  # noqa: F401 (pg_cluster)
    postgres_index,
    terminate_backends,
)
from tests.support.received import record

ANY_ENGINE = (
    "test_instances_without_study_and_series_uids_get_rows_of_their_own",
    "test_a_name_in_latin_1_and_in_utf_8_is_stored_as_the_same_unicode",
    "test_a_japanese_name_keeps_its_three_groups",
    "test_later_instances_fill_and_update_but_never_erase",
    "test_a_patient_is_id_and_issuer",
    "test_replacing_an_instance_moves_it_and_prunes_what_it_left_empty",
    "test_lookup_paths_and_remove",
    "test_a_stray_nul_in_a_text_value_is_dropped_on_every_engine",
    "test_readers_are_read_only",
    "test_a_failing_write_fails_alone",
    "test_a_batch_of_writes_is_one_transaction_in_which_a_bad_write_fails_alone",
    "test_a_single_writer_commits_each_add",
    "test_an_insert_that_may_not_replace_meets_the_unique_constraint",
    "test_a_duplicate_in_a_batch_fails_alone",
    "test_the_index_provides_the_archive_index_contract",
)
globals().update({name: getattr(suite, name) for name in ANY_ENGINE})


@pytest.fixture
def index(pg_cluster: Cluster) -> Iterator[PostgresIndex]:
    opened = postgres_index(pg_cluster)
    yield opened
    opened.close()


def nodes(url: str, count: int) -> list[PostgresIndex]:
    """``count`` indexes of one database, as so many nodes have them, not yet open."""
    return [PostgresIndex(url, connections=2) for _ in range(count)]


def at_once(count: int, work: Callable[[int], object]) -> list[object]:
    """``work(0)`` ... ``work(count - 1)`` in threads that start together; their results."""
    start = threading.Barrier(count)

    def started(number: int) -> object:
        start.wait()
        return work(number)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(started, range(count)))


@pytest.mark.parametrize("same_path", [True, False])
def test_two_nodes_inserting_one_instance_at_once_keep_one_row(
    pg_cluster: Cluster, same_path: bool
) -> None:
    two = nodes(pg_cluster.create_database(), 2)
    for node in two:
        node.open()

    def insert(uid: str, number: int) -> str:
        path = f"{uid}.dcm" if same_path else f"{uid}.{number}.dcm"
        try:
            two[number].apply(adding(record(SOPInstanceUID=uid, path=path), replace=False))
        except DuplicateInstance:
            return "duplicate"
        return "inserted"

    try:
        for round_ in range(20):
            uid = f"1.2.3.{round_}"
            answers = at_once(2, lambda number, uid=uid: insert(uid, number))
            assert sorted(answers) == ["duplicate", "inserted"]
            assert index_rows(
                two[0], "SELECT count(*) FROM instances WHERE SOPInstanceUID = ?", uid
            ) == [(1,)]
        assert index_rows(two[1], "SELECT count(*) FROM instances") == [(20,)]
    finally:
        for node in two:
            node.close()


def meet_once(barrier: threading.Barrier) -> Write:
    """A write that waits for the other node's at the barrier, the first time it runs."""
    met: list[bool] = []

    def write(_: Transaction) -> None:
        if not met:
            met.append(True)
            barrier.wait(timeout=30)

    return write


def patient_record(patient: str, number: int) -> InstanceRecord:
    uid = f"1.2.3.{number}"
    return record(
        PatientID=patient,
        SOPInstanceUID=uid,
        StudyInstanceUID=f"{uid}.1",
        SeriesInstanceUID=f"{uid}.2",
        path=f"{uid}.dcm",
    )


def test_batches_of_two_nodes_that_deadlock_are_tried_again_and_all_committed(
    pg_cluster: Cluster,
) -> None:
    """Node 0 writes patient A then B, node 1 B then A, each in one transaction, meeting in
    between: PostgreSQL ends one of them as a deadlock, and that batch is tried again."""
    two = nodes(pg_cluster.create_database(), 2)
    for node in two:
        node.open()
    barrier = threading.Barrier(2)
    batches = [
        [adding(patient_record("A", 1)), meet_once(barrier), adding(patient_record("B", 2))],
        [adding(patient_record("B", 3)), meet_once(barrier), adding(patient_record("A", 4))],
    ]
    try:
        outcomes = at_once(2, lambda number: two[number].write(batches[number]))

        assert [[outcome.error for outcome in batch] for batch in outcomes] == [[None] * 3] * 2
        assert (two[0].commits, two[1].commits) == (1, 1)
        assert index_rows(two[0], "SELECT count(*) FROM instances") == [(4,)]
        assert index_rows(two[0], "SELECT PatientID FROM patients ORDER BY 1") == [("A",), ("B",)]
    finally:
        for node in two:
            node.close()


def test_nodes_opening_a_new_database_at_once_migrate_it_once(pg_cluster: Cluster) -> None:
    url = pg_cluster.create_database()
    dialect = PostgresIndex(url, connections=1).dialect

    def migrate_on_a_connection(_: int) -> object:
        with psycopg.connect(url, autocommit=True) as connection:
            return migrate(connection, dialect)

    versions_found = at_once(4, migrate_on_a_connection)

    assert sorted(versions_found) == [0] + [SCHEMA_VERSION] * 3
    four = nodes(url, 4)
    at_once(4, lambda number: four[number].open())
    try:
        assert index_rows(four[0], "SELECT version FROM dicomd_schema") == [(SCHEMA_VERSION,)]
        four[0].add(record())
        assert [list(node.paths()) for node in four] == [[record().path]] * 4
    finally:
        for node in four:
            node.close()


def test_a_database_of_a_newer_dicomd_is_refused_in_one_line(pg_cluster: Cluster) -> None:
    url = pg_cluster.create_database()
    made = PostgresIndex(url, connections=1)
    made.open()
    made.close()
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("UPDATE dicomd_schema SET version = version + 1")

    with pytest.raises(SchemaTooNew, match="newer than this dicomd") as raised:
        PostgresIndex(url, connections=1).open()
    assert "\n" not in str(raised.value)


def test_a_lost_connection_fails_the_write_as_an_os_error_and_the_next_reconnects(
    index: PostgresIndex, pg_cluster: Cluster
) -> None:
    index.add(record())
    terminate_backends(pg_cluster, index)

    with pytest.raises(OSError) as raised:
        index.add(record(SOPInstanceUID="1.2.3.2", path="2.dcm"))
    assert raised.value.errno == errno.ECONNABORTED

    index.add(record(SOPInstanceUID="1.2.3.3", path="3.dcm"))
    assert sorted(index.paths()) == sorted([record().path, "3.dcm"])


def test_an_index_not_open_refuses_work(pg_cluster: Cluster) -> None:
    unopened = PostgresIndex(pg_cluster.url(), connections=1)
    with pytest.raises(IndexClosed):
        unopened.add(record())
    with pytest.raises(IndexClosed):
        unopened.lookup("1.2.3")


def test_advisory_locks_hold_across_nodes_until_released(pg_cluster: Cluster) -> None:
    url = pg_cluster.create_database()
    first, second = (PostgresIndex(url, connections=2).locks() for _ in range(2))
    try:
        release = first.hold("uid:1.2.3", "path:a.dcm")
        taken = threading.Event()

        def take() -> None:
            second.hold("path:a.dcm")()
            taken.set()

        waiter = threading.Thread(target=take)
        waiter.start()
        assert not taken.wait(0.5)  # the other node's lock holds it back
        second.hold("uid:other")()  # other keys are free
        release()
        assert taken.wait(10)
        waiter.join()
    finally:
        first.close()
        second.close()


def test_the_factory_picks_the_engine_by_url(tmp_path: Path, pg_cluster: Cluster) -> None:
    assert isinstance(index_for(None, tmp_path / "index.sqlite", connections=4), ArchiveIndex)
    chosen = index_for(pg_cluster.url(), tmp_path / "index.sqlite", connections=3)
    assert isinstance(chosen, PostgresIndex)
    assert chosen.connections == 3
    with pytest.raises(ValueError, match="not a postgresql:// URL") as raised:
        index_for("mysql://db/archive", tmp_path / "index.sqlite", connections=4)
    assert "\n" not in str(raised.value)


def test_a_pool_with_no_connection_free_in_time_is_an_os_error(pg_cluster: Cluster) -> None:
    index = PostgresIndex(pg_cluster.create_database(), connections=1, timeout=0.5)
    index.open()
    writing, finish = threading.Event(), threading.Event()

    def slow_write(_: Transaction) -> None:
        writing.set()
        finish.wait(30)

    with ThreadPoolExecutor(1) as other:
        written = other.submit(index.apply, slow_write)  # holds the pool's one connection
        assert writing.wait(30)
        with pytest.raises(OSError) as raised:
            index.lookup("1.2.3")
        finish.set()
        written.result()
    index.close()
    assert raised.value.errno == errno.EAGAIN


def test_locks_whose_connection_is_lost_are_released_quietly(pg_cluster: Cluster) -> None:
    index = postgres_index(pg_cluster)
    locks = index.locks()
    try:
        release = locks.hold("uid:1.2.3")
        terminate_backends(pg_cluster, index)
        release()  # the server let go of the lock with the connection
        locks.hold("uid:1.2.3")()
    finally:
        locks.close()
        index.close()

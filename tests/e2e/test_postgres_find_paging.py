"""A C-FIND's pages read from a PostgreSQL index: the tests of tests/test_archive_find_paging.py
that hold for any engine (pages, connections handed back and kept, snapshots that expire and
reads that resume after the last match), with the ``index`` fixture overridden.

Left to SQLite: its WAL checkpoints and its statement trace; and the reactor-side tests,
which run through the archive handler (the lead's integration gives them an engine)."""

from __future__ import annotations

import errno
from collections.abc import Iterator

import pytest

import tests.test_archive_find_paging as suite
from dicomd.archive.postgres import PostgresIndex
from dicomd.archive.query import ArchiveQuery
from tests.support.postgres import (
    Cluster,
    pg_cluster_fixture,  # noqa: F401 (pg_cluster)
    postgres_index,
    terminate_backends,
)

ANY_ENGINE = (
    "test_more_matches_than_a_page_come_a_page_at_a_time_as_find_has_them",
    "test_closing_before_the_last_page_ends_the_read_and_keeps_its_connection_for_the_next",
    "test_an_engine_keeps_a_few_connections_of_ended_reads",
    "test_each_query_reads_on_a_connection_of_its_own_closed_with_the_engine",
    "test_an_identifier_that_does_not_fit_opens_no_connection",
    "test_a_release_of_a_snapshot_already_gone_ends_nothing",
    "test_a_read_whose_snapshot_expires_at_each_page_resumes_after_the_last_match",
)
globals().update({name: getattr(suite, name) for name in ANY_ENGINE})


@pytest.fixture
def index(pg_cluster: Cluster) -> Iterator[PostgresIndex]:
    opened = postgres_index(pg_cluster)
    suite.LARGE.write(opened)
    yield opened
    opened.close()


def test_a_read_whose_connection_is_lost_fails_as_an_os_error_and_closes_quietly(
    index: PostgresIndex, pg_cluster: Cluster
) -> None:
    query = ArchiveQuery(index.connect_reader, page_rows=suite.PAGE)
    pages = query.pages(suite.every_image())
    assert len(pages.page()) == suite.PAGE
    terminate_backends(pg_cluster, index)

    with pytest.raises(OSError) as raised:
        pages.page()

    assert raised.value.errno == errno.ECONNABORTED
    pages.close()
    assert query.idle_connections == 0  # a broken connection is not kept
    assert len(query.find(suite.every_image())) == suite.LARGE.instances
    query.close()

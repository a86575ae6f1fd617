"""The archive's index in PostgreSQL, shared by every node of an archive (``index.url``).

The same tables, writes and C-FIND compiler as the embedded SQLite index
(`dicomd.archive.index`), in PostgreSQL's dialect
(`dicomd.archive.dialects.PostgresDialect`), through psycopg 3.  Blocking,
like the SQLite index: for the archive's threads, never the reactor's.

Writes and look-ups take connections from a psycopg_pool ``ConnectionPool``
of ``connections`` (size it to the archive's threads).  A node writes one
transaction at a time, as the SQLite index does, so that its stores still
commit in groups (`dicomd.archive.writer.GroupCommit`); nodes write at once,
and the unique constraints decide between them: ``adding(record,
replace=False)`` raises `DuplicateInstance` for the node that comes second.

C-FIND reads on connections of their own (`connect_reader`), which
`ArchiveQuery` keeps per thread and per open query as it keeps SQLite's: a
slow peer holding a read must never hold a connection writes wait for.  Each
read is a server-side cursor in a REPEATABLE READ, read-only transaction:
one snapshot, fetched a page at a time.

Cross-node locks (`AdvisoryLocks`) take their connections from a pool of
their own for the same reason: a store holds its locks while it writes.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final

import psycopg
from psycopg import IsolationLevel
from psycopg_pool import ConnectionPool, PoolTimeout
from twisted.logger import Logger
from zope.interface import implementer

from dicomd.archive.dialects import postgresql
from dicomd.archive.index import IndexClosed, IndexWrites, Outcome, Write, perform
from dicomd.archive.migrations import migrate
from dicomd.interfaces import IArchiveIndex

OPEN_TIMEOUT: Final = 30.0
"""Seconds to wait for the database at start-up."""
CONNECTION_TIMEOUT: Final = 5.0
"""Seconds a store or a look-up waits for a pooled connection, and that the pool tries to
connect again before it gives up (so that the next request tries at once): a database
that is down fails a store in seconds, and one that is back is used in seconds."""

_log = Logger(namespace="dicomd.archive.postgres")


class _OneLine(logging.Handler):
    """psycopg_pool's warnings as one line each in the daemon's log, not stderr's lines."""

    def emit(self, record: logging.LogRecord) -> None:
        _log.warn("{message}", message=" ".join(record.getMessage().split()))


_pool_logger = logging.getLogger("psycopg.pool")
_pool_logger.addHandler(_OneLine(logging.WARNING))
_pool_logger.propagate = False


@implementer(IArchiveIndex)
class PostgresIndex(IndexWrites):
    """The PostgreSQL index at ``url`` (``postgresql://user@host/database``).

    ``connections`` bounds the pool that writes and look-ups share; C-FIND
    readers (`connect_reader`) and locks (`locks`) connect beside it.
    ``commits`` counts this node's committed transactions.
    """

    def __init__(self, url: str, *, connections: int, timeout: float = OPEN_TIMEOUT) -> None:
        self.url = url
        self.dialect = postgresql()
        self.connections = connections
        self.timeout = timeout
        self.commits = 0
        self._pool: ConnectionPool | None = None
        self._write_lock = threading.Lock()

    def open(self) -> None:
        """Connect, and bring the schema to this dicomd's version (once across nodes)."""
        pool = ConnectionPool(
            self.url,
            min_size=1,
            max_size=self.connections,
            kwargs={"autocommit": True},
            timeout=CONNECTION_TIMEOUT,
            reconnect_timeout=self.timeout,  # at start-up: wait for the database to come up
            open=False,
            name="dicomd-index",
        )
        _log.info(
            "index: waiting up to {seconds:g} s for {url}",
            seconds=self.timeout,
            url=_shown(self.url),
        )
        try:
            with self.dialect.resource_errors():
                try:
                    pool.open(wait=True, timeout=self.timeout)
                except PoolTimeout:
                    _why_not(self.url, self.timeout)
                    raise
                with pool.connection() as connection:
                    migrate(connection, self.dialect)
                pool.reconnect_timeout = CONNECTION_TIMEOUT
        except BaseException:
            pool.close()
            raise
        self._pool = pool

    def close(self) -> None:
        """Close every pooled connection; readers are their callers' to close."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def write(self, writes: Sequence[Write]) -> list[Outcome]:
        """Perform ``writes`` in one transaction, each in its own savepoint; blocking.

        As `ArchiveIndex.write`: a write that raises fails alone; a lost
        connection or a full disk fails them all as an ``OSError``.
        """
        with self._write_lock, self._connection() as connection:
            outcomes, committed = perform(connection, self.dialect, writes)
        self.commits += committed
        return outcomes

    def lookup(self, sop_instance_uid: str) -> str | None:
        """The relative path of an indexed instance, or ``None``."""
        with self._connection() as connection:
            row = connection.execute(
                "SELECT path FROM instances WHERE SOPInstanceUID = %s", (sop_instance_uid,)
            ).fetchone()
        return row[0] if row else None

    def holder(self, path: str) -> str | None:
        """The SOP Instance UID of the instance indexed at ``path``, or ``None``."""
        with self._connection() as connection:
            row = connection.execute(
                "SELECT SOPInstanceUID FROM instances WHERE path = %s", (path,)
            ).fetchone()
        return row[0] if row else None

    def paths(self) -> Iterator[str]:
        """The relative path of every indexed instance, read a batch at a time."""
        with self._connection() as connection, connection.transaction():
            cursor = connection.cursor(name="dicomd_paths")
            for (path,) in cursor.execute("SELECT path FROM instances"):
                yield path

    def connect_reader(self) -> psycopg.Connection[Any]:
        """A new connection for C-FIND reads, each in a read-only REPEATABLE READ
        transaction (one snapshot); the caller closes it."""
        if self._pool is None:
            raise IndexClosed("the PostgreSQL index is not open")
        with self.dialect.resource_errors():
            connection = psycopg.connect(self.url, connect_timeout=int(self.timeout))
        connection.isolation_level = IsolationLevel.REPEATABLE_READ
        connection.read_only = True
        return connection

    def locks(self) -> AdvisoryLocks:
        """Locks across every node of the archive, with a pool of ``connections`` of their own."""
        return AdvisoryLocks(self.url, connections=self.connections, dialect=self.dialect)

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection; failing to get or use one is the ``OSError`` it amounts to."""
        pool = self._pool
        if pool is None:
            raise IndexClosed("the PostgreSQL index is not open")
        with self.dialect.resource_errors(), pool.connection() as connection:
            yield connection


class AdvisoryLocks:
    """Locks on keys that hold across every node sharing the index: PostgreSQL session
    advisory locks, the shape of `dicomd.archive.writer.ProcessLocks`.

    Each key is locked by a 64-bit hash of it, on a pooled connection kept
    until release; a holder takes its hashes in sorted order, so that two
    holders never deadlock.  A node that dies lets go of its locks with its
    connections.  Blocking: for the archive's threads.
    """

    def __init__(self, url: str, *, connections: int, dialect: Any) -> None:
        self._dialect = dialect
        self._pool = ConnectionPool(
            url,
            min_size=0,
            max_size=connections,
            kwargs={"autocommit": True},
            timeout=CONNECTION_TIMEOUT,
            reconnect_timeout=CONNECTION_TIMEOUT,
            open=True,
            name="dicomd-locks",
        )

    def hold(self, *keys: str) -> Callable[[], None]:
        """Once every key is held, the function that releases them.  No connection in time,
        or a connection lost while waiting, is the ``OSError`` it amounts to."""
        with postgresql().resource_errors():
            connection = self._pool.getconn()
            try:
                for number in sorted({lock_number(key) for key in keys}):
                    connection.execute("SELECT pg_advisory_lock(%s)", (number,))
            except BaseException:
                self._release(connection)
                raise
        return lambda: self._release(connection)

    def close(self) -> None:
        self._pool.close()

    def _release(self, connection: psycopg.Connection[Any]) -> None:
        """Let go of every lock of the connection; one that was lost has let go already."""
        try:
            if not (connection.closed or connection.broken):
                connection.execute("SELECT pg_advisory_unlock_all()")
        except psycopg.OperationalError:
            pass  # the connection was lost meanwhile: the server ended its locks with it
        finally:
            self._pool.putconn(connection)


def lock_number(key: str) -> int:
    """The advisory lock of ``key``: a signed 64-bit hash, the same on every node."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _shown(url: str) -> str:
    """``url`` without its password, for the log."""
    from psycopg.conninfo import conninfo_to_dict

    parts = conninfo_to_dict(url)
    user, host = parts.get("user", ""), parts.get("host", "")
    return f"postgresql://{user}@{host}:{parts.get('port', 5432)}/{parts.get('dbname', '')}"


def _why_not(url: str, waited: float) -> None:
    """Raise, in one line, why the database at ``url`` cannot be reached: the pool's own
    timeout says neither where nor why."""
    try:
        psycopg.connect(url, connect_timeout=5).close()
    except psycopg.Error as error:
        cause = " ".join(str(error).split("\n")[0].split())
        raise OSError(
            errno.ECONNREFUSED, f"index {_shown(url)}: no connection within {waited:g} s: {cause}"
        ) from None

"""What differs between the SQL of the archive's two index engines, SQLite and PostgreSQL.

The index (`dicomd.archive.index`) and the C-FIND compiler
(`dicomd.archive.query`) write their SQL once, in SQLite's spelling with
``?`` placeholders; a `Dialect` renders the few fragments that differ and
runs the reads whose mechanics differ (a server-side cursor in a snapshot
transaction on PostgreSQL, a plain statement on SQLite's WAL).

Why a layer of our own rather than SQLAlchemy Core: the compiler is the hot
path of C-FIND (about 8 us a match, most of it making data sets), and the
dialect differences are a handful of fragments: placeholders, GLOB, ``IS``,
``group_concat``, ``instr``, NULL ordering, collation and the name folding.
SQLAlchemy would put an expression tree, a compile step and a result proxy
between every query and its rows, and hide the SQL that the query-plan
tests check; this module keeps the SQL visible and costs one ``str.replace``
per statement on PostgreSQL, nothing on SQLite.

Both must behave the same: text compares by code point (SQLite's BINARY;
PostgreSQL's ``COLLATE "C"`` on every text column of a UTF-8 database),
wildcards are exact and case-sensitive (GLOB; LIKE with ``%``, ``_`` and
``\\`` escaped), NULLs sort first, and case-insensitive names compare the
same folding (`fold_name`): SQLite calls it as a function, PostgreSQL, which
has no Unicode case folding, reads it from columns the index fills in Python
(`name_folds`).
"""

from __future__ import annotations

import errno
import re
import sqlite3
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from typing import Any, Final

NAME_COLUMNS: Final = ("PatientName", "ReferringPhysicianName")
"""The person-name columns a query may match case-insensitively."""
NAME_GROUPS: Final = 3


def fold_name(text: str | None) -> str | None:
    """A name as case-insensitive matching compares it: case-folded, then NFKC-normalised."""
    return None if text is None else unicodedata.normalize("NFKC", text.casefold())


def name_group(name: str, number: int) -> str:
    """Component group ``number`` of a stored name, trailing ``^`` and spaces removed: what
    the compiler's SQL computes (``dicomd.archive.query._name_group_sql``)."""
    groups = name.split("=")
    return groups[number].rstrip("^ ") if number < len(groups) else ""


def name_folds(name: str | None) -> tuple[str | None, ...]:
    """The folded component groups of a stored name, for the columns PostgreSQL keeps them in."""
    if name is None:
        return (None,) * NAME_GROUPS
    return tuple(fold_name(name_group(name, number)) for number in range(NAME_GROUPS))


def fold_column(column: str, number: int) -> str:
    """The column holding group ``number`` of ``column`` folded (PostgreSQL)."""
    return f"{column}_fold{number}"


class Dialect:
    """SQLite's spelling of the fragments that differ, and its way of reading."""

    name = "sqlite"
    begin = "BEGIN IMMEDIATE"
    fold_columns = False
    """Whether the folded name groups are kept in columns (`name_folds`)."""

    def render(self, sql: str) -> str:
        """A statement written with ``?`` placeholders, as the driver takes it."""
        return sql

    def glob(self, sql: str) -> str:
        """An exact, case-sensitive wildcard match of ``sql`` against one parameter."""
        return f"{sql} GLOB ?"

    def glob_pattern(self, tokens: Sequence[str]) -> str:
        """The parameter of `glob` for a value split into ``*``, ``?`` and literal runs."""
        return "".join(token if token in "*?" else _glob_literal(token) for token in tokens)

    def same(self, sql: str) -> str:
        """``sql`` equal to one parameter, NULL equal to NULL."""
        return f"{sql} IS ?"

    def group_concat(self, value: str, separator: str) -> str:
        return f"group_concat({value}, '{separator}')"

    def instr(self, text: str, part: str) -> str:
        """The 1-based position of ``part`` in ``text``, 0 when absent."""
        return f"instr({text}, {part})"

    def unindexed(self, sql: str) -> str:
        """``sql`` as a value no index is walked for (SQLite's unary plus)."""
        return f"+{sql}"

    def order(self, sql: str) -> str:
        """An ORDER BY term, NULLs first as SQLite sorts them."""
        return sql

    def folded_name_group(self, column: str, number: int, group_sql: str) -> str:
        """Group ``number`` of a name column, folded (`fold_name`)."""
        return f"dicomd_fold({group_sql})"

    def ddl(self, sql: str) -> str:
        """A schema statement written for SQLite, in this engine's types."""
        return sql

    def os_error(self, error: BaseException) -> BaseException:
        """A full or failing disk as the ``OSError`` it is, so callers answer "out of
        resources"; any other error as it is."""
        code = getattr(error, "sqlite_errorcode", None)
        if code is None or code & 0xFF not in _OS_ERRNO_OF_SQLITE:
            return error
        return _os_error(_OS_ERRNO_OF_SQLITE[code & 0xFF], error)

    def is_transient(self, error: BaseException) -> bool:
        """Whether ``error`` ended a transaction that may succeed when tried again.  SQLite
        has one writer at a time: it never gives up on one for another."""
        return False

    @contextmanager
    def resource_errors(self) -> Iterator[None]:
        """Raise what fails within as `os_error` has it."""
        try:
            yield
        except Exception as error:
            translated = self.os_error(error)
            if translated is error:
                raise
            raise translated from error

    # Reads.  They fail as `resource_errors` has it: a lost connection or a failing disk is
    # an OSError for the find service to answer "out of resources".

    def prepare(self, connection: Any) -> None:
        """Make a new read connection ready for the compiler's statements."""
        connection.create_function("dicomd_fold", 1, fold_name, deterministic=True)

    def open_rows(self, connection: Any, sql: str, parameters: Sequence[Any]) -> Any:
        """A cursor over the rows of a statement, read with `fetch`; it keeps a snapshot
        of the index until `close_rows`."""
        with self.resource_errors():
            return connection.execute(sql, parameters)

    def fetch(self, cursor: Any, rows: int) -> list[Any]:
        """The next ``rows`` rows of a cursor of `open_rows`, fewer at its end."""
        with self.resource_errors():
            return cursor.fetchmany(rows)

    def close_rows(self, connection: Any, cursor: Any) -> None:
        cursor.close()

    def all_rows(self, connection: Any, sql: str, parameters: Sequence[Any]) -> list[Any]:
        """Every row of a statement, its snapshot ended."""
        with self.resource_errors():
            return connection.execute(sql, parameters).fetchall()

    def is_idle(self, connection: Any) -> bool:
        """Whether a read connection holds no snapshot, and may serve the next query."""
        return not connection.in_transaction


class PostgresDialect(Dialect):
    """PostgreSQL's spelling, through psycopg 3."""

    name = "postgresql"
    begin = "BEGIN"
    fold_columns = True

    def __init__(self) -> None:
        import psycopg
        from psycopg_pool import PoolTimeout

        self._psycopg = psycopg
        self._pool_timeout = PoolTimeout

    def render(self, sql: str) -> str:
        return _psycopg_placeholders(sql)

    def glob(self, sql: str) -> str:
        return f"{sql} LIKE ? ESCAPE '\\'"

    def glob_pattern(self, tokens: Sequence[str]) -> str:
        return "".join(_LIKE_WILDCARDS.get(token) or _like_literal(token) for token in tokens)

    def same(self, sql: str) -> str:
        return f"{sql} IS NOT DISTINCT FROM ?"

    def group_concat(self, value: str, separator: str) -> str:
        return f"string_agg({value}, '{separator}')"

    def instr(self, text: str, part: str) -> str:
        return f"strpos({text}, {part})"

    def unindexed(self, sql: str) -> str:
        return sql

    def order(self, sql: str) -> str:
        return f"{sql} NULLS FIRST"

    def folded_name_group(self, column: str, number: int, group_sql: str) -> str:
        return fold_column(column, number)

    def ddl(self, sql: str) -> str:
        sql = sql.replace(
            "INTEGER PRIMARY KEY", "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"
        )
        sql = re.sub(r"\bINTEGER\b", "BIGINT", sql)
        return re.sub(r"\bTEXT\b", 'TEXT COLLATE "C"', sql)

    def os_error(self, error: BaseException) -> BaseException:
        errors = self._psycopg.errors
        if isinstance(error, errors.DiskFull):
            return _os_error(errno.ENOSPC, error)
        if isinstance(error, errors.OutOfMemory):
            return _os_error(errno.ENOMEM, error)
        if isinstance(error, errors.IoError | errors.DataCorrupted):
            return _os_error(errno.EIO, error)
        if isinstance(error, errors.TooManyConnections):
            return _os_error(errno.EAGAIN, error)
        if type(error) is self._psycopg.OperationalError or isinstance(
            error, errors.ConnectionException | errors.AdminShutdown | errors.CannotConnectNow
        ):
            return _os_error(errno.ECONNABORTED, error)
        if isinstance(error, self._pool_timeout):
            return _os_error(errno.EAGAIN, error)
        return error

    def is_transient(self, error: BaseException) -> bool:
        errors = self._psycopg.errors
        return isinstance(error, errors.DeadlockDetected | errors.SerializationFailure)

    def prepare(self, connection: Any) -> None:
        pass

    def open_rows(self, connection: Any, sql: str, parameters: Sequence[Any]) -> Any:
        # A server-side cursor in the connection's REPEATABLE READ, read-only transaction:
        # one snapshot for the statement, rows fetched a page at a time.
        cursor = connection.cursor(name="dicomd_find")
        with self.resource_errors():
            cursor.execute(self.render(sql), parameters)
        return cursor

    def close_rows(self, connection: Any, cursor: Any) -> None:
        if connection.broken or connection.closed:
            return  # the server ended the transaction with the connection
        cursor.close()
        connection.rollback()

    def all_rows(self, connection: Any, sql: str, parameters: Sequence[Any]) -> list[Any]:
        try:
            return super().all_rows(connection, self.render(sql), parameters)
        finally:
            if not (connection.broken or connection.closed):
                connection.rollback()

    def is_idle(self, connection: Any) -> bool:
        idle = self._psycopg.pq.TransactionStatus.IDLE
        return not connection.closed and connection.info.transaction_status == idle


SQLITE: Final = Dialect()


@cache
def postgresql() -> PostgresDialect:
    """The PostgreSQL dialect; psycopg is imported only when it is used."""
    return PostgresDialect()


def dialect_of(connection: Any) -> Dialect:
    """The dialect of a read connection: SQLite's, or PostgreSQL's for a psycopg one."""
    if isinstance(connection, sqlite3.Connection):
        return SQLITE
    return postgresql()


_OS_ERRNO_OF_SQLITE: Final = {sqlite3.SQLITE_FULL: errno.ENOSPC, sqlite3.SQLITE_IOERR: errno.EIO}
_LIKE_WILDCARDS: Final = {"*": "%", "?": "_"}


def _os_error(number: int, error: BaseException) -> OSError:
    lines = str(error).strip().splitlines()
    os_error = OSError(number, f"index: {lines[0] if lines else type(error).__name__}")
    os_error.__cause__ = error
    return os_error


def _glob_literal(text: str) -> str:
    """Text GLOB matches literally: its special characters each in a one-character class."""
    return re.sub(r"([*?\[\]])", r"[\1]", text)


def _like_literal(text: str) -> str:
    """Text LIKE ... ESCAPE '\\' matches literally."""
    return re.sub(r"([%_\\])", r"\\\1", text)


def _psycopg_placeholders(sql: str) -> str:
    # The archive's SQL has no literal '?' and no literal '%'; psycopg wants %s and %%.
    return sql.replace("%", "%%").replace("?", "%s")

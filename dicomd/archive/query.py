"""The archive's C-FIND engine: a query identifier made into one SQL statement over the index.

The C-FIND service decodes the peer's identifier and streams the answers;
this module only decides which entities match and what the index knows of
them, and reads them a page at a time (`FindPages`), so that a query over
the whole archive never holds more than a page of matches.  It blocks
(SQLite), so the archive calls it from a thread pool.

What it accepts, beyond the letter of PS3.4 C.4.1.2.2.1 / C.4.1.3.1:

* Hierarchy.  Below the top level the standard asks for the unique key of
  every higher level with a single value; this engine asks only for the
  immediate parent's (Patient ID at STUDY level of Patient Root, Study
  Instance UID at SERIES level, Series Instance UID at IMAGE level), because
  UIDs are unique on their own and dcmtk and pynetdicom peers often send just
  that one.  Other keys of higher levels, unique or not, are matched like any
  key of the query level.  A relational query (``FindQuery.relational``, PS3.4
  C.4.1.2.2) needs not even that one: an IMAGE query may name only a
  StudyInstanceUID, a Patient Root STUDY query no PatientID.  Keys of levels
  below the query level stay return keys in either kind.
* Keys of lower levels than the query level, sequences, and attributes the
  index does not hold are return keys: they never constrain the match, and
  the service answers them empty.  ``supported_keys`` names what this engine
  matches and returns, so that the service can say FF01 for the rest.
* Several values in one key (``CT\\MR``) match when any of them matches: List
  of UID Matching for UIDs and, since Multiple Value Matching is not
  negotiated, the same "any" reading for every other key (PS3.4 C.2.2.2.8
  leaves it undefined).  ``ModalitiesInStudy`` and ``SOPClassesInStudy``
  match a study when any of its series or instances matches.
* An empty value or one made of ``*`` only is Universal Matching for every
  VR; otherwise ``*`` and ``?`` are wildcards for text and names, and make a
  UID, date, time or number invalid (QueryError).  An entity without a value
  never matches a key that is not universal.
* Person names: a value's component groups (``alphabetic=ideographic=
  phonetic``) each constrain the same group of the stored name, empty groups
  constrain nothing, trailing ``^`` are insignificant.  With
  ``case_insensitive_names`` both sides are case-folded and NFKC-normalised,
  which PS3.4 C.2.2.2.1 permits for PN; such queries cannot use the name index.
  Names are compared as Unicode: the identifier and the index are both
  decoded, whatever character set either arrived in.
* Times: a partial time stands for its whole span (``10`` is 10:00:00 to
  10:59:59.999999, also as a single value); stored partial times count as
  their first instant; ``HH:MM:SS`` is accepted.  Dates are ``YYYYMMDD``.
* Combined date and time (C.2.2.2.5.1): when a date key and its time key
  (``StudyDate``/``StudyTime``, ``SeriesDate``/``SeriesTime``) both hold one
  range, they form one date-time range; a time bound counts only with the
  date bound on the same side, and a stored date without a time matches when
  any instant of that day is in the range.  This applies whether or not the
  peer negotiated combined matching, which the service does not pass on.
* Numbers (IS) match by value (PS3.4 leaves IS matching to the implementation).
* Counts and lists computed over lower levels (``NumberOf...``,
  ``ModalitiesInStudy``, ``SOPClassesInStudy``) are computed only when the
  identifier names them; a value on a count is ignored.
"""

from __future__ import annotations

import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import date
from functools import cache
from typing import Any, Final

from pydicom import Dataset, config
from pydicom.datadict import dictionary_VR, keyword_dict
from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag

from dicomd.archive.dialects import SQLITE, Dialect, dialect_of, fold_name
from dicomd.archive.index import (
    INSTANCE_KEYWORDS,
    PATIENT_KEYWORDS,
    SERIES_KEYWORDS,
    STUDY_KEYWORDS,
)
from dicomd.interfaces import FindQuery, IAnswerEncoder, InvalidIdentifier
from dicomd.uids import PATIENT_ROOT_FIND, STUDY_ROOT_FIND


class QueryError(InvalidIdentifier):
    """The identifier does not fit the information model or its level; the message says why."""


class QueryClosed(RuntimeError):
    """A page was asked of a query whose read was closed before its last page."""


_LEVELS: Final = ("PATIENT", "STUDY", "SERIES", "IMAGE")
_PATIENT, _STUDY, _SERIES, _IMAGE = range(4)

_MODEL_LEVELS: Final = {
    PATIENT_ROOT_FIND: (_PATIENT, _STUDY, _SERIES, _IMAGE),
    STUDY_ROOT_FIND: (_STUDY, _SERIES, _IMAGE),
}

_PARENT_KEYS: Final = {
    (PATIENT_ROOT_FIND, _STUDY): "PatientID",
    (PATIENT_ROOT_FIND, _SERIES): "StudyInstanceUID",
    (PATIENT_ROOT_FIND, _IMAGE): "SeriesInstanceUID",
    (STUDY_ROOT_FIND, _SERIES): "StudyInstanceUID",
    (STUDY_ROOT_FIND, _IMAGE): "SeriesInstanceUID",
}
"""The one unique key of a higher level that a query at a lower level must carry."""

_TABLES: Final = (
    "patients AS p",
    "studies AS st JOIN patients AS p ON p.pk = st.patient_pk",
    "series AS se JOIN studies AS st ON st.pk = se.study_pk "
    "JOIN patients AS p ON p.pk = st.patient_pk",
    "instances AS i JOIN series AS se ON se.pk = i.series_pk "
    "JOIN studies AS st ON st.pk = se.study_pk JOIN patients AS p ON p.pk = st.patient_pk",
)
_ORDER: Final = (
    ("p.pk",),
    ("st.StudyDate", "st.StudyTime", "st.pk"),
    ("se.SeriesNumber", "se.pk"),
    ("i.InstanceNumber", "i.pk"),
)
"""The order of the matches at each level; each ends with a primary key, so it is total."""
_ALIASES: Final = ("p", "st", "se", "i")
_RETRIEVE_KEYS: Final = (
    ("PatientID", "p.PatientID"),
    ("StudyInstanceUID", "st.StudyInstanceUID"),
    ("SeriesInstanceUID", "se.SeriesInstanceUID"),
    ("SOPInstanceUID", "i.SOPInstanceUID"),
)
_HAS_UID: Final = {
    1: "st.StudyInstanceUID IS NOT NULL",
    2: "se.SeriesInstanceUID IS NOT NULL",
}

IDLE_READERS: Final = 4
"""Connections of ended reads an engine keeps for the next queries (`ArchiveQuery.pages`)."""
PAGE_ROWS: Final = 256
"""Matches read and made into data sets at a time: what a query holds in memory."""
SNAPSHOT_SECONDS: Final = 30.0
"""The longest one read of a query keeps its snapshot of the index.  A reader holding a
snapshot keeps the writer's WAL from being checkpointed past it, so the WAL grows while a
slow peer takes its matches; past this the read ends and the next page starts a new one."""

_INSTANCE_KEYS_RENAMED: Final = {"TransferSyntaxUID": "AvailableTransferSyntaxUID"}
_NOT_KEYS: Final = frozenset({"SpecificCharacterSet"})
"""Indexed columns that are no query keys: the character set belongs to the service."""


@dataclass(frozen=True, slots=True)
class _Column:
    """An attribute the index holds in a column."""

    keyword: str
    level: int
    sql: str
    vr: str


def _columns() -> dict[str, _Column]:
    held = (PATIENT_KEYWORDS, STUDY_KEYWORDS, SERIES_KEYWORDS, INSTANCE_KEYWORDS)
    columns = {}
    for level, keywords in enumerate(held):
        for name in keywords:
            if name in _NOT_KEYS:
                continue
            keyword = _INSTANCE_KEYS_RENAMED.get(name, name) if level == _IMAGE else name
            sql = f"{_ALIASES[level]}.{name}"
            columns[keyword] = _Column(keyword, level, sql, dictionary_VR(keyword))
    return columns


_COLUMNS: Final = _columns()

_STUDY_SERIES: Final = "series AS m WHERE m.study_pk = st.pk"
_STUDY_INSTANCES: Final = (
    "series AS m JOIN instances AS n ON n.series_pk = m.pk WHERE m.study_pk = st.pk"
)
_PATIENT_SERIES: Final = (
    "studies AS k JOIN series AS m ON m.study_pk = k.pk WHERE k.patient_pk = p.pk"
)
_PATIENT_INSTANCES: Final = (
    "studies AS k JOIN series AS m ON m.study_pk = k.pk "
    "JOIN instances AS n ON n.series_pk = m.pk WHERE k.patient_pk = p.pk"
)


@dataclass(frozen=True, slots=True)
class _Computed:
    """An attribute computed over lower levels, only when asked for.

    ``source`` is the correlated ``FROM ... WHERE`` of the rows it is made of,
    ``value`` what is taken of each: ``count(*)``, or a column for a list.
    """

    keyword: str
    level: int
    source: str
    value: str | None = None

    def select(self, dialect: Dialect) -> str:
        if self.value is None:
            return f"(SELECT count(*) FROM {self.source})"
        return (
            f"(SELECT {dialect.group_concat('v', chr(92))} FROM (SELECT DISTINCT {self.value} AS v "
            f"FROM {self.source} AND {self.value} IS NOT NULL) AS subquery)"
        )


_COMPUTED: Final = {
    computed.keyword: computed
    for computed in (
        _Computed(
            "NumberOfPatientRelatedStudies", _PATIENT, "studies AS k WHERE k.patient_pk = p.pk"
        ),
        _Computed("NumberOfPatientRelatedSeries", _PATIENT, _PATIENT_SERIES),
        _Computed("NumberOfPatientRelatedInstances", _PATIENT, _PATIENT_INSTANCES),
        _Computed("NumberOfStudyRelatedSeries", _STUDY, _STUDY_SERIES),
        _Computed("NumberOfStudyRelatedInstances", _STUDY, _STUDY_INSTANCES),
        _Computed(
            "NumberOfSeriesRelatedInstances", _SERIES, "instances AS n WHERE n.series_pk = se.pk"
        ),
        _Computed("ModalitiesInStudy", _STUDY, _STUDY_SERIES, "m.Modality"),
        _Computed("SOPClassesInStudy", _STUDY, _STUDY_INSTANCES, "n.SOPClassUID"),
    )
}

_DATE_TIME_PAIRS: Final = tuple(
    (column.keyword, column.keyword.removesuffix("Date") + "Time")
    for column in _COLUMNS.values()
    if column.vr == "DA"
    and column.keyword.endswith("Date")
    and column.keyword.removesuffix("Date") + "Time" in _COLUMNS
)

_TEXT_VRS: Final = frozenset({"AE", "CS", "LO", "LT", "SH", "ST", "UC", "UR", "UT"})
_TIME: Final = re.compile(r"(\d\d)(?::?(\d\d)(?::?(\d\d)(?:\.(\d{1,6}))?)?)?")
_DATE: Final = re.compile(r"\d{8}")
_INTEGER: Final = re.compile(r"[+-]?\d+")
_EQUALS: Final = "'='"
_EARLIEST_TIME: Final = "000000000000"
_LATEST_TIME: Final = "235959999999"


class ArchiveQuery:
    """Finds the entities of the archive index that match a C-FIND identifier.

    ``connect`` opens a read connection to the index
    (``ArchiveIndex.connect_reader``, ``PostgresIndex.connect_reader``); the
    kind of connection tells the SQL dialect (`dialect_of`).  ``find`` and ``instances`` use one
    per calling thread, kept until ``close``; ``pages`` gives each query one
    of its own, because the pages of one query may be read by different
    threads while other queries use theirs: a connection whose read has
    ended, kept for the next (up to `IDLE_READERS` of them), or a new one.
    ``page_rows`` and ``snapshot_seconds`` are `PAGE_ROWS` and
    `SNAPSHOT_SECONDS` unless told otherwise.
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        *,
        case_insensitive_names: bool = False,
        page_rows: int = PAGE_ROWS,
        snapshot_seconds: float = SNAPSHOT_SECONDS,
    ) -> None:
        self._connect = connect
        self.case_insensitive_names = case_insensitive_names
        self.page_rows = page_rows
        self.snapshot_seconds = snapshot_seconds
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[Any] = []
        self._idle: list[Any] = []
        self._open_pages: weakref.WeakSet[FindPages] = weakref.WeakSet()

    def find(self, query: FindQuery) -> list[Dataset]:
        """The matches of ``query``, each with every attribute the index holds at its level and
        above and the computed attributes the identifier asks for.  Blocks; raises
        ``QueryError`` when the identifier does not fit the model or its level.

        Read through the same pages as `pages`, on this thread's connection.
        """
        statement = self._statement(query, self._dialect())
        pages = FindPages(self._connection(), statement, self.page_rows, self.snapshot_seconds)
        try:
            return [match for page in iter(pages.page, []) for match in page]
        finally:
            pages.close()

    def pages(self, query: FindQuery) -> FindPages:
        """The matches of ``query`` (as `find` has them), to be read a page at a time over a
        connection of their own, which `FindPages.close` hands back.  Blocks; raises
        ``QueryError`` before opening anything when the identifier does not fit."""
        statement = self._statement(query, SQLITE)  # refused before a connection is opened
        with self._lock:
            connection = self._idle.pop() if self._idle else None
        if connection is None:
            connection = self._open_connection()
        if dialect_of(connection) is not SQLITE:
            statement = self._statement(query, dialect_of(connection))
        pages = FindPages(
            connection, statement, self.page_rows, self.snapshot_seconds, release=self._release
        )
        with self._lock:
            self._open_pages.add(pages)
        return pages

    @property
    def idle_connections(self) -> int:
        """How many connections of ended reads are kept for the next queries."""
        with self._lock:
            return len(self._idle)

    def instances(self, query: FindQuery) -> list[tuple[str, str, str, str]]:
        """The instances a C-MOVE or C-GET identifier selects by its unique keys.

        Rows of (path, SOPClassUID, SOPInstanceUID, TransferSyntaxUID).  Each
        unique key of the query level and of the levels above it (PatientID,
        StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID) that the identifier
        holds selects, with a value or a list of them (PS3.4 C.4.2.2.1).  A
        hierarchical retrieve needs the key of its own level; a relational one
        (``query.relational``, C.4.2.2.2) any one of them, so that an IMAGE
        retrieve with only a StudyInstanceUID sends the whole study.  A retrieve
        never means "everything".  PatientID selects in Study Root too, where it
        is an attribute of the study.
        """
        keys = _RETRIEVE_KEYS[: _level_number(query.level) + 1]
        selecting = [
            (column, values)
            for keyword, column in keys
            if (values := _unique_key_values(query.identifier, keyword))
        ]
        own_keyword, own_column = keys[-1]
        if not query.relational and not any(column == own_column for column, _ in selecting):
            raise QueryError(f"a {query.level} retrieve needs {own_keyword}")
        if not selecting:
            named = ", ".join(keyword for keyword, _ in keys)
            raise QueryError(f"a {query.level} retrieve needs one of {named}")
        conditions = [
            f"{column} IN ({', '.join('?' * len(values))})" for column, values in selecting
        ]
        parameters = [value for _, values in selecting for value in values]
        connection = self._connection()
        dialect = dialect_of(connection)
        order = ("st.pk", "se.SeriesNumber", "se.pk", "i.InstanceNumber", "i.pk")
        sql = (
            "SELECT i.path, i.SOPClassUID, i.SOPInstanceUID, i.TransferSyntaxUID "
            f"FROM {_TABLES[3]} WHERE {' AND '.join(conditions)} "
            f"ORDER BY {', '.join(map(dialect.order, order))}"
        )
        return [tuple(row) for row in dialect.all_rows(connection, sql, parameters)]

    def count_instances(self) -> int:
        """How many instances the index holds; blocks (a count of the instances' rows, which
        both engines read from an index: milliseconds for a million)."""
        connection = self._connection()
        rows = dialect_of(connection).all_rows(connection, "SELECT count(*) FROM instances", ())
        return int(rows[0][0])

    def supported_keys(self, level: str) -> frozenset[str]:
        """The keywords this engine matches or returns at ``level`` (in any model).

        Specific Character Set, Query/Retrieve Level and Retrieve AE Title are
        the service's own and are not in it.
        """
        depth = _level_number(level)
        return frozenset(
            keyword
            for keyword, attribute in (*_COLUMNS.items(), *_COMPUTED.items())
            if attribute.level <= depth
        )

    def close(self) -> None:
        """Close every connection opened so far, those of unfinished `pages` and those kept
        for the next too; a later query opens new ones.  No page may be being read
        meanwhile."""
        with self._lock:
            connections, self._connections = self._connections, []
            open_pages, self._open_pages = list(self._open_pages), weakref.WeakSet()
            self._local = threading.local()
        for pages in open_pages:
            pages.close()
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in (*connections, *idle):
            connection.close()

    def _release(self, connection: Any) -> None:
        """Keep the connection of an ended read for the next query, or close it.

        A new connection costs SQLite a parse of the schema at its first
        statement and a compile of every statement: 0.3 ms, more than the
        SQL of most queries.  One kept holds no snapshot: its read has ended.
        """
        with self._lock:
            if len(self._idle) < IDLE_READERS and dialect_of(connection).is_idle(connection):
                self._idle.append(connection)
                return
        connection.close()

    def _statement(self, query: FindQuery, dialect: Dialect) -> _Statement:
        return _Statement.build(query, dialect, fold_names=self.case_insensitive_names)

    def _dialect(self) -> Dialect:
        return dialect_of(self._connection())

    def _connection(self) -> Any:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._open_connection()
            with self._lock:
                self._connections.append(connection)
                self._local.connection = connection
        return connection

    def _open_connection(self) -> Any:
        connection = self._connect()
        dialect_of(connection).prepare(connection)
        return connection


class FindPages:
    """The matches of one query, read from the index a page at a time.

    Blocking, and for one thread at a time (any thread: a lock keeps two
    calls from overlapping).  The matches come in the order of the statement;
    a read keeps a snapshot of the index while its statement is open, so
    after ``snapshot_seconds`` the statement is ended and the next page is
    read by a new one that starts after the last row read (by the ORDER BY
    key, which ends with a primary key): a slow reader never keeps the WAL
    from being checkpointed for longer.  Rows changed in between are seen as
    they are then, as a page read at that time would see them.

    ``done`` once the last match has been read: the statement has ended.
    `close` ends it early, and hands the connection to ``release`` when the
    query has it for itself (`ArchiveQuery.pages`).
    """

    def __init__(
        self,
        connection: Any,
        statement: _Statement,
        page_rows: int,
        snapshot_seconds: float,
        *,
        release: Callable[[Any], None] | None = None,
    ) -> None:
        self.done = False
        self.closed = False
        self.read = 0
        """How many matches have been read so far."""
        self.snapshots = 0
        """How many statements have been opened: each read a snapshot of its own."""
        self._connection = connection
        self._statement = statement
        self._page_rows = page_rows
        self._snapshot_seconds = snapshot_seconds
        self._release = release
        self._lock = threading.Lock()
        self._cursor: Any = None
        self._opened_at = 0.0
        self._last_key: tuple[Any, ...] | None = None

    def page(self, encoder: IAnswerEncoder | None = None) -> list[Dataset] | list[bytes | Dataset]:
        """The next matches, at most ``page_rows`` of them; ``[]`` once there are no more.

        Each is a Dataset, or with an ``encoder`` the answer it encodes of the match's
        values (a Dataset where it cannot).
        """
        with self._lock:
            if self.done:
                return []
            if self.closed:
                raise QueryClosed("the query was closed before its last page")
            if self._cursor is not None and time.monotonic() >= self._deadline():
                self._end_snapshot()
            cursor = self._cursor if self._cursor is not None else self._execute()
            rows = self._statement.dialect.fetch(cursor, self._page_rows)
            if len(rows) < self._page_rows:
                self.done = True
                self._end_snapshot()
            width = len(self._statement.returned)
            if rows:
                self._last_key = tuple(rows[-1][width:])
                self.read += len(rows)
            keywords = self._statement.returned
            if encoder is None:
                return [_dataset(_match_values(keywords, row[:width])) for row in rows]
            return [_encoded(encoder, _match_values(keywords, row[:width])) for row in rows]

    def snapshot_left(self) -> float | None:
        """Seconds the open statement may still keep its snapshot; None when none is open."""
        if self._cursor is None:
            return None
        return max(self._deadline() - time.monotonic(), 0.0)

    def release(self, snapshot: int) -> None:
        """End the statement numbered ``snapshot`` if it is still open: the next page starts
        a new one.  For a reader that has not asked for a page in a while."""
        with self._lock:
            if self.snapshots == snapshot:
                self._end_snapshot()

    def close(self) -> None:
        """End the read, and hand the connection to ``release`` if it has one.  Idempotent."""
        with self._lock:
            if self.closed:
                return
            self._end_snapshot()
            self.closed = True
            if self._release is not None:
                self._release(self._connection)

    def _execute(self) -> Any:
        statement = self._statement
        if self._last_key is not None:
            statement = statement.after(self._last_key)
        self._cursor = statement.dialect.open_rows(
            self._connection, statement.sql, statement.parameters
        )
        self._opened_at = time.monotonic()
        self.snapshots += 1
        return self._cursor

    def _deadline(self) -> float:
        return self._opened_at + self._snapshot_seconds

    def _end_snapshot(self) -> None:
        if self._cursor is not None:
            cursor, self._cursor = self._cursor, None
            self._statement.dialect.close_rows(self._connection, cursor)


def _level_number(level: str) -> int:
    try:
        return _LEVELS.index(level)
    except ValueError:
        raise QueryError(f"unknown Query/Retrieve Level {level!r}") from None


@dataclass(frozen=True, slots=True)
class _Statement:
    """One SELECT: its conditions and their parameters, the keywords of its first result
    columns and the columns it is ordered by, which end each row so that a read can go on
    after any row (`after`)."""

    dialect: Dialect
    select: str
    clauses: tuple[str, ...]
    parameters: tuple[Any, ...]
    order: tuple[str, ...]
    returned: tuple[str, ...]

    @classmethod
    def build(cls, query: FindQuery, dialect: Dialect, *, fold_names: bool) -> _Statement:
        depth = _query_level(query)
        keys = _keys(query.identifier, depth)
        parent = _PARENT_KEYS.get((query.model, depth))
        if parent is not None and not query.relational:
            _require_single_value(parent, keys.get(parent))
        conditions = _Conditions(fold_names, dialect)
        # Studies and series of instances that carried no UID for them are
        # archived, but cannot be named in a query or a retrieve: not listed.
        conditions.clauses += [_HAS_UID[level] for level in range(1, min(depth, 2) + 1)]
        paired = conditions.add_date_time_ranges(keys)
        for keyword, values in keys.items():
            if keyword in paired:
                continue
            if keyword in _COLUMNS:
                column = _COLUMNS[keyword]
                conditions.add(column.sql, column.vr, keyword, values)
            elif _COMPUTED[keyword].value is not None:
                conditions.add_any_below(_COMPUTED[keyword], values)
        held = [column for column in _COLUMNS.values() if column.level <= depth]
        computed = [_COMPUTED[keyword] for keyword in keys if keyword in _COMPUTED]
        order = _ORDER[depth]
        select = [column.sql for column in held] + [
            attribute.select(dialect) for attribute in computed
        ]
        returned = tuple(attribute.keyword for attribute in (*held, *computed))
        return cls(
            dialect,
            f"SELECT {', '.join((*select, *order))} FROM {_TABLES[depth]}",
            tuple(conditions.clauses),
            tuple(conditions.parameters),
            order,
            returned,
        )

    @property
    def sql(self) -> str:
        where = f" WHERE {' AND '.join(self.clauses)}" if self.clauses else ""
        order = ", ".join(map(self.dialect.order, self.order))
        return f"{self.select}{where} ORDER BY {order}"

    def after(self, key: Sequence[Any]) -> _Statement:
        """The same statement for the rows ordered after the row whose order columns hold
        ``key``.  NULL sorts first (`Dialect.order`): any value comes after it, and
        `Dialect.same` compares NULLs as equal."""
        alternatives = []
        parameters: list[Any] = []
        for position, (column, value) in enumerate(zip(self.order, key, strict=True)):
            terms = [self.dialect.same(earlier) for earlier in self.order[:position]]
            parameters += key[:position]
            if value is None:
                terms.append(f"{column} IS NOT NULL")
            else:
                terms.append(f"{column} > ?")
                parameters.append(value)
            alternatives.append(" AND ".join(terms))
        clause = "(" + " OR ".join(f"({terms})" for terms in alternatives) + ")"
        return replace(
            self,
            clauses=(*self.clauses, clause),
            parameters=(*self.parameters, *parameters),
        )


def _query_level(query: FindQuery) -> int:
    """The level asked for, checked against the model; ``query.level``, else the identifier's."""
    levels = _MODEL_LEVELS.get(query.model)
    if levels is None:
        raise QueryError(f"{query.model} is not a Patient or Study Root C-FIND model")
    level = query.level or query.identifier.get("QueryRetrieveLevel", "")
    if not isinstance(level, str) or not level.strip():
        raise QueryError("no Query/Retrieve Level")
    depth = _level_number(level.strip())
    if depth not in levels:
        raise QueryError(f"{level.strip()} is not a level of this information model")
    return depth


def _keys(identifier: Dataset, depth: int) -> dict[str, list[str]]:
    """The identifier's keys this engine knows at the query level and above, with their values.

    A key with no value, or only empty values, maps to ``[]``; so does every count, whose
    value is never read: it is a return key only.
    """
    keys = {}
    for keyword in identifier.dir():
        attribute = _COLUMNS.get(keyword) or _COMPUTED.get(keyword)
        if attribute is None or attribute.level > depth:
            continue
        if isinstance(attribute, _Computed) and attribute.value is None:
            keys[keyword] = []
            continue
        try:
            value = identifier[keyword].value
        except (ValueError, TypeError) as error:
            raise QueryError(f"{keyword}: {error}") from None
        keys[keyword] = _values(keyword, value)
    return keys


def _values(keyword: str, value: object) -> list[str]:
    """The non-empty values of a key as stripped text; a NUL or a lone surrogate is refused."""
    if value is None:
        return []
    items = value if isinstance(value, MultiValue | list | tuple) else [value]
    values = []
    for item in items:
        if isinstance(item, bytes):
            try:
                item = item.decode("ascii")
            except UnicodeDecodeError:
                raise QueryError(f"{keyword}: a value that is not text") from None
        for text in str(item).split("\\"):
            stripped = text.strip(" ")
            if "\0" in stripped:
                raise QueryError(f"{keyword}: a value holding NUL")
            try:
                stripped.encode("utf-8")
            except UnicodeEncodeError:
                raise QueryError(f"{keyword}: a value that is not Unicode text") from None
            if stripped:
                values.append(stripped)
    return values


def _unique_key_values(identifier: Dataset, keyword: str) -> list[str]:
    """The values of a retrieve's unique key; none when it is absent, empty or universal."""
    try:
        value = identifier[keyword].value if keyword in identifier else None
    except (ValueError, TypeError) as error:
        raise QueryError(f"{keyword}: {error}") from None
    return [text for text in _values(keyword, value) if not _is_universal(text)]


def _require_single_value(keyword: str, values: list[str] | None) -> None:
    if not values or len(values) != 1 or _is_universal(values[0]):
        raise QueryError(f"a query at this level needs {keyword} with a single value")
    if "*" in values[0] or "?" in values[0]:
        raise QueryError(f"{keyword} must be a single value, not a wildcard")


def _is_universal(value: str) -> bool:
    return value.strip("*") == ""


class _Conditions:
    """The WHERE clauses of a statement and their parameters, all ANDed."""

    def __init__(self, fold_names: bool, dialect: Dialect) -> None:
        self.fold_names = fold_names
        self.dialect = dialect
        self.clauses: list[str] = []
        self.parameters: list[Any] = []

    def add(self, sql: str, vr: str, keyword: str, values: list[str]) -> None:
        """Constrain a column by a key; nothing if any value is universal."""
        if not values or any(_is_universal(value) for value in values):
            return
        alternatives = [self._match(sql, vr, keyword, value) for value in values]
        self.clauses.append(_any(alternatives))

    def add_any_below(self, computed: _Computed, values: list[str]) -> None:
        """A study-level list key: matches when a row it is computed from matches."""
        if not values or any(_is_universal(value) for value in values):
            return
        assert computed.value is not None
        keyword = computed.keyword
        vr = dictionary_VR(keyword)
        # The unary plus keeps SQLite from walking an index on the value (every CT series of
        # the archive) rather than the few rows of the study.
        column = self.dialect.unindexed(computed.value)
        alternatives = [self._match(column, vr, keyword, value) for value in values]
        self.clauses.append(f"EXISTS (SELECT 1 FROM {computed.source} AND {_any(alternatives)})")

    def add_date_time_ranges(self, keys: dict[str, list[str]]) -> set[str]:
        """Combined date-time matching for each date/time pair that both hold one range.

        Returns the keys it has dealt with.
        """
        paired: set[str] = set()
        for date_key, time_key in _DATE_TIME_PAIRS:
            dates, times = keys.get(date_key), keys.get(time_key)
            if not _is_single_range(dates) or not _is_single_range(times):
                continue
            assert dates is not None and times is not None
            first_date, last_date = _date_range(date_key, dates[0])
            first_time, last_time = _time_range(time_key, times[0])
            date_sql = _COLUMNS[date_key].sql
            time_sql = _time_sql(_COLUMNS[time_key].sql, self.dialect)
            if first_date is not None:
                self.clauses.append(
                    f"{date_sql} >= ? AND {date_sql} || coalesce({time_sql}, ?) >= ?"
                )
                self.parameters += [
                    first_date,
                    _LATEST_TIME,
                    first_date + (first_time or _EARLIEST_TIME),
                ]
            if last_date is not None:
                self.clauses.append(
                    f"{date_sql} <= ? AND {date_sql} || coalesce({time_sql}, ?) <= ?"
                )
                self.parameters += [
                    last_date,
                    _EARLIEST_TIME,
                    last_date + (last_time or _LATEST_TIME),
                ]
            paired |= {date_key, time_key}
        return paired

    def _match(self, sql: str, vr: str, keyword: str, value: str) -> str:
        """One value's condition on a column, its parameters appended."""
        if vr == "PN":
            return self._match_name(sql, keyword, value)
        if vr in _TEXT_VRS:
            return self._match_text(sql, value)
        if "*" in value or "?" in value:
            raise QueryError(f"{keyword}: no wildcards in a {vr} value")
        if vr == "UI":
            self.parameters.append(value)
            return f"{sql} = ?"
        if vr == "IS":
            if not _INTEGER.fullmatch(value):
                raise QueryError(f"{keyword}: {value!r} is not an integer")
            self.parameters.append(int(value))
            return f"{sql} = ?"
        if vr == "DA":
            first, last = _date_range(keyword, value)
            return self._between(sql, first, last)
        if vr == "TM":
            first, last = _time_range(keyword, value)
            return self._between(_time_sql(sql, self.dialect), first, last)
        raise QueryError(f"{keyword}: matching on {vr} values is not supported")

    def _match_text(self, sql: str, value: str) -> str:
        if "*" not in value and "?" not in value:
            self.parameters.append(value)
            return f"{sql} = ?"
        tokens = _tokens(value)
        return f"({self._prefix_range(sql, tokens)} AND {self._glob(sql, tokens)})"

    def _match_name(self, sql: str, keyword: str, value: str) -> str:
        groups = value.split("=")
        if len(groups) > 3:
            raise QueryError(f"{keyword}: more than three component groups")
        conditions = []
        for number, group in enumerate(groups):
            group = group.strip(" ").rstrip("^")
            if _is_universal(group):
                continue
            stored = _name_group_sql(sql, number, self.dialect)
            tokens = _tokens(group)
            if self.fold_names:
                stored = self.dialect.folded_name_group(sql, number, stored)
                tokens = [token if token in "*?" else fold_name(token) or "" for token in tokens]
            if number == 0 and not self.fold_names:
                conditions.append(self._prefix_range(sql, tokens))
            if any(token in "*?" for token in tokens):
                conditions.append(self._glob(stored, tokens))
            else:
                self.parameters.append("".join(tokens))
                conditions.append(f"{stored} = ?")
        if not conditions:
            return "TRUE"
        return "(" + " AND ".join(conditions) + ")"

    def _glob(self, sql: str, tokens: list[str]) -> str:
        self.parameters.append(self.dialect.glob_pattern(tokens))
        return self.dialect.glob(sql)

    def _prefix_range(self, sql: str, tokens: list[str]) -> str:
        """The literal start of a value as a range on the column, or nothing (``TRUE``).

        The range is redundant with the match it comes with, but lets SQLite
        walk an index on the column instead of the whole table.
        """
        prefix = "" if tokens[0] in "*?" else tokens[0]
        after = _successor(prefix)
        if after is None:
            return "TRUE"
        self.parameters += [prefix, after]
        return f"{sql} >= ? AND {sql} < ?"

    def _between(self, sql: str, first: str | None, last: str | None) -> str:
        if first is not None and last is not None:
            self.parameters += [first, last]
            return f"{sql} BETWEEN ? AND ?"
        if first is not None:
            self.parameters.append(first)
            return f"{sql} >= ?"
        self.parameters.append(last)
        return f"{sql} <= ?"


def _any(alternatives: list[str]) -> str:
    return alternatives[0] if len(alternatives) == 1 else "(" + " OR ".join(alternatives) + ")"


def _tokens(value: str) -> list[str]:
    """A wildcard value split into ``*``, ``?`` and the literal runs between them."""
    return [token for token in re.split(r"([*?])", value) if token]


def _successor(prefix: str) -> str | None:
    """The least string after every string that starts with ``prefix``; ``None`` if none is."""
    while prefix:
        following = ord(prefix[-1]) + 1
        if 0xD800 <= following <= 0xDFFF:
            following = 0xE000
        if following <= 0x10FFFF:
            return prefix[:-1] + chr(following)
        prefix = prefix[:-1]
    return None


def _name_group_sql(sql: str, number: int, dialect: Dialect) -> str:
    """SQL for one component group of a stored name, trailing ``^`` and spaces removed
    (`dicomd.archive.dialects.name_group` in Python)."""
    rest = sql
    for _ in range(number):
        rest = f"substr({rest}, {dialect.instr(f'{rest} || {_EQUALS}', _EQUALS)} + 1)"
    end = dialect.instr(f"{rest} || {_EQUALS}", _EQUALS)
    return f"rtrim(substr({rest}, 1, {end} - 1), '^ ')"


def _time_sql(sql: str, dialect: Dialect) -> str:
    """SQL for a stored TM as twelve digits ``HHMMSSFFFFFF``: colons dropped, partial values
    padded with zeros, so that times compare as text."""
    digits = f"replace({sql}, ':', '')"
    dot = dialect.instr(digits, "'.'")
    return (
        f"(CASE WHEN {dot} > 0 "
        f"THEN substr(substr({digits}, 1, {dot} - 1) || '000000', 1, 6) "
        f"|| substr(substr({digits}, {dot} + 1) || '000000', 1, 6) "
        f"ELSE substr({digits} || '000000', 1, 6) || '000000' END)"
    )


def _is_single_range(values: list[str] | None) -> bool:
    return values is not None and len(values) == 1 and "-" in values[0]


def _date_range(keyword: str, value: str) -> tuple[str | None, str | None]:
    """A DA value or range as its first and last day, ``None`` for an open end."""
    first, dash, last = value.partition("-")
    first, last = first.strip(" "), last.strip(" ")
    if not dash:
        last = first
    if (first and not _is_date(first)) or (last and not _is_date(last)) or not (first or last):
        raise QueryError(f"{keyword}: {value!r} is neither a date nor a date range")
    return first or None, last or None


def _is_date(text: str) -> bool:
    if not _DATE.fullmatch(text):
        return False
    try:
        date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return False
    return True


def _time_range(keyword: str, value: str) -> tuple[str | None, str | None]:
    """A TM value or range as its first and last instant (``HHMMSSFFFFFF``); ``None`` if open.

    A partial time spans everything it leaves out: ``10`` runs to 10:59:59.999999.
    """
    first, dash, last = value.partition("-")
    first, last = first.strip(" "), last.strip(" ")
    if not dash:
        last = first
    if not (first or last):
        raise QueryError(f"{keyword}: {value!r} is neither a time nor a time range")
    return (
        _time_bound(keyword, first, "0") if first else None,
        _time_bound(keyword, last, "9") if last else None,
    )


def _time_bound(keyword: str, text: str, fill: str) -> str:
    match = _TIME.fullmatch(text)
    if match is None:
        raise QueryError(f"{keyword}: {text!r} is not a time")
    hours, minutes, seconds, fraction = match.groups()
    if int(hours) > 23 or int(minutes or 0) > 59 or int(seconds or 0) > 60:
        raise QueryError(f"{keyword}: {text!r} is not a time")
    latest = fill == "9"
    return (
        hours
        + (minutes or ("59" if latest else "00"))
        + (seconds or ("59" if latest else "00"))
        + (fraction or "").ljust(6, fill)
    )


def _match_values(keywords: Iterable[str], row: Iterable[Any]) -> dict[str, Any]:
    """A match's values by keyword: those the row holds, lists of values split and sorted."""
    values = {}
    for keyword, value in zip(keywords, row, strict=True):
        if value is None or value == "":
            continue
        if keyword in ("ModalitiesInStudy", "SOPClassesInStudy"):
            value = sorted(value.split("\\"))
        values[keyword] = value
    return values


def _dataset(values: dict[str, Any]) -> Dataset:
    """A match as a data set: each value with its dictionary VR."""
    elements = {}
    for keyword, value in values.items():
        tag, vr = _tag_and_vr(keyword)
        elements[tag] = DataElement(tag, vr, value, validation_mode=config.IGNORE)
    return Dataset(elements)


def _encoded(encoder: IAnswerEncoder, values: dict[str, Any]) -> bytes | Dataset:
    encoded = encoder.encode(values)
    return encoded if encoded is not None else _dataset(values)


@cache
def _tag_and_vr(keyword: str) -> tuple[BaseTag, str]:
    tag = Tag(keyword_dict[keyword])
    return tag, dictionary_VR(tag)

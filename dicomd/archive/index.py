"""The archive's index: one SQLite table per query level, written with group commit.

The index is what C-FIND searches and what tells the archive whether an
instance is already kept.  The files are the archive's truth: each is
fsync'd before it is renamed into place, and a file found without a row at
start-up is indexed again from its own content.  So a commit need not be
fsync'd before a store is answered (``synchronous=NORMAL`` in WAL mode: a
power cut may lose the last commits, never corrupt the database), which
saves one disk flush per instance.  Instances kept in object storage have
no such files to redo the index from: there every commit is flushed
(``durable_commits``, ``synchronous=FULL``).

Writes go through one connection, one transaction at a time, from whichever
thread writes.  ``write`` performs a batch of writes in one transaction, each
in its own savepoint, so that a bad one fails alone: the archive's threads
gather the writes of concurrent stores, and the first of them to find no
transaction running commits the batch for all
(`dicomd.archive.writer.GroupCommit`).  ``add``, ``remove`` and
``remove_paths`` are the same for one write, blocking, for reconciliation and
tools.

Readers never wait for the writer: WAL lets each read-only connection see the
last commit while the next one is being written.

Text is stored as decoded Unicode, whatever the Specific Character Set it
arrived in, so that a query can match it in any character set; person names
keep DICOM's formatting (``^`` between components, ``=`` between groups).
Column names are the DICOM keywords, so that a query maps attributes to
columns without a table of its own.

The writes here (`adding`, `perform`, `IndexWrites`) are written once for
both engines: `ArchiveIndex` runs them on SQLite, `dicomd.archive.postgres.
PostgresIndex` on a PostgreSQL database several nodes share, each in its own
dialect (`dicomd.archive.dialects`); the schema and its versions are
`dicomd.archive.migrations`'.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from pydicom import Dataset
from zope.interface import implementer

from dicomd.archive.dialects import NAME_GROUPS, SQLITE, Dialect, fold_column, name_folds
from dicomd.archive.layout import text_of
from dicomd.archive.migrations import SCHEMA_VERSION as SCHEMA_VERSION
from dicomd.archive.migrations import migrate
from dicomd.interfaces import IArchiveIndex

PATIENT_KEYWORDS: Final = (
    "PatientID",
    "IssuerOfPatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
)
STUDY_KEYWORDS: Final = (
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "StudyDescription",
    "ReferringPhysicianName",
)
SERIES_KEYWORDS: Final = (
    "SeriesInstanceUID",
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "BodyPartExamined",
    "SeriesDate",
    "SeriesTime",
)
INSTANCE_KEYWORDS: Final = (
    "SOPInstanceUID",
    "SOPClassUID",
    "InstanceNumber",
    "TransferSyntaxUID",
    "SpecificCharacterSet",
)
INSTANCE_FILE_COLUMNS: Final = ("path", "size", "received_at", "calling_ae_title")

REQUIRED_UIDS: Final = ("SOPInstanceUID", "SOPClassUID")
"""Without these an instance cannot be named, checked against its command, or found again.

Study and Series Instance UIDs are not required: real files lack them (some
of pydicom's own test files do), and an archive keeps what it was sent.  Such
an instance gets study and series rows of its own, with no UID.
"""

_INTEGER_KEYWORDS: Final = frozenset({"SeriesNumber", "InstanceNumber"})

INDEXED_KEYWORDS: Final = (*PATIENT_KEYWORDS, *STUDY_KEYWORDS, *SERIES_KEYWORDS, *INSTANCE_KEYWORDS)
"""Every attribute the index keeps; a reader of the data set need go no further."""


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """What the index keeps of one instance; field names are DICOM keywords where there is one.

    ``PatientID`` and ``IssuerOfPatientID`` are ``""`` when absent (together
    they name the patient); every other attribute is ``None`` when absent or
    empty.  ``path`` is relative to the archive folder, with ``/`` separators.
    """

    PatientID: str
    IssuerOfPatientID: str
    PatientName: str | None
    PatientBirthDate: str | None
    PatientSex: str | None
    StudyInstanceUID: str
    StudyDate: str | None
    StudyTime: str | None
    AccessionNumber: str | None
    StudyID: str | None
    StudyDescription: str | None
    ReferringPhysicianName: str | None
    SeriesInstanceUID: str
    Modality: str | None
    SeriesNumber: int | None
    SeriesDescription: str | None
    BodyPartExamined: str | None
    SeriesDate: str | None
    SeriesTime: str | None
    SOPInstanceUID: str
    SOPClassUID: str
    InstanceNumber: int | None
    TransferSyntaxUID: str | None
    SpecificCharacterSet: str | None
    path: str
    size: int
    received_at: str
    calling_ae_title: str

    def values(self, names: Iterable[str]) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in names)


def record_from_dataset(
    dataset: Dataset,
    *,
    path: str,
    size: int,
    calling_ae_title: str,
    transfer_syntax_uid: str | None = None,
    received_at: datetime | None = None,
) -> InstanceRecord:
    """The index record of a parsed instance.

    ``transfer_syntax_uid`` defaults to the file meta's; ``received_at`` to
    now.  Raises ``ValueError`` naming the first of ``REQUIRED_UIDS`` that is
    missing or empty.
    """
    for keyword in REQUIRED_UIDS:
        if not _text(dataset, keyword):
            raise ValueError(f"no {keyword}")
    if transfer_syntax_uid is None:
        meta = getattr(dataset, "file_meta", None)
        transfer_syntax_uid = _text(meta, "TransferSyntaxUID") if meta is not None else None
    values: dict[str, Any] = {
        keyword: _integer(dataset, keyword)
        if keyword in _INTEGER_KEYWORDS
        else _text(dataset, keyword)
        for keyword in INDEXED_KEYWORDS
        if keyword != "TransferSyntaxUID"
    }
    values["PatientID"] = values["PatientID"] or ""
    values["IssuerOfPatientID"] = values["IssuerOfPatientID"] or ""
    return InstanceRecord(
        **values,
        TransferSyntaxUID=transfer_syntax_uid,
        path=path,
        size=size,
        received_at=(received_at or datetime.now(UTC)).astimezone(UTC).isoformat(),
        calling_ae_title=calling_ae_title,
    )


def _text(dataset: Dataset, keyword: str) -> str | None:
    """An element's value as text: decoded, several values joined with ``\\``, ``None`` if empty.

    NUL characters are dropped: no text VR allows them, and PostgreSQL's text cannot hold
    them, so a peer's stray NUL would otherwise fail the store on one engine only.
    """
    return text_of(dataset, keyword).replace("\x00", "") or None


def _integer(dataset: Dataset, keyword: str) -> int | None:
    """An IS value as a number, so that queries can order by it; ``None`` if absent or not one."""
    text = _text(dataset, keyword)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


class IndexClosed(RuntimeError):
    """A write was asked of an index that is not open."""


class DuplicateInstance(Exception):
    """The index holds the SOP Instance UID already: an insert that may not replace met the
    unique constraint (another store, maybe on another node, got there first)."""


class Transaction:
    """The index's transaction as a write sees it: statements written once, with ``?``
    placeholders, run in the index's dialect."""

    def __init__(self, connection: Any, dialect: Dialect) -> None:
        self.connection = connection
        self.dialect = dialect

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Any:
        return self.connection.execute(self.dialect.render(sql), parameters)

    def scalar(self, sql: str, *parameters: Any) -> Any:
        """The first column of the first row, or ``None``; the statement is run to its end."""
        rows = self.execute(sql, parameters).fetchall()
        return rows[0][0] if rows else None


Write = Callable[[Transaction], Any]
"""One write to the index: it runs inside the writer's transaction and answers its result."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one write of a batch came to: its result, or the error it alone failed with."""

    result: Any = None
    error: BaseException | None = None


def adding(record: InstanceRecord, *, replace: bool = True) -> Write:
    """The write that inserts ``record`` (and its patient, study and series), replacing any
    instance of its UID; or, with ``replace=False``, that raises `DuplicateInstance` when
    the index holds its UID already: the unique constraint decides, not an earlier look."""
    return functools.partial(_insert, record=record, replace=replace)


BATCH_ATTEMPTS: Final = 3
"""How many times a batch is tried when the engine gives up on it for the sake of another
transaction (a deadlock between nodes writing the same patients in other orders)."""


class _TryAgain(Exception):
    """A write of the batch met a transient error: the whole transaction must be rolled back,
    for its locks to let the other transaction through, and tried again."""


def perform(
    connection: Any, dialect: Dialect, writes: Sequence[Write]
) -> tuple[list[Outcome], bool]:
    """``writes`` in one transaction on ``connection`` (autocommit), each in its own savepoint;
    their outcomes, and whether the transaction committed.

    A write that raises is rolled back alone and its `Outcome` carries the error; if the
    transaction itself fails, every write fails with it.  Resource errors (a full disk, a
    lost connection) come as the ``OSError`` they are (`Dialect.os_error`).  A transient
    error (`Dialect.is_transient`) rolls the batch back and tries it again, up to
    `BATCH_ATTEMPTS` times in all.
    """
    for _ in range(BATCH_ATTEMPTS - 1):
        with contextlib.suppress(_TryAgain):
            return _perform_once(connection, dialect, writes, retry=True)
    return _perform_once(connection, dialect, writes, retry=False)


def _perform_once(
    connection: Any, dialect: Dialect, writes: Sequence[Write], *, retry: bool
) -> tuple[list[Outcome], bool]:
    transaction = Transaction(connection, dialect)
    outcomes: list[Outcome] = []
    try:
        connection.execute(dialect.begin)
        for write in writes:
            connection.execute("SAVEPOINT one_write")
            try:
                outcomes.append(Outcome(result=write(transaction)))
            except Exception as error:
                if retry and dialect.is_transient(error):
                    raise _TryAgain from error
                outcomes.append(Outcome(error=dialect.os_error(error)))
                connection.execute("ROLLBACK TO one_write")
            connection.execute("RELEASE one_write")
        connection.execute("COMMIT")
    except Exception as error:
        with contextlib.suppress(Exception):
            connection.execute("ROLLBACK")
        if isinstance(error, _TryAgain):
            raise
        failed = Outcome(error=dialect.os_error(error))
        outcomes += [failed] * (len(writes) - len(outcomes))
        return [outcome if outcome.error else failed for outcome in outcomes], False
    return outcomes, True


class IndexWrites:
    """The writes every index offers, made of its ``write`` (a batch in one transaction)."""

    def write(self, writes: Sequence[Write]) -> list[Outcome]:
        raise NotImplementedError

    def apply(self, write: Write) -> Any:
        """Perform one write in a transaction of its own; its result, or its error raised."""
        [outcome] = self.write([write])
        if outcome.error is not None:
            raise outcome.error
        return outcome.result

    def add(self, record: InstanceRecord) -> None:
        """Insert or replace the instance, creating or updating its patient, study and series."""
        self.apply(adding(record))

    def remove(self, sop_instance_uid: str) -> bool:
        """Forget an instance (and any series, study, patient left empty); ``False`` if unknown."""
        removed = self.apply(
            lambda transaction: _remove_where(transaction, "SOPInstanceUID", [sop_instance_uid])
        )
        return removed > 0

    def remove_paths(self, paths: Iterable[str]) -> int:
        """Forget the instances kept at these relative paths, in one transaction; how many."""
        wanted = list(paths)
        if not wanted:
            return 0
        return self.apply(lambda transaction: _remove_where(transaction, "path", wanted))


@implementer(IArchiveIndex)
class ArchiveIndex(IndexWrites):
    """The SQLite index of one archive.

    Reads are safe from any thread: each thread gets its own read-only
    connection.  Writes are too, one at a time: they share one write
    connection, and a lock lets one transaction run at once.

    ``commits`` counts the transactions committed: with group commit it grows
    more slowly than the number of writes under concurrency.  With
    ``durable_commits`` each commit is on the disk before it returns.
    """

    dialect: Final = SQLITE

    def __init__(self, path: str | Path, *, durable_commits: bool = False) -> None:
        self.path = Path(path)
        self.durable_commits = durable_commits
        self.commits = 0
        self._open = False
        self._writer: sqlite3.Connection | None = None
        self._write_lock = threading.Lock()
        self._readers_lock = threading.Lock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []

    def open(self) -> None:
        """Open or create the database and its write connection."""
        connection = self._connect_writer()
        try:
            migrate(connection, SQLITE)
        except BaseException:
            connection.close()
            raise
        self._writer = connection
        self._open = True

    def close_writer(self) -> None:
        """Close the write connection once no transaction runs; the next write opens another."""
        with self._write_lock:
            writer, self._writer = self._writer, None
            if writer is not None:
                writer.close()

    def close(self) -> None:
        """Close every connection."""
        self.close_writer()
        self._open = False
        with self._readers_lock:
            readers, self._readers = self._readers, []
            self._local = threading.local()
        for reader in readers:
            reader.close()

    def write(self, writes: Sequence[Write]) -> list[Outcome]:
        """Perform ``writes`` in one transaction, each in its own savepoint; blocking.

        A write that raises is rolled back alone and its `Outcome` carries the
        error; if the transaction itself fails, every write fails with it.  A
        full or failing disk is reported as the ``OSError`` it is.
        """
        with self._write_lock:
            outcomes, committed = perform(self._connection(), SQLITE, writes)
            self.commits += committed
            return outcomes

    def lookup(self, sop_instance_uid: str) -> str | None:
        """The relative path of an indexed instance, or ``None``."""
        row = (
            self._reader()
            .execute("SELECT path FROM instances WHERE SOPInstanceUID = ?", (sop_instance_uid,))
            .fetchone()
        )
        return row[0] if row else None

    def holder(self, path: str) -> str | None:
        """The SOP Instance UID of the instance indexed at ``path``, or ``None``."""
        row = (
            self._reader()
            .execute("SELECT SOPInstanceUID FROM instances WHERE path = ?", (path,))
            .fetchone()
        )
        return row[0] if row else None

    def paths(self) -> Iterator[str]:
        """The relative path of every indexed instance."""
        for (path,) in self._reader().execute("SELECT path FROM instances"):
            yield path

    def connect_reader(self) -> sqlite3.Connection:
        """A new read-only connection for queries; the caller closes it."""
        reader = sqlite3.connect(
            f"{self.path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False
        )
        reader.execute("PRAGMA query_only=ON")
        return reader

    def _reader(self) -> sqlite3.Connection:
        """This thread's own read-only connection, kept for the next call."""
        reader = getattr(self._local, "reader", None)
        if reader is None:
            if not self._open:
                raise IndexClosed(f"the index {self.path} is not open")
            reader = self.connect_reader()
            with self._readers_lock:
                self._readers.append(reader)
                self._local.reader = reader
        return reader

    def _connection(self) -> sqlite3.Connection:
        """The write connection, opened if there is none; under the write lock."""
        if not self._open:
            raise IndexClosed(f"the index {self.path} is not open")
        if self._writer is None:
            self._writer = self._connect_writer()
        return self._writer

    def _connect_writer(self) -> sqlite3.Connection:
        # Any thread may write, one at a time (the write lock): sqlite3's own check is off.
        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            _use_wal(connection)
            synchronous = "FULL" if self.durable_commits else "NORMAL"
            connection.execute(f"PRAGMA synchronous={synchronous}")
            connection.execute("PRAGMA foreign_keys=ON")
        except BaseException:
            connection.close()
            raise
        return connection


def _upsert_sql(
    table: str, columns: tuple[str, ...], unique: tuple[str, ...], parent: str | None
) -> str:
    """Insert a row, or update it: new values win, but an absent value never erases a known one."""
    names = (parent, *columns) if parent else columns
    updates = [f"{parent} = excluded.{parent}"] if parent else []
    updates += [
        f"{column} = coalesce(excluded.{column}, {table}.{column})"
        for column in columns
        if column not in unique
    ]
    return (
        f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))}) "
        f"ON CONFLICT ({', '.join(unique)}) DO UPDATE SET {', '.join(updates)} RETURNING pk"
    )


def _with_folds(keywords: tuple[str, ...], name: str) -> tuple[str, ...]:
    """A level's columns with the folded groups of its name column (`Dialect.fold_columns`)."""
    return (*keywords, *(fold_column(name, number) for number in range(NAME_GROUPS)))


_PATIENT_FOLDED: Final = _with_folds(PATIENT_KEYWORDS, "PatientName")
_STUDY_FOLDED: Final = _with_folds(STUDY_KEYWORDS, "ReferringPhysicianName")


@dataclass(frozen=True, slots=True)
class _Upserts:
    """The statements that write the levels above an instance, in one dialect's schema."""

    patient: str
    study: str
    series: str

    @classmethod
    @functools.cache
    def of(cls, dialect: Dialect) -> _Upserts:
        patient = _PATIENT_FOLDED if dialect.fold_columns else PATIENT_KEYWORDS
        study = _STUDY_FOLDED if dialect.fold_columns else STUDY_KEYWORDS
        return cls(
            _upsert_sql("patients", patient, ("PatientID", "IssuerOfPatientID"), None),
            _upsert_sql("studies", study, ("StudyInstanceUID",), "patient_pk"),
            _upsert_sql("series", SERIES_KEYWORDS, ("SeriesInstanceUID",), "study_pk"),
        )


_INSTANCE_COLUMNS: Final = ("series_pk", *INSTANCE_KEYWORDS, *INSTANCE_FILE_COLUMNS)
_INSERT_INSTANCE: Final = (
    f"INSERT INTO instances ({', '.join(_INSTANCE_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_INSTANCE_COLUMNS))}) ON CONFLICT (SOPInstanceUID) "
)
_REPLACE_INSTANCE: Final = (
    f"{_INSERT_INSTANCE} DO UPDATE SET "
    + ", ".join(f"{column} = excluded.{column}" for column in _INSTANCE_COLUMNS)
    + " RETURNING pk"
)
_INSERT_NEW_INSTANCE: Final = f"{_INSERT_INSTANCE} DO NOTHING RETURNING pk"
"""Nothing when the UID is indexed: the unique constraint decides, after waiting for any
transaction inserting it at the same time (PostgreSQL), whatever else the row clashes with."""


def _insert(transaction: Transaction, record: InstanceRecord, replace: bool) -> None:
    """Write one record; a level row that moves to another parent leaves no empty parent behind."""
    dialect = transaction.dialect
    upserts = _Upserts.of(dialect)
    patient = record.values(PATIENT_KEYWORDS)
    study = record.values(STUDY_KEYWORDS)
    if dialect.fold_columns:
        patient += name_folds(record.PatientName)
        study += name_folds(record.ReferringPhysicianName)
    previous_patient = transaction.scalar(
        "SELECT patient_pk FROM studies WHERE StudyInstanceUID = ?", record.StudyInstanceUID
    )
    patient_pk = transaction.scalar(upserts.patient, *patient)
    previous_study = transaction.scalar(
        "SELECT study_pk FROM series WHERE SeriesInstanceUID = ?", record.SeriesInstanceUID
    )
    study_pk = transaction.scalar(upserts.study, patient_pk, *study)
    previous_series = transaction.scalar(
        "SELECT series_pk FROM instances WHERE SOPInstanceUID = ?", record.SOPInstanceUID
    )
    series_pk = transaction.scalar(upserts.series, study_pk, *record.values(SERIES_KEYWORDS))
    instance = (
        series_pk,
        *record.values(INSTANCE_KEYWORDS),
        *record.values(INSTANCE_FILE_COLUMNS),
    )
    if (
        transaction.scalar(_REPLACE_INSTANCE if replace else _INSERT_NEW_INSTANCE, *instance)
        is None
    ):
        raise DuplicateInstance(record.SOPInstanceUID)
    if previous_series not in (None, series_pk):
        _prune_series(transaction, previous_series)
    if previous_study not in (None, study_pk):
        _prune_study(transaction, previous_study)
    if previous_patient not in (None, patient_pk):
        _prune_patient(transaction, previous_patient)


def _remove_where(transaction: Transaction, column: str, values: list[str]) -> int:
    removed = 0
    for value in values:
        series_pk = transaction.scalar(
            f"DELETE FROM instances WHERE {column} = ? RETURNING series_pk", value
        )
        if series_pk is not None:
            removed += 1
            _prune_series(transaction, series_pk)
    return removed


def _prune_series(transaction: Transaction, series_pk: int) -> None:
    if transaction.scalar("SELECT 1 FROM instances WHERE series_pk = ? LIMIT 1", series_pk):
        return
    study_pk = transaction.scalar("DELETE FROM series WHERE pk = ? RETURNING study_pk", series_pk)
    if study_pk is not None:
        _prune_study(transaction, study_pk)


def _prune_study(transaction: Transaction, study_pk: int) -> None:
    if transaction.scalar("SELECT 1 FROM series WHERE study_pk = ? LIMIT 1", study_pk):
        return
    patient_pk = transaction.scalar(
        "DELETE FROM studies WHERE pk = ? RETURNING patient_pk", study_pk
    )
    if patient_pk is not None:
        _prune_patient(transaction, patient_pk)


def _prune_patient(transaction: Transaction, patient_pk: int) -> None:
    if transaction.scalar("SELECT 1 FROM studies WHERE patient_pk = ? LIMIT 1", patient_pk):
        return
    transaction.execute("DELETE FROM patients WHERE pk = ?", (patient_pk,))


WAL_SWITCH_PATIENCE: Final = 5.0
"""Seconds to retry switching a new database to WAL while another connection migrates it."""


def _use_wal(connection: sqlite3.Connection) -> None:
    """Put the database in WAL mode (a no-op once it is).

    Switching a new database needs it to itself, and SQLite answers "database is locked" at
    once, without waiting, while another process or thread creates its schema: several
    nodes or workers opening one new index together then retry for a few seconds.
    """
    deadline = time.monotonic() + WAL_SWITCH_PATIENCE
    while True:
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)

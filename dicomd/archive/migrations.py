"""The index's schema, as numbered migrations applied at start-up on either engine.

Each `Migration` brings the schema from the version before it to its own.
`migrate` applies those a database lacks, in one transaction, under a lock
that makes several nodes (or processes) opening the same database at once
migrate it once: SQLite's ``BEGIN IMMEDIATE`` (the write lock, taken before
the version is read), PostgreSQL's ``pg_advisory_xact_lock``.  The version
is recorded where each engine keeps it best: SQLite's ``PRAGMA
user_version`` (archives made before migrations existed are version 1 and
open unchanged), a one-row table on PostgreSQL.  A database whose version is
newer than this dicomd knows is refused: its schema may mean what this
dicomd cannot honour.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from dicomd.archive.dialects import NAME_COLUMNS, NAME_GROUPS, Dialect, fold_column


class SchemaTooNew(RuntimeError):
    """The index was made or migrated by a newer dicomd."""


_TABLES: Final = """
CREATE TABLE patients (
    pk INTEGER PRIMARY KEY,
    PatientID TEXT NOT NULL,
    IssuerOfPatientID TEXT NOT NULL,
    PatientName TEXT,
    PatientBirthDate TEXT,
    PatientSex TEXT,
    UNIQUE (PatientID, IssuerOfPatientID)
);
CREATE INDEX patients_by_name ON patients (PatientName);

CREATE TABLE studies (
    pk INTEGER PRIMARY KEY,
    patient_pk INTEGER NOT NULL REFERENCES patients (pk),
    StudyInstanceUID TEXT UNIQUE,
    StudyDate TEXT,
    StudyTime TEXT,
    AccessionNumber TEXT,
    StudyID TEXT,
    StudyDescription TEXT,
    ReferringPhysicianName TEXT
);
CREATE INDEX studies_by_patient ON studies (patient_pk);
CREATE INDEX studies_by_date ON studies (StudyDate);
CREATE INDEX studies_by_accession ON studies (AccessionNumber);

CREATE TABLE series (
    pk INTEGER PRIMARY KEY,
    study_pk INTEGER NOT NULL REFERENCES studies (pk),
    SeriesInstanceUID TEXT UNIQUE,
    Modality TEXT,
    SeriesNumber INTEGER,
    SeriesDescription TEXT,
    BodyPartExamined TEXT,
    SeriesDate TEXT,
    SeriesTime TEXT
);
CREATE INDEX series_by_study ON series (study_pk);
CREATE INDEX series_by_modality ON series (Modality);

CREATE TABLE instances (
    pk INTEGER PRIMARY KEY,
    series_pk INTEGER NOT NULL REFERENCES series (pk),
    SOPInstanceUID TEXT NOT NULL UNIQUE,
    SOPClassUID TEXT NOT NULL,
    InstanceNumber INTEGER,
    TransferSyntaxUID TEXT,
    SpecificCharacterSet TEXT,
    path TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    received_at TEXT NOT NULL,
    calling_ae_title TEXT NOT NULL
);
CREATE INDEX instances_by_series ON instances (series_pk);
CREATE INDEX instances_by_class ON instances (SOPClassUID);
"""
"""Version 1, written for SQLite: the schema of every SQLite archive made so far."""

_NAME_TABLES: Final = {"PatientName": "patients", "ReferringPhysicianName": "studies"}


def _tables(dialect: Dialect) -> list[str]:
    statements = [statement for statement in _TABLES.split(";") if statement.strip()]
    if dialect.fold_columns:
        statements += [
            f"ALTER TABLE {_NAME_TABLES[column]} ADD COLUMN {fold_column(column, number)} TEXT"
            for column in NAME_COLUMNS
            for number in range(NAME_GROUPS)
        ]
    return [dialect.ddl(statement) for statement in statements]


@dataclass(frozen=True, slots=True)
class Migration:
    """The statements that bring the schema to ``version`` from the version before it."""

    version: int
    statements: Callable[[Dialect], list[str]]


MIGRATIONS: Final = (Migration(1, _tables),)
SCHEMA_VERSION: Final = MIGRATIONS[-1].version

_ADVISORY_LOCK: Final = 0x6469636F6D64  # "dicomd": one lock for every dicomd migrating


def migrate(connection: Any, dialect: Dialect, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Bring the database of ``connection`` (autocommit) to the version of the last of
    ``migrations`` (`SCHEMA_VERSION`); the version it had.  Raises `SchemaTooNew` for a
    database of a newer dicomd."""
    latest = migrations[-1].version
    connection.execute(dialect.begin)
    try:
        version = _version(connection, dialect)
        if version > latest:
            raise SchemaTooNew(
                f"index schema version {version} is newer than this dicomd's "
                f"({latest}): upgrade dicomd"
            )
        for migration in migrations:
            if migration.version > version:
                for statement in migration.statements(dialect):
                    connection.execute(statement)
        if version < latest:
            _record_version(connection, dialect, latest)
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    return version


def _version(connection: Any, dialect: Dialect) -> int:
    """The recorded version, read under the migration lock; 0 for an empty database."""
    if dialect.name == "sqlite":
        (version,) = connection.execute("PRAGMA user_version").fetchone()
        return int(version)
    connection.execute(f"SELECT pg_advisory_xact_lock({_ADVISORY_LOCK})")
    connection.execute("CREATE TABLE IF NOT EXISTS dicomd_schema (version INTEGER NOT NULL)")
    row = connection.execute("SELECT max(version) FROM dicomd_schema").fetchone()
    return int(row[0] or 0)


def _record_version(connection: Any, dialect: Dialect, version: int) -> None:
    if dialect.name == "sqlite":
        connection.execute(f"PRAGMA user_version = {version}")
    else:
        connection.execute("DELETE FROM dicomd_schema")
        connection.execute(f"INSERT INTO dicomd_schema (version) VALUES ({version})")

"""An archive folder seen from outside: its files, its index rows and its leftovers."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Final, Protocol

import psycopg

from dicomd.archive.dialects import NAME_GROUPS, dialect_of, fold_column, name_folds
from dicomd.archive.index import ArchiveIndex
from dicomd.archive.postgres import PostgresIndex
from tests.support.daemons import RunningDaemon

INTEGRITY_ERRORS: Final = (sqlite3.IntegrityError, psycopg.IntegrityError)
"""A constraint refusing a row, on either engine."""

INDEX_FILE_NAMES = frozenset(f"index.sqlite{suffix}" for suffix in ("", "-wal", "-shm", "-journal"))
INCOMING = ".incoming"


@dataclass(frozen=True)
class ArchiveView:
    """What an archive folder holds, as the store tests judge it: files, index rows, leftovers."""

    root: Path

    def files(self) -> set[str]:
        """Every file but the index, ``.incoming`` and the lock files of worker processes
        (``.locks``), as relative POSIX paths."""
        found = set()
        for folder, subfolders, names in os.walk(self.root):
            if Path(folder) == self.root:
                subfolders[:] = [name for name in subfolders if name not in (INCOMING, ".locks")]
                names = [name for name in names if name not in INDEX_FILE_NAMES]
            found.update((Path(folder) / name).relative_to(self.root).as_posix() for name in names)
        return found

    def incoming(self) -> list[str]:
        """What is left in the folder where instances are written as they arrive."""
        folder = self.root / INCOMING
        return sorted(os.listdir(folder)) if folder.is_dir() else []

    def partial_files(self) -> list[str]:
        """Whatever is left in ``.incoming``, and temporary or hidden files among the instances."""
        leftovers = [f"{INCOMING}/{name}" for name in self.incoming()]
        leftovers += [
            name
            for name in self.files()
            if name.endswith((".part", ".partial"))
            or any(part.startswith(".") for part in name.split("/"))
        ]
        return sorted(leftovers)

    def indexed(self) -> dict[str, str]:
        """SOP Instance UID -> relative path, from the instances table of the index.

        A copy of the index is read, not the index: the test then never holds
        a lock the daemon waits on, and the archive may be seen through
        ``/proc/PID/root``, a symbolic link SQLite would resolve to another
        mount namespace.  Tests read it between stores, when it is quiet.
        """
        if not (self.root / "index.sqlite").exists():
            return {}
        with tempfile.TemporaryDirectory() as folder:
            for name in ("index.sqlite", "index.sqlite-wal"):
                with contextlib.suppress(FileNotFoundError):
                    shutil.copyfile(self.root / name, Path(folder) / name)
            connection = sqlite3.connect(Path(folder) / "index.sqlite")
            try:
                return dict(connection.execute("SELECT SOPInstanceUID, path FROM instances"))
            finally:
                connection.close()

    def file_of(self, sop_instance_uid: str) -> Path:
        relative = self.indexed().get(sop_instance_uid)
        assert relative is not None, f"{sop_instance_uid} is not in the index"
        return self.root / relative

    def assert_consistent(self) -> None:
        """No temporary file anywhere, and the files are exactly the indexed paths."""
        assert self.partial_files() == []
        assert self.files() == set(self.indexed().values())


class Index(Protocol):
    """What the index tests ask of an index, SQLite or PostgreSQL."""

    def connect_reader(self) -> Any: ...


def index_rows(index: Index, sql: str, *parameters: object) -> list[tuple[Any, ...]]:
    """The rows of a statement (``?`` placeholders), read on a reader of its own."""
    reader = index.connect_reader()
    try:
        return [tuple(row) for row in dialect_of(reader).all_rows(reader, sql, parameters)]
    finally:
        reader.close()


def is_closed(connection: Any) -> bool:
    """Whether a read connection is closed; never ask while a thread may be using it."""
    if not isinstance(connection, sqlite3.Connection):
        return bool(connection.closed)
    try:
        connection.execute("SELECT 1")
    except sqlite3.ProgrammingError:
        return True
    return False


def archive_of(daemon: RunningDaemon) -> ArchiveView:
    """The archive of a daemon whose ``storage.path`` is relative to its working directory."""
    return ArchiveView(daemon.directory / daemon.config["storage"]["path"])


def archive_plugin(**options: Any) -> dict[str, Any]:
    """The ``plugins:`` entry of the built-in archive."""
    return {"plugin": "archive", "options": options}


SURNAMES: Final = ("DOE", "SMITH", "JONES", "BROWN", "TAYLOR", "WILSON", "DAVIES", "EVANS")
CT_IMAGE_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.2"


@dataclass(frozen=True)
class LargeIndex:
    """An archive index of many instances, written straight into its tables in one
    transaction: seconds for 100 000 instances, where storing each takes many minutes.

    Patient ``p`` is ``PID{p:05d}``, named ``SURNAME^GIVEN{p}``; study ``s`` (one a day
    from 2021-01-01, UID ``1.2.826.0.1.{s}``) belongs to patient ``s % patients``; its
    series ``e`` (``.{e}``, modalities CT, MR, PT, US, CR in turn) hold instances ``n``
    (``.{n}``, InstanceNumber ``n + 1``) kept at ``{pk}.dcm``.
    """

    studies: int = 1000
    series_per_study: int = 10
    instances_per_series: int = 10
    patients: int = 200

    @property
    def instances(self) -> int:
        return self.studies * self.series_per_study * self.instances_per_series

    def paths(self) -> list[str]:
        """The relative path of every instance."""
        return [f"{pk}.dcm" for pk in range(self.instances)]

    def write(self, index: ArchiveIndex | PostgresIndex) -> None:
        """Fill ``index``, open and empty, on a connection of its own (SQLite or PostgreSQL)."""
        patients = [
            (p, f"PID{p:05d}", "", f"{SURNAMES[p % len(SURNAMES)]}^GIVEN{p}", "19700101", "O")
            for p in range(self.patients)
        ]
        studies, series, instances = [], [], []
        first_day = date(2021, 1, 1)
        for s in range(self.studies):
            day = (first_day + timedelta(days=s)).strftime("%Y%m%d")
            time_of_day = f"{8 + s % 10:02d}{s % 60:02d}00"
            studies.append((s, s % self.patients, f"1.2.826.0.1.{s}", day, time_of_day, f"A{s}"))
            for e in range(self.series_per_study):
                series_pk = s * self.series_per_study + e
                modality = ("CT", "MR", "PT", "US", "CR")[e % 5]
                series.append((series_pk, s, f"1.2.826.0.1.{s}.{e}", modality, e + 1))
                for n in range(self.instances_per_series):
                    pk = series_pk * self.instances_per_series + n
                    uid = f"1.2.826.0.1.{s}.{e}.{n}"
                    instances.append(
                        (pk, series_pk, uid, CT_IMAGE_STORAGE, n + 1, f"{pk}.dcm", 1, "-", "AE")
                    )
        dialect = index.dialect
        patient_columns = (
            "pk, PatientID, IssuerOfPatientID, PatientName, PatientBirthDate, PatientSex"
        )
        if dialect.fold_columns:
            patient_columns += ", " + ", ".join(
                fold_column("PatientName", number) for number in range(NAME_GROUPS)
            )
            patients = [(*row, *name_folds(row[3])) for row in patients]
        tables = (
            (f"patients ({patient_columns})", patients),
            (
                "studies (pk, patient_pk, StudyInstanceUID, StudyDate, StudyTime, AccessionNumber)",
                studies,
            ),
            ("series (pk, study_pk, SeriesInstanceUID, Modality, SeriesNumber)", series),
            (
                "instances (pk, series_pk, SOPInstanceUID, SOPClassUID, InstanceNumber, path, "
                "size, received_at, calling_ae_title)",
                instances,
            ),
        )
        if isinstance(index, ArchiveIndex):
            connection: Any = sqlite3.connect(index.path, isolation_level=None)
        else:
            connection = psycopg.connect(index.url, autocommit=True)
        try:
            connection.execute("BEGIN")
            cursor = connection.cursor()
            for table, rows in tables:
                marks = ", ".join("?" * len(rows[0]))
                cursor.executemany(dialect.render(f"INSERT INTO {table} VALUES ({marks})"), rows)
            connection.execute("COMMIT")
            if not isinstance(index, ArchiveIndex):
                for name in ("patients", "studies", "series", "instances"):
                    # the rows name their keys: the next key the index makes comes after them
                    sequence = f"pg_get_serial_sequence('{name}', 'pk')"
                    connection.execute(f"SELECT setval({sequence}, max(pk) + 1, false) FROM {name}")
                connection.execute("VACUUM ANALYZE")  # as autovacuum leaves a loaded table
        finally:
            connection.close()

    def write_archive(self, root: Path) -> None:
        """An archive folder a daemon can start on: the index, and an empty file for each
        instance (start-up reconciliation forgets rows whose file is missing)."""
        root.mkdir(parents=True, exist_ok=True)
        index = ArchiveIndex(root / "index.sqlite")
        index.open()
        index.close()
        self.write(index)
        for relative in self.paths():
            os.close(os.open(root / relative, os.O_CREAT | os.O_WRONLY, 0o644))

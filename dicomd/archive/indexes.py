"""Which index an archive keeps: the embedded SQLite file, or PostgreSQL (``index.url``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from dicomd.archive.index import ArchiveIndex

if TYPE_CHECKING:
    from dicomd.archive.postgres import PostgresIndex

POSTGRESQL_SCHEMES = frozenset({"postgresql", "postgres"})


def index_for(
    url: str | None, sqlite_path: Path, *, connections: int, durable_commits: bool = False
) -> ArchiveIndex | PostgresIndex:
    """The index of an archive, not yet open: SQLite at ``sqlite_path`` when ``url`` is
    ``None``, else the PostgreSQL database it names with a pool of ``connections``.
    ``durable_commits`` flushes each SQLite commit (PostgreSQL's always are).

    Raises a one-line ``ValueError`` for any other URL, or when the PostgreSQL
    driver is not installed.
    """
    if url is None:
        return ArchiveIndex(sqlite_path, durable_commits=durable_commits)
    scheme = urlsplit(url).scheme
    if scheme not in POSTGRESQL_SCHEMES:
        raise ValueError(f"index.url: {scheme or url!r} is not a postgresql:// URL")
    try:
        from dicomd.archive.postgres import PostgresIndex
    except ImportError as error:
        raise ValueError(
            f"index.url needs the PostgreSQL driver ({error.name}): "
            "pip install 'dicomd[postgresql]'"
        ) from None
    return PostgresIndex(url, connections=connections)

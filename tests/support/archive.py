"""An archive folder seen from outside: its files, its index rows and its leftovers."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.daemons import RunningDaemon

INDEX_FILE_NAMES = frozenset(f"index.sqlite{suffix}" for suffix in ("", "-wal", "-shm", "-journal"))
INCOMING = ".incoming"


@dataclass(frozen=True)
class ArchiveView:
    """What an archive folder holds, as the store tests judge it: files, index rows, leftovers."""

    root: Path

    def files(self) -> set[str]:
        """Every file but the index and ``.incoming``, as relative POSIX paths."""
        found = set()
        for folder, subfolders, names in os.walk(self.root):
            if Path(folder) == self.root:
                subfolders[:] = [name for name in subfolders if name != INCOMING]
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


def archive_of(daemon: RunningDaemon) -> ArchiveView:
    """The archive of a daemon whose ``storage.path`` is relative to its working directory."""
    return ArchiveView(daemon.directory / daemon.config["storage"]["path"])


def archive_plugin(**options: Any) -> dict[str, Any]:
    """The ``plugins:`` entry of the built-in archive."""
    return {"plugin": "archive", "options": options}

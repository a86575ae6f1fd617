"""The archive's default storage: each instance a file under the archive folder.

A received file is flushed before it is renamed to its layout path, and
every folder made for it, and the folder it lands in, have their names
flushed too (`dicomd.archive.durability`), so that a name never points at
less than the whole file and never hangs from a folder a power cut could
lose.  The rename takes the received file: nothing is copied, unless the
incoming folder is on another file system.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path

from zope.interface import implementer

from dicomd.archive.durability import Durability, FileFlush
from dicomd.archive.writer import KeyedLocks, SharedLocks, hold_keys
from dicomd.interfaces import IInstanceStorage


@implementer(IInstanceStorage)
class LocalFiles:
    """Instances as files under ``root``, each at its key.

    ``durability`` is how content and names reach the disk (the archive's
    ``flush`` option); ``folder_locks`` are the locks the worker processes of
    one machine share while one of them makes a folder, when there are several.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.durability: Durability = FileFlush()
        self.folder_locks: SharedLocks | None = None
        self._thread_folder_locks = KeyedLocks()

    def check(self) -> None:
        """The folder is made, and checked, when the archive opens."""

    def put(self, source: Path, key: str) -> None:
        """Move ``source`` to ``key`` durably: its content on the disk first, then its name."""
        target = self.root / key
        self.durability.content(source)
        self._make_folders(target.parent)
        try:
            os.replace(source, target)
        except OSError as error:
            if error.errno != errno.EXDEV:
                raise
            copy_durably(source, target)
            source.unlink()
        self.durability.names(target.parent)

    def exists(self, key: str) -> bool:
        return os.path.lexists(self.root / key)

    def remove(self, key: str) -> None:
        (self.root / key).unlink(missing_ok=True)

    def local_path(self, key: str) -> Path:
        return self.root / key

    def fetch(self, key: str, into: Path) -> None:
        shutil.copyfile(self.root / key, into)

    def _make_folders(self, folder: Path) -> None:
        """Create the missing folders down to ``folder``, each one's name flushed before the
        next is made in it.

        Each folder on the way is looked at under its lock, which its maker holds
        from before ``mkdir`` until its name is flushed: a folder another store (a
        thread, or a worker process) has just made is on the disk by the time this
        store sees it.
        """
        parts = folder.relative_to(self.root).parts
        for depth in range(1, len(parts) + 1):
            each = self.root.joinpath(*parts[:depth])
            release = hold_keys(self._thread_folder_locks, self.folder_locks, (f"folder:{each}",))
            try:
                if not each.is_dir():
                    each.mkdir()
                    self.durability.names(each.parent)
            finally:
                release()


def copy_durably(source: Path, target: Path) -> None:
    """Copy across file systems: into a hidden file beside ``target``, fsync'd, then renamed.

    Reconciliation removes the hidden file if a crash comes in between.
    """
    descriptor, temporary = tempfile.mkstemp(dir=target.parent, prefix=".", suffix=".partial")
    try:
        with open(descriptor, "wb") as copy, open(source, "rb") as original:
            shutil.copyfileobj(original, copy)
            copy.flush()
            os.fsync(copy.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise

"""Linux file-system calls the standard library lacks: unnamed files named later, ``syncfs``.

Both are for receiving instances without the reactor thread ever waiting on
the disk's journal (`dicomd.part10.SpareFiles`), and for making many received
files durable with one flush (`dicomd.archive.durability`).  Where the
platform lacks them, `UNNAMED_FILES` or `SYNCFS` is False and the callers do
what they did before: create each file with its name, flush each file.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path
from typing import Final

_O_TMPFILE: Final = getattr(os, "O_TMPFILE", 0)
_AT_FDCWD: Final = -100
_AT_SYMLINK_FOLLOW: Final = 0x400
_OPEN_FILES: Final = "/proc/self/fd"


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None


_LIBC: Final = _libc()
_linkat = getattr(_LIBC, "linkat", None)
_syncfs = getattr(_LIBC, "syncfs", None)

UNNAMED_FILES: Final = bool(_O_TMPFILE and _linkat is not None and os.path.isdir(_OPEN_FILES))
"""Whether `open_unnamed` and `give_name` work here (Linux with /proc)."""

SYNCFS: Final = _syncfs is not None
"""Whether `syncfs` works here (Linux)."""


def open_unnamed(folder: Path) -> int:
    """A new file with no name in ``folder``, open for writing; blocking.

    Nothing is left of it if it is closed, or the process dies, before
    `give_name`.  Raises ``OSError``; ``EOPNOTSUPP`` (or ``EISDIR``, ``EINVAL``)
    from a file system that cannot make one.
    """
    return os.open(folder, os.O_WRONLY | _O_TMPFILE | os.O_CLOEXEC, 0o666)


def give_name(descriptor: int, path: Path) -> None:
    """Give the unnamed file open as ``descriptor`` its name ``path``; blocking.

    ``path`` must be in the folder the file was made in (or on its file system).
    """
    source = f"{_OPEN_FILES}/{descriptor}".encode()
    if _linkat(_AT_FDCWD, source, _AT_FDCWD, os.fsencode(path), _AT_SYMLINK_FOLLOW) != 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number), str(path))


def syncfs(descriptor: int) -> None:
    """Flush everything written to the file system holding ``descriptor`` (its files, their
    names, its journal) to the disk; blocking.  Raises ``OSError`` when a write failed."""
    if _syncfs(descriptor) != 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number))

"""The ``--save`` store handler: every instance as ``<SOP Instance UID>.dcm`` in one folder.

A plain folder and no index, for collecting what a modality sends
(``dicomd scp --save DIR``).  A success status means the file is whole and
on the disk: the instance is copied into a hidden temporary file in the
folder, flushed, renamed to its name, and the folder flushed, so a reader
of the folder never sees half a file.  The received file itself is left
where it is, for the handlers after this one (``--archive`` keeps the same
instance).  A copy, not a hard link: the two files must not share one inode,
or a later edit of one would change the other.  A second copy of an
instance replaces the first.  A crash may leave a hidden ``.*.partial``
file behind, never a visible one that is incomplete.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from zope.interface import implementer

from dicomd.archive.durability import fsync_path
from dicomd.archive.files import copy_durably
from dicomd.archive.layout import sanitise
from dicomd.interfaces import IStoreHandler, ReceivedInstance
from dicomd.uids import Status


@implementer(IStoreHandler)
class FolderHandler:
    """Keeps each received instance as ``path/<SOP Instance UID>.dcm``.

    Options (from the ``plugins:`` entry of the configuration): ``path``, the
    folder, created if it is missing.  A folder that cannot be created or
    written into is refused here, when the node starts, rather than with
    A700 for every instance.  The copying runs in the reactor's thread pool.
    """

    def __init__(self, path: str | os.PathLike[str], reactor: Any = None) -> None:
        if not isinstance(path, str | os.PathLike) or not str(path):
            raise ValueError(f"path: expected a folder name, got {path!r}")
        self.path = Path(path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ValueError(f"cannot create {self.path}: {error.strerror}") from None
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise ValueError(f"cannot write into {self.path}")
        self._reactor = reactor

    def store(self, instance: ReceivedInstance) -> Deferred[int]:
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor
        return deferToThreadPool(reactor, reactor.getThreadPool(), self.keep, instance)

    def keep(self, instance: ReceivedInstance) -> int:
        """Blocking: copy the instance to its name in the folder, durably; its status."""
        target = self.path / f"{sanitise(instance.sop_instance_uid)}.dcm"
        copy_durably(instance.path, target)
        shutil.copymode(instance.path, target)  # the received file's, not the temporary's 0600
        fsync_path(self.path)
        return Status.SUCCESS

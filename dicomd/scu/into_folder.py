"""Where a C-GET's instances go: each into the caller's folder, then to the caller's callback."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from twisted.internet import defer
from zope.interface import implementer

from dicomd import uids
from dicomd.interfaces import IStoreHandler, Kept, ReceivedInstance

if TYPE_CHECKING:
    from dicomd.scu.operations import InstanceCallback


@implementer(IStoreHandler)
class IntoFolder:
    """Keeps a C-GET's instance as ``<SOP Instance UID>.dcm`` and asks the caller's callback."""

    def __init__(self, folder: Path, on_instance: InstanceCallback | None) -> None:
        self.folder = folder
        self.on_instance = on_instance

    def store(self, instance: ReceivedInstance) -> defer.Deferred[Kept]:
        target = self.folder / f"{_file_name(instance.sop_instance_uid)}.dcm"
        os.replace(instance.path, target)  # a rename in the same folder: it takes no time
        if self.on_instance is None:
            return defer.succeed(Kept(uids.Status.SUCCESS, target))
        d = defer.maybeDeferred(self.on_instance, target)
        return d.addCallback(
            lambda answer: Kept(uids.Status.SUCCESS if answer is None else int(answer), target)
        )


def _file_name(uid: str) -> str:
    """A SOP Instance UID as a file name: digits and dots only."""
    cleaned = "".join(c for c in uid if c.isdigit() or c == ".").strip(".")
    return cleaned or "unnamed"

"""Storage (C-STORE) SCP, PS3.4 Annex B: the storage SOP classes, received by `StoreReceiver`.

Each data set streams into a temporary Part 10 file next to the archive (so
that keeping it is a rename on the same file system), and the chain of
`IStoreHandler` plugins decides what happens to it and which status the
peer gets.  The receiving itself is the one the C-GET requester uses too.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydicom.tag import Tag

from dicomd import uids
from dicomd.dimse.storage import StoreReceiver
from dicomd.dimse.walker import DEFAULT_INFLATION, InflationLimits
from dicomd.interfaces import IStoreHandler
from dicomd.node.auditing import AUDITED_ATTRIBUTES
from dicomd.part10 import INCOMING_FOLDER


class StorageService(StoreReceiver):
    """C-STORE SCP for every standard storage SOP class (and any unknown one, as a fallback)."""

    def __init__(
        self,
        storage_path: Path,
        handlers: Sequence[IStoreHandler],
        transfer_syntaxes: Sequence[str],
        inflation: InflationLimits = DEFAULT_INFLATION,
        *,
        audited: bool = False,
    ) -> None:
        """``audited``: the audit trail names each instance's patient and study, so the
        walker collects them too."""
        super().__init__(storage_path / INCOMING_FOLDER, handlers, inflation)
        if audited:
            self.wanted = self.wanted | frozenset(
                int(Tag(keyword)) for keyword in (*AUDITED_ATTRIBUTES, "SpecificCharacterSet")
            )
        self.abstract_syntaxes = uids.STORAGE_SOP_CLASSES
        # Our preference first, then every other transfer syntax pydicom knows,
        # so that compressed instances are kept as they were sent.
        self.transfer_syntaxes = tuple(transfer_syntaxes) + tuple(
            sorted(uids.KNOWN_TRANSFER_SYNTAXES - set(transfer_syntaxes))
        )

"""The requests a requestor makes and what their responses add up to.

Each operation turns the responses to one request into its outcome: a
C-FIND gathers matches until the final status, a C-MOVE or C-GET reports
progress from its pending responses.  A C-GET also receives the instances
its peer sends back, through the same C-STORE receive path as the storage
SCP, into the folder that C-GET asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.internet import defer

from dicomd import uids
from dicomd.dimse.association import MORE, Operation, is_pending
from dicomd.dimse.command import Command
from dicomd.dimse.negotiation import AcceptedContext

if TYPE_CHECKING:
    from pydicom import Dataset


class FindFailed(Exception):
    """A C-FIND ended with a failure status (A700, A900, Cxxx...).

    Raised by `cfind` and `Requestor.find_iter`, whose callers have no result
    to look at; `Requestor.find` gives the status in its `FindResult` instead.
    """

    def __init__(self, status: int, error_comment: str | None = None) -> None:
        comment = f": {error_comment}" if error_comment else ""
        super().__init__(f"C-FIND failed with status 0x{status:04X}{comment}")
        self.status, self.error_comment = status, error_comment


@dataclass(frozen=True, slots=True)
class FindResult:
    """The end of a C-FIND: its final status and every match received."""

    status: int
    matches: list[Dataset]
    error_comment: str | None = None

    def raise_for_failure(self) -> FindResult:
        """This result, or `FindFailed` for a failure status."""
        if uids.status_category(self.status) == "failure":
            raise FindFailed(self.status, self.error_comment)
        return self


@dataclass(frozen=True, slots=True)
class RetrieveResult:
    """The end of a C-MOVE or C-GET: final status and sub-operation counts."""

    status: int
    completed: int
    failed: int
    warning: int
    failed_sop_instance_uids: tuple[str, ...] = ()
    error_comment: str | None = None


@dataclass(frozen=True, slots=True)
class RetrieveProgress:
    """One pending C-MOVE or C-GET response: the sub-operations so far."""

    remaining: int
    completed: int
    failed: int
    warning: int


class FindOperation(Operation):
    """A C-FIND: each match goes to ``on_match`` as it arrives, and all of them to the result."""

    def __init__(
        self, context: AcceptedContext, on_match: Callable[[Dataset], object] | None
    ) -> None:
        super().__init__(context)
        self.on_match = on_match
        self.matches: list[Dataset] = []

    def response(self, command: Command, data: bytes | None) -> Any:
        if is_pending(command):
            if data is not None:
                from dicomd.dimse.datasets import decode_dataset  # pydicom: loaded by the first

                match = decode_dataset(data, self.context.transfer_syntax)
                self.matches.append(match)
                if self.on_match is not None:
                    self.on_match(match)
            return MORE
        return FindResult(command.status, self.matches, command.error_comment)  # type: ignore[arg-type]


class RetrieveOperation(Operation):
    """A C-MOVE or C-GET: progress from each pending response, the counts at the end."""

    def __init__(
        self, context: AcceptedContext, on_progress: Callable[[RetrieveProgress], object] | None
    ) -> None:
        super().__init__(context)
        self.on_progress = on_progress

    def response(self, command: Command, data: bytes | None) -> Any:
        counts = (
            command.number_of_completed_suboperations or 0,
            command.number_of_failed_suboperations or 0,
            command.number_of_warning_suboperations or 0,
        )
        if is_pending(command):
            if self.on_progress is not None:
                remaining = command.number_of_remaining_suboperations or 0
                self.on_progress(RetrieveProgress(remaining, *counts))
            return MORE
        failed: tuple[str, ...] = ()
        if data:
            from dicomd.dimse.datasets import decode_dataset  # pydicom: loaded by the first

            listed = decode_dataset(data, self.context.transfer_syntax).get(
                "FailedSOPInstanceUIDList", []
            )
            failed = (listed,) if isinstance(listed, str) else tuple(listed)
        return RetrieveResult(command.status, *counts, failed, command.error_comment)  # type: ignore[arg-type]


InstanceCallback = Callable[[Path], "int | defer.Deferred[int | None] | None"]
"""What a C-GET caller says of an instance it received: its C-STORE status (None: success)."""


class GetOperation(RetrieveOperation):
    """A C-GET, with the receiver of the instances it brings back into its own folder."""

    def __init__(
        self,
        context: AcceptedContext,
        on_progress: Callable[[RetrieveProgress], object] | None,
        folder: Path,
        on_instance: InstanceCallback | None,
    ) -> None:
        super().__init__(context, on_progress)
        # The receive path (pydicom, the walker) loads with the first C-GET, not with every SCU.
        from dicomd.dimse.storage import StoreReceiver
        from dicomd.scu.into_folder import IntoFolder

        self.receiver = StoreReceiver(folder, [IntoFolder(folder, on_instance)])

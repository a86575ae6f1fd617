"""Storage (C-STORE) SCP, PS3.4 Annex B: stream to disk, then ask the store handlers.

Each data set is written, fragment by fragment as it arrives, behind our
File Meta Information into a temporary Part 10 file next to the archive (so
that keeping it is a rename on the same file system).  Memory stays flat
whatever the size of the instance.  Once the last fragment is in, the chain
of `IStoreHandler` plugins decides what happens to the file and which status
the peer gets; a file no handler kept is removed.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from pydicom import Dataset
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from dicomd import uids
from dicomd.dimse.command import Command, CommandField
from dicomd.dimse.datasets import error_comment
from dicomd.dimse.negotiation import AcceptedContext
from dicomd.interfaces import IStoreHandler, ReceivedInstance
from dicomd.node.acceptor import DiscardSink
from dicomd.part10 import IncomingFile, file_meta

if TYPE_CHECKING:
    from dicomd.node.acceptor import Acceptor, Request

INCOMING = ".incoming"


class StorageService:
    """C-STORE SCP for every standard storage SOP class, and optionally any unknown one."""

    log = Logger()
    operations = frozenset({CommandField.C_STORE_RQ})

    def __init__(
        self,
        storage_path: Path,
        handlers: Sequence[IStoreHandler],
        transfer_syntaxes: Sequence[str],
    ) -> None:
        self.incoming = storage_path / INCOMING
        self.handlers = tuple(handlers)
        self.abstract_syntaxes = uids.STORAGE_SOP_CLASSES
        # Our preference first, then every other transfer syntax pydicom knows,
        # so that compressed instances are kept as they were sent.
        self.transfer_syntaxes = tuple(transfer_syntaxes) + tuple(
            sorted(uids.KNOWN_TRANSFER_SYNTAXES - set(transfer_syntaxes))
        )

    def open_sink(
        self, association: Acceptor, context: AcceptedContext, command: Command
    ) -> IncomingFile | DiscardSink:
        if not (command.affected_sop_class_uid and command.affected_sop_instance_uid):
            return DiscardSink()  # answered in handle(): there is nothing to name the file by
        meta = file_meta(
            command.affected_sop_class_uid,
            command.affected_sop_instance_uid,
            context.transfer_syntax,
            association.calling_ae_title,
        )
        return IncomingFile(self.incoming, meta)

    def handle(self, association: Acceptor, request: Request) -> defer.Deferred[None] | None:
        command = request.command
        received: IncomingFile | None = request.data
        if received is None:
            status = Status(
                uids.Status.CANNOT_UNDERSTAND, "C-STORE-RQ without Affected SOP Class/Instance UID"
            )
            return self._respond(association, request, status)
        if received.error is not None:
            return self._respond(association, request, _out_of_resources(received.error))
        instance = ReceivedInstance(
            calling_ae_title=association.calling_ae_title,
            called_ae_title=association.called_ae_title,
            peer_host=association.peer_host,
            peer_port=association.peer_port,
            sop_class_uid=command.affected_sop_class_uid or "",
            sop_instance_uid=command.affected_sop_instance_uid or "",
            transfer_syntax=request.context.transfer_syntax,
            path=received.path,
            size=received.size,
        )
        d = _Chain(self.handlers, instance).run()
        d.addCallback(lambda status: self._respond(association, request, status))

        def clean_up(result: object) -> object:
            if not instance.kept:
                with contextlib.suppress(FileNotFoundError):
                    instance.path.unlink()
            return result

        return d.addBoth(clean_up)

    def _respond(self, association: Acceptor, request: Request, status: Status) -> None:
        fields: dict[str, object] = {
            "affected_sop_instance_uid": request.command.affected_sop_instance_uid
        }
        if status.comment:
            fields["error_comment"] = error_comment(status.comment)
        association.respond(request, status.code, **fields)


class Status(NamedTuple):
    """A DIMSE status and its optional Error Comment."""

    code: int
    comment: str = ""


_SUCCESS = Status(uids.Status.SUCCESS)


class _Chain:
    """Runs the store handlers in order; stops at the first failure.

    Handlers that answer at once are called in a plain loop: the chain only
    waits on a Deferred when a handler returns one.
    """

    def __init__(self, handlers: Sequence[IStoreHandler], instance: ReceivedInstance) -> None:
        self.handlers = iter(handlers)
        self.instance = instance
        self.answer = _SUCCESS
        self.done: defer.Deferred[Status] = defer.Deferred()

    def run(self) -> defer.Deferred[Status]:
        self._next()
        return self.done

    def _next(self) -> None:
        for handler in self.handlers:
            try:
                result = handler.store(self.instance)
            except Exception:
                result = Failure()
            if isinstance(result, defer.Deferred):
                result.addBoth(self._answered, handler)
                return
            if self._judge(result, handler):
                return
        self.done.callback(self.answer)

    def _answered(self, result: object, handler: IStoreHandler) -> None:
        if not self._judge(result, handler):
            self._next()

    def _judge(self, result: object, handler: IStoreHandler) -> bool:
        """Take one handler's answer; True when the chain ends here."""
        try:
            status = (
                _status_for_failure(result, handler, self.instance)
                if isinstance(result, Failure)
                else _as_status(result)
            )
        except TypeError as error:
            status = _status_for_failure(Failure(error), handler, self.instance)
        category = uids.status_category(status.code)
        if category == "failure":
            self.done.callback(status)
            return True
        if category == "warning":
            self.answer = status
        return False


def _as_status(result: object) -> Status:
    if isinstance(result, Dataset):
        if "Status" not in result:
            raise TypeError("a store handler answered a Dataset without Status")
        return Status(int(result.Status), str(result.get("ErrorComment", "")))
    if isinstance(result, int) and not isinstance(result, bool) and 0 <= result <= 0xFFFF:
        return _SUCCESS if result == 0 else Status(result)
    raise TypeError(f"a store handler answered {result!r}, not a status")


def _out_of_resources(error: OSError) -> Status:
    reason = "disk full" if error.errno in (errno.ENOSPC, errno.EDQUOT) else error.strerror
    return Status(uids.Status.OUT_OF_RESOURCES, f"cannot store: {reason}")


def _status_for_failure(
    failure: Failure, handler: IStoreHandler, instance: ReceivedInstance
) -> Status:
    StorageService.log.failure(
        "store handler {handler} failed on {sop_instance_uid}",
        failure,
        handler=type(handler).__name__,
        sop_instance_uid=instance.sop_instance_uid,
    )
    if failure.check(OSError):
        return _out_of_resources(failure.value)
    return Status(uids.Status.CANNOT_UNDERSTAND, f"{type(handler).__name__}: {failure.value}")

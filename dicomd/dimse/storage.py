"""C-STORE, receiving, for both roles: each data set streamed into a file, then judged.

`StoreReceiver` streams each data set, fragment by fragment, into a
temporary Part 10 file behind our File Meta Information, then asks a chain
of `IStoreHandler`s what to do with it and which status to answer.  The
storage SCP and the C-GET requester both receive through it, and STOW-RS
(`dicomd.web.stow`) judges each part it receives with the same checks and
chain (`store_received`).  Sending is `dicomd.dimse.sending`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from pydicom import Dataset
from pydicom.tag import Tag
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from dicomd import uids
from dicomd.dimse.association import (
    DataSink,
    DimseAssociation,
    DiscardSink,
    Request,
)
from dicomd.dimse.command import Command, CommandField
from dicomd.dimse.datasets import DataSetError
from dicomd.dimse.negotiation import AcceptedContext
from dicomd.dimse.walker import (
    DEFAULT_INFLATION,
    DataSetWalker,
    Inflater,
    InflationLimits,
    checker_for,
)
from dicomd.interfaces import IReadsAttributes, IStoreHandler, Kept, ReceivedInstance
from dicomd.part10 import IncomingFile, SpareFiles, file_meta


class Status(NamedTuple):
    """A DIMSE status and its optional Error Comment."""

    code: int
    comment: str = ""


_SUCCESS = Status(uids.Status.SUCCESS)


class StoreReceiver:
    """Receives C-STORE requests into ``incoming`` and asks ``handlers`` about each instance.

    A data set is written as it arrives, so memory stays flat whatever its
    size.  Once the last fragment is in, the handlers decide in turn; the
    first failure ends the chain and is answered, otherwise the last warning
    or success.  A file that no handler kept (`Kept`) is removed.
    """

    log = Logger()
    operations = frozenset({CommandField.C_STORE_RQ})

    def __init__(
        self,
        incoming: Path,
        handlers: Sequence[IStoreHandler],
        inflation: InflationLimits = DEFAULT_INFLATION,
    ) -> None:
        self.incoming = incoming
        self.handlers = tuple(handlers)
        self.inflation = inflation
        self.wanted = attributes_read(self.handlers)
        self.spares = SpareFiles(incoming)

    def open_sink(
        self, association: DimseAssociation, context: AcceptedContext, command: Command
    ) -> DataSink:
        if _refusal(command) is not None:
            return DiscardSink()  # answered in handle(): nothing to name the file by
        meta = file_meta(
            command.affected_sop_class_uid,
            command.affected_sop_instance_uid,
            context.transfer_syntax,
            association.peer_ae_title,
        )
        checker = checker_for(context.transfer_syntax, self.inflation, self.wanted)
        worker = association.worker
        unnamed = self.spares.take()
        incoming = IncomingFile(self.incoming, meta, unnamed)
        naming = worker.run(incoming.give_name) if unnamed is not None else None
        if self.spares.wanted:
            self.spares.filling = True
            worker.run(self.spares.fill).addBoth(self._filled)
        return CheckedFile(incoming, checker, naming)

    def _filled(self, result: object) -> None:
        self.spares.filling = False
        if isinstance(result, Failure):
            self.log.failure("making spare incoming files failed", result)

    def handle(
        self, association: DimseAssociation, request: Request
    ) -> defer.Deferred[None] | None:
        """Answer once the received file has its name (`IncomingFile.give_name`): a thread
        gives it while the data set arrives, so it is usually there already."""
        checked = request.data
        if isinstance(checked, CheckedFile) and checked.naming is not None:
            return checked.naming.addCallback(lambda _: self._handle(association, request))
        return self._handle(association, request)

    def _handle(
        self, association: DimseAssociation, request: Request
    ) -> defer.Deferred[None] | None:
        command = request.command
        refusal = _refusal(command)
        if refusal is not None:
            return _respond(association, request, refusal)
        checked: CheckedFile | None = request.data
        if checked is None:  # the command said no data set follows
            return _respond(
                association,
                request,
                Status(uids.Status.CANNOT_UNDERSTAND, "C-STORE-RQ without a data set"),
            )
        if checked.problem is not None:
            self.log.warn(
                "C-STORE of {uid} from {peer_ae}: the data set is not whole: {problem}",
                uid=command.affected_sop_instance_uid,
                peer_ae=association.peer_ae_title,
                problem=checked.problem,
            )
        stored = store_received(
            self.handlers,
            checked,
            calling_ae_title=association.calling_ae_title,
            called_ae_title=association.called_ae_title,
            peer_host=association.peer_host,
            peer_port=association.peer_port,
            sop_class_uid=command.affected_sop_class_uid or "",
            sop_instance_uid=command.affected_sop_instance_uid or "",
            transfer_syntax=request.context.transfer_syntax,
        )
        return stored.addCallback(lambda status: _respond(association, request, status))


def store_received(
    handlers: Sequence[IStoreHandler],
    checked: CheckedFile,
    *,
    calling_ae_title: str,
    called_ae_title: str,
    peer_host: str,
    peer_port: int,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax: str,
) -> defer.Deferred[Status]:
    """The status of a data set received into ``checked``, whoever sent it (a C-STORE, or
    a part of a STOW-RS request): C000 when it is not whole and A700 when it could not be
    written, without asking anyone; otherwise what the handler chain answers.  The file is
    removed unless a handler kept it (`Kept`)."""
    received = checked.file
    if checked.problem is not None:
        received.remove()
        return defer.succeed(Status(uids.Status.CANNOT_UNDERSTAND, f"not whole: {checked.problem}"))
    if received.error is not None:
        received.remove()
        return defer.succeed(_out_of_resources(received.error))
    from dicomd import metrics  # here: a client loads prometheus-client once it receives

    metrics.instance_received(received.size)
    instance = ReceivedInstance(
        calling_ae_title=calling_ae_title,
        called_ae_title=called_ae_title,
        peer_host=peer_host,
        peer_port=peer_port,
        sop_class_uid=sop_class_uid,
        sop_instance_uid=sop_instance_uid,
        transfer_syntax=transfer_syntax,
        path=received.path,
        size=received.size,
        attributes=checked.checker.collected if checked.checker is not None else None,
    )
    chain = _Chain(handlers, instance)

    def clean_up(result: object) -> object:
        if not chain.kept:
            with contextlib.suppress(FileNotFoundError):
                instance.path.unlink()
        return result

    return chain.run().addBoth(clean_up)


def _refusal(command: Command) -> Status | None:
    """The answer to a C-STORE-RQ whose UIDs cannot name an instance, or None."""
    if not (command.affected_sop_class_uid and command.affected_sop_instance_uid):
        return Status(
            uids.Status.CANNOT_UNDERSTAND, "C-STORE-RQ without Affected SOP Class/Instance UID"
        )
    return uid_refusal(command.affected_sop_class_uid, command.affected_sop_instance_uid)


def uid_refusal(sop_class_uid: str, sop_instance_uid: str) -> Status | None:
    """The failure status of an instance whose UIDs break the UID rules, or None.

    The SOP Instance UID names the file an archive keeps: one that breaks
    the UID rules (too long, other characters) could collide with another's.
    """
    problem = uids.uid_problem(sop_instance_uid)
    if problem is not None:
        return Status(uids.Status.INVALID_OBJECT_INSTANCE, f"SOP Instance UID {problem}")
    problem = uids.uid_problem(sop_class_uid)
    if problem is not None:
        return Status(uids.Status.CANNOT_UNDERSTAND, f"SOP Class UID {problem}")
    return None


def attributes_read(handlers: Sequence[IStoreHandler]) -> frozenset[int]:
    """The tags of the attributes the handlers read (`IReadsAttributes`), with the Specific
    Character Set that text values are decoded with; none when no handler reads any."""
    keywords = {
        keyword
        for handler in handlers
        if IReadsAttributes.providedBy(handler)
        for keyword in handler.attributes_read
    }
    if not keywords:
        return frozenset()
    return frozenset(int(Tag(keyword)) for keyword in keywords | {"SpecificCharacterSet"})


class CheckedFile:
    """The sink of one C-STORE: the Part 10 file being written, and what follows the data
    set's structure as it arrives to tell whether it is whole.

    After the first problem nothing more is written: the rest is only read
    off the association, and the file is removed once the request is answered.
    """

    def __init__(
        self,
        file: IncomingFile,
        checker: DataSetWalker | Inflater | None,
        naming: defer.Deferred[None] | None = None,
    ) -> None:
        self.file = file
        self.checker = checker
        self.naming = naming
        """Fires once a thread has given the file its name, when it was made without one."""
        self.problem: str | None = None

    def write(self, data: bytes) -> None:
        if self.problem is not None:
            return
        self.file.write(data)
        if self.checker is not None:
            try:
                self.checker.feed(data)
            except DataSetError as error:
                self.problem = str(error)

    def finish(self) -> CheckedFile:
        self.file.finish()
        if self.problem is None and self.checker is not None:
            try:
                self.checker.end()
            except DataSetError as error:
                self.problem = str(error)
        return self

    def discard(self) -> None:
        self.file.discard()
        if self.naming is not None:  # the name may come after: remove it then
            self.naming.addBoth(lambda _: self.file.remove())


def _respond(association: DimseAssociation, request: Request, status: Status) -> None:
    fields: dict[str, object] = {
        "affected_sop_instance_uid": request.command.affected_sop_instance_uid
    }
    if status.comment:
        fields["error_comment"] = uids.error_comment(status.comment)
    association.respond(request, status.code, **fields)


class _Chain:
    """Runs the store handlers in order; stops at the first failure.

    Each handler is asked through `defer.maybeDeferred`; one that took the
    file (`Kept`) passes the file's new path to those after it.
    """

    def __init__(self, handlers: Sequence[IStoreHandler], instance: ReceivedInstance) -> None:
        self.handlers = iter(handlers)
        self.instance = instance
        self.kept = False
        self.answer = _SUCCESS
        self.done: defer.Deferred[Status] = defer.Deferred()

    def run(self) -> defer.Deferred[Status]:
        self._next()
        return self.done

    def _next(self) -> None:
        for handler in self.handlers:
            d = defer.maybeDeferred(handler.store, self.instance)
            if not d.called:
                d.addBoth(self._answered, handler)
                return
            if self._judge(_result_of(d), handler):
                return
        self.done.callback(self.answer)

    def _answered(self, result: object, handler: IStoreHandler) -> None:
        if not self._judge(result, handler):
            self._next()

    def _judge(self, result: object, handler: IStoreHandler) -> bool:
        """Take one handler's answer; True when the chain ends here."""
        if isinstance(result, Kept):
            self.kept = True
            self.instance = dataclasses.replace(self.instance, path=result.path)
            result = result.status
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


def _result_of(d: defer.Deferred[object]) -> object:
    """What an already fired Deferred holds, taken out of it (a Failure included)."""
    outcome: list[object] = []
    d.addBoth(outcome.append)
    return outcome[0]


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
    """The status for a handler that raised.  An OSError is the storage failing (a full
    disk): one line says so.  Anything else is a fault in the handler, logged with its
    traceback for whoever wrote it."""
    if failure.check(OSError):
        StoreReceiver.log.warn(
            "store handler {handler} cannot store {sop_instance_uid}: {error}",
            handler=type(handler).__name__,
            sop_instance_uid=instance.sop_instance_uid,
            error=str(failure.value),
        )
        return _out_of_resources(failure.value)
    StoreReceiver.log.failure(
        "store handler {handler} failed on {sop_instance_uid}",
        failure,
        handler=type(handler).__name__,
        sop_instance_uid=instance.sop_instance_uid,
    )
    return Status(uids.Status.CANNOT_UNDERSTAND, f"{type(handler).__name__}: {failure.value}")

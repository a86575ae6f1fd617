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
import io
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from dicomd import uids
from dicomd.association import DiscardSink
from dicomd.dimse import Command, CommandField, error_comment
from dicomd.interfaces import IStoreHandler, ReceivedInstance
from dicomd.negotiation import AcceptedContext

if TYPE_CHECKING:
    from dicomd.association import Acceptor, Request

PREAMBLE = b"\x00" * 128 + b"DICM"
INCOMING = ".incoming"
_WRITE_BUFFER = 1 << 20


class IncomingFile:
    """The data sink of one C-STORE: a temporary Part 10 file, written as data arrives.

    A write error (a full disk, most often) is remembered rather than raised:
    the rest of the data set must still be read off the association, and the
    peer gets A700 once it is complete.
    """

    def __init__(self, folder: Path, meta: bytes) -> None:
        self.path = folder / f"{uuid.uuid4().hex}.part"
        self.size = 0
        self.error: OSError | None = None
        self._file: BinaryIO | None = None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "wb", buffering=_WRITE_BUFFER)  # noqa: SIM115
            self._file.write(PREAMBLE)
            self._file.write(meta)
        except OSError as error:
            self._fail(error)

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self._file is None:
            return
        try:
            self._file.write(data)
        except OSError as error:
            self._fail(error)

    def finish(self) -> IncomingFile:
        if self._file is not None:
            try:
                self._file.close()
            except OSError as error:
                self._fail(error)
            self._file = None
        return self

    def discard(self) -> None:
        """The association ended mid-instance: nothing of it may remain."""
        self._close_quietly()
        self.remove()

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            self.path.unlink()

    def _fail(self, error: OSError) -> None:
        self.error = error
        self._close_quietly()
        self.remove()

    def _close_quietly(self) -> None:
        """Close after a failure: the first error is the one worth reporting."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None


def file_meta(command: Command, transfer_syntax: str, source_ae_title: str) -> bytes:
    """Our File Meta Information for a received instance (PS3.10 7.1), encoded by pydicom."""
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = command.affected_sop_class_uid
    meta.MediaStorageSOPInstanceUID = command.affected_sop_instance_uid
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = uids.IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = uids.IMPLEMENTATION_VERSION_NAME
    if source_ae_title:
        meta.SourceApplicationEntityTitle = source_ae_title
    buffer = io.BytesIO()
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return buffer.getvalue()


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
        meta = file_meta(command, context.transfer_syntax, association.calling_ae_title)
        return IncomingFile(self.incoming, meta)

    def handle(self, association: Acceptor, request: Request) -> defer.Deferred[None]:
        command = request.command
        received: IncomingFile | None = request.data
        if received is None:
            status = _status(
                uids.Status.CANNOT_UNDERSTAND,
                "C-STORE-RQ without Affected SOP Class/Instance UID",
            )
            self._respond(association, request, status)
            return defer.succeed(None)
        if received.error is not None:
            received.remove()
            self._respond(association, request, _out_of_resources(received.error))
            return defer.succeed(None)
        peer = association.protocol.transport.getPeer()
        instance = ReceivedInstance(
            calling_ae_title=association.calling_ae_title,
            called_ae_title=association.called_ae_title,
            peer_host=getattr(peer, "host", ""),
            peer_port=getattr(peer, "port", 0),
            sop_class_uid=command.affected_sop_class_uid or "",
            sop_instance_uid=command.affected_sop_instance_uid or "",
            transfer_syntax=request.context.transfer_syntax,
            path=received.path,
            size=received.size,
        )
        d = self._run_chain(instance)
        d.addCallback(lambda status: self._respond(association, request, status))

        def clean_up(result: object) -> object:
            if not instance.kept:
                instance.path.unlink(missing_ok=True)
            return result

        return d.addBoth(clean_up)

    @defer.inlineCallbacks
    def _run_chain(self, instance: ReceivedInstance):
        answer: Dataset = _status(uids.Status.SUCCESS)
        for handler in self.handlers:
            try:
                result = yield defer.maybeDeferred(handler.store, instance)
                status = _as_status(result)
            except Exception:
                status = _status_for_failure(Failure(), handler, instance)
            category = uids.status_category(status.Status)
            if category == "failure":
                return status
            if category == "warning":
                answer = status
        return answer

    def _respond(self, association: Acceptor, request: Request, status: Dataset) -> None:
        fields: dict[str, object] = {
            "affected_sop_instance_uid": request.command.affected_sop_instance_uid
        }
        comment = status.get("ErrorComment")
        if comment:
            fields["error_comment"] = error_comment(str(comment))
        association.respond(request, int(status.Status), **fields)


def _status(code: int, comment: str = "") -> Dataset:
    status = Dataset()
    status.Status = code
    if comment:
        status.ErrorComment = comment
    return status


def _as_status(result: object) -> Dataset:
    if isinstance(result, Dataset):
        if "Status" not in result:
            raise TypeError("a store handler answered a Dataset without Status")
        return result
    if isinstance(result, int) and not isinstance(result, bool) and 0 <= result <= 0xFFFF:
        return _status(result)
    raise TypeError(f"a store handler answered {result!r}, not a status")


def _out_of_resources(error: OSError) -> Dataset:
    reason = "disk full" if error.errno in (errno.ENOSPC, errno.EDQUOT) else error.strerror
    return _status(uids.Status.OUT_OF_RESOURCES, f"cannot store: {reason}")


def _status_for_failure(
    failure: Failure, handler: IStoreHandler, instance: ReceivedInstance
) -> Dataset:
    StorageService.log.failure(
        "store handler {handler} failed on {sop_instance_uid}",
        failure,
        handler=type(handler).__name__,
        sop_instance_uid=instance.sop_instance_uid,
    )
    if failure.check(OSError):
        return _out_of_resources(failure.value)
    return _status(uids.Status.CANNOT_UNDERSTAND, f"{type(handler).__name__}: {failure.value}")

"""The ``archive`` store handler: keep each received instance as a file and index it.

A success status must mean the instance survives a power cut, so the file's
content is flushed before it is renamed into place, every folder created for
it and the folder it lands in are flushed too, and the index row is committed
before the status is given (a commit lost to a power cut is redone from the
file at start-up, see `dicomd.archive.index`).  The order file-then-row means
that a crash can leave a file without a row or, with ``overwrite``, a row
whose file was replaced; never a row pointing to nothing that was announced
as stored.  Reconciliation at start-up indexes such files again and removes
whatever else a crash left behind.

Each store is one call to the archive's thread pool, which runs every
blocking step of it in order (`ArchiveHandler._file`): check, lock, flush the
content, rename, flush the names, index, answer.  Stores that run at the same
time share their flushes (`dicomd.archive.durability`: one per folder, or one
``syncfs``, for all who wait) and their index transaction (`GroupCommit`: the
first store thread to find no transaction running commits the batch).  Sharing
never weakens the order above: a store waits for a flush that began after its
own write, and for a commit that holds its row.  A store holds a lock for its
SOP Instance UID and one for its layout path (`KeyedLocks`; across worker
processes `ProcessLocks` too) from before it looks for a duplicate until its
row is committed, so that a duplicate check never misses a row in flight.
A folder is made under a lock of its own, held until its name is flushed, so
that a store finding it already there waits for that flush before it answers.

Stores and queries have thread pools of their own: a store waits in its
thread for locks, flushes and commits, and must not keep a query waiting for
a thread.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final, TypeVar

from pydicom import Dataset, dcmread
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag, Tag
from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from dicomd import filesystem
from dicomd.archive.durability import FLUSHES, FileFlush, FilesystemFlush
from dicomd.archive.files import LocalFiles
from dicomd.archive.index import (
    INDEXED_KEYWORDS,
    REQUIRED_UIDS,
    ArchiveIndex,
    DuplicateInstance,
    InstanceRecord,
    Write,
    adding,
    record_from_dataset,
)
from dicomd.archive.indexes import index_for
from dicomd.archive.layout import Layout, text_of
from dicomd.archive.matches import NotRunning, PagedMatches
from dicomd.archive.query import ArchiveQuery, FindPages
from dicomd.archive.writer import (
    GroupCommit,
    InFlight,
    KeyedLocks,
    ProcessLocks,
    SharedLocks,
    hold_keys,
)
from dicomd.interfaces import (
    FindQuery,
    IFindHandler,
    IInstanceStorage,
    IReadsAttributes,
    IRetrieveSource,
    IStoreHandler,
    ISupportedKeys,
    Kept,
    ReceivedInstance,
    RetrieveItem,
)
from dicomd.metrics import IIndexSize
from dicomd.part10 import INCOMING_FOLDER, ForwardReader, inflated_pieces, read_header_from
from dicomd.uids import (
    ALL_TRANSFER_SYNTAXES,
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    PATIENT_ROOT_FIND,
    PATIENT_ROOT_GET,
    PATIENT_ROOT_MOVE,
    STUDY_ROOT_FIND,
    STUDY_ROOT_GET,
    STUDY_ROOT_MOVE,
    Status,
    error_comment,
    is_encapsulated,
)

DEFAULT_LAYOUT: Final = "{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm"
DUPLICATE_POLICIES: Final = ("keep-first", "overwrite", "reject")

_SQLITE_COMPANIONS: Final = ("", "-wal", "-shm", "-journal")
_READABLE: Final = {
    # transfer syntax: (implicit VR, little endian) of the data set as stored, or inflated
    IMPLICIT_VR_LITTLE_ENDIAN: (True, True),
    EXPLICIT_VR_BIG_ENDIAN: (False, False),
    **{syntax: (False, True) for syntax in ALL_TRANSFER_SYNTAXES if is_encapsulated(syntax)},
    EXPLICIT_VR_LITTLE_ENDIAN: (False, True),
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN: (False, True),
}
"""Transfer syntaxes whose data set's head pydicom reads without reading the rest."""
_INFLATED_PIECE: Final = 1 << 16
LOCKS_FOLDER: Final = ".locks"
"""Where worker processes sharing the archive lock UIDs and paths (`ProcessLocks`)."""

if TYPE_CHECKING:
    from dicomd.archive.postgres import AdvisoryLocks

_T = TypeVar("_T")


def _storage(
    path: Path, url: str | None, endpoint_url: str | None, threads: int
) -> IInstanceStorage:
    """Files under the archive folder, or the object storage ``url`` names, used by the
    store threads and the query threads (which fetch for retrieves) at once."""
    if url is None:
        if endpoint_url is not None:
            raise ValueError("endpoint_url: only for object storage, and storage_url is not set")
        return LocalFiles(path)
    from dicomd.archive.objects import S3Storage  # boto3: only when it is configured

    return S3Storage(url, endpoint_url, threads=2 * threads)


class ArchiveError(Exception):
    """The archive folder cannot be used as it is; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class _Placed:
    """A new copy kept in the storage, its row not yet written."""

    key: str
    replaced: str | None
    """The key of the copy it replaces at another key, removed once the row is committed."""
    fresh: bool
    """Nothing of this instance was kept under ``key`` before: a failed commit removes it."""
    replace: bool
    """Its row may replace one of the same UID; otherwise the unique constraint decides."""


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """What reconciliation at start-up found and did."""

    incoming_files: int
    rows_without_file: int
    files_reindexed: int
    unreadable_files: int
    empty_folders: int
    unfinished_copies: int = 0
    """Copies a store of this node left without a row when it died (shared archives)."""


@implementer(
    IStoreHandler, IReadsAttributes, IFindHandler, ISupportedKeys, IRetrieveSource, IIndexSize
)
class ArchiveHandler(Service):
    """Keeps received instances under ``path`` at their ``layout`` path, indexed in SQLite.

    Options (from the ``plugins:`` entry of the configuration):

    - ``path``: the archive folder (``storage.path`` unless given);
    - ``layout``: where an instance goes, a template of DICOM keywords;
    - ``duplicates``: what a second copy of a SOP Instance UID does:
      ``keep-first`` (warning B000, the first copy stays), ``overwrite``
      (the new copy replaces it) or ``reject`` (failure 0111);
    - ``index``: the file name of the SQLite index inside ``path``;
    - ``index_url`` (``index.url`` unless given): keep the index in the
      PostgreSQL database it names instead, shared by every node that names it;
    - ``threads``: how many instances are filed (or queries answered) at
      once;
    - ``case_insensitive_names``: C-FIND matches person names ignoring case;
    - ``flush``: how received files and their names reach the disk before
      success is answered (`dicomd.archive.durability`): ``files`` (each
      file, then each folder, flushed; the default) or ``filesystem`` (one
      ``syncfs`` of the archive's file system for every store that waits:
      faster where the archive has a file system of its own);
    - ``storage_url`` and ``endpoint_url`` (``storage.url`` and
      ``storage.endpoint_url`` unless given): keep the instances in
      S3-compatible object storage (``s3://bucket/prefix``) instead of files
      under ``path``, which then holds only the incoming files (and the
      SQLite index, if it is the index).

    It answers C-FIND (Patient Root and Study Root) from its index too, and
    is the source of C-MOVE and C-GET.

    The constructor only checks its options; the folder, the index and the
    threads come to life in ``startService``.  ``open``, ``archive`` and
    ``close`` are the same work without a reactor, in the caller's thread,
    for tools and tests.
    """

    log = Logger()
    find_models = (PATIENT_ROOT_FIND, STUDY_ROOT_FIND)
    retrieve_models = (PATIENT_ROOT_MOVE, STUDY_ROOT_MOVE, PATIENT_ROOT_GET, STUDY_ROOT_GET)

    def __init__(
        self,
        path: str | Path,
        layout: str = DEFAULT_LAYOUT,
        duplicates: str = "keep-first",
        index: str = "index.sqlite",
        threads: int = 8,
        case_insensitive_names: bool = False,
        flush: str = "files",
        storage_url: str | None = None,
        endpoint_url: str | None = None,
        index_url: str | None = None,
        reactor: Any = None,
    ) -> None:
        if not isinstance(path, str | os.PathLike) or not str(path):
            raise ValueError(f"path: expected a folder name, got {path!r}")
        if not isinstance(layout, str):
            raise ValueError(f"layout: expected a string, got {layout!r}")
        try:
            self.layout = Layout(layout)
        except ValueError as error:
            raise ValueError(f"layout: {error}") from None
        if duplicates not in DUPLICATE_POLICIES:
            raise ValueError(
                f"duplicates: {duplicates!r} is not one of {', '.join(DUPLICATE_POLICIES)}"
            )
        if not (isinstance(index, str) and index and "/" not in index and "\\" not in index):
            raise ValueError(
                f"index: expected a file name inside the archive folder, got {index!r}"
            )
        if index in (".", "..", INCOMING_FOLDER):
            raise ValueError(f"index: {index!r} cannot be a file name")
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads: expected a whole number of at least 1, got {threads!r}")
        if not isinstance(case_insensitive_names, bool):
            raise ValueError(
                f"case_insensitive_names: expected true or false, got {case_insensitive_names!r}"
            )
        if flush not in FLUSHES:
            raise ValueError(f"flush: {flush!r} is not one of {', '.join(FLUSHES)}")
        if flush == "filesystem" and not filesystem.SYNCFS:
            raise ValueError("flush: filesystem needs syncfs, which this system lacks")
        self.path = Path(path)
        self.storage = _storage(self.path, storage_url, endpoint_url, threads)
        self.flush = flush
        self.duplicates = duplicates
        self.threads = threads
        self.index = index_for(
            index_url,
            self.path / index,
            connections=threads + 2,
            # with object storage there are no files to index again after a power cut
            durable_commits=not isinstance(self.storage, LocalFiles),
        )
        self.query = ArchiveQuery(
            self.index.connect_reader, case_insensitive_names=case_insensitive_names
        )
        self._index_files = frozenset(index + suffix for suffix in _SQLITE_COMPANIONS)
        self._reactor = reactor
        self._pool: ThreadPool | None = None
        self._query_pool: ThreadPool | None = None
        self._writes: GroupCommit[Write] | None = None
        self._locks = KeyedLocks()
        self._in_flight = InFlight()
        self.attributes_read = frozenset((*INDEXED_KEYWORDS, *self.layout.keywords()))
        self.shared = False
        """True in one of several worker processes serving this archive: the parent
        reconciled before any of them began (a worker reconciling would delete what the
        others are receiving), and a UID or a path is locked across the processes too."""
        self._shared_locks: SharedLocks | None = None
        self._node_locks: AdvisoryLocks | None = None
        self._last_needed_tag = int(max(Tag(keyword) for keyword in self.attributes_read))

    # -- the Twisted service ----------------------------------------------------------------

    def startService(self) -> None:
        """Open and reconcile the archive before anything can be stored, then start the threads.

        This blocks on purpose: the store service must not write into
        ``.incoming`` while reconciliation empties it.
        """
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        if self.shared:
            self._open_index()
            locks = self.path / LOCKS_FOLDER
            (locks / "folders").mkdir(parents=True, exist_ok=True)
            if self._shared_locks is None:  # the index's locks hold across processes too
                self._shared_locks = ProcessLocks(locks)
            if isinstance(self.storage, LocalFiles):
                # apart: a store takes a folder's lock while it holds its UID's and path's
                self.storage.folder_locks = ProcessLocks(locks / "folders")
        else:
            self.open()
        if self.flush == "filesystem" and isinstance(self.storage, LocalFiles):
            self.storage.durability = FilesystemFlush(self.path)
        self._pool = ThreadPool(minthreads=1, maxthreads=self.threads, name="dicomd-archive")
        self._query_pool = ThreadPool(
            minthreads=1, maxthreads=self.threads, name="dicomd-archive-queries"
        )
        self._writes = GroupCommit(self.index.write)
        self._pool.start()
        self._query_pool.start()
        super().startService()

    def stopService(self) -> Deferred[None]:
        """Refuse new work; once the work in flight has ended, stop the threads and close.

        The Deferred fires when every instance being filed has its answer (its
        row committed, for a success) and the index is closed.  A query being
        answered waits for no more than the page it is reading: its read is
        closed with the index, and the rest of its matches are not read.
        """
        super().stopService()
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        await self._in_flight.ended()  # each store ends after its commit
        pools = (self._pool, self._query_pool)
        self._pool = self._query_pool = None
        self._writes = None
        if isinstance(self.storage, LocalFiles) and isinstance(
            self.storage.durability, FilesystemFlush
        ):
            self.storage.durability.close()
            self.storage.durability = FileFlush()
        for pool in pools:
            if pool is not None:
                pool.stop()
        self.query.close()
        self.close()

    def store(self, instance: ReceivedInstance) -> Deferred[int | Dataset | Kept]:
        """File one instance (``IStoreHandler``): all of it in one call to the archive's threads."""
        return self._in_threads(self._file, instance)

    def find(self, query: FindQuery) -> Deferred[PagedMatches]:
        """Search the index (``IFindHandler``): the matches come a page at a time, each read
        in the archive's threads as the peer takes the previous ones (`PagedMatches`)."""
        opening = self._in_query_threads(self.query.pages, query)
        return opening.addCallback(self._paged)

    def _paged(self, pages: FindPages) -> PagedMatches:
        return PagedMatches(pages, self._in_query_threads, self._reactor)

    def instances(self, query: FindQuery) -> Deferred[list[RetrieveItem]]:
        """The archived instances a C-MOVE or C-GET selects (``IRetrieveSource``)."""
        return self._in_query_threads(self._instances, query)

    def _instances(self, query: FindQuery) -> list[RetrieveItem]:
        items = []
        for key, sop_class, sop_instance, syntax in self.query.instances(query):
            local = self.storage.local_path(key)
            fetch = None if local is not None else partial(self._fetching, key)
            items.append(RetrieveItem(local, sop_class, sop_instance, syntax or "", fetch=fetch))
        return items

    def _fetching(self, key: str) -> Deferred[Path]:
        """An instance kept in object storage, brought into a spool file by a query thread."""
        return self._in_query_threads(self._fetch, key)

    def _fetch(self, key: str) -> Path:
        """Blocking: the content kept under ``key`` in a new file of the incoming folder,
        which reconciliation empties should this process die before the file is removed."""
        descriptor, name = tempfile.mkstemp(dir=self.path / INCOMING_FOLDER, suffix=".dcm")
        os.close(descriptor)
        spool = Path(name)
        try:
            self.storage.fetch(key, spool)
        except BaseException:
            spool.unlink(missing_ok=True)
            raise
        return spool

    def may_move(self, query: FindQuery, destination: str) -> bool:
        """Anyone who may associate may retrieve, to any configured destination."""
        return True

    def supported_keys(self, level: str) -> frozenset[str]:
        """The keys the index can match and return at ``level`` (for FF01 answers)."""
        return self.query.supported_keys(level)

    def indexed_instances(self) -> Deferred[int]:
        """How many instances the index holds (``/metrics``), counted in the query threads."""
        return self._in_query_threads(self.query.count_instances)

    def _in_threads(self, function: Callable[..., _T], *args: Any) -> Deferred[_T]:
        """``function`` in the stores' threads, as work in flight that stopping waits for."""
        return self._in_pool(self._pool, function, *args)

    def _in_query_threads(self, function: Callable[..., _T], *args: Any) -> Deferred[_T]:
        """``function`` in the queries' threads, as work in flight that stopping waits for."""
        return self._in_pool(self._query_pool, function, *args)

    def _in_pool(
        self, pool: ThreadPool | None, function: Callable[..., _T], *args: Any
    ) -> Deferred[_T]:
        if pool is None or not self.running:
            raise NotRunning(f"the archive {self.path} is not running")
        return self._in_flight.track(deferToThreadPool(self._reactor, pool, function, *args))

    # -- the blocking work ------------------------------------------------------------------

    @property
    def embedded(self) -> bool:
        """Files and SQLite on this machine, nothing shared with other nodes: the archive
        folder is the whole truth, and reconciliation walks it."""
        return isinstance(self.index, ArchiveIndex) and isinstance(self.storage, LocalFiles)

    def open(self) -> Reconciliation:
        """Create the folder, open the index and reconcile the two after a crash.

        Raises ``ArchiveError`` rather than create an index beside files it
        does not know: reconciliation would delete every one of them.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        self.storage.check()
        if (
            isinstance(self.index, ArchiveIndex)
            and not self.index.path.exists()
            and _holds_any_file(self.path, self._index_files)
        ):
            raise ArchiveError(
                f"{self.path} holds files but no index ({self.index.path.name}); "
                "dicomd will not delete them: move them away or choose another folder"
            )
        self._open_index()
        try:
            return self._reconcile() if self.embedded else self._reconcile_incoming()
        except BaseException:
            self.close()
            raise

    def _open_index(self) -> None:
        """Open the index; a shared one also locks UIDs and paths across the nodes."""
        self.index.open()
        if not isinstance(self.index, ArchiveIndex):
            self._node_locks = self._shared_locks = self.index.locks()

    def close(self) -> None:
        self.index.close()
        node_locks, self._node_locks = self._node_locks, None
        if node_locks is not None:
            node_locks.close()

    def archive(self, instance: ReceivedInstance) -> int | Dataset | Kept:
        """Check, file and index one instance, in the calling thread; the status for the peer.

        Blocking: the same steps as ``store``, for tools and tests, from one
        thread at a time, never while the service runs.  An ``OSError`` from
        the file system propagates (the store service answers A700); a data
        set that cannot be read is answered here, with C000.
        """
        return self._file(instance)

    def _commit(self, write: Write) -> Any:
        """Blocking: the index write of a store, in the transaction of whatever other stores
        wait (`GroupCommit`); outside the service, in a transaction of its own."""
        writes = self._writes
        if writes is None:
            return self.index.apply(write)
        return writes.submit(write)

    def _file(self, instance: ReceivedInstance) -> int | Dataset | Kept:
        """Blocking: check, then under the locks of its UID and path: move, index, answer."""
        checked = self._check(instance)
        if not isinstance(checked, InstanceRecord):
            return checked
        keys = (f"uid:{checked.SOPInstanceUID}", f"path:{checked.path}")
        release = hold_keys(self._locks, self._shared_locks, keys)
        try:
            placed = self._move_in(instance, checked)
            if not isinstance(placed, _Placed):
                return placed
            try:
                self._commit(adding(checked, replace=placed.replace))
            except DuplicateInstance:
                # the unique constraint saw another copy first: this one is the duplicate
                return self._duplicate()
            except BaseException:
                if placed.fresh:
                    self.storage.remove(placed.key)
                raise
            if placed.replaced is not None:
                self.storage.remove(placed.replaced)
        finally:
            release()
        local = self.storage.local_path(placed.key)
        # a file the storage took now lives in the archive; otherwise the received one is left
        return Kept(Status.SUCCESS, local) if local is not None else Status.SUCCESS

    def _check(self, instance: ReceivedInstance) -> InstanceRecord | Dataset:
        """Blocking: the index record of a received instance, or the failure status it earns."""
        try:
            dataset = self._read(instance)
            problem = _mismatch(dataset, instance)
            if problem is not None:
                return problem
            relative = self.layout.path_for(dataset)
            record = record_from_dataset(
                dataset,
                path=relative.as_posix(),
                size=instance.path.stat().st_size,
                calling_ae_title=instance.calling_ae_title,
                transfer_syntax_uid=instance.transfer_syntax or None,
            )
        except Exception as error:
            if isinstance(error, OSError) and error.errno is not None:
                raise  # the disk failed us, not the peer
            # pydicom reports some malformed data as an OSError without errno
            return _status(Status.CANNOT_UNDERSTAND, f"cannot read the data set: {error}")
        if relative.parts[0] in self._index_files:
            return _status(Status.CANNOT_UNDERSTAND, "the layout puts this instance on the index")
        return record

    def _read(self, instance: ReceivedInstance) -> Dataset:
        """The data set of a received file, as far as the index and the layout need it.

        Our own file meta is not parsed again (its end is found by hand), and
        reading stops after the last attribute anyone here asks for: the
        pixel module, overlays and large private groups are never decoded.
        A deflated data set is inflated only as far as that, a piece at a time.
        Usually none of this happens: the attributes came with the instance.
        """
        if instance.attributes is not None:
            return instance.attributes
        syntax = instance.transfer_syntax
        if syntax not in _READABLE:
            return dcmread(instance.path, stop_before_pixels=True)
        implicit, little_endian = _READABLE[syntax]
        with open(instance.path, "rb") as file:
            header = read_header_from(file, os.fstat(file.fileno()).st_size)
            file.seek(header.data_set_offset)
            source: BinaryIO | ForwardReader = file
            if syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
                pieces = inflated_pieces(file, header.data_set_length, _INFLATED_PIECE)
                source = ForwardReader(pieces, str(instance.path))
            needed = self._past_what_is_needed
            return read_dataset(source, implicit, little_endian, stop_when=needed)

    def _duplicate(self) -> Dataset:
        """The answer to a second copy of an archived SOP Instance UID that is not kept."""
        if self.duplicates == "keep-first":
            # B000 is the one warning C-STORE defines (PS3.4 B.2.3); its name says coercion
            return _status(
                Status.COERCION_OF_DATA_ELEMENTS, "duplicate SOP Instance UID; first copy kept"
            )
        return _status(
            Status.DUPLICATE_SOP_INSTANCE, "duplicate SOP Instance UID; already archived"
        )

    def _past_what_is_needed(self, tag: BaseTag, vr: str | None, length: int) -> bool:
        # as plain numbers: a Tag compares through Python code, and this runs for each element
        return int.__gt__(tag, self._last_needed_tag)

    def _move_in(self, instance: ReceivedInstance, record: InstanceRecord) -> _Placed | Dataset:
        """Blocking, under the locks of its UID and path: apply the duplicate policy, move.

        The copy it replaces (``overwrite`` to another layout path) stays
        until the new row is committed.  A copy that is not kept is never
        flushed.
        """
        uid, key = record.SOPInstanceUID, record.path
        indexed = self.index.lookup(uid)
        existing = indexed
        if existing is not None and not self.storage.exists(existing):
            existing = None  # its file is gone: this copy is the only one
        if existing is not None and self.duplicates != "overwrite":
            return self._duplicate()
        if self.index.holder(key) not in (None, uid):
            self.log.warn(
                "archive: {uid} maps to {path}, which holds another instance", uid=uid, path=key
            )
            return _status(Status.CANNOT_UNDERSTAND, "another instance is kept at its layout path")
        self.storage.put(instance.path, key)
        replaced = existing if existing is not None and existing != key else None
        replace = self.duplicates == "overwrite" or indexed is not None
        return _Placed(key, replaced, fresh=existing != key, replace=replace)

    def _reconcile(self) -> Reconciliation:
        """Make the folder and the index agree again after a crash (or a SIGKILL).

        A file in the archive tree was fsync'd before it was renamed there, so
        it is whole: one without a row (its commit was lost) is indexed again.
        Anything there that does not read as an instance is removed.
        """
        incoming_files = _empty_folder(self.path / INCOMING_FOLDER)
        on_disk, folders = _walk(self.path, self._index_files)
        indexed = set(self.index.paths())
        rows_without_file = self.index.remove_paths(indexed - on_disk)
        reindexed = unreadable = 0
        for relative in sorted(on_disk - indexed):
            if self._reindex(relative):
                reindexed += 1
            else:
                unreadable += 1
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.path, relative))
        empty_folders = 0
        for relative in reversed(folders):  # every folder comes after its parent
            try:
                os.rmdir(os.path.join(self.path, relative))
                empty_folders += 1
            except OSError:
                pass  # not empty
        counts = Reconciliation(
            incoming_files, rows_without_file, reindexed, unreadable, empty_folders
        )
        self.log.info(
            "archive {path}: {indexed} instances indexed; removed {incoming} incoming files, "
            "{rows} index rows without a file, {unreadable} unreadable files, "
            "{folders} empty folders; indexed {reindexed} files again",
            path=str(self.path),
            indexed=len(indexed) - rows_without_file + reindexed,
            incoming=counts.incoming_files,
            rows=counts.rows_without_file,
            unreadable=counts.unreadable_files,
            folders=counts.empty_folders,
            reindexed=counts.files_reindexed,
        )
        return counts

    def _reconcile_incoming(self) -> Reconciliation:
        """Clean up after a crash of this node, and of this node only: other nodes may be
        storing into the same index and storage while it starts.

        A store keeps its received file in the incoming folder until its row is
        committed (a file the storage takes, by rename, is kept before it is
        named).  So each incoming file left over names what a store died doing:
        a copy kept under its key with no row for it is removed, under the
        locks that every node's store of that UID and key holds.  Rows are
        committed durably by a shared index, so none is lost to be redone.
        """
        incoming = self.path / INCOMING_FOLDER
        unfinished = 0
        if incoming.is_dir():
            for entry in sorted(incoming.iterdir()):
                if entry.is_file() and self._forget_unfinished_copy(entry):
                    unfinished += 1
        counts = Reconciliation(_empty_folder(incoming), 0, 0, 0, 0, unfinished)
        self.log.info(
            "archive {path}: removed {incoming} incoming files and {unfinished} copies "
            "this node kept without indexing them",
            path=str(self.path),
            incoming=counts.incoming_files,
            unfinished=unfinished,
        )
        return counts

    def _forget_unfinished_copy(self, received: Path) -> bool:
        """Blocking: remove what a dead store kept of ``received`` and never indexed."""
        try:
            dataset = dcmread(received, stop_before_pixels=True)
            uid = text_of(dataset, "SOPInstanceUID")
            key = self.layout.path_for(dataset).as_posix()
        except Exception:  # cut short, or never an instance: nothing was kept of it
            return False
        if not uid:
            return False
        release = hold_keys(self._locks, self._shared_locks, (f"uid:{uid}", f"path:{key}"))
        try:
            if self.index.holder(key) is not None or not self.storage.exists(key):
                return False
            self.storage.remove(key)
            return True
        finally:
            release()

    def _reindex(self, relative: str) -> bool:
        """Index a whole file found without a row; False if it is no instance of ours."""
        path = self.path / relative
        try:
            dataset = dcmread(path, stop_before_pixels=True)
            record = record_from_dataset(
                dataset,
                path=relative,
                size=path.stat().st_size,
                calling_ae_title="",
            )
        except Exception:  # whatever does not parse is not an instance
            return False
        if self.index.lookup(record.SOPInstanceUID) is not None:
            return False  # a stale copy of an instance kept elsewhere
        self.index.add(record)
        return True


def _status(code: int, comment: str) -> Dataset:
    """A status with its Error Comment (an LO: one line, at most 64 characters)."""
    answer = Dataset()
    answer.Status = code
    answer.ErrorComment = error_comment(comment)
    return answer


def _mismatch(dataset: Dataset, instance: ReceivedInstance) -> Dataset | None:
    """The failure status of a data set that lacks its UIDs or contradicts its command.

    Through `text_of`, not pydicom's keyword lookup: this runs for every instance.
    """
    values = {keyword: text_of(dataset, keyword) for keyword in REQUIRED_UIDS}
    for keyword, value in values.items():
        if not value:
            return _status(Status.CANNOT_UNDERSTAND, f"the data set has no {keyword}")
    if values["SOPClassUID"] != instance.sop_class_uid:
        return _status(
            Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            "SOP Class UID of the data set differs from the command's",
        )
    if values["SOPInstanceUID"] != instance.sop_instance_uid:
        return _status(
            Status.INVALID_OBJECT_INSTANCE,
            "SOP Instance UID of the data set differs from the command's",
        )
    return None


def _empty_folder(folder: Path) -> int:
    """Remove everything inside ``folder``; how many files that was."""
    removed = 0
    if not folder.is_dir():
        return removed
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                removed += sum(len(files) for _root, _folders, files in os.walk(entry.path))
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
                removed += 1
    return removed


def _walk(root: Path, skipped_at_root: frozenset[str]) -> tuple[set[str], list[str]]:
    """Every file under ``root`` and every folder, as relative POSIX paths.

    Hidden folders (``.incoming`` and any other) are not the archive's and are
    not entered; symbolic links are listed, never followed.  A folder always
    comes after its parent in the list.
    """
    files: set[str] = set()
    folders: list[str] = []
    pending = [""]
    while pending:
        relative = pending.pop()
        with os.scandir(os.path.join(root, relative)) as entries:
            for entry in entries:
                child = f"{relative}/{entry.name}" if relative else entry.name
                if entry.is_dir(follow_symlinks=False):
                    if not entry.name.startswith("."):
                        folders.append(child)
                        pending.append(child)
                elif relative or entry.name not in skipped_at_root:
                    files.add(child)
    return files, folders


def _holds_any_file(root: Path, skipped_at_root: frozenset[str]) -> bool:
    """Whether anything but our index files lies in the archive's visible folders."""
    files, _folders = _walk(root, skipped_at_root)
    return bool(files)

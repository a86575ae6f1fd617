"""Part 10 files: where the data set starts and what the File Meta says; writing received ones.

Sending a file as it is needs exactly this: the SOP Class and Instance UIDs
and the transfer syntax from the File Meta Information, and the offset of the
data set so that its bytes can be streamed unchanged.  The meta group is
always explicit VR little endian (PS3.10 7.1) and is walked element by
element rather than trusted through its group length, which some writers get
wrong.  The data set itself is never parsed here.

Receiving is the other way round: `IncomingFile` writes our File Meta and
then the data set fragments as they arrive, whether the storage SCP or a
C-GET requester receives them, into a file that `SpareFiles` made ahead of
time so that the reactor thread never waits for the disk to create one.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import functools
import os
import struct
import uuid
import weakref
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Final

from dicomd import filesystem, uids

if TYPE_CHECKING:
    from pydicom import Dataset

INCOMING_FOLDER = ".incoming"
"""The folder under ``storage.path`` where received instances are written as they arrive;
nothing in it survives a restart."""

PREAMBLE_LENGTH = 128
MAGIC = b"DICM"
PREAMBLE = b"\x00" * PREAMBLE_LENGTH + MAGIC
LONG_VRS: Final = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
"""The explicit VRs whose header has two reserved bytes and a 4-byte length (PS3.5 7.1.2)."""
_SHORT_HEADER = struct.Struct("<HH2sH")
_LONG_LENGTH = struct.Struct("<L")
_MAX_META_LENGTH = 1 << 20

_SOP_CLASS = 0x0002
_SOP_INSTANCE = 0x0003
_TRANSFER_SYNTAX = 0x0010


class Part10Error(ValueError):
    """Not a Part 10 file, or one whose File Meta Information is unusable."""


@dataclass(frozen=True, slots=True)
class Part10Header:
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    data_set_offset: int
    data_set_length: int


def read_header(path: str | Path) -> Part10Header:
    """Read the File Meta Information of ``path``; raises Part10Error or OSError."""
    with open(path, "rb") as file:
        return read_header_from(file, os.fstat(file.fileno()).st_size)


def read_header_from(file: BinaryIO, size: int) -> Part10Header:
    """The same, from an open file of ``size`` bytes positioned at its start."""
    start = file.read(PREAMBLE_LENGTH + len(MAGIC))
    if len(start) < PREAMBLE_LENGTH + len(MAGIC) or start[PREAMBLE_LENGTH:] != MAGIC:
        raise Part10Error("no DICM prefix after the 128-byte preamble")
    values: dict[int, bytes] = {}
    offset = len(start)
    while True:
        header = file.read(_SHORT_HEADER.size)
        if len(header) < _SHORT_HEADER.size:
            break  # a file of nothing but meta: the data set is empty
        group, element, vr, length = _SHORT_HEADER.unpack(header)
        if group != 0x0002:
            break
        consumed = _SHORT_HEADER.size
        if vr in LONG_VRS:
            raw = file.read(_LONG_LENGTH.size)
            if len(raw) < _LONG_LENGTH.size:
                raise Part10Error(f"file meta element (0002,{element:04X}) is cut short")
            (length,) = _LONG_LENGTH.unpack(raw)
            consumed += _LONG_LENGTH.size
        if length > _MAX_META_LENGTH or offset + consumed + length > size:
            raise Part10Error(f"file meta element (0002,{element:04X}) claims {length} bytes")
        value = file.read(length)
        values[element] = value
        offset += consumed + length
    for element, name in (
        (_SOP_CLASS, "Media Storage SOP Class UID"),
        (_SOP_INSTANCE, "Media Storage SOP Instance UID"),
        (_TRANSFER_SYNTAX, "Transfer Syntax UID"),
    ):
        if not _uid(values.get(element, b"")):
            raise Part10Error(f"the file meta has no {name}")
    return Part10Header(
        sop_class_uid=_uid(values[_SOP_CLASS]),
        sop_instance_uid=_uid(values[_SOP_INSTANCE]),
        transfer_syntax=_uid(values[_TRANSFER_SYNTAX]),
        data_set_offset=offset,
        data_set_length=size - offset,
    )


def _uid(value: bytes) -> str:
    return value.rstrip(b"\x00 ").decode("ascii", errors="replace")


class SpareFiles:
    """Files made ahead of time, unnamed, in the incoming folder: taking one never waits.

    Creating a file takes the folder's lock and a handle on the file
    system's journal, and both wait while the archive's threads rename and
    fsync: on ext4, milliseconds on the reactor thread for each instance.  So
    a thread (`fill`) opens up to ``keep`` files with no name (``O_TMPFILE``)
    beforehand, the reactor `take`s one without a system call, and a thread
    names it in the folder (`IncomingFile.give_name`) while its data set
    arrives.  An unnamed file leaves nothing behind when the process dies or
    the peer leaves before it is named.  Where the platform or the file
    system cannot make one, `take` answers None and the file is created with
    its name where it is needed, as it was before.

    The descriptors of the spares are closed when the supply is collected.
    """

    def __init__(self, folder: Path, keep: int = 4) -> None:
        self.folder = folder
        self.keep = keep
        self.supported = filesystem.UNNAMED_FILES
        self.filling = False
        """Set by the reactor while a fill it asked for runs; one at a time is enough."""
        self._spares: collections.deque[tuple[int, int]] = collections.deque()
        weakref.finalize(self, _close_spares, self._spares)

    def __len__(self) -> int:
        return len(self._spares)

    @property
    def wanted(self) -> bool:
        """Whether to fill now: half the spares are gone and none is being made.  Filling
        several at once costs one hand-over to a thread for all of them."""
        return self.supported and not self.filling and len(self._spares) <= self.keep // 2

    def take(self) -> UnnamedFile | None:
        """A spare (its descriptor, and another for naming it), or None if none is ready."""
        try:
            return UnnamedFile(*self._spares.popleft())
        except IndexError:
            return None

    def fill(self) -> None:
        """Blocking, in a thread: make spares until there are ``keep``.

        A file system that cannot make unnamed files is not asked again; any
        other error ends this fill quietly, and the file of the next instance
        is created where it is needed, where the error is answered (A700).
        """
        try:
            while len(self._spares) < self.keep:
                self._spares.append(self._make())
        except OSError as error:
            if error.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                self.supported = False

    def _make(self) -> tuple[int, int]:
        try:
            descriptor = filesystem.open_unnamed(self.folder)
        except FileNotFoundError:
            self.folder.mkdir(parents=True, exist_ok=True)
            descriptor = filesystem.open_unnamed(self.folder)
        try:
            return descriptor, os.dup(descriptor)
        except BaseException:
            os.close(descriptor)
            raise


@dataclass(frozen=True, slots=True)
class UnnamedFile:
    """A spare from `SpareFiles`: the descriptor to write through, and a second one that the
    thread naming it uses and closes (so that the first may be closed at any time)."""

    descriptor: int
    naming: int


def _opened(descriptor: int) -> BinaryIO:
    """The file object writing through ``descriptor``, which it closes; closed here if none
    can be made, so that the descriptor never outlives the store."""
    try:
        return open(descriptor, "wb", buffering=0)
    except BaseException:
        os.close(descriptor)
        raise


def _close_spares(spares: collections.deque[tuple[int, int]]) -> None:
    while spares:
        for descriptor in spares.popleft():
            os.close(descriptor)


class IncomingFile:
    """The data sink of one C-STORE: a temporary Part 10 file, written as data arrives.

    A write error (a full disk, most often) is remembered rather than raised:
    the rest of the data set must still be read off the association, and the
    peer gets A700 once it is complete.

    Made from an `UnnamedFile`, it has no name until `give_name` has run (in
    a thread): until then ``path`` names nothing, and whoever removes the
    file waits for that.
    """

    def __init__(self, folder: Path, meta: bytes, unnamed: UnnamedFile | None = None) -> None:
        self.path = folder / f"{uuid.uuid4().hex}.part"
        self.size = 0
        self.error: OSError | None = None
        self.named = unnamed is None
        self._naming = unnamed.naming if unnamed is not None else None
        self._file: BinaryIO | None = None
        try:
            if unnamed is None:
                self._file = self._create(folder)
            else:
                self._file = _opened(unnamed.descriptor)
            self._file.write(PREAMBLE + meta)
        except OSError as error:
            self._fail(error)

    def _create(self, folder: Path) -> BinaryIO:
        # Unbuffered: fragments arrive in large pieces, and a per-file buffer
        # costs more to allocate than the copies it would save.
        try:
            return open(self.path, "wb", buffering=0)
        except FileNotFoundError:
            folder.mkdir(parents=True, exist_ok=True)
            return open(self.path, "wb", buffering=0)

    def give_name(self) -> None:
        """Blocking, in a thread: link the unnamed file at ``path``.

        An error is remembered like a write's.  It runs while the reactor
        writes the data set through the other descriptor.
        """
        naming, self._naming = self._naming, None
        if naming is None:
            return
        try:
            filesystem.give_name(naming, self.path)
            self.named = True
        except OSError as error:
            self.error = self.error or error
        finally:
            os.close(naming)

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
        """The association ended mid-instance: nothing of it may remain (once named)."""
        self._close_quietly()
        self.remove()

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            self.path.unlink()

    def _fail(self, error: OSError) -> None:
        self.error = error
        self._close_quietly()
        if self.named:
            self.remove()

    def _close_quietly(self) -> None:
        """Close after a failure: the first error is the one worth reporting."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None


def file_meta(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_ae_title: str
) -> bytes:
    """Our File Meta Information for a received instance (PS3.10 7.1).

    pydicom encodes it; only the two elements that change with every
    instance, the group length and the Media Storage SOP Instance UID, are
    put in by hand around pydicom's cached encoding of the rest, because
    building a pydicom data set per instance costs more than receiving it.
    """
    before, after = _meta_around_instance_uid(sop_class_uid, transfer_syntax, source_ae_title)
    uid = sop_instance_uid.encode("ascii")
    if len(uid) % 2:
        uid += b"\0"
    instance = _EXPLICIT_SHORT.pack(0x0002, 0x0003, b"UI", len(uid)) + uid
    length = len(before) + len(instance) + len(after)
    return _GROUP_LENGTH.pack(0x0002, 0x0000, b"UL", 4, length) + before + instance + after


_EXPLICIT_SHORT = struct.Struct("<HH2sH")
_GROUP_LENGTH = struct.Struct("<HH2sHL")


@functools.lru_cache(maxsize=256)
def _meta_around_instance_uid(
    sop_class_uid: str, transfer_syntax: str, source_ae_title: str
) -> tuple[bytes, bytes]:
    """pydicom's encoding of the meta elements before and after (0002,0003).

    pydicom is imported here, by the first instance received, and not with
    this module: sending a file as it is reads its File Meta without it.
    """
    from pydicom import Dataset
    from pydicom.dataset import FileMetaDataset

    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = uids.IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = uids.IMPLEMENTATION_VERSION_NAME
    if source_ae_title:
        meta.SourceApplicationEntityTitle = source_ae_title
    before, after = Dataset(), Dataset()
    for element in meta:
        (before if element.tag < 0x00020003 else after).add(element)
    return _encode_explicit_little(before), _encode_explicit_little(after)


def _encode_explicit_little(elements: Dataset) -> bytes:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, elements)
    return buffer.getvalue()


def inflated_pieces(file: BinaryIO, length: int, piece: int) -> Iterator[bytes]:
    """The deflated data set of ``length`` bytes from where ``file`` stands, inflated in
    pieces of at most ``piece`` bytes: never whole, since a stored one may inflate to a GiB.

    Raises OSError when the file or the deflate stream ends before the stream does.
    """
    inflater = zlib.decompressobj(wbits=-15)
    remaining = length
    while not inflater.eof:
        compressed = inflater.unconsumed_tail
        if not compressed and remaining:
            compressed = file.read(min(remaining, _COMPRESSED_READ))
            if not compressed:
                raise OSError(f"the deflated data set ends {remaining} bytes early")
            remaining -= len(compressed)
        inflated = inflater.decompress(compressed, piece)
        if inflated:
            yield inflated
        elif not compressed:
            raise OSError("the deflate stream of the data set is cut short")


_COMPRESSED_READ: Final = 1 << 16

_ITEM: Final = 0xFFFEE000
_SEQUENCE_DELIMITER: Final = 0xFFFEE0DD


def encapsulated_length(stream: BinaryIO, little_endian: bool = True) -> int:
    """Bytes of an encapsulated value, from where ``stream`` stands to its sequence
    delimiter, skipping over each item; ``stream`` is left just past the delimiter.

    That is the length pydicom gives the value once loaded: the items with
    their headers, without the delimiter (PS3.5 A.4).  Raises `Part10Error`
    for a value that holds anything else or does not end.
    """
    header = struct.Struct("<HHL" if little_endian else ">HHL")
    total = 0
    while True:
        chunk = stream.read(header.size)
        if len(chunk) < header.size:
            raise Part10Error("encapsulated value ends without a sequence delimiter")
        group, element, length = header.unpack(chunk)
        tag = group << 16 | element
        if tag == _SEQUENCE_DELIMITER:
            return total
        if tag != _ITEM:
            raise Part10Error(
                f"encapsulated value holds ({group:04X},{element:04X}) where an item belongs"
            )
        stream.seek(length, 1)
        total += header.size + length


class ForwardReader:
    """Bytes that come in pieces (`inflated_pieces`), read as a file that only goes forward.

    pydicom reads a data set's head through ``read``, ``tell`` and ``seek``;
    it seeks back only to the start of the element header it just read, so
    `_HISTORY` bytes are kept behind the position, and what a forward seek
    skips is dropped as it passes.
    """

    def __init__(self, pieces: Iterator[bytes], name: str) -> None:
        self.name = name
        self._pieces = pieces
        self._buffer = bytearray()
        self._start = 0  # the offset of the buffer's first byte
        self._position = 0

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = 0) -> int:
        target = offset if whence == 0 else self._position + offset
        if whence not in (0, 1) or target < self._start:
            raise OSError(f"{self.name}: cannot seek back to {target}")
        self._position = target
        return target

    def read(self, size: int) -> bytes:
        end = self._position + size
        while self._start + len(self._buffer) < end:
            piece = next(self._pieces, None)
            if piece is None:
                break
            self._buffer += piece
            self._forget(before=min(self._position, self._start + len(self._buffer)))
        at = self._position - self._start
        data = bytes(self._buffer[at : at + size])
        self._position += len(data)
        self._forget(before=self._position)
        return data

    def _forget(self, before: int) -> None:
        drop = before - _HISTORY - self._start
        if drop > 0:
            del self._buffer[:drop]
            self._start += drop


_HISTORY: Final = 64

"""Decompressing a stored instance for a peer that accepts none of the compressed syntaxes.

A C-GET requester or a C-MOVE destination that takes only uncompressed
syntaxes (dcmtk's ``getscu`` and ``storescp`` by default) would otherwise get
nothing of what an archive keeps in JPEG, JPEG-LS, JPEG 2000 or RLE.
pydicom's pixel data decoders (with the pylibjpeg plugins) decode such an
instance one frame at a time, reading only that frame's fragments from the
file, and each frame is written at once into a spool file holding the whole
data set in the peer's syntax; that file then goes out like any stored file,
a PDU at a time, and is removed.  Memory holds one frame, whatever the
number of frames.

The data set that goes out is the one pydicom's ``Dataset.decompress`` makes:
Pixel Data native (OB up to 8 bits allocated, OW above) and of even length,
Photometric Interpretation as decoded (a JPEG Baseline ``YBR_FULL_422``
comes out ``RGB``), Planar Configuration 0 for colour, Number of Frames
kept; the SOP Instance UID stays, since the peer asked for that instance.
Beyond pydicom: the Extended Offset Table, which only encapsulated Pixel Data
may have, goes; JPEG Baseline and Extended, lossy whatever the encoder
chose, get Lossy Image Compression 01 when it is missing, since the transfer
syntax no longer tells; and encapsulated pixel data inside sequence items
(an Icon Image Sequence) is decompressed too.

The decoders are C code that holds the interpreter lock while it decodes a
frame (0.7 s for a 2048 x 2048 JPEG 2000 frame), which stalls the reactor
thread as surely as decoding on it would, and they read bytes nobody vouches
for.  So a `Decompressor` runs them in a few processes of its own: the worker
thread that asks waits for the answer without the lock, and a decoder that
crashes takes only its process down.
"""

from __future__ import annotations

import functools
import itertools
import logging
import multiprocessing
import os
import signal
import struct
import tempfile
import threading
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final

from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.pixels import as_pixel_options, decompress, get_decoder
from pydicom.uid import UID, JPEGBaseline8Bit, JPEGExtended12Bit

from dicomd import uids
from dicomd.dimse.datasets import element_header, encode_dataset, encoding
from dicomd.part10 import Part10Error, encapsulated_length

if TYPE_CHECKING:
    import numpy as np

DECOMPRESSED_SYNTAXES: Final = (uids.EXPLICIT_VR_LITTLE_ENDIAN, uids.IMPLICIT_VR_LITTLE_ENDIAN)
"""What an instance is decompressed into, best first: explicit VR keeps private elements'
VRs, and every peer accepts implicit VR."""

_PIXEL_DATA: Final = 0x7FE00010
_ENCAPSULATED_ONLY: Final = (0x7FE00001, 0x7FE00002)  # Extended Offset Table (Lengths)
_UNDEFINED_LENGTH: Final = 0xFFFFFFFF
_MAX_VALUE_LENGTH: Final = 0xFFFFFFFE
"""The longest value a 32-bit length field can give (PS3.5 7.1.1); all ones means undefined."""
_LOSSY_JPEG: Final = frozenset({JPEGBaseline8Bit, JPEGExtended12Bit})
"""The DCT processes of JPEG: lossy however they were tuned (ISO 10918-1)."""
_HEADER: Final = struct.Struct("<HHL")
_LENGTH: Final = struct.Struct("<L")
_PIXEL_DATA_VRS: Final = frozenset({b"OB", b"OW", b"UN"})


class DecompressionError(Exception):
    """An instance that cannot be decompressed; ``str()`` is one line saying why."""


@functools.lru_cache(maxsize=64)
def decodable(transfer_syntax: str) -> bool:
    """Whether ``transfer_syntax`` is an encapsulated one that an installed decoder reads."""
    if not uids.is_encapsulated(transfer_syntax):
        return False
    try:
        return bool(get_decoder(transfer_syntax).is_available)
    except (NotImplementedError, ValueError):  # pydicom knows no decoder for it
        return False


@dataclass(frozen=True, slots=True)
class Decompressed:
    """A spool file holding a decompressed data set (no File Meta), ``length`` bytes long."""

    path: Path
    length: int


class Decompressor:
    """Writes decompressed copies of stored instances into ``spool``, a folder of temporary
    files, with the decoders in ``processes`` processes of its own (none: in the caller's
    thread).

    The processes start when first needed and end with the program; one that
    dies is replaced for the next instance.
    """

    def __init__(self, spool: Path, processes: int = 2) -> None:
        self.spool = spool
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def targets(self, transfer_syntax: str) -> tuple[str, ...]:
        """The syntaxes an instance in ``transfer_syntax`` can be decompressed into, best first;
        none when it is not compressed or no installed decoder reads it."""
        return DECOMPRESSED_SYNTAXES if decodable(transfer_syntax) else ()

    def decompress(self, source: Path, target: str) -> Decompressed:
        """Blocking: the data set of the Part 10 file ``source`` decompressed into ``target``,
        in a new spool file that the caller removes once it is sent.

        Raises `DecompressionError` (or `OSError` for the files themselves).
        """
        self.spool.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix="decompressed-", dir=self.spool)
        os.close(handle)
        destination = Path(name)
        try:
            length = self._write(source, target, destination)
        except BaseException:
            destination.unlink(missing_ok=True)
            raise
        return Decompressed(destination, length)

    def close(self) -> None:
        """Let the decoder processes end once their present frame is written, without waiting
        for them; instances not begun fail.  (They also end on their own soon after the
        program does, however it ends.)"""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def _write(self, source: Path, target: str, destination: Path) -> int:
        if not self.processes:
            return write_decompressed(source, target, destination)
        pool = self._running_pool()
        try:
            return pool.submit(write_decompressed, source, target, destination).result()
        except BrokenProcessPool:
            with self._lock:
                if self._pool is pool:
                    self._pool = None
            pool.shutdown(wait=False)
            raise DecompressionError(
                f"the decoder process ended while decompressing {source.name}"
            ) from None

    def _running_pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    self.processes,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_quiet_decoder_process,
                )
            return self._pool


def _quiet_decoder_process() -> None:
    """A decoder process says nothing of its own: its errors travel back as exceptions, the
    terminal's Ctrl-C is for the daemon, and pydicom's warnings about the files it decodes
    would land raw on the daemon's standard error.  It ends when the daemon is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    warnings.simplefilter("ignore")
    logging.getLogger("pydicom").addHandler(logging.NullHandler())
    logging.getLogger("pydicom").propagate = False
    threading.Thread(target=_end_with_parent, args=(os.getppid(),), daemon=True).start()


def _end_with_parent(parent: int) -> None:
    """End this process once ``parent`` has.  A daemon that stops on a signal ends without
    running its exit handlers (twistd re-raises SIGTERM), so the pool never says goodbye,
    and the process, which holds both ends of its own task queue, would wait forever."""
    while os.getppid() == parent:
        time.sleep(_PARENT_CHECK_SECONDS)
    os._exit(0)


_PARENT_CHECK_SECONDS: Final = 1.0


def write_decompressed(source: Path, target: str, destination: Path) -> int:
    """Blocking: write the data set of the Part 10 file ``source`` decompressed into
    ``target`` to ``destination``; its length in bytes.

    Raises `DecompressionError` with one line for a file that does not
    decode, `OSError` for one that cannot be read or written.
    """
    try:
        with source.open("rb") as file, destination.open("wb") as out:
            return _write_data_set(file, out, target)
    except (DecompressionError, OSError):
        raise
    except Exception as error:  # pydicom and its plugins raise many types for bad streams
        raise DecompressionError(f"cannot decompress {source.name}: {_one_line(error)}") from None


def _write_data_set(file: BinaryIO, out: BinaryIO, target: str) -> int:
    """The head (every element before Pixel Data) once the first frame tells what the
    decoder made, the frames as they are decoded, then whatever followed Pixel Data."""
    head = dcmread(file, stop_before_pixels=True)  # leaves ``file`` at Pixel Data
    syntax = UID(head.file_meta.TransferSyntaxUID)
    value_start = _enter_encapsulated_pixel_data(file)
    if value_start is None:  # no image: its elements are explicit VR little endian already
        _decompress_items(head, syntax)
        out.write(encode_dataset(head, target))
        return out.tell()
    options = as_pixel_options(head, transfer_syntax_uid=syntax, pixel_keyword="PixelData")
    count = int(options["number_of_frames"])
    native = _native_dtype(head)
    frames = get_decoder(syntax).iter_array(file, **options)
    try:
        first, properties = next(frames, (None, None))
        if first is None or properties is None:
            raise DecompressionError("the Pixel Data holds no frame")
        first_frame = _frame_bytes(first, native)
        frame_length = len(first_frame)
        length = frame_length * count
        if length + length % 2 > _MAX_VALUE_LENGTH:
            raise DecompressionError(f"{length} bytes decompressed do not fit in a Pixel Data")
        _describe_decoded(head, syntax, properties, count)
        implicit_vr, little_endian, _ = encoding(target)
        out.write(encode_dataset(head, target))
        vr = "OB" if int(head.BitsAllocated) <= 8 else "OW"
        out.write(element_header(_PIXEL_DATA, vr, length + length % 2, implicit_vr, little_endian))
        out.write(first_frame)
        written = 1
        for array, _ in itertools.islice(frames, count - 1):
            frame = _frame_bytes(array, native)
            if len(frame) != frame_length:
                raise DecompressionError(f"frame {written + 1} decodes to another size")
            out.write(frame)
            written += 1
    finally:
        frames.close()
    if written < count:
        raise DecompressionError(f"the Pixel Data holds {written} frames, not {count}")
    if length % 2:
        out.write(b"\0")
    file.seek(value_start)
    try:
        encapsulated_length(file)  # to what follows Pixel Data
    except Part10Error as error:
        raise DecompressionError(f"the Pixel Data: {error}") from None
    trailer = read_dataset(file, is_implicit_VR=False, is_little_endian=True)
    if len(trailer):
        _decompress_items(trailer, syntax)
        out.write(encode_dataset(trailer, target))
    return out.tell()


def _enter_encapsulated_pixel_data(file: BinaryIO) -> int | None:
    """Read the header of the top-level Pixel Data, which must be encapsulated (undefined
    length); where its value starts, or None when the data set ends without one.

    Every encapsulated syntax is explicit VR, but some writers give Pixel Data
    an implicit VR header (tag and length only); pydicom reads both, and so
    does this.
    """
    header = file.read(_HEADER.size)
    if not header:
        return None
    if len(header) < _HEADER.size:
        raise DecompressionError("the data set ends in the middle of an element header")
    group, element, length = _HEADER.unpack(header)
    if header[4:6] in _PIXEL_DATA_VRS:
        extended = file.read(4)
        length = _LENGTH.unpack(extended)[0] if len(extended) == 4 else 0
    if (group << 16 | element) != _PIXEL_DATA or length != _UNDEFINED_LENGTH:
        raise DecompressionError("the data set has no encapsulated Pixel Data (7FE0,0010)")
    return file.tell()


def _native_dtype(head: Dataset) -> np.dtype[Any]:
    """How the data set says each sample is kept: Bits Allocated and Pixel Representation,
    little endian.  A decoder may hand back a narrower type (a JPEG 2000 stream of 8-bit
    precision in 16 bits allocated); the samples are widened to this."""
    bits = int(head.BitsAllocated)
    if bits % 8 or bits not in (8, 16, 32, 64):
        raise DecompressionError(f"Bits Allocated {bits} is not a whole number of bytes")
    import numpy as np  # here, not at import: `dicomd store`, which never decodes, runs without it

    kind = "i" if int(head.get("PixelRepresentation", 0)) else "u"
    return np.dtype(f"<{kind}{bits // 8}")


def _frame_bytes(frame: np.ndarray[Any, Any], native: np.dtype[Any]) -> memoryview:
    import numpy as np

    if frame.dtype != native:
        frame = frame.astype(native)
    return memoryview(np.ascontiguousarray(frame)).cast("B")


def _describe_decoded(
    head: Dataset, syntax: str, properties: dict[str, str | int], count: int
) -> None:
    """Set the Image Pixel attributes as pydicom's ``Dataset.decompress`` does, drop what only
    encapsulated data may have, keep the record of a lossy compression, and decompress the
    encapsulated pixel data of sequence items."""
    head.PhotometricInterpretation = properties["photometric_interpretation"]
    if int(properties["samples_per_pixel"]) > 1:
        head.PlanarConfiguration = properties["planar_configuration"]
    if "NumberOfFrames" in head or count > 1:
        head.NumberOfFrames = count
    for tag in _ENCAPSULATED_ONLY:
        if tag in head:
            del head[tag]
    if syntax in _LOSSY_JPEG and "LossyImageCompression" not in head:
        head.LossyImageCompression = "01"
        head.LossyImageCompressionMethod = "ISO_10918_1"
    _decompress_items(head, syntax)


def _decompress_items(dataset: Dataset, syntax: str) -> None:
    """Decompress, with pydicom, the encapsulated Pixel Data inside sequence items (an icon:
    small enough to hold whole), which a native syntax could not carry.

    Walking the elements also has pydicom turn each raw one into a DataElement with its
    VR, which is what lets a data set some writer gave implicit VR elements (pydicom reads
    those) be written in explicit VR."""
    for element in dataset:
        if element.VR != "SQ":
            continue
        for item in element.value:
            if "PixelData" in item and item["PixelData"].is_undefined_length:
                item.file_meta = FileMetaDataset()
                item.file_meta.TransferSyntaxUID = syntax
                decompress(item, generate_instance_uid=False)
                del item.file_meta
            _decompress_items(item, syntax)


def _one_line(error: BaseException) -> str:
    """An exception's message on one line, cut short: pydicom lists every plugin's complaint."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."

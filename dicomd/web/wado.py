"""WADO-RS (PS3.18 10.4): instances, metadata, frames, bulk data and rendered images.

Every resource names a study, a series or an instance by its UIDs; the
instances come from the node's retrieve source as they do for a C-GET (one
relational IMAGE-level query carrying the UIDs given), so a plugin source
serves the web as it serves DIMSE.  An instance kept in object storage is
fetched into a spool file first and that file is removed once sent.

Instances go out as ``multipart/related; type="application/dicom"``, each
part a Part 10 file streamed from the disk at the client's pace
(`dicomd.web.streaming`): in the stored transfer syntax unless the client
names another, which a compressed instance is decompressed into when the
node's `Decompressor` can, and otherwise 406.  Metadata is DICOM JSON with a
BulkDataURI for every large value (`dicomd.web.metadata`), frames and bulk
data are read a frame or a value at a time (`dicomd.web.pixels`), and
rendered images are windowed and encoded by `dicomd.web.rendering`.  All
reading, decoding and encoding runs in threads.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pydicom import Dataset
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from dicomd import uids
from dicomd.dimse.transcode import DecompressionError, Decompressor, decodable
from dicomd.interfaces import FindQuery, InvalidIdentifier, RetrieveItem
from dicomd.part10 import PREAMBLE, file_meta
from dicomd.web import metadata as dicom_json
from dicomd.web import rendering
from dicomd.web.accept import MediaRange, accepted, choose
from dicomd.web.context import WebContext, user_of
from dicomd.web.errors import WebError
from dicomd.web.multipart import MultipartWriter
from dicomd.web.pixels import Pixels, PixelsError, decoded_frame, pixels_of, read_frame
from dicomd.web.qido import service_root
from dicomd.web.streaming import ClientGone, PacedBody, open_chunks, send_chunks, send_file

log = Logger()

DICOM: Final = "application/dicom"
OCTET_STREAM: Final = "application/octet-stream"
DICOM_JSON: Final = "application/dicom+json"
ANY_SYNTAX: Final = "*"
MAX_FRAMES: Final = 10_000
"""The most frame numbers one request may list."""

FRAME_MEDIA_TYPES: Final = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}
"""The media type of a frame kept in each compressed syntax (PS3.18 Table 8.7.3-2)."""

QUICK_DECODING: Final = frozenset(
    {
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.81",
        "1.2.840.10008.1.2.5",
    }
)
"""The compressed syntaxes whose frames are decoded here (rendered, or asked for native):
JPEG, JPEG-LS and RLE decode in milliseconds.  The decoders hold the interpreter lock,
so a JPEG 2000 frame (half a second for 1024 x 1024) would stall the reactor thread
as surely as decoding on it; those are refused (406)."""
_FRAME_NUMBER: Final = re.compile(r"[0-9]{1,9}")


def decoded_quickly(transfer_syntax: str) -> bool:
    """Whether frames of ``transfer_syntax`` are decoded here (see `QUICK_DECODING`)."""
    return transfer_syntax in QUICK_DECODING and decodable(transfer_syntax)


def frame_numbers(frame_list: str) -> list[int]:
    """The 1-based frame numbers of a ``/frames/{list}`` path segment (``1,3,5``), in the
    order given; `ValueError` saying why for anything else."""
    if not frame_list:
        raise ValueError("no frame numbers")
    texts = frame_list.split(",")
    if len(texts) > MAX_FRAMES:
        raise ValueError(f"more than {MAX_FRAMES} frame numbers")
    numbers = []
    for text in texts:
        if not _FRAME_NUMBER.fullmatch(text) or int(text) == 0:
            raise ValueError(f"{text[:20]!r} is not a frame number (1, 2, 3...)")
        numbers.append(int(text))
    return numbers


# -- Which instances ---------------------------------------------------------------------------


async def _items(
    request: Any,
    context: WebContext,
    study: str,
    series: str | None = None,
    instance: str | None = None,
) -> list[RetrieveItem]:
    """The instances the UIDs select, as the retrieve source lists them; 404 when none."""
    if context.retrieve_source is None:
        raise WebError(404, "this node keeps no instances")
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE"
    identifier.StudyInstanceUID = study
    if series is not None:
        identifier.SeriesInstanceUID = series
    if instance is not None:
        identifier.SOPInstanceUID = instance
    query = FindQuery(
        identifier=identifier,
        model=uids.STUDY_ROOT_GET,
        level="IMAGE",
        calling_ae_title="",
        called_ae_title=context.ae_title,
        peer_host=user_of(request).host,
        relational=True,
    )
    try:
        items: list[RetrieveItem] = await defer.maybeDeferred(
            context.retrieve_source.instances, query
        )
    except InvalidIdentifier as error:
        raise WebError(400, str(error)) from None
    except defer.CancelledError:  # the client went away
        raise
    except Exception as error:
        log.warn("WADO-RS: the retrieve source failed: {error}", error=str(error))
        raise WebError(503, "the archive cannot list instances now") from None
    if not items:
        raise WebError(
            404, f"no such {'instance' if instance else 'series' if series else 'study'}"
        )
    return items


@asynccontextmanager
async def _local_file(context: WebContext, item: RetrieveItem) -> AsyncIterator[Path]:
    """The Part 10 file of ``item`` on this machine for the time of the block: its own
    path, or a spool file (fetched from object storage, or written from a plugin's data
    set) removed afterwards."""
    spool: Path | None = None
    if item.path is not None:
        path = item.path
    elif item.fetch is not None:
        path = spool = await _removed_if_abandoned(item.fetch(), lambda path: path)
    else:
        writing = _in_thread(context, _write_spool, context.incoming, item)
        path = spool = await _removed_if_abandoned(writing, lambda path: path)
    try:
        yield path
    finally:
        if spool is not None:
            spool.unlink(missing_ok=True)


def _removed_if_abandoned(
    making: defer.Deferred[Any], spool_of: Callable[[Any], Path]
) -> defer.Deferred[Any]:
    """``making``'s result, in a Deferred whose cancelling (the client gone) leaves the
    work to end in its thread and then removes the spool file it made."""
    result: defer.Deferred[Any] = defer.Deferred(lambda _: None)

    def made(outcome: Any) -> None:
        if not result.called:
            result.callback(outcome)
        elif not isinstance(outcome, Failure):
            spool_of(outcome).unlink(missing_ok=True)

    making.addBoth(made)
    return result


def _write_spool(incoming: Path, item: RetrieveItem) -> Path:
    incoming.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=incoming, suffix=".dcm")
    path = Path(name)
    try:
        with open(handle, "wb") as file:
            item.source.save_as(file, enforce_file_format=True)  # type: ignore[union-attr]
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def _in_thread(context: WebContext, function: Any, *args: Any) -> defer.Deferred[Any]:
    reactor = context.reactor
    return deferToThreadPool(reactor, reactor.getThreadPool(), function, *args)


# -- Instances ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Plan:
    """How one instance goes out: as stored, or decompressed into ``target``."""

    item: RetrieveItem
    target: str | None


def _parts_of(media: MediaRange) -> str | None:
    """The type of the parts a range asks for: its own type, or a multipart range's
    ``type`` parameter (None when it names none)."""
    if media.media_type in ("multipart/related", "multipart/*"):
        part = media.parameters.get("type")
        return part.lower() if part else None
    return media.media_type


def _asked_syntax(media: MediaRange) -> str | None:
    """The range's transfer-syntax, None for any (absent or ``*``)."""
    syntax = media.parameters.get("transfer-syntax")
    return None if syntax in (None, ANY_SYNTAX) else syntax


def _wanted_syntax(request: Any) -> str | None:
    """The transfer syntax the client asks instances in: None for any (the stored one)."""
    for media in accepted(request):
        if _parts_of(media) in (None, "*/*", "application/*", DICOM):
            return _asked_syntax(media)
    raise WebError(406, 'instances are sent as multipart/related; type="application/dicom"')


def _plan(items: Sequence[RetrieveItem], wanted: str | None, decompressor: Any) -> list[_Plan]:
    plans = []
    for item in items:
        if wanted is None or wanted == item.transfer_syntax:
            plans.append(_Plan(item, None))
        elif decompressor is not None and wanted in decompressor.targets(item.transfer_syntax):
            plans.append(_Plan(item, wanted))
        else:
            raise WebError(
                406,
                f"instance {item.sop_instance_uid} is kept in {item.transfer_syntax} and cannot"
                f" be sent in {wanted}",
            )
    return plans


async def retrieve(
    request: Any,
    context: WebContext,
    study: str,
    series: str | None = None,
    instance: str | None = None,
) -> None:
    """A study, series or instance as Part 10 files in one ``multipart/related`` answer."""
    wanted = _wanted_syntax(request)
    items = await _items(request, context, study, series, instance)
    decompressor = context.decompressor
    plans = _plan(items, wanted, decompressor)
    writer = MultipartWriter(DICOM, transfer_syntax=wanted)
    request.setHeader(b"Content-Type", writer.content_type.encode("ascii"))
    body = PacedBody(request)
    try:
        for plan in plans:
            async with _local_file(context, plan.item) as path:
                if plan.target is None:
                    await _send_stored(body, context, writer, path)
                else:
                    assert decompressor is not None
                    await _send_decompressed(body, context, writer, plan, path, decompressor)
            await body.write(writer.part_end())
        await body.write(writer.close())
    except ClientGone:
        return
    except (OSError, DecompressionError) as error:
        log.warn("WADO-RS: answer cut short: {error}", error=str(error))
        await _abort(request)
    finally:
        body.close()


async def _send_stored(
    body: PacedBody, context: WebContext, writer: MultipartWriter, path: Path
) -> None:
    chunks = await open_chunks(context.reactor, path)
    await body.write(writer.part_header(chunks.length))
    await send_chunks(body, context.reactor, chunks)


async def _send_decompressed(
    body: PacedBody,
    context: WebContext,
    writer: MultipartWriter,
    plan: _Plan,
    path: Path,
    decompressor: Decompressor,
) -> None:
    assert plan.target is not None
    decompressing = _in_thread(context, decompressor.decompress, path, plan.target)
    decompressed = await _removed_if_abandoned(decompressing, lambda made: made.path)
    try:
        item = plan.item
        meta = PREAMBLE + file_meta(
            item.sop_class_uid, item.sop_instance_uid, plan.target, context.ae_title
        )
        await body.write(writer.part_header(len(meta) + decompressed.length))
        await body.write(meta)
        await send_file(body, context.reactor, decompressed.path, 0, decompressed.length)
    finally:
        decompressed.path.unlink(missing_ok=True)


async def _abort(request: Any) -> None:
    """End a streamed answer that cannot be whole so that the client sees it cut short,
    and wait for the connection to be gone before the route finishes."""
    if request.channel is None:  # gone already
        return
    finished = request.notifyFinish()
    finished.addErrback(lambda _: None)
    request.channel.transport.abortConnection()
    await finished


# -- Metadata ----------------------------------------------------------------------------------


async def metadata(
    request: Any,
    context: WebContext,
    study: str,
    series: str | None = None,
    instance: str | None = None,
) -> None:
    """The instances' attributes as a DICOM JSON array, large values as BulkDataURIs;
    written an instance at a time."""
    choose(request, (DICOM_JSON, "application/json"))
    items = await _items(request, context, study, series, instance)
    root = service_root(request, context)
    request.setHeader(b"Content-Type", DICOM_JSON.encode("ascii"))
    body = PacedBody(request)
    try:
        separator = b"["
        for item in items:
            async with _local_file(context, item) as path:
                encoded = await _in_thread(context, dicom_json.instance_json, path, root)
            await body.write(separator + encoded)
            separator = b","
        await body.write(b"[]" if separator == b"[" else b"]")
    except ClientGone:
        return
    except (OSError, dicom_json.MetadataError) as error:
        log.warn("WADO-RS: metadata cut short: {error}", error=str(error))
        await _abort(request)
    finally:
        body.close()


# -- Frames and bulk data ----------------------------------------------------------------------


async def _one_instance(
    request: Any, context: WebContext, study: str, series: str, instance: str
) -> RetrieveItem:
    return (await _items(request, context, study, series, instance))[0]


@dataclass(frozen=True, slots=True)
class _FrameMedia:
    """How frames go out: their media type and transfer syntax, and whether they are
    decoded first (a compressed instance's frames asked for as native pixels)."""

    part_type: str
    transfer_syntax: str
    decoded: bool = False


def _frame_media(request: Any, pixels: Pixels) -> _FrameMedia:
    """The stored compressed syntax's media type (PS3.18 Table 8.7.3-2) or
    application/octet-stream for native pixels; for a compressed instance asked for as
    application/octet-stream, its bitstreams as they are when any syntax will do
    (``transfer-syntax=*``), else its frames decoded when a decoder reads them."""
    syntax = pixels.transfer_syntax
    if pixels.encapsulated:
        stored = FRAME_MEDIA_TYPES.get(syntax, OCTET_STREAM)
    else:
        stored, syntax = OCTET_STREAM, uids.EXPLICIT_VR_LITTLE_ENDIAN
    for media in accepted(request):
        part = _parts_of(media)
        asked = _asked_syntax(media)
        if part in (None, "*/*", stored.split("/")[0] + "/*", stored) and (
            asked in (None, syntax)
            or (not pixels.encapsulated and asked in uids.UNCOMPRESSED_SYNTAXES)
        ):
            return _FrameMedia(stored, syntax)
        if pixels.encapsulated and part in (OCTET_STREAM, "application/*"):
            if media.parameters.get("transfer-syntax") == ANY_SYNTAX:
                return _FrameMedia(OCTET_STREAM, syntax)
            if asked in (None, uids.EXPLICIT_VR_LITTLE_ENDIAN) and decoded_quickly(syntax):
                return _FrameMedia(OCTET_STREAM, uids.EXPLICIT_VR_LITTLE_ENDIAN, decoded=True)
    raise WebError(406, f"the frames of this instance are {stored}; transfer-syntax={syntax}")


async def frames(
    request: Any, context: WebContext, study: str, series: str, instance: str, frame_list: str
) -> None:
    """Frames of an instance, one part each: as stored, or decoded (see `_frame_media`)."""
    try:
        numbers = frame_numbers(frame_list)
    except ValueError as error:
        raise WebError(400, str(error)) from None
    item = await _one_instance(request, context, study, series, instance)
    async with _local_file(context, item) as path:
        pixels = await _read_pixels(context, path)
        if not pixels.present:
            raise WebError(404, "the instance has no pixel data")
        count = pixels.number_of_frames
        beyond = [number for number in numbers if number > count]
        if beyond:
            raise WebError(404, f"frame {beyond[0]} is not in 1-{count}")
        media = _frame_media(request, pixels)
        read = decoded_frame if media.decoded else read_frame
        writer = MultipartWriter(media.part_type, transfer_syntax=media.transfer_syntax)
        request.setHeader(b"Content-Type", writer.content_type.encode("ascii"))
        body = PacedBody(request)
        try:
            with path.open("rb") as file:
                for number in numbers:
                    frame = await _in_thread(context, read, file, pixels, number)
                    await body.write(writer.part_header(len(frame)) + frame + writer.part_end())
            await body.write(writer.close())
        except ClientGone:
            return
        except (OSError, PixelsError, DecompressionError) as error:
            log.warn("WADO-RS: frames cut short: {error}", error=str(error))
            await _abort(request)
        finally:
            body.close()


async def _read_pixels(context: WebContext, path: Path) -> Pixels:
    try:
        return await _in_thread(context, pixels_of, path)
    except PixelsError as error:
        log.warn("WADO-RS: {path}: {error}", path=path.name, error=str(error))
        raise WebError(404, "the instance cannot be read") from None


async def bulkdata(
    request: Any, context: WebContext, study: str, series: str, instance: str, tag_path: str
) -> None:
    """One value a BulkDataURI names, as ``application/octet-stream`` (or one part of
    ``multipart/related`` when the client asks so)."""
    try:
        path_in_data_set = dicom_json.parse_tag_path(tag_path)
    except ValueError as error:
        raise WebError(400, str(error)) from None
    multipart = _bulk_as_multipart(request)
    item = await _one_instance(request, context, study, series, instance)
    async with _local_file(context, item) as path:
        try:
            where = await _in_thread(context, dicom_json.locate, path, path_in_data_set)
        except dicom_json.MetadataError as error:
            raise WebError(404, str(error)) from None
        writer = MultipartWriter(OCTET_STREAM)
        if multipart:
            request.setHeader(b"Content-Type", writer.content_type.encode("ascii"))
        else:
            request.setHeader(b"Content-Type", OCTET_STREAM.encode("ascii"))
            request.setHeader(b"Content-Length", b"%d" % where.length)
        body = PacedBody(request)
        try:
            if multipart:
                await body.write(writer.part_header(where.length))
            if isinstance(where, dicom_json.InMemory):
                await body.write(where.value)
            else:
                await send_file(body, context.reactor, path, where.offset, where.length)
            if multipart:
                await body.write(writer.part_end() + writer.close())
        except ClientGone:
            return
        except OSError as error:
            log.warn("WADO-RS: bulk data cut short: {error}", error=str(error))
            await _abort(request)
        finally:
            body.close()


def _bulk_as_multipart(request: Any) -> bool:
    """Whether the client takes bulk data as one part of ``multipart/related`` (PS3.18's
    default) rather than a bare ``application/octet-stream``."""
    for media in accepted(request):
        if media.media_type == OCTET_STREAM:
            return False
        if _parts_of(media) in (None, "*/*", "application/*", OCTET_STREAM):
            return media.type == "multipart"
    raise WebError(406, "bulk data is sent as application/octet-stream")


# -- Rendered ----------------------------------------------------------------------------------


def _rendered_media(request: Any) -> str:
    return choose(request, rendering.MEDIA_TYPES)


def _render_options(request: Any, media_type: str, thumbnail: bool) -> rendering.RenderOptions:
    args = request.args

    def one(name: bytes) -> str | None:
        values = args.get(name)
        return values[0].decode("ascii", "replace") if values else None

    try:
        return rendering.RenderOptions.from_query(
            media_type,
            viewport=one(b"viewport"),
            window=one(b"window"),
            quality=one(b"quality"),
            thumbnail=thumbnail,
        )
    except ValueError as error:
        raise WebError(400, str(error)) from None


async def rendered(
    request: Any,
    context: WebContext,
    study: str,
    series: str,
    instance: str,
    frame: int | None,
    thumbnail: bool,
) -> bytes:
    """An instance's frame (the first unless named) windowed and encoded as JPEG or PNG;
    a thumbnail is scaled down to fit 128 pixels unless ``viewport`` says otherwise."""
    media_type = _rendered_media(request)
    options = _render_options(request, media_type, thumbnail)
    if frame is not None and frame < 1:
        raise WebError(400, f"{frame} is not a frame number")
    item = await _one_instance(request, context, study, series, instance)
    async with _local_file(context, item) as path:
        pixels = await _read_pixels(context, path)
        if not pixels.present:
            raise WebError(406, "the instance has no pixel data to render")
        if pixels.encapsulated and not decoded_quickly(pixels.transfer_syntax):
            raise WebError(
                406, f"rendered images are not made of instances in {pixels.transfer_syntax}"
            )
        count = pixels.number_of_frames
        if frame is not None and frame > count:
            raise WebError(404, f"frame {frame} is not in 1-{count}")
        try:
            image = await _in_thread(context, rendering.render, path, pixels, frame or 1, options)
        except rendering.RenderingError as error:
            raise WebError(406, str(error)) from None
    request.setHeader(b"Content-Type", media_type.encode("ascii"))
    return image  # type: ignore[no-any-return]

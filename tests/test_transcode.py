"""Decompressing on the way out: every compressed sample against pydicom's own decoding.

Each compressed file among pydicom's bundled test files and pydicom-data's
that pydicom decodes is decompressed into explicit and implicit VR little
endian; the pixel values must be those of pydicom's ``pixel_array`` of the
original, and the data set the one pydicom's ``Dataset.decompress`` makes.
The decoder is the same (pydicom's plugins), so lossy syntaxes compare
exactly too.  Then: frame by frame in bounded memory, streams that do not
decode, icons, and the send path of C-GET choosing a context.
"""

from __future__ import annotations

import tracemalloc
import warnings
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    RLELossless,
    generate_uid,
)

from dicomd import uids
from dicomd.config import ConfigError, Retrieve, parse_config
from dicomd.dimse.command import CommandField
from dicomd.dimse.datasets import decode_dataset, encode_dataset
from dicomd.dimse.sending import storage_contexts
from dicomd.dimse.transcode import (
    DECOMPRESSED_SYNTAXES,
    DecompressionError,
    Decompressor,
    decodable,
    write_decompressed,
)
from dicomd.part10 import read_header
from tests.support.testdata import part10_test_files
from tests.test_retrieve_service import (
    MR_IMAGE,
    Files,
    get_association,
    retrieve_command,
    run_get,
    study_identifier,
)
from tests.wire import Peer, bare_config

EXPLICIT, IMPLICIT = DECOMPRESSED_SYNTAXES
TARGETS = {"explicit": EXPLICIT, "implicit": IMPLICIT}
SYNTAXES_COVERED = {
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE Lossless
}


def read_quietly(path: Path, **options: object) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about odd values in its test files
        return dcmread(path, **options)  # type: ignore[arg-type]


def pixels(dataset: Dataset) -> np.ndarray | None:
    """pydicom's decoding, or None when pydicom cannot decode it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return dataset.pixel_array
        except Exception:
            return None


def syntax_of(path: Path) -> str:
    return str(read_quietly(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)


@cache
def compressed_samples() -> tuple[Path, ...]:
    """Every compressed Part 10 test file."""
    return tuple(path for path in part10_test_files() if uids.is_encapsulated(syntax_of(path)))


@cache
def decoded_by_pydicom() -> tuple[Path, ...]:
    return tuple(path for path in compressed_samples() if pixels(read_quietly(path)) is not None)


def sample(name: str) -> Path:
    return next(path for path in decoded_by_pydicom() if path.name == name)


def read_spooled(path: Path, target: str) -> Dataset:
    """A decompressed data set as a peer reads it: the bytes in ``target``."""
    dataset = decode_dataset(path.read_bytes(), target)
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = target
    return dataset


def test_the_samples_cover_every_compressed_syntax_we_decode() -> None:
    covered = {syntax_of(path) for path in decoded_by_pydicom()}
    assert covered >= SYNTAXES_COVERED
    assert all(decodable(syntax) for syntax in SYNTAXES_COVERED)


@pytest.mark.parametrize("target", TARGETS.values(), ids=TARGETS.keys())
@pytest.mark.parametrize("path", decoded_by_pydicom(), ids=lambda path: path.name)
def test_decompressed_pixels_and_attributes_are_pydicoms(
    path: Path, target: str, tmp_path: Path
) -> None:
    assert_decompressed_as_pydicom_does(path, target, tmp_path)


@pytest.mark.parametrize("target", TARGETS.values(), ids=TARGETS.keys())
def test_jpeg_lossless_process_14_too(target: str, tmp_path: Path) -> None:
    """No sample is labelled JPEG Lossless (process 14); an SV1 stream is one, relabelled."""
    dataset = read_quietly(sample("SC_rgb_jpeg_gdcm.dcm"))
    assert dataset.file_meta.TransferSyntaxUID == JPEGLosslessSV1
    dataset.file_meta.TransferSyntaxUID = JPEGLossless
    path = tmp_path / "process14.dcm"
    dataset.save_as(path, enforce_file_format=True)
    assert decodable(JPEGLossless)
    assert_decompressed_as_pydicom_does(path, target, tmp_path)


def assert_decompressed_as_pydicom_does(path: Path, target: str, tmp_path: Path) -> None:
    spooled = tmp_path / "spooled"
    length = write_decompressed(path, target, spooled)
    assert length == spooled.stat().st_size
    assert length % 2 == 0
    ours = read_spooled(spooled, target)
    original = read_quietly(path)
    expected = pixels(original)
    assert np.array_equal(ours.pixel_array, expected)
    assert ours.pixel_array.shape == expected.shape
    theirs = read_quietly(path)
    list(theirs)  # pydicom converts each raw element as it is read, as it does ours
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs.decompress(generate_instance_uid=False)
    # as pydicom writes its decompressed data set in the same syntax (implicit VR loses the
    # VRs of private elements, so they read back as raw bytes on both sides)
    assert elements(ours) == elements(decode_dataset(encode_dataset(theirs, target), target))
    element = ours["PixelData"]
    assert not element.is_undefined_length
    assert len(element.value) == len(theirs.PixelData)
    if target == EXPLICIT:
        assert ("OB" if ours.BitsAllocated <= 8 else "OW") == element.VR


def elements(dataset: Dataset) -> dict[int, object]:
    """Tag -> value, without the group lengths (retired: they are not written again)."""
    return {
        element.tag: element.value
        for element in dataset
        if element.tag & 0xFFFF and element.tag != 0x7FE00010
    }


def test_a_colour_jpeg_baseline_comes_out_rgb_and_says_so(tmp_path: Path) -> None:
    path = sample("SC_rgb_jpeg_dcmtk.dcm")
    assert read_quietly(path).PhotometricInterpretation == "YBR_FULL"
    write_decompressed(path, EXPLICIT, tmp_path / "out")
    decoded = read_spooled(tmp_path / "out", EXPLICIT)
    assert (decoded.PhotometricInterpretation, decoded.PlanarConfiguration) == ("RGB", 0)


def test_lossy_jpeg_keeps_the_record_that_it_was_lossy(tmp_path: Path) -> None:
    """Once decompressed the transfer syntax no longer tells: Lossy Image Compression does."""
    path = sample("SC_rgb_jpeg_dcmtk.dcm")
    dataset = read_quietly(path)
    del dataset.LossyImageCompression
    unmarked = tmp_path / "unmarked.dcm"
    dataset.save_as(unmarked, enforce_file_format=True)
    write_decompressed(unmarked, IMPLICIT, tmp_path / "out")
    decoded = read_spooled(tmp_path / "out", IMPLICIT)
    assert decoded.LossyImageCompression == "01"
    assert decoded.LossyImageCompressionMethod == "ISO_10918_1"


# --------------------------------------------------------------------------------------------
# Frame by frame


def multiframe_rle(folder: Path, frames: int, size: int) -> Path:
    """A 16-bit monochrome instance of ``frames`` frames, RLE compressed by pydicom."""
    rng = np.random.default_rng(7)
    volume = rng.integers(0, 4096, (frames, size, size), dtype=np.uint16)
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    dataset.SOPInstanceUID = generate_uid()
    dataset.Rows = dataset.Columns = size
    dataset.NumberOfFrames = frames
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 12, 11
    dataset.PixelRepresentation = 0
    dataset.PixelData = volume.tobytes()
    dataset.compress(RLELossless, encoding_plugin="pydicom")
    path = folder / "multiframe.dcm"
    dataset.save_as(path, enforce_file_format=True)
    return path


def test_a_multiframe_instance_is_decoded_a_frame_at_a_time(tmp_path: Path) -> None:
    frames, size = 48, 256
    frame_length = size * size * 2
    path = multiframe_rle(tmp_path, frames, size)
    tracemalloc.start()
    try:
        write_decompressed(path, EXPLICIT, tmp_path / "out")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    decoded = read_spooled(tmp_path / "out", EXPLICIT)
    assert np.array_equal(decoded.pixel_array, read_quietly(path).pixel_array)
    # 6 MiB decoded; memory holds about five copies of one 128 KiB frame, never the volume
    assert peak < 8 * frame_length, f"peak {peak} bytes for frames of {frame_length}"


def test_fewer_frames_than_number_of_frames_is_an_error_and_leaves_no_spool_file(
    tmp_path: Path,
) -> None:
    path = multiframe_rle(tmp_path, 3, 16)
    dataset = read_quietly(path)
    dataset.NumberOfFrames = 5
    dataset.save_as(path, enforce_file_format=True)
    spool = tmp_path / "spool"
    with pytest.raises(DecompressionError, match="holds 3 frames, not 5"):
        Decompressor(spool, processes=0).decompress(path, EXPLICIT)
    assert list(spool.iterdir()) == []


def test_a_stream_that_does_not_decode_is_one_line(tmp_path: Path) -> None:
    path = next(p for p in decoded_by_pydicom() if syntax_of(p) == JPEGBaseline8Bit)
    dataset = read_quietly(path)
    dataset.PixelData = encapsulate([b"\xff\xd8" + b"\x00" * 300])
    broken = tmp_path / "broken.dcm"
    dataset.save_as(broken, enforce_file_format=True)
    spool = tmp_path / "spool"
    with pytest.raises(DecompressionError) as raised:
        Decompressor(spool, processes=0).decompress(broken, EXPLICIT)
    message = str(raised.value)
    assert message.startswith("cannot decompress broken.dcm: ")
    assert "\n" not in message
    assert list(spool.iterdir()) == []


def test_pixel_data_cut_short_is_an_error(tmp_path: Path) -> None:
    """A file that ends inside its encapsulated Pixel Data (pydicom reads none of it)."""
    path = next(p for p in compressed_samples() if p.name.endswith("_too_short.dcm"))
    with pytest.raises(
        DecompressionError,
        match=r"^the Pixel Data: encapsulated value ends without a sequence delimiter$",
    ):
        write_decompressed(path, EXPLICIT, tmp_path / "out")


def test_an_icon_in_a_sequence_is_decompressed_too(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    icon_pixels = rng.integers(0, 255, (16, 16), dtype=np.uint8)
    icon = Dataset()
    icon.file_meta = FileMetaDataset()
    icon.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    icon.Rows = icon.Columns = 16
    icon.SamplesPerPixel = 1
    icon.PhotometricInterpretation = "MONOCHROME2"
    icon.BitsAllocated = icon.BitsStored = 8
    icon.HighBit = 7
    icon.PixelRepresentation = 0
    icon.PixelData = icon_pixels.tobytes()
    icon.compress(RLELossless, encoding_plugin="pydicom")
    del icon.file_meta
    path = multiframe_rle(tmp_path, 1, 32)
    dataset = read_quietly(path)
    dataset.IconImageSequence = [icon]
    dataset.save_as(path, enforce_file_format=True)
    write_decompressed(path, IMPLICIT, tmp_path / "out")
    [decoded_icon] = read_spooled(tmp_path / "out", IMPLICIT).IconImageSequence
    assert decoded_icon.PixelData == icon_pixels.tobytes()


def test_a_compressed_instance_without_pixel_data_goes_as_explicit_vr_elements(
    tmp_path: Path,
) -> None:
    path = next(p for p in compressed_samples() if p.name == "UN_sequence.dcm")
    assert "PixelData" not in read_quietly(path)
    write_decompressed(path, IMPLICIT, tmp_path / "out")
    assert read_spooled(tmp_path / "out", IMPLICIT) == read_quietly(path)


# --------------------------------------------------------------------------------------------
# The send path


def test_storage_contexts_add_an_uncompressed_context_only_when_decompressing(
    tmp_path: Path,
) -> None:
    ct, mr = "1.2.840.10008.5.1.4.1.1.2", MR_IMAGE
    kinds = [
        (mr, RLELossless),
        (ct, JPEGBaseline8Bit),
        (ct, EXPLICIT),
        (mr, "1.2.840.10008.1.2.4.100"),
    ]
    as_stored = [(c.abstract_syntax, c.transfer_syntaxes) for c in storage_contexts(kinds)]
    assert as_stored == [
        (mr, (RLELossless,)),
        (ct, (JPEGBaseline8Bit,)),
        (ct, (EXPLICIT, IMPLICIT)),
        (mr, ("1.2.840.10008.1.2.4.100",)),
    ]
    decompressing = storage_contexts(kinds, Decompressor(tmp_path, processes=0))
    assert [(c.abstract_syntax, c.transfer_syntaxes) for c in decompressing] == [
        *as_stored,
        (mr, (EXPLICIT, IMPLICIT)),  # CT has one already; MPEG-2 alone would not get one
    ]
    assert [c.context_id for c in decompressing] == [1, 3, 5, 7, 9]


def get_compressed(peer: Peer, path: Path) -> tuple[list, list]:
    """C-GET of ``path`` (an MR instance) by a requester proposing only uncompressed MR."""
    get_association(peer, scp_classes=(MR_IMAGE,))
    peer.send_command(
        1, retrieve_command(CommandField.C_GET_RQ, uids.STUDY_ROOT_GET), study_identifier()
    )
    seen = run_get(peer)
    stores = [(c, d) for c, d in seen if c.command_field == CommandField.C_STORE_RQ]
    responses = [c for c, _ in seen if c.command_field == CommandField.C_GET_RSP]
    return stores, responses


def mr_rle() -> Path:
    return sample("MR_small_RLE.dcm")


def test_c_get_decompresses_for_a_requester_without_the_stored_syntax(tmp_path: Path) -> None:
    config = bare_config(
        storage_path=tmp_path, retrieve=Retrieve(decompress=True, decoder_processes=0)
    )
    peer = Peer(config, plugins=(Files(mr_rle()),))
    stores, responses = get_compressed(peer, mr_rle())
    [(command, data)] = stores
    assert command.affected_sop_instance_uid == read_header(mr_rle()).sop_instance_uid
    received = decode_dataset(data, EXPLICIT)  # explicit VR is preferred over implicit
    received.file_meta = FileMetaDataset()
    received.file_meta.TransferSyntaxUID = EXPLICIT
    assert np.array_equal(received.pixel_array, pixels(read_quietly(mr_rle())))
    assert (responses[-1].status, responses[-1].number_of_completed_suboperations) == (0, 1)
    assert list((tmp_path / ".incoming").iterdir()) == []  # the spool file is gone


def test_c_get_as_stored_counts_the_instance_as_failed(tmp_path: Path) -> None:
    config = bare_config(
        storage_path=tmp_path, retrieve=Retrieve(decompress=False, decoder_processes=0)
    )
    peer = Peer(config, plugins=(Files(mr_rle()),))
    stores, responses = get_compressed(peer, mr_rle())
    assert stores == []
    final = responses[-1]
    assert (final.status, final.number_of_failed_suboperations) == (0xA702, 1)


# --------------------------------------------------------------------------------------------
# The configuration


def test_decompressing_is_the_default_for_c_get_and_every_destination() -> None:
    config = parse_config({"destinations": {"PACS": {"host": "h", "port": 104}}})
    assert config.retrieve == Retrieve(decompress=True, decoder_processes=2)
    assert config.destinations["PACS"].decompress


def test_a_destination_says_for_itself_else_retrieve_transcode_does() -> None:
    config = parse_config(
        {
            "retrieve": {"transcode": "as-stored", "decoder_processes": 0},
            "destinations": {
                "PACS": {"host": "h", "port": 104},
                "VIEWER": {"host": "h", "port": 105, "transcode": "decompress"},
                "OLD": {"host": "h", "port": 106, "transcode": "as-stored"},
            },
        }
    )
    assert config.retrieve == Retrieve(decompress=False, decoder_processes=0)
    decompressing = {name: each.decompress for name, each in config.destinations.items()}
    assert decompressing == {"PACS": False, "VIEWER": True, "OLD": False}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"retrieve": {"transcode": "jpeg"}}, "retrieve.transcode: 'jpeg' is not decompress"),
        ({"retrieve": {"transcode": 1}}, "retrieve.transcode: expected a string"),
        ({"retrieve": {"decoder_processes": 65}}, "retrieve.decoder_processes: must be from 0"),
        ({"retrieve": {"threads": 2}}, "retrieve.threads: unknown key"),
        (
            {"destinations": {"X": {"host": "h", "port": 1, "transcode": "never"}}},
            "destinations.X.transcode: 'never' is not decompress or as-stored",
        ),
    ],
)
def test_bad_transcode_settings_name_the_key(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(settings)
    assert str(raised.value).startswith(message)

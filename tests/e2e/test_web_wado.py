"""WADO-RS against the real daemon: what dcmtk ``storescu`` stored, retrieved by
dicomweb-client and curl.

One daemon per module, with the archive and a ``web:`` listener, holds
pydicom's CT_small, MR_small, a JPEG Baseline image and two multi-frame ones
(native and JPEG).  dicomweb-client retrieves studies, series and instances
(compared byte for byte with the files sent, after their File Meta),
metadata (compared with pydicom's JSON of the file) and frames (compared with
each frame of the file's Pixel Data); curl checks rendered images (decoded by
Pillow), bulk data and the error statuses.  Last, a series of several hundred
MiB goes out through WADO-RS while the daemon's peak resident set is watched.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames
from pydicom.uid import generate_uid

from tests.support.archive import ArchiveView, archive_plugin
from tests.support.daemons import RunningDaemon
from tests.support.dcmtk import run_dcmtk
from tests.support.processes import LOCALHOST
from tests.support.web import curl, dicomweb_url, start_web_daemon

pytestmark = pytest.mark.usefixtures("report_module_daemons")

SENT = {
    "ct": Path(get_testdata_file("CT_small.dcm")),
    "mr": Path(get_testdata_file("MR_small.dcm")),
    "jpeg": Path(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm")),
    "frames": Path(get_testdata_file("emri_small.dcm")),
    "jpeg-frames": Path(get_testdata_file("color3d_jpeg_baseline.dcm")),
}
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
DICOM_PARTS = 'multipart/related; type="application/dicom"'
LARGE_SERIES_FILES = 6
LARGE_FILE_FRAMES = 128  # 512 x 512 x 16 bits: 64 MiB a file, 384 MiB the series
MAX_PEAK_GROWTH_MIB = 64


@pytest.fixture(scope="module")
def web_archive(
    tmp_path_factory: pytest.TempPathFactory, module_daemons: list[RunningDaemon]
) -> RunningDaemon:
    """A daemon with the archive and a web listener, holding every file of `SENT`."""
    folder = tmp_path_factory.mktemp("wado")
    daemon = start_web_daemon(
        folder,
        {
            "plugins": [archive_plugin()],
            "workers": 1,
            "transfer_syntaxes": [JPEG_BASELINE, "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"],
        },
    )
    module_daemons.append(daemon)
    stored = run_dcmtk(
        "storescu", "-xy", "-aec", daemon.ae_title, LOCALHOST, str(daemon.port),
        *map(str, SENT.values()), timeout=120,
    )  # fmt: skip
    assert stored.returncode == 0, stored.stdout + stored.stderr
    return daemon


@pytest.fixture
def client(web_archive: RunningDaemon) -> DICOMwebClient:
    return DICOMwebClient(dicomweb_url(web_archive))


def uids(name: str) -> tuple[str, str, str]:
    ds = dcmread(SENT[name], stop_before_pixels=True)
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


def data_set_bytes(part10: bytes) -> bytes:
    """What follows the File Meta of a Part 10 file (the archive writes its own meta)."""
    meta = dcmread(io.BytesIO(part10), stop_before_pixels=True).file_meta
    return part10[132 + 12 + int(meta.FileMetaInformationGroupLength) :]


def archived_file(daemon: RunningDaemon, name: str) -> Path:
    """The archive's copy of a file sent: what storescu sent of it (dcmtk leaves out Data Set
    Trailing Padding and empties values of spaces alone), behind the archive's File Meta."""
    root = daemon.directory / daemon.config["storage"]["path"]
    return root / ArchiveView(root).indexed()[uids(name)[2]]


def received_data_set(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return data_set_bytes(buffer.getvalue())


def instance_url(daemon: RunningDaemon, name: str) -> str:
    study, series, instance = uids(name)
    return f"{dicomweb_url(daemon)}/studies/{study}/series/{series}/instances/{instance}"


# -- dicomweb-client -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SENT))
def test_each_instance_study_and_series_is_the_file_sent(
    client: DICOMwebClient, web_archive: RunningDaemon, name: str
) -> None:
    study, series, instance = uids(name)

    by_study = client.retrieve_study(study)
    by_series = client.retrieve_series(study, series)
    alone = client.retrieve_instance(study, series, instance)

    # pydicom parsed each part; written again, it matches the file kept written again
    expected = received_data_set(dcmread(archived_file(web_archive, name)))
    for retrieved in ([alone], by_series, by_study):
        [ds] = [ds for ds in retrieved if ds.SOPInstanceUID == instance]
        assert received_data_set(ds) == expected


@pytest.mark.parametrize("level", ["study", "series", "instance"])
@pytest.mark.parametrize("name", list(SENT))
def test_each_part_is_the_data_set_sent_byte_for_byte(
    web_archive: RunningDaemon, name: str, level: str
) -> None:
    study, series, _ = uids(name)
    url = {
        "study": f"{dicomweb_url(web_archive)}/studies/{study}",
        "series": f"{dicomweb_url(web_archive)}/studies/{study}/series/{series}",
        "instance": instance_url(web_archive, name),
    }[level]

    answer = requests.get(url, headers={"Accept": DICOM_PARTS}, timeout=60)

    assert answer.headers["content-type"].startswith(DICOM_PARTS)
    assert archived_file(web_archive, name).read_bytes() in multipart_parts(answer)


def multipart_parts(answer: requests.Response) -> list[bytes]:
    """The contents of the parts of a multipart/related answer."""
    boundary = answer.headers["content-type"].rpartition("boundary=")[2].strip('"')
    delimiter = b"\r\n--" + boundary.encode()
    pieces = (b"\r\n" + answer.content).split(delimiter)
    assert pieces[0] == b"" and pieces[-1] == b"--\r\n"
    return [piece.partition(b"\r\n\r\n")[2] for piece in pieces[1:-1]]


def test_studies_hold_only_their_instances(client: DICOMwebClient) -> None:
    ct_study = uids("ct")[0]
    in_study = {
        dcmread(path, stop_before_pixels=True).SOPInstanceUID
        for path in SENT.values()
        if dcmread(path, stop_before_pixels=True).StudyInstanceUID == ct_study
    }

    retrieved = client.retrieve_study(ct_study)

    assert sorted(ds.SOPInstanceUID for ds in retrieved) == sorted(in_study)


@pytest.mark.parametrize("name", ["ct", "mr", "jpeg-frames"])
def test_metadata_is_the_files_attributes(
    client: DICOMwebClient, web_archive: RunningDaemon, name: str
) -> None:
    study, series, instance = uids(name)

    metadata = client.retrieve_instance_metadata(study, series, instance)

    kept = dcmread(archived_file(web_archive, name))
    expected = kept.to_json_dict(bulk_data_threshold=1 << 30)
    for tag, value in metadata.items():
        if "BulkDataURI" in value:
            assert value["vr"] == expected[tag]["vr"]
            continue
        assert value == expected[tag], tag
    assert set(expected) == set(metadata)
    assert "BulkDataURI" in metadata["7FE00010"]


def test_a_bulk_data_uri_gives_the_value(
    client: DICOMwebClient, web_archive: RunningDaemon
) -> None:
    study, series, instance = uids("ct")
    metadata = client.retrieve_instance_metadata(study, series, instance)
    uri = metadata["00431029"]["BulkDataURI"]
    path = urlsplit(uri).path  # dicomweb-client's Host has no port: the URI names port 80
    url = dicomweb_url(web_archive).removesuffix("/dicom-web") + path

    [value] = client.retrieve_bulkdata(url)
    status, headers, bare = curl(url, "-H", "Accept: application/octet-stream")

    assert value == bare == dcmread(SENT["ct"])[0x00431029].value
    assert (status, headers["content-type"]) == (200, "application/octet-stream")


@pytest.mark.parametrize("name", ["ct", "frames"])
def test_native_frames_are_the_files_frames(client: DICOMwebClient, name: str) -> None:
    study, series, instance = uids(name)
    ds = dcmread(SENT[name])
    count = int(ds.get("NumberOfFrames") or 1)
    length = len(ds.PixelData) // count
    numbers = list(range(count, 0, -1))

    frames = client.retrieve_instance_frames(study, series, instance, numbers)

    assert frames == [ds.PixelData[(n - 1) * length : n * length] for n in numbers]


@pytest.mark.parametrize("name", ["jpeg", "jpeg-frames"])
def test_jpeg_frames_are_the_files_fragments(client: DICOMwebClient, name: str) -> None:
    study, series, instance = uids(name)
    ds = dcmread(SENT[name])
    count = int(ds.get("NumberOfFrames") or 1)
    stored = list(generate_frames(ds.PixelData, number_of_frames=count))
    numbers = [1, count // 2 + 1, count]

    frames = client.retrieve_instance_frames(
        study, series, instance, numbers, media_types=(("image/jpeg", JPEG_BASELINE),)
    )

    assert frames == [stored[n - 1] for n in numbers]


def test_jpeg_frames_asked_for_natively_are_decoded(client: DICOMwebClient) -> None:
    study, series, instance = uids("jpeg-frames")
    decoded = dcmread(SENT["jpeg-frames"]).pixel_array

    frames = client.retrieve_instance_frames(
        study, series, instance, [1, 120], media_types=("application/octet-stream",)
    )
    any_type = client.retrieve_instance_frames(study, series, instance, [1])

    assert frames == [decoded[0].tobytes(), decoded[119].tobytes()]
    assert (
        any_type
        == list(generate_frames(dcmread(SENT["jpeg-frames"]).PixelData, number_of_frames=120))[:1]
    )


# -- curl ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "path", "accept", "kind", "size"),
    [
        ("ct", "/rendered", "image/jpeg", "JPEG", (128, 128)),
        ("ct", "/rendered", "image/png", "PNG", (128, 128)),
        ("mr", "/thumbnail", "image/png", "PNG", (64, 64)),
        ("jpeg", "/rendered", "image/png", "PNG", (100, 100)),
        ("frames", "/frames/7/rendered", "image/jpeg", "JPEG", (64, 64)),
        ("jpeg-frames", "/frames/60/rendered", "image/png", "PNG", (640, 480)),
        ("jpeg-frames", "/thumbnail", "image/jpeg", "JPEG", (128, 96)),
        ("ct", "/rendered?viewport=64,64", "image/png", "PNG", (64, 64)),
    ],
)
def test_rendered_images_decode_at_their_size(
    web_archive: RunningDaemon, name: str, path: str, accept: str, kind: str, size: tuple[int, int]
) -> None:
    status, headers, body = curl(instance_url(web_archive, name) + path, "-H", f"Accept: {accept}")

    assert status == 200, body
    assert headers["content-type"] == accept
    image = Image.open(io.BytesIO(body))
    image.load()
    assert (image.format, image.size) == (kind, size)


def test_a_rendered_colour_image_keeps_its_colours(web_archive: RunningDaemon) -> None:
    _, _, body = curl(instance_url(web_archive, "jpeg") + "/rendered", "-H", "Accept: image/png")

    rendered = np.asarray(Image.open(io.BytesIO(body))).astype(int)
    assert np.abs(rendered - dcmread(SENT["jpeg"]).pixel_array.astype(int)).max() <= 1


@pytest.mark.parametrize(
    ("path", "accept", "status"),
    [
        ("/studies/1.2.3", "*/*", 404),
        ("/studies/1.2.3/series/4/instances/5/metadata", "*/*", 404),
        ("{ct}/frames/2", "*/*", 404),
        ("{frames}/frames/11/rendered", "image/png", 404),
        ("{ct}/frames/0", "*/*", 400),
        ("{ct}/frames/1,x", "*/*", 400),
        ("{ct}/rendered?viewport=0,0", "image/png", 400),
        ("{ct}", 'multipart/related; type="image/jpeg"', 406),
        ("{ct}/metadata", "application/dicom", 406),
        ("{ct}/rendered", "application/pdf", 406),
        (
            "{jpeg}",
            'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.90',
            406,
        ),
    ],
)
def test_error_statuses(web_archive: RunningDaemon, path: str, accept: str, status: int) -> None:
    prefix = {name: instance_url(web_archive, name) for name in SENT}
    url = path.format(**prefix) if path.startswith("{") else dicomweb_url(web_archive) + path

    got, headers, body = curl(url, "-H", f"Accept: {accept}")

    assert got == status, body
    assert headers["content-type"].startswith("text/plain")
    assert body.count(b"\n") == 1


def test_the_log_has_no_traceback(web_archive: RunningDaemon) -> None:
    assert "Traceback" not in web_archive.log_text()


# -- a series of several hundred MiB ---------------------------------------------------------------


def large_series(folder: Path) -> tuple[str, str, int]:
    """Files of `LARGE_FILE_FRAMES` 512 x 512 frames in one series; its UIDs and their size."""
    template = dcmread(SENT["frames"])
    study, series = generate_uid(), generate_uid()
    frames = np.arange(512 * 512, dtype=np.uint16).reshape(512, 512) % 4096
    pixel_data = np.broadcast_to(frames, (LARGE_FILE_FRAMES, 512, 512)).tobytes()
    total = 0
    for number in range(LARGE_SERIES_FILES):
        ds = template.copy()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = number + 1
        ds.Rows = ds.Columns = 512
        ds.NumberOfFrames = LARGE_FILE_FRAMES
        ds.PixelData = pixel_data
        path = folder / f"{number}.dcm"
        ds.save_as(path, enforce_file_format=True)
        total += path.stat().st_size
    return study, series, total


def test_a_large_series_streams_with_flat_memory(
    web_archive: RunningDaemon, tmp_path: Path
) -> None:
    study, series, total = large_series(tmp_path)
    stored = run_dcmtk(
        "storescu", "-aec", web_archive.ae_title, "+sd", LOCALHOST, str(web_archive.port),
        str(tmp_path), timeout=300,
    )  # fmt: skip
    assert stored.returncode == 0, stored.stdout + stored.stderr
    for path in tmp_path.glob("*.dcm"):
        path.unlink()
    url = f"{dicomweb_url(web_archive)}/studies/{study}/series/{series}"
    before = web_archive.rss_kib() / 1024
    web_archive.reset_peak_memory()

    started = time.monotonic()
    received = 0
    with requests.get(
        url,
        headers={"Accept": "multipart/related; type=application/dicom"},
        stream=True,
        timeout=120,
    ) as answer:
        assert answer.status_code == 200
        for chunk in answer.iter_content(1 << 20):
            received += len(chunk)
    elapsed = time.monotonic() - started

    growth = web_archive.peak_memory_mib() - before
    print(
        f"\nWADO-RS series: {total / 2**20:.0f} MiB in {elapsed:.2f} s,"
        f" {total / 2**20 / elapsed:.0f} MiB/s; peak RSS growth {growth:.1f} MiB"
    )
    assert received > total
    assert growth < MAX_PEAK_GROWTH_MIB

"""A 1 GiB instance streams through the daemon to disk in bounded memory.

The instance is written to disk in pieces (a pydicom header, then the pixel
data in chunks) so that the test never holds it either, and dcmtk's storescu
sends it.  The daemon's resident memory is sampled all along the transfer.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path

from pydicom import dcmwrite
from pydicom.uid import generate_uid

from tests.support.archive import archive_of, archive_plugin
from tests.support.daemons import RunningDaemon
from tests.support.datasets import ct_dataset, split_part10
from tests.support.dcmtk import run_dcmtk, run_echoscu
from tests.support.processes import LOCALHOST

ROWS = COLUMNS = 16384
FRAMES = 2
PIXEL_BYTES = ROWS * COLUMNS * 2 * FRAMES  # 1 GiB
CHUNK = 16 * 1024 * 1024
MAX_RSS_RISE_KIB = 64 * 1024
SAMPLE_EDGE = 1024 * 1024


def write_big_instance(path: Path) -> tuple[str, int]:
    """A CT instance of ``FRAMES`` 16384 x 16384 frames; its SOP Instance UID and data set size.

    pydicom writes everything but the pixel data; the Pixel Data element is
    then appended by hand, its header first and its value in chunks of one
    repeated random block.
    """
    dataset = ct_dataset(generate_uid(), generate_uid(), 1, rows=1, columns=1)
    del dataset.PixelData
    dataset.Rows, dataset.Columns, dataset.NumberOfFrames = ROWS, COLUMNS, FRAMES
    dcmwrite(path, dataset, enforce_file_format=True)
    header_size = len(split_part10(path.read_bytes())[1])
    block = random.Random(12).randbytes(CHUNK)
    with path.open("ab") as file:
        file.write(b"\xe0\x7f\x10\x00OW\x00\x00" + PIXEL_BYTES.to_bytes(4, "little"))
        for _ in range(PIXEL_BYTES // CHUNK):
            file.write(block)
    return dataset.SOPInstanceUID, header_size + 12 + PIXEL_BYTES


class RSSSampler:
    """Samples a daemon's resident set size on a thread until stopped."""

    def __init__(self, daemon: RunningDaemon) -> None:
        self.daemon = daemon
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.daemon.rss_kib())
            self._stop.wait(0.02)

    def __enter__(self) -> RSSSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def dataset_edges(path: Path, dataset_offset: int, size: int) -> tuple[bytes, bytes]:
    """The first and last MiB of a file's data set, read without loading the rest."""
    with path.open("rb") as file:
        file.seek(dataset_offset)
        head = file.read(SAMPLE_EDGE)
        file.seek(dataset_offset + size - SAMPLE_EDGE)
        return head, file.read(SAMPLE_EDGE)


def meta_end(path: Path) -> int:
    with path.open("rb") as file:
        start = file.read(132 + 12)
    group_length = int.from_bytes(start[140:144], "little")
    return 132 + 12 + group_length


def test_a_1_gib_instance_is_stored_whole_in_bounded_memory(start_dicomd, tmp_path):
    daemon = start_dicomd(plugins=[archive_plugin()])
    source = tmp_path / "big.dcm"
    archived: Path | None = None
    try:
        uid, dataset_size = write_big_instance(source)
        assert run_echoscu(daemon).returncode == 0  # warm: the first association's imports
        baseline = daemon.rss_kib()

        with RSSSampler(daemon) as sampler:
            sent = run_dcmtk(
                "storescu", "-aec", daemon.ae_title, LOCALHOST, str(daemon.port), str(source),
                timeout=300,
            )  # fmt: skip

        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert len(sampler.samples) > 10
        assert max(sampler.samples) - baseline < MAX_RSS_RISE_KIB, (
            f"RSS rose from {baseline} KiB to {max(sampler.samples)} KiB"
        )
        archived = archive_of(daemon).file_of(uid)
        kept_offset = meta_end(archived)
        assert archived.stat().st_size - kept_offset == dataset_size
        source_offset = source.stat().st_size - dataset_size
        assert dataset_edges(archived, kept_offset, dataset_size) == dataset_edges(
            source, source_offset, dataset_size
        )
    finally:
        source.unlink(missing_ok=True)
        if archived is not None:
            archived.unlink(missing_ok=True)

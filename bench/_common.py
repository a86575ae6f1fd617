"""What every benchmark in ``bench/`` needs: servers on free ports, memory, test data, tables.

A benchmark starts real programs (dicomd under ``twistd``, dcmtk, pynetdicom)
and must leave none of them behind, whatever happens: every child runs in its
own session through a ``Processes`` block, which kills each child's whole
process group (forked workers included) when the block ends, also on Ctrl-C,
SIGTERM (see ``exit_on_sigterm``) or an exception.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
BIN: Final = Path(sys.executable).parent
"""The virtualenv's scripts (``twistd``), beside the interpreter running the benchmark."""

LOCALHOST: Final = "127.0.0.1"
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")

EXPLICIT_VR_LITTLE_ENDIAN: Final = "1.2.840.10008.1.2.1"
CT_IMAGE_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.2"


class ServerUnavailable(Exception):
    """A server that exited or never answered C-ECHO; ``str()`` is one line saying why."""


def exit_on_sigterm() -> None:
    """Turn SIGTERM into ``SystemExit`` so that ``finally`` blocks (and ``Processes``) run."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port nobody listens on right now (the kernel's choice, so races are unlikely)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def dcmtk_environment() -> dict[str, str]:
    """The environment for dcmtk tools: without TCP_NODELAY, dcmtk 3.6.7 waits on delayed ACKs."""
    return {**os.environ, "TCP_NODELAY": "1"}


def dicomd_environment() -> dict[str, str]:
    """The environment for ``twistd dicomd``: the repository root holds ``twisted/plugins/``."""
    paths = [str(REPO_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def dicomd_command(config: Path, log_file: Path) -> list[str]:
    """``twistd`` in the foreground, logging to ``log_file``, with no pid file to collide on."""
    return [
        str(BIN / "twistd"),
        "-n",
        "--pidfile=",
        f"--logfile={log_file}",
        "dicomd",
        "-c",
        str(config),
    ]


def write_dicomd_config(
    path: Path, *, port: int, storage: Path, extra: Mapping[str, object] | None = None
) -> str:
    """Write a dicomd YAML file listening on ``127.0.0.1:port``; returns its text for the record.

    ``extra`` adds or replaces top-level keys (``limits``, ``plugins``, ...).
    It is written as flow-style YAML by hand: JSON is YAML, and the benchmark
    should not depend on PyYAML's output format to describe what it ran.
    """
    settings: dict[str, object] = {
        "ae_title": "DICOMD",
        "listen": f"tcp:{port}:interface={LOCALHOST}",
        "storage": {"path": str(storage)},
        **(extra or {}),
    }
    text = "".join(f"{key}: {json.dumps(value)}\n" for key, value in settings.items())
    path.write_text(text)
    return text


class Processes(contextlib.AbstractContextManager["Processes"]):
    """Children started here are killed, with everything they forked, when the block ends."""

    def __init__(self) -> None:
        self._children: list[subprocess.Popen[bytes]] = []

    def start(
        self, argv: Sequence[str], *, output: IO[bytes] | None = None, **popen: object
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in a new session (own process group); its output goes to ``output``."""
        sink = output if output is not None else subprocess.DEVNULL
        child = subprocess.Popen(  # type: ignore[call-overload]
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT if output is not None else subprocess.DEVNULL,
            start_new_session=True,
            **popen,
        )
        self._children.append(child)
        return child

    def stop(self, child: subprocess.Popen[bytes], grace: float = 5.0) -> None:
        """SIGTERM the child's process group, then SIGKILL whatever is left after ``grace``."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, sig)
            try:
                child.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        # Forked workers may outlive their parent: the group is gone only when they are.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        if child in self._children:
            self._children.remove(child)

    def __exit__(self, *exc_info: object) -> None:
        for child in reversed(list(self._children)):
            self.stop(child, grace=2.0)


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants that exist now (zombies too: their CPU times still count)."""
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        for task in _listdir(Path(f"/proc/{current}/task")):
            with contextlib.suppress(OSError):
                pending += map(
                    int, Path(f"/proc/{current}/task/{task}/children").read_text().split()
                )
    return tree


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _status_kib(pid: int, field: str) -> int:
    """A ``kB`` field of ``/proc/PID/status`` (``VmRSS``, ``VmHWM``); 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid``, of its reaped children and of its live or zombie descendants."""
    total_ticks = 0
    for index, member in enumerate(process_tree(pid)):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # after the command: state is fields[0], so utime..cstime (stat fields 14-17) are 11..14
        utime, stime, cutime, cstime = map(int, fields[11:15])
        total_ticks += utime + stime + (cutime + cstime if index == 0 else 0)
    return total_ticks / CLOCK_TICKS


class PeakMemory(threading.Thread):
    """Samples the resident memory of a process tree every ``interval`` seconds while running.

    ``peak_kib`` is the largest sum of ``VmRSS`` over the tree seen in one
    sample, or the root's own ``VmHWM`` if that is larger (it catches a spike
    between two samples of a single-process server).  Forked workers share
    pages with their parent, so for them the sum overstates what is really used.
    """

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True, name=f"rss-{pid}")
        self.pid = pid
        self.interval = interval
        self.peak_kib = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self._sample()
            self._done.wait(self.interval)

    def _sample(self) -> None:
        tree_kib = sum(_status_kib(member, "VmRSS") for member in process_tree(self.pid))
        self.peak_kib = max(self.peak_kib, tree_kib, _status_kib(self.pid, "VmHWM"))

    def __enter__(self) -> PeakMemory:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self.join()
        self._sample()


def wait_until_ready(
    server: subprocess.Popen[bytes],
    port: int,
    ae_title: str,
    output: Path,
    timeout: float = 30.0,
) -> None:
    """Return once the server answers C-ECHO on ``port``; raise ``ServerUnavailable`` otherwise.

    If the server exits first, the exception carries the last line it wrote
    to ``output`` (dicomd's one-line configuration error, for example).
    """
    deadline = time.monotonic() + timeout
    echo = ["echoscu", "-to", "2", "-aec", ae_title, LOCALHOST, str(port)]
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise ServerUnavailable(last_line(output) or f"exited with status {server.returncode}")
        answered = subprocess.run(
            echo, env=dcmtk_environment(), capture_output=True, timeout=10, check=False
        )
        if answered.returncode == 0:
            return
        time.sleep(0.1)
    raise ServerUnavailable(f"no answer to C-ECHO within {timeout:g} s")


def last_line(path: Path) -> str:
    """The last non-blank line of a text file, or ``""``."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return next((line.strip() for line in reversed(lines) if line.strip()), "")


def count_files(root: Path, pattern: str = "*") -> int:
    """Files matching ``pattern`` under ``root``, leaving out hidden folders (work areas)."""
    return sum(
        1
        for path in root.rglob(pattern)
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts)
    )


# --- test data -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CTSet:
    """A set of uncompressed CT instances (explicit VR little endian), split into ``parts`` folders.

    The split lets ``n`` concurrent senders each take whole folders; one
    sender takes the parent folder and recurses.
    """

    name: str
    count: int
    rows: int
    columns: int
    parts: int = 8
    instances_per_series: int = 50
    series_per_study: int = 2
    studies_per_patient: int = 2

    @property
    def key(self) -> str:
        """Names the cache folder: any parameter that changes the files changes the key."""
        return (
            f"ct-v{_GENERATOR_VERSION}-{self.count}x{self.rows}x{self.columns}-p{self.parts}"
            f"-s{self.instances_per_series}.{self.series_per_study}.{self.studies_per_patient}"
        )


_GENERATOR_VERSION: Final = 1
"""Bump when ``_ct_instance`` changes, so that cached sets are made again."""

_TWELVE_BITS: Final = bytes(value & 0x0F for value in range(256))
"""Masks the high byte of a little-endian 16-bit sample to keep it within BitsStored = 12."""


def cached_ct_set(spec: CTSet) -> Path:
    """The folder of ``spec``'s files, made once and kept under the system temp folder.

    The set is written to a scratch folder and renamed into place, so an
    interrupted run never leaves a half-made set that a later run would trust.
    """
    cache = Path(tempfile.gettempdir()) / "dicomd-bench" / spec.key
    if cache.is_dir():
        if sum(1 for _ in cache.rglob("*.dcm")) == spec.count:
            return cache
        shutil.rmtree(cache)  # something (a temp cleaner) took files away: make it again
    cache.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{spec.key}-", dir=cache.parent))
    try:
        for part in range(spec.parts):
            (scratch / f"part-{part}").mkdir()
        for index in range(spec.count):
            part = index * spec.parts // spec.count
            _ct_instance(spec, index).save_as(
                scratch / f"part-{part}" / f"CT{index:06d}.dcm", enforce_file_format=True
            )
        scratch.rename(cache)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return cache


def part_folders(root: Path) -> list[Path]:
    """The ``part-N`` folders of a cached set, in order."""
    return sorted(root.glob("part-*"), key=lambda path: int(path.name.split("-")[1]))


def set_bytes(root: Path) -> int:
    """Total size of the Part 10 files of a set: what the senders put on the wire, near enough."""
    return sum(path.stat().st_size for path in root.rglob("*.dcm"))


def _ct_instance(spec: CTSet, index: int):  # -> pydicom.FileDataset
    """One CT image with the header a scanner writes: patient, study, series, equipment, plane."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import generate_uid

    series, slice_number = divmod(index, spec.instances_per_series)
    study = series // spec.series_per_study
    patient = study // spec.studies_per_patient

    def uid(*parts: object) -> str:
        return generate_uid(entropy_srcs=[spec.key, *map(str, parts)])

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = uid("instance", index)
    meta.TransferSyntaxUID = EXPLICIT_VR_LITTLE_ENDIAN

    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.InstanceCreationDate = ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240315"
    ds.AcquisitionDate = "20240315"
    ds.InstanceCreationTime = ds.StudyTime = ds.SeriesTime = "101500"
    ds.ContentTime = ds.AcquisitionTime = f"1016{slice_number % 60:02d}"
    ds.AccessionNumber = f"ACC{study:06d}"
    ds.Modality = "CT"
    ds.Manufacturer = "Benchmark Medical Systems"
    ds.InstitutionName = "General Hospital"
    ds.StationName = "CT01"
    ds.ReferringPhysicianName = "Referrer^Robert"
    ds.StudyDescription = "CT CHEST ABDOMEN PELVIS W CONTRAST"
    ds.SeriesDescription = f"AXIAL {1 + series % 2}.0mm"
    ds.ManufacturerModelName = "Benchmark CT 128"
    ds.PatientName = f"Bench^Patient{patient:04d}"
    ds.PatientID = f"PID{patient:06d}"
    ds.PatientBirthDate = f"19{50 + patient % 50:02d}0101"
    ds.PatientSex = "FO"[patient % 2]
    ds.PatientAge = f"{74 - patient % 50:03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = "1.0"
    ds.KVP = "120"
    ds.SoftwareVersions = "1.0"
    ds.ProtocolName = "CAP_CONTRAST"
    ds.ConvolutionKernel = "STANDARD"
    ds.PatientPosition = "FFS"
    ds.XRayTubeCurrent = "250"
    ds.ExposureTime = "500"
    ds.StudyInstanceUID = uid("study", study)
    ds.SeriesInstanceUID = uid("series", series)
    ds.StudyID = str(study + 1)
    ds.SeriesNumber = series % spec.series_per_study + 1
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = slice_number + 1
    ds.ImagePositionPatient = ["-250.0", "-250.0", f"{-slice_number:.1f}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = uid("frame", study)
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = f"{-slice_number:.1f}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = spec.rows
    ds.Columns = spec.columns
    ds.PixelSpacing = [f"{500 / spec.rows:.4f}", f"{500 / spec.columns:.4f}"]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    samples = bytearray(
        random.Random(f"{spec.key}/{index}").randbytes(2 * spec.rows * spec.columns)
    )
    samples[1::2] = samples[1::2].translate(_TWELVE_BITS)
    ds.PixelData = bytes(samples)
    ds["PixelData"].VR = "OW"
    return ds


# --- throughput benchmarks (store.py, scu.py) ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class ThroughputRow:
    """One measured scenario of sending a set; ``problem`` is empty for a valid one.

    ``program`` names what is compared: the receiver in ``store.py``, the
    sender in ``scu.py``.  ``peak_rss_kib`` and ``cpu_seconds`` are of that
    program's processes.
    """

    data: CTSet
    concurrency: int
    program: str
    files: int
    seconds: float = 0.0
    megabytes: float = 0.0
    peak_rss_kib: int = 0
    cpu_seconds: float = 0.0
    spread: float = 0.0
    """(slowest - fastest) / median wall time of the runs behind this row."""
    problem: str = ""

    @property
    def files_per_second(self) -> float:
        return self.files / self.seconds if self.seconds and not self.problem else 0.0

    def summary(self) -> str:
        """One progress line."""
        where = f"{self.data.name} x{self.concurrency} {self.program}"
        if self.problem:
            return f"{where}: {self.problem}"
        return f"{where}: {self.seconds:.2f} s, {self.files_per_second:.0f} files/s"

    def cells(self, *, cpu_first: bool = False) -> list[str]:
        """The table row; the peak RSS and CPU columns swap places with ``cpu_first``."""
        head = [self.data.name, str(self.concurrency), self.program, str(self.files)]
        if self.problem.startswith("unavailable"):
            return [*head, "-", "-", "-", "-", "-", "-", self.problem]
        resources = [f"{self.peak_rss_kib / 1024:.0f}", f"{self.cpu_seconds:.1f}"]
        return [
            *head,
            f"{self.seconds:.2f}",
            f"{self.spread:.0%}",
            f"{self.files / self.seconds:.0f}" if self.seconds else "-",
            f"{self.megabytes / self.seconds:.1f}" if self.seconds else "-",
            *(reversed(resources) if cpu_first else resources),
            f"FAILED: {self.problem}" if self.problem else "ok",
        ]


def typical(runs: Sequence[ThroughputRow]) -> ThroughputRow:
    """The run of median wall time, with the highest peak RSS of all; a failed run, if any.

    ``runs`` must not be empty.
    """
    failed = [row for row in runs if row.problem]
    if failed:
        return failed[0]
    by_time = sorted(runs, key=lambda row: row.seconds)
    median = by_time[len(runs) // 2]
    return dataclasses.replace(
        median,
        peak_rss_kib=max(row.peak_rss_kib for row in runs),
        spread=(by_time[-1].seconds - by_time[0].seconds) / median.seconds,
    )


def add_throughput_arguments(
    parser: argparse.ArgumentParser, names: Sequence[str], what: str, storage_help: str
) -> None:
    """Add ``--quick``, ``--only`` (of ``names``, each a ``what``), ``--repeat``, ``--storage``."""
    parser.add_argument("--quick", action="store_true", help="a few files per set, for development")
    parser.add_argument(
        "--only",
        default=",".join(names),
        type=lambda text: set(filter(None, text.split(","))),
        help=f"comma-separated {what}s to run (default: all of %(default)s)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs of each scenario; the table shows the median (default: %(default)s)",
    )
    parser.add_argument(
        "--storage",
        type=Path,
        default=Path(tempfile.gettempdir()),
        help=storage_help,
    )


def check_throughput_arguments(
    parser: argparse.ArgumentParser,
    arguments: argparse.Namespace,
    names: Sequence[str],
    what: str,
) -> None:
    """Exit through ``parser.error`` if what ``add_throughput_arguments`` added is wrong."""
    if not arguments.storage.is_dir():
        parser.error(f"--storage: {arguments.storage} is not a folder")
    if arguments.repeat < 1:
        parser.error("--repeat: at least 1")
    unknown = arguments.only - set(names)
    if unknown or not arguments.only:
        parser.error(f"--only: unknown {what}(s) {', '.join(sorted(unknown)) or '(none given)'}")


def ct_sets(sets: Sequence[CTSet]) -> Iterator[tuple[CTSet, Path, float]]:
    """Each set with its folder (made if need be) and its size in MB, saying so on stderr."""
    for data in sets:
        started = time.perf_counter()
        root = cached_ct_set(data)
        progress(f"set {data.name}: {data.count} files in {root} ({since(started)})")
        yield data, root, set_bytes(root) / 1e6


def split_batches(root: Path, concurrency: int) -> list[list[Path]]:
    """The folders each association gets: all of them, or every ``concurrency``-th part folder."""
    if concurrency == 1:
        return [[root]]
    parts = part_folders(root)
    return [parts[index::concurrency] for index in range(concurrency)]


@dataclass(frozen=True, slots=True)
class Server:
    """A storage SCP that ``serving`` started: it stores under ``storage``, writes to ``output``."""

    process: subprocess.Popen[bytes]
    port: int
    storage: Path
    output: Path


@contextlib.contextmanager
def serving(
    processes: Processes,
    command: Callable[[int, Path, Path], tuple[list[str], dict[str, str]]],
    ae_title: str,
    work: Path,
) -> Iterator[Server]:
    """A storage SCP in ``work`` that answers C-ECHO, stopped when the block ends.

    ``command(port, storage, work)`` gives its argv and environment.  Raises
    ``ServerUnavailable`` if it exits or does not answer.
    """
    storage = work / "storage"
    storage.mkdir()
    port = free_port()
    argv, env = command(port, storage, work)
    output = work / "server.out"
    with output.open("wb") as sink:
        process = processes.start(argv, output=sink, env=env, cwd=work)
    try:
        wait_until_ready(process, port, ae_title, output)
        yield Server(process, port, storage, output)
    finally:
        processes.stop(process)


def wait_all(
    processes: Processes, children: Sequence[subprocess.Popen[bytes]], timeout: float
) -> list[int | None]:
    """Exit codes of ``children``, all given ``timeout`` seconds from now (None: stopped then)."""
    deadline = time.monotonic() + timeout
    codes: list[int | None] = []
    for child in children:
        try:
            codes.append(child.wait(timeout=max(0.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            processes.stop(child)
            codes.append(None)
    return codes


def throughput_problem(
    codes: Sequence[int | None],
    logs: Sequence[Path],
    stored: int,
    expected: int,
    server: Server,
    *,
    sender: str,
    timeout: float,
    quote_senders: bool = False,
) -> str:
    """Why a scenario does not count, or ``""``; ``sender`` names the senders in the reasons.

    With ``quote_senders``, a short count of stored files adds the senders' last lines.
    """
    problems = []
    for code, log in zip(codes, logs, strict=True):
        if code is None:
            problems.append(f"{sender} killed after {timeout:g} s")
        elif code != 0:
            problems.append(f"{sender} exit {code}: {last_line(log)}")
    if stored != expected:
        said = "; ".join(filter(None, map(last_line, logs))) if quote_senders else ""
        problems.append(f"{stored} of {expected} files stored" + (f" ({said})" if said else ""))
    if server.process.poll() is not None:
        returncode = server.process.returncode
        problems.append(f"receiver exited ({returncode}): {last_line(server.output)}")
    return "; ".join(dict.fromkeys(problems))


def report_throughput(
    rows: Sequence[ThroughputRow], headers: Sequence[str], notes: str, *, cpu_first: bool = False
) -> None:
    """Print the table of ``rows``, ``notes`` under it, then dicomd's files/s against the others."""
    print(format_table(headers, [row.cells(cpu_first=cpu_first) for row in rows]))
    print()
    print(notes)
    print()
    rates = {(row.data.name, row.concurrency, row.program): row.files_per_second for row in rows}
    scenarios = list(dict.fromkeys((row.data.name, row.concurrency) for row in rows))

    def ratio(scenario: tuple[str, int], other: str) -> str:
        ours, theirs = rates.get((*scenario, "dicomd"), 0.0), rates.get((*scenario, other), 0.0)
        return f"{ours / theirs:.2f}" if ours and theirs else "-"

    print("files/s ratios (above 1: dicomd is faster)")
    print(
        format_table(
            ["set", "assocs", "dicomd/dcmtk", "dicomd/pynetdicom"],
            [
                [
                    name,
                    str(count),
                    ratio((name, count), "dcmtk"),
                    ratio((name, count), "pynetdicom"),
                ]
                for name, count in scenarios
            ],
        )
    )


def progress(text: str) -> None:
    """A line on stderr, at once."""
    print(text, file=sys.stderr, flush=True)


def since(started: float) -> str:
    """Seconds since ``time.perf_counter()`` gave ``started``, for a progress line."""
    return f"{time.perf_counter() - started:.1f} s"


# --- reporting -------------------------------------------------------------------------------


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table: text columns left-aligned, numbers right-aligned."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(text) for text in column) for column in zip(headers, *cells, strict=True)]
    numeric = [
        any(_is_number(row[column]) for row in cells)
        and all(_is_number(row[column]) or row[column] in _BLANKS for row in cells)
        for column in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            value.rjust(width) if is_number else value.ljust(width)
            for value, width, is_number in zip(values, widths, numeric, strict=True)
        ).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(headers), rule, *(line(row) for row in cells)])


_BLANKS: Final = frozenset({"", "-"})
"""Cells that say "no value" and do not stop a column of numbers from being right-aligned."""


def _is_number(text: str) -> bool:
    try:
        float(text.removesuffix("%"))
    except ValueError:
        return False
    return True


def machine_summary() -> list[str]:
    """What a reader needs to compare numbers from two machines."""
    import pydicom

    import twisted

    def first_line(argv: Sequence[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        except OSError as error:
            return f"unavailable ({error.strerror})"
        return next(iter((done.stdout + done.stderr).strip().splitlines()), "?")

    try:
        import pynetdicom

        pynetdicom_version = pynetdicom.__version__
    except ImportError:
        pynetdicom_version = "not installed"
    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "?",
    )
    memory_kib = _status_kib_of_meminfo("MemTotal")
    commit = first_line(["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"])
    return [
        f"machine:  {len(os.sched_getaffinity(0))} CPUs usable (nproc), {os.cpu_count()} online,"
        f" {cpu_model}, {memory_kib / 1048576:.1f} GiB RAM, {platform.platform()}",
        f"python:   {platform.python_version()} ({sys.executable})",
        f"dcmtk:    {first_line(['storescu', '--version']).strip('$ ')}",
        f"versions: twisted {twisted.__version__}, pydicom {pydicom.__version__},"
        f" pynetdicom {pynetdicom_version}, dicomd at {commit}",
        f"temp:     {tempfile.gettempdir()}",
    ]


def _status_kib_of_meminfo(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def filesystem_of(path: Path) -> str:
    """The type and device of the file system that holds ``path``, such as ``ext4 /dev/vda``."""
    resolved = path.resolve()
    best = ("?", "?", "")
    for line in Path("/proc/mounts").read_text().splitlines():
        device, mount_point, kind = line.split()[:3]
        if resolved.is_relative_to(mount_point) and len(mount_point) >= len(best[2]):
            best = (kind, device, mount_point)
    return f"{best[0]} {best[1]}"


@contextlib.contextmanager
def scratch_folder(prefix: str, parent: Path | None = None) -> Iterator[Path]:
    """A fresh folder under ``parent`` (default: the system temp folder), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)

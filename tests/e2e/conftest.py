"""Harness for end-to-end tests: the real daemon under ``twistd`` against real peers.

Each test gets its own daemon process on a free port in its own temporary
directory, so tests never share state and a crashed daemon cannot poison the
next test.  The daemon's output is collected by a reader thread and attached to
the report of every failing test, because a failure here is almost always
explained by what the daemon logged.
"""

from __future__ import annotations

import contextlib
import copy
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydicom import Dataset, dcmwrite
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCALHOST = "127.0.0.1"
AE_TITLE = "DICOMD"
STARTUP_DEADLINE = 20.0
SHUTDOWN_GRACE = 5.0
DCMTK_TIMEOUT = 20.0

DEFAULT_CONFIG: dict[str, Any] = {
    "ae_title": AE_TITLE,
    "storage": {"path": "./var/archive"},
    "limits": {"max_pdu_length": 262144, "max_associations": 32},
    "timeouts": {"acse": 30, "dimse": 60, "network_idle": 300, "artim": 30},
    "transfer_syntaxes": [
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.1.2",
        "1.2.840.10008.1.2.1.99",
        "1.2.840.10008.1.2.2",
    ],
    "access": {"check_called_ae": True, "calling_aes": []},
    "plugins": [],
}

_DAEMONS = pytest.StashKey[list["RunningDaemon"]]()


def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``overrides`` applied; nested dicts merge, anything else replaces."""
    merged = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def free_tcp_port() -> int:
    """Ask the kernel for a port nobody listens on (bind to port 0, then release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOCALHOST, 0))
        return probe.getsockname()[1]


def twistd_command() -> list[str]:
    """The ``twistd`` of the running interpreter's environment.

    ``python -m twisted`` is the newer ``twist`` runner, which has no ``-n``,
    ``--logfile`` or ``--pidfile``; the script installed beside the interpreter
    is the real ``twistd``, and ``twisted.scripts.twistd.run`` is its fallback.
    """
    beside_interpreter = Path(sys.executable).parent / "twistd"
    if beside_interpreter.exists():
        return [sys.executable, str(beside_interpreter)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def daemon_command(config_path: Path) -> list[str]:
    return [*twistd_command(), "-n", "--logfile=-", "--pidfile=", "dicomd", "-c", str(config_path)]


def daemon_environment(pythonpath: Sequence[Path] = ()) -> dict[str, str]:
    """Make the checkout importable (and its ``twisted/plugins`` discoverable) from any cwd.

    ``pythonpath`` adds folders, such as one holding a test's own plugin module.
    """
    env = dict(os.environ)
    folders = [str(REPO_ROOT), *map(str, pythonpath), env.get("PYTHONPATH")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, folders))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def write_config(directory: Path, config: Mapping[str, Any], name: str = "dicomd.yaml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    return path


class OutputCollector:
    """Drains a pipe on a thread so the daemon never blocks on a full pipe."""

    def __init__(self, stream: Any) -> None:
        self._chunks: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._drain, args=(stream,), daemon=True)
        self._thread.start()

    def _drain(self, stream: Any) -> None:
        for line in iter(stream.readline, ""):
            with self._lock:
                self._chunks.append(line)
        stream.close()

    def text(self) -> str:
        with self._lock:
            return "".join(self._chunks)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


@dataclass
class RunningDaemon:
    """A daemon process that accepts connections on ``port``."""

    process: subprocess.Popen[str]
    port: int
    ae_title: str
    config: dict[str, Any]
    directory: Path
    output: OutputCollector = field(repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_text(self) -> str:
        """Everything the daemon wrote to stdout and stderr so far."""
        return self.output.text()

    def wait_for_log(self, condition: Callable[[str], bool], timeout: float = 5.0) -> str:
        """Wait until ``condition(log_text)`` holds; log lines may trail the event they record."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_text()
            if condition(text) or time.monotonic() > deadline:
                return text
            time.sleep(0.05)

    def is_running(self) -> bool:
        return self.process.poll() is None

    def rss_kib(self) -> int:
        """Resident set size from ``/proc`` (psutil is not a dependency)."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError(f"no VmRSS in /proc/{self.pid}/status")

    def stop(self) -> None:
        if self.is_running():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(SHUTDOWN_GRACE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(SHUTDOWN_GRACE)
        self.output.join(SHUTDOWN_GRACE)


def log_lines_with(text: str, *words: str) -> list[str]:
    """Log lines that mention every word (case-insensitive): log phrasing is not a contract."""
    return [
        line for line in text.splitlines() if all(word.lower() in line.lower() for word in words)
    ]


def is_listening(port: int) -> bool:
    """Whether some socket listens on ``port``, without connecting to it.

    A probe connection would itself be a peer: the daemon would count it, log it
    and might still hold its slot when a test starts counting associations.
    ``/proc/net/tcp`` shows listening sockets (state ``0A``) without touching them.
    """
    table = Path("/proc/net/tcp")
    if not table.exists():
        try:
            with socket.create_connection((LOCALHOST, port), timeout=0.5):
                return True
        except OSError:
            return False
    for row in table.read_text().splitlines()[1:]:
        local_address, state = row.split()[1], row.split()[3]
        if int(local_address.rsplit(":", 1)[1], 16) == port and state == "0A":
            return True
    return False


def wait_until_listening(
    process: subprocess.Popen[str], port: int, output: OutputCollector
) -> None:
    """Return once ``port`` listens; fail with the daemon's output if it exits first."""
    deadline = time.monotonic() + STARTUP_DEADLINE
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output.join(SHUTDOWN_GRACE)
            pytest.fail(
                f"the daemon exited with status {process.returncode} before listening on {port}:\n"
                f"{output.text()}"
            )
        if is_listening(port):
            return
        time.sleep(0.05)
    pytest.fail(
        f"the daemon did not listen on {port} within {STARTUP_DEADLINE} s:\n{output.text()}"
    )


def start_daemon(
    directory: Path,
    overrides: Mapping[str, Any],
    pythonpath: Sequence[Path] = (),
    command_prefix: Sequence[str] = (),
) -> RunningDaemon:
    """Start the daemon in ``directory``; ``command_prefix`` runs it under another command.

    A prefix must ``exec`` the daemon, so that ``pid`` stays the daemon's own
    (``unshare`` without ``--fork`` and ``sh -c '... exec "$@"'`` both do).
    """
    port = free_tcp_port()
    config = deep_merge(DEFAULT_CONFIG, {"listen": f"tcp:{port}:interface={LOCALHOST}"})
    config = deep_merge(config, overrides)
    config_path = write_config(directory, config)
    process = subprocess.Popen(
        [*command_prefix, *daemon_command(config_path)],
        cwd=directory,
        env=daemon_environment(pythonpath),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )
    output = OutputCollector(process.stdout)
    daemon = RunningDaemon(process, port, config["ae_title"], config, directory, output)
    try:
        wait_until_listening(process, port, output)
    except BaseException:
        daemon.stop()
        raise
    return daemon


@pytest.fixture
def start_dicomd(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., RunningDaemon]]:
    """Factory: ``start_dicomd(limits={"max_associations": 2})`` starts a daemon so configured.

    Two keywords are not configuration: ``pythonpath`` (folders the daemon can
    import plugins from) and ``command_prefix`` (see ``start_daemon``).
    """
    started: list[RunningDaemon] = request.node.stash.setdefault(_DAEMONS, [])

    def start(
        *, pythonpath: Sequence[Path] = (), command_prefix: Sequence[str] = (), **overrides: Any
    ) -> RunningDaemon:
        directory = tmp_path / f"daemon{len(started)}"
        directory.mkdir()
        daemon = start_daemon(directory, overrides, pythonpath, command_prefix)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


@pytest.fixture
def dicomd(start_dicomd: Callable[..., RunningDaemon]) -> RunningDaemon:
    """A daemon with the default configuration."""
    return start_dicomd()


@pytest.fixture(scope="module")
def module_daemons() -> Iterator[list[RunningDaemon]]:
    """The daemons a module starts for all its tests, stopped at its end."""
    daemons: list[RunningDaemon] = []
    yield daemons
    for daemon in daemons:
        daemon.stop()


@pytest.fixture
def report_module_daemons(
    request: pytest.FixtureRequest, module_daemons: list[RunningDaemon]
) -> None:
    """A failing test's report carries the log of the module's daemons, as for other e2e tests.

    A module whose daemons serve all its tests uses it for each of them:
    ``pytestmark = pytest.mark.usefixtures("report_module_daemons")``.
    """
    request.node.stash[_DAEMONS] = module_daemons


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed:
        for daemon in item.stash.get(_DAEMONS, []):
            report.sections.append((f"dicomd log (port {daemon.port})", daemon.log_text()))
    return report


def run_twistd(config_path: Path, timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
    """Run the daemon to completion (for configurations that must stop it)."""
    try:
        return subprocess.run(
            daemon_command(config_path),
            cwd=config_path.parent,
            env=daemon_environment(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as still_running:
        output = b"".join(filter(None, [still_running.stdout, still_running.stderr]))
        pytest.fail(
            f"the daemon was still running after {timeout} s:\n{output.decode(errors='replace')}"
        )


def _is_dcmtk(executable: str) -> bool:
    """pynetdicom installs its own ``echoscu`` app; only dcmtk's says ``$dcmtk:`` in its version."""
    try:
        version = subprocess.run(
            [executable, "--version"], capture_output=True, text=True, timeout=DCMTK_TIMEOUT
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "dcmtk" in version.stdout + version.stderr


@cache
def dcmtk_executable(tool: str) -> str | None:
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        candidate = shutil.which(tool, path=directory)
        if candidate and _is_dcmtk(candidate):
            return candidate
    return None


def run_dcmtk(
    tool: str, *arguments: str, timeout: float = DCMTK_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run a dcmtk tool; dcmtk is a hard requirement of this suite, never a reason to skip."""
    executable = dcmtk_executable(tool)
    if executable is None:
        pytest.fail("dcmtk is not installed; run scripts/test")
    return subprocess.run(
        [executable, *arguments],
        env={**os.environ, "TCP_NODELAY": "1"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",  # dcmdump prints values in their own character sets
        timeout=timeout,
    )


def run_echoscu(daemon: RunningDaemon, *options: str) -> subprocess.CompletedProcess[str]:
    """``echoscu`` to the daemon, calling its own AE title unless ``options`` name another."""
    called = [] if "-aec" in options else ["-aec", daemon.ae_title]
    return run_dcmtk("echoscu", *called, *options, LOCALHOST, str(daemon.port))


@pytest.fixture
def echoscu() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``echoscu(daemon, *options)``: dcmtk's C-ECHO SCU against a running daemon."""
    return run_echoscu


@pytest.fixture
def twistd() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``twistd(config_path)``: run the daemon to completion, for configs that must stop it."""
    return run_twistd


# --------------------------------------------------------------------------
# The storage service seen from outside: Part 10 bytes, the archive folder,
# instances to send and a peer to send them with.

INDEX_FILE_NAMES = frozenset(f"index.sqlite{suffix}" for suffix in ("", "-wal", "-shm", "-journal"))
INCOMING = ".incoming"
_LONG_LENGTH_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)


def split_part10(data: bytes) -> tuple[bytes, bytes]:
    """A Part 10 file's File Meta Information (group 0002) and its data set, as bytes.

    The meta is walked element by element (explicit VR little endian,
    PS3.10 7.1) rather than trusted to its group length, because some files
    written by others have none; where a group length is present it must agree.
    """
    if data[128:132] != b"DICM":
        raise AssertionError("not a Part 10 file: no DICM prefix after the preamble")
    offset = 132
    while offset + 8 <= len(data) and data[offset : offset + 2] == b"\x02\x00":
        vr = data[offset + 4 : offset + 6]
        if vr in _LONG_LENGTH_VRS:
            offset += 12 + int.from_bytes(data[offset + 8 : offset + 12], "little")
        else:
            offset += 8 + int.from_bytes(data[offset + 6 : offset + 8], "little")
    meta = data[132:offset]
    if meta[:6] == b"\x02\x00\x00\x00UL":
        group_length = int.from_bytes(meta[8:12], "little")
        assert group_length == len(meta) - 12, "the meta group length disagrees with the meta"
    return meta, data[offset:]


def dataset_bytes(path: Path) -> bytes:
    """The data set of a Part 10 file, exactly as stored after its File Meta Information."""
    return split_part10(path.read_bytes())[1]


def write_part10(
    path: Path, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, data_set: bytes
) -> Path:
    """A Part 10 file whose meta says what the test wants, before any data set bytes at all."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = transfer_syntax
    with path.open("wb") as file:
        file.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(file, meta, enforce_standard=True)
        file.write(data_set)
    return path


@dataclass(frozen=True)
class ArchiveView:
    """What an archive folder holds, as the store tests judge it: files, index rows, leftovers."""

    root: Path

    def files(self) -> set[str]:
        """Every file but the index and ``.incoming``, as relative POSIX paths."""
        found = set()
        for folder, subfolders, names in os.walk(self.root):
            if Path(folder) == self.root:
                subfolders[:] = [name for name in subfolders if name != INCOMING]
                names = [name for name in names if name not in INDEX_FILE_NAMES]
            found.update((Path(folder) / name).relative_to(self.root).as_posix() for name in names)
        return found

    def incoming(self) -> list[str]:
        """What is left in the folder where instances are written as they arrive."""
        folder = self.root / INCOMING
        return sorted(os.listdir(folder)) if folder.is_dir() else []

    def partial_files(self) -> list[str]:
        """Whatever is left in ``.incoming``, and temporary or hidden files among the instances."""
        leftovers = [f"{INCOMING}/{name}" for name in self.incoming()]
        leftovers += [
            name
            for name in self.files()
            if name.endswith((".part", ".partial"))
            or any(part.startswith(".") for part in name.split("/"))
        ]
        return sorted(leftovers)

    def indexed(self) -> dict[str, str]:
        """SOP Instance UID -> relative path, from the instances table of the index.

        A copy of the index is read, not the index: the test then never holds
        a lock the daemon waits on, and the archive may be seen through
        ``/proc/PID/root``, a symbolic link SQLite would resolve to another
        mount namespace.  Tests read it between stores, when it is quiet.
        """
        if not (self.root / "index.sqlite").exists():
            return {}
        with tempfile.TemporaryDirectory() as folder:
            for name in ("index.sqlite", "index.sqlite-wal"):
                with contextlib.suppress(FileNotFoundError):
                    shutil.copyfile(self.root / name, Path(folder) / name)
            connection = sqlite3.connect(Path(folder) / "index.sqlite")
            try:
                return dict(connection.execute("SELECT SOPInstanceUID, path FROM instances"))
            finally:
                connection.close()

    def file_of(self, sop_instance_uid: str) -> Path:
        relative = self.indexed().get(sop_instance_uid)
        assert relative is not None, f"{sop_instance_uid} is not in the index"
        return self.root / relative

    def assert_consistent(self) -> None:
        """No temporary file anywhere, and the files are exactly the indexed paths."""
        assert self.partial_files() == []
        assert self.files() == set(self.indexed().values())


def archive_of(daemon: RunningDaemon) -> ArchiveView:
    """The archive of a daemon whose ``storage.path`` is relative to its working directory."""
    return ArchiveView(daemon.directory / daemon.config["storage"]["path"])


def archive_plugin(**options: Any) -> dict[str, Any]:
    """The ``plugins:`` entry of the built-in archive."""
    return {"plugin": "archive", "options": options}


def pynetdicom_store(
    daemon: RunningDaemon,
    source: Path | Dataset,
    sop_class_uid: str,
    transfer_syntax: str,
    calling_ae_title: str = "PYNETDICOM",
) -> Dataset:
    """One C-STORE on its own association, proposing exactly one SOP class and transfer syntax.

    A file is streamed (``STORE_SEND_CHUNKED_DATASET``): its data set bytes
    go out exactly as they are on disk, and the command carries the UIDs of
    its File Meta Information.  Returns the response's status data set.
    """
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(sop_class_uid, [transfer_syntax])
    assoc = ae.associate(LOCALHOST, daemon.port, ae_title=daemon.ae_title)
    assert assoc.is_established, f"association for {sop_class_uid} / {transfer_syntax} refused"
    chunked = pynetdicom_config.STORE_SEND_CHUNKED_DATASET
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    try:
        status = assoc.send_c_store(source)
    finally:
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = chunked
        assoc.release()
    assert "Status" in status, f"no C-STORE response for {source}"
    return status


def ct_dataset(
    study_uid: str,
    series_uid: str,
    number: int,
    rows: int = 64,
    columns: int = 64,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> Dataset:
    """A small CT instance with random 16-bit pixels, an odd-length text and a sequence."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.PatientName, ds.PatientID = "Store^Test", "STORE1"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 1, number
    ds.StudyDescription = "Odd"  # odd length: padded on the wire, kept as padded
    ds.ReferencedImageSequence = [Dataset()]
    ds.ReferencedImageSequence[0].ReferencedSOPClassUID = CTImageStorage
    ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = random.Random(number).randbytes(rows * columns * 2)
    return ds


def write_ct_files(
    folder: Path,
    count: int,
    rows: int = 64,
    columns: int = 64,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> list[Path]:
    """``count`` CT instances of one new series, as Part 10 files in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid = generate_uid(), generate_uid()
    paths = []
    for number in range(1, count + 1):
        dataset = ct_dataset(study_uid, series_uid, number, rows, columns, transfer_syntax)
        path = folder / f"{dataset.SOPInstanceUID}.dcm"
        dcmwrite(path, dataset, enforce_file_format=True)
        paths.append(path)
    return paths

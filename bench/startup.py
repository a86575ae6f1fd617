"""Start-up of the ``dicomd`` command: ``--help``, ``echo`` and ``store`` of one file, end to end.

Run by hand from the repository root::

    .venv/bin/python bench/startup.py [--repeat 21] [--baseline REV] [--importtime]

Each command runs ``--repeat`` times, the commands taking turns so that the
machine's drift hits them alike, and the table shows the median wall time
(from starting the process to its exit) and CPU time (user + system) of
each, and the fastest wall time.  ``dicomd echo`` sends one C-ECHO to a
dcmtk ``storescp`` on 127.0.0.1 (``TCP_NODELAY=1``) and releases;
``dicomd store`` sends it pydicom's CT_small.dcm (explicit VR little endian,
which goes as it is).  The
command runs as installed (bytecode cached, see `_baseline`); with
``--baseline REV`` the same commands of commit REV take turns with today's.
For reference: dcmtk's ``echoscu`` and ``storescu`` against the same
``storescp``, and ``python -c pass`` (the interpreter alone).

``--importtime`` then adds where today's ``dicomd echo`` spends its import
time: Python's ``-X importtime`` self times, summed by package (dicomd's by
subpackage), medians of 5 runs.  Those timings include the report's own
overhead, so they are shares, not wall time.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from pydicom.data import get_testdata_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _baseline import command_environment, compile_command, dicomd_argv, exported
from _processes import Processes, exit_on_sigterm, scratch_folder, serving
from _report import format_table, machine_summary, progress
from store import RECEIVERS

from tests.support.dcmtk import dcmtk_environment
from tests.support.processes import LOCALHOST

RECEIVER: Final = next(receiver for receiver in RECEIVERS if receiver.name == "dcmtk")
IMPORTTIME_RUNS: Final = 5
IMPORTTIME_ROWS: Final = 14


@dataclass(frozen=True, slots=True)
class Command:
    """One command line to time, and the environment it runs in."""

    label: str
    argv: list[str]
    environment: dict[str, str]


@dataclass(slots=True)
class Timings:
    wall_ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _parse(argv)
    exit_on_sigterm()
    print("\n".join(machine_summary()))
    print()
    with ExitStack() as stack:
        processes = stack.enter_context(Processes())
        work = stack.enter_context(scratch_folder("dicomd-bench-startup-"))
        receiver = stack.enter_context(
            serving(processes, RECEIVER.command, RECEIVER.ae_title, work)
        )
        echo = ("echo", "-aec", RECEIVER.ae_title, LOCALHOST, str(receiver.port))
        instance = get_testdata_file("CT_small.dcm")
        store = ("store", "--no-progress", *echo[1:], instance)
        versions = [("dicomd", command_environment())]
        if arguments.baseline is not None:
            package_root = stack.enter_context(exported(arguments.baseline))
            versions.insert(0, (f"dicomd@{arguments.baseline}", command_environment(package_root)))
        commands = []
        for name, environment in versions:
            compile_command(*echo, environment=environment)
            compile_command(*store, environment=environment)
            commands.append(Command(f"{name} --help", dicomd_argv("--help"), environment))
            commands.append(Command(f"{name} echo", dicomd_argv(*echo), environment))
            commands.append(Command(f"{name} store", dicomd_argv(*store), environment))
        address = ("-aec", RECEIVER.ae_title, LOCALHOST, str(receiver.port))
        commands.append(Command("echoscu", ["echoscu", *address], dcmtk_environment()))
        commands.append(Command("storescu", ["storescu", *address, instance], dcmtk_environment()))
        commands.append(Command("python -c pass", [sys.executable, "-c", "pass"], {}))
        print(f"receiver: {RECEIVER.options}")
        print(f"{arguments.repeat} runs of each, taking turns")
        print()
        _report(commands, _time(commands, arguments.repeat))
        if arguments.importtime:
            print()
            _report_importtime(dicomd_argv(*echo), command_environment())
    return 0


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=21, help="runs of each (default 21)")
    parser.add_argument(
        "--baseline", metavar="REV", help="also time the commands of commit REV, taking turns"
    )
    parser.add_argument(
        "--importtime",
        action="store_true",
        help="add where dicomd echo's import time goes, by package",
    )
    arguments = parser.parse_args(argv)
    if arguments.repeat < 1:
        parser.error("--repeat: at least 1")
    return arguments


def _time(commands: list[Command], repeat: int) -> dict[str, Timings]:
    timings = {command.label: Timings() for command in commands}
    for turn in range(repeat):
        for command in commands:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            subprocess.run(
                command.argv,
                env=command.environment or None,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=True,
            )
            wall = time.perf_counter() - started
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
            timings[command.label].wall_ms.append(wall * 1000)
            timings[command.label].cpu_ms.append(cpu * 1000)
        progress(f"  turn {turn + 1} of {repeat}")
    return timings


def _report(commands: list[Command], timings: dict[str, Timings]) -> None:
    rows = []
    for command in commands:
        timing = timings[command.label]
        rows.append(
            (
                command.label,
                f"{statistics.median(timing.wall_ms):.1f}",
                f"{min(timing.wall_ms):.1f}",
                f"{statistics.median(timing.cpu_ms):.1f}",
            )
        )
    print(format_table(("command", "wall ms (median)", "fastest", "CPU ms (median)"), rows))


def _report_importtime(argv: list[str], environment: dict[str, str]) -> None:
    """Self import times of ``argv`` by package, medians of `IMPORTTIME_RUNS` runs."""
    runs: list[dict[str, float]] = []
    for _ in range(IMPORTTIME_RUNS):
        result = subprocess.run(
            [argv[0], "-X", "importtime", *argv[1:]],
            env=environment,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=True,
        )
        runs.append(_self_times_by_package(result.stderr))
    packages = {package for run in runs for package in run}
    medians = {
        package: statistics.median(run.get(package, 0.0) for run in runs) for package in packages
    }
    total = statistics.median(sum(run.values()) for run in runs)
    rows = [
        (package, f"{milliseconds:.1f}", f"{100 * milliseconds / total:.0f}%")
        for package, milliseconds in sorted(medians.items(), key=lambda item: -item[1])
    ][:IMPORTTIME_ROWS]
    print(f"dicomd echo, -X importtime self times by package (median of {IMPORTTIME_RUNS} runs):")
    print(format_table(("package", "ms", "share"), [*rows, ("all", f"{total:.1f}", "100%")]))


def _self_times_by_package(report: str) -> dict[str, float]:
    """Milliseconds of self import time per top-level package (dicomd's per subpackage)."""
    totals: dict[str, float] = defaultdict(float)
    for line in report.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _cumulative, name = line.removeprefix("import time:").split("|")
        parts = name.strip().split(".")
        package = ".".join(parts[:2]) if parts[0] == "dicomd" else parts[0]
        totals[package] += int(self_us) / 1000
    return totals


if __name__ == "__main__":
    sys.exit(main())

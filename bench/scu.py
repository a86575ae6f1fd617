"""C-STORE sending throughput: ``dicomd store`` against dcmtk's storescu and pynetdicom's storescu.

Run by hand from the repository root::

    .venv/bin/python bench/scu.py [--quick] [--only dicomd,dcmtk] [--repeat 3] [--storage DIR]
                                  [--sets 34KB,526KB] [--associations 1,8] [--baseline REV]

The receiver is always dcmtk's ``storescp`` as ``bench/store.py`` runs it
(``--fork +B -dhl -pdu 131072``, ``TCP_NODELAY=1``), so the senders are the
only variable.  For each set of CT instances (1000 of 34 KB, 200 of 526 KB),
over 1 and 8 associations, each sender sends the whole set to a fresh
receiver with an empty folder:

- dicomd: one ``python -m dicomd.cli store --no-progress`` process, with
  ``-j 8`` for 8 associations (it shares the files out by size), its
  bytecode kept in ``$TMPDIR/dicomd-bench/pycache`` as an installed
  package has it;
- dcmtk: ``storescu -xf <profile> CT +sd +r`` (one context, CT Image Storage
  in explicit VR little endian), one process, or 8 with one eighth each;
- pynetdicom: ``python -m pynetdicom storescu -cx -xe -r`` (the contexts the
  files need, explicit VR little endian), one process, or 8 likewise;
- with ``--baseline REV``, ``dicomd@REV``: the dicomd sender as it was at
  commit REV (its ``dicomd`` package exported by ``git archive`` and put
  first on the path), for before/after figures taken turn about in one run.

Wall time runs from starting the first sender to the exit of the last.  A
row counts only if every sender exited 0 and the receiver then holds every
instance; otherwise it reads FAILED with the reason.  Each scenario runs
``--repeat`` times, senders taking turns, and the table shows the run of
median time.  Sender CPU is user + system seconds of every sender process
(what the kernel accounts to reaped children); peak RSS is the largest of
any one sender process, sampled every 50 ms.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _arguments import add_throughput_arguments, check_throughput_arguments
from _baseline import command_environment, compile_command, dicomd_argv, exported
from _data import CTSet, count_files, ct_sets, split_batches
from _memory import PeakMemory
from _processes import (
    Processes,
    ServerUnavailable,
    exit_on_sigterm,
    scratch_folder,
    serving,
    wait_all,
)
from _report import filesystem_of, machine_summary, progress, report_throughput
from _stats import ThroughputRow, throughput_problem, typical
from store import FULL_SETS, QUICK_SETS, RECEIVERS, SEND_TIMEOUT, STORESCU_PROFILE

from tests.support.dcmtk import dcmtk_environment
from tests.support.processes import LOCALHOST

CONCURRENCY: Final = (1, 8)
T = TypeVar("T")
RECEIVER: Final = next(receiver for receiver in RECEIVERS if receiver.name == "dcmtk")
"""bench/store.py's dcmtk storescp, exactly as that benchmark runs it."""

HEADERS: Final = (
    "set",
    "assocs",
    "sender",
    "files",
    "wall s",
    "spread",
    "files/s",
    "MB/s",
    "tx CPU s",
    "peak RSS MiB",
    "status",
)

TABLE_NOTES: Final = """\
Each row is the run of median wall time out of --repeat runs, each with a fresh receiver;
spread = (slowest - fastest) / median; one failed run fails the row.  MB = 10^6 bytes of
Part 10 files sent.  tx CPU = user + system CPU seconds of all sender processes together;
peak RSS = the largest resident set of any one sender process (sampled every 50 ms),
highest of the runs."""


@dataclass(frozen=True, slots=True)
class Sender:
    """A storage SCU as a user would run it: ``commands(port, batches, work)`` gives one argv each.

    ``batches`` are the folders each association gets; a sender that runs
    them all from one process returns one argv.
    """

    name: str
    options: str
    commands: Callable[[int, list[list[Path]], Path], list[list[str]]]
    environment: Callable[[], dict[str, str]]


def _dicomd(port: int, batches: list[list[Path]], work: Path) -> list[list[str]]:
    folders = [str(folder) for batch in batches for folder in batch]
    jobs = ["-j", str(len(batches))] if len(batches) > 1 else []
    argv = dicomd_argv("store", "--no-progress", *jobs)
    return [[*argv, "-aec", RECEIVER.ae_title, LOCALHOST, str(port), *folders]]


def _baseline_sender(revision: str, package_root: Path) -> Sender:
    """The dicomd sender of commit ``revision``, its package `exported` to ``package_root``."""
    return Sender(
        f"dicomd@{revision}",
        f"the dicomd sender as at {revision}",
        _dicomd,
        lambda: command_environment(package_root),
    )


def _dcmtk(port: int, batches: list[list[Path]], work: Path) -> list[list[str]]:
    profile = work / "storescu.cfg"
    profile.write_text(STORESCU_PROFILE)
    argv = ["storescu", "-aec", RECEIVER.ae_title, "-xf", str(profile), "CT", "+sd", "+r"]
    return [[*argv, LOCALHOST, str(port), *map(str, batch)] for batch in batches]


def _pynetdicom(port: int, batches: list[list[Path]], work: Path) -> list[list[str]]:
    argv = [sys.executable, "-m", "pynetdicom", "storescu", "-cx", "-xe", "-r"]
    argv += ["-aec", RECEIVER.ae_title, LOCALHOST, str(port)]
    # It takes one path; each batch is one folder (the set, or one of its 8 parts).
    return [[*argv, str(folder)] for (folder,) in batches]


SENDERS: Final = (
    Sender(
        "dicomd",
        "python -m dicomd.cli store --no-progress [-j 8] -aec STORESCP HOST PORT <folders>"
        " (one process; -j 8: 8 associations sharing the files by size; Python's bytecode"
        " cached, as installed)",
        _dicomd,
        command_environment,
    ),
    Sender(
        "dcmtk",
        "storescu -aec STORESCP -xf <profile> CT +sd +r HOST PORT <folders>, TCP_NODELAY=1"
        " (profile: CT Image Storage in explicit VR little endian only)",
        _dcmtk,
        dcmtk_environment,
    ),
    Sender(
        "pynetdicom",
        "python -m pynetdicom storescu -cx -xe -r -aec STORESCP HOST PORT <folder>"
        " (the contexts its files need, explicit VR little endian)",
        _pynetdicom,
        lambda: dict(os.environ),
    ),
)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _parse(argv)
    exit_on_sigterm()
    senders = [sender for sender in SENDERS if sender.name in arguments.only]
    with ExitStack() as baseline:
        if arguments.baseline is not None:
            package_root = baseline.enter_context(exported(arguments.baseline))
            senders.insert(0, _baseline_sender(arguments.baseline, package_root))
        return _run(arguments, senders)


def _run(arguments: argparse.Namespace, senders: list[Sender]) -> int:
    sets = [
        data
        for data in (QUICK_SETS if arguments.quick else FULL_SETS)
        if _set_name(data) in arguments.sets
    ]
    print("\n".join(machine_summary()))
    print()
    for sender in senders:
        print(f"{sender.name + ':':12}{sender.options}")
    print(f"receiver:   {RECEIVER.options}")
    print(f"storage:    under {arguments.storage} ({filesystem_of(arguments.storage)})")
    print()

    for sender in senders:
        if sender.name.startswith("dicomd"):
            compile_command("store", "--help", environment=sender.environment())
    rows: list[ThroughputRow] = []
    with Processes() as processes:
        for data, root, megabytes in ct_sets(sets):
            for concurrency in arguments.associations:
                runs: dict[str, list[ThroughputRow]] = {sender.name: [] for sender in senders}
                for _ in range(arguments.repeat):  # senders take turns, so drift hits all alike
                    for sender in senders:
                        row = _measure(
                            processes, sender, root, data, concurrency, arguments.storage
                        )
                        runs[sender.name].append(dataclasses.replace(row, megabytes=megabytes))
                        progress(f"  {row.summary()}")
                rows += [typical(runs[sender.name]) for sender in senders]
    report_throughput(rows, HEADERS, TABLE_NOTES, cpu_first=True)
    return 1 if any(row.problem for row in rows) else 0


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    names = [sender.name for sender in SENDERS]
    add_throughput_arguments(
        parser,
        names,
        "sender",
        storage_help="folder under which the receiver stores (default: %(default)s)",
    )
    set_names = [_set_name(data) for data in FULL_SETS]
    parser.add_argument(
        "--sets",
        default=",".join(set_names),
        type=_comma_separated(str),
        help="comma-separated sets to send (default: all of %(default)s)",
    )
    parser.add_argument(
        "--associations",
        default=",".join(map(str, CONCURRENCY)),
        type=_comma_separated(int),
        help="comma-separated numbers of associations (default: %(default)s)",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also run the dicomd sender of commit REV, taking turns with the others",
    )
    arguments = parser.parse_args(argv)
    check_throughput_arguments(parser, arguments, names, "sender")
    if not arguments.sets or not set(arguments.sets) <= set(set_names):
        parser.error(f"--sets: one or more of {', '.join(set_names)}")
    if not arguments.associations or not set(arguments.associations) <= set(CONCURRENCY):
        parser.error(f"--associations: one or more of {', '.join(map(str, CONCURRENCY))}")
    return arguments


def _set_name(data: CTSet) -> str:
    """A set as ``--sets`` names it: its name without spaces (``34KB``)."""
    return data.name.replace(" ", "")


def _comma_separated(convert: Callable[[str], T]) -> Callable[[str], list[T]]:
    return lambda text: [convert(word) for word in text.split(",") if word]


def _measure(
    processes: Processes,
    sender: Sender,
    root: Path,
    data: CTSet,
    concurrency: int,
    storage_parent: Path,
) -> ThroughputRow:
    """Start a receiver, send the set over ``concurrency`` associations, check, stop it."""
    row = ThroughputRow(data, concurrency, sender.name, data.count)
    with scratch_folder(f"dicomd-bench-scu-{sender.name}-", storage_parent) as work:
        try:
            with serving(processes, RECEIVER.command, RECEIVER.ae_title, work) as receiver:
                commands = sender.commands(receiver.port, split_batches(root, concurrency), work)
                cpu_before = _children_cpu_seconds()
                started = time.perf_counter()
                codes, logs, peak_kib = _send(processes, work, commands, sender.environment())
                seconds = time.perf_counter() - started
                cpu = _children_cpu_seconds() - cpu_before
                stored = count_files(receiver.storage, RECEIVER.stored)
                problem = throughput_problem(
                    codes,
                    logs,
                    stored,
                    data.count,
                    receiver,
                    sender="sender",
                    timeout=SEND_TIMEOUT,
                    quote_senders=True,
                )
        except ServerUnavailable as error:
            return dataclasses.replace(row, problem=f"unavailable: {error}")
    return dataclasses.replace(
        row, seconds=seconds, cpu_seconds=cpu, peak_rss_kib=peak_kib, problem=problem
    )


def _children_cpu_seconds() -> float:
    """User + system seconds of every child reaped so far (the senders, once they exit)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _send(
    processes: Processes, work: Path, commands: list[list[str]], env: dict[str, str]
) -> tuple[list[int | None], list[Path], int]:
    """Start every command together; exit codes (None: killed at the timeout), logs, peak RSS."""
    logs = [work / f"sender-{index}.log" for index in range(len(commands))]
    started = []
    for argv, log in zip(commands, logs, strict=True):
        with log.open("wb") as sink:
            started.append(processes.start(argv, output=sink, env=env))
    with ExitStack() as sampling:
        samplers = [sampling.enter_context(PeakMemory(sender.pid)) for sender in started]
        codes = wait_all(processes, started, SEND_TIMEOUT)
    return codes, logs, max(sampler.peak_kib for sampler in samplers)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        progress("interrupted: every receiver and sender was stopped")
        sys.exit(130)

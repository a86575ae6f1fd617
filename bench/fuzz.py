"""Mutated DICOM sessions against a real daemon: crashes, hangs and tracebacks, counted.

Run by hand from the repository root::

    .venv/bin/python bench/fuzz.py [--cases 20000] [--seed 1] [--parallel 16]

One daemon (the archive, short timeouts) runs for the whole run.  Each case
takes a real session (echo, store, find, release, abort) from
``tests/support/fuzzing.py``, mutates its bytes, sends them on a connection of
its own in random pieces, closes its side and reads until the daemon closes.
A case that the daemon has not closed within ``--hang-after`` seconds is a
hang; a daemon that exits is a crash; a ``Traceback`` or ``Unhandled`` line in
its log is a traceback.  All three must stay at zero.  Loopback only.
"""

from __future__ import annotations

import argparse
import random
import socket
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.daemons import start_daemon
from tests.support.fuzzing import mutated, sessions
from tests.support.processes import LOCALHOST

TIMEOUTS = {"acse": 2, "dimse": 2, "network_idle": 5, "artim": 2}


def one_case(port: int, data: bytes, seed: int, hang_after: float) -> str:
    """Send ``data``; "closed" when the daemon ended the connection in time, else "hang"."""
    generator = random.Random(seed)
    with socket.create_connection((LOCALHOST, port), timeout=hang_after) as connection:
        try:
            position = 0
            while position < len(data):
                step = generator.randint(1, 4096)
                connection.sendall(data[position : position + step])
                position += step
            connection.shutdown(socket.SHUT_WR)
        except OSError:
            return "closed"  # the daemon aborted and closed while we were still sending
        deadline = time.monotonic() + hang_after
        try:
            while time.monotonic() < deadline:
                if not connection.recv(65536):
                    return "closed"
        except TimeoutError:
            return "hang"
        except OSError:
            return "closed"
    return "hang"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--parallel", type=int, default=16, help="connections at once")
    parser.add_argument("--hang-after", type=float, default=15.0, help="seconds")
    arguments = parser.parse_args()

    generator = random.Random(arguments.seed)
    bases = sessions()
    cases = [
        (mutated(generator.choice(bases), generator), generator.randrange(1 << 30))
        for _ in range(arguments.cases)
    ]
    with tempfile.TemporaryDirectory(prefix="dicomd-fuzz-") as folder:
        overrides = {
            "timeouts": TIMEOUTS,
            "limits": {"max_associations": 4096, "max_associations_per_host": 4096,
                       "max_associations_per_calling_ae": 4096},
            "plugins": [{"plugin": "archive"}],
        }  # fmt: skip
        daemon = start_daemon(Path(folder), overrides)
        started = time.monotonic()
        outcomes = {"closed": 0, "hang": 0}
        try:
            with ThreadPoolExecutor(arguments.parallel) as pool:
                futures = [
                    pool.submit(one_case, daemon.port, data, seed, arguments.hang_after)
                    for data, seed in cases
                ]
                for number, future in enumerate(futures, start=1):
                    outcomes[future.result()] += 1
                    if number % 1000 == 0:
                        print(f"{number} cases, {time.monotonic() - started:.0f} s", flush=True)
            crashed = not daemon.is_running()
        finally:
            daemon.stop()
        log = daemon.log_text()
    lines = log.splitlines()
    marks = [n for n, line in enumerate(lines) if "Traceback" in line or "Unhandled" in line]
    tracebacks = len(marks)
    if marks:
        print("the first traceback in the daemon's log:")
        print("\n".join(lines[max(marks[0] - 2, 0) : marks[0] + 30]))
    elapsed = time.monotonic() - started
    print(f"cases: {arguments.cases} (seed {arguments.seed}) in {elapsed:.0f} s")
    print(f"crashes: {int(crashed)}  hangs: {outcomes['hang']}  tracebacks: {tracebacks}")
    print(f"closed by the daemon: {outcomes['closed']}")
    requested = sum(1 for line in log.splitlines() if "association requested" in line)
    aborted = sum(1 for line in log.splitlines() if "abort" in line.lower())
    print(f"daemon log: {requested} associations requested, {aborted} lines about aborts")
    return 0 if not (crashed or outcomes["hang"] or tracebacks) else 1


if __name__ == "__main__":
    sys.exit(main())

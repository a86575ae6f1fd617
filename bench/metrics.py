"""What the node's metrics cost: each call of `dicomd.metrics`, and a whole operation.

Two measures, printed side by side:

1. each call the node makes (`observe_operation`, `instance_received`...),
   in microseconds, with prometheus-client's values in memory (one process)
   and in files (``PROMETHEUS_MULTIPROC_DIR``, as workers keep them), each in a
   fresh interpreter;
2. C-ECHO and C-STORE (a store handler that keeps nothing) over an in-memory
   node (`dicomd.testing.MemoryNode`: the node's own code, no sockets), with the
   metrics calls live and with them replaced by functions that do nothing,
   A and B interleaved ``--repeat`` times; the difference per operation is the
   metrics' share, and the spread between rounds says how noisy the machine is.

    .venv/bin/python bench/metrics.py
    .venv/bin/python bench/metrics.py --repeat 7 --operations 3000
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

CALLS = """
import timeit
from prometheus_client import Counter
from dicomd import metrics
reference = Counter("bench_reference", "a bare counter, for scale")
def opened_and_ended():
    metrics.association_accepted()
    metrics.association_ended()
calls = {
    "observe_operation(store, success, s)":
        lambda: metrics.observe_operation("store", "success", 0.01),
    "observe_operation(qido, success)": lambda: metrics.observe_operation("qido", "success"),
    "instance_received(size)": lambda: metrics.instance_received(40000),
    "association_accepted + ended": opened_and_ended,
    "limit_hit(limit)": lambda: metrics.limit_hit("max_identifier_keys"),
    "(a bare Counter.inc, for scale)": reference.inc,
}
for name, call in calls.items():
    best = min(timeit.repeat(call, number=20000, repeat=5)) / 20000
    print(f"{name}\\t{best * 1e6:.2f}")
"""

NO_OP_NAMES = (
    "association_accepted",
    "association_ended",
    "association_rejected",
    "observe_operation",
    "instance_received",
    "limit_hit",
)


def call_costs(multiprocess: bool) -> dict[str, float]:
    """Microseconds per call, measured in a fresh interpreter."""
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="dicomd-bench-metrics-") as folder:
        if multiprocess:
            env["PROMETHEUS_MULTIPROC_DIR"] = folder
        else:
            env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        output = subprocess.run(
            [sys.executable, "-c", CALLS], env=env, capture_output=True, text=True, check=True
        ).stdout
    return {name: float(cost) for name, cost in (line.split("\t") for line in output.splitlines())}


@contextmanager
def metrics_off() -> Iterator[None]:
    """The node's metrics calls replaced by functions that do nothing."""
    from dicomd import metrics

    saved = {name: getattr(metrics, name) for name in NO_OP_NAMES}
    for name in NO_OP_NAMES:
        setattr(metrics, name, lambda *arguments, **keywords: None)
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(metrics, name, function)


def echo_round(operations: int) -> float:
    """Seconds per C-ECHO over one association of an in-memory node."""
    from dicomd.testing import MemoryNode

    node = MemoryNode()
    association = node.associate()
    started = time.perf_counter()
    for _ in range(operations):
        node.result(association.echo())
    elapsed = time.perf_counter() - started
    node.result(association.release())
    return elapsed / operations


def store_round(operations: int, folder: Path) -> float:
    """Seconds per C-STORE of CT_small (38 KB) into a handler that keeps nothing."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from zope.interface import implementer

    from dicomd.interfaces import IStoreHandler
    from dicomd.testing import MemoryNode

    @implementer(IStoreHandler)
    class Drop:
        def store(self, instance: object) -> int:
            return 0

    dataset = dcmread(get_testdata_file("CT_small.dcm"))
    node = MemoryNode([Drop()], storage_path=folder)
    association = node.associate(["1.2.840.10008.5.1.4.1.1.2"])
    started = time.perf_counter()
    for _ in range(operations):
        node.result(association.store(dataset))
    elapsed = time.perf_counter() - started
    node.result(association.release())
    return elapsed / operations


def ab(measure: Callable[[], float], repeat: int) -> tuple[list[float], list[float]]:
    """``measure`` with the metrics on (A) and off (B), interleaved."""
    on, off = [], []
    for round_number in range(repeat):
        order = ((on, False), (off, True)) if round_number % 2 == 0 else ((off, True), (on, False))
        for results, disabled in order:
            if disabled:
                with metrics_off():
                    results.append(measure())
            else:
                results.append(measure())
    return on, off


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="A/B rounds (default 5)")
    parser.add_argument("--operations", type=int, default=2000, help="per round (default 2000)")
    options = parser.parse_args()

    print("Each call, microseconds (best of 5 x 20000):")
    in_memory, in_files = call_costs(False), call_costs(True)
    print(f"  {'call':40} {'one process':>12} {'workers':>9}")
    for name, cost in in_memory.items():
        print(f"  {name:40} {cost:12.2f} {in_files[name]:9.2f}")

    print(f"\nWhole operations over an in-memory node, {options.repeat} rounds interleaved:")
    on_off = f"{'metrics on':>12} {'metrics off':>12}"
    print(f"  {'operation':10} {on_off} {'difference':>11} {'spread':>8}")
    with tempfile.TemporaryDirectory(prefix="dicomd-bench-metrics-") as folder:
        rounds = {
            "C-ECHO": lambda: echo_round(options.operations),
            "C-STORE": lambda: store_round(options.operations // 4, Path(folder)),
        }
        for name, measure in rounds.items():
            on, off = ab(measure, options.repeat)
            median_on, median_off = statistics.median(on), statistics.median(off)
            spread = (max(on + off) - min(on + off)) / median_off
            print(
                f"  {name:10} {median_on * 1e6:10.1f}us {median_off * 1e6:10.1f}us"
                f" {(median_on - median_off) * 1e6:9.1f}us {spread:7.0%}"
            )


if __name__ == "__main__":
    main()

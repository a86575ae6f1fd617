"""Command-line options the throughput benchmarks (``store.py``, ``scu.py``) share."""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path


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

"""The ``dicomd`` console command: one entry point, one module per subcommand.

Each subcommand module has ``add_parser(subparsers)``, which declares its
arguments and sets ``run``, a function from the parsed arguments to the exit
status.  Exit status 0 means everything asked for worked, 1 that something
failed (with one line on stderr saying what), 2 that the command line was
wrong (argparse's convention).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dicomd import __version__
from dicomd.cli import dump, echo, find, retrieve, scp, store, user


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dicomd",
        description=(
            "DICOM tools: dump Part 10 files, and echo, find, store, move and get against a peer."
        ),
    )
    parser.add_argument("--version", action="version", version=f"dicomd {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for command in (dump, echo, find, store, user, scp):
        command.add_parser(subparsers)
    retrieve.add_parsers(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand and return its exit status."""
    for stream in (sys.stdout, sys.stderr):
        # Values come from other systems; an odd byte must not cost the whole listing.
        stream.reconfigure(errors="backslashreplace")  # type: ignore[attr-defined]
    arguments = build_parser().parse_args(argv)
    status: int = arguments.run(arguments)
    return status

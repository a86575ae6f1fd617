"""``dicomd dump FILE…``: list Part 10 files, element by element."""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Any

from dicomd.cli.output import error_line
from dicomd.dump import NotDicomError, dump_file

COMMAND = "dump"


def add_parser(subparsers: Any, command: str, summary: str) -> None:
    parser = subparsers.add_parser(
        command,
        help=summary,
        description=(
            "Print each file's meta information and data set, one element per line:"
            " (gggg,eeee) VR Keyword  value.  Items of sequences are indented below"
            " them; values longer than 64 characters are cut; binary values show"
            " their length only.  With several files, each listing starts with"
            " '==> FILE <=='."
        ),
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="a DICOM Part 10 file")
    parser.set_defaults(run=run)


def run(arguments: argparse.Namespace) -> int:
    """Dump every file; a file that cannot be dumped is one line on stderr, and exit status 1.

    pydicom warns about every oddity it reads past; the listing shows the
    values themselves, so the warnings would only break the one-line rule.
    """
    warnings.simplefilter("ignore")
    status = 0
    several = len(arguments.files) > 1
    separator: list[str] = []
    for path in arguments.files:
        try:
            lines = dump_file(path)
        except NotDicomError as error:
            error_line(COMMAND, f"{path}: not a DICOM file ({error})")
            status = 1
            continue
        except OSError as error:
            error_line(COMMAND, f"{path}: {error.strerror or error}")
            status = 1
            continue
        if several:
            lines = [*separator, f"==> {path} <==", *lines]
            separator = [""]
        sys.stdout.write("\n".join(lines) + "\n")
    return status

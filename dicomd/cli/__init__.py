"""The ``dicomd`` console command: one entry point, one module per subcommand.

`COMMANDS` names each subcommand, the module that implements it and its
one-line summary.  Only the module of the subcommand being run is imported:
the others appear in ``dicomd --help`` by their summary alone.  So
``dicomd --help`` loads neither pydicom nor Twisted, and each subcommand pays
for its own imports only.

Each subcommand module has ``add_parser(subparsers, command, summary)``,
which adds the parser of ``command`` under that summary, declares its
arguments and sets ``run``, a function from the parsed arguments to the exit
status.  Exit status 0 means everything asked for worked, 1 that something
failed (with one line on stderr saying what), 2 that the command line was
wrong (argparse's convention).

This module imports argparse and nothing of dicomd but its version and
`dicomd.cli.optional`: it is what every invocation of the command loads
before anything else.
"""

import argparse
import gc
import sys
from importlib import import_module

from dicomd import __version__
from dicomd.cli.optional import leave_out

# No `typing` or `__future__` at run time: each is one more import on every start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection, Sequence

COMMANDS = (
    ("dump", "dicomd.cli.dump", "print the elements of Part 10 files"),
    ("echo", "dicomd.cli.echo", "verify that a peer answers (C-ECHO)"),
    ("find", "dicomd.cli.find", "query a peer (C-FIND)"),
    ("store", "dicomd.cli.store", "send files to a peer (C-STORE)"),
    ("move", "dicomd.cli.retrieve", "have a peer send instances to another AE (C-MOVE)"),
    ("get", "dicomd.cli.retrieve", "fetch instances from a peer into a folder (C-GET)"),
    ("user", "dicomd.cli.user", "add, remove or list the users who log in with a passcode"),
    (
        "scp",
        "dicomd.cli.scp",
        "run a store SCP in the foreground (twistd -n dicomd, set up by options)",
    ),
)
"""Each subcommand: its name, the module that implements it, and its summary in ``--help``."""

EVERY_COMMAND = frozenset(name for name, _module, _summary in COMMANDS)

DECODES_PIXEL_DATA = frozenset({"scp"})
"""The subcommands that may decode pixel data, with numpy: ``scp`` runs the node, which
decompresses an instance for a peer that takes no compressed syntax.  The others read and
write data sets, send files as they are or convert them between uncompressed syntaxes,
all of which pydicom does without numpy, so they run without it (about 80 ms less)."""


def build_parser(complete: "Collection[str]" = EVERY_COMMAND) -> argparse.ArgumentParser:
    """The command's parser, with the subcommands in ``complete`` given all their arguments.

    Every other subcommand is there by name and summary only, without
    importing its module: enough for ``dicomd --help`` to list it, and for
    argparse to accept its name.
    """
    parser = argparse.ArgumentParser(
        prog="dicomd",
        description=(
            "DICOM tools: dump Part 10 files, and echo, find, store, move and get against a peer."
        ),
    )
    parser.add_argument("--version", action="version", version=f"dicomd {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for command, module, summary in COMMANDS:
        if command in complete:
            import_module(module).add_parser(subparsers, command, summary)
        else:
            subparsers.add_parser(command, help=summary)
    return parser


def chosen_command(argv: "Sequence[str]") -> str | None:
    """The subcommand ``argv`` names: its first word that is not an option.

    The command's own options (``--help``, ``--version``) take no value, so
    the first other word is the subcommand, or a mistake argparse reports.
    """
    return next((word for word in argv if not word.startswith("-")), None)


def main(argv: "Sequence[str] | None" = None) -> int:
    """Run one subcommand and return its exit status."""
    for stream in (sys.stdout, sys.stderr):
        # Values come from other systems; an odd byte must not cost the whole listing.
        stream.reconfigure(errors="backslashreplace")  # type: ignore[attr-defined]
    if argv is None:
        argv = sys.argv[1:]
    command = chosen_command(argv)
    if command in EVERY_COMMAND - DECODES_PIXEL_DATA:
        leave_out("numpy", unless_loaded=("pydicom",))
    with _CollectorPaused():
        parser = build_parser(complete={command} & EVERY_COMMAND)
    arguments = parser.parse_args(argv)
    status: int = arguments.run(arguments)
    return status


class _CollectorPaused:
    """No garbage collection while a subcommand's modules load, and none of them collected after.

    pydicom, numpy and Twisted make objects by the hundred thousand as they
    load, and no garbage: the collections they set off cost ``dicomd echo``
    about a tenth of its CPU.  They then live as long as the process, so they
    are frozen (`gc.freeze`) out of every later collection, including the
    one as the interpreter exits, which scanned them all once more for
    another quarter of ``dicomd echo``'s CPU.  The collector is left on or
    off as it was found.
    """

    def __enter__(self) -> None:
        self._collecting = gc.isenabled()
        gc.disable()

    def __exit__(self, *exception: object) -> None:
        gc.freeze()
        if self._collecting:
            gc.enable()

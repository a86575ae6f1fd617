"""``dicomd user add|remove|list --file PATH``: the users file of passcode logins."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import Any

from dicomd.cli.output import error_line
from dicomd.users import UsersFile, UsersFileError

COMMAND = "user"


def add_parser(subparsers: Any, command: str, summary: str) -> None:
    parser = subparsers.add_parser(
        command,
        help=summary,
        description=(
            "Manage the users file named by authentication.users_file: user names and"
            " scrypt hashes of their passcodes.  A running node reads it again at each"
            " login, so a change counts at once."
        ),
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)
    add = actions.add_parser("add", help="add a user, or give one a new passcode")
    add.add_argument("name", metavar="NAME")
    add.add_argument(
        "--passcode-stdin",
        action="store_true",
        help="read the passcode from the first line of standard input instead of asking twice",
    )
    add.set_defaults(run=_add)
    remove = actions.add_parser("remove", help="remove a user")
    remove.add_argument("name", metavar="NAME")
    remove.set_defaults(run=_remove)
    listing = actions.add_parser("list", help="print the user names, one a line")
    listing.set_defaults(run=_list)
    for action in (add, remove, listing):
        action.add_argument("--file", type=Path, required=True, help="the users file")


def _add(arguments: argparse.Namespace) -> int:
    try:
        passcode = _passcode(arguments.passcode_stdin)
        if not passcode:
            raise UsersFileError("an empty passcode is no passcode")
        UsersFile(arguments.file).add(arguments.name, passcode.encode("utf-8"))
    except (UsersFileError, OSError) as error:
        return _failed(str(error))
    return 0


def _remove(arguments: argparse.Namespace) -> int:
    try:
        removed = UsersFile(arguments.file).remove(arguments.name)
    except (UsersFileError, OSError) as error:
        return _failed(str(error))
    if not removed:
        return _failed(f"no user {arguments.name!r} in {arguments.file}")
    return 0


def _list(arguments: argparse.Namespace) -> int:
    try:
        names = sorted(UsersFile(arguments.file).read())
    except UsersFileError as error:
        return _failed(str(error))
    sys.stdout.write("".join(f"{name}\n" for name in names))
    return 0


def _passcode(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("passcode: ")
    if getpass.getpass("again: ") != first:
        raise UsersFileError("the two passcodes differ")
    return first


def _failed(problem: str) -> int:
    error_line(COMMAND, problem)
    return 1

"""What every subcommand writes the same way."""

from __future__ import annotations

import sys


def error_line(command: str, message: str) -> None:
    """One line on stderr, prefixed like every other tool's: ``dicomd echo: ...``."""
    sys.stderr.write(f"dicomd {command}: {message}\n")
    sys.stderr.flush()


def seconds(value: float) -> str:
    """A duration as people write it on a command line: ``5 s``, ``0.5 s``."""
    return f"{value:g} s"


def uid_name(uid: str) -> str:
    """A UID's name in pydicom's registry ("CT Image Storage"), or the UID when it has none.

    pydicom loads when a name is first asked for, not with every command.
    """
    from pydicom.uid import UID

    return UID(uid).name

"""Running the ``dicomd`` command as installed, from this checkout or from an earlier commit.

Before/after figures are worth something only when taken in one run, the two
versions taking turns: `exported` puts the ``dicomd`` package of a commit in
a folder, and `command_environment` runs the command from that folder, or
from the checkout, with its bytecode cached as an installed package has it.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from tests.support.processes import daemon_environment

REPOSITORY: Final = Path(__file__).resolve().parent.parent
PYCACHE: Final = Path(tempfile.gettempdir()) / "dicomd-bench" / "pycache"
"""Where the ``dicomd`` command's Python keeps the bytecode of what it loads."""


def dicomd_argv(*arguments: str) -> list[str]:
    """``python -P -m dicomd.cli ARGUMENTS``: ``-P`` takes the package from the path (the
    checkout's editable install, or ``PYTHONPATH``), never from the current folder."""
    return [sys.executable, "-P", "-m", "dicomd.cli", *arguments]


def command_environment(package_root: Path | None = None) -> dict[str, str]:
    """The environment of ``dicomd`` as installed: every module's bytecode in `PYCACHE`,
    and the package from ``package_root`` (an `exported` folder) when given.

    An installed package comes compiled; a checkout run where
    PYTHONDONTWRITEBYTECODE is set (some shells and CI images set it)
    would compile dicomd's modules again at every start, a cost no user
    pays.  Run `compile_command` once before the timed runs.
    """
    environment = daemon_environment()
    environment.pop("PYTHONDONTWRITEBYTECODE", None)
    environment["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    if package_root is not None:
        environment["PYTHONPATH"] = str(package_root)
    return environment


def compile_command(*arguments: str, environment: dict[str, str]) -> None:
    """Run ``dicomd ARGUMENTS`` once, untimed, so that the bytecode of what it loads is cached."""
    subprocess.run(dicomd_argv(*arguments), env=environment, stdout=subprocess.DEVNULL, check=True)


@contextlib.contextmanager
def exported(revision: str) -> Iterator[Path]:
    """A folder holding the ``dicomd`` package as it is at ``revision``, removed afterwards."""
    archive = subprocess.run(
        ["git", "-C", str(REPOSITORY), "archive", revision, "dicomd"],
        capture_output=True,
        check=True,
    ).stdout
    with tempfile.TemporaryDirectory(prefix="dicomd-bench-baseline-") as folder:
        with tarfile.open(fileobj=io.BytesIO(archive)) as package:
            package.extractall(folder, filter="data")
        yield Path(folder)

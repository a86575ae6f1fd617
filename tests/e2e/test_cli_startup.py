"""What ``dicomd`` loads as it starts, read from a fresh interpreter's ``-X importtime`` report.

``dicomd --help`` must answer at once, so it loads neither pydicom (with
numpy, a large share of a second) nor Twisted; each subcommand loads what it
uses and not the modules of the others.  These tests check which modules
are loaded, never how long that takes: the timings are in bench/README.md.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pydicom.data import get_testdata_file

from dicomd.cli import COMMANDS
from tests.support.daemons import COMMAND_TIMEOUT
from tests.support.dcmtk import DcmtkPeer
from tests.support.processes import LOCALHOST, daemon_environment

PYDICOM_AND_NUMPY = ("pydicom", "numpy")
TWISTED = ("twisted",)


def loaded_modules(*arguments: str) -> set[str]:
    """Every module ``dicomd ARGUMENTS`` imports, which must exit with status 0."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "dicomd.cli", *arguments],
        env=daemon_environment(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    report = [line for line in result.stderr.splitlines() if line.startswith("import time:")]
    assert report, result.stderr
    names = {line.rpartition("|")[2].strip() for line in report}
    assert "dicomd.cli" in names
    return names


def within(names: set[str], packages: tuple[str, ...]) -> set[str]:
    return {name for name in names if name.partition(".")[0] in packages}


def command_modules_but(module: str) -> set[str]:
    """The modules of every subcommand but the one in ``module``."""
    return {other for _name, other, _summary in COMMANDS if other != module}


def test_help_loads_neither_pydicom_nor_twisted_nor_any_command() -> None:
    loaded = loaded_modules("--help")
    assert within(loaded, PYDICOM_AND_NUMPY + TWISTED) == set()
    assert loaded & command_modules_but("") == set()


def test_the_scp_command_line_is_read_before_the_node_is_loaded() -> None:
    loaded = loaded_modules("scp", "--help")
    assert within(loaded, PYDICOM_AND_NUMPY + TWISTED) == set()
    assert loaded & command_modules_but("dicomd.cli.scp") == set()


def test_listing_users_loads_neither_pydicom_nor_twisted(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text("")
    loaded = loaded_modules("user", "list", "--file", str(users))
    assert within(loaded, PYDICOM_AND_NUMPY + TWISTED) == set()


def test_dump_loads_no_twisted_and_no_network_command() -> None:
    loaded = loaded_modules("dump", get_testdata_file("CT_small.dcm"))
    assert within(loaded, TWISTED) == set()
    assert "dicomd.cli.network" not in loaded
    assert loaded & command_modules_but("dicomd.cli.dump") == set()


def test_echo_loads_no_other_command_nor_what_only_they_use(receiver: DcmtkPeer) -> None:
    loaded = loaded_modules("echo", LOCALHOST, str(receiver.port))
    assert loaded & command_modules_but("dicomd.cli.echo") == set()
    assert loaded & {"dicomd.dump", "dicomd.users", "dicomd.cli.query", "dicomd.tap"} == set()
    assert "twisted.internet.epollreactor" in loaded  # the reactor the platform does best

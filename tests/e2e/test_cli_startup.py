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
from tests.support.dcmtk import DcmtkPeer, dcmtk_peer
from tests.support.processes import LOCALHOST, daemon_environment

PYDICOM_AND_NUMPY = ("pydicom", "numpy")
TWISTED = ("twisted",)
TLS_LIBRARIES = ("cryptography", "service_identity")
"""What pyOpenSSL loads.  The report names pyOpenSSL (and Twisted's modules that try it)
even when its import is refused, so these tell whether it ran."""


def run_fresh(*arguments: str, python_options: tuple[str, ...] = ()) -> str:
    """The standard error of ``dicomd ARGUMENTS`` in a fresh interpreter; it must exit 0."""
    result = subprocess.run(
        [sys.executable, *python_options, "-m", "dicomd.cli", *arguments],
        env=daemon_environment(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    return result.stderr


def loaded_modules(*arguments: str) -> set[str]:
    """Every module ``dicomd ARGUMENTS`` imports, which must exit with status 0."""
    stderr = run_fresh(*arguments, python_options=("-X", "importtime"))
    report = [line for line in stderr.splitlines() if line.startswith("import time:")]
    assert report, stderr
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
    assert "numpy._core" not in loaded  # the report names numpy itself for the refused import
    assert "dicomd.cli.network" not in loaded
    assert loaded & command_modules_but("dicomd.cli.dump") == set()


def test_echo_loads_no_other_command_nor_what_only_they_use(receiver: DcmtkPeer) -> None:
    loaded = loaded_modules("echo", LOCALHOST, str(receiver.port))
    assert loaded & command_modules_but("dicomd.cli.echo") == set()
    assert loaded & {"dicomd.dump", "dicomd.users", "dicomd.cli.query", "dicomd.tap"} == set()
    assert "twisted.internet.epollreactor" in loaded  # the reactor the platform does best


def test_echo_over_tcp_loads_neither_pydicom_nor_the_tls_libraries(receiver: DcmtkPeer) -> None:
    loaded = loaded_modules("echo", LOCALHOST, str(receiver.port))
    assert within(loaded, PYDICOM_AND_NUMPY + TLS_LIBRARIES) == set()
    assert "twisted.internet._sslverify" not in loaded


def test_echo_with_debug_names_the_contexts_it_was_given(receiver: DcmtkPeer) -> None:
    log = run_fresh("echo", "-d", LOCALHOST, str(receiver.port))
    assert "context 1: Verification SOP Class in Explicit VR Little Endian" in log


def test_store_of_files_as_they_are_loads_neither_pydicom_nor_the_tls_libraries(
    receiver: DcmtkPeer,
) -> None:
    """CT_small.dcm is in explicit VR little endian, which dcmtk accepts: the file goes as it
    is, which needs its File Meta and nothing of pydicom."""
    loaded = loaded_modules(
        "store", LOCALHOST, str(receiver.port), get_testdata_file("CT_small.dcm")
    )
    assert within(loaded, PYDICOM_AND_NUMPY + TLS_LIBRARIES) == set()
    assert "dicomd.dimse.storage" not in loaded  # the receiving side


def test_store_converting_a_file_loads_pydicom_but_not_numpy(tmp_path: Path) -> None:
    """A peer that accepts only implicit VR: the explicit VR file is re-encoded, with pydicom."""
    with dcmtk_peer("storescp", tmp_path, "+xi", "-od", str(tmp_path)) as implicit_only:
        loaded = loaded_modules(
            "store", LOCALHOST, str(implicit_only.port), get_testdata_file("CT_small.dcm")
        )
    assert "pydicom" in loaded
    assert "numpy._core" not in loaded  # the report names numpy itself for the refused import

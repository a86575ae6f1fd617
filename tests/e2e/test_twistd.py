"""The real ``twistd dicomd``: start-up errors as an operator sees them, and the installed wheel."""

from __future__ import annotations

import os
import shutil
import site
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
BAD_LINE = "dicomd: limits.max_pdu_length: expected an integer, got 'abc'"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def twistd(*arguments: str, cwd: Path, python: str = sys.executable, checkout: bool = True):
    """Run twistd the way an operator does; ``checkout`` makes this checkout importable."""
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    if checkout:
        environment["PYTHONPATH"] = str(REPO_ROOT)
    return subprocess.run(
        [python, "-c", "from twisted.scripts.twistd import run; run()", *arguments],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# The real twistd


def test_twistd_lists_dicomd(tmp_path: Path) -> None:
    result = twistd("--help", cwd=tmp_path)
    assert result.returncode == 0
    assert any(line.split()[:1] == ["dicomd"] for line in result.stdout.splitlines())


@pytest.mark.parametrize(
    ("config_text", "line"),
    [
        ("limits:\n  max_pdu_length: abc\n", BAD_LINE),
        (
            "timeouts:\n  acse: 30\n  release: 5\n",
            "dicomd: timeouts.release: unknown key "
            "(expected one of: acse, dimse, network_idle, artim)",
        ),
        (
            "ae_title: [unclosed\n",
            "dicomd: bad.yaml: YAML error at line 2, column 1: "
            "while parsing a flow sequence expected ',' or ']', but got '<stream end>'",
        ),
    ],
)
def test_twistd_with_a_bad_config_exits_non_zero_with_one_line(
    tmp_path: Path, config_text: str, line: str
) -> None:
    write(tmp_path / "bad.yaml", config_text)
    result = twistd("-n", "--pidfile=", "dicomd", "-c", "bad.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert (result.stdout, result.stderr) == ("", line + "\n")


def test_twistd_with_a_missing_config_file(tmp_path: Path) -> None:
    result = twistd("-n", "--pidfile=", "dicomd", "-c", "nowhere.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert (result.stdout, result.stderr) == ("", "dicomd: nowhere.yaml: file not found\n")


def test_twistd_on_a_port_in_use_exits_non_zero_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        write(tmp_path / "site.yaml", f"listen: tcp:{port}:interface=127.0.0.1\nplugins: []\n")
        result = twistd(
            "-n", "--pidfile=", "--logfile=-", "dicomd", "-c", "site.yaml", cwd=tmp_path
        )
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert f"dicomd: listen: cannot listen on 127.0.0.1:{port}: Address already in use" in output
    assert "Traceback" not in output


def test_twistd_on_an_archive_folder_of_unknown_files_exits_with_one_line(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / "somebody-elses.dcm").write_bytes(b"not ours")
    write(
        tmp_path / "site.yaml", f"listen: tcp:0:interface=127.0.0.1\nstorage: {{path: {archive}}}\n"
    )
    result = twistd("-n", "--pidfile=", "--logfile=-", "dicomd", "-c", "site.yaml", cwd=tmp_path)
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert f"dicomd: cannot start: ArchiveError: {archive} holds files but no index" in output
    assert (archive / "somebody-elses.dcm").read_bytes() == b"not ours"


# The wheel


def pip(command: str, *arguments: str) -> None:
    """Run this environment's pip offline, on nothing but the given files."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", command, "--quiet", "--no-deps", "--no-index", *arguments],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built, offline, from a copy of the project's packaged files."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    for name in ("dicomd", "twisted"):
        shutil.copytree(
            REPO_ROOT / name,
            source / name,
            ignore=shutil.ignore_patterns("__pycache__", "dropin.cache"),
        )
    output = tmp_path_factory.mktemp("wheel")
    pip("wheel", "--no-build-isolation", "--wheel-dir", str(output), str(source))
    [built] = output.glob("dicomd-*.whl")
    return built


def test_wheel_ships_the_plugin_inside_twisteds_own_plugin_package(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "twisted/plugins/dicomd_plugin.py" in names
    assert {"dicomd/__init__.py", "dicomd/config.py", "dicomd/tap.py"} <= names
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names
    assert not {name for name in names if name.startswith(("tests/", "conf/"))}


def test_installed_wheel_gives_twistd_dicomd(wheel: Path, tmp_path: Path) -> None:
    """Install the wheel alone into a new environment that borrows this one's dependencies.

    The borrowed site-packages is added by a ``.pth`` line, so its own ``.pth``
    files (among them an editable install of this checkout) are not run: dicomd
    can only come from the wheel.
    """
    environment = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(environment)], check=True)
    python = str(environment / "bin" / "python")
    packages = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (packages / "borrowed.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    pip("install", "--target", str(packages), str(wheel))
    write(tmp_path / "bad.yaml", "limits:\n  max_pdu_length: abc\n")

    listed = twistd("--help", cwd=tmp_path, python=python, checkout=False)
    failed = twistd("-n", "dicomd", "-c", "bad.yaml", cwd=tmp_path, python=python, checkout=False)
    where = subprocess.run(
        [python, "-c", "import dicomd; print(dicomd.__file__)"],
        cwd=tmp_path,
        env={key: value for key, value in os.environ.items() if key != "PYTHONPATH"},
        check=True,
        capture_output=True,
        text=True,
    )

    assert "DICOM archive node" in listed.stdout
    assert (failed.returncode, failed.stderr) == (1, BAD_LINE + "\n")
    assert Path(where.stdout.strip()).is_relative_to(packages)

"""The ``dicomd`` command's registry of subcommands: every one is listed, each one's module
is loaded only when it runs.

The start-up itself, in a fresh interpreter, is tested in ``tests/e2e/test_cli_startup.py``.
"""

from __future__ import annotations

import gc
import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

import pytest

import dicomd
from dicomd.cli import COMMANDS, EVERY_COMMAND, build_parser, chosen_command, main

HEAVY = ("pydicom", "numpy", "twisted")
"""What ``dicomd --help`` must not load: each costs a noticeable share of a second."""


def _is_heavy(name: str) -> bool:
    return name.partition(".")[0] in HEAVY


def _is_cli(name: str) -> bool:
    return name == "dicomd.cli" or name.startswith("dicomd.cli.")


class _Refuser:
    """An import finder that refuses the heavy packages and remembers who asked for them."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if _is_heavy(name):
            self.asked.append(name)
            raise ImportError(f"{name} is out of reach in this test")


@contextmanager
def fresh_cli() -> Iterator[tuple[ModuleType, _Refuser]]:
    """``dicomd.cli`` imported anew, in a process where pydicom, numpy and Twisted are out of
    reach, as they are in a new interpreter that has not loaded them yet.

    The modules this test session already loaded are set aside for the block
    and put back after it, so the rest of the session sees the very same
    module objects.
    """
    set_aside = {
        name: module for name, module in sys.modules.items() if _is_cli(name) or _is_heavy(name)
    }
    earlier_cli = dicomd.__dict__.get("cli")
    for name in set_aside:
        del sys.modules[name]
    refuser = _Refuser()
    sys.meta_path.insert(0, refuser)
    try:
        yield importlib.import_module("dicomd.cli"), refuser
    finally:
        sys.meta_path.remove(refuser)
        for name in [name for name in sys.modules if _is_cli(name) or _is_heavy(name)]:
            del sys.modules[name]
        sys.modules.update(set_aside)
        if earlier_cli is not None:
            dicomd.cli = earlier_cli  # type: ignore[attr-defined]


def test_help_loads_neither_pydicom_nor_twisted(capsys: pytest.CaptureFixture[str]) -> None:
    with fresh_cli() as (cli, refuser):
        with pytest.raises(SystemExit) as exited:
            cli.main(["--help"])
        loaded = sorted(name for name in sys.modules if _is_heavy(name))
    assert exited.value.code == 0
    assert (refuser.asked, loaded) == ([], [])
    assert "echo" in capsys.readouterr().out


def test_every_command_but_scp_runs_without_numpy() -> None:
    """pydicom loads numpy when it can; only the node decodes pixel data, so the other
    commands mark it absent before anything loads pydicom."""
    for command, without_numpy in (("user", True), ("scp", False)):
        with fresh_cli() as (cli, _refuser):
            with pytest.raises(SystemExit):
                cli.main([command, "--help"])
            assert ("numpy" in sys.modules and sys.modules["numpy"] is None) is without_numpy


def test_the_scp_command_line_is_parsed_without_loading_what_runs_the_node() -> None:
    with fresh_cli() as (cli, refuser):
        arguments = cli.build_parser(complete={"scp"}).parse_args(["scp", "--port", "8104"])
    assert arguments.port == 8104
    assert refuser.asked == []


def test_help_lists_every_command_with_its_summary(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    listing = " ".join(capsys.readouterr().out.split())
    for name, _module, summary in COMMANDS:
        assert f"{name} {summary}" in listing


@pytest.mark.parametrize("command", sorted(EVERY_COMMAND))
def test_each_command_run_alone_has_its_own_arguments(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    alone = build_parser(complete={command})
    with pytest.raises(SystemExit) as exited:
        alone.parse_args([command, "--help"])
    assert exited.value.code == 0
    own_help = capsys.readouterr().out
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    assert own_help.startswith(f"usage: dicomd {command} ")
    assert own_help == capsys.readouterr().out


def test_a_command_line_chooses_by_its_first_word_that_is_no_option() -> None:
    assert chosen_command(["echo", "-aec", "PACS", "host", "104"]) == "echo"
    assert chosen_command(["--help"]) is None
    assert chosen_command([]) is None
    assert chosen_command(["-h", "store"]) == "store"


def test_an_unknown_command_is_a_usage_error_naming_the_commands(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["ecoh", "host", "104"])
    assert exited.value.code == 2
    complaint = capsys.readouterr().err
    assert "invalid choice: 'ecoh'" in complaint
    assert all(f"'{name}'" in complaint for name in EVERY_COMMAND)


@pytest.mark.parametrize("collecting", [True, False])
def test_the_garbage_collector_is_left_on_or_off_as_it_was(collecting: bool) -> None:
    (gc.enable if collecting else gc.disable)()
    try:
        with pytest.raises(SystemExit):
            main(["--version"])
        assert gc.isenabled() is collecting
    finally:
        gc.enable()

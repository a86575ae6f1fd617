"""``dicomd scp``: from its options to the configuration and the service tree ``twistd`` runs.

Running it (a real port, dcmtk's storescu and findscu, signals) is tested in
``tests/e2e/test_cli_scp.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest
import yaml
from pydicom.uid import CTImageStorage
from twisted.application.service import IServiceCollection
from twisted.internet.testing import MemoryReactorClock

from dicomd import uids
from dicomd.archive import ArchiveHandler, FolderHandler, PrintHandler
from dicomd.cli import build_parser
from dicomd.cli.scp import build_config, check_folders, main, named_by_option, option_settings
from dicomd.config import BUILTIN_PLUGINS, Config, ConfigError, default_config, load_config
from dicomd.tap import node_service


def scp_arguments(*options: str) -> argparse.Namespace:
    return build_parser().parse_args(["scp", *options])


def config_of(*options: str) -> Config:
    arguments = scp_arguments(*options)
    settings, _origins = option_settings(arguments)
    return build_config(settings, arguments.config)


def write_yaml(path: Path, settings: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump(settings))
    return path


def test_the_seed_command_is_the_config_of_the_file_that_says_the_same(tmp_path: Path) -> None:
    save = tmp_path / "scp_incoming"
    site = write_yaml(
        tmp_path / "same.yaml",
        {
            "listen": "tcp:8104",
            "storage": {"path": str(save)},
            "plugins": [
                {"plugin": "print"},
                {"plugin": "dicomd.archive.FolderHandler", "options": {"path": str(save)}},
            ],
        },
    )
    assert config_of("--port", "8104", "--print", "--save", str(save)) == load_config(site)


def test_without_options_it_is_twistd_with_the_built_in_defaults() -> None:
    assert config_of() == default_config()


def test_archive_is_the_archive_plugin_in_its_folder(tmp_path: Path) -> None:
    config = config_of("--archive", str(tmp_path / "archive"), "--aet", "QUICK")
    assert config.plugins == load_config(None).plugins  # the archive, under storage.path
    assert config.storage_path == tmp_path / "archive"
    assert config.ae_title == "QUICK"


def test_the_handlers_run_in_the_order_print_save_archive(tmp_path: Path) -> None:
    config = config_of(
        "--archive", str(tmp_path / "archive"), "--save", str(tmp_path / "save"), "--print"
    )
    assert [plugin.path for plugin in config.plugins] == [
        BUILTIN_PLUGINS["print"],
        "dicomd.archive.FolderHandler",
        BUILTIN_PLUGINS["archive"],
    ]
    assert config.plugins[1].options == {"path": str(tmp_path / "save")}
    # instances arrive beside the archive, which renames them into place
    assert config.storage_path == tmp_path / "archive"


def test_a_site_file_gives_everything_the_options_do_not(tmp_path: Path) -> None:
    site = write_yaml(
        tmp_path / "site.yaml",
        {
            "ae_title": "SITE",
            "listen": "tcp:11112:interface=127.0.0.1",
            "storage": {"path": str(tmp_path / "site-archive")},
            "limits": {"max_pdu_length": 65536},
            "access": {"calling_aes": ["MODALITY"]},
        },
    )
    from_file = load_config(site)

    config = config_of("-c", str(site), "--aet", "QUICK", "--port", "8104")

    assert (config.ae_title, config.listen) == ("QUICK", "tcp:8104")
    assert (config.limits, config.access) == (from_file.limits, from_file.access)
    assert (config.plugins, config.storage_path) == (from_file.plugins, from_file.storage_path)


def test_handler_options_replace_the_site_files_plugins(tmp_path: Path) -> None:
    site = write_yaml(tmp_path / "site.yaml", {"plugins": [{"plugin": "archive"}]})
    config = config_of("-c", str(site), "--print")
    assert [plugin.path for plugin in config.plugins] == [BUILTIN_PLUGINS["print"]]


def test_a_bad_ae_title_is_named_by_its_option() -> None:
    arguments = scp_arguments("--aet", "A" * 17)
    settings, origins = option_settings(arguments)
    with pytest.raises(ConfigError) as raised:
        build_config(settings, None)
    error = named_by_option(raised.value, origins)
    assert error.key == "--aet"
    assert error.problem == raised.value.problem


def test_a_site_files_mistake_keeps_its_key(tmp_path: Path) -> None:
    site = write_yaml(tmp_path / "site.yaml", {"limits": {"max_pdu_length": "abc"}})
    arguments = scp_arguments("-c", str(site), "--aet", "QUICK")
    settings, origins = option_settings(arguments)
    with pytest.raises(ConfigError) as raised:
        build_config(settings, arguments.config)
    assert named_by_option(raised.value, origins).key == "limits.max_pdu_length"


@pytest.mark.parametrize("port", ["0", "65536", "http"])
def test_a_port_that_is_none_is_a_usage_error(
    port: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        scp_arguments("--port", port)
    assert exit_.value.code == 2
    assert "--port" in capsys.readouterr().err


@pytest.mark.parametrize("save", ["archive", "archive/saved"])
def test_save_inside_the_archive_folder_is_refused(tmp_path: Path, save: str) -> None:
    arguments = scp_arguments(
        "--archive", str(tmp_path / "archive"), "--save", str(tmp_path / save)
    )
    with pytest.raises(ConfigError) as raised:
        check_folders(arguments)
    assert raised.value.key == "--save"


def test_save_beside_the_archive_folder_is_fine(tmp_path: Path) -> None:
    check_folders(scp_arguments("--archive", str(tmp_path / "a"), "--save", str(tmp_path / "ab")))


def one_process(config: Config) -> Config:
    """The node as one process, whose tree holds the listener itself (not a pool of workers)."""
    return dataclasses.replace(config, workers=1)


def test_the_service_tree_is_twistds_with_the_three_handlers(tmp_path: Path) -> None:
    config = config_of(
        "--port", "8104", "--print", "--save", str(tmp_path / "save"),
        "--archive", str(tmp_path / "archive"),
    )  # fmt: skip
    root = node_service(one_process(config), MemoryReactorClock())

    children = list(IServiceCollection(root))
    [archive] = [child for child in children if isinstance(child, ArchiveHandler)]
    listener = IServiceCollection(root).getServiceNamed("dicom")
    assert children.index(archive) < children.index(listener)  # the index opens first
    assert archive.path == tmp_path / "archive"
    services = listener.factory.settings.services
    handlers = services.service_for(CTImageStorage).handlers
    assert [type(handler) for handler in handlers] == [PrintHandler, FolderHandler, ArchiveHandler]
    assert handlers[1].path == tmp_path / "save"
    assert services.service_for(uids.STUDY_ROOT_FIND) is not None


def test_print_and_save_alone_serve_no_query(tmp_path: Path) -> None:
    config = one_process(config_of("--print", "--save", str(tmp_path)))
    root = node_service(config, MemoryReactorClock())
    services = IServiceCollection(root).getServiceNamed("dicom").factory.settings.services
    assert services.service_for(uids.STUDY_ROOT_FIND) is None
    assert services.service_for(CTImageStorage) is not None


def test_a_save_folder_that_cannot_be_made_is_one_line_naming_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")

    status = main(scp_arguments("--save", str(blocker / "incoming")))

    assert status == 1
    assert capsys.readouterr() == (
        "",
        f"dicomd scp: --save: cannot create {blocker / 'incoming'}: Not a directory\n",
    )


def test_a_save_folder_beside_an_archive_that_cannot_be_made_names_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    arguments = scp_arguments(
        "--archive", str(tmp_path / "archive"), "--save", str(blocker / "incoming")
    )

    assert main(arguments) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("dicomd scp: --save: dicomd.archive.FolderHandler(**options) failed:")
    assert err.endswith(f"cannot create {blocker / 'incoming'}: Not a directory\n")
    assert len(err.splitlines()) == 1

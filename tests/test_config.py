"""The configuration: defaults, the example file, and one clear line for every mistake."""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zope.interface import Interface

from dicomd.app import build_plugins, providing
from dicomd.archive import ArchiveHandler, PrintHandler
from dicomd.config import _DEFAULTS as EMBEDDED_DEFAULTS
from dicomd.config import _WEB_DEFAULTS as EMBEDDED_WEB_DEFAULTS
from dicomd.config import (
    TLS,
    Access,
    CallingAE,
    Config,
    ConfigError,
    Destination,
    Limits,
    Plugin,
    Store,
    Timeouts,
    Web,
    default_config,
    load_config,
    parse_config,
)
from dicomd.interfaces import IAssociationValidator

EXAMPLE_FILE = Path(__file__).resolve().parents[1] / "conf" / "scp.yaml"

CONTRACT = {
    "ae_title": "DICOMD",
    "listen": "tcp:11112",
    "storage": {"path": "./var/archive", "url": None, "endpoint_url": None},
    "index": {"url": None},
    "limits": {
        "max_pdu_length": 262144,
        "max_associations": 32,
        "max_associations_per_host": 16,
        "max_associations_per_calling_ae": 16,
        "max_command_length": 65536,
        "max_identifier_length": 1048576,
        "max_identifier_keys": 1024,
        "max_inflated_length": 1073741824,
        "max_inflation_ratio": 200,
    },
    "timeouts": {"acse": 30, "dimse": 60, "network_idle": 300, "artim": 30},
    "transfer_syntaxes": [
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.1.2",
        "1.2.840.10008.1.2.1.99",
        "1.2.840.10008.1.2.2",
    ],
    "access": {"check_called_ae": True, "calling_aes": []},
    "destinations": {},
    "plugins": [{"plugin": "archive"}],
}
"""The keys and values that tools and tests outside the code base rely on."""


def thaw(value: Any) -> Any:
    """Plain dicts instead of read-only mapping proxies, to compare with what YAML reads."""
    return {key: thaw(item) for key, item in value.items()} if isinstance(value, Mapping) else value


def error_of(data: Any) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    return caught.value


def file_error_of(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value


# Defaults and the example file


def test_default_config_has_the_documented_values() -> None:
    assert default_config() == Config(
        ae_title="DICOMD",
        listen="tcp:11112",
        storage_path=Path("var/archive"),
        limits=Limits(
            max_pdu_length=262144,
            max_associations=32,
            max_associations_per_host=16,
            max_associations_per_calling_ae=16,
            max_command_length=65536,
            max_identifier_length=1048576,
            max_identifier_keys=1024,
            max_inflated_length=1073741824,
            max_inflation_ratio=200,
        ),
        timeouts=Timeouts(acse=30.0, dimse=60.0, network_idle=300.0, artim=30.0),
        transfer_syntaxes=(
            "1.2.840.10008.1.2.1",
            "1.2.840.10008.1.2",
            "1.2.840.10008.1.2.1.99",
            "1.2.840.10008.1.2.2",
        ),
        access=Access(check_called_ae=True, calling_aes=()),
        store=Store(accept_unknown_sop_classes=False),
        destinations={},
        plugins=(Plugin("dicomd.archive.ArchiveHandler", {}),),
        workers=os.cpu_count() or 1,  # auto: one per core
    )


def test_workers_auto_is_one_per_core_on_tcp_and_one_elsewhere() -> None:
    assert parse_config({"workers": "auto"}).workers == (os.cpu_count() or 1)
    assert parse_config({"workers": "auto", "listen": "unix:/tmp/dicomd.sock"}).workers == 1
    assert parse_config({"workers": 3}).workers == 3
    with pytest.raises(ConfigError, match="workers: 2 workers need a tcp: or tcp6: listen"):
        parse_config({"workers": 2, "listen": "unix:/tmp/dicomd.sock"})


def test_no_file_means_the_defaults() -> None:
    assert load_config(None) == default_config()


def test_example_file_spells_out_every_key_with_its_default() -> None:
    """Its one difference: the web section, off by default, is on in the example with the
    defaults of its keys."""
    example = yaml.safe_load(EXAMPLE_FILE.read_text())
    assert example["web"] == thaw(EMBEDDED_WEB_DEFAULTS)
    assert {**example, "web": None} == thaw(EMBEDDED_DEFAULTS)


def test_contract_keys_keep_their_values() -> None:
    defaults = thaw(EMBEDDED_DEFAULTS)
    assert {key: defaults[key] for key in CONTRACT} == CONTRACT


def test_example_file_and_embedded_defaults_agree() -> None:
    example = load_config(EXAMPLE_FILE)
    assert dataclasses.replace(example, web=None) == default_config()
    assert example.web == Web() == parse_config({"web": {}}).web
    assert parse_config(CONTRACT) == default_config()
    assert default_config().web is None


def test_every_key_in_the_example_file_has_a_comment_above_it() -> None:
    lines = EXAMPLE_FILE.read_text().splitlines()
    keys = [n for n, line in enumerate(lines) if re.match(r"\s*[a-z_]+:", line)]
    assert len(keys) == count_keys(thaw(EMBEDDED_DEFAULTS)) + count_keys(
        thaw(EMBEDDED_WEB_DEFAULTS)
    )
    for number in keys:
        assert lines[number - 1].lstrip().startswith("#"), lines[number]


def count_keys(settings: object) -> int:
    """The keys of every mapping in ``settings``, nested ones too (lists hold none)."""
    if not isinstance(settings, dict):
        return 0
    return sum(1 + count_keys(value) for value in settings.values())


def test_keys_left_out_take_their_defaults(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text("ae_title: ARCHIVE\nlimits:\n  max_associations: 4\ntimeouts: {artim: 2.5}\n")
    config = load_config(path)
    defaults = default_config()
    assert config.ae_title == "ARCHIVE"
    assert config.limits == dataclasses.replace(defaults.limits, max_associations=4)
    assert config.limits.max_pdu_length == 262144
    assert config.timeouts == Timeouts(acse=30.0, dimse=60.0, network_idle=300.0, artim=2.5)
    assert config.listen == defaults.listen
    assert config.access == defaults.access


def test_an_empty_file_means_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing changed\n")
    assert load_config(path) == default_config()


def test_config_is_frozen() -> None:
    config = default_config()
    with pytest.raises(AttributeError):
        config.ae_title = "OTHER"  # type: ignore[misc]


# Values that are accepted, and how they are normalised


def test_ae_title_loses_its_insignificant_spaces() -> None:
    assert parse_config({"ae_title": " STORE SCP "}).ae_title == "STORE SCP"


def test_sixteen_character_ae_title_is_accepted() -> None:
    assert parse_config({"ae_title": "A" * 16}).ae_title == "A" * 16


def test_calling_aes_with_and_without_hosts() -> None:
    access = parse_config(
        {
            "access": {
                "check_called_ae": False,
                "calling_aes": [
                    "MODALITY1",
                    "WS@10.1.2.3",
                    "PACS@Pacs.Example.org",
                    "V6@0:0:0:0:0:0:0:1",
                    "ODD@NAME@localhost",
                ],
            }
        }
    ).access
    assert access == Access(
        check_called_ae=False,
        calling_aes=(
            CallingAE("MODALITY1"),
            CallingAE("WS", "10.1.2.3"),
            CallingAE("PACS", "pacs.example.org"),
            CallingAE("V6", "::1"),
            CallingAE("ODD@NAME", "localhost"),
        ),
    )


def test_listen_accepts_other_endpoint_types() -> None:
    for description in ("tcp:0:interface=127.0.0.1", "tcp6:11112", "unix:/tmp/dicomd.sock"):
        assert parse_config({"listen": description}).listen == description


def test_listen_is_parsed_but_not_bound() -> None:
    first = parse_config({"listen": "tcp:11112:interface=127.0.0.1"})
    second = parse_config({"listen": "tcp:11112:interface=127.0.0.1"})
    assert first.listen == second.listen


def test_loading_a_config_neither_needs_nor_installs_the_global_reactor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As if no reactor were installed yet: reading must leave the choice to the program."""
    import twisted.internet

    monkeypatch.delitem(sys.modules, "twisted.internet.reactor", raising=False)
    monkeypatch.delattr(twisted.internet, "reactor", raising=False)

    config = load_config(EXAMPLE_FILE)
    assert (
        parse_config({"listen": "tcp6:104:interface=\\:\\:1"}).listen
        == "tcp6:104:interface=\\:\\:1"
    )
    assert error_of({"listen": "tcp:abc"}).key == "listen"

    assert config.web == Web()
    assert "twisted.internet.reactor" not in sys.modules
    assert not hasattr(twisted.internet, "reactor")


def test_timeouts_take_fractions_and_are_floats() -> None:
    timeouts = parse_config({"timeouts": {"acse": 0.5, "dimse": 1}}).timeouts
    assert (timeouts.acse, timeouts.dimse) == (0.5, 1.0)
    assert isinstance(timeouts.dimse, float)


def test_transfer_syntaxes_keep_their_order() -> None:
    order = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.1"]
    assert parse_config({"transfer_syntaxes": order}).transfer_syntaxes == tuple(order)


def test_limits_at_their_bounds() -> None:
    low = parse_config({"limits": {"max_pdu_length": 4096, "max_associations": 1}})
    high = parse_config({"limits": {"max_pdu_length": 16777216, "max_associations": 4096}})
    defaults = default_config().limits
    assert low.limits == dataclasses.replace(defaults, max_pdu_length=4096, max_associations=1)
    assert high.limits == dataclasses.replace(
        defaults, max_pdu_length=16777216, max_associations=4096
    )


# Every kind of mistake: one line, "<key>: <problem>"

MISTAKES = [
    # (settings, key, problem)
    (
        {"limits": {"max_pdu_length": "abc"}},
        "limits.max_pdu_length",
        "expected an integer, got 'abc'",
    ),
    (
        {"limits": {"max_associations": True}},
        "limits.max_associations",
        "expected an integer, got True",
    ),
    (
        {"limits": {"max_pdu_length": 0}},
        "limits.max_pdu_length",
        "must be from 4096 to 16777216, got 0",
    ),
    (
        {"limits": {"max_pdu_length": 4095}},
        "limits.max_pdu_length",
        "must be from 4096 to 16777216, got 4095",
    ),
    (
        {"limits": {"max_pdu_length": 16777217}},
        "limits.max_pdu_length",
        "must be from 4096 to 16777216, got 16777217",
    ),
    (
        {"limits": {"max_pdu_length": 65536.0}},
        "limits.max_pdu_length",
        "expected an integer, got 65536.0",
    ),
    (
        {"limits": {"max_associations": 0}},
        "limits.max_associations",
        "must be from 1 to 4096, got 0",
    ),
    (
        {"timeouts": {"acse": 0}},
        "timeouts.acse",
        "must be a finite number of seconds above 0, got 0",
    ),
    (
        {"timeouts": {"dimse": -1.5}},
        "timeouts.dimse",
        "must be a finite number of seconds above 0, got -1.5",
    ),
    (
        {"timeouts": {"network_idle": float("inf")}},
        "timeouts.network_idle",
        "must be a finite number of seconds above 0, got inf",
    ),
    (
        {"timeouts": {"artim": float("nan")}},
        "timeouts.artim",
        "must be a finite number of seconds above 0, got nan",
    ),
    (
        {"timeouts": {"artim": 10**400}},
        "timeouts.artim",
        "must be a finite number of seconds above 0, got 100000000000000000...0000000000000000000",
    ),
    (
        {"timeouts": {"acse": "30s"}},
        "timeouts.acse",
        "expected a number of seconds, got '30s'",
    ),
    (
        {"timeouts": {"acse": False}},
        "timeouts.acse",
        "expected a number of seconds, got False",
    ),
    ({"ae_title": ""}, "ae_title", "cannot be empty"),
    ({"ae_title": "    "}, "ae_title", "an AE title cannot be empty or all spaces"),
    (
        {"ae_title": "A\\B"},
        "ae_title",
        "an AE title is printable ASCII without backslash, 'A\\\\B' is not",
    ),
    (
        {"ae_title": "A" * 17},
        "ae_title",
        f"an AE title is at most 16 characters, {'A' * 17!r} is longer",
    ),
    (
        {"ae_title": "ÉCHO"},
        "ae_title",
        "an AE title is printable ASCII without backslash, 'ÉCHO' is not",
    ),
    (
        {"ae_title": "TAB\tBED"},
        "ae_title",
        "an AE title is printable ASCII without backslash, 'TAB\\tBED' is not",
    ),
    ({"ae_title": 42}, "ae_title", "expected a string, got 42"),
    ({"listen": 11112}, "listen", "expected a string, got 11112"),
    (
        {"listen": "tcp:abc"},
        "listen",
        "'tcp:abc' is not a Twisted server endpoint: "
        "ValueError: invalid literal for int() with base 10: 'abc'",
    ),
    (
        {"listen": "carrier-pigeon:11112"},
        "listen",
        "'carrier-pigeon:11112' is not a Twisted server endpoint: "
        "ValueError: Unknown endpoint type: 'carrier-pigeon'",
    ),
    ({"storage": {"path": ""}}, "storage.path", "cannot be empty"),
    ({"storage": {"path": None}}, "storage.path", "expected a string, got None"),
    ({"storage": "./var"}, "storage", "expected a mapping, got './var'"),
    (
        {"storage": {"url": "https://bucket/x"}},
        "storage.url",
        "expected s3://bucket or s3://bucket/prefix, got 'https://bucket/x'",
    ),
    (
        {"storage": {"url": "s3:///x"}},
        "storage.url",
        "expected s3://bucket or s3://bucket/prefix, got 's3:///x'",
    ),
    (
        {"storage": {"url": "s3://b/p?versionId=1"}},
        "storage.url",
        "expected no ?query or #fragment, got 's3://b/p?versionId=1'",
    ),
    (
        {"storage": {"endpoint_url": "http://127.0.0.1:9000"}},
        "storage.endpoint_url",
        "is for object storage: set storage.url too",
    ),
    (
        {"storage": {"url": "s3://b", "endpoint_url": "127.0.0.1:9000"}},
        "storage.endpoint_url",
        "expected an http:// or https:// URL, got '127.0.0.1:9000'",
    ),
    (
        {"index": {"url": "mysql://db/dicomd"}},
        "index.url",
        "expected a postgresql:// URL, got 'mysql://db/dicomd'",
    ),
    ({"index": {"url": ""}}, "index.url", "cannot be empty"),
    ({"index": "postgresql://db"}, "index", "expected a mapping, got 'postgresql://db'"),
    ({"limits": None}, "limits", "expected a mapping, got None"),
    ({"timeouts": [30, 60]}, "timeouts", "expected a mapping, got [30, 60]"),
    ({"transfer_syntaxes": []}, "transfer_syntaxes", "needs at least one transfer syntax"),
    (
        {"transfer_syntaxes": "1.2.840.10008.1.2"},
        "transfer_syntaxes",
        "expected a list, got '1.2.840.10008.1.2'",
    ),
    (
        {"transfer_syntaxes": ["1.2.840.10008.1.2", "1.2.3.4"]},
        "transfer_syntaxes[1]",
        "'1.2.3.4' is not a known transfer syntax UID",
    ),
    (
        {"transfer_syntaxes": ["1.2.840.10008.1.1"]},
        "transfer_syntaxes[0]",
        "'1.2.840.10008.1.1' is not a known transfer syntax UID",
    ),
    (
        {"transfer_syntaxes": ["1.2.840.10008.1.2", "1.2.840.10008.1.2"]},
        "transfer_syntaxes[1]",
        "1.2.840.10008.1.2 is listed twice",
    ),
    ({"transfer_syntaxes": [1.2]}, "transfer_syntaxes[0]", "expected a string, got 1.2"),
    (
        {"access": {"check_called_ae": "sometimes"}},
        "access.check_called_ae",
        "expected true or false, got 'sometimes'",
    ),
    ({"access": {"calling_aes": "MOD"}}, "access.calling_aes", "expected a list, got 'MOD'"),
    (
        {"store": {"accept_unknown_sop_classes": 1}},
        "store.accept_unknown_sop_classes",
        "expected true or false, got 1",
    ),
    (
        {"access": {"calling_aes": ["MOD", 7]}},
        "access.calling_aes[1]",
        "expected a string, got 7",
    ),
    (
        {"access": {"calling_aes": ["MOD@"]}},
        "access.calling_aes[0]",
        "'' after '@' is neither an IP address nor a host name",
    ),
    (
        {"access": {"calling_aes": ["@host"]}},
        "access.calling_aes[0]",
        "cannot be empty",
    ),
    (
        {"access": {"calling_aes": ["MOD@bad_host!"]}},
        "access.calling_aes[0]",
        "'bad_host!' after '@' is neither an IP address nor a host name",
    ),
    ({"plugins": None}, "plugins", "expected a list, got None"),
    ({"plugins": ["a.b.C"]}, "plugins[0]", "expected a mapping, got 'a.b.C'"),
    (
        {"plugins": [{}]},
        "plugins[0].plugin",
        "missing: the dotted name of a plugin, like package.module.Name",
    ),
    (
        {"plugins": [{"plugin": "Name"}]},
        "plugins[0].plugin",
        "expected a dotted name like package.module.Name, got 'Name'",
    ),
    (
        {"plugins": [{"plugin": "a.b.C", "options": ["x"]}]},
        "plugins[0].options",
        "expected a mapping, got ['x']",
    ),
    (
        {"plugins": [{"plugin": "a.b.C", "options": {"not valid": 1}}]},
        "plugins[0].options",
        "'not valid' cannot be a keyword argument",
    ),
    (["ae_title"], "(top level)", "expected a mapping, got ['ae_title']"),
    ({"web": 8042}, "web", "expected a mapping, got 8042"),
    (
        {"web": {"listen": "tcp:11112"}},
        "web.listen",
        "'tcp:11112' is the DICOM listen endpoint too",
    ),
    (
        {"web": {"listen": "http:80"}},
        "web.listen",
        "'http:80' is not a Twisted server endpoint: ValueError: Unknown endpoint type: 'http'",
    ),
    (
        {"workers": 2, "web": {"listen": "unix:/run/dicomd.web"}},
        "web.listen",
        "2 workers share a tcp: or tcp6: endpoint, not 'unix:/run/dicomd.web' (or set workers: 1)",
    ),
    ({"web": {"viewer": "/no/such/viewer"}}, "web.viewer", "no such folder: /no/such/viewer"),
    ({"web": {"cors_origins": "any"}}, "web.cors_origins", "expected a list, got 'any'"),
    (
        {"web": {"cors_origins": ["https://viewer.example/app"]}},
        "web.cors_origins[0]",
        "expected an origin like https://viewer.example:8443, got 'https://viewer.example/app'",
    ),
    (
        {"web": {"cors_origins": ["https://user:pw@viewer.example"]}},
        "web.cors_origins[0]",
        "expected an origin like https://viewer.example:8443, got 'https://user:pw@viewer.example'",
    ),
    (
        {"web": {"cors_origins": ["https://viewer.example:port"]}},
        "web.cors_origins[0]",
        "'https://viewer.example:port' has a port that is not a number",
    ),
    (
        {"web": {"max_stow_length": 1000}},
        "web.max_stow_length",
        "must be from 1048576 to 1099511627776, got 1000",
    ),
    ({"web": {"max_stow_length": "1G"}}, "web.max_stow_length", "expected an integer, got '1G'"),
    ({"web": {"max_connections": 0}}, "web.max_connections", "must be from 1 to 16384, got 0"),
]


@pytest.mark.parametrize(("data", "key", "problem"), MISTAKES)
def test_each_mistake_names_its_key_in_one_line(data: Any, key: str, problem: str) -> None:
    error = error_of(data)
    assert (error.key, error.problem) == (key, problem)
    assert str(error) == f"{key}: {problem}"


UNKNOWN_KEYS = [
    ({"ae-title": "X"}, "ae-title"),
    ({"storage": {"path": "x", "quota": 1}}, "storage.quota"),
    ({"limits": {"max_pdu": 1}}, "limits.max_pdu"),
    ({"timeouts": {"release": 1}}, "timeouts.release"),
    ({"access": {"calling_ae": []}}, "access.calling_ae"),
    ({"store": {"accept_unknown": True}}, "store.accept_unknown"),
    ({"plugins": [{"plugin": "a.b.C", "option": {}}]}, "plugins[0].option"),
    ({"web": {"port": 8042}}, "web.port"),
]


@pytest.mark.parametrize(("data", "key"), UNKNOWN_KEYS)
def test_unknown_keys_are_refused_at_every_level(data: Any, key: str) -> None:
    error = error_of(data)
    assert error.key == key
    assert error.problem.startswith("unknown key (expected one of: ")


def test_web_origins_are_kept_as_browsers_send_them() -> None:
    web = parse_config(
        {"web": {"cors_origins": ["HTTPS://Viewer.Example:8443", "http://[::1]:3000/"]}}
    ).web
    assert web is not None
    assert web.cors_origins == {"https://viewer.example:8443", "http://[::1]:3000"}
    assert parse_config({"web": {"cors_origins": "*"}}).web == Web(cors_origins=frozenset("*"))


def test_unknown_key_lists_the_known_ones() -> None:
    assert str(error_of({"timeouts": {"release": 1}})) == (
        "timeouts.release: unknown key (expected one of: acse, dimse, network_idle, artim)"
    )


def test_tls_endpoint_without_its_key_file_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    error = error_of({"listen": f"ssl:2762:privateKey={missing}"})
    assert error.key == "listen"
    assert error.problem.startswith(f"'ssl:2762:privateKey={missing}' is not a Twisted server")


def test_long_values_are_shortened_in_messages() -> None:
    error = error_of({"ae_title": ["X" * 500]})
    assert len(str(error)) < 120


def test_problem_with_line_breaks_becomes_one_line() -> None:
    assert str(ConfigError("listen", "first\n  second\n")) == "listen: first second"


# Mistakes in the file itself


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.yaml"
    assert str(file_error_of(path)) == f"{path}: file not found"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    assert str(file_error_of(tmp_path)) == f"{tmp_path}: cannot read the file: Is a directory"


def test_yaml_syntax_error_is_one_line_with_its_position(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("ae_title: DICOMD\nlimits:\n  max_pdu_length: [1, 2\n")
    error = file_error_of(path)
    assert error.key == str(path)
    assert error.problem.startswith("YAML error at line 4, column 1: ")
    assert "\n" not in str(error)


def test_key_given_twice_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text("listen: tcp:104\nae_title: A\nlisten: tcp:11112\n")
    assert str(file_error_of(path)) == (
        f"{path}: YAML error at line 3, column 1: "
        "while reading a mapping found the key 'listen' a second time"
    )


def test_yaml_values_pyyaml_cannot_build_are_config_errors(tmp_path: Path) -> None:
    path = tmp_path / "date.yaml"
    path.write_text("ae_title: 2024-13-01\n")
    assert str(file_error_of(path)) == f"{path}: YAML error: ValueError: month must be in 1..12"


def test_python_tags_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "tag.yaml"
    path.write_text("ae_title: !!python/object/apply:os.getcwd []\n")
    assert file_error_of(path).problem.startswith("YAML error at line 1, column 11: ")


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- ae_title\n")
    assert str(file_error_of(path)) == f"{path}: expected a mapping of settings, got ['ae_title']"


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("ae_title: ÉCHO\n".encode("latin-1"))
    error = file_error_of(path)
    assert error.key == str(path)
    assert error.problem.startswith("not UTF-8 text: ")


def test_mistake_inside_a_file_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("limits:\n  max_pdu_length: abc\n")
    assert str(file_error_of(path)) == "limits.max_pdu_length: expected an integer, got 'abc'"


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=300)
@given(content=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_file_gives_a_config_or_a_one_line_config_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(content)
    try:
        config = load_config(path)
    except ConfigError as error:
        assert "\n" not in str(error)
    else:
        assert isinstance(config, Config)


SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
SECTION_KEYS = {
    "storage": ["path", "url", "endpoint_url"],
    "index": ["url"],
    "limits": ["max_pdu_length", "max_associations"],
    "timeouts": ["acse", "dimse", "network_idle", "artim"],
    "access": ["check_called_ae", "calling_aes"],
    "store": ["accept_unknown_sop_classes"],
}


@given(
    st.dictionaries(
        st.sampled_from(["ae_title", "listen", "transfer_syntaxes", "junk", *SECTION_KEYS]),
        VALUES
        | st.dictionaries(
            st.sampled_from([*itertools.chain(*SECTION_KEYS.values()), "junk"]), VALUES
        ),
    )
)
def test_any_settings_give_a_config_or_a_one_line_config_error(data: dict[str, Any]) -> None:
    try:
        config = parse_config(data)
    except ConfigError as error:
        assert "\n" not in str(error)
        assert str(error).startswith(error.key + ": ")
    else:
        assert isinstance(config, Config)


# Plugins

_module_numbers = itertools.count()


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Write a module with the given source to a fresh name on sys.path; return its name."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(source: str) -> str:
        name = f"dicomd_test_plugin_{next(_module_numbers)}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        monkeypatch.delitem(sys.modules, name, raising=False)
        return name

    yield write


VALIDATOR_SOURCE = """
    from zope.interface import implementer
    from dicomd.interfaces import ACCEPT, IAssociationValidator

    @implementer(IAssociationValidator)
    class OfficeHours:
        def __init__(self, opens=7, closes=19):
            self.hours = (opens, closes)

        def validate(self, request):
            return ACCEPT

    def office_hours_factory(**options):
        return OfficeHours(**options)

    class Useless:
        pass

    NOT_CALLABLE = 3
"""


def plugins_error_of(entries: list[dict[str, Any]]) -> ConfigError:
    """The error of building plugins that the configuration itself accepts."""
    config = parse_config({"plugins": entries})
    with pytest.raises(ConfigError) as caught:
        build_plugins(config)
    return caught.value


def test_plugin_entry_is_kept_as_written_and_built_with_its_options(plugin_module) -> None:
    module = plugin_module(VALIDATOR_SOURCE)
    config = parse_config(
        {"plugins": [{"plugin": f"{module}.OfficeHours", "options": {"opens": 8, "closes": 18}}]}
    )
    assert config.plugins == (Plugin(f"{module}.OfficeHours", {"opens": 8, "closes": 18}),)
    assert module not in sys.modules
    (instance,) = build_plugins(config)
    assert instance.hours == (8, 18)
    assert providing([instance], IAssociationValidator) == [instance]


def test_plugin_options_default_to_none_and_cannot_be_changed(plugin_module) -> None:
    module = plugin_module(VALIDATOR_SOURCE)
    config = parse_config({"plugins": [{"plugin": f"{module}.OfficeHours"}]})
    (plugin,) = config.plugins
    (instance,) = build_plugins(config)
    assert dict(plugin.options) == {}
    assert instance.hours == (7, 19)
    with pytest.raises(TypeError):
        plugin.options["opens"] = 1  # type: ignore[index]


def test_plugin_may_be_any_callable(plugin_module) -> None:
    module = plugin_module(VALIDATOR_SOURCE)
    config = parse_config({"plugins": [{"plugin": f"{module}.office_hours_factory"}]})
    (instance,) = build_plugins(config)
    assert IAssociationValidator.providedBy(instance)


def test_built_in_short_names_are_resolved_and_the_archive_lives_under_storage_path(
    tmp_path: Path,
) -> None:
    config = parse_config(
        {
            "storage": {"path": str(tmp_path / "archive")},
            "plugins": [
                {"plugin": "archive"},
                {"plugin": "dicomd.archive.ArchiveHandler", "options": {"path": str(tmp_path)}},
                {"plugin": "print"},
            ],
        }
    )
    assert [plugin.path for plugin in config.plugins] == [
        "dicomd.archive.ArchiveHandler",
        "dicomd.archive.ArchiveHandler",
        "dicomd.archive.PrintHandler",
    ]
    assert [dict(plugin.options) for plugin in config.plugins] == [{}, {"path": str(tmp_path)}, {}]
    first, second, printer = build_plugins(config)
    assert isinstance(first, ArchiveHandler)
    assert first.path == tmp_path / "archive"
    assert second.path == tmp_path
    assert isinstance(printer, PrintHandler)


def test_providing_filters_by_interface_and_keeps_order(plugin_module) -> None:
    module = plugin_module(VALIDATOR_SOURCE)
    config = parse_config(
        {
            "plugins": [
                {"plugin": f"{module}.OfficeHours", "options": {"opens": 1}},
                {"plugin": f"{module}.OfficeHours", "options": {"opens": 2}},
            ]
        }
    )
    plugins = build_plugins(config)

    class IUnrelated(Interface):
        """An interface no plugin provides."""

    assert [p.hours[0] for p in providing(plugins, IAssociationValidator)] == [1, 2]
    assert providing(plugins, IUnrelated) == []


def test_plugin_module_that_does_not_exist() -> None:
    error = plugins_error_of([{"plugin": "dicomd_no_such_module.Validator"}])
    assert str(error) == (
        "plugins[0].plugin: cannot import dicomd_no_such_module: "
        "ModuleNotFoundError: No module named 'dicomd_no_such_module'"
    )


def test_plugin_module_that_fails_while_importing(plugin_module) -> None:
    module = plugin_module("import dicomd_missing_dependency\n")
    error = plugins_error_of([{"plugin": f"{module}.Validator"}])
    assert str(error) == (
        f"plugins[0].plugin: cannot import {module}: "
        "ModuleNotFoundError: No module named 'dicomd_missing_dependency'"
    )


def test_plugin_module_that_raises_something_else_while_importing(plugin_module) -> None:
    module = plugin_module("raise RuntimeError('no licence\\nfor this host')\n")
    error = plugins_error_of([{"plugin": f"{module}.Validator"}])
    assert str(error) == (
        f"plugins[0].plugin: cannot import {module}: RuntimeError: no licence for this host"
    )


def test_plugin_attribute_that_does_not_exist(plugin_module) -> None:
    module = plugin_module(VALIDATOR_SOURCE)
    error = plugins_error_of([{"plugin": f"{module}.OfficeHours"}, {"plugin": f"{module}.Nope"}])
    assert str(error) == f"plugins[1].plugin: module {module} has no attribute 'Nope'"


def test_plugin_attribute_that_is_not_callable(plugin_module) -> None:
    module = plugin_module(VALIDATOR_SOURCE)
    error = plugins_error_of([{"plugin": f"{module}.NOT_CALLABLE"}])
    assert str(error) == f"plugins[0].plugin: {module}.NOT_CALLABLE is not callable, got 3"


def test_plugin_constructor_that_raises(plugin_module) -> None:
    module = plugin_module(VALIDATOR_SOURCE)
    error = plugins_error_of([{"plugin": f"{module}.OfficeHours", "options": {"weekends": 1}}])
    assert error.key == "plugins[0].options"
    assert error.problem.startswith(f"{module}.OfficeHours(**options) failed: TypeError: ")
    assert "weekends" in error.problem


def test_plugin_that_provides_no_dicomd_interface(plugin_module) -> None:
    module = plugin_module(VALIDATOR_SOURCE)
    error = plugins_error_of([{"plugin": f"{module}.Useless"}])
    assert str(error) == (
        f"plugins[0].plugin: {module}.Useless(**options) made an object that provides none of: "
        "IAssociationValidator, IStoreHandler, IFindHandler, IRetrieveSource"
    )


def test_reading_a_config_never_imports_a_plugin(plugin_module, tmp_path: Path) -> None:
    marker = tmp_path / "imported"
    module = plugin_module(f"open({str(marker)!r}, 'w').close()\n")
    error = error_of({"limits": {"max_associations": 0}, "plugins": [{"plugin": f"{module}.X"}]})
    assert error.key == "limits.max_associations"
    config = parse_config({"plugins": [{"plugin": f"{module}.X"}]})
    assert not marker.exists()
    assert module not in sys.modules
    with pytest.raises(ConfigError):
        build_plugins(config)
    assert marker.exists()


def test_destinations_are_known_aes_with_host_and_port() -> None:
    config = parse_config(
        {
            "destinations": {
                "STORESCP": {"host": "127.0.0.1", "port": 11113},
                "PACS": {"host": "Pacs.Example.org", "port": 2762},
            }
        }
    )
    assert config.destinations == {
        "STORESCP": Destination("STORESCP", "127.0.0.1", 11113),
        "PACS": Destination("PACS", "pacs.example.org", 2762),
    }
    limited = parse_config(
        {"destinations": {"P": {"host": "h", "port": 1, "max_associations": 2, "tls": True}}}
    )
    assert limited.destinations["P"] == Destination("P", "h", 1, 2, True, None)


@pytest.mark.parametrize(
    ("destinations", "message"),
    [
        ([], "destinations: expected a mapping of AE titles, got []"),
        ({"X": {"host": "h"}}, "destinations.X: needs both host and port"),
        ({"X": {"host": "h", "port": 0}}, "destinations.X.port: "),
        ({"X": {"host": "h", "port": 1, "tls": "yes"}}, "destinations.X.tls: "),
        (
            {"X": {"host": "h", "port": 1, "max_associations": 0}},
            "destinations.X.max_associations: ",
        ),
        (
            {"X": {"host": "h", "port": 1, "ca_certificates": "/no/such.pem"}},
            "destinations.X.ca_certificates: no such file: /no/such.pem",
        ),
        ({"X": {"host": "no way", "port": 1}}, "destinations.X.host: 'no way' is neither"),
    ],
)
def test_bad_destinations_name_the_key(destinations: object, message: str) -> None:
    assert str(error_of({"destinations": destinations})).startswith(message)


def _tls_files(tmp_path: Path) -> dict[str, str]:
    for name in ("server.pem", "server.key", "ca.pem"):
        (tmp_path / name).write_text("PEM")
    return {
        "certificate": str(tmp_path / "server.pem"),
        "private_key": str(tmp_path / "server.key"),
        "ca_certificates": str(tmp_path / "ca.pem"),
    }


def test_a_tls_section_names_its_files_and_the_client_certificate_mode(tmp_path: Path) -> None:
    files = _tls_files(tmp_path)
    config = parse_config(
        {"listen": "tcp:2762", "tls": {**files, "client_certificates": "required"}}
    )
    assert config.tls == TLS(
        certificate=tmp_path / "server.pem",
        private_key=tmp_path / "server.key",
        ca_certificates=tmp_path / "ca.pem",
        client_certificates="required",
    )
    assert parse_config({}).tls is None


@pytest.mark.parametrize(
    ("change", "key", "problem"),
    [
        ({"listen": "unix:/run/dicomd.sock"}, "tls", "needs a tcp: listen endpoint"),
        ({"tls": {"client_certificates": "sometimes"}}, "tls.client_certificates", "not none"),
        ({"tls": {"ca_certificates": None, "client_certificates": "optional"}},
         "tls.ca_certificates", "needed to check client certificates"),
        ({"tls": {"certificate": "/nonexistent.pem"}}, "tls.certificate", "no such file"),
        ({"tls": {"private_key": None}}, "tls.private_key", "missing"),
        ({"tls": {"cipher": "NULL"}}, "tls.cipher", "unknown key"),
    ],
)  # fmt: skip
def test_a_tls_section_that_cannot_work_is_refused(
    tmp_path: Path, change: dict, key: str, problem: str
) -> None:
    settings = {"listen": "tcp:2762", "tls": _tls_files(tmp_path)}
    settings = {**settings, **{k: v for k, v in change.items() if k != "tls"}}
    settings["tls"] = {**settings["tls"], **change.get("tls", {})}
    with pytest.raises(ConfigError) as raised:
        parse_config(settings)
    assert raised.value.key == key and problem in str(raised.value)

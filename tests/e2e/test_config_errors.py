"""A bad configuration stops ``twistd`` with one line that names the key, never a traceback."""

from __future__ import annotations

import pytest

from tests.support.daemons import DEFAULT_CONFIG, deep_merge, write_config


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"limits": {"max_pdu_length": "abc"}}, "max_pdu_length"),
        ({"colour_of_the_bikeshed": "green"}, "colour_of_the_bikeshed"),
        ({"timeouts": {"artim_seconds": 5}}, "artim_seconds"),
        ({"plugins": [{"plugin": "dicomd_no_such_module.Handler"}]}, "plugins[0].plugin"),
        ({"plugins": [{"plugin": "archive", "options": {"colour": 1}}]}, "plugins[0].options"),
        ({"authentication": {"required": True}}, "authentication.required"),
        ({"authorization": [{"peers": ["*"], "may": ["delete"]}]}, "authorization[0].may[0]"),
    ],
)
def test_bad_configuration_stops_the_daemon_with_one_line(tmp_path, twistd, overrides, key):
    config = deep_merge(DEFAULT_CONFIG, {"listen": "tcp:0:interface=127.0.0.1", **overrides})
    result = twistd(write_config(tmp_path, config))

    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert key in lines[0], output

"""``dicomd scp``: a store SCP in the foreground, configured on the command line.

``dicomd scp --port 8104 --print --save ./scp_incoming`` is ``twistd -n dicomd``
with a configuration made of options: they become settings, checked by
``dicomd.config`` as a file's would be, over the values of ``-c FILE`` (or
the built-in defaults, those of ``conf/scp.yaml``), and the result runs as the
very service tree ``twistd`` builds (``dicomd.tap.node_service``).  So the
two behave alike, and everything the options do not cover (limits, access,
TLS, destinations...) is said in the file.

The log goes to stderr in twistd's format; SIGTERM or SIGINT stop the node
cleanly (the archive finishes what it is filing) with exit status 0.
Nothing heavy is imported until the command runs: ``dicomd --help`` stays quick.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from dicomd.cli.arguments import port_number
from dicomd.cli.output import error_line

if TYPE_CHECKING:
    from twisted.application.service import MultiService

    from dicomd.config import Config, ConfigError

COMMAND = "scp"

SAVE_PLUGIN: Final = "dicomd.archive.FolderHandler"
"""The store handler of ``--save``, by the dotted name a configuration file would give."""

_CONFIG_FIELDS: Final = {
    "ae_title": "ae_title",
    "listen": "listen",
    "storage": "storage_path",
    "plugins": "plugins",
}
"""The settings the options give, and the ``Config`` field each one becomes."""


def add_parser(subparsers: Any, command: str, summary: str) -> None:
    parser = subparsers.add_parser(
        command,
        help=summary,
        description=(
            "Receive instances by C-STORE until stopped (Ctrl-C, SIGTERM), logging to stderr."
            " --print, --save and --archive say what to do with each instance, in that"
            " order; when any is given they replace the plugins of the configuration."
            " Peers must call our AE title (--aet)."
        ),
    )
    parser.add_argument(
        "--port",
        type=port_number,
        help="listen on this TCP port, on every interface (default: the configuration's"
        " listen, else 11112)",
    )
    parser.add_argument(
        "--aet",
        metavar="AE",
        help="our AE title (default: the configuration's ae_title, else DICOMD)",
    )
    parser.add_argument(
        "--print",
        dest="print_instances",
        action="store_true",
        help="log one line per received instance: sender, patient, study, SOP class, size",
    )
    parser.add_argument(
        "--save",
        type=Path,
        metavar="DIR",
        help="keep every instance as DIR/<SOP Instance UID>.dcm (a Part 10 file)",
    )
    parser.add_argument(
        "--archive",
        type=Path,
        metavar="DIR",
        help="the full archive in DIR: instances kept and indexed, answering C-FIND,"
        " C-MOVE and C-GET",
    )
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        metavar="FILE",
        help="a configuration file (as conf/scp.yaml) for everything else;"
        " the options above override its values",
    )
    parser.set_defaults(run=main)


def main(arguments: argparse.Namespace) -> int:
    from twisted.internet import reactor

    from dicomd.config import ConfigError
    from dicomd.tap import node_service

    settings, origins = option_settings(arguments)
    try:
        check_folders(arguments)
        config = build_config(settings, arguments.config)
        root = node_service(config, reactor)
    except ConfigError as error:
        return _failed(str(named_by_option(error, origins)))
    return serve(root, reactor)


def option_settings(arguments: argparse.Namespace) -> tuple[dict[str, Any], dict[str, str]]:
    """What the options say, as a configuration file would say it, and which option said each key.

    ``--archive`` (else ``--save``) is also ``storage.path``: received
    instances are written beside the folder that keeps them, so keeping one
    is a rename or a copy on the same file system, and nothing is created
    anywhere else.
    """
    settings: dict[str, Any] = {}
    origins: dict[str, str] = {}
    if arguments.aet is not None:
        settings["ae_title"], origins["ae_title"] = arguments.aet, "--aet"
    if arguments.port is not None:
        settings["listen"], origins["listen"] = f"tcp:{arguments.port}", "--port"
    handlers = [
        (option, entry)
        for option, entry, given in (
            ("--print", {"plugin": "print"}, arguments.print_instances),
            (
                "--save",
                {"plugin": SAVE_PLUGIN, "options": {"path": str(arguments.save)}},
                arguments.save,
            ),
            ("--archive", {"plugin": "archive"}, arguments.archive),
        )
        if given
    ]
    if handlers:
        settings["plugins"] = [entry for _option, entry in handlers]
        origins.update((f"plugins[{index}]", option) for index, (option, _) in enumerate(handlers))
    folder_option = "--archive" if arguments.archive is not None else "--save"
    folder = arguments.archive if arguments.archive is not None else arguments.save
    if folder is not None:
        settings["storage"], origins["storage.path"] = {"path": str(folder)}, folder_option
    return settings, origins


def build_config(settings: dict[str, Any], path: Path | None) -> Config:
    """The values of the file at ``path`` (or the defaults) with ``settings`` over them.

    ``settings`` get the checks a file's values get (``parse_config``);
    raises ``ConfigError`` naming a config key (see `named_by_option`).
    """
    import dataclasses

    from dicomd.config import load_config, parse_config

    given = parse_config(settings)
    return dataclasses.replace(
        load_config(path),
        **{_CONFIG_FIELDS[key]: getattr(given, _CONFIG_FIELDS[key]) for key in settings},
    )


def check_folders(arguments: argparse.Namespace) -> None:
    """``--save`` in the ``--archive`` folder would put files the index does not know into it."""
    from dicomd.config import ConfigError

    if arguments.save is None or arguments.archive is None:
        return
    save, archive = arguments.save.resolve(), arguments.archive.resolve()
    if save == archive or archive in save.parents:
        raise ConfigError("--save", f"{arguments.save} is inside the --archive folder")


def named_by_option(error: ConfigError, origins: dict[str, str]) -> ConfigError:
    """The error under the name of the option that gave its key (``--aet`` for ``ae_title``)."""
    from dicomd.config import ConfigError

    for key, option in origins.items():
        if error.key == key or error.key.startswith(f"{key}."):
            return ConfigError(option, error.problem)
    return error


def serve(root: MultiService, reactor: Any) -> int:
    """Run the node's service tree as ``twistd -n`` does, until SIGTERM or SIGINT; exit status.

    A port that cannot be had ends the process with twistd's own one line
    (see ``dicomd.tap``); a plugin that cannot start ends it with one line too.
    """
    from twisted.application import app as twisted_app
    from twisted.application import service
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from dicomd.config import describe_error

    application = service.Application("dicomd")
    root.setServiceParent(application)
    service.IService(application).privilegedStartService()
    try:
        twisted_app.startApplication(application, save=False)
    except Exception as error:  # a plugin may fail to start in any way; the operator gets one line
        return _failed(f"cannot start: {describe_error(error)}")
    # Twisted keeps the events logged so far until logging begins: on a failed start they are
    # dropped, and the one line above is all the output.
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    reactor.run()
    return 0


def _failed(problem: str) -> int:
    error_line(COMMAND, problem)
    return 1

"""What ``twistd dicomd`` runs: its command-line options and the daemon's service tree.

A configuration mistake ends the process here with one line on stderr and exit
status 1.  ``twistd`` calls ``makeService`` before it starts logging and does
not catch ``SystemExit``, so that line is the whole output: no traceback.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.error import CannotListenError
from twisted.python import usage

from dicomd import app
from dicomd.config import Config, ConfigError, describe_error, load_config


class Options(usage.Options):
    """``twistd dicomd [-c PATH]``."""

    optParameters = [  # noqa: RUF012 (the attribute twisted.python.usage reads)
        [
            "config",
            "c",
            None,
            "YAML configuration file; without it, the built-in defaults"
            " (as in conf/scp.yaml, but with no web: listener).",
        ],
    ]


def makeService(options: Options, reactor: object | None = None) -> MultiService:
    """Load the configuration, prepare the storage folder, build the plugins and the service tree.

    ``reactor`` (``IReactorTime`` and ``IReactorTCP``) defaults to the global one.
    """
    if reactor is None:
        from twisted.internet import reactor
    app.stop_once_on_signals(reactor)
    try:
        return node_service(load_config(options["config"]), reactor, root=_Node())
    except ConfigError as error:
        sys.stderr.write(f"dicomd: {error}\n")
        raise SystemExit(1) from None


def node_service(config: Config, reactor: Any, root: MultiService | None = None) -> MultiService:
    """The daemon's service tree for a checked ``config``, built into ``root`` (a new
    `MultiService` by default); ``dicomd scp`` runs this one too.

    Prepares the storage folder and builds the plugins (raising ``ConfigError``);
    a port that cannot be had stops the process with one line when it starts.
    """
    app.prepare_storage(config)
    plugins = app.build_plugins(config)
    if config.workers > 1:
        from dicomd.fleet.parent import pool_service

        return pool_service(config, reactor, root or MultiService(), plugins)
    return app.service_tree(config, plugins, reactor, listener=_Listener, root=root)


class _Node(MultiService):
    """The daemon's root: a service that cannot start (an archive folder it must not touch)
    stops twistd with one line, like a bad config, instead of a traceback."""

    def startService(self) -> None:
        try:
            super().startService()
        except Exception as error:  # a plugin may fail to start in any way; one line says how
            sys.stderr.write(f"dicomd: cannot start: {describe_error(error)}\n")
            raise SystemExit(1) from None


class _Listener(StreamServerEndpointService):
    """A listening port (``dicom`` or ``web``); one that cannot be had stops twistd with one
    line naming its key, like a bad config."""

    _raiseSynchronously = True

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as error:
            app.stop_on_listen_failure(error, app.LISTEN_KEYS[self.name])

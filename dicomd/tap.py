"""What ``twistd dicomd`` runs: its command-line options and the daemon's service tree.

A configuration mistake ends the process here with one line on stderr and exit
status 1.  ``twistd`` calls ``makeService`` before it starts logging and does
not catch ``SystemExit``, so that line is the whole output: no traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService
from twisted.internet import endpoints
from twisted.internet.error import CannotListenError
from twisted.python import usage

from dicomd.config import Config, ConfigError, load_config
from dicomd.node.factory import DicomServerFactory


class Options(usage.Options):
    """``twistd dicomd [-c PATH]``."""

    optParameters = [  # noqa: RUF012 (the attribute twisted.python.usage reads)
        [
            "config",
            "c",
            None,
            "YAML configuration file; without it, the built-in defaults (as in conf/scp.yaml).",
        ],
    ]


def makeService(options: Options, reactor: object | None = None) -> MultiService:
    """Load the configuration, prepare the storage folder and build the listening service.

    ``reactor`` (``IReactorTime`` and ``IReactorTCP``) defaults to the global one.
    """
    if reactor is None:
        from twisted.internet import reactor
    try:
        config = load_config(options["config"])
        _create_storage(config.storage_path)
    except ConfigError as error:
        sys.stderr.write(f"dicomd: {error}\n")
        raise SystemExit(1) from None
    return _service_tree(config, reactor)


def _create_storage(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError("storage.path", f"cannot create {path}: {error.strerror}") from None


class _Listener(StreamServerEndpointService):
    """The listening port; one that cannot be had stops twistd with one line, like a bad config."""

    _raiseSynchronously = True

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as error:
            where = f"{error.interface or '*'}:{error.port}"
            reason = getattr(error.socketError, "strerror", None) or str(error.socketError)
            sys.stderr.write(f"dicomd: listen: cannot listen on {where}: {reason}\n")
            raise SystemExit(1) from None


def _service_tree(config: Config, reactor: object) -> MultiService:
    """Plugins that are services (the archive opens its index) start before the listener."""
    root = MultiService()
    for plugin in config.plugins_providing(IService):
        plugin.setServiceParent(root)  # type: ignore[attr-defined]
    endpoint = endpoints.serverFromString(reactor, config.listen)
    listener = _Listener(endpoint, DicomServerFactory(config, reactor=reactor))
    listener.setName("dicom")
    listener.setServiceParent(root)
    return root

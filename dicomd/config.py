"""The YAML configuration of dicomd, read once and turned into frozen, typed values.

Every mistake becomes one ``ConfigError`` naming the dotted key and what is
wrong with it, because that single line is all an operator sees when
``twistd`` refuses to start: a traceback would bury the one fact they need.
A key that is left out takes its default, so a site file only says what
differs; ``conf/scp.yaml`` documents every key and holds exactly these defaults.

Reading a configuration has no effect beyond reading: no plugin module is
imported or called and no reactor is installed.  ``dicomd.app`` builds the
plugins and the node from a checked ``Config``.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import reprlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import urlsplit

import yaml

from dicomd.uids import ALL_TRANSFER_SYNTAXES, ae_title_problem

MAX_PDU_LENGTH_RANGE: Final = (4096, 16 * 1024 * 1024)
"""PS3.8 allows up to 2**32 - 1, but every byte of it may be buffered per association."""

MAX_ASSOCIATIONS_RANGE: Final = (1, 4096)

MAX_COMMAND_LENGTH_RANGE: Final = (1024, 16 * 1024 * 1024)

MAX_IDENTIFIER_LENGTH_RANGE: Final = (4096, 256 * 1024 * 1024)
"""Identifiers are a few KiB; each one up to the limit is held in memory and parsed."""
"""A command set is a few hundred bytes; the limit keeps one that never ends from piling up."""

BUILTIN_PLUGINS: Final[Mapping[str, str]] = MappingProxyType(
    {"archive": "dicomd.archive.ArchiveHandler", "print": "dicomd.archive.PrintHandler"}
)
"""Short names of the plugins that ship with dicomd."""

_DEFAULTS: Final[Mapping[str, Any]] = MappingProxyType(
    {
        "ae_title": "DICOMD",
        "listen": "tcp:11112",
        "workers": "auto",
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
        "store": {"accept_unknown_sop_classes": False},
        "query_retrieve": {"relational": "negotiated"},
        "destinations": {},
        "retrieve": {"transcode": "decompress", "decoder_processes": 2},
        "plugins": [{"plugin": "archive"}],
        "tls": None,
        "authentication": {"required": False, "users_file": None, "jwt": None},
        "authorization": None,
        "audit": {
            "file": None,
            "syslog": None,
            "ca_certificates": None,
            "source_id": None,
            "enterprise_site": None,
        },
        "web": None,
    }
)
_OPERATIONS: Final = ("echo", "store", "find", "move", "get")
_TLS_DEFAULTS: Final[Mapping[str, Any]] = MappingProxyType(
    {
        "certificate": None,
        "private_key": None,
        "ca_certificates": None,
        "client_certificates": "none",
    }
)
_JWT_DEFAULTS: Final[Mapping[str, Any]] = MappingProxyType(
    {"secret": None, "public_key": None, "issuer": None, "audience": None, "algorithms": None}
)
_WEB_DEFAULTS: Final[Mapping[str, Any]] = MappingProxyType(
    {
        "listen": "tcp:8042",
        "viewer": None,
        "cors_origins": [],
        "max_stow_length": 1073741824,
        "max_connections": 256,
    }
)
"""The ``web:`` section's keys, for a section that is there (the whole section is off by
default, and on in ``conf/scp.yaml``)."""
MAX_STOW_LENGTH_RANGE: Final = (1 << 20, 1 << 40)
MAX_WEB_CONNECTIONS_RANGE: Final = (1, 16384)
_CLIENT_CERTIFICATE_MODES: Final = ("none", "optional", "required")
_RELATIONAL_MODES: Final = ("never", "negotiated", "always")


_HOST_NAME: Final = re.compile(
    r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\.?",
    re.IGNORECASE,
)
_DOTTED_NAME: Final = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")

_short_repr = reprlib.Repr()
_short_repr.maxstring = 60
_short_repr.maxother = 60


class ConfigError(Exception):
    """A configuration that cannot be used: ``str()`` is one line, ``"<key>: <problem>"``."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = _one_line(key)
        self.problem = _one_line(problem)
        super().__init__(f"{self.key}: {self.problem}")


@dataclass(frozen=True, slots=True)
class Limits:
    max_pdu_length: int
    max_associations: int
    max_associations_per_host: int
    max_associations_per_calling_ae: int
    max_command_length: int
    max_identifier_length: int
    max_identifier_keys: int
    max_inflated_length: int
    max_inflation_ratio: int


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds; what each one bounds is documented in ``conf/scp.yaml``."""

    acse: float
    dimse: float
    network_idle: float
    artim: float


@dataclass(frozen=True, slots=True)
class CallingAE:
    """One allowed peer: an AE title, optionally only from one host (IP address or name)."""

    ae_title: str
    host: str | None = None


@dataclass(frozen=True, slots=True)
class Access:
    check_called_ae: bool
    calling_aes: tuple[CallingAE, ...]


@dataclass(frozen=True, slots=True)
class Store:
    accept_unknown_sop_classes: bool


@dataclass(frozen=True, slots=True)
class QueryRetrieve:
    """C-FIND, C-MOVE and C-GET of the Patient and Study Root models.

    ``relational``: whom relational (non-hierarchical) identifiers are answered for:
    ``never``, the peers that negotiate them (``negotiated``), or every peer (``always``).
    """

    relational: str = "negotiated"


@dataclass(frozen=True, slots=True)
class Destination:
    """A known AE that C-MOVE may send to."""

    ae_title: str
    host: str
    port: int
    max_associations: int | None = None
    tls: bool = False
    ca_certificates: Path | None = None
    decompress: bool = True
    """``transcode: decompress``: instances go decompressed when it accepts none of their
    compressed syntaxes; ``as-stored``: they count as failed."""


@dataclass(frozen=True, slots=True)
class Retrieve:
    """How C-MOVE and C-GET send what the archive keeps compressed; see ``conf/scp.yaml``.

    ``decompress`` is ``transcode: decompress`` for C-GET requesters and for
    destinations without a ``transcode`` of their own.
    """

    decompress: bool = True
    decoder_processes: int = 2


@dataclass(frozen=True, slots=True)
class TLS:
    """DICOM TLS on the ``listen`` endpoint; what each key means is in ``conf/scp.yaml``."""

    certificate: Path
    private_key: Path
    ca_certificates: Path | None
    client_certificates: str


@dataclass(frozen=True, slots=True)
class JWT:
    """How JWT bearer tokens are verified; see ``conf/scp.yaml``."""

    secret: str | None
    public_key: Path | None
    issuer: str
    audience: str
    algorithms: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Authentication:
    """Whether a user identity is required, and the built-in ways to verify one."""

    required: bool = False
    users_file: Path | None = None
    jwt: JWT | None = None


@dataclass(frozen=True, slots=True)
class AuthorizationRule:
    """Peers (``*``, ``AE``, ``AE@host``, ``user:NAME``, ``subject:DN``) and what they may do
    (echo, store, find, get, move, or ``move:AE`` for one destination)."""

    peers: tuple[str, ...]
    may: frozenset[str]


@dataclass(frozen=True, slots=True)
class SyslogCollector:
    """Where audit records go by syslog: ``udp`` (RFC 5426) or ``tls`` (RFC 5425)."""

    transport: str
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Audit:
    """The audit trail (PS3.15 A.5): a local file, a syslog collector, both or neither.

    ``ca_certificates`` checks a ``tls`` collector (None: the system's trust);
    ``source_id`` is AuditSourceID (None: the AE title).
    """

    file: Path | None = None
    syslog: SyslogCollector | None = None
    ca_certificates: Path | None = None
    source_id: str | None = None
    enterprise_site: str | None = None


@dataclass(frozen=True, slots=True)
class Web:
    """The HTTP listener: DICOMweb under ``/dicom-web``, ``/metrics``, the viewer at ``/``."""

    listen: str = "tcp:8042"
    viewer: Path | None = None
    """The folder of the OHIF viewer's files (``dist/``), or None for no viewer."""
    cors_origins: frozenset[str] = frozenset()
    """Origins (``https://host[:port]``) whose pages may read the answers; ``*`` for any."""
    max_stow_length: int = 1073741824
    """Bytes of a request body (a STOW-RS) past which it is refused, 413."""
    max_connections: int = 256
    """HTTP connections open at once in each serving process; past it, 503."""


@dataclass(frozen=True, slots=True)
class Plugin:
    """A plugin as the file names it: the dotted name of a callable and its keyword arguments.

    ``path`` is already resolved from a built-in short name (``archive``,
    ``print``); nothing is imported until ``dicomd.app.build_plugins``.
    """

    path: str
    options: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Config:
    ae_title: str
    listen: str
    storage_path: Path
    limits: Limits
    timeouts: Timeouts
    transfer_syntaxes: tuple[str, ...]
    access: Access
    store: Store
    destinations: Mapping[str, Destination]
    plugins: tuple[Plugin, ...]
    tls: TLS | None = None
    retrieve: Retrieve = Retrieve()
    authentication: Authentication = Authentication()
    authorization: tuple[AuthorizationRule, ...] | None = None
    audit: Audit = Audit()
    workers: int = 1
    """Processes serving the node: ``auto`` in the file is one per core."""
    query_retrieve: QueryRetrieve = QueryRetrieve()
    storage_url: str | None = None
    """Object storage (``s3://bucket/prefix``) that keeps the instances instead of files."""
    storage_endpoint_url: str | None = None
    """The S3-compatible server of ``storage_url``, when it is not AWS."""
    index_url: str | None = None
    """The PostgreSQL database of the index, instead of SQLite under ``storage_path``."""
    web: Web | None = None
    """The HTTP listener, None (the section left out) for none."""


def default_config() -> Config:
    """The embedded defaults: the same values as ``conf/scp.yaml``."""
    return parse_config({})


def load_config(path: str | Path | None) -> Config:
    """Read and check a YAML file; ``None`` gives the embedded defaults.

    Raises ``ConfigError`` and nothing else; for problems with the file itself
    (missing, unreadable, not YAML) the error's key is the file name.
    """
    if path is None:
        return default_config()
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(name, "file not found") from None
    except OSError as error:
        raise ConfigError(name, f"cannot read the file: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(name, f"not UTF-8 text: {error}") from None
    try:
        document = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as error:
        raise ConfigError(name, _describe_yaml_error(error)) from None
    except Exception as error:  # PyYAML's constructors also raise ValueError, RecursionError...
        raise ConfigError(name, f"YAML error: {describe_error(error)}") from None
    if document is None:
        document = {}
    if not isinstance(document, Mapping):
        raise ConfigError(name, f"expected a mapping of settings, got {short_repr(document)}")
    return parse_config(document)


def parse_config(data: Mapping[str, Any]) -> Config:
    """Check already-parsed settings (keys left out take their defaults) and build a ``Config``.

    Plugin entries are checked for their shape only: their modules are
    neither imported nor called here.
    """
    settings = _with_defaults(data, "", _DEFAULTS)
    storage = _with_defaults(settings["storage"], "storage", _DEFAULTS["storage"])
    limits = _with_defaults(settings["limits"], "limits", _DEFAULTS["limits"])
    timeouts = _with_defaults(settings["timeouts"], "timeouts", _DEFAULTS["timeouts"])
    access = _with_defaults(settings["access"], "access", _DEFAULTS["access"])
    store = _with_defaults(settings["store"], "store", _DEFAULTS["store"])
    storage_path = Path(_text(storage["path"], "storage.path"))
    index = _with_defaults(settings["index"], "index", _DEFAULTS["index"])
    storage_url = _optional(storage["url"], "storage.url", _object_storage_url)
    endpoint_url = _optional(storage["endpoint_url"], "storage.endpoint_url", _endpoint_url)
    if endpoint_url is not None and storage_url is None:
        raise ConfigError("storage.endpoint_url", "is for object storage: set storage.url too")
    retrieve = _retrieve(settings["retrieve"])
    workers = _workers(settings["workers"], settings["listen"])
    return Config(
        ae_title=_ae_title(settings["ae_title"], "ae_title"),
        listen=_server_endpoint(settings["listen"], "listen"),
        workers=workers,
        storage_path=storage_path,
        storage_url=storage_url,
        storage_endpoint_url=endpoint_url,
        index_url=_optional(index["url"], "index.url", _database_url),
        limits=Limits(
            max_pdu_length=_integer(
                limits["max_pdu_length"], "limits.max_pdu_length", MAX_PDU_LENGTH_RANGE
            ),
            max_associations=_integer(
                limits["max_associations"], "limits.max_associations", MAX_ASSOCIATIONS_RANGE
            ),
            max_associations_per_host=_integer(
                limits["max_associations_per_host"],
                "limits.max_associations_per_host",
                MAX_ASSOCIATIONS_RANGE,
            ),
            max_associations_per_calling_ae=_integer(
                limits["max_associations_per_calling_ae"],
                "limits.max_associations_per_calling_ae",
                MAX_ASSOCIATIONS_RANGE,
            ),
            max_command_length=_integer(
                limits["max_command_length"],
                "limits.max_command_length",
                MAX_COMMAND_LENGTH_RANGE,
            ),
            max_identifier_length=_integer(
                limits["max_identifier_length"],
                "limits.max_identifier_length",
                MAX_IDENTIFIER_LENGTH_RANGE,
            ),
            max_identifier_keys=_integer(
                limits["max_identifier_keys"], "limits.max_identifier_keys", (16, 1 << 20)
            ),
            max_inflated_length=_integer(
                limits["max_inflated_length"], "limits.max_inflated_length", (1 << 20, 1 << 40)
            ),
            max_inflation_ratio=_integer(
                limits["max_inflation_ratio"], "limits.max_inflation_ratio", (2, 1_000_000)
            ),
        ),
        timeouts=Timeouts(
            **{name: _seconds(value, f"timeouts.{name}") for name, value in timeouts.items()}
        ),
        transfer_syntaxes=_transfer_syntaxes(settings["transfer_syntaxes"], "transfer_syntaxes"),
        access=Access(
            check_called_ae=_boolean(access["check_called_ae"], "access.check_called_ae"),
            calling_aes=tuple(
                _calling_ae(entry, f"access.calling_aes[{index}]")
                for index, entry in enumerate(_list(access["calling_aes"], "access.calling_aes"))
            ),
        ),
        store=Store(
            accept_unknown_sop_classes=_boolean(
                store["accept_unknown_sop_classes"], "store.accept_unknown_sop_classes"
            )
        ),
        destinations=_destinations(settings["destinations"], "destinations", retrieve.decompress),
        retrieve=retrieve,
        plugins=tuple(
            _plugin(entry, f"plugins[{index}]")
            for index, entry in enumerate(_list(settings["plugins"], "plugins"))
        ),
        tls=_tls(settings["tls"], settings["listen"]),
        authentication=_authentication(settings["authentication"]),
        authorization=_authorization(settings["authorization"], "authorization"),
        audit=_audit(settings["audit"]),
        query_retrieve=_query_retrieve(settings["query_retrieve"]),
        web=_web(settings["web"], settings["listen"], workers),
    )


def _web(value: object, listen: object, workers: int) -> Web | None:
    """The ``web:`` section: None when it is left out (or ``~``)."""
    if value is None:
        return None
    fields = _with_defaults(value, "web", _WEB_DEFAULTS)
    web_listen = _server_endpoint(fields["listen"], "web.listen")
    if web_listen == listen:
        raise ConfigError("web.listen", f"{web_listen!r} is the DICOM listen endpoint too")
    if workers > 1 and not web_listen.lower().startswith(("tcp:", "tcp6:")):
        raise ConfigError(
            "web.listen",
            f"{workers} workers share a tcp: or tcp6: endpoint, not {web_listen!r}"
            " (or set workers: 1)",
        )
    viewer = fields["viewer"]
    return Web(
        listen=web_listen,
        viewer=None if viewer is None else _existing_folder(viewer, "web.viewer"),
        cors_origins=_origins(fields["cors_origins"], "web.cors_origins"),
        max_stow_length=_integer(
            fields["max_stow_length"], "web.max_stow_length", MAX_STOW_LENGTH_RANGE
        ),
        max_connections=_integer(
            fields["max_connections"], "web.max_connections", MAX_WEB_CONNECTIONS_RANGE
        ),
    )


def _origins(value: object, key: str) -> frozenset[str]:
    """``"*"`` (any origin), or a list of origins as browsers send them: ``scheme://host``
    with an optional port, nothing after it; each in lower case."""
    if value == "*":
        return frozenset({"*"})
    origins = set()
    for index, entry in enumerate(_list(value, key)):
        entry_key = f"{key}[{index}]"
        origin = _text(entry, entry_key)
        if origin == "*":
            origins.add(origin)
            continue
        parts = urlsplit(origin)
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.username is not None
            or parts.password is not None
            or origin.rstrip("/").lower() != f"{parts.scheme}://{parts.netloc}".lower()
        ):
            raise ConfigError(
                entry_key, f"expected an origin like https://viewer.example:8443, got {origin!r}"
            )
        try:
            parts.port  # noqa: B018 (urlsplit checks the port only when it is read)
        except ValueError:
            raise ConfigError(entry_key, f"{origin!r} has a port that is not a number") from None
        origins.add(f"{parts.scheme}://{parts.netloc}".lower())
    return frozenset(origins)


def _query_retrieve(value: object) -> QueryRetrieve:
    fields = _with_defaults(value, "query_retrieve", _DEFAULTS["query_retrieve"])
    relational = _text(fields["relational"], "query_retrieve.relational")
    if relational not in _RELATIONAL_MODES:
        raise ConfigError(
            "query_retrieve.relational", f"{relational!r} is not never, negotiated or always"
        )
    return QueryRetrieve(relational=relational)


WORKERS_RANGE: Final = (1, 64)


def _workers(value: object, listen: object) -> int:
    """How many processes serve the node: ``auto`` is one per core when the listener is TCP
    (it can be shared), else 1; a number above 1 needs a TCP listener."""
    tcp = str(listen).lower().startswith(("tcp:", "tcp6:"))
    if value == "auto":
        return min(os.cpu_count() or 1, WORKERS_RANGE[1]) if tcp else 1
    workers = _integer(value, "workers", WORKERS_RANGE)
    if workers > 1 and not tcp:
        raise ConfigError("workers", f"{workers} workers need a tcp: or tcp6: listen endpoint")
    return workers


_SYSLOG_PORTS: Final[Mapping[str, int]] = MappingProxyType({"udp": 514, "tls": 6514})


def _audit(value: object) -> Audit:
    fields = _with_defaults(value, "audit", _DEFAULTS["audit"])
    file = fields["file"]
    return Audit(
        file=Path(_text(file, "audit.file")) if file is not None else None,
        syslog=_syslog(fields["syslog"], "audit.syslog") if fields["syslog"] else None,
        ca_certificates=_certificates(fields["ca_certificates"], "audit.ca_certificates"),
        source_id=_text(fields["source_id"], "audit.source_id") if fields["source_id"] else None,
        enterprise_site=(
            _text(fields["enterprise_site"], "audit.enterprise_site")
            if fields["enterprise_site"]
            else None
        ),
    )


def _syslog(value: object, key: str) -> SyslogCollector:
    """``udp://host[:port]`` or ``tls://host[:port]``; the ports default to 514 and 6514."""
    text = _text(value, key)
    transport, separator, rest = text.partition("://")
    if not separator or transport not in _SYSLOG_PORTS:
        raise ConfigError(key, f"{text!r} is not udp://host[:port] or tls://host[:port]")
    host, colon, port = rest.rpartition(":") if ":" in rest else (rest, "", "")
    number = _SYSLOG_PORTS[transport]
    if colon:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(key, f"{port!r} is not a port number")
        number = int(port)
    return SyslogCollector(transport, _host(host, key, ""), number)


def _authorization(value: object, key: str) -> tuple[AuthorizationRule, ...] | None:
    """The rules, in order; None (the key left out) lets every peer do everything."""
    if value is None:
        return None
    rules = []
    for index, entry in enumerate(_list(value, key)):
        rule_key = f"{key}[{index}]"
        fields = _with_defaults(entry, rule_key, {"peers": None, "may": None})
        peers = tuple(
            _text(peer, f"{rule_key}.peers[{number}]")
            for number, peer in enumerate(_list(fields["peers"] or [], f"{rule_key}.peers"))
        )
        if not peers:
            raise ConfigError(f"{rule_key}.peers", "names no peer ('*' names every peer)")
        may = frozenset(
            _operation(operation, f"{rule_key}.may[{number}]")
            for number, operation in enumerate(_list(fields["may"] or [], f"{rule_key}.may"))
        )
        rules.append(AuthorizationRule(peers, may))
    return tuple(rules)


def _operation(value: object, key: str) -> str:
    operation = _text(value, key)
    if operation in _OPERATIONS:
        return operation
    kind, _, destination = operation.partition(":")
    if kind == "move" and destination:
        return f"move:{_ae_title(destination, key)}"
    raise ConfigError(key, f"{operation!r} is none of {', '.join(_OPERATIONS)} or move:AE")


def _authentication(value: object) -> Authentication:
    fields = _with_defaults(value, "authentication", _DEFAULTS["authentication"])
    users_file = fields["users_file"]
    return Authentication(
        required=_boolean(fields["required"], "authentication.required"),
        users_file=None
        if users_file is None
        else Path(_text(users_file, "authentication.users_file")),
        jwt=_jwt(fields["jwt"], "authentication.jwt"),
    )


def _jwt(value: object, key: str) -> JWT | None:
    """Bearer tokens signed with a shared secret (HS256) or a public key file (RS256,
    ES256), naming an issuer and an audience."""
    if value is None:
        return None
    fields = _with_defaults(value, key, _JWT_DEFAULTS)
    if (fields["secret"] is None) == (fields["public_key"] is None):
        raise ConfigError(key, "needs one of secret and public_key")
    for required in ("issuer", "audience"):
        if fields[required] is None:
            raise ConfigError(f"{key}.{required}", "missing: tokens must name it")
    public_key = (
        None
        if fields["public_key"] is None
        else _existing_file(fields["public_key"], f"{key}.public_key")
    )
    default_algorithms = ["HS256"] if public_key is None else ["RS256", "ES256"]
    algorithms = tuple(
        _text(entry, f"{key}.algorithms[{index}]")
        for index, entry in enumerate(
            _list(fields["algorithms"] or default_algorithms, f"{key}.algorithms")
        )
    )
    if "none" in (name.lower() for name in algorithms):
        raise ConfigError(f"{key}.algorithms", "'none' would accept unsigned tokens")
    return JWT(
        secret=None if fields["secret"] is None else _text(fields["secret"], f"{key}.secret"),
        public_key=public_key,
        issuer=_text(fields["issuer"], f"{key}.issuer"),
        audience=_text(fields["audience"], f"{key}.audience"),
        algorithms=algorithms,
    )


def _tls(value: object, listen: str) -> TLS | None:
    """The ``tls:`` section: files that exist, a mode that is one of the three, and a
    ``tcp:`` listen endpoint for it to wrap."""
    if value is None:
        return None
    fields = _with_defaults(value, "tls", _TLS_DEFAULTS)
    if not str(listen).lower().startswith("tcp:"):
        raise ConfigError("tls", f"needs a tcp: listen endpoint to serve TLS on, not {listen!r}")
    mode = _text(fields["client_certificates"], "tls.client_certificates")
    if mode not in _CLIENT_CERTIFICATE_MODES:
        raise ConfigError("tls.client_certificates", f"{mode!r} is not none, optional or required")
    for required in ("certificate", "private_key"):
        if fields[required] is None:
            raise ConfigError(f"tls.{required}", "missing: a PEM file is needed")
    authorities = _certificates(fields["ca_certificates"], "tls.ca_certificates")
    if mode != "none" and authorities is None:
        raise ConfigError("tls.ca_certificates", f"needed to check client certificates ({mode})")
    return TLS(
        certificate=_existing_file(fields["certificate"], "tls.certificate"),
        private_key=_existing_file(fields["private_key"], "tls.private_key"),
        ca_certificates=authorities,
        client_certificates=mode,
    )


class _StrictLoader(yaml.SafeLoader):
    """A safe loader that refuses a key given twice, where PyYAML would keep the last silently."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[tuple[str, str]] = set()
        for key_node, _value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            if (key_node.tag, key_node.value) in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"found the key {key_node.value!r} a second time",
                    key_node.start_mark,
                )
            seen.add((key_node.tag, key_node.value))
        return super().construct_mapping(node, deep=deep)


def _describe_yaml_error(error: yaml.YAMLError) -> str:
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        what = " ".join(part for part in (error.context, error.problem) if part)
        return f"YAML error at line {mark.line + 1}, column {mark.column + 1}: {what}"
    return f"YAML error: {error}"


def _with_defaults(value: object, key: str, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The mapping at ``key`` with every missing entry taken from ``defaults``."""
    if not isinstance(value, Mapping):
        raise ConfigError(key or "(top level)", f"expected a mapping, got {short_repr(value)}")
    for name in value:
        if name not in defaults:
            raise ConfigError(
                _join(key, name), f"unknown key (expected one of: {', '.join(defaults)})"
            )
    return {**defaults, **value}


def _ae_title(value: object, key: str) -> str:
    """An AE title with its non-significant leading and trailing spaces removed (PS3.5 6.2)."""
    text = _text(value, key)
    problem = ae_title_problem(text)
    if problem is not None:
        raise ConfigError(key, problem)
    return text.strip(" ")


class _UnusedReactor:
    """Stands in for a reactor while a listen description is parsed: the endpoint only keeps it.

    Parsing with the global reactor would import, and so install, one:
    a library that merely reads a configuration must not choose its reactor.
    """


def _server_endpoint(value: object, key: str) -> str:
    """A description Twisted can turn into a server endpoint; it is parsed, never bound."""
    from twisted.internet.endpoints import serverFromString

    description = _text(value, key)
    try:
        serverFromString(_UnusedReactor(), description)
    except Exception as error:  # any failure of Twisted's parsers means "unusable here"
        raise ConfigError(
            key, f"{description!r} is not a Twisted server endpoint: {describe_error(error)}"
        ) from None
    return description


def _transfer_syntaxes(value: object, key: str) -> tuple[str, ...]:
    uids = tuple(_text(entry, f"{key}[{index}]") for index, entry in enumerate(_list(value, key)))
    if not uids:
        raise ConfigError(key, "needs at least one transfer syntax")
    for index, uid in enumerate(uids):
        if uid not in ALL_TRANSFER_SYNTAXES:
            raise ConfigError(f"{key}[{index}]", f"{uid!r} is not a known transfer syntax UID")
        if uid in uids[:index]:
            raise ConfigError(f"{key}[{index}]", f"{uid} is listed twice")
    return uids


def _calling_ae(value: object, key: str) -> CallingAE:
    """``"AE"`` or ``"AE@host"``; the last ``@`` separates the host."""
    text = _text(value, key)
    if "@" not in text:
        return CallingAE(_ae_title(text, key))
    ae_title, _, host = text.rpartition("@")
    return CallingAE(_ae_title(ae_title, key), _host(host, key))


def _host(text: str, key: str, where: str = " after '@'") -> str:
    """An IP address in its canonical form, or a host name in lower case."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if not _HOST_NAME.fullmatch(text):
        raise ConfigError(key, f"{text!r}{where} is neither an IP address nor a host name")
    return text.lower()


def _certificates(value: object, key: str) -> Path | None:
    """A PEM file of the certificates to trust, or None for the system's own."""
    if value is None:
        return None
    return _existing_file(value, key)


def _existing_file(value: object, key: str) -> Path:
    path = Path(_text(value, key))
    if not path.is_file():
        raise ConfigError(key, f"no such file: {path}")
    return path


def _existing_folder(value: object, key: str) -> Path:
    path = Path(_text(value, key))
    if not path.is_dir():
        raise ConfigError(key, f"no such folder: {path}")
    return path


def _destinations(value: object, key: str, decompress: bool) -> Mapping[str, Destination]:
    """AE title -> {host, port, max_associations, tls, ca_certificates, transcode}: where C-MOVE
    may send; ``decompress`` for those without a ``transcode`` of their own."""
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"expected a mapping of AE titles, got {short_repr(value)}")
    destinations: dict[str, Destination] = {}
    for name, entry in value.items():
        entry_key = _join(key, name)
        ae_title = _ae_title(name, entry_key)
        fields = _with_defaults(
            entry,
            entry_key,
            {
                "host": None,
                "port": None,
                "max_associations": None,
                "tls": False,
                "ca_certificates": None,
                "transcode": None,
            },
        )
        if fields["host"] is None or fields["port"] is None:
            raise ConfigError(entry_key, "needs both host and port")
        destinations[ae_title] = Destination(
            ae_title=ae_title,
            host=_host(_text(fields["host"], f"{entry_key}.host"), f"{entry_key}.host", ""),
            port=_integer(fields["port"], f"{entry_key}.port", (1, 65535)),
            max_associations=(
                None
                if fields["max_associations"] is None
                else _integer(
                    fields["max_associations"],
                    f"{entry_key}.max_associations",
                    MAX_ASSOCIATIONS_RANGE,
                )
            ),
            tls=_boolean(fields["tls"], f"{entry_key}.tls"),
            ca_certificates=_certificates(
                fields["ca_certificates"], f"{entry_key}.ca_certificates"
            ),
            decompress=(
                decompress
                if fields["transcode"] is None
                else _decompresses(fields["transcode"], f"{entry_key}.transcode")
            ),
        )
    return MappingProxyType(destinations)


_TRANSCODE_CHOICES: Final = MappingProxyType({"decompress": True, "as-stored": False})


def _retrieve(value: object) -> Retrieve:
    fields = _with_defaults(value, "retrieve", _DEFAULTS["retrieve"])
    return Retrieve(
        decompress=_decompresses(fields["transcode"], "retrieve.transcode"),
        decoder_processes=_integer(
            fields["decoder_processes"], "retrieve.decoder_processes", (0, 64)
        ),
    )


def _decompresses(value: object, key: str) -> bool:
    """``transcode``: decompress (True) or as-stored (False)."""
    choice = _text(value, key)
    if choice not in _TRANSCODE_CHOICES:
        raise ConfigError(key, f"{choice!r} is not decompress or as-stored")
    return _TRANSCODE_CHOICES[choice]


def _plugin(value: object, key: str) -> Plugin:
    """``plugin`` (a dotted name or a built-in's short name) and ``options`` (keyword arguments).

    Only the shape is checked; ``dicomd.app.build_plugins`` imports and calls it.
    """
    entry = _with_defaults(value, key, {"plugin": None, "options": {}})
    options = entry["options"]
    if not isinstance(options, Mapping):
        raise ConfigError(f"{key}.options", f"expected a mapping, got {short_repr(options)}")
    for name in options:
        if not (isinstance(name, str) and name.isidentifier()):
            raise ConfigError(f"{key}.options", f"{name!r} cannot be a keyword argument")
    name = entry["plugin"]
    path = BUILTIN_PLUGINS.get(name) if isinstance(name, str) else None
    return Plugin(path or _factory_path(name, f"{key}.plugin"), MappingProxyType(dict(options)))


def _factory_path(value: object, key: str) -> str:
    if value is None:
        raise ConfigError(key, "missing: the dotted name of a plugin, like package.module.Name")
    path = _text(value, key)
    if not _DOTTED_NAME.fullmatch(path):
        raise ConfigError(key, f"expected a dotted name like package.module.Name, got {path!r}")
    return path


def _optional(value: object, key: str, check: Callable[[object, str], str]) -> str | None:
    """``None`` for a key left unset (``~`` in YAML), else the value ``check`` accepts."""
    return None if value is None else check(value, key)


def _object_storage_url(value: object, key: str) -> str:
    url = _text(value, key)
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ConfigError(key, f"expected s3://bucket or s3://bucket/prefix, got {url!r}")
    if parts.query or parts.fragment:
        raise ConfigError(key, f"expected no ?query or #fragment, got {url!r}")
    return url


def _endpoint_url(value: object, key: str) -> str:
    url = _text(value, key)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(key, f"expected an http:// or https:// URL, got {url!r}")
    return url


def _database_url(value: object, key: str) -> str:
    url = _text(value, key)
    if urlsplit(url).scheme not in ("postgresql", "postgres"):
        raise ConfigError(key, f"expected a postgresql:// URL, got {url!r}")
    return url


def _text(value: object, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, f"expected a string, got {short_repr(value)}")
    if not value:
        raise ConfigError(key, "cannot be empty")
    return value


def _integer(value: object, key: str, bounds: tuple[int, int]) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"expected an integer, got {short_repr(value)}")
    low, high = bounds
    if not low <= value <= high:
        raise ConfigError(key, f"must be from {low} to {high}, got {value}")
    return value


def _seconds(value: object, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(key, f"expected a number of seconds, got {short_repr(value)}")
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(
            key, f"must be a finite number of seconds above 0, got {short_repr(value)}"
        )
    return seconds


def _boolean(value: object, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, f"expected true or false, got {short_repr(value)}")
    return value


def _list(value: object, key: str) -> Sequence[object]:
    if not isinstance(value, list | tuple):
        raise ConfigError(key, f"expected a list, got {short_repr(value)}")
    return value


def _join(key: str, name: object) -> str:
    return f"{key}.{name}" if key else str(name)


def short_repr(value: object) -> str:
    """``repr(value)``, cut short enough for a one-line message."""
    return _short_repr.repr(value)


def describe_error(error: BaseException) -> str:
    """``"TypeName: message"``, or the type's name alone when the message is empty."""
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _one_line(text: str) -> str:
    return " ".join(text.split())

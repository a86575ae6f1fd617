"""Test your dicomd plugins without sockets: an in-memory node, a client, and value helpers.

`MemoryNode` is a real dicomd node (the factory `dicomd.app.node_factory`
builds for the daemon) serving the plugin objects you give it, on a
`twisted.internet.task.Clock`.  Its clients are real requestors
(`dicomd.client.ClientAssociation`) connected to it through
`twisted.test.iosim`: bytes move only when the node is flushed, and time
moves only when it is advanced, so a test runs start to finish on one thread
with no reactor.  Nothing is faked but the transport and the clock: the
association negotiation, the DIMSE services, the streaming of data sets and
the calls to your plugins are the daemon's own code::

    node = MemoryNode([MyStoreHandler()], storage_path=tmp_path)
    association = node.associate([CT_IMAGE_STORAGE])
    assert node.result(association.store(dataset)).status == 0x0000

A plugin can also be called directly with the values the node would give
it: `received_instance` writes a Part 10 file as the storage service does
and returns the `ReceivedInstance` describing it, and `find_query` makes the
`FindQuery` that find handlers and retrieve sources get.

Everything runs on the clock, including what a plugin schedules with it; a
plugin that hands work to a thread (``deferToThread``) needs a running
reactor instead, and its Deferred never fires here.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, TypeVar, Unpack

from pydicom import Dataset
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, IOPump, connect

from dicomd import uids
from dicomd.app import node_factory
from dicomd.audit.trail import AuditTrail
from dicomd.client import ClientAssociation, ClientSettings, propose
from dicomd.config import Config, default_config
from dicomd.dimse.datasets import encode_dataset
from dicomd.interfaces import FindQuery, IStoreHandler, ReceivedInstance
from dicomd.node.acceptor import Acceptor
from dicomd.node.factory import DicomServerFactory
from dicomd.part10 import PREAMBLE, file_meta
from dicomd.scu.connect import requestor_protocol
from dicomd.ul.pdu import PresentationContextRQ
from dicomd.ul.protocol import UpperLayerProtocol

__all__ = [
    "TEST_AE_TITLE",
    "TEST_HOST",
    "ClientOptions",
    "Connection",
    "MemoryNode",
    "NotFiredError",
    "find_query",
    "received_instance",
    "result_of",
]

_T = TypeVar("_T")

TEST_AE_TITLE = "TESTSCU"
"""The calling AE title of the test clients, unless told otherwise."""

TEST_HOST = "127.0.0.1"
"""The address the node sees its test clients connect from."""

_NODE_PORT = 11112
_QR_MODELS = frozenset(uids.QUERY_RETRIEVE_LEVELS)


class NotFiredError(AssertionError):
    """`result_of` was asked for the result of a Deferred that has not fired yet."""


def result_of(deferred: defer.Deferred[_T]) -> _T:
    """The result of a Deferred that has already fired; its exception if it failed.

    Raises `NotFiredError` if it has not fired: in a `MemoryNode` test, that
    usually means the node was not flushed, or that something is waiting
    for the clock to be advanced (a timeout) or for a thread.  A failure is
    consumed here and raised again, so ``pytest.raises`` sees it and Twisted
    does not log it as unhandled.
    """
    outcome: list[_T | Failure] = []
    asking = [True]

    def keep(value: _T | Failure) -> _T | Failure | None:
        if not asking[0]:
            return value  # fired after we gave up: left as it is for the next to ask
        outcome.append(value)
        return None if isinstance(value, Failure) else value

    deferred.addBoth(keep)
    asking[0] = False
    if not outcome:
        raise NotFiredError(f"{deferred!r} has not fired yet")
    (value,) = outcome
    if isinstance(value, Failure):
        value.raiseException()
    return value  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class Connection:
    """One client connected to a `MemoryNode`, with both of its ends."""

    association: ClientAssociation
    """The requesting side: ``echo``, ``store``, ``find``, ``move``, ``get``, ``release``..."""

    client: UpperLayerProtocol
    """The requestor's upper layer protocol."""

    server: UpperLayerProtocol
    """The node's protocol for this connection, as the daemon's factory built it."""

    pump: IOPump
    """Moves the bytes between the two; `MemoryNode.flush` pumps every connection."""

    @property
    def acceptor(self) -> Acceptor:
        """The node's side of the association (AE titles, accepted contexts...)."""
        return self.server.user  # type: ignore[return-value]


class ClientOptions(TypedDict, total=False):
    """The keyword arguments of `MemoryNode.connect` and `MemoryNode.associate`."""

    calling_ae_title: str
    called_ae_title: str | None
    settings: ClientSettings | None
    scp_roles: Iterable[str]
    host: str


class MemoryNode:
    """A dicomd node in memory, serving ``plugins`` on a `Clock`.

    ``plugins`` are the objects the ``plugins:`` list of the YAML would make
    (validators, store handlers, find handlers, retrieve sources), in the
    same order; Verification is always served.  ``config`` defaults to the
    embedded defaults (``conf/scp.yaml``); ``changes`` replace fields of it,
    as `dataclasses.replace` does (``ae_title="ARCHIVE"``,
    ``transfer_syntaxes=(...)``...).

    A node with store handlers writes what it receives under
    ``storage_path`` (in its ``.incoming`` folder, as the daemon does), so
    it needs one: pytest's ``tmp_path`` will do.  ``audit`` is a trail
    (`dicomd.app.audit_trail`) its associations write to.
    """

    def __init__(
        self,
        plugins: Sequence[object] = (),
        *,
        storage_path: str | Path | None = None,
        config: Config | None = None,
        clock: Clock | None = None,
        audit: AuditTrail | None = None,
        **changes: Any,
    ) -> None:
        base = config if config is not None else default_config()
        if storage_path is not None:
            changes["storage_path"] = Path(storage_path)
        elif config is None and any(IStoreHandler.providedBy(plugin) for plugin in plugins):
            raise TypeError(
                "a MemoryNode with store handlers needs a storage_path (a temporary folder)"
            )
        self.config: Config = dataclasses.replace(base, **changes)
        self.plugins: tuple[object, ...] = tuple(plugins)
        self.clock: Clock = clock if clock is not None else Clock()
        self.factory: DicomServerFactory = node_factory(
            self.config, self.plugins, clock=self.clock, audit=audit
        )
        self.connections: list[Connection] = []
        self._ports = itertools.count(50000)

    @property
    def ae_title(self) -> str:
        """The node's AE title: what clients call by default."""
        return self.config.ae_title

    def connect(
        self,
        contexts: Iterable[str] | Iterable[PresentationContextRQ] = (uids.VERIFICATION,),
        *,
        calling_ae_title: str = TEST_AE_TITLE,
        called_ae_title: str | None = None,
        settings: ClientSettings | None = None,
        scp_roles: Iterable[str] = (),
        host: str = TEST_HOST,
    ) -> Connection:
        """Connect a new client and send its A-ASSOCIATE-RQ, without waiting for the answer.

        ``contexts`` are abstract syntaxes (each proposed with the uncompressed
        transfer syntaxes, as `dicomd.client.propose` does) or ready-made
        presentation contexts (`dicomd.client.storage_contexts`,
        `dicomd.client.retrieve_contexts`).  ``settings``, when given, wins
        over the AE titles.  ``scp_roles`` are the storage SOP classes a
        C-GET brings back.  ``host`` is the address the node sees, for
        validators and ``access:`` rules.

        The association's ``established`` Deferred fires on `flush`; use
        this to test what happens while the node decides, and `associate`
        otherwise.
        """
        if settings is None:
            settings = ClientSettings(
                called_ae_title=called_ae_title if called_ae_title is not None else self.ae_title,
                calling_ae_title=calling_ae_title,
            )
        client, association = requestor_protocol(
            self.clock, settings, _presentation_contexts(contexts), scp_roles
        )
        peer = IPv4Address("TCP", host, next(self._ports))
        ours = IPv4Address("TCP", TEST_HOST, _NODE_PORT)
        server = self.factory.buildProtocol(peer)
        pump = connect(
            server,
            FakeTransport(server, isServer=True, hostAddress=ours, peerAddress=peer),
            client,
            FakeTransport(client, isServer=False, hostAddress=peer, peerAddress=ours),
            greet=False,
            clock=self.clock,
        )
        connection = Connection(association, client, server, pump)
        self.connections.append(connection)
        return connection

    def associate(
        self,
        contexts: Iterable[str] | Iterable[PresentationContextRQ] = (uids.VERIFICATION,),
        **options: Unpack[ClientOptions],
    ) -> ClientAssociation:
        """Connect a new client and negotiate; the association once the node accepted it.

        Takes the arguments of `connect`.  Raises what the association
        failed with: `dicomd.client.AssociationRejected` (with the node's
        ``result``, ``source`` and ``reason``) or
        `dicomd.client.AssociationAborted`.
        """
        return self.result(self.connect(contexts, **options).association.established)

    def flush(self) -> None:
        """Move bytes both ways on every connection, and run what is due now on the clock,
        until nothing is left to move."""
        moved = True
        while moved:
            moved = False
            for connection in self.connections:
                moved = connection.pump.flush() or moved

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass on the node's clock (timeouts fire), then `flush`."""
        self.clock.advance(seconds)
        self.flush()

    def result(self, deferred: defer.Deferred[_T]) -> _T:
        """`flush`, then the result of ``deferred`` (see `result_of`)."""
        self.flush()
        return result_of(deferred)


def _presentation_contexts(
    contexts: Iterable[str] | Iterable[PresentationContextRQ],
) -> tuple[PresentationContextRQ, ...]:
    items = tuple(contexts)
    if all(isinstance(item, str) for item in items):
        return propose(items)  # type: ignore[arg-type]
    if all(isinstance(item, PresentationContextRQ) for item in items):
        return items  # type: ignore[return-value]
    raise TypeError("contexts: give abstract syntax UIDs or PresentationContextRQs, not both")


def received_instance(
    dataset: Dataset,
    folder: str | Path,
    *,
    transfer_syntax: str | None = None,
    calling_ae_title: str = TEST_AE_TITLE,
    called_ae_title: str = "DICOMD",
    peer_host: str = TEST_HOST,
    peer_port: int = 50000,
) -> ReceivedInstance:
    """The `ReceivedInstance` a store handler gets when ``dataset`` arrives by C-STORE.

    Writes a new Part 10 file in ``folder`` as the storage service does: the
    preamble, our File Meta Information (`dicomd.part10.file_meta`, with
    ``calling_ae_title`` as Source AE Title), then ``dataset`` encoded in
    ``transfer_syntax``.  The syntax defaults to that of ``dataset.file_meta``
    when it has one (a data set read by ``dcmread``), else explicit VR
    little endian.  The SOP Class and Instance UIDs come from the data set.

    As with any pydicom write, ambiguous VRs in ``dataset`` are resolved in
    place for an explicit VR syntax.
    """
    sop_class_uid = str(dataset.get("SOPClassUID", ""))
    sop_instance_uid = str(dataset.get("SOPInstanceUID", ""))
    if not (sop_class_uid and sop_instance_uid):
        raise ValueError("the data set needs a SOPClassUID and a SOPInstanceUID")
    if transfer_syntax is None:
        meta = getattr(dataset, "file_meta", None)
        transfer_syntax = str(
            getattr(meta, "TransferSyntaxUID", "") or uids.EXPLICIT_VR_LITTLE_ENDIAN
        )
    meta_bytes = file_meta(sop_class_uid, sop_instance_uid, transfer_syntax, calling_ae_title)
    data = encode_dataset(dataset, transfer_syntax)
    path = Path(folder) / f"{uuid.uuid4().hex}.part"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(PREAMBLE + meta_bytes + data)
    return ReceivedInstance(
        calling_ae_title=calling_ae_title,
        called_ae_title=called_ae_title,
        peer_host=peer_host,
        peer_port=peer_port,
        sop_class_uid=sop_class_uid,
        sop_instance_uid=sop_instance_uid,
        transfer_syntax=transfer_syntax,
        path=path,
        size=len(data),
    )


def find_query(
    identifier: Dataset | Mapping[str, Any],
    *,
    model: str = uids.STUDY_ROOT_FIND,
    level: str | None = None,
    calling_ae_title: str = TEST_AE_TITLE,
    called_ae_title: str = "DICOMD",
    peer_host: str = TEST_HOST,
    relational: bool = False,
) -> FindQuery:
    """The `FindQuery` a find handler (or retrieve source) gets for ``identifier``.

    ``identifier`` is a pydicom `Dataset` or a mapping of keywords to values
    (``{"PatientID": "", "StudyDate": "20240101-"}``); it is copied, never
    changed.  ``model`` is the information model's SOP Class UID (Study
    Root FIND by default).  ``level`` is read from the identifier's
    QueryRetrieveLevel as the node does; given here, it is also put in the
    identifier of a Query/Retrieve model that has none.  A worklist query has
    no level.  ``relational`` is what the node sets when the peer negotiated
    relational queries (or the node takes them from everyone).
    """
    if isinstance(identifier, Dataset):
        query = copy.deepcopy(identifier)
    else:
        query = Dataset()
        for keyword, value in identifier.items():
            setattr(query, keyword, value)
    asked = str(query.get("QueryRetrieveLevel", "")).strip().upper()
    if level is None:
        level = asked
    else:
        level = level.strip().upper()
        if asked and asked != level:
            raise ValueError(f"level {level!r} but the identifier asks for {asked!r}")
        if model in _QR_MODELS and not asked:
            query.QueryRetrieveLevel = level
    return FindQuery(query, model, level, calling_ae_title, called_ae_title, peer_host, relational)

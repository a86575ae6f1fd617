"""The plugin contracts of dicomd.

A plugin is any object that provides one of these interfaces; the daemon
finds it through the ``plugins:`` list of the YAML configuration and asks it
through ``defer.maybeDeferred``, so every method may answer directly or with a
Deferred.  The small value types that cross these contracts live here too, so
that a plugin author imports one module.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Final

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from pydicom import Dataset
    from twisted.internet.defer import Deferred


@dataclass(frozen=True, slots=True)
class ProposedContext:
    """One presentation context of an A-ASSOCIATE-RQ, as a validator sees it."""

    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class UserIdentity:
    """The user identity negotiation sub-item (PS3.7 D.3.3.7), if the peer sent one.

    ``identity_type`` is 1 username, 2 username and passcode, 3 Kerberos,
    4 SAML, 5 JWT.
    """

    identity_type: int
    positive_response_requested: bool
    primary_field: bytes
    secondary_field: bytes


@dataclass(frozen=True, slots=True)
class PeerCertificate:
    """The certificate a peer proved it holds in the TLS handshake, verified against the
    configured CA bundle (``tls.ca_certificates``)."""

    subject: str
    """As RFC 4514 writes it, for example ``CN=CT01,O=Radiology``."""
    subject_alternative_names: tuple[str, ...]
    sha256_fingerprint: str
    """Lower-case hex, 64 digits."""


@dataclass(frozen=True, slots=True)
class AssociationRequest:
    """What an association validator is asked about."""

    called_ae_title: str
    calling_ae_title: str
    peer_host: str
    peer_port: int
    presentation_contexts: Sequence[ProposedContext]
    user_identity: UserIdentity | None
    implementation_class_uid: str | None
    implementation_version_name: str | None
    peer_certificate: PeerCertificate | None = None
    user: str | None = None
    """Who the user identity proved the peer to be (`IAuthenticator`), or None."""


@dataclass(frozen=True, slots=True)
class Rejection:
    """An A-ASSOCIATE-RJ answer: result, source and reason as PS3.8 Table 9-21 numbers them.

    result: 1 permanent, 2 transient.
    source 1 (service user): reason 1 no reason given, 2 application context
    name not supported, 3 calling AE title not recognized, 7 called AE title
    not recognized.  Source 2 (ACSE): 1 no reason, 2 protocol version not
    supported.  Source 3 (presentation): 1 temporary congestion, 2 local limit
    exceeded.
    """

    result: int
    source: int
    reason: int
    message: str = ""


class Accept(Enum):
    """The answer a validator gives to let an association through."""

    ACCEPT = "accept"


ACCEPT: Final = Accept.ACCEPT

REJECT_CALLED_AE = Rejection(1, 1, 7, "called AE title not recognized")
REJECT_CALLING_AE = Rejection(1, 1, 3, "calling AE title not recognized")
REJECT_NO_REASON = Rejection(1, 1, 1, "no reason given")
REJECT_LOCAL_LIMIT = Rejection(2, 3, 2, "local limit exceeded")


class IAssociationValidator(Interface):
    """Decides whether an A-ASSOCIATE-RQ may become an association.

    The built-in validator applies the ``access:`` and ``limits:`` settings;
    plugins providing this interface are asked after it, in configuration
    order, and the first rejection wins.  A validator that raises rejects the
    association with "no reason given"; the error is logged.
    """

    def validate(request: AssociationRequest) -> Accept | Rejection:
        """Return ``ACCEPT`` or a ``Rejection`` (or a Deferred firing with one)."""


@dataclass(frozen=True, slots=True)
class ReceivedInstance:
    """One instance received by C-STORE, as store handlers see it: read-only.

    ``path`` is a complete Part 10 file: our File Meta Information followed by
    the data set exactly as the peer sent it.  It lies in a temporary folder
    and is removed once every handler has answered, unless a handler took it
    by answering `Kept`; the handlers after that one see it at its new path.
    Reading the file blocks: a handler that parses it (``dcmread(path)``)
    does so in a thread, as the built-in ``print`` handler does.

    ``attributes`` holds the top-level attributes the handlers declared they
    read (`IReadsAttributes`), collected while the data set streamed in and
    decoded by pydicom as they are read; one the data set lacks is absent.
    It is None when no handler declared any, or when they could not be
    collected (a value over 64 KiB, a transfer syntax pydicom does not know):
    the file is then the place to read them.
    """

    calling_ae_title: str
    called_ae_title: str
    peer_host: str
    peer_port: int
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    path: Path
    size: int
    attributes: Dataset | None = None


@dataclass(frozen=True, slots=True)
class Kept:
    """A store handler's answer when it has taken the received file for good.

    The file now lives at ``path`` and belongs to the handler: the store
    service does not remove it, and later handlers see it there.  ``status``
    is the handler's status, as any handler answers it (an ``int`` or a
    ``Dataset`` with ``Status``).
    """

    status: int | Dataset
    path: Path


class IStoreHandler(Interface):
    """Does something with each instance received by C-STORE.

    Handlers form a chain, in the order of the ``plugins:`` list.  Each answers
    with a DIMSE status: an ``int``, or a ``Dataset`` carrying ``Status`` and
    optionally ``ErrorComment``, or a Deferred firing with either.  A failure
    status stops the chain and goes to the peer; otherwise the peer gets the
    last warning, or success.  An ``OSError`` raised by a handler answers A700
    (out of resources), any other exception C000 (cannot understand), with the
    error as comment; the association stays up either way.  A handler that
    moves the file somewhere for good answers `Kept` with its new path.
    """

    def store(instance: ReceivedInstance) -> int | Dataset | Kept:
        """Handle one received instance and answer its status."""


@dataclass(frozen=True, slots=True)
class FindQuery:
    """One C-FIND request, as find handlers see it.

    ``identifier`` is the peer's identifier, decoded with its Specific
    Character Set.  ``model`` is the SOP Class UID of the information model
    (Patient Root, Study Root, Modality Worklist...), ``level`` the Query/
    Retrieve Level ("PATIENT", "STUDY", "SERIES", "IMAGE"; empty for a
    worklist).

    ``relational`` says that the identifier need not be hierarchical: the peer
    negotiated relational queries or retrieval (PS3.4 C.4.1.2.2, C.4.2.2.2),
    or the node accepts them from every peer (``query_retrieve.relational``).
    Unique keys of the levels above ``level`` may then be missing, as in an
    IMAGE query or retrieve naming only a StudyInstanceUID; a handler that
    cannot answer such a query raises `InvalidIdentifier` (A900).  When it is
    False, a handler may answer A900 to an identifier without them, as the
    standard's baseline behaviour asks.
    """

    identifier: Dataset
    model: str
    level: str
    calling_ae_title: str
    called_ae_title: str
    peer_host: str
    relational: bool = False


class InvalidIdentifier(ValueError):
    """Raised by a find handler when the identifier does not fit the model or level (A900)."""


class Unavailable(RuntimeError):
    """Raised by a find handler that cannot answer now, and knows why: it is stopping, say.
    The peer gets A700 (out of resources) with the reason; the log one line, no traceback,
    since nothing is broken."""


class IFindHandler(Interface):
    """Answers C-FIND queries for the information models it names.

    ``find`` returns the matches as data sets: a list or any iterable, a
    generator, an async generator or iterable, or a Deferred firing with any
    of these (the archive's pages come that way).  They
    may carry more attributes than asked for: the service answers exactly the
    requested keys (plus Specific Character Set, Query/Retrieve Level and
    Retrieve AE Title), empty where a match has no value.  `InvalidIdentifier`
    answers A900; any other exception a C000-range failure, with the error
    as comment.  A handler that also provides `ISupportedKeys` has matches
    to a query asking for other keys go out as FF01 instead of FF00.  What
    ``find`` answers may also provide `IEncodedMatches`, to hand over matches
    already encoded.
    """

    find_models = Attribute(
        "The SOP Class UIDs of the information models this handler answers"
        " (Patient Root, Study Root, Modality Worklist FIND...)."
    )

    def find(query: FindQuery) -> Iterable[Dataset] | AsyncIterable[Dataset]:
        """The matches of ``query``, streamed to the peer as they come."""


class IAnswerEncoder(Interface):
    """The find service's encoder of the answers to one query, handed to `IEncodedMatches`.

    It applies the service's shaping rule (exactly the requested keys, empty
    where a match has no value, Query/Retrieve Level, Retrieve AE Title and
    Specific Character Set) to a match given as plain values, and encodes the
    answer in the association's transfer syntax, without making a Dataset.
    """

    def encode(values: Mapping[str, str | int | Sequence[str] | None]) -> bytes | None:
        """The answer's bytes for a match holding ``values``: keyword to text (``\\``
        between several values), a list of texts, or an integer for IS; a keyword absent
        or None has no value.  The bytes are those of the answer to a Dataset holding each
        value as an element of its keyword's dictionary VR.  None when it cannot encode
        them so (a value of another type, text no character set at hand can carry): that
        match must then come as a Dataset."""


class IEncodedMatches(Interface):
    """Optional, on what `IFindHandler.find` answers: matches that can come encoded.

    A source that holds its matches as plain values (an index's rows) saves
    making a Dataset of each only to have the service shape and encode it.
    The service asks for ``encoded`` before it takes any match, whenever the
    query's answers can be encoded from values, and then iterates only what
    ``encoded`` answers (and closes that, if it has ``aclose``).
    """

    def encoded(
        encoder: IAnswerEncoder,
    ) -> Iterable[bytes | Dataset] | AsyncIterable[bytes | Dataset]:
        """The same matches, each as the bytes ``encoder.encode`` made of it or, where it
        answered None, as a Dataset."""


@dataclass(frozen=True, slots=True)
class Authenticated:
    """An authenticator's answer for an identity it verified: who it is, and the server
    response sent back when the peer asked for a positive response (Kerberos, SAML)."""

    user: str
    server_response: bytes = b""


class AuthenticationFailed(Exception):
    """Raised by an authenticator for an identity that is wrong: the association is
    rejected (1, 1, 1) and the message is logged, never sent."""


class IAuthenticator(Interface):
    """Decides who a peer is from its user identity (PS3.7 D.3.3.7).

    Called in a worker thread, so checking a slow hash or reading a file is
    fine; authenticators are asked in turn (the built-in ones first) until one
    answers.
    """

    def authenticate(identity: UserIdentity, request: AssociationRequest) -> Authenticated | None:
        """`Authenticated` for an identity it verified, None for one it does not handle
        (another authenticator may), or raise `AuthenticationFailed` for a wrong one."""


class IAuthorizer(Interface):
    """Decides which requests an association may make: the built-in ``authorization:``
    rules, or a plugin providing this instead.

    Asked once per request, on the reactor: answer at once, from what the
    association request says (AE titles, host, ``user``, ``peer_certificate``).
    """

    def may(request: AssociationRequest, operation: str, destination: str | None) -> bool:
        """Whether the peer of ``request`` may make ``operation`` (echo, store, find, move,
        get); ``destination`` is the Move Destination of a C-MOVE, None otherwise."""


class IReadsAttributes(Interface):
    """Optional, beside `IStoreHandler`: the top-level attributes a store handler reads.

    The node collects their values as each data set streams in and hands
    them over in `ReceivedInstance.attributes`, so that the handler need not
    parse the file again.
    """

    attributes_read = Attribute("The keywords of the attributes read (an iterable of str).")


class ISupportedKeys(Interface):
    """Optional, beside `IFindHandler`: the keys a find handler can match and return."""

    def supported_keys(level: str) -> Collection[str]:
        """The keywords supported at Query/Retrieve ``level`` (or a Deferred firing with them).

        When the identifier asks for others, matches go out as FF01 (pending,
        optional keys not supported, PS3.4 C.4.1.1.4) instead of FF00.
        """


@dataclass(frozen=True, slots=True)
class RetrieveItem:
    """One instance to send for a C-MOVE or C-GET: a Part 10 file, or a pydicom Dataset
    (``path`` None) taken to be in ``transfer_syntax``, and what it holds."""

    path: Path | None
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    dataset: Dataset | None = None
    fetch: Callable[[], Deferred[Path]] | None = None
    """For an instance kept away from this machine (object storage), with ``path`` None:
    brings it into a spool file, which the retrieve removes once its C-STORE is over."""

    @property
    def source(self) -> Path | Dataset:
        """What a C-STORE sends: the file, or else the data set."""
        if self.path is not None:
            return self.path
        if self.dataset is None:
            raise ValueError(f"retrieve item {self.sop_instance_uid} has neither path nor dataset")
        return self.dataset


class IInstanceStorage(Interface):
    """Where the archive keeps the bytes of its instances, each under a key: its layout path.

    Two backends serve it: files under the archive folder (the default,
    `dicomd.archive.files.LocalFiles`) and S3-compatible object storage
    (`dicomd.archive.objects.S3Storage`).  Every method blocks: the archive
    calls them from its threads, never from the reactor.  Errors of the
    storage itself are ``OSError``s with a one-line message, so that a store
    is answered "out of resources" and the log says why.
    """

    def check() -> None:
        """At start-up: whether the storage can be used; an error says why in one line."""

    def put(source: Path, key: str) -> None:
        """Keep the content of the received file ``source`` under ``key``.

        When this returns the content is durable: a power cut or a crash of
        this process does not lose it.  ``source`` may be taken (moved under
        ``key``) or left where it is, for its owner to remove.
        """

    def exists(key: str) -> bool:
        """Whether something is kept under ``key``."""

    def remove(key: str) -> None:
        """Forget what is kept under ``key``; nothing happens if there is nothing."""

    def local_path(key: str) -> Path | None:
        """The file holding ``key`` for the sending half to read in place, or None when
        it has to be fetched."""

    def fetch(key: str, into: Path) -> None:
        """Write the content kept under ``key`` to the file ``into``, in bounded memory;
        ``FileNotFoundError`` when nothing is kept there."""


class IArchiveIndex(Interface):
    """The archive's index: what C-FIND searches and what tells the archive whether an
    instance is kept.

    Two backends serve it: the embedded SQLite file (the default,
    `dicomd.archive.index.ArchiveIndex`) and PostgreSQL, shared by several
    nodes (`dicomd.archive.postgres.PostgresIndex`); `dicomd.archive.indexes.
    index_for` picks one by ``index.url``.  Every method blocks: the archive
    calls them from its threads, never from the reactor.  A full disk, a lost
    connection or an exhausted pool is an ``OSError`` with a one-line message.
    """

    commits = Attribute("How many write transactions this process has committed.")

    def open() -> None:
        """Connect, and bring the schema to this dicomd's version (once, whoever else opens
        it at the same time); a schema newer than this dicomd is refused in one line."""

    def close() -> None:
        """Close the index's own connections; readers are their callers' to close."""

    def write(writes: Sequence[Callable[..., object]]) -> list[object]:
        """Perform a batch of writes (``dicomd.archive.index.adding`` ...) in one
        transaction, each in a savepoint of its own; an ``Outcome`` for each: a write that
        fails, fails alone."""

    def apply(write: Callable[..., object]) -> object:
        """Perform one write in a transaction of its own; its result, or its error raised
        (``DuplicateInstance`` for ``adding(record, replace=False)`` of a kept UID)."""

    def add(record: object) -> None:
        """Insert or replace an ``InstanceRecord``, with its patient, study and series."""

    def remove(sop_instance_uid: str) -> bool:
        """Forget an instance and what it leaves empty; False if it was not kept."""

    def remove_paths(paths: Iterable[str]) -> int:
        """Forget the instances kept at these keys, in one transaction; how many."""

    def lookup(sop_instance_uid: str) -> str | None:
        """The key (layout path) of a kept instance, or None."""

    def holder(path: str) -> str | None:
        """The SOP Instance UID of the instance kept at the key ``path``, or None."""

    def paths() -> Iterable[str]:
        """The key of every kept instance."""

    def connect_reader() -> object:
        """A new read-only connection for ``dicomd.archive.query.ArchiveQuery``, which
        tells its SQL dialect from it; the caller closes it."""


class IRetrieveSource(Interface):
    """Where C-MOVE and C-GET find the instances to send, and who may have them.

    ``retrieve_models`` names the Query/Retrieve MOVE and GET SOP classes it
    serves.
    ``instances`` returns the `RetrieveItem`s the identifier selects (a list,
    or a Deferred of one), as files or as data sets; `InvalidIdentifier`
    answers A900.  ``may_move``
    is the policy: whether the calling AE may send these to ``destination``
    (for C-GET, the destination is the calling AE itself); False answers
    0124 (not authorized).
    """

    retrieve_models = Attribute("The SOP Class UIDs of the MOVE and GET models this source serves.")

    def instances(query: FindQuery) -> list[RetrieveItem]:
        """The instances ``query`` selects."""

    def may_move(query: FindQuery, destination: str) -> bool:
        """Whether ``query.calling_ae_title`` may have them sent to ``destination``
        (or a Deferred firing with that)."""


PLUGIN_INTERFACES: Final = (
    IAssociationValidator,
    IStoreHandler,
    IFindHandler,
    IRetrieveSource,
)

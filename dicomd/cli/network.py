"""What the network subcommands share: dcmtk's options, the reactor, and one-line errors.

The options are spelled as dcmtk spells them (``-aet``, ``-aec``, ``-pdu``,
``-to``), so that a command line that works with ``echoscu`` works here.
Every way an association can go wrong is turned into one sentence that
names the peer, the step that failed and, for the standard's numbers, their
meaning (`dicomd.describe`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from twisted.internet import defer, error, task
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)

from dicomd import uids
from dicomd.cli.arguments import max_pdu_length, port_number, timeout_seconds
from dicomd.cli.optional import leave_out
from dicomd.cli.output import error_line, seconds, uid_name
from dicomd.client import (
    AssociationAborted,
    AssociationRejected,
    AssociationTimeout,
    ClientSettings,
    DimseTimeout,
    NoAcceptedContext,
    TLSHandshakeFailed,
    associate,
)
from dicomd.describe import describe_abort, describe_rejection

if TYPE_CHECKING:
    from dicomd.client import ClientAssociation, ClientOptions, PresentationContextRQ

T = TypeVar("T")

log = Logger()

DEFAULT_CALLING_AE = "DICOMD"
DEFAULT_CALLED_AE = "ANY-SCP"
"""dcmtk's default called AE title: many SCPs accept any title, and this one says so."""

INTERRUPTED = 130
"""The exit status shells use for a command stopped by Ctrl-C (128 + SIGINT)."""


class CommandFailed(Exception):
    """The command cannot go on; the message is the one line the user sees."""


def ae_title(text: str) -> str:
    """An AE title as PS3.5 6.2 allows it: 1 to 16 characters, no backslash or control character."""
    problem = uids.ae_title_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def add_network_options(parser: argparse.ArgumentParser) -> None:
    """dcmtk's association options, and ``-v``/``-d`` for a log on stderr."""
    defaults = ClientSettings(DEFAULT_CALLED_AE)
    group = parser.add_argument_group("association")
    group.add_argument(
        "-aet",
        "--aetitle",
        dest="calling_ae_title",
        type=ae_title,
        default=DEFAULT_CALLING_AE,
        metavar="AE",
        help=f"our AE title (default {DEFAULT_CALLING_AE})",
    )
    group.add_argument(
        "-aec",
        "--call",
        dest="called_ae_title",
        type=ae_title,
        default=DEFAULT_CALLED_AE,
        metavar="AE",
        help=f"the peer's AE title (default {DEFAULT_CALLED_AE})",
    )
    group.add_argument(
        "-pdu",
        "--max-pdu",
        dest="max_pdu_length",
        type=max_pdu_length,
        default=defaults.max_pdu_length,
        metavar="N",
        help=f"largest PDU we receive, in bytes (default {defaults.max_pdu_length})",
    )
    group.add_argument(
        "-to",
        "--timeout",
        type=timeout_seconds,
        metavar="SECONDS",
        help=(
            "how long to wait to connect, for each association message and for each"
            f" DIMSE response (default {seconds(defaults.acse_timeout)} to connect and"
            f" associate, {seconds(defaults.dimse_timeout)} for a response)"
        ),
    )
    tls = parser.add_argument_group("transport layer security (TLS)")
    tls.add_argument(
        "+tls",
        "--enable-tls",
        nargs=2,
        dest="tls_identity",
        metavar=("KEY", "CERTIFICATE"),
        help="use TLS, presenting this private key and certificate (PEM files)",
    )
    tls.add_argument(
        "+tla",
        "--anonymous-tls",
        action="store_true",
        help="use TLS without a certificate of our own",
    )
    tls.add_argument(
        "+cf",
        "--add-cert-file",
        dest="ca_certificates",
        metavar="FILE",
        help="trust a peer certificate signed by one in FILE (PEM; default: the system's)",
    )
    tls.add_argument(
        "-ic",
        "--ignore-peer-cert",
        action="store_true",
        help="do not verify the peer's certificate (encrypted, but the peer is unproven)",
    )
    logging = parser.add_argument_group("logging").add_mutually_exclusive_group()
    logging.add_argument("-v", "--verbose", action="store_true", help="log what happens to stderr")
    logging.add_argument("-d", "--debug", action="store_true", help="log everything to stderr")


def add_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("host", metavar="HOST", help="the peer's host name or address")
    parser.add_argument("port", metavar="PORT", type=port_number, help="the peer's TCP port")


@dataclass(frozen=True, slots=True)
class Peer:
    """Where to connect, and how; it names itself in every message."""

    host: str
    port: int
    settings: ClientSettings
    tls: ClientOptions | None = None

    @classmethod
    def from_arguments(cls, arguments: argparse.Namespace) -> Peer:
        timeouts: dict[str, float] = {}
        if arguments.timeout is not None:
            timeouts = {"acse_timeout": arguments.timeout, "dimse_timeout": arguments.timeout}
        settings = ClientSettings(
            arguments.called_ae_title,
            calling_ae_title=arguments.calling_ae_title,
            max_pdu_length=arguments.max_pdu_length,
            **timeouts,
        )
        return cls(arguments.host, arguments.port, settings, _tls(arguments))

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.settings.called_ae_title} at {self.address}"


def _tls(arguments: argparse.Namespace) -> ClientOptions | None:
    """TLS options from ``+tls KEY CERTIFICATE``, ``+tla``, ``+cf FILE`` and ``-ic``; None for
    TCP."""
    if not uses_tls(arguments):
        return None
    from dicomd.client import Identity, TLSFileError, client_options  # pyOpenSSL: TLS only

    identity = None
    if arguments.tls_identity is not None:
        key, certificate = arguments.tls_identity
        identity = Identity(Path(certificate), Path(key))
    authorities = Path(arguments.ca_certificates) if arguments.ca_certificates else None
    try:
        return client_options(
            arguments.host, authorities, identity, verify_peer=not arguments.ignore_peer_cert
        )
    except TLSFileError as error:
        raise CommandFailed(str(error)) from None


def uses_tls(arguments: argparse.Namespace) -> bool:
    """Whether the command line asks for TLS (``+tls`` or ``+tla``)."""
    return arguments.tls_identity is not None or arguments.anonymous_tls


def explain_association_failure(failure: BaseException, peer: Peer) -> str:
    """Why `associate` failed, in one sentence."""
    acse_timeout = peer.settings.acse_timeout
    match failure:
        case error.ConnectionRefusedError():
            return f"connection refused by {peer.address}"
        case error.DNSLookupError():
            return f"cannot find the host {peer.host}"
        case error.TimeoutError() | defer.TimeoutError():
            return f"timed out after {seconds(acse_timeout)} waiting to connect to {peer.address}"
        case error.ConnectError():
            return f"cannot connect to {peer.address}: {failure}"
        case TLSHandshakeFailed(problem=problem):
            return f"TLS handshake with {peer.address} failed: {problem}"
        case AssociationRejected(result=result, source=source, reason=reason):
            meaning = describe_rejection(result, source, reason)
            return f"association rejected by {peer.settings.called_ae_title}: {meaning}"
        case AssociationTimeout():
            return (
                f"timed out after {seconds(acse_timeout)} waiting for {peer}"
                " to answer the association request"
            )
    return explain_failure(failure, peer, "an answer to the association request")


def explain_failure(failure: BaseException, peer: Peer, waiting_for: str) -> str:
    """Why an established association could not do what was asked, in one sentence."""
    match failure:
        case DimseTimeout() | defer.TimeoutError():
            timeout = peer.settings.dimse_timeout
            return f"timed out after {seconds(timeout)} waiting for {waiting_for} from {peer}"
        case AssociationAborted(source=source, reason=reason):
            return f"association with {peer} {describe_abort(source, reason)}"
        case NoAcceptedContext():
            return f"{peer}: {failure}"
    return f"{type(failure).__name__}: {failure}"


@asynccontextmanager
async def associated(
    reactor: Any,
    peer: Peer,
    contexts: Sequence[PresentationContextRQ],
    scp_roles: Sequence[str] = (),
) -> AsyncIterator[ClientAssociation]:
    """An association for the ``async with`` block, released when the block ends.

    ``scp_roles``: the storage classes a C-GET is to bring back.

    Failing to associate raises `CommandFailed` that says why.  When the
    block fails while the association still stands, it is released all the
    same, quietly: the block's failure is the one worth reporting.
    """
    log.info(
        "requesting an association with {peer} as {calling}, {count} presentation contexts",
        peer=str(peer),
        calling=peer.settings.calling_ae_title,
        count=len(contexts),
    )
    try:
        association = await associate(
            reactor, peer.host, peer.port, peer.settings, contexts, scp_roles, tls=peer.tls
        )
    except Exception as failure:
        raise CommandFailed(explain_association_failure(failure, peer)) from failure
    log.info(
        "association accepted, {accepted} of {count} presentation contexts",
        accepted=len(association.contexts),
        count=len(contexts),
    )
    for context in association.contexts.values():
        log.debug(
            # Twisted calls "name()" fields only if the event is written: without -d,
            # nothing loads pydicom's UID registry to name them.
            "context {id}: {abstract()} in {syntax()}",
            id=context.context_id,
            abstract=lambda uid=context.abstract_syntax: uid_name(uid),
            syntax=lambda uid=context.transfer_syntax: uid_name(uid),
        )
    try:
        yield association
    except BaseException:
        if association.is_established:
            with suppress(Exception):
                await association.release()
        raise
    await release(association, peer)
    log.info("association with {peer} released", peer=str(peer))


def require_context(association: ClientAssociation, peer: Peer, sop_class: str) -> None:
    """Fail unless the peer accepted ``sop_class``, naming it as people know it."""
    if not any(c.abstract_syntax == sop_class for c in association.contexts.values()):
        raise CommandFailed(f"{peer} does not accept {uid_name(sop_class)} ({sop_class})")


async def answer(peer: Peer, waiting_for: str, request: Callable[[], defer.Deferred[T]]) -> T:
    """The result of one DIMSE request, failing with `CommandFailed` that says why."""
    try:
        return await defer.maybeDeferred(request)
    except Exception as failure:
        raise CommandFailed(explain_failure(failure, peer, waiting_for)) from failure


async def release(association: ClientAssociation, peer: Peer) -> None:
    """A-RELEASE; a peer that never confirms it is reported like any other timeout."""
    try:
        await association.release()
    except AssociationTimeout as failure:
        raise CommandFailed(
            f"timed out after {seconds(failure.timeout)} waiting for {peer} to confirm the release"
        ) from failure
    except AssociationAborted as failure:
        raise CommandFailed(explain_failure(failure, peer, "the release")) from failure


def run(
    command: str,
    arguments: argparse.Namespace,
    work: Callable[[Any], Coroutine[Any, Any, int]],
) -> int:
    """Run ``work(reactor)`` to completion and return its exit status.

    `CommandFailed` becomes its one line on stderr and status 1; so does
    anything unexpected, whose traceback goes to the log (``-d`` shows it).
    A reactor stopped before ``work`` finished (Ctrl-C) gives status 130 and
    the line ``interrupted``: closing the connections on the way out fails the
    association, but that is not what the user needs to hear.
    """
    start_logging(arguments)
    if not uses_tls(arguments):
        # Twisted's TCP transport, IReactorSSL and endpoints import pyOpenSSL (and cryptography,
        # service_identity) when installed: without TLS, the reactor is loaded without it.
        leave_out("OpenSSL", unless_loaded=("twisted.internet.tcp", "twisted.internet.reactor"))
    statuses: list[int] = []
    interrupted: list[bool] = []

    def stopping() -> None:
        if not statuses:
            interrupted.append(True)

    async def main(reactor: Any) -> None:
        reactor.addSystemEventTrigger("before", "shutdown", stopping)
        try:
            statuses.append(await work(reactor))
        except CommandFailed as failure:
            if not interrupted:
                error_line(command, str(failure))
            statuses.append(1)
        except Exception as failure:
            log.failure("unexpected error in dicomd {command}", command=command)
            error_line(command, f"unexpected error: {type(failure).__name__}: {failure}")
            statuses.append(1)

    with suppress(SystemExit):
        task.react(main)
    if interrupted or not statuses:
        error_line(command, "interrupted")
        return INTERRUPTED
    return statuses[0]


def start_logging(arguments: argparse.Namespace) -> None:
    """Send Twisted's log to stderr at the level asked for; without ``-v`` or ``-d``, nowhere.

    Standard output is left alone: it carries the command's results.  ``-v``
    shows what the command does; ``-d`` adds what Twisted and the protocol do.
    """
    observers: list[ILogObserver] = []
    if arguments.verbose or arguments.debug:
        predicate = LogLevelFilterPredicate(
            defaultLogLevel=LogLevel.debug if arguments.debug else LogLevel.info
        )
        if not arguments.debug:
            # Twisted's own info messages (factories starting and stopping) are noise here.
            predicate.setLogLevelForNamespace("twisted", LogLevel.warn)
        observers.append(FilteringLogObserver(textFileLogObserver(sys.stderr), [predicate]))
    globalLogBeginner.beginLoggingTo(observers, redirectStandardIO=False)

"""The AEs a C-MOVE may send to: where they are, how to reach them, how many at once.

The node's C-MOVE service asks for an association to a destination by AE
title; this opens it (over TLS when the destination wants it, checking its
certificate) and keeps a destination's ``max_associations``: moves beyond
that wait their turn until an earlier association to it ends.  It also
tells whether a destination takes instances decompressed when it accepts
none of their compressed syntaxes (``transcode:``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IReactorTCP

from dicomd.scu.connect import associate
from dicomd.scu.requestor import ClientSettings, Requestor
from dicomd.ul.pdu import PresentationContextRQ
from dicomd.ul.tls import Identity, TLSFileError, client_options


class Destination(Protocol):
    """A known AE, as the configuration describes it (``destinations:``)."""

    ae_title: str
    host: str
    port: int
    max_associations: int | None
    tls: bool
    ca_certificates: Path | None
    decompress: bool


class Turns(Protocol):
    """Who may open an association to a destination now: a semaphore, or one held by the
    parent of worker processes for all of them."""

    def acquire(self) -> defer.Deferred[object]: ...

    def release(self) -> None: ...


TurnsFor = Callable[[str, int], Turns]
"""The turns of a destination, given its AE title and ``max_associations``."""


def _semaphore(ae_title: str, most: int) -> Turns:
    return defer.DeferredSemaphore(most)


class KnownDestinations:
    """The configured destinations of C-MOVE, reached with ``settings(ae_title)``; over TLS,
    the node presents ``identity`` (its own certificate) to those that ask for one.
    ``turns_for`` keeps each one's ``max_associations`` (in this process by default)."""

    def __init__(
        self,
        reactor: IReactorTCP,
        destinations: Mapping[str, Destination],
        settings: Callable[[str], ClientSettings],
        identity: Identity | None = None,
        turns_for: TurnsFor = _semaphore,
    ) -> None:
        self.reactor = reactor
        self.destinations = destinations
        self.settings = settings
        self.identity = identity
        self._turns = {
            name: turns_for(name, destination.max_associations)
            for name, destination in destinations.items()
            if destination.max_associations
        }

    def __contains__(self, ae_title: object) -> bool:
        return ae_title in self.destinations

    def decompresses(self, ae_title: str) -> bool:
        return self.destinations[ae_title].decompress

    def associate(
        self, ae_title: str, contexts: Sequence[PresentationContextRQ]
    ) -> defer.Deferred[Requestor]:
        destination = self.destinations[ae_title]
        turn = self._turns.get(ae_title)
        if turn is None:
            return self._open(destination, contexts)
        d = turn.acquire().addCallback(lambda _: self._open(destination, contexts))

        def hold_until_ended(association: Requestor) -> Requestor:
            association.ended.addBoth(lambda _: turn.release())
            return association

        def give_back(failure: object) -> object:
            turn.release()
            return failure

        return d.addCallbacks(hold_until_ended, give_back)

    def _open(
        self, destination: Destination, contexts: Sequence[PresentationContextRQ]
    ) -> defer.Deferred[Requestor]:
        try:
            tls = self._tls(destination)
        except TLSFileError as error:  # a CA or key file that changed since the start
            return defer.fail(error)
        return associate(
            self.reactor,
            destination.host,
            destination.port,
            self.settings(destination.ae_title),
            contexts,
            tls=tls,
        )

    def _tls(self, destination: Destination) -> IOpenSSLClientConnectionCreator | None:
        """Client TLS options for a destination that asks for TLS, checking its certificate."""
        if not destination.tls:
            return None
        return client_options(destination.host, destination.ca_certificates, self.identity)

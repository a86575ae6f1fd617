"""The built-in association validator: the called AE title and an allow-list of calling AEs."""

from __future__ import annotations

import socket
from collections.abc import Iterable

from zope.interface import implementer

from dicomd.interfaces import (
    ACCEPT,
    REJECT_CALLED_AE,
    REJECT_CALLING_AE,
    Accept,
    AssociationRequest,
    IAssociationValidator,
    Rejection,
)


@implementer(IAssociationValidator)
class AccessValidator:
    """Checks the called AE title and the allow-list of calling AE titles.

    An allow-list entry may name a host; host names are resolved once, when
    the daemon starts, so that no association waits on DNS.
    """

    def __init__(
        self,
        ae_title: str,
        *,
        check_called_ae: bool = True,
        calling_aes: Iterable[tuple[str, str | None]] = (),
    ) -> None:
        """``calling_aes``: ``(AE title, host or None)`` pairs; empty lets every calling AE in."""
        self.ae_title = ae_title
        self.check_called_ae = check_called_ae
        self.allowed: dict[str, set[str] | None] = {}
        for calling_ae_title, host in calling_aes:
            hosts = self.allowed.setdefault(calling_ae_title, set())
            if host is None or hosts is None:
                self.allowed[calling_ae_title] = None
            else:
                hosts.update(_addresses(host))

    def validate(self, request: AssociationRequest) -> Accept | Rejection:
        if self.check_called_ae and request.called_ae_title != self.ae_title:
            return REJECT_CALLED_AE
        if not self.allowed:
            return ACCEPT
        if request.calling_ae_title not in self.allowed:
            return REJECT_CALLING_AE
        hosts = self.allowed[request.calling_ae_title]
        if hosts is not None and request.peer_host not in hosts:
            return REJECT_CALLING_AE
        return ACCEPT


def _addresses(host: str) -> set[str]:
    """The IP addresses a host name stands for (the host itself if it is one)."""
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return {host}
    return {host} | {str(info[4][0]) for info in infos}

"""The built-in association validator: the ``access:`` rules of the configuration."""

from __future__ import annotations

import socket

from zope.interface import implementer

from dicomd.config import Access
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

    def __init__(self, ae_title: str, access: Access) -> None:
        self.ae_title = ae_title
        self.check_called_ae = access.check_called_ae
        self.allowed: dict[str, set[str] | None] = {}
        for entry in access.calling_aes:
            hosts = self.allowed.setdefault(entry.ae_title, set())
            if entry.host is None or hosts is None:
                self.allowed[entry.ae_title] = None
            else:
                hosts.update(_addresses(entry.host))

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

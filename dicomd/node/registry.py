"""Which service answers an abstract syntax on the node, and with which transfer syntaxes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from pydicom.uid import UID

from dicomd import uids
from dicomd.dimse.association import Service
from dicomd.dimse.command import CommandField


class NodeService(Service, Protocol):
    """A service of the node: the abstract syntaxes it serves and the transfer syntaxes
    it accepts for them (None: the node's preference)."""

    abstract_syntaxes: frozenset[str]
    transfer_syntaxes: Sequence[str] | None


class ServiceRegistry:
    """Which service serves an abstract syntax, and with which transfer syntaxes."""

    def __init__(
        self,
        services: Iterable[NodeService],
        transfer_syntaxes: Sequence[str],
        fallback: NodeService | None = None,
    ) -> None:
        self._by_syntax: dict[str, NodeService] = {}
        for service in services:
            self._by_syntax.update(dict.fromkeys(service.abstract_syntaxes, service))
        self._default_syntaxes = tuple(transfer_syntaxes)
        self._other_syntaxes = tuple(sorted(uids.KNOWN_TRANSFER_SYNTAXES - set(transfer_syntaxes)))
        self._fallback = fallback

    @property
    def serves_get(self) -> bool:
        """Whether some service answers C-GET: then peers may take the SCP role for storage."""
        return any(
            CommandField.C_GET_RQ in service.operations for service in self._by_syntax.values()
        )

    def service_for(self, abstract_syntax: str) -> NodeService | None:
        service = self._by_syntax.get(abstract_syntax)
        if service is None and self._fallback is not None and _is_unknown(abstract_syntax):
            return self._fallback
        return service

    def transfer_syntaxes_for(self, abstract_syntax: str) -> Sequence[str]:
        service = self.service_for(abstract_syntax)
        if service is None:
            if self.serves_get and abstract_syntax in uids.STORAGE_SOP_CLASSES:
                # A C-GET requester proposes the storage contexts we send on.
                return self._default_syntaxes + self._other_syntaxes
            return ()
        return service.transfer_syntaxes or self._default_syntaxes


def _is_unknown(abstract_syntax: str) -> bool:
    """Not a SOP class pydicom knows: a private or newer class, possibly storage."""
    return UID(abstract_syntax).type == ""

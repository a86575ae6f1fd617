"""The ``print`` store handler: one log line per received instance, for a look at the traffic."""

from __future__ import annotations

from typing import Any

from pydicom import dcmread
from pydicom.uid import UID
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import implementer

from dicomd.interfaces import IStoreHandler, ReceivedInstance
from dicomd.uids import Status


@implementer(IStoreHandler)
class PrintHandler:
    """Logs who sent what, and always answers success: it looks, it does not judge.

    The header is parsed (without pixel data) in the reactor's thread pool, so
    a large instance never stalls other associations.  An instance that cannot
    be parsed is logged as such; keeping or refusing it is for other handlers.
    """

    log = Logger()

    def __init__(self, reactor: Any = None) -> None:
        self._reactor = reactor

    def store(self, instance: ReceivedInstance) -> Deferred[int]:
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor
        d = deferToThreadPool(reactor, reactor.getThreadPool(), describe, instance)
        d.addCallback(self._log)
        return d

    def _log(self, fields: dict[str, object]) -> int:
        if "error" in fields:
            self.log.warn(
                "C-STORE from {calling_ae}: {sop_instance_uid} ({size} bytes) "
                "cannot be parsed: {error}",
                **fields,
            )
        else:
            self.log.info(
                "C-STORE from {calling_ae}: {patient_name} [{patient_id}], study {study}, "
                "{modality} {sop_class}, {transfer_syntax}, {size} bytes",
                **fields,
            )
        return Status.SUCCESS


def describe(instance: ReceivedInstance) -> dict[str, object]:
    """The log fields of one instance; blocking (it reads the file's header)."""
    fields: dict[str, object] = {
        "calling_ae": instance.calling_ae_title,
        "sop_instance_uid": instance.sop_instance_uid,
        "size": instance.size,
    }
    try:
        dataset = dcmread(instance.path, stop_before_pixels=True)
        fields.update(
            patient_name=str(dataset.get("PatientName", "")),
            patient_id=str(dataset.get("PatientID", "")),
            study=str(dataset.get("StudyDescription") or dataset.get("StudyInstanceUID", "")),
            modality=str(dataset.get("Modality", "")),
            sop_class=UID(str(dataset.get("SOPClassUID") or instance.sop_class_uid)).name,
            transfer_syntax=UID(instance.transfer_syntax).name,
        )
    except Exception as error:  # a print handler reports any unreadable file, whatever the cause
        fields["error"] = f"{type(error).__name__}: {error}"
    return fields

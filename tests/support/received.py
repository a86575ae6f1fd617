"""Received instances as the store service hands them to the archive, and the archive's answers."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file

from dicomd.archive import ArchiveHandler
from dicomd.archive.index import InstanceRecord, record_from_dataset
from dicomd.interfaces import Kept, ReceivedInstance

CT_SMALL = get_testdata_file("CT_small.dcm")


def ct_small(**changes: object) -> Dataset:
    """CT_small.dcm with some attributes changed (``None`` deletes one)."""
    ds = dcmread(CT_SMALL)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def received(
    archive_path: Path,
    ds: Dataset,
    *,
    sop_class_uid: str | None = None,
    sop_instance_uid: str | None = None,
    calling_ae_title: str = "MODALITY",
) -> ReceivedInstance:
    """``ds`` as the store service hands it over: a Part 10 file in ``.incoming``.

    The command's UIDs are the data set's unless given.
    """
    incoming = archive_path / ".incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    path = incoming / f"{uuid.uuid4().hex}.part"
    ds.save_as(path, enforce_file_format=True)
    return ReceivedInstance(
        calling_ae_title=calling_ae_title,
        called_ae_title="DICOMD",
        peer_host="127.0.0.1",
        peer_port=40000,
        sop_class_uid=sop_class_uid or ds.get("SOPClassUID", ""),
        sop_instance_uid=sop_instance_uid or ds.get("SOPInstanceUID", ""),
        transfer_syntax=ds.file_meta.TransferSyntaxUID,
        path=path,
        size=path.stat().st_size,
    )


def status_of(answer: int | Dataset | Kept) -> tuple[int, str]:
    if isinstance(answer, Kept):
        answer = answer.status
    if isinstance(answer, Dataset):
        return answer.Status, answer.get("ErrorComment", "")
    return answer, ""


def kept_path(answer: int | Dataset | Kept) -> Path:
    """Where the archive keeps an instance it answered success for."""
    assert isinstance(answer, Kept), answer
    assert answer.status == 0x0000
    return answer.path


def opened(archive_path: Path, **options: object) -> ArchiveHandler:
    handler = ArchiveHandler(archive_path, **options)
    handler.open()
    return handler


def record(ds: Dataset | None = None, **changes: object) -> InstanceRecord:
    ds = ds if ds is not None else dcmread(CT_SMALL, stop_before_pixels=True)
    made = record_from_dataset(
        ds, path=f"{ds.SOPInstanceUID}.dcm", size=1234, calling_ae_title="CT01"
    )
    return dataclasses.replace(made, **changes)

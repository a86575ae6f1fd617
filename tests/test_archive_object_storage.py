"""The archive over object storage, in this process: moto's S3 (``mock_aws``) and the SQLite
index.  What changes from files: a store answers success once the upload is complete and
the row committed, the received file stays for the store service to remove, a retrieve
fetches each instance first, a duplicate is decided by the unique constraint, and
reconciliation removes only what a dead store of this node kept without a row."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from pydicom import dcmread

from dicomd.archive import ArchiveHandler
from dicomd.archive.index import adding
from dicomd.interfaces import FindQuery
from dicomd.uids import STUDY_ROOT_MOVE, Status
from tests.support.received import ct_small, opened, received, record, status_of
from tests.support.s3 import in_process_bucket

BUCKET = "dicomd-archive"
URL = f"s3://{BUCKET}/site"


@pytest.fixture
def bucket(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[boto3.client]:
    """moto's S3 in this process with one empty bucket, and a client to look into it."""
    with in_process_bucket(monkeypatch, tmp_path, BUCKET) as client:
        yield client


def keys(client: boto3.client) -> list[str]:
    listed = client.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    return sorted(entry["Key"] for entry in listed)


def body(client: boto3.client, key: str) -> bytes:
    return client.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def study_query(study_uid: str) -> FindQuery:
    identifier = ct_small()
    identifier.clear()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study_uid
    return FindQuery(identifier, STUDY_ROOT_MOVE, "STUDY", "SCU", "DICOMD", "127.0.0.1")


def test_a_stored_instance_is_uploaded_whole_indexed_and_its_received_file_left(
    bucket: boto3.client, tmp_path: Path
) -> None:
    archive = opened(tmp_path, storage_url=URL)
    instance = received(tmp_path, ct_small())
    sent = instance.path.read_bytes()

    answer = archive.archive(instance)

    assert answer == Status.SUCCESS  # not Kept: the store service removes the received file
    assert instance.path.read_bytes() == sent
    ds = dcmread(instance.path)
    key = f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
    assert keys(bucket) == [f"site/{key}"]
    assert body(bucket, f"site/{key}") == sent
    assert archive.index.lookup(ds.SOPInstanceUID) == key
    assert not (tmp_path / key).exists()  # nothing kept beside the incoming files
    archive.close()


@pytest.mark.parametrize(
    ("policy", "status"),
    [("keep-first", Status.COERCION_OF_DATA_ELEMENTS), ("reject", Status.DUPLICATE_SOP_INSTANCE)],
)
def test_a_second_copy_follows_the_duplicates_policy_and_leaves_the_first(
    bucket: boto3.client, tmp_path: Path, policy: str, status: int
) -> None:
    archive = opened(tmp_path, storage_url=URL, duplicates=policy)
    first = received(tmp_path, ct_small(PatientName="First"))
    first_bytes = first.path.read_bytes()
    assert archive.archive(first) == Status.SUCCESS

    code, _comment = status_of(archive.archive(received(tmp_path, ct_small(PatientName="Again"))))

    assert code == status
    [key] = keys(bucket)
    assert body(bucket, key) == first_bytes
    archive.close()


def test_the_unique_constraint_decides_a_duplicate_another_node_indexed_meanwhile(
    bucket: boto3.client, tmp_path: Path
) -> None:
    """The row of another node may land between this store's look and its commit: the
    insert meets the unique constraint and the answer is the duplicate's, not a failure."""
    archive = opened(tmp_path, storage_url=URL, duplicates="reject")
    instance = received(tmp_path, ct_small())
    original_lookup = archive.index.lookup

    def lookup_then_other_node_commits(uid: str) -> str | None:
        found = original_lookup(uid)
        # the row another node commits for the same UID, at the key its layout gave
        archive.index.apply(adding(record(ct_small(), path="elsewhere.dcm")))
        return found

    archive.index.lookup = lookup_then_other_node_commits  # type: ignore[method-assign]
    code, comment = status_of(archive.archive(instance))

    assert (code, comment) == (
        Status.DUPLICATE_SOP_INSTANCE,
        "duplicate SOP Instance UID; already archived",
    )
    archive.close()


def test_a_retrieve_fetches_each_instance_into_a_spool_file_of_the_incoming_folder(
    bucket: boto3.client, tmp_path: Path
) -> None:
    archive = opened(tmp_path, storage_url=URL)
    instance = received(tmp_path, ct_small())
    sent = instance.path.read_bytes()
    archive.archive(instance)
    instance.path.unlink()

    [item] = archive._instances(study_query(ct_small().StudyInstanceUID))

    assert item.path is None and item.fetch is not None
    spooled = archive._fetch(archive.index.lookup(item.sop_instance_uid) or "")
    assert spooled.parent == tmp_path / ".incoming"
    assert spooled.read_bytes() == sent
    archive.close()


def test_reconciliation_removes_a_copy_a_dead_store_kept_without_a_row_and_nothing_else(
    bucket: boto3.client, tmp_path: Path
) -> None:
    """A store died between its upload and its commit: its received file is still in the
    incoming folder and names the copy, which goes.  A kept instance's copy stays, even
    when an incoming file of the same instance was left (it died after its commit)."""
    archive = opened(tmp_path, storage_url=URL)
    kept = received(tmp_path, ct_small(SOPInstanceUID="1.2.3.1"))
    assert archive.archive(kept) == Status.SUCCESS  # its received file stays, as after a kill
    unfinished = received(tmp_path, ct_small(SOPInstanceUID="1.2.3.2"))
    key = archive.layout.path_for(dcmread(unfinished.path)).as_posix()
    archive.storage.put(unfinished.path, key)  # uploaded; the process died before the commit
    torn = received(tmp_path, ct_small(SOPInstanceUID="1.2.3.3"))
    torn.path.write_bytes(torn.path.read_bytes()[:100])  # cut short while it was received
    archive.close()
    assert len(keys(bucket)) == 2

    reopened = ArchiveHandler(tmp_path, storage_url=URL)
    counts = reopened.open()

    assert (counts.incoming_files, counts.unfinished_copies) == (3, 1)
    assert [key.rsplit("/", 1)[-1] for key in keys(bucket)] == ["1.2.3.1.dcm"]
    assert list((tmp_path / ".incoming").iterdir()) == []
    assert reopened.index.lookup("1.2.3.1") is not None
    reopened.close()


def test_a_store_into_a_bucket_that_fails_answers_with_the_error_and_indexes_nothing(
    bucket: boto3.client, tmp_path: Path
) -> None:
    archive = opened(tmp_path, storage_url=URL)
    bucket.delete_bucket(Bucket=BUCKET)
    instance = received(tmp_path, ct_small())

    with pytest.raises(OSError) as error:
        archive.archive(instance)

    assert BUCKET in str(error.value) and "\n" not in str(error.value)
    assert archive.index.lookup(ct_small().SOPInstanceUID) is None
    archive.close()

"""pynetdicom as a peer: an SCP on threads of this process, and a one-instance store SCU."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydicom import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES
from pynetdicom import _config as pynetdicom_config

from tests.support.daemons import RunningDaemon
from tests.support.processes import LOCALHOST, free_tcp_port


@contextmanager
def pynetdicom_scp(contexts: list[str], handlers: list[tuple[object, object]]) -> Iterator[int]:
    """A pynetdicom SCP (AE title PYNETDICOM) for ``contexts``, answering with ``handlers``.

    It runs on threads in the test's own process: that makes handlers that
    misbehave on purpose (wrong status, no answer) plain Python functions.
    """
    ae = AE(ae_title="PYNETDICOM")
    for context in contexts:
        ae.add_supported_context(context, ALL_TRANSFER_SYNTAXES)
    port = free_tcp_port()
    server = ae.start_server((LOCALHOST, port), block=False, evt_handlers=handlers)
    try:
        yield port
    finally:
        server.shutdown()


def pynetdicom_store(
    daemon: RunningDaemon,
    source: Path | Dataset,
    sop_class_uid: str,
    transfer_syntax: str,
    calling_ae_title: str = "PYNETDICOM",
) -> Dataset:
    """One C-STORE on its own association, proposing exactly one SOP class and transfer syntax.

    A file is streamed (``STORE_SEND_CHUNKED_DATASET``): its data set bytes
    go out exactly as they are on disk, and the command carries the UIDs of
    its File Meta Information.  Returns the response's status data set.
    """
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(sop_class_uid, [transfer_syntax])
    assoc = ae.associate(LOCALHOST, daemon.port, ae_title=daemon.ae_title)
    assert assoc.is_established, f"association for {sop_class_uid} / {transfer_syntax} refused"
    chunked = pynetdicom_config.STORE_SEND_CHUNKED_DATASET
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    try:
        status = assoc.send_c_store(source)
    finally:
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = chunked
        assoc.release()
    assert "Status" in status, f"no C-STORE response for {source}"
    return status

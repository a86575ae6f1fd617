"""Authorization rules against a real daemon, with dcmtk as the peers: a store from an AE
allowed only to find fails, a move to a destination the peer may not use gets 0124, a
peer no rule names is rejected."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from dicomd.part10 import read_header
from tests.support.dcmtk import run_dcmtk, run_echoscu
from tests.support.processes import LOCALHOST

CT = Path(get_testdata_file("CT_small.dcm"))
CT_STUDY = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"


@pytest.fixture
def daemon(start_dicomd, receiver):
    return start_dicomd(
        plugins=[{"plugin": "archive"}],
        destinations={
            "ALLOWED": {"host": LOCALHOST, "port": receiver.port},
            "FORBIDDEN": {"host": LOCALHOST, "port": receiver.port},
        },
        authorization=[
            {"peers": ["STORER"], "may": ["echo", "store"]},
            {"peers": ["FINDER"], "may": ["echo", "find"]},
            {"peers": [f"MOVER@{LOCALHOST}"], "may": ["echo", "move:ALLOWED"]},
        ],
    )


def store_as(daemon, calling: str):
    return run_dcmtk(
        "storescu", "-v", "-aet", calling, "-aec", daemon.ae_title, LOCALHOST, str(daemon.port),
        str(CT),
    )  # fmt: skip


def move_as(daemon, calling: str, destination: str):
    return run_dcmtk(
        "movescu", "-v", "-S", "-aet", calling, "-aec", daemon.ae_title, "-aem", destination,
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={CT_STUDY}",
        LOCALHOST, str(daemon.port),
    )  # fmt: skip


def test_a_store_from_an_ae_allowed_only_to_find_fails_and_nothing_is_kept(daemon):
    refused = store_as(daemon, "FINDER")

    output = refused.stdout + refused.stderr
    assert re.search(r"Store Response \(.*Status: 0x0?124\)", output), output
    archive = Path(daemon.config["storage"]["path"])
    assert not list(archive.rglob("*.dcm"))
    assert "FINDER at 127.0.0.1" in daemon.log_text() and "may not store" in daemon.log_text()


def test_a_move_to_a_destination_the_peer_may_not_use_gets_0124(daemon, receiver):
    stored = store_as(daemon, "STORER")
    assert stored.returncode == 0, stored.stdout + stored.stderr

    forbidden = move_as(daemon, "MOVER", "FORBIDDEN")
    assert list(receiver.directory.iterdir()) == []
    allowed = move_as(daemon, "MOVER", "ALLOWED")

    said = forbidden.stdout + forbidden.stderr
    assert re.search(r"Status: 0x0?124", said), said
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    (arrived,) = receiver.directory.iterdir()
    assert read_header(arrived).sop_instance_uid == read_header(CT).sop_instance_uid
    assert "may not move to FORBIDDEN" in daemon.log_text()


def test_a_peer_no_rule_names_is_rejected(daemon):
    echoed = run_echoscu(daemon, "-aet", "NOBODY")

    assert echoed.returncode != 0
    assert "no authorization rule names this peer (result 1, source 1, reason 3)" in (
        daemon.log_text()
    )
    assert run_echoscu(daemon, "-aet", "FINDER").returncode == 0

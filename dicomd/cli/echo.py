"""``dicomd echo HOST PORT``: C-ECHO, the DICOM ping."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from dicomd import uids
from dicomd.cli.arguments import positive_integer
from dicomd.cli.network import (
    CommandFailed,
    Peer,
    add_address,
    add_network_options,
    answer,
    associated,
    run,
)
from dicomd.client import propose
from dicomd.describe import describe_status, status_meaning

COMMAND = "echo"


def add_parser(subparsers: Any, command: str, summary: str) -> None:
    parser = subparsers.add_parser(
        command,
        prefix_chars="-+",  # dcmtk's +tls, +cf...
        help=summary,
        description=(
            "Open an association, send C-ECHO and print the status and round-trip time"
            " of each; exit status 0 when every echo succeeded."
        ),
    )
    add_network_options(parser)
    add_address(parser)
    parser.add_argument(
        "--repeat",
        type=positive_integer,
        default=1,
        metavar="N",
        help="send N echoes on the same association (default 1)",
    )
    parser.set_defaults(run=main)


def main(arguments: argparse.Namespace) -> int:
    return run(COMMAND, arguments, lambda reactor: echo(reactor, arguments))


async def echo(reactor: Any, arguments: argparse.Namespace) -> int:
    """Echo ``--repeat`` times, a line each; fail (after the release) unless every one succeeded."""
    peer = Peer.from_arguments(arguments)
    failed = None
    async with associated(reactor, peer, propose([uids.VERIFICATION])) as association:
        for _ in range(arguments.repeat):
            started = time.perf_counter()
            status = await answer(peer, "the C-ECHO response", association.echo)
            elapsed_ms = (time.perf_counter() - started) * 1000
            sys.stdout.write(
                f"echo to {peer}: {status_meaning(status, 'echo').capitalize()}"
                f" (0x{status:04X}) in {elapsed_ms:.1f} ms\n"
            )
            sys.stdout.flush()
            if status != uids.Status.SUCCESS and failed is None:
                failed = status
    if failed is not None:
        raise CommandFailed(f"C-ECHO failed: {describe_status(failed, 'echo')}")
    return 0

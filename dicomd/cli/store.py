"""``dicomd store HOST PORT FILE_OR_DIR…``: C-STORE files, on several associations at once.

Files are found first (directories recursively; what is not a Part 10 file is
skipped with a note), then shared out among the associations so that each
carries about the same number of bytes, and each association proposes only
the SOP classes and transfer syntaxes of its own files.  One failed file does
not stop the others; an association that fails leaves its remaining files
unsent and the others carry on.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, task
from twisted.logger import Logger

from dicomd import uids
from dicomd.cli.arguments import positive_integer
from dicomd.cli.network import (
    CommandFailed,
    Peer,
    add_address,
    add_network_options,
    associated,
    explain_failure,
    run,
)
from dicomd.cli.output import error_line, uid_name
from dicomd.cli.progress import Progress, rates
from dicomd.client import AssociationAborted, DimseTimeout, NoAcceptedContext
from dicomd.describe import describe_status

if TYPE_CHECKING:
    from dicomd.client import ClientAssociation, PresentationContextRQ, StoreResult
    from dicomd.part10 import Part10Header

COMMAND = "store"

TICK_INTERVAL = 1.0
"""Seconds between redraws of the progress bar when no file has finished."""

log = Logger()


def add_parser(subparsers: Any, command: str, summary: str) -> None:
    parser = subparsers.add_parser(
        command,
        prefix_chars="-+",  # dcmtk's +tls, +cf...
        help=summary,
        description=(
            "Send DICOM Part 10 files, and every such file under the directories named, as"
            " they are (or in an uncompressed syntax the peer prefers).  Files that are not"
            " DICOM are skipped with a note.  At the end: stored (success status), warnings"
            " (stored with a warning status) and failed counts, then each failure.  Exit"
            " status 0 only if nothing failed."
        ),
    )
    add_network_options(parser)
    parser.add_argument(
        "-j",
        "--jobs",
        type=positive_integer,
        default=1,
        metavar="N",
        help="associations in parallel, each with its share of the files (default 1)",
    )
    parser.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no progress bar (there is none anyway unless stderr is a terminal)",
    )
    add_address(parser)
    parser.add_argument(
        "paths", nargs="+", metavar="FILE_OR_DIR", help="a file, or a directory to send all of"
    )
    parser.set_defaults(run=main)


def main(arguments: argparse.Namespace) -> int:
    return run(COMMAND, arguments, lambda reactor: store(reactor, arguments))


MAX_CONTEXTS = 128
"""Presentation contexts one association can propose: their IDs are the odd numbers 1 to 255."""


@dataclass(frozen=True, slots=True)
class Instance:
    """A file to send and its File Meta: what it needs a context for, and what its C-STORE
    sends without reading the file's head again."""

    path: Path
    header: Part10Header

    @property
    def size(self) -> int:
        """Bytes of the file (how work is shared out): its data set runs to the end of it."""
        return self.header.data_set_offset + self.header.data_set_length

    @property
    def kind(self) -> tuple[str, str]:
        return self.header.sop_class_uid, self.header.transfer_syntax


def propose_for(instances: Iterable[Instance]) -> tuple[PresentationContextRQ, ...]:
    """One context for each SOP class and transfer syntax among ``instances``."""
    from dicomd.client import storage_contexts  # not for ``dicomd store --help``

    return storage_contexts(instance.kind for instance in instances)


def batches(instances: Sequence[Instance]) -> list[list[Instance]]:
    """``instances`` in order, cut where one more kind would need more contexts than allowed."""
    cut: list[list[Instance]] = []
    kinds: set[tuple[str, str]] = set()
    for instance in instances:
        if not cut or (instance.kind not in kinds and len(kinds) == MAX_CONTEXTS):
            cut.append([])
            kinds = set()
        cut[-1].append(instance)
        kinds.add(instance.kind)
    return cut


@dataclass(slots=True)
class Tally:
    """What happened to every file, across all associations."""

    stored: int = 0
    warnings: int = 0
    failures: list[tuple[Path, str]] = field(default_factory=list)
    not_sent: int = 0
    association_errors: list[str] = field(default_factory=list)
    associations_opened: int = 0

    def record(self, instance: Instance, result: StoreResult) -> None:
        category = uids.status_category(result.status)
        if category == "success":
            self.stored += 1
        elif category == "warning":
            self.warnings += 1
        else:
            comment = f" ({result.error_comment})" if result.error_comment else ""
            self.failures.append((instance.path, describe_status(result.status, "store") + comment))

    def association_failed(self, message: str) -> None:
        if message not in self.association_errors:
            self.association_errors.append(message)

    @property
    def ok(self) -> bool:
        return not (self.failures or self.not_sent or self.association_errors)


def find_instances(paths: Iterable[str]) -> tuple[list[Instance], list[tuple[Path, str]]]:
    """Every Part 10 file named or under a directory named, and what was skipped, and why.

    A path that does not exist is a mistake on the command line, not a
    file to skip: it stops the command before anything is sent.
    """
    from dicomd.part10 import Part10Error, read_header

    instances: list[Instance] = []
    skipped: list[tuple[Path, str]] = []
    for name in paths:
        path = Path(name)
        if not path.exists():
            raise CommandFailed(f"{name}: No such file or directory")
        for candidate in _files_under(path):
            try:
                header = read_header(candidate)
            except Part10Error as error:
                skipped.append((candidate, f"not a DICOM file ({error})"))
            except OSError as error:
                skipped.append((candidate, error.strerror or str(error)))
            else:
                instances.append(Instance(candidate, header))
    return instances, skipped


def _files_under(path: Path) -> Iterable[Path]:
    if not path.is_dir():
        yield path
        return
    for directory, subdirectories, files in os.walk(path):
        subdirectories.sort()
        for name in sorted(files):
            yield Path(directory, name)


def share_out(instances: Sequence[Instance], jobs: int) -> list[list[Instance]]:
    """At most ``jobs`` non-empty groups of about equal size: each file goes to the lightest.

    Files keep their order within a group, so that a series is sent in the
    order it was named.
    """
    groups: list[list[Instance]] = [[] for _ in range(min(jobs, len(instances)))]
    loads = [0] * len(groups)
    order = {instance.path: position for position, instance in enumerate(instances)}
    for instance in sorted(instances, key=lambda i: i.size, reverse=True):
        lightest = loads.index(min(loads))
        groups[lightest].append(instance)
        loads[lightest] += instance.size
    return [sorted(group, key=lambda i: order[i.path]) for group in groups]


async def store(reactor: Any, arguments: argparse.Namespace) -> int:
    instances, skipped = find_instances(arguments.paths)
    for path, reason in skipped:
        error_line(COMMAND, f"{path}: skipped, {reason}")
    if not instances:
        raise CommandFailed("no DICOM files to send")
    peer = Peer.from_arguments(arguments)
    progress = Progress(
        len(instances),
        sum(instance.size for instance in instances),
        sys.stderr,
        visible=arguments.progress and sys.stderr.isatty(),
    )
    tally = Tally()
    # Redrawn on a timer as well as after each file, so that rates and time
    # left stay current while one large file is on its way.
    ticker = task.LoopingCall(progress.draw)
    ticker.clock = reactor
    ticker.start(TICK_INTERVAL, now=True)
    try:
        await defer.gatherResults(
            [
                defer.ensureDeferred(_send(reactor, peer, group, tally, progress))
                for group in share_out(instances, arguments.jobs)
            ],
            consumeErrors=True,
        )
    finally:
        ticker.stop()
        progress.clear()
    return report(tally, progress, len(skipped))


async def _send(
    reactor: Any, peer: Peer, group: list[Instance], tally: Tally, progress: Progress
) -> None:
    """One share of the files, on one association (more if they need over 128 contexts).

    A failure of an association leaves the rest of the share unsent.
    """
    attempted = 0
    try:
        for batch in batches(group):
            async with associated(reactor, peer, propose_for(batch)) as association:
                tally.associations_opened += 1
                for instance in batch:
                    attempted += 1
                    await _send_one(association, peer, instance, tally)
                    progress.advance(instance.size)
    except CommandFailed as failure:
        tally.association_failed(str(failure))
        tally.not_sent += len(group) - attempted


async def _send_one(
    association: ClientAssociation, peer: Peer, instance: Instance, tally: Tally
) -> None:
    """C-STORE one file; only a failure of the whole association propagates."""
    from dicomd.part10 import Part10Error

    try:
        result = await defer.maybeDeferred(association.store, instance.path, header=instance.header)
    except NoAcceptedContext:
        sop_class, syntax = (uid_name(uid) for uid in instance.kind)
        tally.failures.append((instance.path, f"not accepted by {peer}: {sop_class} in {syntax}"))
    except (Part10Error, OSError) as failure:
        tally.failures.append((instance.path, f"cannot read it: {failure}"))
    except (AssociationAborted, DimseTimeout, defer.TimeoutError) as failure:
        message = explain_failure(failure, peer, "the C-STORE response")
        tally.failures.append((instance.path, message))
        raise CommandFailed(message) from failure
    else:
        log.info(
            "{path}: {status}",
            path=str(instance.path),
            status=describe_status(result.status, "store"),
        )
        tally.record(instance, result)


def report(tally: Tally, progress: Progress, skipped: int) -> int:
    """The summary on stdout and each failure on stderr; the exit status."""
    if not tally.associations_opened:
        for message in tally.association_errors:
            error_line(COMMAND, message)
        return 1
    sent = progress.files
    extra = "".join(
        f", {label} {count}"
        for label, count in (("not sent", tally.not_sent), ("skipped", skipped))
        if count
    )
    sys.stdout.write(
        f"stored {tally.stored}, warnings {tally.warnings}, failed {len(tally.failures)}{extra}"
        f" in {progress.elapsed:.1f} s ({rates(sent, progress.size, progress.elapsed)})\n"
    )
    sys.stdout.flush()
    for path, reason in tally.failures:
        error_line(COMMAND, f"{path}: {reason}")
    explained = {reason for _, reason in tally.failures}
    for message in tally.association_errors:
        if message not in explained:
            error_line(COMMAND, message)
    return 0 if tally.ok else 1

"""``dicomd move`` and ``dicomd get``: C-MOVE to a third AE, C-GET into a folder.

Both take their keys as ``dicomd find`` does (findscu's ``-k``), print a
progress line per pending response on stderr and a summary at the end; the
exit status is 0 only when every sub-operation succeeded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Final

from pydicom import uid as pydicom_uid

from dicomd import uids
from dicomd.cli.find import DEFAULT_LEVELS, add_query_arguments
from dicomd.cli.network import (
    CommandFailed,
    Peer,
    add_address,
    add_network_options,
    answer,
    associated,
    require_context,
    run,
)
from dicomd.cli.query import build_identifier
from dicomd.client import RetrieveProgress, RetrieveResult, retrieve_contexts
from dicomd.describe import describe_status

MODELS: Final = {
    "move": {"patient": uids.PATIENT_ROOT_MOVE, "study": uids.STUDY_ROOT_MOVE},
    "get": {"patient": uids.PATIENT_ROOT_GET, "study": uids.STUDY_ROOT_GET},
}

GET_STORAGE_CLASSES: Final = tuple(
    str(getattr(pydicom_uid, name))
    for name in (
        "CTImageStorage",
        "EnhancedCTImageStorage",
        "MRImageStorage",
        "EnhancedMRImageStorage",
        "ComputedRadiographyImageStorage",
        "DigitalXRayImageStorageForPresentation",
        "DigitalXRayImageStorageForProcessing",
        "DigitalMammographyXRayImageStorageForPresentation",
        "DigitalMammographyXRayImageStorageForProcessing",
        "BreastTomosynthesisImageStorage",
        "UltrasoundImageStorage",
        "UltrasoundMultiFrameImageStorage",
        "SecondaryCaptureImageStorage",
        "MultiFrameGrayscaleByteSecondaryCaptureImageStorage",
        "MultiFrameGrayscaleWordSecondaryCaptureImageStorage",
        "MultiFrameTrueColorSecondaryCaptureImageStorage",
        "NuclearMedicineImageStorage",
        "PositronEmissionTomographyImageStorage",
        "EnhancedPETImageStorage",
        "XRayAngiographicImageStorage",
        "XRayRadiofluoroscopicImageStorage",
        "RTImageStorage",
        "RTDoseStorage",
        "RTStructureSetStorage",
        "RTPlanStorage",
        "BasicTextSRStorage",
        "EnhancedSRStorage",
        "ComprehensiveSRStorage",
        "KeyObjectSelectionDocumentStorage",
        "GrayscaleSoftcopyPresentationStateStorage",
        "EncapsulatedPDFStorage",
        "VLPhotographicImageStorage",
        "VLEndoscopicImageStorage",
        "OphthalmicPhotography8BitImageStorage",
        "SegmentationStorage",
        "RawDataStorage",
    )
)
"""What ``dicomd get`` is ready to receive unless told more with ``--storage-class``."""


def add_parser(subparsers: Any, command: str, summary: str) -> None:
    """The parser of ``move`` or ``get`` (``command``)."""
    if command == "move":
        description = (
            "Send one C-MOVE: the peer sends what the keys select to the AE named by"
            " --dest, which it must know.  Progress goes to stderr."
        )
    else:
        description = (
            "Send one C-GET: the peer sends what the keys select back over the same"
            " association; each instance is written to the output folder as"
            " <SOP Instance UID>.dcm, its data set as sent.  Progress goes to stderr."
        )
    parser = subparsers.add_parser(
        command, help=summary, description=description, prefix_chars="-+"
    )
    add_network_options(parser)
    query = add_query_arguments(
        parser,
        "what to retrieve",
        worklist=False,
        key_help="the unique key of the level, e.g. -k StudyInstanceUID=1.2.3",
    )
    if command == "move":
        query.add_argument(
            "--dest",
            "-aem",
            dest="destination",
            required=True,
            metavar="AE",
            help="the move destination's AE title, as the peer knows it",
        )
    else:
        query.add_argument(
            "-od",
            "--output-directory",
            dest="folder",
            type=Path,
            default=Path("."),
            metavar="DIR",
            help="where received instances go (default: here)",
        )
        query.add_argument(
            "--storage-class",
            dest="storage_classes",
            action="append",
            default=[],
            metavar="UID",
            help="also accept this storage SOP class; repeat for more",
        )
    add_address(parser)
    parser.set_defaults(run=lambda arguments: main(command, arguments))


def main(command: str, arguments: argparse.Namespace) -> int:
    return run(command, arguments, lambda reactor: retrieve(reactor, command, arguments))


async def retrieve(reactor: Any, command: str, arguments: argparse.Namespace) -> int:
    level = arguments.level or DEFAULT_LEVELS[arguments.model]
    identifier = build_identifier(arguments.keys, level)
    sop_class = MODELS[command][arguments.model]
    peer = Peer.from_arguments(arguments)
    storage = (*GET_STORAGE_CLASSES, *arguments.storage_classes) if command == "get" else ()
    if command == "get":
        arguments.folder.mkdir(parents=True, exist_ok=True)
    contexts = retrieve_contexts(sop_class, storage)
    async with associated(reactor, peer, contexts, scp_roles=storage) as association:
        require_context(association, peer, sop_class)
        if command == "move":
            request = lambda: association.move(  # noqa: E731
                sop_class, identifier, arguments.destination, _show_progress
            )
        else:
            request = lambda: association.get(  # noqa: E731
                sop_class, identifier, arguments.folder, _show_progress
            )
        result: RetrieveResult = await answer(peer, f"the C-{command.upper()} responses", request)
    return _report(command, result)


def _show_progress(progress: RetrieveProgress) -> None:
    done = progress.completed + progress.failed + progress.warning
    total = done + progress.remaining
    sys.stderr.write(
        f"{done} of {total} sub-operations done ({progress.completed} completed,"
        f" {progress.failed} failed, {progress.warning} warnings)\n"
    )


def _report(command: str, result: RetrieveResult) -> int:
    sys.stderr.write(
        f"{command}: {result.completed} completed, {result.failed} failed,"
        f" {result.warning} warnings; {describe_status(result.status, command)}\n"
    )
    for uid in result.failed_sop_instance_uids:
        sys.stderr.write(f"  failed: {uid}\n")
    if uids.status_category(result.status) != "success":
        comment = f": {result.error_comment}" if result.error_comment else ""
        raise CommandFailed(
            f"C-{command.upper()} ended with {describe_status(result.status, command)}{comment}"
        )
    return 0

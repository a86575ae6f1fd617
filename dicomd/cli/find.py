"""``dicomd find HOST PORT``: C-FIND, with keys written as findscu writes them."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Final

from dicomd import uids
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
from dicomd.cli.output import error_line
from dicomd.cli.query import BadQueryKey, QueryKey, build_identifier, parse_key, table
from dicomd.client import propose
from dicomd.describe import describe_status

COMMAND = "find"

MODELS: Final = {
    "patient": uids.PATIENT_ROOT_FIND,
    "study": uids.STUDY_ROOT_FIND,
    "worklist": uids.MODALITY_WORKLIST_FIND,
}
DEFAULT_LEVELS: Final = {"patient": "PATIENT", "study": "STUDY", "worklist": None}
LEVELS: Final = ("PATIENT", "STUDY", "SERIES", "IMAGE")

DEFAULT_KEYS: Final[dict[str, tuple[str, ...]]] = {
    "PATIENT": ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"),
    "STUDY": (
        "PatientName",
        "PatientID",
        "StudyDate",
        "AccessionNumber",
        "ModalitiesInStudy",
        "StudyDescription",
        "StudyInstanceUID",
    ),
    "SERIES": ("Modality", "SeriesNumber", "SeriesDescription", "SeriesInstanceUID"),
    "IMAGE": ("InstanceNumber", "SOPClassUID", "SOPInstanceUID"),
    "worklist": (
        "PatientName",
        "PatientID",
        "AccessionNumber",
        "ScheduledProcedureStepSequence[0].Modality",
        "ScheduledProcedureStepSequence[0].ScheduledStationAETitle",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate",
    ),
}
"""Return keys asked for when the command line names none, so that a bare query shows something."""


def add_parser(subparsers: Any, command: str, summary: str) -> None:
    parser = subparsers.add_parser(
        command,
        prefix_chars="-+",  # dcmtk's +tls, +cf...
        help=summary,
        description=(
            "Send one C-FIND and print the matches as a table whose columns are the keys"
            " asked for, in order (or as JSON with --json); the number of matches goes to"
            " stderr.  Without -k, a few common return keys of the level are asked for."
        ),
        epilog=(
            "keys: -k PatientName=Doe* (matching key), -k ModalitiesInStudy (return key),"
            " -k 0010,0020=X (by tag), -k StudyDate=20240101- (range),"
            " -k ScheduledProcedureStepSequence[0].Modality=MR (inside a sequence item);"
            " several values are separated by a backslash."
        ),
    )
    add_network_options(parser)
    query = add_query_arguments(
        parser,
        "query",
        worklist=True,
        key_help="a matching key (with a value) or return key (without); repeat for more",
    )
    query.add_argument(
        "--json", action="store_true", help="print a JSON array of DICOM JSON models (PS3.18 F)"
    )
    add_address(parser)
    parser.set_defaults(run=main)


def add_query_arguments(
    parser: argparse.ArgumentParser, title: str, *, worklist: bool, key_help: str
) -> argparse._ArgumentGroup:
    """The model (-P, -S and perhaps -W), the level (-L) and the keys (-k), as findscu has them.

    Returns the group of the level and keys, for the command to add its own.
    """
    model = parser.add_argument_group("query model").add_mutually_exclusive_group()
    model.add_argument(
        "-P",
        "--patient",
        dest="model",
        action="store_const",
        const="patient",
        help="Patient Root model (default level PATIENT)",
    )
    model.add_argument(
        "-S",
        "--study",
        dest="model",
        action="store_const",
        const="study",
        help="Study Root model, the default (default level STUDY)",
    )
    if worklist:
        model.add_argument(
            "-W",
            "--worklist",
            dest="model",
            action="store_const",
            const="worklist",
            help="Modality Worklist model (no query/retrieve level)",
        )
    parser.set_defaults(model="study")
    query = parser.add_argument_group(title)
    query.add_argument(
        "-L",
        "--level",
        type=str.upper,
        choices=LEVELS,
        metavar="LEVEL",
        help="QueryRetrieveLevel: PATIENT, STUDY, SERIES or IMAGE",
    )
    query.add_argument(
        "-k",
        "--key",
        dest="keys",
        type=query_key,
        action="append",
        default=[],
        metavar="KEY[=VALUE]",
        help=key_help,
    )
    return query


def main(arguments: argparse.Namespace) -> int:
    if arguments.model == "worklist" and arguments.level is not None:
        error_line(COMMAND, "-L does not apply to the worklist model (-W)")
        return 2
    return run(COMMAND, arguments, lambda reactor: find(reactor, arguments))


def query_key(text: str) -> QueryKey:
    """``-k``'s argument type, so that a bad key is a usage error like any other."""
    try:
        return parse_key(text)
    except BadQueryKey as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def query_level(arguments: argparse.Namespace) -> str | None:
    if arguments.model == "worklist":
        return None
    return arguments.level or DEFAULT_LEVELS[arguments.model]


async def find(reactor: Any, arguments: argparse.Namespace) -> int:
    """Query, print the matches, then ``N matches`` on stderr; a failure status fails."""
    level = query_level(arguments)
    keys = arguments.keys or [parse_key(text) for text in DEFAULT_KEYS[level or arguments.model]]
    identifier = build_identifier(keys, level)
    sop_class = MODELS[arguments.model]
    peer = Peer.from_arguments(arguments)
    async with associated(reactor, peer, propose([sop_class])) as association:
        require_context(association, peer, sop_class)
        result = await answer(
            peer,
            "the C-FIND responses",
            lambda: association.find(sop_class, identifier),
        )
    if arguments.json:
        document = [match.to_json_dict() for match in result.matches]
        sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    elif result.matches:
        sys.stdout.write("\n".join(table(result.matches, keys)) + "\n")
    sys.stdout.flush()
    if uids.status_category(result.status) not in ("success", "warning"):
        comment = f": {result.error_comment}" if result.error_comment else ""
        raise CommandFailed(f"C-FIND failed: {describe_status(result.status, 'find')}{comment}")
    count = len(result.matches)
    sys.stderr.write(f"{count} match{'' if count == 1 else 'es'}\n")
    return 0

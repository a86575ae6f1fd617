"""Starting a command without the optional packages it will not use.

Twisted loads pyOpenSSL, and pydicom loads numpy, whenever they are
installed, though each runs without them (TLS, or decoding pixel data, is
then what is missing).  They cost a command more than it does: pyOpenSSL
about 45 ms of CPU, numpy about 80 ms, against 200 ms for a whole
``dicomd echo``.  A command that knows from its arguments that it will never
use one marks it absent before anything loads it.
"""

import sys

# Nothing but sys at run time: dicomd.cli imports this module on every start, --help too.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable


def leave_out(package: str, *, unless_loaded: "Iterable[str]" = ()) -> None:
    """Mark ``package`` as not installed for the rest of this process (None in `sys.modules`,
    which makes its import fail as if it were missing).

    Nothing changes if ``package`` is loaded already, or one of
    ``unless_loaded``, the modules that decide at import whether they have
    it: a process that embeds the command, or a test, keeps what it has.
    """
    if not {package, *unless_loaded} & sys.modules.keys():
        sys.modules[package] = None  # type: ignore[assignment]

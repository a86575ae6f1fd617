"""Teaching pydicom the data dictionary of DICOM 2024d when it carries an older edition.

pydicom 3.0 carries 2024c; 2024d added the thermography elements, Referenced
Segmentation Sequence and a few more, and renamed two keywords.  A node that
does not know an element cannot name it in ``dicomd dump``, cannot find it by
keyword, and in implicit VR cannot tell that it is a sequence, so the walker
would skip over its items unchecked.  Registering goes through pydicom's own
registries, so every reader (pydicom's, the walker, dump, queries) sees it at
once, and it stops by itself when an installed pydicom carries 2024d.

pydicom takes about 200 ms to import and ``import dicomd`` must stay instant
(the command line imports it for ``--help``), so registration waits for
pydicom's dictionary module to load and follows it at once, before anything
can read the dictionary.
"""

import sys

# Nothing but sys at run time: importing typing (or __future__) would cost `import dicomd`
# several times what the rest of it takes.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from importlib.abc import Loader
    from importlib.machinery import ModuleSpec
    from types import ModuleType

_DATADICT = "pydicom.datadict"


def register() -> bool:
    """Add what `dicomd.dictionary_2024d` carries to pydicom's dictionaries, unless pydicom
    carries that edition or a later one; returns whether it did.

    Elements go through `pydicom.datadict.add_dict_entries`, which also maps
    their keywords.  A renamed element keeps its old keyword as well, so code
    written against the older edition still runs.  UIDs go into
    ``pydicom._uid_dict.UID_dictionary``: pydicom has no public way to add
    one, that table is what `pydicom.uid.UID` names come from, and it is how
    pynetdicom adds the transfer syntaxes pydicom lacks.  Calling again adds
    the same entries again, which changes nothing.
    """
    from pydicom import _uid_dict, _version
    from pydicom.datadict import add_dict_entries

    from dicomd import dictionary_2024d as edition

    # Editions are named by year and letter ("2024c"), so text order is their order.
    if _version.__dicom_version__ >= edition.EDITION:
        return False
    add_dict_entries(edition.ELEMENTS)
    _uid_dict.UID_dictionary.update(edition.UIDS)
    return True


def register_with_pydicom() -> None:
    """Register now if pydicom's dictionary is loaded, or else as soon as it loads."""
    if _DATADICT in sys.modules:
        register()
    else:
        sys.meta_path.insert(0, RegisterAfterLoading())


class RegisterAfterLoading:
    """An import finder that finds nothing itself: it hands on the spec the other finders
    give for ``pydicom.datadict``, with a loader that registers once the module has run,
    and then leaves ``sys.meta_path``."""

    def find_spec(
        self, name: str, path: object = None, target: "ModuleType | None" = None
    ) -> "ModuleSpec | None":
        if name != _DATADICT:
            return None
        sys.meta_path.remove(self)
        from importlib.util import find_spec

        spec = find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _ThenRegister(spec.loader)
        return spec


class _ThenRegister:
    """Runs a module with its own loader, which it puts back on the module first, then
    registers."""

    def __init__(self, loader: "Loader") -> None:
        self._loader = loader

    def create_module(self, spec: "ModuleSpec") -> "ModuleType | None":
        return self._loader.create_module(spec)

    def exec_module(self, module: "ModuleType") -> None:
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        register()

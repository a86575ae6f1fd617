"""The package's layers import each other in one direction only: ul ← dimse ← {node, scu} ← app.

Read from the source with `ast`, so an import added anywhere (inside a
function or under TYPE_CHECKING too) that breaks the layering fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import dicomd

PACKAGE = Path(dicomd.__file__).parent

LEAVES = {
    "dicomd",
    "dicomd.uids",
    "dicomd.part10",
    "dicomd.filesystem",
    "dicomd.vrs",
    "dicomd.interfaces",
    "dicomd.describe",
    "dicomd.users",
    "dicomd.dictionary",
    "dicomd.dictionary_2024d",
    "dicomd.metrics",
}
"""Small modules of facts and values that any layer may use."""

ALLOWED: dict[str, set[str]] = {
    "dicomd.ul": {"dicomd.ul"},
    "dicomd.dimse": {"dicomd.ul", "dicomd.dimse"},
    "dicomd.audit": {"dicomd.ul", "dicomd.dimse", "dicomd.audit"},
    "dicomd.node": {"dicomd.ul", "dicomd.dimse", "dicomd.audit", "dicomd.node"},
    "dicomd.scu": {"dicomd.ul", "dicomd.dimse", "dicomd.scu"},
    "dicomd.client": {"dicomd.ul", "dicomd.dimse", "dicomd.scu"},
    "dicomd.archive": {"dicomd.archive"},
    "dicomd.config": set(),
    "dicomd.web": {"dicomd.ul", "dicomd.dimse", "dicomd.node", "dicomd.web"},
    "dicomd.app": {
        "dicomd.ul",
        "dicomd.dimse",
        "dicomd.node",
        "dicomd.scu",
        "dicomd.client",
        "dicomd.config",
        "dicomd.archive",
        "dicomd.audit",
        "dicomd.lag",
        "dicomd.web",
    },
    "dicomd.fleet": {
        "dicomd.app",
        "dicomd.archive",
        "dicomd.config",
        "dicomd.fleet",
        "dicomd.interfaces",
        "dicomd.node",
    },
    "dicomd.tap": {"dicomd.app", "dicomd.config", "dicomd.fleet"},
    "dicomd.testing": {
        "dicomd.app",
        "dicomd.audit",
        "dicomd.config",
        "dicomd.client",
        "dicomd.scu",
        "dicomd.dimse",
        "dicomd.ul",
        "dicomd.node",
    },
    "dicomd.cli": {
        "dicomd.cli",
        "dicomd.client",
        "dicomd.dump",
        "dicomd.users",
        "dicomd.config",
        "dicomd.tap",
    },
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(name: str) -> str | None:
    """The longest key of ALLOWED that ``name`` is, or lies under."""
    matches = [layer for layer in ALLOWED if name == layer or name.startswith(layer + ".")]
    return max(matches, key=len) if matches else None


def dicomd_imports(path: Path) -> set[str]:
    """Every dicomd module ``path`` imports, anywhere in the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "dicomd" or name.startswith("dicomd.")}


def _within(name: str, places: set[str]) -> bool:
    return any(name == place or name.startswith(place + ".") for place in places)


def resolves_to_module(name: str) -> bool:
    """``from dicomd.x import y`` names y, which may be a module or an attribute."""
    dotted = PACKAGE.parent.joinpath(*name.split("."))
    return dotted.with_suffix(".py").is_file() or (dotted / "__init__.py").is_file()


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_each_module_imports_only_from_the_layers_below(path: Path) -> None:
    importer = module_name(path)
    layer = layer_of(importer)
    if layer is None:
        return  # a leaf module: checked by the test below
    wrong = sorted(
        name
        for name in dicomd_imports(path)
        if resolves_to_module(name) and name not in LEAVES and not _within(name, ALLOWED[layer])
    )
    assert not wrong, f"{importer} ({layer}) imports {wrong}"


@pytest.mark.parametrize("leaf", sorted(LEAVES - {"dicomd"}))
def test_leaf_modules_import_no_layer(leaf: str) -> None:
    path = PACKAGE.parent.joinpath(*leaf.split(".")).with_suffix(".py")
    modules = {name for name in dicomd_imports(path) if resolves_to_module(name)}
    assert modules <= LEAVES, f"{leaf} imports {sorted(modules - LEAVES)}"


def test_every_layer_has_modules() -> None:
    """The table above names real places: a typo would make a rule check nothing."""
    for layer in ALLOWED:
        assert resolves_to_module(layer), layer

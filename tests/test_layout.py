"""The package's layering, checked on its source: one owner for the tables, no private imports, short files."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kdbench"
MAX_LINES = 400  # a longer module must say why in its docstring (with the words "400 lines")
SOURCES = sorted(PACKAGE.rglob("*.py"))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _rel(path: Path) -> str:
    return str(path.relative_to(PACKAGE.parent))


def test_the_sources_are_found() -> None:
    assert len(SOURCES) > 20 and PACKAGE / "store" / "claims.py" in SOURCES


@pytest.mark.parametrize("path", [p for p in SOURCES if "store" not in p.relative_to(PACKAGE).parts], ids=_rel)
def test_only_the_store_touches_the_database(path: Path) -> None:
    """Outside kdbench/store/ nothing imports SQLAlchemy or opens a session or connection on the store."""
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            assert not any(a.name.split(".")[0] == "sqlalchemy" for a in node.names), f"{_rel(path)} imports sqlalchemy"
        elif isinstance(node, ast.ImportFrom):
            assert (node.module or "").split(".")[0] != "sqlalchemy", f"{_rel(path)} imports from sqlalchemy"
        elif isinstance(node, ast.Attribute) and node.attr in ("session", "engine"):
            raise AssertionError(f"{_rel(path)}:{node.lineno} uses .{node.attr}: ask the store (kdbench.store)")


@pytest.mark.parametrize("path", SOURCES, ids=_rel)
def test_no_module_imports_a_private_name(path: Path) -> None:
    """``from kdbench.x import _name`` and ``kdbench_module._name`` are both refused."""
    modules: set[str] = set()  # local names bound to kdbench modules
    tree = _tree(path)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kdbench"):
            private = [a.name for a in node.names if a.name.startswith("_")]
            assert not private, f"{_rel(path)}:{node.lineno} imports private {private} from {node.module}"
            modules.update(a.asname or a.name for a in node.names)
        elif isinstance(node, ast.Import):
            modules.update((a.asname or a.name).split(".")[0] for a in node.names if a.name.startswith("kdbench"))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            raise AssertionError(f"{_rel(path)}:{node.lineno} uses private {node.value.id}.{node.attr}")


@pytest.mark.parametrize("path", SOURCES, ids=_rel)
def test_modules_are_short_or_say_why(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    if lines > MAX_LINES:
        doc = ast.get_docstring(_tree(path)) or ""
        assert f"{MAX_LINES} lines" in doc, f"{_rel(path)} has {lines} lines and its docstring does not say why"

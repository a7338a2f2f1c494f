"""The package's layering, checked on its source: one owner for the tables, no private imports, short files."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kdbench"
MAX_LINES = 400  # a longer module must say why in its docstring: "... 400 lines because <a reason>."
HARD_MAX_LINES = 500  # 1.25 x MAX_LINES: no module is longer, whatever its docstring says
MIN_REASON_WORDS = 10  # words after "because" in that sentence
MIN_REASON_CONTENT = 5  # distinct words of substance among them (not filler, not "long", "lines", ...)
# Words that say nothing about *why* a module is long: restating its length or size is not a reason.
_FILLER_WORDS = """
    a an the and or but so of to in on at by for with from into as than then there here this that these those
    it its it's is are was were be been being has have had do does did can could would should will must may
    not no very much many more most lot lots some all any each every just also only still too quite rather
    long longer length lines line big bigger large larger size code module modules file files thing things
    stuff needs need needed because past over runs run little bit
"""
_FILLER = frozenset(_FILLER_WORDS.split())
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


def _length_problem(source: str) -> str | None:
    """Why a module's length is not acceptable, or None.

    Up to MAX_LINES lines needs nothing. Up to HARD_MAX_LINES needs a sentence in the module docstring that
    names the MAX_LINES limit and then gives a reason after "because": at least MIN_REASON_WORDS words, of
    which MIN_REASON_CONTENT distinct ones are not filler (so "because it is long" is not a reason).
    Longer than HARD_MAX_LINES is refused whatever the docstring says: split the module.
    """
    lines = len(source.splitlines())
    if lines <= MAX_LINES:
        return None
    if lines > HARD_MAX_LINES:
        return f"has {lines} lines, over the ceiling of {HARD_MAX_LINES} whatever its docstring says: split it"
    doc = ast.get_docstring(ast.parse(source)) or ""
    sentences = re.split(r"(?<=[.!?])\s+", " ".join(doc.split()))
    best = ""
    for sentence in sentences:
        m = re.search(rf"\b{MAX_LINES} lines\b.*?\bbecause\b(?P<reason>.*)", sentence, flags=re.IGNORECASE)
        if not m:
            continue
        words = re.findall(r"[A-Za-z][A-Za-z'-]*", m["reason"])
        content = {w.lower() for w in words if len(w) > 2 and w.lower() not in _FILLER}
        if len(words) >= MIN_REASON_WORDS and len(content) >= MIN_REASON_CONTENT:
            return None
        best = f"; its reason ({m['reason'].strip()!r}) has {len(words)} words, {len(content)} of substance"
    return (f"has {lines} lines and its docstring does not say, in one sentence, that it runs past {MAX_LINES}"
            f" lines because of a reason ({MIN_REASON_WORDS}+ words, {MIN_REASON_CONTENT}+ of substance){best}")


def _module(doc: str | None, lines: int) -> str:
    head = f'"""{doc}"""\n' if doc is not None else ""
    return head + "x = 1\n" * (lines - len(head.splitlines()))


_REASON = ("The module runs past 400 lines because each of the four published terms carries its formula, paper,"
           " published defaults and the authors' code it was checked against.")


@pytest.mark.parametrize(("doc", "lines", "ok"), [
    (None, MAX_LINES, True),  # at the limit nothing is asked
    ("A module.", MAX_LINES, True),
    (None, MAX_LINES + 1, False),  # one line over needs a reason
    ("A module. It is over 400 lines.", MAX_LINES + 1, False),  # the words alone are not a reason
    ("The module runs past 400 lines.", 450, False),
    ("The module runs past 400 lines because it is long.", 450, False),  # too short
    ("The module runs past 400 lines because it is a long module with many lines of code in this file.", 450,
     False),  # long enough but only restates the length
    ("Splitting would scatter the defaults and the schema apart, because they all share one place. Over 400 lines.",
     450, False),  # the reason must be in the sentence that names the limit, after it
    (_REASON, 450, True),
    ("First line.\n\nThe module is longer than\n400 lines because the six statistics read one design and share its"
     " helpers; split apart, each piece would need the others' private helpers.", HARD_MAX_LINES, True),
    (_REASON, HARD_MAX_LINES + 1, False),  # over the ceiling, whatever the docstring says
    (_REASON, 661, False),
])
def test_the_length_check_itself(doc: str | None, lines: int, ok: bool) -> None:
    source = _module(doc, lines)
    assert len(source.splitlines()) == lines
    assert (_length_problem(source) is None) is ok, _length_problem(source)


@pytest.mark.parametrize("path", SOURCES, ids=_rel)
def test_modules_are_short_or_say_why(path: Path) -> None:
    problem = _length_problem(path.read_text())
    assert problem is None, f"{_rel(path)} {problem}"

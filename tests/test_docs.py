"""The docs cannot go stale: the study reference is generated from the schema and lists every key, every page is
in the site's nav, and the README stays a front page whose links resolve."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from kdbench.config import Study
from kdbench.config.reference import REFERENCE_PAGE, study_reference
from kdbench.config.schema import study_json_schema

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FRONT_PAGE_LINES = 60  # the README's first screen: everything before its first section of links


def _keys_of_schema(schema: dict[str, Any]) -> set[str]:
    """Every study key, dotted, walking the schema's sections ($ref'd models) and the methods' spaces."""
    keys: set[str] = set()

    def section(prop: dict[str, Any]) -> dict[str, Any] | None:
        ref = prop.get("$ref", "").rsplit("/", 1)[-1]
        if ref and ref not in ("Budget", "Range"):
            return dict(schema["$defs"][ref])
        return prop if prop.get("type") == "object" and "properties" in prop else None

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, prop in node.get("properties", {}).items():
            keys.add(prefix + key)
            sub = section(prop)
            if sub is not None:
                walk(sub, f"{prefix}{key}.")

    walk(schema, "")
    return keys


def _keys_of_models(model: type[BaseModel] = Study, prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        keys.add(prefix + name)
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            keys |= _keys_of_models(sub, f"{prefix}{name}.")
    return keys


def _keys_of_page(text: str) -> set[str]:
    """Every key the reference page's tables list, under their section headings (``## `search.spaces` ``)."""
    keys: set[str] = set()
    prefix = None
    for line in text.splitlines():
        if line.startswith("## "):
            m = re.fullmatch(r"## `([\w.]+)`", line)
            prefix = f"{m[1]}." if m else ("" if line == "## The study" else None)
            keys |= {m[1]} if m else set()
        elif prefix is not None and (m := re.match(r"\| `(\w+)` \|", line)):
            keys.add(prefix + m[1])
    return keys


def test_the_study_reference_is_generated_and_current() -> None:
    page = (ROOT / REFERENCE_PAGE).read_text(encoding="utf-8")
    assert page == study_reference(), "docs/study-reference.md is stale: run python -m kdbench.config.reference"


def test_the_reference_lists_every_key_of_the_schema_and_of_the_models() -> None:
    schema_keys = _keys_of_schema(study_json_schema())
    page_keys = _keys_of_page((ROOT / REFERENCE_PAGE).read_text(encoding="utf-8"))
    assert page_keys == schema_keys, (sorted(schema_keys - page_keys), sorted(page_keys - schema_keys))
    assert _keys_of_models() <= schema_keys
    assert {"search.alpha", "teacher.cache", "finalists.probe", "search.spaces.dkd.nckd_weight"} <= page_keys


def test_every_page_is_in_the_nav_and_every_nav_entry_is_a_page() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    nav = {next(iter(entry.values())) for entry in config["nav"]}
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert nav == pages
    assert "docs/hooks.py" in config["hooks"] and config["strict"] is True


def test_the_readme_is_a_front_page_whose_links_resolve() -> None:
    text = README.read_text(encoding="utf-8")
    lines = text.splitlines()
    first_section = next(i for i, line in enumerate(lines) if line.startswith("## "))
    assert first_section <= FRONT_PAGE_LINES, f"the README's first screen is {first_section} lines"
    assert lines[first_section] == "## Documentation"
    front = "\n".join(lines[:first_section])
    assert "make test" in front and "make demo" in front  # what CI (.ci/run) and people run
    assert ".venv/bin/python -m pytest -m 'not slow'" in front  # the inner loop
    assert re.search(r"!\[[^\]]*\]\(reports/[\w.-]+/[\w.-]+\.png\)", front), "a picture of a real report"
    targets = re.findall(r"\]\(([^)#\s]+)", text)
    assert targets and all((ROOT / t).is_file() for t in targets), [t for t in targets if not (ROOT / t).is_file()]
    linked = {Path(t).name for t in targets if t.startswith("docs/")}
    assert linked == {p.name for p in (ROOT / "docs").glob("*.md")}, "the README links every docs page"

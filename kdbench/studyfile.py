"""Reading a study file: YAML without aliases, ``--set`` overrides, and a validation error as one line.

What turns text into the raw mapping that :func:`kdbench.config.parse_study` validates, and a pydantic error
into the line a user reads (the file, the key, the fix); and a stored config back into the typed study
(:func:`stored_study`). The schema itself is :mod:`kdbench.config`.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError

from kdbench.errors import ConfigError

if TYPE_CHECKING:
    from kdbench.config import Study

__all__ = ["RETIRED_KEYS", "NoAliasLoader", "apply_overrides", "format_error", "read_yaml", "stored_study"]


class NoAliasLoader(yaml.SafeLoader):
    """YAML's safe loader without aliases (``*name``): a study file needs none, and a few hundred bytes of
    nested aliases expand to gigabytes (the "billion laughs")."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in a study file; "
                                              "write the value out", mark)
        return super().compose_node(parent, index)


def read_yaml(text: str) -> Any:
    return yaml.load(text, Loader=NoAliasLoader)  # a SafeLoader: no Python objects


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a raw study dict; returns a new dict."""
    out: dict[str, Any] = json.loads(json.dumps(raw))
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set student.epochs=1")
        parts = key.strip().split(".")
        if not all(p.strip() for p in parts):
            raise ConfigError(f"--set {item!r}: {key.strip()!r} has an empty part; name a key, "
                              "e.g. --set student.epochs=1")
        try:
            parsed = read_yaml(value) if value.strip() else None
        except yaml.YAMLError:
            parsed = value
        node = out
        for part in parts[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a section")
            node = nxt
        node[parts[-1]] = parsed
    return out


# Errors that only say "this union member has another shape": a union's other member explains better.
_SHAPE_ERRORS = {"list_type", "dict_type", "model_type", "model_attributes_type", "literal_error"}


def _where(loc: tuple[int | str, ...]) -> str:
    """``search.lr`` from pydantic's location, without its union-member tags (``list[float]``, ...)."""
    keep = [str(p) for p in loc if isinstance(p, int) or re.fullmatch(r"[A-Za-z_][\w.+-]*", p)]
    return re.sub(r"\.(float|int|str|bool)$", "", ".".join(keep)) or "(top level)"


RETIRED_KEYS = {  # keys of earlier kdbench versions, and what replaced them
    "search.trials_per_point": "each grid cell is now trained at every lr candidate (search.lr as a list, or "
                               "search.lr_points values over an lr range) on search.replicates seeds (default 3); "
                               "delete it and set search.replicates",
    "baseline.trials": "the CE baseline is now one more cell with exactly a KD cell's budget (the lr candidates "
                       "× search.replicates, or search.trials in a range search); delete it",
}


def format_error(err: ValidationError, source: str) -> str:
    errors = err.errors()
    first = min(errors, key=lambda e: e["type"] in _SHAPE_ERRORS)  # the first specific one, else the first
    loc = _where(first["loc"])
    kind, msg = first["type"], first["msg"]
    if kind == "extra_forbidden" and loc in RETIRED_KEYS:
        text = f"{loc} is no longer a key: {RETIRED_KEYS[loc]}"
    elif kind == "extra_forbidden":
        text = f"unknown key {loc!r}; check the spelling (every key: `kdbench schema`, docs/study-reference.md)"
    elif kind == "missing":
        text = f"{loc}: required key is missing"
    elif kind == "too_short":
        text = f"{loc}: is empty; give at least one value"
    else:
        msg = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        got = first.get("input")
        if isinstance(got, dict):  # a whole section's check: its message names the key, the section is noise
            text = msg if msg.startswith(f"{loc}.") or loc == "(top level)" else f"{loc}: {msg}"
        else:
            text = f"{loc}: {msg} (got {got!r})"
    more = len({_where(e["loc"]) for e in errors} - {loc})
    return f"{source}: {text}" + (f" [+{more} more]" if more > 0 else "")


def stored_study(config: dict[str, Any]) -> Study:
    """A study's config as the store keeps it (the resolved study, as JSON) back into the typed study, also when an
    earlier kdbench wrote it: keys it retired since (:data:`RETIRED_KEYS`) are set aside."""
    raw = json.loads(json.dumps(config))
    for key in RETIRED_KEYS:
        section, _, name = key.partition(".")
        if isinstance(raw.get(section), dict):
            raw[section].pop(name, None)
    from kdbench.config import parse_study  # the schema imports this module

    return parse_study(raw, "config")

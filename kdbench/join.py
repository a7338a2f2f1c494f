"""``kdbench sweep --join NAME``: a worker of a study already stored, from the config the store holds.

No study file on the node: the store keeps each study's resolved config and its hash. The models come back
from their import paths (a ``file.py:Class`` path relative to the current folder, as no study file says where
else); a model from outside the zoo whose code on this node gives another fingerprint than the one the study
was stored with changes the study's hash, and is refused with one line naming the model, never run as if it
were the same study.
"""

from __future__ import annotations

import json

from kdbench.config import Study, parse_study
from kdbench.errors import ConfigError, StoreError
from kdbench.models.sources import study_fingerprint
from kdbench.store import Store

__all__ = ["join_study"]


def join_study(store: Store, name: str, overrides: list[str] | tuple[str, ...] = ()) -> Study:
    """The stored study ``name``, checked to be the one this node would compute.

    Args:
        store: the results database holding the study.
        name: the study's name (``kdbench ls`` lists them).
        overrides: ``KEY=VALUE`` overrides (``data.root=/scratch/data``: where this node keeps the files); one that
            changes the config hash is refused as another study would be.

    Raises:
        StoreError: no study of that name (the message says how to list them), or a model from outside the zoo
            whose code here differs from the code the study was stored with (the message names the model).
    """
    row = store.study(name) if store.ready else None
    if row is None:
        known = ", ".join(store.study_names()) if store.ready else ""
        raise StoreError(f"--join {name}: no study of that name in {store.url} (stored there: {known or 'none'}); "
                         f"list them with kdbench ls --storage URL, or start one from its study file with "
                         f"kdbench sweep STUDY_FILE")
    study = store.study_config(name)
    if overrides:
        study = parse_study(study.resolved(), f"--join {name}", overrides)
    try:
        here = study.hash
    except ConfigError as exc:  # a model's file or module not found on this node
        raise ConfigError(f"--join {name}: {exc}") from None
    if here != row.config_hash:
        raise StoreError(f"--join {name}: {_what_differs(store, study)}; install the study's code as it was when the "
                         f"study was stored (config hash {row.config_hash}, this node's {here})")
    return study


def _what_differs(store: Store, study: Study) -> str:
    """Which model's code differs here, by its fingerprint against the one its runs recorded."""
    stored: dict[str, str] = {}
    for versions in (r["versions"] for r in store.run_records(study.name) if r["versions"] is not None):
        for section, model in json.loads(versions).get("models", {}).items():
            stored.setdefault(section, model.get("fingerprint", ""))
    external = [s for s in ("teacher", "student") if ":" in getattr(study, s).model]
    parts = []
    for section in external:
        now = study_fingerprint(study, section)
        if stored.get(section, now) != now or section not in stored:
            was = f"{stored[section]} when stored" if section in stored else "no run recorded one when stored"
            parts.append(f"{section}.model {getattr(study, section).model!r} has fingerprint {now} on this node "
                         f"({was})")
    if not parts:
        return "this node computes another config hash (another kdbench version?)"
    return "; ".join(parts)

"""A study's stable hash, and its history: which keys, added after studies were stored, stay out of it at
their defaults (so that adding a key changed no stored hash).
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from kdbench.defaults import MAX_VISITS

if TYPE_CHECKING:
    from kdbench.config import Study

__all__ = ["study_hash"]


# Fields that say where to find things, not what is computed: they do not change results.
_NOT_HASHED = {("data", "root"), ("data", "download"), ("data", "path")}


def study_hash(study: Study) -> str:
    """A 16-hex-digit SHA-256 of the resolved config, stable across runs, machines and key order.

    ``data.root``, ``data.path`` and ``data.download`` are left out: they say where the files are, not what is
    computed (what the files hold is checked apart: the store keeps each study's data fingerprint and refuses other
    data); so are ``data.image_column`` and ``data.label_column`` (hf), ``search.fuse`` (1 or auto),
    ``search.method`` (kd), ``search.spaces``, ``search.kd_warmup_epochs``, ``search.budget``, ``search.lr_extend``
    (2), ``finalists.budget``, ``finalists.probe``, ``finalists.lr_recheck``, ``baseline.label_smoothing`` ([]) and
    ``student.eval_every`` (null) at their defaults, so that adding those keys changed no stored hash. ``log`` (the
    experiment trackers) is not in the resolved config at all (``Field(exclude=True)``): it says where results are
    copied, so it is neither hashed nor stored.
    """
    cfg = study.resolved()
    for section, key in _NOT_HASHED:
        cfg[section].pop(key, None)
    later: dict[str, tuple[tuple[str, Any], ...]] = {
        "data": (("image_column", "image"), ("label_column", "label")),
        "search": (("fuse", "auto"), ("method", "kd"), ("spaces", {}), ("kd_warmup_epochs", 0.0), ("budget", None),
                   ("max_visits", MAX_VISITS), ("lr_extend", 2)),
        "finalists": (("budget", None), ("probe", 0), ("lr_recheck", False)), "baseline": (("label_smoothing", []),),
        "teacher": (("weights", None), ("model_args", {})),
        "student": (("weights", None), ("model_args", {}), ("eval_every", None))}
    for section, keys in later.items():
        for key, default in keys:
            if cfg[section][key] == default or (key == "fuse" and cfg[section][key] == 1):  # keys added later:
                del cfg[section][key]  # at their defaults they leave the hashes of studies written before unchanged
    for section in ("teacher", "student"):  # a model from outside the zoo: what defines it, by content
        if ":" in getattr(study, section).model:
            from kdbench.models.sources import study_fingerprint

            cfg[section]["fingerprint"] = study_fingerprint(study, section)  # an import path's or an object's
    blob = json.dumps(cfg, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]

"""kdbench: knowledge-distillation sweeps and benchmarks.

Train a teacher once, cache its logits, sweep temperature × alpha (+ lr) with Optuna against a tuned
cross-entropy baseline, and store every run with its provenance in one SQLAlchemy database.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "distillation_loss",
    "load_data",
    "load_runs",
    "load_study",
    "prepare_teacher",
    "run_sweep",
    "sweep",
    "train",
]

if TYPE_CHECKING:
    from kdbench.api import sweep
    from kdbench.config import load_study
    from kdbench.data import load_data
    from kdbench.losses import distillation_loss
    from kdbench.store import load_runs
    from kdbench.sweep import run_sweep
    from kdbench.teacher import prepare_teacher
    from kdbench.train import train

_LAZY = {
    "distillation_loss": "kdbench.losses",
    "load_data": "kdbench.data",
    "load_runs": "kdbench.store",
    "load_study": "kdbench.config",
    "prepare_teacher": "kdbench.teacher",
    "run_sweep": "kdbench.sweep",
    "sweep": "kdbench.api",  # kdbench.sweep(study, teacher=, student=, data=); the package kdbench.sweep calls it too
    "train": "kdbench.train",
}


def __getattr__(name: str) -> Any:
    # Imported on first use so that `kdbench --help` does not pay for torch and optuna.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kdbench' has no attribute {name!r}")

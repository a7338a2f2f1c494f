"""The sweep: a CE baseline and an Optuna study over T × alpha (+ lr), then multi-seed finalists.

Vocabulary, used everywhere in kdbench:

- a **visit** is a planned unit of work (a KD or CE search trial, or one finalist seed): :mod:`.plan`;
- its **stage** says which part of the study it belongs to: ``kd``, ``ce`` or ``finalist``; the **lr
  extension** (:mod:`.extend`) adds search visits of an arm whose best lr is an end of its list;
- an **attempt** is one try at a visit (a worker that dies leaves a retired attempt): :mod:`.attempt`; it
  starts when a worker *claims* the visit in the store (:class:`kdbench.store.Claimed`);
- a **run** is an attempt's row in the store (:mod:`kdbench.store`);
- a **trial** is Optuna's record of a search visit: :mod:`.optuna_bridge`.

Plan → claim → run: :mod:`.run` prepares the study once (check, register, data, teacher) and works
through its visits, claiming each in the store so that any number of ``kdbench sweep`` processes, on one
machine or many sharing a database, split the work without running a visit twice. Selection uses
validation accuracy; the test set is only evaluated for finalists.

``kdbench.sweep(study, teacher=..., student=..., data=...)`` is the Python API (:func:`kdbench.api.sweep`); once
this package is imported, ``kdbench.sweep`` names it, so the package itself is callable and calls the API.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from kdbench.sweep.attempt import SweepContext
from kdbench.sweep.events import Progress, SweepEvents, study_progress
from kdbench.sweep.plan import (
    Visit,
    finalist_seeds,
    plan_finalists,
    plan_search,
    planned_total,
    search_seeds,
)
from kdbench.sweep.run import check_models, prepare_sweep, run_sweep, work_sweep

__all__ = [
    "Progress",
    "SweepContext",
    "SweepEvents",
    "Visit",
    "check_models",
    "finalist_seeds",
    "plan_finalists",
    "plan_search",
    "planned_total",
    "prepare_sweep",
    "run_sweep",
    "search_seeds",
    "study_progress",
    "work_sweep",
]


class _CallablePackage(types.ModuleType):
    """``kdbench.sweep``: this package, which Python sets as the attribute ``sweep`` of ``kdbench`` once it is
    imported, and the API function :func:`kdbench.api.sweep` (``kdbench.sweep(...)`` calls it either way)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from kdbench.api import sweep

        return sweep(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage

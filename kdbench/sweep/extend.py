"""The lr extension: an interior optimum for every arm of a grid search, or a statement that one was not reached.

An arm is the CE baseline or one distillation method. Once all of an arm's search visits are final, its best
configuration is the one the finalists would take (:func:`kdbench.sweep.plan.plan_finalists`: the replicate mean
of validation accuracy at the selection budget; for a distillation method, the best cell at its best lr). When
that lr is the lowest or the highest the cell was trained at, the optimum may lie outside the list, and CE (or
KD) may be under-tuned. The arm's **best cell only** is then trained at the next lr beyond that end, by the lr
list's own ratio at that end (``[2.5e-4, 1e-3, 4e-3]``: 6.25e-5 below, 1.6e-2 above; see
:meth:`kdbench.config.SearchConfig.lr_beyond`), on every replicate seed of the search (the same seeds, so the
new lr pairs with the old ones), and the check is made again, until the best lr is interior or
``search.lr_extend`` lr were added on that side.

Why the best cell only: it answers the question asked (was the chosen configuration tuned to an interior lr?)
at the cost of one cell's replicates per step. Extending every cell of a method would multiply the step's cost
by the number of cells (20 for the default grid) to widen cells that are not chosen; a cell whose best lr is at
an end but is not the best cell is still reported by the grid's edge sentence. The same rule holds for every
arm, so CE and each method are extended alike (CE is one cell, so for CE the whole arm is extended).

Every worker plans the same extension from the stored results: the plan is a function of the runs alone, made
only once every visit it rests on is final (:data:`kdbench.sweep.events.TERMINAL`), and its visits are named
by :func:`kdbench.store.search_key` like any search visit (``ce/lr=0.004/r=0``), so the store's unique
visit keys let exactly one worker train each. Extension visits are kdbench runs with their real lr, not
Optuna trials: Optuna records a grid's lr as a categorical of the planned list, which cannot hold a new value.

A range search (the sampler draws lr) is checked, not extended: the best trial's lr is at an end when it
lies in the outer :data:`kdbench.defaults.LR_END_SHARE` of the lr range (of its logarithm for a log range),
or is an end of an lr list.

A study whose finalists were stored before kdbench extended lrs is not extended afterwards (its finalists
were chosen without the extension, and a later one would not be theirs); its status says so.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

from kdbench.config import Range, Study
from kdbench.defaults import LR_END_SHARE
from kdbench.store import RunRecord, cell_key, is_unset, run_records, run_values, search_key
from kdbench.sweep.events import TERMINAL
from kdbench.sweep.plan import Visit, baseline_arms, method_visit, plan_search, search_seeds
from kdbench.sweep.rank import ranked_configs

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["ArmLr", "lr_status", "plan_extension"]

Side = Literal["low", "high"]


@dataclass(frozen=True)
class ArmLr:
    """Where an arm's best lr lies in the lrs its best cell was trained at.

    Attributes:
        arm: ``ce`` or a distillation method.
        values: the best cell's parameters without lr (CE: none).
        lrs: the lrs that cell was trained at, ascending (planned and extended; a range search: the range's ends).
        best_lr: the best configuration's lr.
        end: ``low`` or ``high`` when the best lr is at that end, None when it is interior.
        below: lrs added below the planned list; above: lrs added above it.
        limit: ``search.lr_extend``.
        note: why the arm is not extended further although its best is at an end, or ``""``: ``pending`` (an
            extension step is under way), ``range`` (a range search: checked, not extended), ``single`` (one lr
            candidate: no ratio), ``stored`` (finalists stored before the extension existed), ``limit`` (
            ``lr_extend`` lr added on that side).
    """

    arm: str
    values: tuple[tuple[str, float], ...]
    lrs: tuple[float, ...]
    best_lr: float
    end: Side | None
    below: int
    above: int
    limit: int
    note: str = ""


def _end(lr: float, lrs: list[float]) -> Side | None:
    if len(lrs) < 2:
        return "low" if lrs else None  # one candidate is both ends; called low
    if math.isclose(lr, lrs[0], rel_tol=1e-9):
        return "low"
    if math.isclose(lr, lrs[-1], rel_tol=1e-9):
        return "high"
    return None


def _grid_arm(study: Study, arm: str, planned: list[Visit], runs: list[RunRecord],
              states: dict[str, str], stored: bool) -> tuple[list[Visit], ArmLr | None]:
    """One arm's extension visits so far (planned from the results of the steps before) and its status."""
    s = study.search
    b = study.selection_budget
    at = b.key if s.budget is not None else None
    lo, hi = planned[0].lr, planned[-1].lr
    assert lo is not None and hi is not None
    tried, ext = list(planned), list[Visit]()
    status: ArmLr | None = None
    while True:
        if any(states.get(v.key) not in TERMINAL for v in tried):
            return ext, (status and replace(status, note="pending"))
        keys = {v.key for v in tried}
        done = [r for r in runs if r["state"] == "complete" and r["visit"] in keys]
        ranked = ranked_configs(done, arm, grid=True)
        if not ranked:
            return ext, None
        best = ranked[0]
        values = run_values(best)
        lr = values.pop("lr")
        cell = best["cell"]
        lrs = sorted({float(v.lr) for v in tried if v.lr is not None and cell_key(v.key) == cell})
        below = sum(x < lo * (1 - 1e-9) for x in lrs)
        above = sum(x > hi * (1 + 1e-9) for x in lrs)
        side = _end(lr, lrs)
        status = ArmLr(arm, tuple(sorted(values.items())), tuple(lrs), lr, side, below, above, s.lr_extend)
        if side is None:
            return ext, status
        step = (below if side == "low" else above) + 1
        new_lr = s.lr_beyond(side, step)
        if new_lr is None:
            return ext, replace(status, note="single")
        if step > s.lr_extend:
            return ext, replace(status, note="limit")
        new_values = {**values, "lr": new_lr}
        new = [method_visit(search_key(arm, new_values, r, at), arm, arm, seed, new_values, budget=b,
                            extension=True) for r, seed in enumerate(search_seeds(study))]
        if stored and not any(v.key in states for v in new):
            return ext, replace(status, note="stored")
        ext += new
        tried += new


def _range_arm(study: Study, arm: str, runs: list[RunRecord]) -> ArmLr | None:
    """A range search's arm: its best trial's lr against the ends of the lr space (checked, not extended)."""
    done = [r for r in runs if r["state"] == "complete" and r["kind"] == arm]
    ranked = ranked_configs(done, arm, grid=False)
    if not ranked or is_unset(ranked[0]["lr"]):
        return None
    values = run_values(ranked[0])
    lr = values.pop("lr")
    space = study.search.lr
    if isinstance(space, Range):
        f = (lambda x: math.log(x)) if space.log else (lambda x: x)
        width = f(space.high) - f(space.low)
        share = (f(lr) - f(space.low)) / width if width > 0 else 0.0
        ends = [space.low, space.high]
        side: Side | None = "low" if share <= LR_END_SHARE else "high" if share >= 1 - LR_END_SHARE else None
    else:
        ends = sorted(float(x) for x in space)
        side = _end(lr, ends)
    return ArmLr(arm, tuple(sorted(values.items())), tuple(ends), lr, side, 0, 0, study.search.lr_extend, "range")


def _extension(study: Study, frame: pd.DataFrame | Iterable[RunRecord]) -> tuple[list[Visit], list[ArmLr]]:
    arms = baseline_arms(study) + study.search.methods
    runs = run_records(frame)
    if not study.search.is_grid:
        found = [_range_arm(study, arm, runs) for arm in arms]
        return [], [a for a in found if a is not None]
    states = {r["visit"]: r["state"] for r in runs}
    stored = any(r["kind"] in ("finalist", "probe", "recheck") for r in runs)
    b = study.selection_budget
    search = [v for v in plan_search(study) if v.budget == b]
    visits: list[Visit] = []
    statuses: list[ArmLr] = []
    for arm in arms:
        planned = sorted((v for v in search if v.stage == arm), key=lambda v: (v.lr or 0.0))
        if not planned:
            continue
        ext, status = _grid_arm(study, arm, planned, runs, states, stored)
        visits += ext
        if status is not None:
            statuses.append(status)
    return visits, statuses


def plan_extension(study: Study, runs: pd.DataFrame | Iterable[RunRecord]) -> list[Visit]:
    """Every lr-extension visit the stored runs call for so far (see the module docstring), step by step: a step
    is planned only once the visits it rests on are all final, so a caller trains what this returns, waits for
    it to be final, and asks again until nothing new comes back. Empty for a range search or ``lr_extend: 0``.

    Args:
        study: the validated study.
        runs: every run of the study: :meth:`kdbench.store.Store.run_records` (a worker's read, without pandas)
            or :meth:`kdbench.store.Store.runs`.
    """
    if study.search.lr_extend == 0:
        return []
    return _extension(study, runs)[0]


def lr_status(study: Study, runs: pd.DataFrame | Iterable[RunRecord]) -> list[ArmLr]:
    """Each arm's best lr against the lrs its best cell was trained at (an arm without complete runs is left
    out); the report's statement that every arm was tuned to an interior lr, or which was not."""
    return _extension(study, runs)[1]

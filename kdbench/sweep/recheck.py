"""The lr re-check (``finalists.lr_recheck``): each finalist configuration's lr checked again at the finalists' budget,
on validation, before the test set is touched.

The search chooses a configuration's lr at its own budget (often short); the finalists may train far longer
(``finalists.budget``), where a larger or smaller lr may be better, and an arm tuned at the wrong lr for that budget
is an under-tuned arm. So once the search (and its lr extension) is final, every configuration the finalists would
take (:func:`kdbench.sweep.plan.plan_finalists`: each method's top_k, each baseline's best) is trained at the
finalists' budget, on the finalist seeds, at its chosen lr and at the lr on either side of it: the next lr its cell
was trained at, or past an end of the cell's lrs the search's next lr that way (its list, then the steps the lr
extension takes beyond its ends: :meth:`kdbench.config.SearchConfig.lr_beyond`). These runs (stage ``recheck``)
are scored on validation only. Each finalist then trains at the lr whose re-check runs have the best mean validation
accuracy (the search's lr on a tie; means as :func:`kdbench.sweep.rank.replicate_mean`), CE and every method alike.

Every worker plans the same re-check from the stored runs, and its visits are named by
:func:`kdbench.store.recheck_key` (``recheck/kd/T=2/a=0.5/lr=0.002/seed=1``), so each is trained exactly once.
A finalist's key does not hold its lr, so a study stored before the re-check keeps its finalists.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from kdbench.config import SearchConfig, Study
from kdbench.store import RunRecord, cell_key, is_unset, recheck_key, run_records, search_key
from kdbench.sweep.plan import Visit, finalist_seeds, method_visit, plan_finalists
from kdbench.sweep.rank import replicate_mean

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Recheck", "plan_recheck", "recheck_status", "rechecked_finalists"]


@dataclass(frozen=True)
class Recheck:
    """One finalist configuration's lr re-check.

    Attributes:
        arm: ``ce``, ``ce_ls`` or a distillation method; rank: its rank among the arm's finalists (0 = best).
        chosen: the lr the search chose; best: the lr with the best mean validation accuracy at the finalists'
            budget (``chosen`` on a tie, or while a re-check run is missing).
        means: each lr re-checked and its mean validation accuracy over the finalist seeds (NaN: none complete).
        n: the finalist seeds each mean is over (the fewest among the lrs).
    """

    arm: str
    rank: int
    chosen: float
    best: float
    means: tuple[tuple[float, float], ...]
    n: int


def _ladder(search: SearchConfig) -> list[float]:
    """Every lr a grid's cell can be trained at, ascending: the search's list and, beyond each end, the lr
    extension's steps (:meth:`~kdbench.config.SearchConfig.lr_beyond`) and one more."""
    beyond = (search.lr_beyond(side, k) for side in ("low", "high") for k in range(1, search.lr_extend + 2))
    return sorted({*(search.lr_candidates() or []), *(x for x in beyond if x is not None)})


def _beside(search: SearchConfig, lr: float, lrs: list[float]) -> list[float]:
    """``lr`` and the lr on each side of it in ``lrs`` (its cell's, ascending), past an end of them the search's
    next lr that way (:func:`_ladder`); ``[lr]`` when the cell was trained at one lr."""
    if len(lrs) < 2:
        return [lr]
    i = min(range(len(lrs)), key=lambda j: abs(math.log(lrs[j] / lr)))
    ladder = _ladder(search)
    low = lrs[i - 1] if i > 0 else max(x for x in ladder if x < lr)
    high = lrs[i + 1] if i < len(lrs) - 1 else min(x for x in ladder if x > lr)
    return [low, lr, high]


def _values(v: Visit, lr: float) -> dict[str, float]:
    """A finalist configuration's parameters at ``lr``."""
    base = {k: x for k, x in (("temperature", v.temperature), ("alpha", v.alpha)) if x is not None}
    return {**base, **dict(v.params), "lr": lr}


def _candidates(study: Study, runs: list[RunRecord], v: Visit) -> list[float]:
    """The lrs a finalist configuration is re-checked at: its chosen lr and those beside it in its cell's lrs."""
    assert v.lr is not None
    at = study.selection_budget.key if study.search.budget is not None else None
    cell = cell_key(search_key(v.loss, _values(v, v.lr), 0, at))
    lrs = sorted({float(r["lr"]) for r in runs if r["kind"] == v.loss and r["state"] == "complete"
                  and not is_unset(r["lr"]) and cell_key(r["visit"]) == cell})
    return _beside(study.search, float(v.lr), lrs)


def _configs(study: Study, runs: list[RunRecord]) -> list[Visit]:
    """One finalist visit per configuration (its first seed's), as the search chose it."""
    firsts: dict[tuple[str, int | None], Visit] = {}
    for v in plan_finalists(study, runs):
        if v.stage == "finalist":
            firsts.setdefault((v.loss, v.rank), v)
    return list(firsts.values())


def plan_recheck(study: Study, runs: pd.DataFrame | Iterable[RunRecord]) -> list[Visit]:
    """Every re-check visit (see the module docstring); empty unless ``finalists.lr_recheck``.

    Args:
        study: the validated study.
        runs: every run of the study, its search and lr extension final: :meth:`kdbench.store.Store.run_records`
            (a worker's read, without pandas) or :meth:`kdbench.store.Store.runs`.
    """
    if not study.finalists.lr_recheck:
        return []
    runs = run_records(runs)
    visits: list[Visit] = []
    for v in _configs(study, runs):
        for lr in _candidates(study, runs, v):
            values = _values(v, lr)
            visits += [method_visit(recheck_key(v.loss, values, seed), "recheck", v.loss, seed, values, v.rank,
                                    study.finalist_budget) for seed in finalist_seeds(study)]
    return visits


def recheck_status(study: Study, runs: pd.DataFrame | Iterable[RunRecord]) -> list[Recheck]:
    """Each finalist configuration's re-check: the lrs tried at the finalists' budget, their validation means, the
    lr its finalists take. Empty unless ``finalists.lr_recheck``. ``runs``: as :func:`plan_recheck`'s."""
    if not study.finalists.lr_recheck:
        return []
    runs = run_records(runs)
    done = {r["visit"]: r["val_acc"] for r in runs if r["kind"] == "recheck" and r["state"] == "complete"}
    seeds = finalist_seeds(study)
    out = []
    for v in _configs(study, runs):
        assert v.lr is not None
        means, n = [], len(seeds)
        for lr in _candidates(study, runs, v):
            keys = (recheck_key(v.loss, _values(v, lr), s) for s in seeds)
            mean, got = replicate_mean(done.get(k) for k in keys)
            means.append((lr, mean))
            n = min(n, got)
        complete = n == len(seeds) and all(not math.isnan(m) for _, m in means)
        best = max(means, key=lambda lm: (lm[1], lm[0] == v.lr))[0] if complete else float(v.lr)
        out.append(Recheck(v.loss, int(v.rank or 0), float(v.lr), best, tuple(means), n))
    return out


def rechecked_finalists(study: Study, runs: pd.DataFrame | Iterable[RunRecord]) -> list[Visit]:
    """The finalists (:func:`kdbench.sweep.plan.plan_finalists`), each configuration at its re-checked lr; the
    probes as they are. Without ``finalists.lr_recheck``: :func:`plan_finalists` unchanged. ``runs``: as
    :func:`plan_recheck`'s."""
    runs = run_records(runs)
    planned = plan_finalists(study, runs)
    lrs = {(r.arm, r.rank): r.best for r in recheck_status(study, runs)}
    return [replace(v, lr=lrs.get((v.loss, v.rank or 0), v.lr)) if v.stage == "finalist" else v for v in planned]

"""What a study trains: its visits, in an order that favours no cell, then the finalists.

**Baselines**: CE (``ce``), and CE with label smoothing (``ce_ls``, ``baseline.label_smoothing``: one cell per
epsilon, its ``params``), are arms like a method's, tuned alike (lr candidates, seeds, lr extension), each with a
finalist; the report compares KD with the better of them on validation.

**Grid search** (T and alpha both lists). Every cell (T, alpha), and the CE baseline as one more cell,
is trained at every lr candidate (``SearchConfig.lr_candidates``) on the same ``replicates`` search seeds:
replicate i of every cell uses seed ``seed + SEARCH_SEED_OFFSET + i``, hence the same initialisation
and batch order (common random numbers), so cell-vs-cell and cell-vs-CE differences pair by seed. The
visits run replicate-major (every cell once on seed 0, then on seed 1, ...), the cells of each
replicate in a seeded shuffled order, so a study stopped early has whole replicates of every cell, and
no T or alpha always comes first or last. CE gets exactly a KD cell's budget.

**Range search** (T or alpha a range): the sampler draws ``trials`` KD configurations, and the CE
baseline gets as many sampler trials over lr; KD and CE visits alternate. CE with label smoothing gets as many,
trial r at the r-th epsilon of its list (cycled), the sampler drawing lr.

**Budget axis** (``search.budget``): the grid above is trained at each budget, on the same seeds (every
replicate's budgets smallest first); the finalists are chosen at the largest.

**lr extension** (``search.lr_extend``, grids): an arm whose best lr is an end of its list gets its best cell
trained beyond that end, one step at a time, before the finalists are chosen (:mod:`kdbench.sweep.extend`).

**lr re-check** (``finalists.lr_recheck``): each finalist configuration trained at the finalists' budget at its lr
and the lrs beside it, on validation only, before its finalists take the best (:mod:`kdbench.sweep.recheck`).

**Finalists**: the ``top_k`` best KD configurations and the best CE one, chosen on validation accuracy
(for a grid: the replicate mean of a cell at its best lr), each re-trained on fresh seeds seed+1, ... for
``finalists.budget`` (default: the search's). **Probes** (``finalists.probe: N``): N more configurations of
each method, spread evenly over the rest of the search's ranking, trained like the finalists (same budget,
same seeds) but scored on validation only, so the report can measure whether the search's ranking holds at
the finalists' budget; the test set stays the finalists' alone.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from kdbench.config import Budget, StudentConfig, Study
from kdbench.defaults import SEARCH_SEED_OFFSET
from kdbench.store import (
    PARAM_COLUMNS,
    RunRecord,
    finalist_key,
    probe_key,
    run_records,
    run_values,
    search_key,
)
from kdbench.sweep.rank import ranked_configs

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["BASELINES", "Visit", "baseline_arms", "finalist_seeds", "method_visit", "plan_finalists", "plan_search",
           "planned_total", "search_seeds", "visit_recipe"]


BASELINES = ("ce", "ce_ls")  # the arms without a teacher: CE, and CE with label smoothing


@dataclass(frozen=True)
class Visit:
    """One planned training run. ``None`` parameters are drawn by the sampler.

    Attributes:
        key: the visit's name in the store, e.g. ``kd/T=2/a=0.5/lr=0.001/r=0``.
        stage: a search trial's method (``kd``, ``dkd``, ``dist``, ``lskd``) or ``ce``, or ``finalist`` or
            ``probe`` (stored in the runs' ``kind`` column).
        loss: what the student is trained with: ``ce`` or a distillation method.
        seed: the seed of its initialisation and batch order.
        params: the method's other hyperparameters (weights, ...), sorted by name; a range's are drawn.
        budget: what it trains for (None: the student recipe's).
        extension: an lr-extension visit (:mod:`kdbench.sweep.extend`): a search run, but no Optuna trial.
    """

    key: str
    stage: str
    loss: str
    seed: int
    temperature: float | None = None
    alpha: float | None = None
    lr: float | None = None
    rank: int | None = None
    params: tuple[tuple[str, float], ...] = ()
    budget: Budget | None = None
    extension: bool = False

    @property
    def budget_label(self) -> str | None:
        """The budget in words (``3 epochs``), as the store records it."""
        return self.budget.label if self.budget is not None else None

    @property
    def is_search(self) -> bool:
        """A search trial (an Optuna trial), not a finalist or a probe."""
        return self.stage not in ("finalist", "probe", "recheck")

    @property
    def asks_optuna(self) -> bool:
        """A search visit of the planned search (an lr-extension visit is a search run Optuna cannot record)."""
        return self.is_search and not self.extension


def visit_recipe(study: Study, visit: Visit) -> StudentConfig:
    """The student recipe a visit trains with: the study's, for the visit's budget (CE with label smoothing: with
    the visit's epsilon)."""
    recipe = visit.budget.apply(study.student) if visit.budget is not None else study.student
    if visit.loss == "ce_ls":
        recipe = recipe.model_copy(update={"label_smoothing": dict(visit.params)["label_smoothing"]})
    return recipe


def baseline_arms(study: Study) -> list[str]:
    """The study's baseline arms (of :data:`BASELINES`): ``ce`` unless ``baseline.ce`` is off, ``ce_ls`` when
    ``baseline.label_smoothing`` lists an epsilon."""
    return (["ce"] if study.baseline.ce else []) + (["ce_ls"] if study.baseline.label_smoothing else [])


def search_seeds(study: Study) -> list[int]:
    """The replicate seeds of the search (distinct from the finalists' seed+1, seed+2, ...)."""
    return [study.seed + SEARCH_SEED_OFFSET + i for i in range(study.search.n_replicates)]


def method_visit(key: str, stage: str, method: str, seed: int, values: dict[str, float],
                 rank: int | None = None, budget: Budget | None = None, extension: bool = False) -> Visit:
    """The visit ``key`` of one configuration of ``method`` (``values``: its parameters and lr, any subset)."""
    extra = tuple(sorted((k, float(v)) for k, v in values.items() if k not in PARAM_COLUMNS))
    return Visit(key, stage, method, seed, temperature=values.get("temperature"), alpha=values.get("alpha"),
                 lr=values.get("lr"), rank=rank, params=extra, budget=budget, extension=extension)


def _cells(study: Study, method: str) -> list[dict[str, float]]:
    """Every configuration of a method's grid (its parameters' lists crossed, in the order they are given)."""
    space = study.search.space(method)
    names = list(space)
    lists = [space[n] for n in names]
    grids = [v for v in lists if isinstance(v, list)]
    assert len(grids) == len(lists), "a grid study's spaces are lists"
    return [dict(zip(names, combo, strict=True))
            for combo in itertools.product(*([float(x) for x in g] for g in grids))]


def _grid_visits(study: Study) -> list[Visit]:
    s = study.search
    lrs = s.lr_candidates()
    assert lrs is not None
    cells: list[tuple[str, dict[str, float]]] = [("ce", {})] if study.baseline.ce else []
    cells += [("ce_ls", {"label_smoothing": e}) for e in study.baseline.label_smoothing]
    cells += [(m, c) for m in s.methods for c in _cells(study, m)]
    axis = s.budget is not None  # a budget axis names the budget in every key
    visits: list[Visit] = []
    for r, seed in enumerate(search_seeds(study)):
        order = np.random.default_rng([study.seed, r]).permutation(len(cells))
        for b in study.search_budgets:
            at = b.key if axis else None
            for i in order:
                method, cell = cells[int(i)]
                for lr in lrs:
                    values = {**cell, "lr": lr}
                    visits.append(method_visit(search_key(method, values, r, at), method, method, seed,
                                               values, budget=b))
    return visits


def _range_visits(study: Study) -> list[Visit]:
    s = study.search
    seed = search_seeds(study)[0]
    fixed = {m: {k: v[0] for k, v in s.space(m).items() if isinstance(v, list) and len(v) == 1} for m in s.methods}
    visits: list[Visit] = []
    b = study.selection_budget
    for r in range(s.n_trials):
        if study.baseline.ce:
            visits.append(Visit(search_key("ce", {}, r), "ce", "ce", seed, budget=b))
        if eps := study.baseline.label_smoothing:
            visits.append(method_visit(search_key("ce_ls", {}, r), "ce_ls", "ce_ls", seed,
                                       {"label_smoothing": eps[r % len(eps)]}, budget=b))
        visits += [method_visit(search_key(m, {}, r), m, m, seed, fixed[m], budget=b) for m in s.methods]
    return visits


def plan_search(study: Study) -> list[Visit]:
    """The KD and CE search visits, in the order they are claimed (see the module docstring)."""
    return _grid_visits(study) if study.search.is_grid else _range_visits(study)


def finalist_seeds(study: Study) -> list[int]:
    """Finalists run on fresh seeds (seed+1 ...), not the ones the search selected on."""
    return [study.seed + 1 + i for i in range(study.finalists.seeds)]


def _spread(n: int, k: int) -> list[int]:
    """``k`` of the positions ``0 .. n-1`` spread evenly from the first to the last (all when ``k >= n``)."""
    if k >= n:
        return list(range(n))
    return [int(i) for i in np.round(np.linspace(0, n - 1, k))]


def plan_finalists(study: Study, runs: pd.DataFrame | Iterable[RunRecord]) -> list[Visit]:
    """Each method's top_k configurations and each baseline arm's best one (by validation accuracy at the selection
    budget), each on every finalist seed; then each method's probes (see the module docstring).

    Args:
        study: the validated study.
        runs: every run of the study: :meth:`kdbench.store.Store.run_records` (a worker's read, without pandas)
            or :meth:`kdbench.store.Store.runs`.
    """
    visits: list[Visit] = []
    probes: list[Visit] = []
    baselines = baseline_arms(study)
    arms = {*study.search.methods, *baselines}
    done = [r for r in run_records(runs) if r["state"] == "complete" and r["kind"] in arms]
    if study.search.budget is not None:  # a budget axis: choose at the largest budget
        done = [r for r in done if r["budget"] == study.selection_budget.label]
    budget, f = study.finalist_budget, study.finalists
    for method, k in [*((m, f.top_k) for m in study.search.methods), *((b, 1) for b in baselines)]:
        ranked = ranked_configs(done, method, study.search.is_grid)
        for rank, row in enumerate(ranked[:k]):
            visits += [method_visit(finalist_key(method, rank, seed), "finalist", method, seed,
                                    run_values(row), rank, budget) for seed in finalist_seeds(study)]
        if method in BASELINES or not f.probe:
            continue
        rest = ranked[k:]
        for i in _spread(len(rest), f.probe):
            values = run_values(rest[i])
            probes += [method_visit(probe_key(method, values, seed), "probe", method, seed,
                                    values, k + i, budget) for seed in finalist_seeds(study)]
    return visits + probes


def planned_total(study: Study) -> int:
    """How many visits the whole study plans (search, lr re-checks, finalists and probes); an lr extension, decided
    from the search's results, comes on top (:func:`kdbench.sweep.events.study_progress` counts it once stored)."""
    s, f = study.search, study.finalists
    rechecks = (3 if len(s.lr_candidates() or []) > 1 else 1) if f.lr_recheck else 0  # lrs per configuration
    n_final = (f.top_k * len(s.methods) + len(baseline_arms(study))) * f.seeds * (1 + rechecks)
    configs = {m: s.n_cells(m) if s.is_grid else s.n_trials for m in s.methods}
    n_probe = sum(min(f.probe, max(0, n - f.top_k)) for n in configs.values()) * f.seeds
    return len(plan_search(study)) + n_final + n_probe

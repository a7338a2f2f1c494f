"""What a study trains: its visits, in an order that favours no cell, then the finalists.

**Grid search** (T and alpha both lists). Every cell (T, alpha), and the CE baseline as one more cell,
is trained at every lr candidate (``SearchConfig.lr_candidates``) on the same ``replicates`` search seeds:
replicate i of every cell uses seed ``seed + SEARCH_SEED_OFFSET + i``, hence the same initialisation
and batch order (common random numbers), so cell-vs-cell and cell-vs-CE differences pair by seed. The
visits run replicate-major (every cell once on seed 0, then on seed 1, ...), the cells of each
replicate in a seeded shuffled order, so a study stopped early has whole replicates of every cell, and
no T or alpha always comes first or last. CE gets exactly a KD cell's budget.

**Range search** (T or alpha a range): the sampler draws ``trials`` KD configurations, and the CE
baseline gets as many sampler trials over lr; KD and CE visits alternate.

**Finalists**: the ``top_k`` best KD configurations and the best CE one, chosen on validation accuracy
(for a grid: the replicate mean of a cell at its best lr), each re-trained on fresh seeds seed+1, ...
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from kdbench.config import SEARCH_SEED_OFFSET, Study

__all__ = ["Visit", "finalist_seeds", "plan_finalists", "plan_search", "planned_total",
           "search_seeds"]


@dataclass(frozen=True)
class Visit:
    """One planned training run. ``None`` parameters are drawn by the sampler.

    Attributes:
        key: the visit's name in the store, e.g. ``kd/T=2/a=0.5/lr=0.001/r=0``.
        stage: ``kd`` or ``ce`` (a search trial) or ``finalist`` (stored in the runs' ``kind`` column).
        loss: what the student is trained with: ``kd`` or ``ce``.
        seed: the seed of its initialisation and batch order.
    """

    key: str
    stage: str
    loss: str
    seed: int
    temperature: float | None = None
    alpha: float | None = None
    lr: float | None = None
    rank: int | None = None


def search_seeds(study: Study) -> list[int]:
    """The replicate seeds of the search (distinct from the finalists' seed+1, seed+2, ...)."""
    return [study.seed + SEARCH_SEED_OFFSET + i for i in range(study.search.n_replicates)]


def _grid_visits(study: Study) -> list[Visit]:
    s = study.search
    assert isinstance(s.temperature, list) and isinstance(s.alpha, list)
    lrs = s.lr_candidates()
    assert lrs is not None
    cells: list[tuple[float, float] | None] = [None] if study.baseline.ce else []
    cells += [(float(t), float(a)) for t in s.temperature for a in s.alpha]
    visits: list[Visit] = []
    for r, seed in enumerate(search_seeds(study)):
        order = np.random.default_rng([study.seed, r]).permutation(len(cells))
        for i in order:
            cell = cells[int(i)]
            for lr in lrs:
                if cell is None:
                    visits.append(Visit(f"ce/lr={lr:g}/r={r}", "ce", "ce", seed, lr=lr))
                else:
                    t, a = cell
                    visits.append(Visit(f"kd/T={t:g}/a={a:g}/lr={lr:g}/r={r}", "kd", "kd", seed,
                                        temperature=t, alpha=a, lr=lr))
    return visits


def _range_visits(study: Study) -> list[Visit]:
    s = study.search
    seed = search_seeds(study)[0]
    fixed = {k: v[0] for k, v in (("temperature", s.temperature), ("alpha", s.alpha))
             if isinstance(v, list) and len(v) == 1}
    visits: list[Visit] = []
    for r in range(s.n_trials):
        if study.baseline.ce:
            visits.append(Visit(f"ce/r={r}", "ce", "ce", seed))
        visits.append(Visit(f"kd/r={r}", "kd", "kd", seed, temperature=fixed.get("temperature"),
                            alpha=fixed.get("alpha")))
    return visits


def plan_search(study: Study) -> list[Visit]:
    """The KD and CE search visits, in the order they are claimed (see the module docstring)."""
    return _grid_visits(study) if study.search.is_grid else _range_visits(study)


def finalist_seeds(study: Study) -> list[int]:
    """Finalists run on fresh seeds (seed+1 ...), not the ones the search selected on."""
    return [study.seed + 1 + i for i in range(study.finalists.seeds)]


def _ranked_configs(done: pd.DataFrame, loss: str, grid: bool) -> pd.DataFrame:
    """Configurations of one loss, best first by validation accuracy (a grid: the replicate mean at each lr)."""
    runs = done[done["kind"] == loss]
    if not grid:
        return runs.sort_values(["val_acc", "trial_number"], ascending=[False, True])
    keys = ["lr"] if loss == "ce" else ["temperature", "alpha", "lr"]
    means = runs.groupby(keys, as_index=False)["val_acc"].mean()
    ranked = means.sort_values(["val_acc", *keys], ascending=[False, *([True] * len(keys))])
    if loss == "kd":  # a cell's value is its best lr's: one configuration per cell
        ranked = ranked.drop_duplicates(["temperature", "alpha"])
    return ranked


def plan_finalists(study: Study, runs: pd.DataFrame) -> list[Visit]:
    """The top_k KD configurations and the best CE one (by validation accuracy), each on every seed."""
    visits: list[Visit] = []
    done = runs[(runs["state"] == "complete") & runs["kind"].isin(["kd", "ce"])]
    for loss, k in (("kd", study.finalists.top_k), ("ce", 1 if study.baseline.ce else 0)):
        best = _ranked_configs(done, loss, study.search.is_grid)
        for rank, (_, row) in enumerate(best.head(k).iterrows()):
            for seed in finalist_seeds(study):
                visits.append(Visit(
                    f"final/{loss}/rank={rank}/seed={seed}", "finalist", loss, seed,
                    temperature=None if loss == "ce" else float(row["temperature"]),
                    alpha=None if loss == "ce" else float(row["alpha"]), lr=float(row["lr"]), rank=rank))
    return visits


def planned_total(study: Study) -> int:
    """How many visits the whole study has (search plus finalists)."""
    n_final = (study.finalists.top_k + (1 if study.baseline.ce else 0)) * study.finalists.seeds
    return len(plan_search(study)) + n_final

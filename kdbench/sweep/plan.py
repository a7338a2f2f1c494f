"""What a study trains: its visits, in a fixed order (CE baseline, the T × alpha search, the finalists).

Each (T, alpha) grid point is visited ``trials_per_point`` times (per lr, for a grid lr), the CE
baseline ``baseline.trials`` times; a range search has ``search.trials`` visits. The finalists are the
top-k KD configurations and the best CE one by validation accuracy, each on fresh seeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from kdbench.config import CE_MIN_TRIALS, RANGE_TRIALS_PER_POINT, Range, Study

__all__ = ["Visit", "ce_trials", "finalist_seeds", "plan_finalists", "plan_search", "planned_total"]


@dataclass(frozen=True)
class Visit:
    """One planned training run. ``None`` parameters are drawn by the sampler.

    Attributes:
        key: the visit's name in the store, e.g. ``kd/T=2/a=0.5/r=0``.
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


def ce_trials(study: Study) -> int:
    """CE baseline trials: ``baseline.trials``, by default max(CE_MIN_TRIALS, trials_per_point)."""
    if study.baseline.trials is not None:
        return study.baseline.trials
    return max(CE_MIN_TRIALS, study.search.trials_per_point)


def _grid(v: list[float] | Range) -> list[float] | None:
    return v if isinstance(v, list) else None


def plan_search(study: Study) -> list[Visit]:
    """The KD and CE search visits, in a fixed order (CE first: it is the yardstick)."""
    s = study.search
    visits: list[Visit] = []
    lrs = _grid(s.lr) if s.sampler == "grid" else None
    lr_points: list[float | None] = list(lrs) if lrs else [None]
    if study.baseline.ce:
        n_ce = ce_trials(study)
        for lr in lr_points:
            for r in range(n_ce if lrs is None else s.trials_per_point):
                key = f"ce/lr={lr:g}/r={r}" if lr is not None else f"ce/r={r}"
                visits.append(Visit(key, "ce", "ce", study.seed, lr=lr))
    temps, alphas = _grid(s.temperature), _grid(s.alpha)
    if temps is not None and alphas is not None:
        for t in temps:
            for a in alphas:
                for lr in lr_points:
                    for r in range(s.trials_per_point):
                        key = f"kd/T={t:g}/a={a:g}" + (f"/lr={lr:g}" if lr is not None else "") + f"/r={r}"
                        visits.append(Visit(key, "kd", "kd", study.seed, temperature=t, alpha=a, lr=lr))
    else:
        n = s.trials or RANGE_TRIALS_PER_POINT * s.trials_per_point
        for r in range(n):
            visits.append(Visit(f"kd/r={r}", "kd", "kd", study.seed,
                                temperature=temps[r % len(temps)] if temps and len(temps) == 1 else None,
                                alpha=alphas[0] if alphas and len(alphas) == 1 else None))
    return visits


def finalist_seeds(study: Study) -> list[int]:
    """Finalists run on fresh seeds (seed+1 ...), not the one the search selected on."""
    return [study.seed + 1 + i for i in range(study.finalists.seeds)]


def plan_finalists(study: Study, runs: pd.DataFrame) -> list[Visit]:
    """The top_k KD configurations and the best CE one (by validation accuracy), each on every seed."""
    visits: list[Visit] = []
    done = runs[(runs["state"] == "complete") & runs["kind"].isin(["kd", "ce"])]
    for loss, k in (("kd", study.finalists.top_k), ("ce", 1 if study.baseline.ce else 0)):
        best = done[done["kind"] == loss].sort_values(["val_acc", "trial_number"], ascending=[False, True])
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

"""The budget axis: does what short search trials rank first still win when the student is trained properly?

kdbench searches with short trials because a grid of full trainings is unaffordable; whether their ranking
holds at the budget a user then trains for is measured here, not assumed (Beyer et al. 2022, "Knowledge
distillation: a good teacher is patient and consistent": the best T moves with the schedule's length; Wu et
al. 2018: short-horizon tuning biases hyperparameters).

- :func:`epoch_rank_correlation`: over the search's unpruned trials, how well the validation accuracy at each
  epoch (or step, on ``student.eval_every``'s grid) ranks the final one (Spearman ρ with a bootstrap interval):
  the assumption every early-stopping pruner makes. :func:`pruner_warnings` names where a pruner acted on a low ρ.
- :func:`transfer`: the finalists and probes (``finalists.probe``) re-trained at the finalists' budget on the
  same seeds, against their search scores: rank correlation over configurations with a bootstrap interval,
  the search winner's rank at full budget and its paired gap to the best there, and one sentence.
- :func:`budget_table`: per budget (every ``search.budget`` and the finalists'), the best (T, α) and KD − CE
  paired over seeds, on validation (the finalists' test result is the verdict's).

Pure functions on the store's frames (:meth:`kdbench.store.Store.runs`, ``epochs``) and the study's config;
statistics from ``scipy.stats`` (Spearman, bootstrap) and :mod:`kdbench.report.stats` (paired t).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from kdbench.config import Study
from kdbench.defaults import PRUNE_RHO_MIN
from kdbench.report import effects
from kdbench.report.methods import arm_label
from kdbench.report.stats import CONFIDENCE, Paired, paired_difference
from kdbench.store import run_values
from kdbench.studyfile import stored_study

__all__ = ["BOOTSTRAP_RESAMPLES", "BUDGET_COLUMNS", "EPOCH_COLUMNS", "RANK_CI_MIN_N", "TRANSFER_COLUMNS",
           "BudgetLabels", "StudyLike", "Transfer", "as_study", "budget_frames", "budget_labels", "budget_table",
           "epoch_rank_correlation", "main_runs", "pruner_warnings", "spearman_interval", "transfer", "transfers"]

BOOTSTRAP_RESAMPLES = 2000  # resamples of every bootstrap interval here (percentile method, seeded: reproducible)
RANK_CI_MIN_N = 5  # pairs below which a rank correlation gets no bootstrap interval: 3 or 4 pairs have too few
# distinct resamples (most repeat a point, many have a constant side) for percentiles to mean anything
EPOCH_COLUMNS = ["stage", "budget", "epoch", "epochs", "step", "steps", "n", "rho", "ci_low", "ci_high"]
TRANSFER_COLUMNS = ["config", "search_rank", "search_val", "search_n", "full_val", "full_sd", "full_n", "full_rank"]
BUDGET_COLUMNS = ["budget", "stage", "where", "best_cell", "kd_val", "ce_val", "n", "diff", "ci_low", "ci_high"]


@dataclass(frozen=True)
class BudgetLabels:
    """A study's budgets in words: the search's (smallest first), the one finalists are chosen at, the finalists'."""

    search: list[str]
    selection: str
    finalists: str

    @property
    def longer(self) -> bool:
        """Finalists train for another budget than the trials they were chosen on."""
        return self.finalists != self.selection


StudyLike = dict[str, Any] | Study
"""What the report's readers take: the typed study, or its config as the store keeps it (parsed by :func:`as_study`)."""


def as_study(config: StudyLike) -> Study:
    """The typed study: ``config`` itself, or its stored config parsed back (:func:`kdbench.studyfile.stored_study`)."""
    return config if isinstance(config, Study) else stored_study(config)


def budget_labels(config: StudyLike) -> BudgetLabels:
    """The budgets of a study (its typed study, or its config as stored: the resolved study), in words (``3 epochs``):
    the typed study's own :attr:`~kdbench.config.Study.search_budgets`, ``selection_budget`` and ``finalist_budget``."""
    study = as_study(config)
    return BudgetLabels([b.label for b in study.search_budgets], study.selection_budget.label,
                        study.finalist_budget.label)


def main_runs(runs: pd.DataFrame, config: StudyLike) -> pd.DataFrame:
    """The runs every other section reads: the search at the selection budget and the finalists (no probes)."""
    labels = budget_labels(config)
    out = runs[runs["kind"] != "probe"]
    if len(labels.search) > 1:
        out = out[(out["kind"] == "finalist") | (out["budget"] == labels.selection)]
    return out


# ---------------------------------------------------------------------------------------------- statistics


def spearman_interval(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Spearman's ρ of paired values and its bootstrap interval (resampling the pairs, percentile method).

    A resample whose one side is constant has no ρ; the interval is the percentiles of the resamples that have
    one (``np.nanpercentile`` over scipy's ``bootstrap_distribution``; scipy's own interval would be NaN).

    Returns:
        ``(rho, ci_low, ci_high)``; NaN where undefined (fewer than 3 pairs, or a constant side); no interval
        below :data:`RANK_CI_MIN_N` pairs.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan, math.nan
    rho = float(stats.spearmanr(x, y).statistic)
    if len(x) < RANK_CI_MIN_N:
        return rho, math.nan, math.nan

    def statistic(a: np.ndarray, b: np.ndarray) -> float:
        return float(stats.spearmanr(a, b).statistic) if np.ptp(a) > 0 and np.ptp(b) > 0 else math.nan

    with warnings.catch_warnings():  # a resample with a constant side is NaN: the interval then says so
        warnings.simplefilter("ignore")
        res = stats.bootstrap((x, y), statistic, paired=True, vectorized=False, n_resamples=BOOTSTRAP_RESAMPLES,
                              confidence_level=CONFIDENCE, method="percentile", rng=np.random.default_rng(0))
    dist = res.bootstrap_distribution
    if np.isnan(dist).mean() > 0.5:  # most resamples degenerate: no interval worth the name
        return rho, math.nan, math.nan
    lo, hi = np.nanpercentile(dist, [50 * (1 - CONFIDENCE), 50 * (1 + CONFIDENCE)])
    return rho, float(lo), float(hi)


def epoch_rank_correlation(runs: pd.DataFrame, epochs: pd.DataFrame, default_budget: str = "",
                           eval_every: int | None = None) -> pd.DataFrame:
    """How well each epoch's validation accuracy ranks the final one, over the search's complete trials.

    Per search stage (an Optuna study: ``kd``, ``ce``, ...) and budget, and per epoch before the last: Spearman
    ρ between the trials' validation accuracy at that epoch and at their last epoch, with a bootstrap interval
    over trials. Only complete trials count (a pruned one has no final value), so under an active pruner they
    are its survivors. Epochs are numbered from 1 (with ``eval_every``, evaluation points).

    Args:
        default_budget: the budget of runs stored before runs recorded theirs.
        eval_every: ``student.eval_every``: ``step`` and ``steps`` say where the point and the last lie.

    Returns:
        Columns :data:`EPOCH_COLUMNS` (``epochs``: the budget's epochs); empty when no trial has two epochs.
    """
    search = runs[~runs["kind"].isin(["finalist", "probe"]) & (runs["state"] == "complete")]
    rows: list[dict[str, Any]] = []
    if search.empty or epochs.empty:
        return pd.DataFrame(columns=EPOCH_COLUMNS)
    budget = search.set_index("run_id")["budget"].fillna(default_budget)
    e = epochs[epochs["run_id"].isin(search["run_id"])].dropna(subset=["val_acc"])
    wide = e.pivot_table(index="run_id", columns="epoch", values="val_acc", aggfunc="first")
    on_grid = eval_every is not None and "steps" in e and e["steps"].notna().all()  # else step, steps: NaN
    at = e.pivot_table(index="run_id", columns="epoch", values="steps", aggfunc="first") if on_grid else None
    kinds = search.set_index("run_id")["kind"]
    for (stage, label), ids in wide.groupby([kinds.reindex(wide.index), budget.reindex(wide.index)]).groups.items():
        w = wide.loc[ids].dropna(axis=1, how="all")
        if w.shape[1] < 2:
            continue
        last = int(w.columns.max())
        final = w[last]
        steps = at.loc[ids].max() if at is not None else pd.Series(dtype=float)  # a point's, alike in a budget
        for epoch in sorted(int(c) for c in w.columns if c != last):
            both = pd.concat([w[epoch], final], axis=1).dropna()
            rho, lo, hi = spearman_interval(both.iloc[:, 0].to_numpy(), both.iloc[:, 1].to_numpy())
            rows.append({"stage": stage, "budget": label, "epoch": epoch + 1, "epochs": last + 1, "n": len(both),
                         "step": float(steps.get(epoch, math.nan)), "steps": float(steps.get(last, math.nan)),
                         "rho": rho, "ci_low": lo, "ci_high": hi})
    out = pd.DataFrame(rows, columns=EPOCH_COLUMNS)
    return out.sort_values(["stage", "budget", "epoch"], key=_budget_order).reset_index(drop=True)


def pruner_warnings(runs: pd.DataFrame, correlation: pd.DataFrame, pruner: str,
                    points: pd.DataFrame | None = None) -> list[str]:
    """One warning per (stage, epoch) where the pruner stopped trials and that epoch's ρ is below
    :data:`kdbench.config.PRUNE_RHO_MIN` (or could not be measured). With ``points`` (the store's evaluation
    points of a study on ``student.eval_every``'s step grid) a trial stopped at its last point, said in steps."""
    pruned = runs[(runs["state"] == "pruned") & ~runs["kind"].isin(["finalist", "probe"])]
    if pruned.empty:
        return []
    unit, keys = ("step", ["kind", "epochs_done", "step"]) if points is not None else ("epoch", ["kind", "epochs_done"])
    if points is not None:  # a trial's last point, where it stopped (its epochs_done counts epochs, not points)
        last = points.sort_values("epoch").groupby("run_id").last()
        pruned = pruned.assign(epochs_done=pruned["run_id"].map(last["epoch"] + 1),
                               step=pruned["run_id"].map(last["steps"])).dropna(subset=["epochs_done", "step"])
    out = []
    for (stage, at, *step), g in pruned.groupby(keys):
        match = correlation[(correlation["stage"] == stage) & (correlation["epoch"] == int(at))]
        n, where = len(g), f"step {int(step[0])}" if step else f"epoch {int(at)}"
        what = f"The {pruner} pruner stopped {n} {arm_label(str(stage))} trial{'s' if n != 1 else ''} after {where}"
        if match.empty or math.isnan(float(match["rho"].iloc[0])):
            out.append(f"{what}, where no complete trials measure how well that {unit} ranks the final accuracy: "
                       "the pruner's assumption is untested.")
            continue
        r = match.iloc[0]
        if r["rho"] < PRUNE_RHO_MIN:
            out.append(f"{what}, where accuracy ranks the final one only with Spearman ρ = {r['rho']:.2f} "
                       f"{_interval(r['ci_low'], r['ci_high'])} (n = {int(r['n'])} complete trials; below "
                       f"{PRUNE_RHO_MIN:g}): it may have stopped trials that would have ranked high.")
    return out


@dataclass
class Transfer:
    """The transfer check of one method: its configurations at the search budget and at the finalists' budget.

    Attributes:
        method: the distillation method.
        table: one row per configuration trained at full budget (columns :data:`TRANSFER_COLUMNS`; ranks from 1).
        rho, ci_low, ci_high: Spearman ρ of search and full-budget validation accuracy over configurations.
        winner_rank: the search winner's rank at full budget (1 = still best; 0 when it was not trained).
        gap: best-at-full-budget − winner, paired over seeds (zero pairs when the winner is best).
        sentence: what it means, in one sentence.
    """

    method: str
    table: pd.DataFrame
    rho: float
    ci_low: float
    ci_high: float
    winner_rank: int
    gap: Paired
    sentence: str
    budgets: BudgetLabels = field(default_factory=lambda: BudgetLabels([], "", ""))


def _config(row: pd.Series) -> str:
    values = run_values(row)
    short = {"temperature": "T", "alpha": "α"}
    return " ".join(f"{short.get(k, k)}={v:g}" for k, v in values.items())


def transfer(runs: pd.DataFrame, config: StudyLike, method: str = "kd") -> Transfer:
    """Compare a method's configurations at the search budget with the same ones at the finalists' budget.

    The configurations are the method's finalists and probes (the runs at full budget, on the finalist seeds);
    a configuration's search score is its mean validation accuracy over the search's replicate seeds at the
    selection budget (the value it was ranked by), its full score the mean over the finalist seeds.

    Returns:
        The :class:`Transfer`; with fewer than 3 configurations ρ is NaN and the sentence says so.
    """
    labels = budget_labels(config)
    done = runs[runs["state"] == "complete"]
    search = main_runs(done, config)
    search = search[search["kind"] == method]  # the trials it was ranked by: at the selection budget
    full = done[done["kind"].isin(["finalist", "probe"]) & (done["loss"] == method)]
    search_by = search.assign(config=search.apply(_config, axis=1)) if len(search) else search.assign(config="")
    full_by = full.assign(config=full.apply(_config, axis=1)) if len(full) else full.assign(config="")
    rows = []
    for cfg, g in full_by.groupby("config", sort=False):
        s = search_by[search_by["config"] == cfg]["val_acc"]
        rows.append({"config": cfg, "search_rank": int(g["rank"].min()) + 1, "search_val": float(s.mean()),
                     "search_n": len(s), "full_val": float(g["val_acc"].mean()),
                     "full_sd": float(g["val_acc"].std(ddof=1)) if len(g) > 1 else math.nan, "full_n": len(g)})
    table = pd.DataFrame(rows, columns=TRANSFER_COLUMNS)
    table["full_rank"] = table["full_val"].rank(ascending=False, method="min").astype("Int64")
    table = table.sort_values("search_rank").reset_index(drop=True)
    rho, lo, hi = spearman_interval(table["search_val"].to_numpy(), table["full_val"].to_numpy())
    winner = table[table["search_rank"] == 1]
    winner_rank = int(winner["full_rank"].iloc[0]) if len(winner) else 0
    gap = paired_difference(pd.Series(dtype=float), pd.Series(dtype=float))
    if len(winner) and winner_rank > 1:
        best = table.sort_values("full_val", ascending=False)["config"].iloc[0]
        by_seed = {c: g.set_index("seed")["val_acc"] for c, g in full_by.groupby("config")}
        gap = paired_difference(by_seed[best], by_seed[winner["config"].iloc[0]])
    out = Transfer(method, table, rho, lo, hi, winner_rank, gap, "", labels)
    out.sentence = transfer_sentence(out)
    return out


def transfer_sentence(t: Transfer) -> str:
    """One sentence: does the short trials' ranking hold at the finalists' budget?

    It holds when ρ's interval lies above 0 and the search winner is not behind the best at full budget (its
    paired gap's interval contains 0, or it is the best); it does not hold when the winner is behind (the gap's
    interval lies above 0) or ρ's interval lies below 0; otherwise the data cannot tell.
    """
    b, n = t.budgets, len(t.table)
    at = f"at {b.finalists}"
    if n < 3:
        return (f"Whether the short trials' ranking holds {at} cannot be measured: {n} configuration"
                f"{'s were' if n != 1 else ' was'} trained there; set finalists.probe to train more.")
    corr = f"Spearman ρ = {t.rho:.2f} {_interval(t.ci_low, t.ci_high)} over n = {n} configurations"
    if t.winner_rank == 0:
        where = "the search's winner was not trained at full budget"
    elif t.winner_rank == 1:
        where = f"the search's winner is still 1st of {n}"
    else:
        g = t.gap
        gap = f"{100 * g.mean:.2f} pp {_interval(100 * g.ci_low, 100 * g.ci_high, sign=True)} (n={g.n} seeds)"
        where = f"the search's winner is {_ordinal(t.winner_rank)} of {n}, {gap} behind the best"
    behind = t.winner_rank > 1 and t.gap.n >= 2 and t.gap.ci_low > 0
    if behind or (not math.isnan(t.ci_high) and t.ci_high < 0):
        return f"The short trials' ranking does not hold {at} ({b.selection} in the search): {corr}; {where}."
    if not math.isnan(t.ci_low) and t.ci_low > 0:
        return f"The short trials' ranking holds {at} ({b.selection} in the search): {corr}; {where}."
    why = "an interval that contains 0" if not math.isnan(t.ci_low) else "too few for an interval"
    return (f"Whether the short trials' ranking holds {at} ({b.selection} in the search) cannot be told from "
            f"these data: {corr}, {why}; {where}. More probes (finalists.probe) would tell.")


def budget_table(runs: pd.DataFrame, config: StudyLike) -> pd.DataFrame:
    """Per budget: Hinton's KD best (T, α) cell and its KD − CE on validation, paired over seeds.

    At each search budget the cells are scored as the search scores them (replicate mean at each cell's best
    lr, :func:`kdbench.report.effects.best_lr_cells`) and the best cell's difference to CE is paired over the
    search seeds (selected on these same values: optimistic). At the finalists' budget (when longer), the
    best KD configuration trained there (finalists and probes) against the CE finalist, paired over the
    finalist seeds.

    Returns:
        Columns :data:`BUDGET_COLUMNS`, accuracies as fractions; empty without CE runs.
    """
    labels = budget_labels(config)
    done = runs[runs["state"] == "complete"]
    rows: list[dict[str, Any]] = []
    for label in labels.search:
        at = done[done["kind"].isin(["kd", "ce"])]
        if len(labels.search) > 1:
            at = at[at["budget"] == label]
        frame = at.rename(columns={"kind": "stage"})[list(effects.RUN_COLUMNS)]
        cells = effects.best_lr_cells(frame).cells
        kd, ce = cells[cells["stage"] == "kd"], cells[cells["stage"] == "ce"]
        if kd.empty or ce.empty:
            continue
        best = kd.sort_values(["mean", "temperature", "alpha"], ascending=[False, True, True]).iloc[0]
        deltas = effects.delta_vs_ce(effects.seed_matrix(frame, cells))
        d = deltas[(deltas["temperature"] == best["temperature"]) & (deltas["alpha"] == best["alpha"])]
        row = {"budget": label, "stage": "search", "where": "validation, search seeds",
               "best_cell": f"T={best['temperature']:g} α={best['alpha']:g} lr={best['best_lr']:g}",
               "kd_val": float(best["mean"]), "ce_val": float(ce["mean"].iloc[0])}
        if len(d):
            r = d.iloc[0]
            row.update(n=int(r["n"]), diff=float(r["mean"]), ci_low=float(r["ci_low"]), ci_high=float(r["ci_high"]))
        rows.append(row)
    if labels.longer:
        full = done[done["kind"].isin(["finalist", "probe"])]
        kd, ce = full[full["loss"] == "kd"], full[(full["loss"] == "ce") & (full["kind"] == "finalist")]
        if len(kd) and len(ce):
            kd = kd.assign(config=kd.apply(_config, axis=1))
            means = kd.groupby("config")["val_acc"].mean().sort_values(ascending=False)
            best_kd = kd[kd["config"] == means.index[0]]
            p = paired_difference(best_kd.set_index("seed")["val_acc"], ce.set_index("seed")["val_acc"])
            rows.append({"budget": labels.finalists, "stage": "finalists + probes",
                         "where": "validation, finalist seeds", "best_cell": str(means.index[0]),
                         "kd_val": float(means.iloc[0]), "ce_val": float(ce["val_acc"].mean()), "n": p.n,
                         "diff": p.mean, "ci_low": p.ci_low, "ci_high": p.ci_high})
    return pd.DataFrame(rows, columns=BUDGET_COLUMNS)


def transfers(runs: pd.DataFrame, config: StudyLike, methods: list[str]) -> list[Transfer]:
    """:func:`transfer` of each method with runs at the finalists' budget, when that budget is longer than the
    search's or probes ran (else there is nothing to transfer to: an empty list)."""
    at_full = runs[runs["kind"].isin(["finalist", "probe"]) & (runs["state"] == "complete")]
    if not (budget_labels(config).longer or (runs["kind"] == "probe").any()):
        return []
    return [transfer(runs, config, m) for m in methods if (at_full["loss"] == m).any()]


def budget_frames(runs: pd.DataFrame, epochs: pd.DataFrame, config: StudyLike, methods: list[str],
                  pruner: str) -> dict[str, Any]:
    """Everything the report's budget section shows (the :class:`kdbench.report.frames.StudyFrames` fields
    ``budgets``, ``epoch_rho``, ``pruner_warnings``, ``transfers``, ``budget_table``), from every run: probes
    and every search budget."""
    labels, eval_every = budget_labels(config), as_study(config).student.eval_every
    rho = epoch_rank_correlation(runs, epochs, labels.selection, eval_every)
    points = epochs if eval_every is not None else None
    return dict(budgets=labels, epoch_rho=rho, pruner_warnings=pruner_warnings(runs, rho, pruner, points),
                transfers=transfers(runs, config, methods),
                budget_table=budget_table(runs, config) if len(labels.search) > 1 or labels.longer
                else pd.DataFrame(columns=BUDGET_COLUMNS))


# ---------------------------------------------------------------------------------------------- helpers


def _budget_order(column: pd.Series) -> pd.Series:
    """Sort key: budgets by their number (``3 epochs`` before ``15 epochs``), other columns as they are."""
    if column.name != "budget":
        return column
    return column.map(lambda s: int(s.split()[0]) if isinstance(s, str) and s[:1].isdigit() else -1)


def _interval(lo: float, hi: float, sign: bool = False) -> str:
    if math.isnan(lo) or math.isnan(hi):
        return "(no interval)"
    fmt = "+.2f" if sign else ".2f"
    return f"[{lo:{fmt}}, {hi:{fmt}}]"


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"

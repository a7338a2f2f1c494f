"""The search's picture, from the runs (pandas only): the T × α grid with each cell's value, its interval
and its paired difference to CE, and the evidence about the whole grid (main effects, reliability, budgets).

A grid cell's value is the replicate mean of its validation accuracy at its own best lr (chosen on that
mean, as for CE), so two cells differ in T and α, not in lr luck; its interval and n say how much seed
noise is left. The statistics come from :mod:`kdbench.report.effects`. Pruned trials keep the last value
they reached, shown as such (never as a result). Studies written before replicated grids (one run per
cell at a sampled lr) read the same way, with n = 1 and no intervals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from kdbench.config import Range
from kdbench.report import effects
from kdbench.report.bins import binned_effect
from kdbench.report.budget import BudgetLabels, StudyLike, as_study, budget_labels
from kdbench.report.methods import arm_label
from kdbench.report.stats import summarize
from kdbench.sweep.extend import ArmLr, lr_status
from kdbench.sweep.recheck import Recheck, recheck_status

__all__ = [
    "GRID_COLUMNS",
    "RUN_STATES",
    "SearchEvidence",
    "budget_words",
    "grid_table",
    "lr_sentence",
    "qualified_verdict",
    "search_evidence",
]

RUN_STATES = ("complete", "pruned", "failed", "running", "interrupted")
GRID_COLUMNS = [
    "temperature", "alpha", "n_trials", *(f"n_{s}" for s in RUN_STATES), "best_val", "mean_val", "sd_val",
    "min_val", "lr_best", "diff_ce",
    # the replicated design: the cell at its best lr, and its paired difference to CE
    "cell_mean", "cell_n", "cell_ci_half", "cell_lr", "delta_ce", "delta_ci_low", "delta_ci_high", "delta_n",
    "holm_above_zero", "pruned_last_val", "pruned_epoch",
]


@dataclass(frozen=True)
class SearchEvidence:
    """What the whole search says, beyond single cells.

    Attributes:
        cells: each cell's best lr and its value there, and the means at every lr (:class:`effects.BestLr`).
        deltas: each KD cell − CE, paired over seeds, with Holm's correction (:func:`effects.delta_vs_ce`).
        main_effects: T's and α's main effects and the RM-ANOVA (:func:`effects.main_effects`).
        reliability: the grid's split-half reliability over seeds (:func:`effects.reliability`).
        binned: range searches: binned validation accuracy by T and by α (``param`` column), else empty.
        budgets: each arm's tuning budget in words.
        replicates: search seeds per cell.
        pruner: the pruner that ran (``none`` for a grid unless the study asked for one).
        sentences: the plain sentences a reader gets first (effects, reliability, budgets, Holm, the lr check).
        lr_arms: each arm's best lr against the lrs its best cell was trained at
            (:func:`kdbench.sweep.extend.lr_status`).
        recheck: the finalists' lr re-check in words (:func:`recheck_sentence`), ``""`` without one.
    """

    cells: effects.BestLr
    deltas: pd.DataFrame
    main_effects: effects.MainEffects
    reliability: effects.Reliability
    binned: pd.DataFrame
    budgets: dict[str, str]
    replicates: int
    pruner: str
    sentences: list[str]
    lr_arms: list[ArmLr]
    recheck: str = ""


def _search_runs(runs: pd.DataFrame) -> pd.DataFrame:
    done = runs[runs["kind"].isin(["kd", "ce"]) & (runs["state"] == "complete")]
    return done.rename(columns={"kind": "stage"})[list(effects.RUN_COLUMNS)]


ARMS = ("kd", "ce", "ce_ls")  # the arms whose tuning budget is put in words: Hinton KD, CE, CE with label smoothing


def budget_words(config: StudyLike, runs: pd.DataFrame) -> dict[str, str]:
    """Each arm's tuning budget in words, from what the search planned (its config) and ran (its runs).

    A replicated grid (T and α lists, every run at one of the planned lr candidates) reads
    ``{"kd": "20 cells × 3 lr × 3 seeds", "ce": "3 lr × 3 seeds", "ce_ls": "3 lr × 3 seeds"}`` (CE with label
    smoothing: one cell per ε, "2 cells × ..." for two); any other study (a range search, or a grid stored before
    replicated grids, whose cells drew their lr) counts its search runs, e.g. ``{"kd": "12 trials", "ce": "3
    trials"}``.
    """
    study = as_study(config)
    search = study.search
    temps, alphas, lrs_planned = search.temperature, search.alpha, search.lr_candidates() or []
    search_runs = runs[runs["kind"].isin(ARMS)]
    if lrs_planned:  # runs beyond the planned lr range are the lr extension's, stated apart (lr_sentence)
        lr = search_runs["lr"].to_numpy(float)
        search_runs = search_runs[~((lr < min(lrs_planned) * (1 - 1e-9)) | (lr > max(lrs_planned) * (1 + 1e-9)))]
    at_planned = np.isclose(search_runs["lr"].to_numpy(float)[:, None], np.asarray(lrs_planned, float)[None, :],
                            rtol=1e-9, atol=0.0).any(axis=1).all() if lrs_planned else False
    if isinstance(temps, list) and isinstance(alphas, list) and at_planned:
        per = search_runs.groupby("kind").agg(lrs=("lr", "nunique"), seeds=("seed", "nunique"))
        out: dict[str, str] = {}
        cells = {"kd": len(temps) * len(alphas), "ce": 1, "ce_ls": max(1, len(study.baseline.label_smoothing))}
        for stage in ARMS:
            if stage in per.index:
                lrs, seeds = int(per.loc[stage, "lrs"]), int(per.loc[stage, "seeds"])
                each = f"{lrs} lr × {seeds} seed{'s' if seeds != 1 else ''}"
                out[stage] = f"{cells[stage]} cells × {each}" if stage == "kd" or cells[stage] > 1 else each
                # a half-finished grid: the lrs and seeds seen so far, not yet the plan
                planned = cells[stage] * len(lrs_planned) * search.n_replicates * len(study.search_budgets)
                ended = int((search_runs["kind"].eq(stage)
                             & search_runs["state"].isin(["complete", "pruned", "failed"])).sum())
                out[stage] += f" so far ({ended} of {planned} planned runs ended)" if ended < planned else ""
        return out
    counts = search_runs["kind"].value_counts()
    return {stage: f"{int(counts[stage])} trial{'s' if counts[stage] != 1 else ''}" for stage in ARMS
            if stage in counts}


def _equal_per_cell(budgets: dict[str, str]) -> bool:
    """Whether every arm's tuning budget in :func:`budget_words` is the same per cell ("3 lr × 3 seeds" for CE
    against KD's "9 cells × 3 lr × 3 seeds")."""
    return len({b.split(" cells × ", 1)[-1] for b in budgets.values()}) <= 1


def search_evidence(config: StudyLike, runs: pd.DataFrame) -> SearchEvidence:
    """Compute the grid's evidence from the study's config and its runs (see :class:`SearchEvidence`)."""
    done = _search_runs(runs)
    cells = effects.best_lr_cells(done)
    matrix = effects.seed_matrix(done, cells.cells)
    deltas = effects.delta_vs_ce(matrix)
    study = as_study(config)
    search = study.search
    t, a = search.temperature, search.alpha
    planned = {"temperature": t, "alpha": a} if isinstance(t, list) and isinstance(a, list) else None
    is_grid = planned is not None
    main = effects.main_effects(matrix, planned)
    rel = effects.reliability(matrix)
    kd = done[done["stage"] == "kd"]
    binned = pd.DataFrame()
    if not is_grid and len(kd) > 0:
        parts = [binned_effect(kd, p, 5).assign(param=p) for p in effects.FACTORS
                 if isinstance(getattr(search, p), Range)]
        binned = pd.concat(parts, ignore_index=True) if parts else binned
    budgets = budget_words(study, runs)
    pruner = search.pruner or ("none" if is_grid else "median")
    n_rep = int(done["seed"].nunique()) if len(done) else 0
    sentences = [main.sentences[f] for f in effects.FACTORS if f in main.sentences] if is_grid else []
    if is_grid:
        sentences.append(rel.sentence[:1].upper() + rel.sentence[1:])
    above = deltas[deltas["holm_above_zero"]]
    if len(deltas) and deltas["n"].max() >= 2:
        cells_text = ", ".join(f"T={t:g} α={a:g}" for t, a in zip(above["temperature"], above["alpha"],
                                                                     strict=True))
        sentences.append(f"{len(above)} of {len(deltas)} KD cells beat CE on validation after Holm's correction"
                         + (f": {cells_text}." if len(above) else "."))
    edge = _lr_at_edge(cells)
    if edge:
        sentences.append(edge)
    if budgets:
        sentences.append("Tuning budgets: " + "; ".join(f"{arm_label(k)}: {v}" for k, v in budgets.items()) + ".")
    arms = lr_status(study, runs)
    if arms:
        sentences.append(lr_sentence(arms, study.search.lr_extend))
    recheck = recheck_sentence(recheck_status(study, runs), budget_labels(study).finalists)
    if recheck:
        sentences.append(recheck)
    return SearchEvidence(cells, deltas, main, rel, binned, budgets, n_rep, str(pruner), sentences, arms, recheck)


def lr_sentence(arms: list[ArmLr], limit: int) -> str:
    """Whether every arm was tuned to an interior lr (its best lr between two lrs its best cell was trained at),
    what the lr extension added, and, for an arm that was not, why and what that means for the verdict.

    Args:
        arms: :func:`kdbench.sweep.extend.lr_status` of the study.
        limit: ``search.lr_extend``.
    """
    added = [f"{arm_label(a.arm)}'s lr list by {a.below + a.above} ({a.below} below, {a.above} above)"
             for a in arms if a.below + a.above]
    extended = (f" The lr extension (search.lr_extend = {limit}: each arm's best cell, by its list's ratio, on the "
                f"search seeds) widened {', '.join(added)}.") if added else ""
    ends = [a for a in arms if a.end is not None]
    if not ends:
        return f"Every arm tuned to an interior lr.{extended}"
    why = []
    for a in ends:
        side = "lowest" if a.end == "low" else "highest"
        at = f"{arm_label(a.arm)}'s best lr ({a.best_lr:g}) is the {side}"
        why.append({
            "limit": f"{at} it was trained at after {limit} extension step(s) on that side (search.lr_extend = "
                     f"{limit})" if limit else f"{at} of its candidates (search.lr_extend = 0: not extended)",
            "single": f"{arm_label(a.arm)} was trained at one lr ({a.best_lr:g}): its lr was not tuned",
            "stored": f"{at} of its candidates, and its finalists were stored before kdbench extended lrs",
            "pending": f"{at} of its lrs so far, and its lr extension is under way",
            "range": f"{at} end of the sampler's lr range (a range search is checked, not extended)",
        }.get(a.note, f"{at} of its lrs"))
    names = " and ".join(arm_label(a.arm) for a in ends)
    return (f"Not every arm tuned to an interior lr: {'; '.join(why)}. The optimum of {names} may lie beyond the "
            f"lrs tried, so the verdict may reflect their under-tuning (widen search.lr or raise "
            f"search.lr_extend).{extended}")


def recheck_sentence(rechecks: list[Recheck], budget: str) -> str:
    """Each finalist configuration's lr re-check (``finalists.lr_recheck``): the lrs tried at the finalists' budget,
    their mean validation accuracy, and whether its finalists kept the search's lr; ``""`` without a re-check."""
    if not rechecks:
        return ""
    parts = []
    for r in rechecks:
        name = arm_label(r.arm) + (f" #{r.rank + 1}" if r.rank else "")
        tried = ", ".join(f"{lr:g}: not yet" if math.isnan(m) else f"{lr:g}: {100 * m:.2f} %" for lr, m in r.means)
        moved = f"kept {r.chosen:g}" if r.best == r.chosen else f"moved from {r.chosen:g} to {r.best:g}"
        parts.append(f"{name} {moved} ({tried})")
    n = min(r.n for r in rechecks)
    return (f"lr re-checked at the finalists' budget ({budget}, mean validation accuracy over n={n} finalist "
            f"seed{'s' if n != 1 else ''}, before the test set was read): {'; '.join(parts)}.")


def _lr_at_edge(cells: effects.BestLr) -> str:
    """A sentence when cells chose the lowest or highest lr candidate: their optimum may lie outside the list."""
    c = cells.cells[cells.cells["n_lrs"] > 1]
    if c.empty:
        return ""
    keys = ["stage", "temperature", "alpha"]  # each cell's own lrs: an extended cell has more than the others
    lrs = cells.per_lr.groupby(keys, dropna=False)["lr"].agg(["min", "max"]).reset_index()
    c = c.merge(lrs, on=keys, how="left")
    low = c["best_lr"] <= c["min"]
    high = c["best_lr"] >= c["max"]
    kd, ce = c["stage"] == "kd", c["stage"] == "ce"
    parts = []
    if (ce & (low | high)).any():
        parts.append(f"CE ({'lowest' if (ce & low).any() else 'highest'})")
    if (kd & (low | high)).any():
        parts.append(f"{int((kd & low).sum())} KD cell(s) at the lowest and {int((kd & high).sum())} at the highest "
                     f"of {int(kd.sum())}")
    if not parts:
        return ""
    return (f"The best lr is at an end of the lr candidates for {' and '.join(parts)}: their optimum may lie "
            "outside the list (widen search.lr).")


def qualified_verdict(text: str, config: StudyLike, evidence: SearchEvidence, *, n_seeds: int,
                      teacher: tuple[str, float] | None, budgets: BudgetLabels | None = None) -> str:
    """A verdict, then the conditions it holds under: the student's training budget (a short budget may not
    transfer), the number of seeds, the teacher (model and test accuracy), whether KD and CE were tuned
    alike (a grid is equal per cell: KD's budget is cells × CE's), and whether every arm was tuned to an interior
    lr (:func:`lr_sentence`; an arm whose best lr is an end qualifies the verdict).

    Args:
        text: the verdict (:func:`kdbench.report.stats.verdict`).
        config: the study's config.
        evidence: the search's evidence (its tuning budgets).
        n_seeds: the finalist seeds KD and CE share (the verdict's n).
        teacher: the teacher's model and test accuracy (a fraction), or None when none is recorded.
        budgets: the study's budgets (:func:`kdbench.report.budget.budget_labels`; default: from ``config``).
    """
    study = as_study(config)
    student = study.student
    b = budgets or budget_labels(study)
    per = f" of batch {student.batch_size}" if student.batch_size else ""
    budget = f"{b.finalists}{per}" + (f" (chosen on search trials of {b.selection})" if b.longer else "")
    taught = f"teacher {teacher[0]} at {100 * teacher[1]:.2f} % test accuracy" if teacher else "no teacher recorded"
    who = "finalists" if b.longer else "students"
    text += (f" Conditions: {student.model} {who} trained {budget}, n={n_seeds} shared "
             f"finalist seed{'s' if n_seeds != 1 else ''}, {taught}.")
    tuned = evidence.budgets
    if "kd" in tuned and "ce" in tuned:
        words = "; ".join(f"{arm_label(k)}: {v}" for k, v in tuned.items())
        text += (f" Tuning was equal per cell ({words})." if _equal_per_cell(tuned) else
                 f" Tuning was not equal ({words}): the arm tuned more is favoured.")
    if evidence.lr_arms:
        text += " " + lr_sentence(evidence.lr_arms, study.search.lr_extend)
    if evidence.recheck:
        text += " " + evidence.recheck
    return text


def grid_table(kd: pd.DataFrame, temps: list[float] | None, alphas: list[float] | None, ce_best: float,
               evidence: SearchEvidence) -> pd.DataFrame:
    """One row per (T, α) (columns :data:`GRID_COLUMNS`): trials by state; over complete trials the best,
    mean, sd and minimum validation accuracy, the best single trial's lr and its difference to the best CE
    trial; then the replicated design's cell value at its best lr (mean, n, CI half-width), its paired
    difference to CE with its interval and Holm mark; and, for cells with pruned trials, the best last value
    a pruned trial reached and in which epoch (one-based). A grid lists every configured cell, visited or not."""
    keyed = kd.dropna(subset=["temperature", "alpha"])
    rows = []
    for (t, a), g in keyed.groupby(["temperature", "alpha"], sort=True):
        done = g[g["state"] == "complete"].sort_values(["val_acc", "trial_number"], ascending=[False, True])
        pruned = g[(g["state"] == "pruned") & g["val_acc"].notna()].sort_values("val_acc", ascending=False)
        s = summarize(done["val_acc"])
        rows.append({"temperature": float(t), "alpha": float(a), "n_trials": len(g),
                     **{f"n_{st}": int((g["state"] == st).sum()) for st in RUN_STATES},
                     "best_val": float(done["val_acc"].iloc[0]) if len(done) else math.nan,
                     "mean_val": s.mean, "sd_val": s.sd,
                     "min_val": float(done["val_acc"].min()) if len(done) else math.nan,
                     "lr_best": float(done["lr"].iloc[0]) if len(done) else math.nan,
                     "pruned_last_val": float(pruned["val_acc"].iloc[0]) if len(pruned) else math.nan,
                     "pruned_epoch": int(pruned["epochs_done"].iloc[0]) if len(pruned) else math.nan})
    out = pd.DataFrame(rows, columns=[c for c in GRID_COLUMNS if not c.startswith(("cell_", "delta_", "holm"))
                                      and c != "diff_ce"])
    if temps is not None and alphas is not None:  # every configured point, visited or not
        full = pd.MultiIndex.from_product([sorted(map(float, temps)), sorted(map(float, alphas))],
                                          names=["temperature", "alpha"])
        out = out.set_index(["temperature", "alpha"]).reindex(full).reset_index()
        for c in out.columns:
            if c.startswith("n_"):
                out[c] = out[c].fillna(0).astype(int)
    out["diff_ce"] = out["best_val"] - ce_best
    cells = evidence.cells.cells
    cells = cells[cells["stage"] == "kd"].rename(columns={"mean": "cell_mean", "n": "cell_n",
                                                           "ci_half": "cell_ci_half", "best_lr": "cell_lr"})
    deltas = evidence.deltas.rename(columns={"mean": "delta_ce", "ci_low": "delta_ci_low", "ci_high": "delta_ci_high",
                                             "n": "delta_n"})
    out = out.merge(cells[["temperature", "alpha", "cell_mean", "cell_n", "cell_ci_half", "cell_lr"]],
                    on=["temperature", "alpha"], how="left")
    out = out.merge(deltas[["temperature", "alpha", "delta_ce", "delta_ci_low", "delta_ci_high", "delta_n",
                            "holm_above_zero"]], on=["temperature", "alpha"], how="left")
    out["cell_n"] = out["cell_n"].fillna(0).astype(int)
    out["delta_n"] = out["delta_n"].fillna(0).astype(int)
    out["holm_above_zero"] = out["holm_above_zero"].astype("boolean").fillna(False).astype(bool)
    return out[GRID_COLUMNS].sort_values(["temperature", "alpha"]).reset_index(drop=True)

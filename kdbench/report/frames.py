"""Everything a report shows, as DataFrames computed from what :mod:`kdbench.report.sources` read (pandas only).

:func:`study_frames` reads one study through :func:`~kdbench.report.sources.read_study` and hands the
sources to :func:`compute_frames`, which returns a :class:`StudyFrames`: the T × α grid (best validation
accuracy, trials per cell, the lr each point ended up with, the difference to the tuned CE baseline), the
comparison rows (teacher, CE and KD finalists with the store's mean ± sd and n, and the paired KD − CE
difference), the per-seed pairs behind that difference, the fidelity of the stored test predictions
(teacher agreement, McNemar, per-class change), learning curves, the prediction grid's data, Optuna's
parameter importances and the provenance. A pure function of the sources: no database, Optuna or dataset
is touched, nothing trained or written; what a partial study lacks is listed in ``missing`` instead of failing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import yaml

from kdbench.config import Range, is_geometric
from kdbench.defaults import IMPORTANCE_MIN_TRIALS
from kdbench.report.baselines import Baseline, best_baseline
from kdbench.report.budget import BudgetLabels, Transfer, budget_frames, budget_labels, main_runs
from kdbench.report.calibration import calibration_frames
from kdbench.report.cost import (
    cost_note,
    cost_table,
    curve_points,
    dashboard_command,
    finalist_curves,
    optimisation_history,
    trial_curves,
)
from kdbench.report.grid import RUN_STATES, SearchEvidence, grid_table, qualified_verdict, search_evidence
from kdbench.report.methods import arm_name, method_cells, method_ece, method_sentence, method_table
from kdbench.report.predictions import FIDELITY_COLUMNS, Fidelity, Predictions, prediction_grid
from kdbench.report.predictions import fidelity as fidelity_frames
from kdbench.report.sources import IMPORTANCE_EVALUATOR, StoreLike, StudySources, read_study
from kdbench.report.stats import Paired, paired_difference, verdict

__all__ = [
    "COMPARISON_COLUMNS",
    "SEED_COLUMNS",
    "Importances",
    "StudyFrames",
    "comparison_table",
    "compute_frames",
    "grid_cells",
    "grid_pivot",
    "study_frames",
]

SEED_COLUMNS = ["seed", "ce", "kd", "diff"]


@dataclass
class Importances:
    """Optuna's parameter importances of the KD study, with the evaluator named."""

    table: pd.DataFrame  # param, importance
    evaluator: str
    n_trials: int
    note: str


@dataclass
class StudyFrames:
    """One study's report data. Accuracies are fractions; ``missing`` lists what a partial study lacks."""

    name: str
    config: dict[str, Any]
    config_hash: str
    is_grid: bool
    geometric_t: bool
    grid: pd.DataFrame
    evidence: SearchEvidence
    ce_best_val: float
    ce_trials: pd.DataFrame
    arms: pd.DataFrame
    paired: Paired
    verdict: str
    curves: pd.DataFrame
    predictions: Predictions
    importances: Importances
    provenance: dict[str, Any]
    missing: list[str]
    log_params: list[str] = field(default_factory=list)  # searched on a log scale: drawn with log axes and colours
    seeds: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=SEED_COLUMNS))  # see _paired_seeds
    fidelity: Fidelity = field(default_factory=lambda: Fidelity(pd.DataFrame(columns=FIDELITY_COLUMNS),
                                                                pd.DataFrame()))
    methods: pd.DataFrame = field(default_factory=pd.DataFrame)  # the method table (several methods only)
    method_sentence: str = ""
    method_cells: dict[str, pd.DataFrame] = field(default_factory=dict)  # each non-KD method's cells
    calibration: pd.DataFrame = field(default_factory=pd.DataFrame)  # ECE and NLL per arm
    reliability: pd.DataFrame = field(default_factory=pd.DataFrame)  # the reliability diagram's bins per arm
    calibration_note: str = ""
    cost: pd.DataFrame = field(default_factory=pd.DataFrame)  # wall-clock per arm and stage
    cost_note: str = ""  # a warning when the timings are too noisy to compare arms
    trials: pd.DataFrame = field(default_factory=pd.DataFrame)  # every search trial's curve with its state
    history: pd.DataFrame = field(default_factory=pd.DataFrame)  # best validation accuracy so far per arm
    dashboard: str = ""  # the optuna-dashboard command for this database
    budgets: BudgetLabels = field(default_factory=lambda: BudgetLabels([], "", ""))  # search, selection, finalists
    epoch_rho: pd.DataFrame = field(default_factory=pd.DataFrame)  # each epoch's rank correlation with the final
    pruner_warnings: list[str] = field(default_factory=list)  # a pruner acted where that correlation is low
    transfers: list[Transfer] = field(default_factory=list)  # per method: search ranking vs the finalists' budget
    budget_table: pd.DataFrame = field(default_factory=pd.DataFrame)  # best cell and KD − CE per budget


def study_frames(storage: StoreLike, name: str, *, load_images: bool = True,
                 importance_min_trials: int = IMPORTANCE_MIN_TRIALS) -> StudyFrames:
    """Read one study (:func:`~kdbench.report.sources.read_study`) and compute everything its report shows.

    Args:
        storage: the open store, or the SQLAlchemy URL of the results database.
        name: the study's name.
        load_images: read the test split for the prediction grid (else it says the images were skipped).
        importance_min_trials: complete KD trials below which importances are not shown.

    Returns:
        The study's frames (see :func:`compute_frames`).

    Raises:
        StoreError: unknown study (the message lists the studies in the database) or unusable database.
    """
    return compute_frames(read_study(storage, name, load_images=load_images,
                                     importance_min_trials=importance_min_trials))


def compute_frames(src: StudySources) -> StudyFrames:
    """Compute everything the report of one study shows from what was read of it.

    Args:
        src: the study's sources, as :func:`~kdbench.report.sources.read_study` returns them.

    Returns:
        The grid, comparison rows, paired KD − CE result and verdict, curves, prediction grid, importances and
        provenance; ``missing`` lists what a partial study lacks.
    """
    study, runs = src.study, main_runs(src.runs, src.study)  # the search at the selection budget; finalists
    t, a = study.search.temperature, study.search.alpha  # a grid: both lists
    temps, alphas = (t, a) if isinstance(t, list) and isinstance(a, list) else (None, None)
    is_grid = temps is not None
    missing: list[str] = []
    points = curve_points(src.epochs, study.student.eval_every)  # the curves' x: epochs, or steps on a step grid

    search_runs = runs[runs["kind"].isin(["kd", "ce"])]
    kd = search_runs[search_runs["kind"] == "kd"]
    ce = search_runs[(search_runs["kind"] == "ce") & (search_runs["state"] == "complete")]
    if kd.empty:
        missing.append("no KD search trials yet")
    ce_best = float(ce["val_acc"].max()) if not ce.empty else math.nan
    if ce.empty:
        missing.append("no complete CE baseline trial (baseline.ce off or not run yet): no differences to CE")
    evidence = search_evidence(study, runs)
    grid = grid_table(kd, temps, alphas, ce_best, evidence)

    if src.teacher is None:
        missing.append("no teacher recorded yet")
    finals = runs[(runs["kind"] == "finalist") & (runs["state"] == "complete")]
    if finals.empty:
        missing.append("no complete finalists yet: no test accuracies, comparison, fidelity or learning curves")
    labels = budget_labels(study)
    arms, paired, base = _arms(src, finals, evidence.budgets, labels)
    fidelity = fidelity_frames(src.predictions, src.teacher)
    best_kd = arms["arm"] == "KD student"
    if best_kd.any() and fidelity.seeds["mcnemar_p"].notna().any():
        arms.loc[best_kd, "mcnemar_p"] = float(fidelity.seeds["mcnemar_p"].median())
    taught = None if src.teacher is None else (src.teacher.model, float(src.teacher.test_acc))
    methods = study.search.methods
    several = methods != ["kd"]
    table = method_table(runs, methods) if several else pd.DataFrame()
    test_labels = src.predictions.test.labels if src.predictions.test is not None else None
    calib, reliability, calib_note = calibration_frames(
        src.logits, src.teacher.test_logits if src.teacher else None, test_labels,
        {loss: arm_name(loss) for loss in src.logits}, src.temperatures)
    return StudyFrames(
        name=src.name, config=src.config, config_hash=src.config_hash, is_grid=is_grid,
        geometric_t=temps is not None and is_geometric(temps), grid=grid, evidence=evidence, ce_best_val=ce_best,
        ce_trials=ce[["trial_number", "lr", "val_acc"]].reset_index(drop=True), arms=arms, paired=paired,
        verdict=qualified_verdict(verdict(paired, base.name) + base.sentence, study, evidence, n_seeds=paired.n,
                                  teacher=taught, budgets=labels)
        if not finals.empty else "KD and CE cannot be compared yet: no complete finalists.",
        curves=finalist_curves(points, finals), predictions=prediction_grid(src.predictions, src.teacher),
        importances=_importances(src), provenance=_provenance(src), missing=missing,
        log_params=[p for p in ("temperature", "lr") if _log_scale(getattr(study.search, p))],
        seeds=_paired_seeds(finals),
        fidelity=fidelity, methods=method_ece(table, calib) if several else table, calibration=calib,
        method_sentence=method_sentence(table, calib) if several else "",
        method_cells={m: method_cells(runs, m) for m in methods if m != "kd"},
        reliability=reliability, calibration_note=calib_note,
        cost=cost_table(runs, src.teacher.train_seconds if src.teacher else None), cost_note=cost_note(runs),
        trials=trial_curves(points, runs), history=optimisation_history(runs),
        dashboard=dashboard_command(src.storage_url),
        **budget_frames(src.runs, src.epochs, study, methods, evidence.pruner))


def _log_scale(spec: Any) -> bool:
    """Is a search parameter sampled on a log scale? A geometric list (1, 2, 4, 8), or a range with ``log: true``."""
    if isinstance(spec, list):
        return is_geometric(spec)
    return isinstance(spec, Range) and spec.log


# ---------------------------------------------------------------------------------------------- grid


def grid_pivot(sf: StudyFrames, column: str) -> pd.DataFrame:
    """``column`` of the grid as α rows (largest on top) × T columns.

    Args:
        sf: the study's frames.
        column: a column of ``sf.grid``.

    Returns:
        The pivoted column, indexed by α (descending) with one column per T.
    """
    return sf.grid.pivot(index="alpha", columns="temperature", values=column).sort_index(ascending=False)


def grid_cells(sf: StudyFrames, column: str) -> pd.DataFrame:
    """Cell text of a grid table or heatmap, in :func:`grid_pivot`'s layout.

    ``cell_mean``: the cell's value in %, its CI half-width and n, and its lr (``88.93 ±0.31 n=3 lr 0.001``);
    ``delta_ce``: the paired difference to CE in pp with its interval, ``*`` when it stays above 0 after Holm's
    correction; any other column: the value in % and the trials. A cell without a value says why (not run,
    running, failed, or pruned with the last value a pruned trial reached and its epoch).

    Args:
        sf: the study's frames.
        column: a column of ``sf.grid`` holding fractions.

    Returns:
        Text cells, one line per item.
    """
    g = sf.grid.set_index(["alpha", "temperature"])
    values = grid_pivot(sf, column)
    text = values.astype(object).copy()
    for i, a in enumerate(values.index):
        for j, t in enumerate(values.columns):
            if (a, t) not in g.index:  # a range search: most (T, α) pairs were never drawn
                text.iat[i, j] = ""
                continue
            r, v = g.loc[(a, t)], values.iat[i, j]
            if math.isnan(v):
                text.iat[i, j] = _no_value(r)
            elif column == "cell_mean":
                half = "" if math.isnan(r["cell_ci_half"]) else f"±{100 * r['cell_ci_half']:.2f} "
                text.iat[i, j] = f"{100 * v:.2f}\n{half}n={int(r['cell_n'])}\nlr {r['cell_lr']:.2g}"
            elif column == "delta_ce":
                ci = "" if math.isnan(r["delta_ci_low"]) else \
                    f"[{100 * r['delta_ci_low']:+.2f}, {100 * r['delta_ci_high']:+.2f}]"
                text.iat[i, j] = f"{100 * v:+.2f}{' *' if r['holm_above_zero'] else ''}\n{ci}\nn={int(r['delta_n'])}"
            else:
                text.iat[i, j] = f"{100 * v:.2f}\nn={int(r['n_trials'])}"
    return text


def _no_value(r: pd.Series) -> str:
    """Why a grid cell has no value: not run, running, failed, or pruned (with what the pruned trial reached)."""
    if int(r["n_trials"]) == 0:
        return "not run"
    if r["n_pruned"] and not math.isnan(r["pruned_last_val"]):
        epoch = int(r["pruned_epoch"])  # one-based: the epoch its last validation point fell in
        return f"pruned\nlast {100 * r['pruned_last_val']:.2f}" + (f"\nin epoch {epoch}" if epoch >= 1 else "")
    if r["n_pruned"]:
        return f"pruned\nn={int(r['n_trials'])}"
    return f"{'failed' if r['n_failed'] else 'running'}\nn={int(r['n_trials'])}"


# ---------------------------------------------------------------------------------------------- comparison


COMPARISON_COLUMNS = [
    "study", "arm", "model", "temperature", "alpha", "lr", "test_mean", "test_sd", "n", "diff_mean",
    "ci_low", "ci_high", "p_value", "mcnemar_p", "n_pairs", "parameters", "infer_ms_per_batch", "device", "seeds",
    "commit", "config_hash", "tuning", "budget",
]


def _arms(src: StudySources, finals: pd.DataFrame, budgets: dict[str, str],
          labels: BudgetLabels) -> tuple[pd.DataFrame, Paired, Baseline]:
    """The comparison rows: the teacher, then the finalists with the store's test mean, sd and n and each one's paired
    difference to CE; and KD's to the better baseline on validation (:func:`~kdbench.report.baselines`)."""
    rows: list[dict[str, Any]] = []
    study, teacher = src.study, src.teacher
    if teacher is not None:
        rows.append({"arm": "teacher", "model": teacher.model, "test_mean": float(teacher.test_acc), "n": 1,
                     "parameters": teacher.parameters, "infer_ms_per_batch": teacher.infer_ms_per_batch,
                     "device": teacher.device, "seeds": str(study.seed), "commit": teacher.commit})
    student = study.student.model
    summary = src.finalists.set_index(["loss", "rank"])
    by_seed = {key: g.set_index("seed")["test_acc"] for key, g in finals.groupby(["loss", "rank"])}
    ce, base, none = by_seed.get(("ce", 0)), best_baseline(src.finalists), pd.Series(dtype=float)
    paired = paired_difference(by_seed.get(("kd", 0), none), by_seed.get((base.loss, 0), none))
    # Every student arm is the same architecture: one timing for all of them (per-arm medians differ by noise)
    student_ms = float(finals["infer_ms_per_batch"].median()) if len(finals) else math.nan
    for (loss, rank), g in sorted(finals.groupby(["loss", "rank"]),
                                  key=lambda kv: ({"ce": 0, "ce_ls": 1, "kd": 2}.get(kv[0][0], 3), kv[0][1], kv[0][0])):
        s = summary.loc[(loss, rank)]
        row: dict[str, Any] = {
            "arm": arm_name(str(loss)) + (f" #{int(rank) + 1}" if rank else ""),
            "model": student, "temperature": g["temperature"].iloc[0], "alpha": g["alpha"].iloc[0],
            "lr": g["lr"].iloc[0], "test_mean": float(s["test_mean"]), "test_sd": float(s["test_sd"]),
            "n": int(s["n"]), "parameters": g["parameters"].iloc[0],
            "infer_ms_per_batch": student_ms,
            "device": "; ".join(sorted(set(g["device"].dropna()))),
            "seeds": " ".join(str(int(x)) for x in sorted(g["seed"])),
            "commit": "; ".join(sorted({str(c) for c in g["commit"].dropna()})), "tuning": budgets.get(str(loss)),
            "budget": "; ".join(sorted({str(b) for b in g["budget"].dropna()})) or labels.finalists}
        if loss != "ce" and ce is not None:  # every method's difference to CE, paired by seed
            p = paired_difference(g.set_index("seed")["test_acc"], ce)
            row.update(diff_mean=p.mean, ci_low=p.ci_low, ci_high=p.ci_high, p_value=p.p_value, n_pairs=p.n)
        rows.append(row)
    out = pd.DataFrame(rows, columns=COMPARISON_COLUMNS[1:])
    out.insert(0, "study", src.name)
    out["config_hash"] = src.config_hash
    out = out[COMPARISON_COLUMNS]
    return out, paired, base


def _paired_seeds(finals: pd.DataFrame) -> pd.DataFrame:
    """Per seed both best (rank 0) finalists completed: CE's and KD's test accuracy and KD − CE (the pairs
    :func:`~kdbench.report.stats.paired_difference` averages)."""
    best = finals[finals["rank"] == 0]
    if best.empty:
        return pd.DataFrame(columns=SEED_COLUMNS)
    wide = best.pivot_table(index="seed", columns="loss", values="test_acc", aggfunc="first")
    wide = wide.reindex(columns=["ce", "kd"]).dropna().astype(float)
    wide["diff"] = wide["kd"] - wide["ce"]
    return wide.rename_axis(columns=None).reset_index()[SEED_COLUMNS]


def comparison_table(frames: list[StudyFrames]) -> pd.DataFrame:
    """The comparison rows of one or more studies, one table.

    Args:
        frames: the studies' frames, in the table's order.

    Returns:
        Their ``arms`` concatenated, numbers as fractions (columns ``COMPARISON_COLUMNS``; empty when none has rows).
    """
    parts = [f.arms for f in frames if not f.arms.empty]
    if not parts:
        return pd.DataFrame(columns=COMPARISON_COLUMNS)
    return pd.concat(parts, ignore_index=True)[COMPARISON_COLUMNS]


# ---------------------------------------------------------------------------------------------- importances


def _importances(src: StudySources) -> Importances:
    """Optuna's importances as a table, largest first, with n; below ``IMPORTANCE_MIN_TRIALS`` (config.py) the
    sources did not compute them, and the note says why in one line."""
    n = src.kd_complete
    if src.importances is None:
        return Importances(pd.DataFrame(columns=["param", "importance"]), IMPORTANCE_EVALUATOR, n,
                           src.importances_skipped)
    table = pd.DataFrame({"param": list(src.importances), "importance": list(src.importances.values())})
    table = table.sort_values(["importance", "param"], ascending=[False, True]).reset_index(drop=True)
    return Importances(table, IMPORTANCE_EVALUATOR, n, f"from n={n} complete KD trials")


# ---------------------------------------------------------------------------------------------- provenance


def _provenance(src: StudySources) -> dict[str, Any]:
    """Config, hashes, commits, library versions, devices, dates, run counts and the teacher of one study."""
    runs, teacher = src.runs, src.teacher
    counts = runs.groupby(["kind", "state"]).size().unstack(fill_value=0)
    counts = counts.reindex(columns=list(RUN_STATES), fill_value=0).reindex(["ce", "kd", "finalist"], fill_value=0)
    counts.loc["all"] = counts.sum()
    versions = sorted({v for v in runs["versions"].dropna()})

    def _date(x: Any) -> str:
        return "n/a" if x is None or pd.isna(x) else pd.Timestamp(x).strftime("%Y-%m-%d %H:%M:%S UTC")

    return {
        "config_yaml": yaml.safe_dump(src.config, sort_keys=False, default_flow_style=None, width=100),
        "config_hash": src.config_hash,
        "study_commit": src.commit,
        "run_commits": sorted({str(c) for c in runs["commit"].dropna()}),
        "versions": [json.loads(v) if isinstance(v, str) else v for v in versions],
        "devices": sorted({str(d) for d in runs["device"].dropna()}),
        "created": _date(src.created),
        "first_started": _date(runs["started"].min() if len(runs) else None),
        "last_finished": _date(runs["finished"].max() if len(runs) else None),
        "counts": counts.astype(int),
        "teacher": None if teacher is None else {
            "key": teacher.key, "model": teacher.model, "val_acc": teacher.val_acc, "test_acc": teacher.test_acc,
            "commit": teacher.commit, "device": teacher.device, "cache": teacher.cache_location},
    }

"""The method table: each distillation method's best configuration against CE and against Hinton's KD.

Every method of a study is tuned on the same budget and the same search seeds, and its best configuration
(chosen on validation) is re-trained on the same fresh seeds as CE's and Hinton's; so each method's test
accuracy pairs by seed with theirs. A row gives the method's test mean ± sd (n seeds), the paired
difference to CE and to Hinton's KD with its 95 % t interval and paired t-test p (:func:`paired_difference`),
those p-values Holm-corrected over the methods of the study (``statsmodels``' ``multipletests``), the
tuning budget (search runs: cells × lr × seeds) and the cost of one search trial relative to one CE trial
(median wall-clock of each, same machine and study).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd
from statsmodels.stats.multitest import multipletests

from kdbench.report.calibration import BASELINE_ARMS, calibration_flags
from kdbench.report.stats import Paired, paired_difference, power_clause, summarize
from kdbench.store import cell_key, run_values
from kdbench.sweep.rank import best_per_cell, rank_configs

__all__ = ["METHOD_COLUMNS", "METHOD_NAMES", "arm_label", "arm_name", "holm", "method_cells", "method_ece",
           "method_sentence", "method_table"]

SHOWN = {"temperature": "T", "alpha": "α"}  # how T and alpha are named in the tables
METHOD_NAMES = {"kd": "Hinton KD", "dkd": "DKD", "dist": "DIST", "lskd": "LS-KD", "ce": "CE", "ce_ls": "CE+LS"}
METHOD_COLUMNS = [
    "method", "configuration", "test_mean", "test_sd", "n",
    "vs_ce_mean", "vs_ce_low", "vs_ce_high", "vs_ce_p", "vs_ce_p_holm", "vs_ce_n", "vs_ce_sd",
    "vs_kd_mean", "vs_kd_low", "vs_kd_high", "vs_kd_p", "vs_kd_p_holm", "vs_kd_n", "vs_kd_sd",
    "search_runs", "cells", "trial_cost_vs_ce",
]


def arm_label(loss: str, params: object = None) -> str:
    """An arm as every page and printed line names it (never its internal name, ``ce_ls``): ``KD`` (Hinton's),
    ``CE``, ``CE+LS``, ``DKD``, ...; with a run's ``params`` (a dict, or the store's JSON) that give a label
    smoothing, that too: ``CE+LS (label smoothing 0.1)``."""
    name = "KD" if loss == "kd" else METHOD_NAMES.get(loss, loss)
    values = json.loads(params) if isinstance(params, str) and params else params
    eps = values.get("label_smoothing") if isinstance(values, dict) else None
    return f"{name} (label smoothing {eps:g})" if eps is not None else name


def arm_name(loss: str) -> str:
    """How a finalist arm is called on the page: "CE student", "KD student" (Hinton's), "DKD student", ..."""
    return f"{arm_label(loss)} student"


def holm(p_values: list[float]) -> list[float]:
    """Holm-adjusted p-values (NaN entries stay NaN and do not count towards the family)."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(len(p), math.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method="holm")[1]
    return out.tolist()


def _configuration(row: pd.Series) -> str:
    values = run_values(row)
    values["lr"] = values.pop("lr")  # last
    return ", ".join(f"{SHOWN.get(k, k)}={v:g}" for k, v in values.items())


def _by_seed(finals: pd.DataFrame, method: str) -> pd.Series:
    return finals[(finals["loss"] == method) & (finals["rank"] == 0)].set_index("seed")["test_acc"]


def _columns(prefix: str, p: Paired) -> dict[str, float]:
    return {f"{prefix}_mean": p.mean, f"{prefix}_low": p.ci_low, f"{prefix}_high": p.ci_high,
            f"{prefix}_p": p.p_value, f"{prefix}_n": float(p.n), f"{prefix}_sd": p.sd}


def method_table(runs: pd.DataFrame, methods: list[str]) -> pd.DataFrame:
    """One row per method of the study (Hinton's KD first) and one for CE; numbers as fractions.

    Args:
        runs: every run of the study (:meth:`kdbench.store.Store.runs`).
        methods: the study's ``search.method`` list.

    Returns:
        ``METHOD_COLUMNS``; a method without complete finalists yet has NaN test columns.
    """
    finals = runs[(runs["kind"] == "finalist") & (runs["state"] == "complete")]
    search = runs[runs["kind"].isin([*methods, "ce"]) & (runs["state"] == "complete")]
    ce_seeds, kd_seeds = _by_seed(finals, "ce"), _by_seed(finals, "kd")
    ce_cost = float(search.loc[search["kind"] == "ce", "wall_time_s"].median()) if "ce" in set(search["kind"]) \
        else math.nan
    empty = pd.Series(dtype=float)
    rows: list[dict[str, Any]] = []
    for method in [*sorted(methods, key=lambda m: m != "kd"), "ce"]:
        mine = _by_seed(finals, method)
        first = finals[(finals["loss"] == method) & (finals["rank"] == 0)]
        s = summarize(mine)
        trials = search[search["kind"] == method]
        cells = trials["visit"].map(cell_key).nunique()
        row: dict[str, Any] = {
            "method": METHOD_NAMES.get(method, method), "configuration": _configuration(first.iloc[0])
            if not first.empty else "", "test_mean": s.mean, "test_sd": s.sd, "n": s.n,
            "search_runs": len(trials), "cells": cells,
            "trial_cost_vs_ce": float(trials["wall_time_s"].median()) / ce_cost if len(trials) and ce_cost > 0
            else math.nan}
        row |= _columns("vs_ce", paired_difference(mine, ce_seeds) if method != "ce" else
                        paired_difference(empty, empty))
        row |= _columns("vs_kd", paired_difference(mine, kd_seeds) if method not in ("kd", "ce") else
                        paired_difference(empty, empty))
        rows.append(row)
    out = pd.DataFrame(rows)
    for prefix in ("vs_ce", "vs_kd"):
        out[f"{prefix}_p_holm"] = holm(out[f"{prefix}_p"].tolist())
    out[["n", "vs_ce_n", "vs_kd_n"]] = out[["n", "vs_ce_n", "vs_kd_n"]].astype(int)
    return out[METHOD_COLUMNS]


def method_ece(table: pd.DataFrame, calibration: pd.DataFrame, baselines: tuple[str, ...] = BASELINE_ARMS,
               factor: float = 2.0) -> pd.DataFrame:
    """The method table with each method's mean test ECE (``ece_mean``, NaN where none is stored) and
    ``ece_flag``: True where it is more than ``factor`` times the best (lowest) baseline arm's ECE, the arms
    :func:`~kdbench.report.calibration.calibration_flags` names."""
    ece = calibration.set_index("arm")["ece_mean"].astype(float) if len(calibration) else pd.Series(dtype=float)
    arms = [arm_name(next((k for k, v in METHOD_NAMES.items() if v == m), m)) for m in table["method"]]
    out = table.assign(ece_mean=[float(ece.get(a, math.nan)) for a in arms])
    base = ece[ece.index.isin(list(baselines))].min() if len(ece) else math.nan
    is_base = pd.Series([a in baselines for a in arms], index=table.index)
    return out.assign(ece_flag=(out["ece_mean"] > factor * base) & ~is_base)


def method_sentence(table: pd.DataFrame, calibration: pd.DataFrame | None = None,
                    baselines: tuple[str, ...] = BASELINE_ARMS) -> str:
    """Each method against CE, then each against Hinton's KD, every difference with its 95 % paired t interval:
    a method helped (or is better than KD) only where that interval lies above 0 and its Holm-corrected p is
    below 0.05, so a method significant against CE where KD is not is never thereby called better than KD; then
    any arm whose ECE is more than twice the best baseline's (:func:`~kdbench.report.calibration.calibration_flags`,
    given the calibration table)."""
    text = _sentence(table)
    flags = calibration_flags(calibration, baselines) if calibration is not None else ""
    return f"{text} {flags}" if flags else text


def _sentence(table: pd.DataFrame) -> str:
    rows = table[(table["method"] != "CE") & (table["vs_ce_n"] >= 2)]
    if rows.empty:
        return "The methods cannot be compared with CE yet: no method has two seeds paired with CE."
    kd = table[~table["method"].isin(["CE", METHOD_NAMES["kd"]])]
    return " ".join(x for x in (_against(rows, "vs_ce", "CE"), _against(kd, "vs_kd", METHOD_NAMES["kd"])) if x)


def _against(rows: pd.DataFrame, prefix: str, other: str) -> str:
    """One sentence: each method against ``other`` (CE or Hinton KD), its difference and interval."""
    if rows.empty:
        return ""
    paired = rows[rows[f"{prefix}_n"] >= 2]
    finite = paired[np.isfinite(paired[f"{prefix}_low"])]
    up = finite[(finite[f"{prefix}_low"] > 0) & (finite[f"{prefix}_p_holm"] < 0.05)]
    down = finite[(finite[f"{prefix}_high"] < 0) & (finite[f"{prefix}_p_holm"] < 0.05)]
    ahead, behind = ("helped over", "hurt against") if prefix == "vs_ce" else ("is better than", "is worse than")
    parts = [f"{r['method']} {ahead if i in up.index else behind} {other} ({_diff(r, prefix)})"
             for i, r in rows.iterrows() if i in up.index or i in down.index]
    parts += [f"{r['method']} and {other} could not be told apart ({_diff(r, prefix)}; {_power(r, prefix)})"
              for i, r in paired.iterrows() if i not in up.index and i not in down.index]
    parts += [f"{r['method']} cannot be compared with {other} yet ({int(r[f'{prefix}_n'])} shared seed(s))"
              for _, r in rows[rows[f"{prefix}_n"] < 2].iterrows()]
    ns = sorted({int(n) for n in paired[f"{prefix}_n"]}) or [0]
    n = f"n={ns[0]}" if len(ns) == 1 else f"n={ns[0]}–{ns[-1]}"
    return (f"Against {other} (difference in pp, 95 % paired t interval, p Holm-corrected over {len(paired)} "
            f"method{'s' if len(paired) != 1 else ''}, {n} shared seeds): {'; '.join(parts)}.")


def _power(r: pd.Series, prefix: str) -> str:
    """The power clause (:func:`~kdbench.report.stats.power_clause`) of one method's difference, before Holm."""
    return power_clause(Paired(r[f"{prefix}_mean"], r[f"{prefix}_sd"], r[f"{prefix}_low"], r[f"{prefix}_high"],
                               r[f"{prefix}_p"], int(r[f"{prefix}_n"]))) + ", before Holm's correction"


def _diff(r: pd.Series, prefix: str) -> str:
    mean, low, high = (100 * r[f"{prefix}_{k}"] for k in ("mean", "low", "high"))
    if not np.isfinite(low):
        return f"{mean:+.2f} pp, no interval: every seed gave the same difference"
    return f"{mean:+.2f} pp [{low:+.2f}, {high:+.2f}], p Holm = {r[f'{prefix}_p_holm']:.2g}"


def method_cells(runs: pd.DataFrame, method: str) -> pd.DataFrame:
    """A method's search cells: every parameter that varies, the cell's validation accuracy (replicate mean
    at its best lr, as the finalists were chosen), that lr, the sd over replicates and n replicates.

    Args:
        runs: every run of the study.
        method: one of its methods.

    Returns:
        One row per cell, best first; the columns are the varying parameters (``T``, ``α``, ``nckd_weight``,
        ...) then ``val_mean, val_sd, n, best_lr``. Empty when the method has no complete search run.
    """
    done = runs[(runs["kind"] == method) & (runs["state"] == "complete")]
    if done.empty:
        return pd.DataFrame(columns=["val_mean", "val_sd", "n", "best_lr"])
    params = pd.DataFrame([run_values(r) for _, r in done.iterrows()], index=done.index).drop(columns="lr")
    varying = [c for c in params.columns if params[c].nunique() > 1]
    keys = [SHOWN.get(c, c) for c in varying]
    best = best_per_cell(rank_configs(done.to_dict("records")))  # as the planner ranks (kdbench.sweep.rank)
    out = pd.DataFrame([{**{SHOWN.get(k, k): v for k, v in c.cell if k in varying}, "val_mean": c.mean,
                         "val_sd": float(np.std(c.values, ddof=1)) if c.n > 1 else math.nan, "n": c.n,
                         "best_lr": c.lr} for c in best], columns=[*keys, "val_mean", "val_sd", "n", "best_lr"])
    return out if keys else out.head(1)

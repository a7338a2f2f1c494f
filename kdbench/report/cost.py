"""What the study cost, and every run as it went: wall-clock per arm and stage, the finalists' learning curves,
each search trial's curve with its state (on epochs, or on ``student.eval_every``'s step grid), and the
optimisation history (the best replicate mean so far, per arm, in trial order).

Timings are the stored wall-clock of each run (training and its per-epoch validation; start-up, the store
and Optuna not included) on the study's own device; a ratio is between medians of runs of one study, so
machine noise counts against both sides alike.
"""

from __future__ import annotations

import math

import pandas as pd

from kdbench.report.methods import METHOD_NAMES

__all__ = ["COST_COLUMNS", "NOISY_SPREAD", "cost_note", "cost_table", "curve_axis", "curve_points", "dashboard_command",
           "finalist_curves", "optimisation_history", "trial_curves"]

COST_COLUMNS = ["arm", "stage", "runs", "total_s", "median_s", "vs_ce"]
NOISY_SPREAD = 1.5  # an arm's search trials whose 90th/10th percentile wall-clock exceeds this: noisy timings


def cost_table(runs: pd.DataFrame, teacher_train_s: float | None) -> pd.DataFrame:
    """Wall-clock per arm: the teacher's training once, each arm's search (total and per trial, and one trial
    relative to one CE trial) and its finalists.

    Args:
        runs: every run of the study.
        teacher_train_s: the teacher's training time (None: loaded from a checkpoint).

    Returns:
        ``COST_COLUMNS``, seconds; the teacher row has one run and no ratio.
    """
    done = runs[runs["state"].isin(["complete", "pruned"]) & runs["wall_time_s"].notna()]
    rows = [{"arm": "teacher", "stage": "training, once", "runs": 1,
             "total_s": teacher_train_s if teacher_train_s is not None else math.nan,
             "median_s": teacher_train_s if teacher_train_s is not None else math.nan, "vs_ce": math.nan}]
    ce_median = float(done.loc[done["kind"] == "ce", "wall_time_s"].median())
    arms = [k for k in dict.fromkeys(done["kind"]) if k != "finalist"]
    for stage, frame, key in (("search", done[done["kind"] != "finalist"], "kind"),
                              ("finalists", done[done["kind"] == "finalist"], "loss")):
        for arm in sorted(set(frame[key]), key=lambda a: (a == "ce", arms.index(a) if a in arms else 99, a)):
            t = frame.loc[frame[key] == arm, "wall_time_s"]
            ratio = float(t.median()) / ce_median if stage == "search" and ce_median > 0 else math.nan
            rows.append({"arm": METHOD_NAMES.get(arm, arm), "stage": stage, "runs": len(t),
                         "total_s": float(t.sum()), "median_s": float(t.median()), "vs_ce": ratio})
    return pd.DataFrame(rows, columns=COST_COLUMNS)


def cost_note(runs: pd.DataFrame) -> str:
    """A warning when one arm's search trials, the same training each time, vary in wall-clock by more than
    :data:`NOISY_SPREAD` (90th over 10th percentile): the machine was shared or busy, and a ratio between arms
    measures the load as much as the method ("" when every arm is steady)."""
    done = runs[(runs["kind"] != "finalist") & (runs["state"] == "complete") & runs["wall_time_s"].notna()]
    spreads = {kind: float(g.quantile(0.9) / g.quantile(0.1)) for kind, g in done.groupby("kind")["wall_time_s"]
               if len(g) >= 3 and g.quantile(0.1) > 0}
    noisy = {k: v for k, v in spreads.items() if v > NOISY_SPREAD}
    if not noisy:
        return ""
    worst = max(noisy, key=lambda k: noisy[k])
    return (f"Timings are noisy: the same training took up to {noisy[worst]:.1f}x longer from one "
            f"{METHOD_NAMES.get(worst, worst)} trial to another (90th over 10th percentile; above "
            f"{NOISY_SPREAD:g}x in {len(noisy)} of {len(spreads)} arms): the machine's load or clock varied "
            "while the study ran, and a ratio to CE inside that spread says nothing about the method. Time the "
            "arms side by side on a quiet machine (bench/) for a cost comparison.")


def curve_axis(eval_every: int | None) -> str:
    """What a curve's x counts: optimiser steps where validation ran on ``student.eval_every``'s step grid, else
    epochs (one point at each epoch's end)."""
    return "optimiser step" if eval_every is not None else "epoch"


def curve_points(epochs: pd.DataFrame, eval_every: int | None) -> pd.DataFrame:
    """The store's evaluation points (:meth:`kdbench.store.Store.epochs`) with ``x``, where each is drawn: the
    optimiser steps taken by it on a step grid (see :func:`curve_axis`), else its epoch counted from 1."""
    steps = epochs["steps"] if "steps" in epochs else pd.Series(float("nan"), index=epochs.index)
    x = steps if eval_every is not None and steps.notna().all() else epochs["epoch"] + 1
    return epochs.assign(x=x.astype(float))


def finalist_curves(epochs: pd.DataFrame, finals: pd.DataFrame) -> pd.DataFrame:
    """Per loss and evaluation point (:func:`curve_points`, drawn at ``x``) of the best (rank 0) finalists: val
    accuracy and train loss, mean and sd over seeds."""
    cols = ["loss", "epoch", "x", "n", "val_mean", "val_sd", "loss_mean", "loss_sd"]
    ep = epochs[epochs["run_id"].isin(finals.loc[finals["rank"] == 0, "run_id"])]
    if ep.empty:
        return pd.DataFrame(columns=cols)
    g = ep.groupby(["loss", "epoch"])
    out = g.agg(x=("x", "max"), n=("run_id", "size"), val_mean=("val_acc", "mean"), val_sd=("val_acc", "std"),
                loss_mean=("train_loss", "mean"), loss_sd=("train_loss", "std")).reset_index()
    return out[cols]


def trial_curves(epochs: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Every search trial's validation accuracy per evaluation point with its final state (pruned and failed
    included).

    Args:
        epochs: the points (:func:`curve_points`).
        runs: every run of the study.

    Returns:
        ``run_id, kind, state, epoch, x, val_acc`` (one row per stored point; ``epoch`` numbers it in its run).
    """
    search = runs[~runs["kind"].isin(["finalist"])][["run_id", "state"]]
    e = epochs[epochs["kind"] != "finalist"][["run_id", "kind", "epoch", "x", "val_acc"]]
    return e.merge(search, on="run_id", how="inner")[["run_id", "kind", "state", "epoch", "x", "val_acc"]]


def optimisation_history(runs: pd.DataFrame) -> pd.DataFrame:
    """Per arm, in the order trials finished: each complete trial's validation accuracy, and the best replicate
    mean so far: the best mean over the configurations (values, lr, budget) that have all of their seeds by then.

    The best single trial of an arm is a maximum over its draws (180 for a 20-cell grid's KD, 9 for its CE),
    so it favours the arm with more trials; the replicate mean is what a grid selects on, and it is the same
    for every arm. A range search (one seed per configuration) reads as the best trial so far.

    Returns:
        ``kind, order, val_acc, best_so_far, n`` (order counts an arm's complete trials from 1; ``n`` is the
        seeds behind ``best_so_far``, which is NaN until some configuration has all of them).
    """
    done = runs[~runs["kind"].isin(["finalist", "probe"]) & (runs["state"] == "complete")]
    done = done.sort_values(["finished", "run_id"])
    keys = [c for c in ("temperature", "alpha", "lr", "params", "budget") if c in done]
    parts = []
    for kind, g in done.groupby("kind", sort=False):
        config = g[keys].apply(lambda c: c.map(str)).agg("|".join, axis=1)
        full = int(g.groupby(config)["seed"].nunique().max())
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        best, rows = math.nan, []
        for key, acc in zip(config, g["val_acc"].astype(float), strict=True):
            sums[key] = sums.get(key, 0.0) + acc
            counts[key] = counts.get(key, 0) + 1
            if counts[key] == full:
                best = max(sums[key] / full, best) if best == best else sums[key] / full
            rows.append(best)
        parts.append(pd.DataFrame({"kind": kind, "order": range(1, len(g) + 1), "val_acc": g["val_acc"].to_numpy(),
                                   "best_so_far": rows, "n": full}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["kind", "order", "val_acc", "best_so_far", "n"])


def dashboard_command(storage_url: str) -> str:
    """The optuna-dashboard command that opens this database (its password masked, as everywhere)."""
    return f"optuna-dashboard {storage_url}" if storage_url else "optuna-dashboard <the database's URL>"

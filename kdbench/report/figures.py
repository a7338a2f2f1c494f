"""The figures of the report's later sections: each method's cells, calibration, every trial, the budget, and
the forest plot of several studies pooled (``report --pool``).

Drawn from :mod:`kdbench.report.frames` only, as :mod:`kdbench.report.plots` (the grid, effects, curves,
predictions, importances and the paired comparison) draws its own; accuracies in percent.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from kdbench.defaults import PRUNE_RHO_MIN
from kdbench.report.cost import curve_axis
from kdbench.report.frames import StudyFrames
from kdbench.report.methods import METHOD_NAMES
from kdbench.report.plots import COLORS, empty_panel, new_figure
from kdbench.report.stats import CONFIDENCE

__all__ = ["budget", "calibration", "forest", "left_out", "method_cells", "one_evaluation", "trials"]

STATE_COLORS = {"complete": "#4c72b0", "pruned": "#c44e52", "failed": "#8c8c8c", "interrupted": "#8c8c8c",
                "running": "#dd8452"}
ARM_COLORS = ["#dd8452", "#55a868", "#8172b3", "#937860", "#da8bc3", "#64b5cd"]


def one_evaluation(curves: pd.DataFrame, key: str) -> bool:
    """Every run (or arm, by ``key``) was evaluated once, at the end: a point per run, no curve."""
    return not curves.empty and int(curves.groupby(key)["epoch"].nunique().max()) <= 1


def _points(sf: StudyFrames) -> str:
    """What a trial's evaluation points are, in words: on ``student.eval_every``'s step grid, or epoch ends."""
    return "evaluation points" if sf.config.get("student", {}).get("eval_every") is not None else "epochs"


def left_out(sf: StudyFrames) -> dict[str, str]:
    """The figures that would be drawn empty, each with the sentence the report says instead (the report draws
    the others). A budget figure whose two panels would be empty, learning curves with no finalist or one
    evaluation per run, a reliability diagram with no stored logits, a trial figure with no trial, heatmaps and
    effects with no complete KD cell, a prediction grid with no finalists' predictions."""
    out = {}
    if sf.grid.empty or sf.grid["cell_mean"].isna().all():
        out["heatmap-val"] = "No heatmap: no complete KD trial yet."
    if sf.grid.empty or sf.grid["delta_ce"].isna().all():
        out["heatmap-diff"] = "No difference heatmap: no KD cell has a complete CE run on the same seeds yet."
    ev = sf.evidence
    levels, column = (ev.main_effects.levels, "effect") if sf.is_grid else (ev.binned, "mean")
    if levels.empty or levels[column].isna().all():
        out["effects"] = "No main-effects figure: no complete KD cell yet."
    p = sf.predictions
    if p.images is None or p.table.empty:
        out["predictions"] = "No prediction grid: " + "; ".join(p.notes) + "."
    if sf.curves.empty:
        out["learning-curves"] = "No learning curves: no complete finalists yet."
    elif one_evaluation(sf.curves, "loss"):
        out["learning-curves"] = ("No learning curves: one evaluation per run (validation only after the last "
                                  "step; student.eval_every gives a curve): no curve. The comparison above holds at "
                                  "this budget only.")
    if sf.reliability.empty:
        out["calibration"] = "No reliability diagram: there is nothing to draw (calibration not computed, see above)."
    if sf.trials.empty and sf.history.empty:
        out["trials"] = "No trial figure: no search trial recorded yet."
    if not sf.transfers and sf.epoch_rho.dropna(subset=["rho"]).empty:
        out["budget"] = ("No budget figure: no configuration was trained at another budget and no search trial "
                         f"recorded two {_points(sf)}, so there is nothing to draw.")
    if not any(not c.empty for c in sf.method_cells.values()):
        out["method-cells"] = "No per-cell figure of the other methods: none has a complete search trial yet."
    return out


def method_cells(sf: StudyFrames) -> Figure:
    """Per method (beside Hinton's KD, drawn in the grid section): validation accuracy over its two main
    hyperparameters (the first two that vary), each cell at its best lr, n replicates in the cell."""
    cells = {m: c for m, c in sf.method_cells.items() if not c.empty}
    fig, axes = new_figure(4.4 * max(1, len(cells)), 3.8, 1, max(1, len(cells)), squeeze=False)
    if not cells:
        return empty_panel(fig, axes[0][0], "no complete search trial of another method yet")
    for ax, (method, c) in zip(axes[0], cells.items(), strict=False):
        keys = [k for k in c.columns if k not in ("val_mean", "val_sd", "n", "best_lr")]
        name = METHOD_NAMES.get(method, method)
        if len(keys) >= 2:
            pivot = c.pivot_table(index=keys[1], columns=keys[0], values="val_mean").sort_index(ascending=False)
            n = c.pivot_table(index=keys[1], columns=keys[0], values="n").reindex_like(pivot)
            labels = (pivot * 100).round(2).astype(str) + "\nn=" + n.fillna(0).astype(int).astype(str)
            sns.heatmap(pivot * 100, ax=ax, annot=labels, fmt="", cmap="viridis", cbar_kws={"label": "val acc (%)"})
            ax.set_xlabel(keys[0])
            ax.set_ylabel(keys[1])
        elif keys:
            c = c.sort_values(keys[0])
            ax.errorbar(c[keys[0]], c["val_mean"] * 100, yerr=c["val_sd"].fillna(0) * 100, marker="o", capsize=3)
            ax.set_xlabel(keys[0])
            ax.set_ylabel("val acc (%), mean ± sd over seeds")
        else:
            ax.bar([0], [float(c["val_mean"].iloc[0]) * 100])
            ax.set_ylabel("val acc (%)")
        ax.set_title(f"{name}: validation accuracy per cell (best lr)")
    fig.tight_layout()
    return fig


def calibration(sf: StudyFrames) -> Figure:
    """Reliability diagram: accuracy against confidence per bin, each arm's seeds pooled (the diagonal is
    perfect calibration); the legend gives each arm's ECE and NLL (mean over seeds)."""
    fig, ax = new_figure(6.4, 4.6)
    if sf.reliability.empty:
        return empty_panel(fig, ax, f"calibration {sf.calibration_note}")
    ax.plot([0, 1], [0, 1], color="#999", linestyle=":", label="perfect calibration")
    table = sf.calibration.set_index("arm")
    for i, (arm, b) in enumerate(sf.reliability.groupby("arm", sort=False)):
        b = b[b["count"] > 0]
        color = COLORS["teacher"] if arm == "teacher" else COLORS["ce"] if arm.startswith("CE") else \
            ARM_COLORS[i % len(ARM_COLORS)]
        r = table.loc[arm]
        ax.plot(b["confidence"], b["accuracy"], marker="o", color=color,
                label=f"{arm}: ECE {100 * r['ece_mean']:.2f} %, NLL {r['nll_mean']:.3f} (n={int(r['n'])})")
    ax.set_xlabel("confidence (top-class probability), 15 equal bins")
    ax.set_ylabel("accuracy in the bin")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(f"Reliability on the test set (finalists at {sf.budgets.finalists})")
    fig.tight_layout()
    return fig


def trials(sf: StudyFrames) -> Figure:
    """Left: every search trial's validation accuracy per evaluation point (epochs, or the steps of
    ``student.eval_every``), coloured by its final state (a pruned trial stops early); left out where every trial
    was evaluated once (a point per trial, no curve). Right: the optimisation history, each arm's best replicate
    mean so far by trial."""
    if sf.trials.empty or one_evaluation(sf.trials, "run_id"):
        fig, right = new_figure(6.4, 4.2)
        return _history(fig, right, sf)
    fig, (left, right) = new_figure(11.0, 4.2, 1, 2)
    for (_, state), g in sf.trials.groupby(["run_id", "state"]):
        left.plot(g["x"], g["val_acc"] * 100, color=STATE_COLORS.get(state, "#333"), alpha=0.35, lw=0.8,
                  marker="." if len(g) == 1 else None)
    for state, color in STATE_COLORS.items():
        if state in set(sf.trials["state"]):
            n = sf.trials.loc[sf.trials["state"] == state, "run_id"].nunique()
            left.plot([], [], color=color, label=f"{state} (n={n})")
    left.legend(fontsize=7)
    left.set_xlabel(curve_axis(sf.config.get("student", {}).get("eval_every")))
    left.set_ylabel("val acc (%)")
    left.set_title("Every search trial")
    left.xaxis.get_major_locator().set_params(integer=True)
    return _history(fig, right, sf)


def _history(fig: Figure, right: Axes, sf: StudyFrames) -> Figure:
    if sf.history.empty:
        return empty_panel(fig, right, "no complete search trial yet")
    for i, (kind, g) in enumerate(sf.history.groupby("kind", sort=False)):
        color = COLORS["ce"] if kind == "ce" else ARM_COLORS[i % len(ARM_COLORS)]
        right.plot(g["order"], g["best_so_far"] * 100, color=color,
                   label=f"{METHOD_NAMES.get(kind, kind)} (mean of {int(g['n'].iloc[0])} seeds)")
        right.scatter(g["order"], g["val_acc"] * 100, color=color, s=6, alpha=0.4)
    right.set_xlabel("complete trials of the arm, in the order they finished")
    right.set_ylabel("val acc (%): best replicate mean (line), trials (dots)")
    right.set_title("Optimisation history")
    right.legend(fontsize=7)
    fig.tight_layout()
    return fig


def budget(sf: StudyFrames) -> Figure:
    """Left: each configuration trained at the finalists' budget, its search value against its value there (the
    transfer check). Right: each epoch's (or step's, on ``student.eval_every``'s grid) rank correlation with the
    final accuracy over the search's trials."""
    fig, (left, right) = new_figure(11.0, 4.2, 1, 2)
    if not sf.transfers:
        empty_panel(fig, left, "no configuration trained at another budget\n(finalists.budget, finalists.probe)")
    for i, t in enumerate(sf.transfers):
        color = COLORS.get(t.method, ARM_COLORS[i % len(ARM_COLORS)])
        x, y = t.table["search_val"] * 100, t.table["full_val"] * 100
        rho = "n/a" if np.isnan(t.rho) else f"{t.rho:.2f}"
        left.scatter(x, y, color=color, label=f"{METHOD_NAMES.get(t.method, t.method)}: ρ = {rho}, n = {len(x)}")
        for xi, yi, rank in zip(x, y, t.table["search_rank"], strict=True):
            left.annotate(f"#{int(rank)}", (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if sf.transfers:
        b = sf.transfers[0].budgets
        left.set_xlabel(f"val acc (%) at {b.selection}: search replicate mean")
        left.set_ylabel(f"val acc (%) at {b.finalists}: mean over finalist seeds")
        left.set_title("Search ranking vs the finalists' budget (#: search rank)")
        left.legend(fontsize=7)
    rho = sf.epoch_rho.dropna(subset=["rho"])
    if rho.empty:
        return empty_panel(fig, right, f"no search trial has two {_points(sf)}:\nnothing ranks before the last")
    unit = "step" if rho["step"].notna().all() else "epoch"  # the x: optimiser steps on a step grid
    nudge = 0.05 * (float(rho["step"].min()) if unit == "step" else 1.0)  # arms side by side at a point
    for i, ((stage, label), g) in enumerate(rho.groupby(["stage", "budget"], sort=False)):
        color = COLORS.get(str(stage), ARM_COLORS[i % len(ARM_COLORS)])
        err = np.vstack([g["rho"] - g["ci_low"], g["ci_high"] - g["rho"]]).clip(min=0)
        right.errorbar(g[unit] + nudge * i, g["rho"], yerr=np.nan_to_num(err), color=color, marker="o",
                       capsize=3, label=f"{METHOD_NAMES.get(str(stage), stage)}, {label} (n={int(g['n'].max())})")
    right.axhline(PRUNE_RHO_MIN, color="#999", ls=":", lw=1, label=f"ρ = {PRUNE_RHO_MIN:g}: a pruner's floor")
    right.set_ylim(min(0.0, float(rho["ci_low"].min()) - 0.05), 1.02)
    right.set_xticks(sorted(set(rho[unit])))
    right.set_xlabel("optimiser step" if unit == "step" else "epoch")
    right.set_ylabel("Spearman ρ with the final val acc")
    right.set_title(f"Does an early {unit} rank the final one? (pruner: {sf.evidence.pruner})")
    right.legend(fontsize=7)
    fig.tight_layout()
    return fig


def forest(table: pd.DataFrame) -> Figure:
    """The forest plot of pooled studies (:func:`kdbench.report.pool.pool_studies`'s frame): per study its KD − CE with
    its own paired t interval, the square's area in proportion to its random-effects weight; the pooled estimate
    as a diamond over its normal interval, the Hartung–Knapp interval as a thin line through it; 0 dashed."""
    studies, pooled = table[table["row"] == "study"], table[table["row"] == "pooled"].iloc[0]
    fig, ax = new_figure(8.5, 1.8 + 0.45 * (len(studies) + 1))
    ys = np.arange(len(studies), 0, -1)
    for y, (_, r) in zip(ys, studies.iterrows(), strict=True):
        ax.plot([100 * r["ci_low"], 100 * r["ci_high"]], [y, y], color="#333", lw=1.2)
        ax.scatter([100 * r["mean"]], [y], marker="s", s=30 + 250 * r["weight"], color=COLORS["kd"], zorder=3)
    lo, mid, hi = 100 * pooled["ci_low"], 100 * pooled["mean"], 100 * pooled["ci_high"]
    hk = (100 * pooled["hk_low"], 100 * pooled["hk_high"])  # may reach past the axes (k = 2: t with 1 df)
    ax.plot(hk, [0, 0], color="#888", lw=0.8, label=f"pooled: Hartung–Knapp interval [{hk[0]:+.2f}, {hk[1]:+.2f}] pp")
    ax.fill([lo, mid, hi, mid], [0, 0.25, 0, -0.25], color=COLORS["ce"], zorder=3, label="pooled: normal interval")
    ax.axvline(0, color="#999", ls="--", lw=1)
    labels = [f"{r['study']} (n={int(r['n'])}, {r['weight']:.0%})" for _, r in studies.iterrows()]
    ax.set_yticks([*ys, 0], [*labels, str(pooled["study"])])
    low, high = min(0.0, 100 * table["ci_low"].min()), max(0.0, 100 * table["ci_high"].max())
    ax.set_xlim(low - 0.05 * (high - low), high + 0.05 * (high - low))
    ax.set_ylim(-0.7, len(studies) + 0.7)
    ax.set_xlabel(f"KD − CE test accuracy (pp) with {CONFIDENCE:.0%} intervals (a study's: paired t over its seeds)")
    ax.set_title(f"Pooled over {len(studies)} studies (random effects; square area: weight)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=2, frameon=False)
    fig.tight_layout()
    return fig

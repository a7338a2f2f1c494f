"""The report's figures, drawn from :mod:`kdbench.report.frames` only (never from the store).

Each function takes frames and returns a matplotlib Figure (Agg backend, no display). Accuracies
are shown in percent and differences in percentage points (pp); every axis and colour bar says its
unit. T gets a log axis when its grid is geometric (1, 2, 4, 8), and a parameter searched on a log scale
(lr, usually) a log colour scale.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from kdbench.report.cost import curve_axis
from kdbench.report.frames import StudyFrames, grid_cells, grid_pivot
from kdbench.report.methods import arm_label
from kdbench.report.stats import CONFIDENCE

__all__ = ["COLORS", "comparison", "effects", "empty_panel", "heatmap_diff", "heatmap_val", "importances",
           "learning_curves", "new_figure", "predictions"]

T_LABEL = "temperature T"
ALPHA_LABEL = "α (weight of the hard-label CE term)"
COLORS = {"ce": "#4c72b0", "kd": "#dd8452", "teacher": "#55a868", "dkd": "#8172b3", "dist": "#937860",
          "lskd": "#da8bc3"}


def new_figure(width: float, height: float, rows: int = 1, cols: int = 1, **kwargs: Any) -> tuple[Figure, Any]:
    """A Figure on the Agg canvas (no pyplot: no global state, nothing to close) and its axes."""
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, **kwargs)


def empty_panel(fig: Figure, ax: Axes, text: str) -> Figure:
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=11, color="#555")
    return fig


def _t_ticklabels(ax: Axes, temps: list[float]) -> None:
    ax.set_xticklabels([f"{t:g}" for t in temps], rotation=0)


def _heatmap(sf: StudyFrames, column: str, title: str, cbar: str, diverging: bool) -> Figure:
    fig, ax = new_figure(1.45 * max(4, sf.grid["temperature"].nunique()) + 2.8, 5.0)
    if not sf.is_grid:
        return _scatter(fig, ax, sf, column, title, cbar, diverging)
    values = grid_pivot(sf, column) * 100
    if values.isna().all().all():
        return empty_panel(fig, ax, f"{title}: no complete KD trial" +
                      (" and no CE baseline" if column == "delta_ce" else ""))
    kwargs = {}
    if diverging:
        lim = float(np.nanmax(np.abs(values.to_numpy()))) or 1.0
        kwargs = dict(cmap="RdBu", center=0.0, vmin=-lim, vmax=lim)
    else:
        kwargs = dict(cmap="viridis")
    cells = grid_cells(sf, column).to_numpy()
    sns.heatmap(values, annot=cells, fmt="", linewidths=0.5, linecolor="white", ax=ax, cbar_kws={"label": cbar},
                annot_kws={"fontsize": 8}, **kwargs)
    ax.set_facecolor("#e6e6e6")  # cells without a value: seaborn leaves them unannotated, so say why here
    pruned = grid_pivot(sf, "n_pruned").to_numpy()
    for i, j in zip(*np.nonzero(values.isna().to_numpy()), strict=True):
        if pruned[i, j]:  # a pruned cell is no result: hatched, with what its trial reached
            ax.add_patch(Rectangle((j, i), 1, 1, fill=False, hatch="///", edgecolor="#999", lw=0))
        ax.text(j + 0.5, i + 0.5, cells[i, j], ha="center", va="center", fontsize=8, color="#333")
    _t_ticklabels(ax, list(values.columns))
    ax.set_yticklabels([f"{a:g}" for a in values.index], rotation=0)
    ax.set_xlabel(T_LABEL + (" (geometric grid: equal steps are equal ratios)" if sf.geometric_t else ""))
    ax.set_ylabel(ALPHA_LABEL)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def _scatter(fig: Figure, ax: Axes, sf: StudyFrames, column: str, title: str, cbar: str,
             diverging: bool) -> Figure:
    g = sf.grid.dropna(subset=[column])
    if g.empty:
        return empty_panel(fig, ax, f"{title}: no complete KD trial")
    v = 100 * g[column]
    lim = float(v.abs().max()) or 1.0
    sc = ax.scatter(g["temperature"], g["alpha"], c=v, cmap="RdBu" if diverging else "viridis",
                    vmin=-lim if diverging else None, vmax=lim if diverging else None, s=60, edgecolor="k")
    fig.colorbar(sc, ax=ax, label=cbar)
    ax.set_xscale("log")
    ax.set_xlabel(T_LABEL + " (log axis)")
    ax.set_ylabel(ALPHA_LABEL)
    ax.set_title(title + " (T, α sampled from ranges: one point per trial; see the binned effects)")
    fig.tight_layout()
    return fig


def _noise(sf: StudyFrames) -> str:
    """The noise scale for a colour bar: the median 95 % CI half-width of the cells, and their n."""
    half = sf.grid["cell_ci_half"].dropna()
    n = sf.grid.loc[sf.grid["cell_n"] > 0, "cell_n"]
    if half.empty:
        return f"one run per cell (n={int(n.max()) if len(n) else 0}): no noise estimate"
    median = 100 * float(half.median())
    return f"cell {CONFIDENCE:.0%} CI half-width: median ±{median:.2f} pp, n={int(n.median())} seeds"


def heatmap_val(sf: StudyFrames) -> Figure:
    """Each (T, α) cell's validation accuracy: its replicate mean at its best lr, with its CI half-width, n
    and lr; the colour bar states the noise scale. Pruned cells are hatched and show their last value.

    Args:
        sf: the study's frames.

    Returns:
        The figure.
    """
    return _heatmap(sf, "cell_mean", f"{sf.name}: validation accuracy per cell (mean over seeds at its best lr)",
                    f"validation accuracy (%)\n{_noise(sf)}", diverging=False)


def heatmap_diff(sf: StudyFrames) -> Figure:
    """Each cell minus the CE cell, paired over shared seeds, with its CI; ``*`` marks cells whose difference
    stays above 0 after Holm's correction over the cells. Diverging palette centred on 0.

    Args:
        sf: the study's frames.

    Returns:
        The figure.
    """
    ce = sf.evidence.cells.cells
    ce = ce[ce["stage"] == "ce"]
    ce_text = "n/a" if ce.empty or math.isnan(float(ce["mean"].iloc[0])) else \
        f"{100 * float(ce['mean'].iloc[0]):.2f} % at lr {float(ce['best_lr'].iloc[0]):.2g}, n={int(ce['n'].iloc[0])}"
    return _heatmap(sf, "delta_ce", f"{sf.name}: KD cell − CE cell, paired over seeds (CE {ce_text})",
                    f"Δ validation accuracy vs CE (pp)\n[{CONFIDENCE:.0%} CI]; * above 0 after Holm", diverging=True)


def effects(sf: StudyFrames) -> Figure:
    """The main effects of T and α: each level's paired effect (its cells' mean minus the mean of all KD cells,
    per seed, averaged over seeds) with its CI, so the seed noise all cells share cancels. Range searches
    (no levels): validation accuracy per quantile bin of T and of α, mean ± CI, and the CE cell's band.

    Args:
        sf: the study's frames.

    Returns:
        The figure.
    """
    fig, axes = new_figure(11, 4.2, 1, 2, sharey=True)
    ev = sf.evidence
    grid = sf.is_grid
    levels = ev.main_effects.levels if grid else ev.binned.rename(columns={"param": "factor"})
    column = "effect" if grid else "mean"
    if levels.empty or levels[column].isna().all():
        empty_panel(fig, axes[1], "")
        return empty_panel(fig, axes[0], "no complete KD cell yet")
    ce = ev.cells.cells
    ce = ce[ce["stage"] == "ce"]
    for ax, factor, xlabel in ((axes[0], "temperature", T_LABEL), (axes[1], "alpha", ALPHA_LABEL)):
        part = levels[levels["factor"] == factor]
        if part.empty:
            empty_panel(fig, ax, f"{xlabel}: not varied")
            continue
        x = part["level"] if grid else (part["low"] + part["high"]) / 2
        lo, hi = ("effect_ci_low", "effect_ci_high") if grid else ("ci_low", "ci_high")
        y = 100 * part[column]
        err = [y - 100 * part[lo].fillna(part[column]), 100 * part[hi].fillna(part[column]) - y]
        ax.errorbar(x, y, yerr=err, marker="o", ms=5, capsize=4, color=COLORS["kd"],
                    label=(f"level − mean of all KD cells, paired over seeds ± {CONFIDENCE:.0%} CI" if grid else
                           f"KD: mean of the trials in each bin ± {CONFIDENCE:.0%} CI"))
        if grid:
            ax.axhline(0, color="#555", lw=0.8)
        elif len(ce) and not math.isnan(float(ce["mean"].iloc[0])):
            c = ce.iloc[0]
            ax.axhline(100 * c["mean"], color=COLORS["ce"], ls="--", lw=1.2, label=f"CE cell (n={int(c['n'])})")
            if not math.isnan(c["ci_low"]):
                ax.axhspan(100 * c["ci_low"], 100 * c["ci_high"], color=COLORS["ce"], alpha=0.12)
        if factor == "temperature" and (sf.geometric_t or not grid):
            ax.set_xscale("log", base=2)
            ax.minorticks_off()
            xlabel += " (log axis)"
        if grid:
            ax.set_xticks(sorted(part["level"]), [f"{v:g}" for v in sorted(part["level"])])
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("effect on validation accuracy (pp)" if grid else "validation accuracy (%)")
    how = f"{ev.replicates} seeds; the effects table has the level means" if grid else \
        "T and α sampled from ranges: trials binned by quantile, no interpolation"
    fig.suptitle(f"{sf.name}: main effects of T and α ({how})", fontsize=10)
    fig.tight_layout()
    return fig


def learning_curves(sf: StudyFrames) -> Figure:
    """Validation accuracy and training loss per evaluation point (each epoch's end, or ``student.eval_every``'s
    step grid) of the CE and KD finalists: mean and ±1 sd over seeds.

    Args:
        sf: the study's frames.

    Returns:
        The figure.
    """
    fig, axes = new_figure(11, 4, 1, 2)
    c = sf.curves
    if c.empty:
        empty_panel(fig, axes[1], "")
        return empty_panel(fig, axes[0], "no complete finalists yet")
    for loss, part in c.groupby("loss"):
        label = f"{arm_label(str(loss))} finalist (n={int(part['n'].min())} seeds)"
        for ax, m, sd, scale in ((axes[0], "val_mean", "val_sd", 100), (axes[1], "loss_mean", "loss_sd", 1)):
            x = part["x"]
            ax.plot(x, scale * part[m], marker="o", color=COLORS.get(str(loss), "#333"), label=label)
            ax.fill_between(x, scale * (part[m] - part[sd].fillna(0)), scale * (part[m] + part[sd].fillna(0)),
                            color=COLORS.get(str(loss), "#333"), alpha=0.2)
    axes[0].set_ylabel("validation accuracy (%)")
    axes[1].set_ylabel("training loss (each run's own objective)")
    for ax in axes:
        ax.set_xlabel(curve_axis(sf.config.get("student", {}).get("eval_every")))
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{sf.name}: learning curves of the finalists, {sf.budgets.finalists} (line: mean over seeds, "
                 "band: ±1 sd)", fontsize=10)
    fig.tight_layout()
    return fig


def predictions(sf: StudyFrames) -> Figure:
    """Test images with label and teacher / CE / KD predictions; a wrong prediction is red, a KD ≠ CE cell framed.

    Args:
        sf: the study's frames.

    Returns:
        The figure.
    """
    p = sf.predictions
    if p.images is None or p.table.empty:
        fig, ax = new_figure(6, 1.5)
        return empty_panel(fig, ax, "prediction grid unavailable: " + "; ".join(p.notes))
    cols = 8
    rows = math.ceil(len(p.table) / cols)
    fig, axes = new_figure(cols * 1.6, rows * 2.35, rows, cols, squeeze=False)
    names = p.classes or [str(i) for i in range(int(p.table[["label", "ce", "kd"]].max().max()) + 1)]

    def short(k: int) -> str:
        return "—" if k < 0 else names[k][:11]

    for ax, (i, r) in zip(axes.flat, p.table.iterrows(), strict=False):
        img = p.images[i]
        ax.imshow(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0), cmap="gray_r" if img.shape[0] == 1
                  else None, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        lines = [("label", int(r["label"]), "black")] + [
            (who, int(r[col]), "black" if int(r[col]) == int(r["label"]) else "#c0392b")
            for who, col in (("T", "teacher"), ("CE", "ce"), ("KD", "kd"))]
        for k, (who, cls, color) in enumerate(lines):
            ax.text(0.0, -0.06 - 0.15 * k, f"{who}: {short(cls)}", transform=ax.transAxes, fontsize=7,
                    va="top", color=color, weight="bold" if who == "label" else "normal")
        if int(r["ce"]) != int(r["kd"]):
            for s in ax.spines.values():
                s.set_color("#8e44ad")
                s.set_linewidth(2.5)
        ax.set_title(f"#{int(r['index'])}", fontsize=7)
    for ax in list(axes.flat)[len(p.table):]:
        ax.axis("off")
    first = int((p.table["index"] < len(p.table) // 2).sum())
    fig.suptitle(f"{sf.name}: test predictions of seed {p.seed}, finalists at {sf.budgets.finalists} (red: wrong; "
                 "purple frame: CE and KD disagree)\n"
                 f"the first {first} test images, then the first {len(p.table) - first} of the {p.n_disagree:,} "
                 f"(of {p.n_test:,}) where CE and KD disagree", fontsize=10)
    fig.subplots_adjust(hspace=0.8, wspace=0.25, top=0.9, bottom=0.1)
    return fig


def _norm(sf: StudyFrames, param: str, values: npt.NDArray[np.float64]) -> Normalize:
    """The colour scale of a search parameter: logarithmic when it was searched on a log scale (lr over a log
    range or geometric list, T on a geometric grid), so equal ratios get equal colour steps; else linear."""
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (1.0, 1.0)
    if param in sf.log_params and low > 0:
        return LogNorm(vmin=low, vmax=high if high > low else low * 10)
    return Normalize(vmin=low, vmax=high)


def importances(sf: StudyFrames) -> Figure:
    """Optuna's parameter importances (evaluator in the title) and the lr each grid point ended up with.

    Args:
        sf: the study's frames.

    Returns:
        The figure.
    """
    fig, axes = new_figure(11, 4.2, 1, 2, gridspec_kw={"width_ratios": [1, 1.3]})
    imp = sf.importances
    if imp.table.empty:
        empty_panel(fig, axes[0], f"parameter importances {imp.note}")
    else:
        t = imp.table.iloc[::-1]
        axes[0].barh(t["param"], 100 * t["importance"], color="#8172b3")
        axes[0].set_xlabel("importance (% of the total)")
        axes[0].set_title(f"parameter importance (PED-ANOVA, n={imp.n_trials} complete KD trials)", fontsize=10)
        axes[0].grid(axis="x", alpha=0.3)
    lr = grid_pivot(sf, "cell_lr") if sf.is_grid else pd.DataFrame()
    if lr.empty or lr.isna().all().all():
        empty_panel(fig, axes[1], "no lr per grid point (no complete KD trial on a T × α grid)")
    else:
        norm = _norm(sf, "lr", lr.to_numpy())
        scale = " (log colour scale: searched on a log scale)" if isinstance(norm, LogNorm) else ""
        sns.heatmap(lr, annot=True, fmt=".2g", cmap="mako", ax=axes[1], linewidths=0.5, norm=norm,
                    cbar_kws={"label": f"learning rate per step{scale}"}, annot_kws={"fontsize": 9})
        _t_ticklabels(axes[1], list(lr.columns))
        axes[1].set_yticklabels([f"{a:g}" for a in lr.index], rotation=0)
        axes[1].set_xlabel(T_LABEL)
        axes[1].set_ylabel(ALPHA_LABEL)
        axes[1].set_title("lr chosen per cell (best mean over seeds; grey: no complete trial)", fontsize=10)
        axes[1].set_facecolor("#e6e6e6")
    fig.suptitle(f"{sf.name}: what mattered", fontsize=10)
    fig.tight_layout()
    return fig


def comparison(frames: list[StudyFrames]) -> Figure:
    """The paired evidence, one row per study. Left: each finalist seed's CE → KD test accuracy as a line (CE
    and KD finalists of one seed share initialisation and data order). Right: each seed's KD − CE and their
    mean with the verdict's interval (Student t on the paired differences, :func:`kdbench.report.stats.
    paired_difference`).

    Args:
        frames: the studies' frames.

    Returns:
        The figure.
    """
    fig, axes = new_figure(10, 3.6 * max(1, len(frames)), max(1, len(frames)), 2, squeeze=False,
                        gridspec_kw={"width_ratios": [1.4, 1]})
    for (left, right), sf in zip(axes, frames, strict=False):
        _paired_row(left, right, sf, several=len(frames) > 1)
    if not frames:
        empty_panel(fig, axes[0][1], "")
        empty_panel(fig, axes[0][0], "no study")
    fig.tight_layout()
    return fig


def _paired_row(left: Axes, right: Axes, sf: StudyFrames, several: bool) -> None:
    name = f"{sf.name}: " if several else ""
    seeds, p = sf.seeds, sf.paired
    if seeds.empty:
        right.axis("off")
        left.axis("off")
        left.text(0.5, 0.5, f"{name}no seed with both a complete CE and KD finalist yet", ha="center", va="center",
                  fontsize=11, color="#555", transform=left.transAxes)
        return
    for _, r in seeds.iterrows():
        color = COLORS["kd"] if r["diff"] > 0 else (COLORS["ce"] if r["diff"] < 0 else "#888")
        left.plot([0, 1], [100 * r["ce"], 100 * r["kd"]], marker="o", color=color, lw=1.2, alpha=0.85)
        left.annotate(f"seed {int(r['seed'])}", (1, 100 * r["kd"]), textcoords="offset points", xytext=(6, -3),
                      fontsize=7, color="#555")
    left.set_xticks([0, 1], ["CE student", "KD student"])
    left.set_xlim(-0.3, 1.45)
    left.set_ylabel("test accuracy (%)")
    left.grid(axis="y", alpha=0.3)
    teacher = sf.arms[sf.arms["arm"] == "teacher"]
    taught = f"; teacher {teacher['model'].iloc[0]}: {100 * teacher['test_mean'].iloc[0]:.2f} %" if len(teacher) \
        else ""
    left.set_title(f"{name}per finalist seed at {sf.budgets.finalists}, CE → KD (n={len(seeds)}{taught})", fontsize=9)
    d = 100 * seeds["diff"].to_numpy(dtype=float)
    x = np.linspace(-0.15, 0.15, len(d)) if len(d) > 1 else np.zeros(1)
    right.scatter(x, d, color="#555", s=18, zorder=3, label="one seed's KD − CE")
    right.axhline(0, color="#333", lw=0.8)
    if not math.isnan(p.ci_low):
        right.errorbar([0.6], [100 * p.mean], yerr=[[100 * (p.mean - p.ci_low)], [100 * (p.ci_high - p.mean)]],
                       fmt="D", color=COLORS["kd"], capsize=6, ms=7, label=f"mean, {CONFIDENCE:.0%} t interval")
        what = f"{100 * p.mean:+.2f} pp, {CONFIDENCE:.0%} CI [{100 * p.ci_low:+.2f}, {100 * p.ci_high:+.2f}]"
    else:
        right.scatter([0.6], [100 * p.mean], marker="D", color=COLORS["kd"], s=40, label="mean (no interval)")
        what = f"{100 * p.mean:+.2f} pp, no interval at n={p.n}" if p.n < 2 else f"{100 * p.mean:+.2f} pp, no spread"
    right.set_xticks([0, 0.6], ["seeds", "mean"])
    right.set_xlim(-0.45, 0.95)
    right.set_ylabel("KD − CE test accuracy (pp)")
    right.grid(axis="y", alpha=0.3)
    right.legend(fontsize=7, loc="best")
    right.set_title(f"paired KD − CE (n={p.n}): {what}", fontsize=9)

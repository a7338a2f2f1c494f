"""The statistics of a replicated T × α search: best lr per cell, KD − CE per cell, main effects, reliability.

The design: every grid cell (T, α) of the KD search, and the CE baseline as one more cell, is trained at
every lr of a small list on the same R replicate seeds. Seed i of every cell shares its initialisation and
batch order (common random numbers), so differences between cells pair by seed and the seed-to-seed
variation that all cells share cancels out of them. Selection is on validation accuracy.

- :func:`best_lr_cells`: each cell's lr, chosen on the replicate mean, with n, mean, sd and a t interval;
  the mean at every lr is kept too.
- :func:`seed_matrix`: the per-seed values at those lrs (cells × seeds), where every paired statistic starts.
- :func:`delta_vs_ce`: each KD cell − CE, paired over seeds, with a one-sided p-value for Δ > 0 and Holm's
  correction over the cells: with many cells, one clears 0 by chance unless the family is corrected.
- :func:`main_effects`: T and α level means and their paired effects against the grid mean, and a
  repeated-measures ANOVA with seed as subject (``pingouin.rm_anova``), its p-values Greenhouse–Geisser
  corrected for non-sphericity, and none below ``ANOVA_MIN_SEEDS`` seeds. A level averages several cells, so
  these are more precise than any single cell.
- :func:`reliability`: split-half reliability of the pattern of KD cell means across seeds (Spearman–Brown
  corrected): whether the grid's picture would come back with new seeds or is seed noise.
- :func:`kdbench.report.bins.binned_effect` (its own module, on this one's frame): for range searches, mean
  accuracy per quantile bin.

Every interval is two-sided at :data:`CONFIDENCE`, Student t; every statistic comes from ``scipy.stats``,
``statsmodels`` or ``pingouin``. Pure functions on DataFrames: no drawing, no database. An incomplete design (a
run not finished) uses what is there and reports n; an empty frame gives empty results.

The module is longer than 400 lines because the six statistics read one design (the cells × seeds matrix)
and share its helpers; split apart, each piece would need the others' private helpers.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests

from kdbench.defaults import ANOVA_MIN_SEEDS
from kdbench.report.stats import CONFIDENCE
from kdbench.sweep.rank import Cell, best_per_cell, rank_configs, replicate_mean

__all__ = [
    "ANOVA_COLUMNS",
    "CELL_COLUMNS",
    "CONFIDENCE",
    "DELTA_COLUMNS",
    "FACTORS",
    "LEVEL_COLUMNS",
    "PARTLY_RELIABLE",
    "PER_LR_COLUMNS",
    "RELIABLE",
    "RUN_COLUMNS",
    "SIGNIFICANCE",
    "BestLr",
    "MainEffects",
    "Reliability",
    "best_lr_cells",
    "delta_vs_ce",
    "main_effects",
    "reliability",
    "reliability_sentence",
    "search_runs",
    "seed_matrix",
    "t_interval",
]

# Spearman–Brown split-half reliability of the KD cell means. From 0.7 (the usual bar for a reliable
# measurement) the cell-to-cell pattern is reproducible; from 0.4 it is partly so (trust row and column
# effects, which average cells, more than single cells); below 0.4 it is mostly seed noise.
RELIABLE = 0.7
PARTLY_RELIABLE = 0.4
SIGNIFICANCE = round(1 - CONFIDENCE, 12)  # the level of the RM-ANOVA's verdict and of Holm's rejections

RUN_COLUMNS = ("stage", "temperature", "alpha", "lr", "seed", "val_acc")
CELL_COLUMNS = ("stage", "temperature", "alpha", "best_lr", "n_lrs", "n", "mean", "sd", "ci_low", "ci_high",
                "ci_half")
PER_LR_COLUMNS = ("stage", "temperature", "alpha", "lr", "n", "mean", "sd", "best")
DELTA_COLUMNS = ("temperature", "alpha", "n", "mean", "sd", "ci_low", "ci_high", "p_greater", "p_holm",
                 "holm_above_zero")
LEVEL_COLUMNS = ("factor", "level", "n", "mean", "ci_low", "ci_high", "effect", "effect_ci_low", "effect_ci_high")
ANOVA_COLUMNS = ("term", "F", "df_num", "df_den", "p", "epsilon", "p_uncorrected")  # p: Greenhouse–Geisser

FACTORS = ("temperature", "alpha")
_SYMBOL = {"temperature": "T", "alpha": "α"}
_EPS = 1e-12  # a standard deviation at or below this is "no spread": the t interval is undefined


@dataclass(frozen=True)
class BestLr:
    """Each cell's chosen lr and the means at every lr.

    Attributes:
        cells: one row per cell (KD cells by T then α, CE last with T = α = NaN), columns
            :data:`CELL_COLUMNS`: ``best_lr`` (highest replicate mean; ties → the smaller lr), ``n_lrs``
            (lr candidates tried) and, at ``best_lr``: ``n`` (replicates), ``mean``, ``sd`` (ddof=1),
            ``ci_low``/``ci_high`` (t interval of the mean) and ``ci_half`` (its half-width).
        per_lr: one row per cell and lr, columns :data:`PER_LR_COLUMNS` (``best`` marks the chosen lr).
    """

    cells: pd.DataFrame
    per_lr: pd.DataFrame


@dataclass(frozen=True)
class MainEffects:
    """Level means and paired effects of T and α, the RM-ANOVA, and one sentence per factor.

    Attributes:
        levels: one row per factor and level, columns :data:`LEVEL_COLUMNS`: ``n`` seeds, ``mean`` (per
            seed the mean over that level's cells, then over seeds) with its t interval, and ``effect``: per
            seed that level mean − the seed's mean over all KD cells, averaged over seeds, with its interval.
        anova: rows ``temperature``, ``alpha``, ``temperature:alpha`` (factors with one level left out),
            columns :data:`ANOVA_COLUMNS`; None when the design is incomplete (``notes`` says why).
        sentences: ``{"temperature": …, "alpha": …}``, one plain sentence each, differences in pp.
        notes: what limited the analysis.
    """

    levels: pd.DataFrame
    anova: pd.DataFrame | None
    sentences: dict[str, str]
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Reliability:
    """Split-half reliability of the KD cell means (NaN where it cannot be computed; ``sentence`` says why).

    Attributes:
        coefficient: Spearman–Brown corrected reliability, 2r / (1 + r), of the mean split-half r.
        half_r: the arithmetic mean of the split-half Pearson correlations.
        n_splits: splits whose correlation was defined (and averaged).
        n_seeds: replicate seeds (R).
        n_cells: KD cells.
        sentence: one plain sentence for a report.
    """

    coefficient: float
    half_r: float
    n_splits: int
    n_seeds: int
    n_cells: int
    sentence: str


def best_lr_cells(runs: pd.DataFrame) -> BestLr:
    """Each cell's best lr on the replicate mean of validation accuracy, and its statistics there.

    Args:
        runs: complete search runs, one a row, columns :data:`RUN_COLUMNS` (T and α NaN for CE). Rows
            without a finite ``val_acc`` are ignored.

    Returns:
        The cells and the per-lr means; both frames are empty (with their columns) for no runs.
    """
    r = search_runs(runs)
    keys = ["stage", "temperature", "alpha"]
    per_lr = (r.groupby([*keys, "lr"], dropna=False)["val_acc"].agg(n="count", sd="std")
              .reset_index().sort_values([*keys, "lr"], key=_cell_order, ignore_index=True))
    per_lr["n"] = per_lr["n"].astype(int)
    # the mean and each cell's best lr as the planner ranks them (kdbench.sweep.rank: fsum means, equal means
    # to the smaller lr), so that the report names the lr each cell's finalists were chosen at
    ranked = {stage: rank_configs(r[r["stage"] == stage].to_dict("records")) for stage in ("kd", "ce")}
    means = {(stage, c.cell, c.lr): c.mean for stage, configs in ranked.items() for c in configs}
    chosen = {(stage, c.cell, c.lr) for stage, configs in ranked.items() for c in best_per_cell(configs)}
    at = [(row.stage, _cell(row.temperature, row.alpha), row.lr) for row in per_lr.itertuples(index=False)]
    per_lr.insert(per_lr.columns.get_loc("sd"), "mean", [means[k] for k in at])
    per_lr["best"] = [k in chosen for k in at]
    best = per_lr.index[per_lr["best"]]
    n_lrs = per_lr.groupby(keys, dropna=False, sort=False).size()
    rows = []
    for i, tried in zip(best.to_numpy(), n_lrs.to_numpy(), strict=True):
        cell = per_lr.loc[i]
        x = r.loc[_in_cell(r, cell["stage"], cell["temperature"], cell["alpha"]) & (r["lr"] == cell["lr"]),
                  "val_acc"].to_numpy(dtype=float)
        low, high = t_interval(x)
        rows.append({"stage": cell["stage"], "temperature": cell["temperature"], "alpha": cell["alpha"],
                     "best_lr": cell["lr"], "n_lrs": int(tried),
                     "n": len(x), "mean": replicate_mean(x)[0], "sd": _sd(x), "ci_low": low, "ci_high": high,
                     "ci_half": (high - low) / 2})
    return BestLr(pd.DataFrame(rows, columns=list(CELL_COLUMNS)), per_lr.loc[:, list(PER_LR_COLUMNS)])


def seed_matrix(runs: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """The per-seed validation accuracy of each cell at its best lr.

    Args:
        runs: the runs given to :func:`best_lr_cells`.
        cells: ``best_lr_cells(runs).cells``.

    Returns:
        Index: a MultiIndex ``(temperature, alpha)`` in the order of ``cells``, the CE cell as ``(NaN, NaN)``
        (the last row; find it with ``index.get_level_values("temperature").isna()``). Columns: the seeds
        (named ``seed``), sorted. NaN where a seed's run is missing (mean of duplicates, if any).
    """
    r = search_runs(runs)
    rows = [r.loc[_in_cell(r, c.stage, c.temperature, c.alpha) & (r["lr"] == c.best_lr)]
            .groupby("seed")["val_acc"].mean() for c in cells.itertuples(index=False)]
    index = pd.MultiIndex.from_arrays([cells["temperature"].to_numpy(dtype=float),
                                       cells["alpha"].to_numpy(dtype=float)], names=list(FACTORS))
    matrix = pd.DataFrame(rows, index=index, dtype=float) if rows else pd.DataFrame(index=index, dtype=float)
    matrix = matrix.reindex(columns=sorted(matrix.columns))
    matrix.columns.name = "seed"
    return matrix


def delta_vs_ce(matrix: pd.DataFrame) -> pd.DataFrame:
    """Each KD cell − CE, paired over the seeds both have, with Holm's correction over the cells.

    Args:
        matrix: :func:`seed_matrix`'s result.

    Returns:
        One row per KD cell, columns :data:`DELTA_COLUMNS`: n pairs, mean and sd (ddof=1) of the
        differences, the paired t interval (``ttest_rel``), ``p_greater`` (one-sided, Δ > 0), ``p_holm``
        (Holm-adjusted over the cells whose p is defined) and ``holm_above_zero`` (Holm rejects Δ ≤ 0 at
        :data:`SIGNIFICANCE`). With n < 2, no spread in the differences, or no CE row, the interval and the
        p-values are NaN and ``holm_above_zero`` is False.
    """
    kd, ce = _split(matrix)
    rows = []
    for (t, a), cell in kd.iterrows():
        both = pd.concat([cell, ce], axis=1, join="inner").dropna() if ce is not None else pd.DataFrame()
        d = (both.iloc[:, 0] - both.iloc[:, 1]).to_numpy(dtype=float) if len(both) else np.array([])
        row = {"temperature": t, "alpha": a, "n": len(d), "mean": float(d.mean()) if len(d) else math.nan,
               "sd": _sd(d), "ci_low": math.nan, "ci_high": math.nan, "p_greater": math.nan}
        if len(d) >= 2 and _sd(d) > _EPS:
            ci = stats.ttest_rel(both.iloc[:, 0], both.iloc[:, 1]).confidence_interval(CONFIDENCE)
            p = stats.ttest_rel(both.iloc[:, 0], both.iloc[:, 1], alternative="greater").pvalue
            row.update(ci_low=float(ci.low), ci_high=float(ci.high), p_greater=float(p))
        rows.append(row)
    out = pd.DataFrame(rows, columns=list(DELTA_COLUMNS))
    out["p_holm"] = math.nan
    out["holm_above_zero"] = False
    ok = np.isfinite(out["p_greater"].to_numpy(dtype=float))
    if ok.any():
        reject, p_holm, _, _ = multipletests(out.loc[ok, "p_greater"].to_numpy(dtype=float), alpha=SIGNIFICANCE,
                                             method="holm")
        out.loc[ok, "p_holm"] = p_holm
        out.loc[ok, "holm_above_zero"] = reject
    out["holm_above_zero"] = out["holm_above_zero"].astype(bool)
    return out


def main_effects(matrix: pd.DataFrame, planned: dict[str, list[float]] | None = None, *,
                 min_anova_seeds: int = ANOVA_MIN_SEEDS) -> MainEffects:
    """Level means and paired effects of T and α over the KD cells, and the T × α RM-ANOVA.

    Incomplete designs use, per seed, the cells it has (``n`` counts the seeds behind each level); the
    RM-ANOVA needs every cell of the full T × α grid on every seed, at least 2 seeds and a factor with at
    least 2 levels. A factor with one level is left out of the ANOVA (a one-way RM-ANOVA on the other).

    Args:
        matrix: :func:`seed_matrix`'s result.
        planned: a grid's levels of each factor, as the study plans them: a factor with one level in the data but
            more planned is "not estimable yet", not "not varied" (a half-finished grid).
        min_anova_seeds: seeds below which no RM-ANOVA is run (:data:`~kdbench.defaults.ANOVA_MIN_SEEDS`).

    Returns:
        The effects; empty levels, no ANOVA and a note for a matrix without KD cells.
    """
    kd, _ = _split(matrix)
    kd = kd.dropna(axis=1, how="all")
    grand = kd.mean(axis=0)  # per seed: the mean over all of its KD cells
    rows = []
    for factor in FACTORS:
        by_level = kd.groupby(level=factor).mean()  # level × seed: per seed, the mean over the level's cells
        for level, x in by_level.iterrows():
            x = x.dropna()
            effect = (x - grand[x.index]).to_numpy(dtype=float)
            m_low, m_high = t_interval(x.to_numpy(dtype=float))
            e_low, e_high = t_interval(effect)
            rows.append({"factor": factor, "level": float(level), "n": len(x), "mean": float(x.mean()),
                         "ci_low": m_low, "ci_high": m_high, "effect": float(effect.mean()),
                         "effect_ci_low": e_low, "effect_ci_high": e_high})
    levels = pd.DataFrame(rows, columns=list(LEVEL_COLUMNS))
    anova, why = _anova(kd, min_anova_seeds)
    notes = [] if why is None else [f"no RM-ANOVA: {why}"]
    if kd.isna().to_numpy().any():
        notes.append(f"incomplete design: {int(kd.isna().to_numpy().sum())} cell × seed values missing; "
                     "each seed's level means use the cells it has")
    sentences = {f: _factor_sentence(f, levels[levels["factor"] == f], anova, why, (planned or {}).get(f, []))
                 for f in FACTORS}
    return MainEffects(levels, anova, sentences, notes)


def reliability(matrix: pd.DataFrame) -> Reliability:
    """Split-half reliability of the pattern of KD cell means across replicate seeds.

    For every split of the R seeds into halves of ⌊R/2⌋ and ⌈R/2⌉ seeds (each split once), the Pearson
    correlation over the KD cells of the two halves' cell means; the correlations are averaged
    arithmetically (not via Fisher z, which is infinite at r = ±1, easily reached with few cells), and the
    mean r is Spearman–Brown corrected to the full R: ρ = 2r / (1 + r). A split is skipped when fewer than
    3 cells have values in both halves or a half's cell means are all equal. The number of splits is
    C(R, ⌊R/2⌋) (half that for even R): all of them are computed.

    Args:
        matrix: :func:`seed_matrix`'s result.

    Returns:
        The reliability; NaN with a sentence saying why for fewer than 2 seeds, fewer than 3 cells or no
        variance.
    """
    kd, _ = _split(matrix)
    kd = kd.dropna(axis=1, how="all").dropna(axis=0, how="all")
    n_seeds, n_cells = kd.shape[1], kd.shape[0]
    why = None
    if n_seeds < 2:
        why = f"fewer than 2 seeds (R = {n_seeds})"
    elif n_cells < 3:
        why = f"fewer than 3 KD cells ({n_cells})"
    rs = []
    for first, second in _halves(list(kd.columns)) if why is None else iter(()):
        a, b = kd[first].mean(axis=1), kd[second].mean(axis=1)
        ok = a.notna() & b.notna()
        if ok.sum() >= 3 and _sd(a[ok].to_numpy(dtype=float)) > _EPS and _sd(b[ok].to_numpy(dtype=float)) > _EPS:
            rs.append(float(stats.pearsonr(a[ok], b[ok]).statistic))
    if why is None and not rs:
        why = "no variance: in every split a half's cell means are all equal (or fewer than 3 cells in both)"
    if why is not None:
        return Reliability(math.nan, math.nan, 0, n_seeds, n_cells,
                           f"The reliability of the cell-to-cell differences cannot be computed: {why}.")
    r = float(np.mean(rs))
    rho = 2 * r / (1 + r) if r > -1 else -math.inf
    return Reliability(rho, r, len(rs), n_seeds, n_cells, reliability_sentence(rho))


def reliability_sentence(rho: float) -> str:
    """The report's sentence for a reliability coefficient (thresholds :data:`RELIABLE`, :data:`PARTLY_RELIABLE`).

    Args:
        rho: the Spearman–Brown reliability.

    Returns:
        One sentence; for NaN, that the reliability is unknown.
    """
    if math.isnan(rho):
        return "The reliability of the cell-to-cell differences is unknown."
    if rho >= RELIABLE:
        return f"Cell-to-cell differences are larger than seed noise (reliability {rho:.2f})."
    if rho >= PARTLY_RELIABLE:
        return (f"Cell-to-cell differences are only partly larger than seed noise (reliability {rho:.2f}): "
                "trust the row and column effects more than single cells.")
    return (f"Cell-to-cell differences are not larger than seed noise (reliability {rho:.2f}): "
            "no single cell can be called best.")


def search_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs' six columns, KD and CE rows with a finite val_acc and lr; T and α NaN for CE."""
    if runs.empty:
        return pd.DataFrame({c: pd.Series(dtype=object if c == "stage" else float) for c in RUN_COLUMNS})
    missing = [c for c in RUN_COLUMNS if c not in runs.columns]
    if missing:
        raise ValueError(f"runs lack the columns {missing}; expected {list(RUN_COLUMNS)}")
    r = runs.loc[:, list(RUN_COLUMNS)].copy()
    for c in ("temperature", "alpha", "lr", "val_acc"):
        r[c] = pd.to_numeric(r[c], errors="coerce").astype(float)
    r.loc[r["stage"] == "ce", ["temperature", "alpha"]] = math.nan
    keep = np.isfinite(r["val_acc"]) & np.isfinite(r["lr"]) & (
        (r["stage"] == "ce") | ((r["stage"] == "kd") & r["temperature"].notna() & r["alpha"].notna()))
    return r[keep]


def _cell(temperature: float, alpha: float) -> Cell:
    """A cell of the frame as :func:`kdbench.sweep.rank.rank_configs` names it (CE's: no parameters)."""
    return tuple((k, float(v)) for k, v in (("temperature", temperature), ("alpha", alpha)) if not math.isnan(v))


def _in_cell(r: pd.DataFrame, stage: str, temperature: float, alpha: float) -> pd.Series:
    if stage == "ce":
        return r["stage"] == "ce"
    return (r["stage"] == "kd") & (r["temperature"] == temperature) & (r["alpha"] == alpha)


def _cell_order(column: pd.Series) -> pd.Series:
    """Sort key: KD before CE; numbers as they are."""
    return (column != "kd").astype(int) if column.name == "stage" else column


def _split(matrix: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series | None]:
    """The KD rows of a seed matrix, and the CE row (None when there is none)."""
    if len(matrix.index) == 0:
        empty = pd.MultiIndex.from_arrays([[], []], names=list(FACTORS))
        return pd.DataFrame(index=empty, columns=matrix.columns, dtype=float), None
    is_ce = np.asarray(matrix.index.get_level_values("temperature").isna())
    return matrix[~is_ce], (matrix[is_ce].iloc[0] if is_ce.any() else None)


def _sd(x: np.ndarray) -> float:
    return float(np.std(x, ddof=1)) if len(x) >= 2 else math.nan


def t_interval(x: np.ndarray) -> tuple[float, float]:
    """Student-t interval of the mean of ``x`` (``ttest_1samp``); NaN for n < 2 or no spread."""
    x = x[np.isfinite(x)]
    if len(x) < 2 or _sd(x) <= _EPS:
        return math.nan, math.nan
    ci = stats.ttest_1samp(x, 0.0).confidence_interval(CONFIDENCE)
    return float(ci.low), float(ci.high)


def _halves(seeds: list[int]) -> Iterator[tuple[list[int], list[int]]]:
    """Every split of the seeds into ⌊R/2⌋ and ⌈R/2⌉, once each (for even R, the first seed's half only)."""
    k = len(seeds) // 2
    for first in itertools.combinations(seeds, k):
        if 2 * k == len(seeds) and seeds[0] not in first:
            continue
        yield list(first), [s for s in seeds if s not in first]


def _anova(kd: pd.DataFrame, min_seeds: int) -> tuple[pd.DataFrame | None, str | None]:
    """The RM-ANOVA table (seed as subject) of a complete design, else None and the reason."""
    within = [f for f in FACTORS if kd.index.get_level_values(f).nunique() >= 2]
    full = math.prod(kd.index.get_level_values(f).nunique() for f in FACTORS)
    if kd.empty:
        return None, "there are no KD cells"
    if kd.shape[1] < max(min_seeds, 2):
        return None, (f"it needs at least {max(min_seeds, 2)} seeds with KD runs, there are {kd.shape[1]}: with fewer, "
                      "its p-values rest on a sphericity assumption they cannot check")
    if not within:
        return None, "neither T nor α has 2 levels"
    if len(kd) < full or kd.isna().to_numpy().any():
        return None, "the design is incomplete: not every T × α cell has a value on every seed"
    if kd.sub(kd.mean(axis=0), axis=1).std(axis=1).max() <= _EPS:  # every seed shows the same pattern
        return None, "the cells differ by exactly the same amounts on every seed: no error variance, F undefined"
    long = kd.stack().rename("val_acc").reset_index()
    with warnings.catch_warnings():  # an error term that is 0 for one effect only gives F = inf: reported as is;
        warnings.simplefilter("ignore", RuntimeWarning)  # pingouin's pandas deprecations are not the reader's
        warnings.filterwarnings("ignore", module=r"pingouin\.")
        import pingouin  # loaded only here: it imports scikit-learn
        table = pingouin.rm_anova(long, dv="val_acc", within=within if len(within) > 1 else within[0],
                                  subject="seed", correction=True)
    p = table["p_unc"].to_numpy(float)  # one df in the numerator: sphericity holds, ε = 1 and p as it is
    corrected = table["p_GG_corr"].to_numpy(float) if "p_GG_corr" in table else p
    out = pd.DataFrame({"term": table["Source"].str.replace(" * ", ":", regex=False).to_numpy(),
                        "F": table["F"].to_numpy(float), "df_num": table["ddof1"].to_numpy(float),
                        "df_den": table["ddof2"].to_numpy(float), "p": np.where(np.isnan(corrected), p, corrected),
                        "epsilon": table["eps"].to_numpy(float) if "eps" in table else 1.0, "p_uncorrected": p})
    return out.loc[:, list(ANOVA_COLUMNS)], None


def _factor_sentence(factor: str, levels: pd.DataFrame, anova: pd.DataFrame | None, why: str | None,
                     planned: list[float]) -> str:
    sym = _SYMBOL[factor]
    values = ", ".join(f"{v:g}" for v in planned)
    if levels.empty and planned:
        return (f"{sym}'s effect cannot be estimated yet: no KD cell of the planned {sym} ∈ {{{values}}} has a "
                "complete run.")
    if levels.empty:
        return f"{sym}'s effect cannot be estimated: there are no KD cells."
    missing = [v for v in dict.fromkeys(map(float, planned)) if v not in set(levels["level"].astype(float))]
    lacking = f"{sym} = {', '.join(f'{v:g}' for v in missing)}: no complete KD run yet"
    if len(levels) < 2 and len(set(planned)) > 1:
        return (f"{sym}'s effect cannot be estimated yet: of the planned {sym} ∈ {{{values}}}, only "
                f"{sym} = {levels['level'].iloc[0]:g} has complete KD runs ({lacking}).")
    if len(levels) < 2:
        return f"{sym} was not varied (one level, {sym} = {levels['level'].iloc[0]:g})."
    if missing:  # the effect of the levels that have runs, and which planned ones it leaves out
        return _factor_sentence(factor, levels, anova, why, []).rstrip(".") + f" ({lacking})."
    top = levels.loc[levels["effect"].idxmax()]
    ci = (f"{CONFIDENCE:.0%} CI [{100 * top['effect_ci_low']:+.2f}, {100 * top['effect_ci_high']:+.2f}]"
          if np.isfinite(top["effect_ci_low"]) else "no CI (fewer than 2 seeds or no spread)")
    best = f"best {sym} = {top['level']:g}: {100 * top['effect']:+.2f} pp over the grid mean, {ci}"
    row = anova[anova["term"] == factor] if anova is not None else pd.DataFrame()
    if row.empty:
        return f"{sym}'s RM-ANOVA was not run ({why}); {best}."
    f, d1, d2, p, eps = (float(row[c].iloc[0]) for c in ("F", "df_num", "df_den", "p", "epsilon"))
    gg = f", Greenhouse–Geisser ε = {eps:.2f}" if d1 > 1 else ""  # one df: sphericity holds, nothing to correct
    test = f"F({d1:g}, {d2:g}) = {f:.1f}{gg}, p {'< 0.0001' if p < 1e-4 else f'= {p:.2g}'}"  # nan where F is
    if p < SIGNIFICANCE:
        return f"{sym} changes validation accuracy (RM-ANOVA {test}); {best}."
    return f"{sym}'s effect cannot be told apart from seed noise ({test})."

"""Range searches (T or α sampled continuously): mean validation accuracy per quantile bin of one parameter.

A grid's statistics live in :mod:`kdbench.report.effects`; a sampled parameter has no cells to pair, so it
is binned instead. Pure functions on DataFrames, on the frame :func:`kdbench.report.effects.search_runs` reads.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from kdbench.report.effects import FACTORS, search_runs, t_interval

__all__ = ["BIN_COLUMNS", "binned_effect"]

BIN_COLUMNS = ("bin", "low", "high", "n", "mean", "ci_low", "ci_high")


def binned_effect(runs: pd.DataFrame, param: str, bins: int) -> pd.DataFrame:
    """Mean validation accuracy of the KD runs per quantile bin of ``param`` (no interpolation).

    Every KD run counts, at whatever lr it was trained; pass only each cell's best-lr runs to see the
    accuracy a value reaches when its lr is tuned.

    Args:
        runs: search runs, columns :data:`kdbench.report.effects.RUN_COLUMNS`.
        param: ``"temperature"`` or ``"alpha"``.
        bins: how many quantile bins (``pandas.qcut``; duplicate edges are dropped, so there may be fewer).

    Returns:
        One row per bin, columns :data:`BIN_COLUMNS`: ``bin`` (0-based), ``low``/``high`` (the quantile
        edges: the first bin is [low, high], the others (low, high]), ``n``, ``mean`` and its t interval
        (NaN for n < 2 or no spread). Empty for no KD runs.
    """
    if param not in FACTORS:
        raise ValueError(f"param must be one of {FACTORS}, not {param!r}")
    r = search_runs(runs)
    r = r[(r["stage"] == "kd") & r[param].notna()]
    if r.empty or bins < 1:
        return pd.DataFrame(columns=list(BIN_COLUMNS))
    x = r[param].astype(float)
    if x.nunique() == 1:
        codes, edges = np.zeros(len(x), dtype=int), np.array([x.iloc[0], x.iloc[0]])
    else:
        binned, edges = pd.qcut(x, bins, retbins=True, duplicates="drop")
        codes = binned.cat.codes.to_numpy()
    rows = []
    for i in range(len(edges) - 1):
        y = r.loc[codes == i, "val_acc"].to_numpy(dtype=float)
        low, high = t_interval(y)
        rows.append({"bin": i, "low": float(edges[i]), "high": float(edges[i + 1]), "n": len(y),
                     "mean": float(y.mean()) if len(y) else math.nan, "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows, columns=list(BIN_COLUMNS))

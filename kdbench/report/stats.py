"""The statistics a report prints: mean ± sd with n per arm, and KD − CE paired over shared seeds.

A finalist arm is one configuration re-trained on ``seeds`` fresh seeds; KD and CE finalists share
seeds and data order, so their per-seed test accuracies pair. The difference's 95 % confidence
interval is Student's t on the paired differences; the p-value is the paired t-test
(``scipy.stats.ttest_rel``). Whether KD helped is decided by the interval alone: it helped when
the interval lies above 0, hurt when below, and could not be told apart when it contains 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["CONFIDENCE", "Paired", "Summary", "paired_difference", "summarize", "verdict"]

CONFIDENCE = 0.95  # two-sided level of every interval in a report


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (ddof=1; NaN when n < 2) and n of one arm."""

    mean: float
    sd: float
    n: int


@dataclass(frozen=True)
class Paired:
    """KD − CE over shared seeds: mean difference, its CI, the paired t-test's p-value, n pairs."""

    mean: float
    sd: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int


def summarize(values: pd.Series | list[float]) -> Summary:
    """Mean, sd (ddof=1) and n of the finite values.

    Args:
        values: accuracies (fractions).

    Returns:
        The summary; mean is NaN for no values and sd NaN for fewer than two.
    """
    x = np.asarray(pd.Series(values, dtype=float).dropna(), dtype=float)
    if len(x) == 0:
        return Summary(math.nan, math.nan, 0)
    return Summary(float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else math.nan, len(x))


def paired_difference(kd: pd.Series, ce: pd.Series) -> Paired:
    """KD − CE on the seeds both have.

    Args:
        kd: test accuracy per seed (index: seed) of the KD finalist.
        ce: test accuracy per seed (index: seed) of the CE finalist.

    Returns:
        The paired result; CI and p-value are NaN with fewer than two pairs, or when every difference is
        the same (the t statistic is then undefined).
    """
    both = pd.concat({"kd": kd, "ce": ce}, axis=1, join="inner").dropna().sort_index()
    d = (both["kd"] - both["ce"]).to_numpy(dtype=float)
    n = len(d)
    if n == 0:
        return Paired(math.nan, math.nan, math.nan, math.nan, math.nan, 0)
    mean = float(d.mean())
    if n < 2:
        return Paired(mean, math.nan, math.nan, math.nan, math.nan, n)
    sd = float(d.std(ddof=1))
    if sd <= 1e-12:  # every seed gave the same difference: the t statistic and its interval are undefined
        return Paired(mean, sd, math.nan, math.nan, math.nan, n)
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * sd / math.sqrt(n)
    p = float(stats.ttest_rel(both["kd"], both["ce"]).pvalue)
    return Paired(mean, sd, mean - half, mean + half, p, n)


def verdict(p: Paired) -> str:
    """One sentence: did KD help, hurt, or could the two not be told apart at this n? (decided by the CI).

    Args:
        p: the paired KD − CE result.

    Returns:
        The verdict, with the difference, its interval and p-value when there is one.
    """
    if p.n == 0:
        return "KD and CE could not be compared: no seed has a complete KD and CE finalist yet."
    if p.n < 2:
        return (f"KD and CE could not be told apart at n={p.n}: a confidence interval needs at least "
                f"2 shared seeds (KD − CE = {100 * p.mean:+.2f} pp on the one there is).")
    if math.isnan(p.ci_low):
        return (f"KD and CE could not be told apart at n={p.n}: every seed gave KD − CE = {100 * p.mean:+.2f} pp, "
                "and with no spread a t interval is undefined; add seeds.")
    interval = (f"KD − CE = {100 * p.mean:+.2f} pp, {CONFIDENCE:.0%} CI [{100 * p.ci_low:+.2f}, "
                f"{100 * p.ci_high:+.2f}] pp, paired t-test p = {_p(p.p_value)}, n={p.n} shared seeds")
    if p.ci_low > 0:
        return f"KD helped: {interval}."
    if p.ci_high < 0:
        return f"KD hurt: {interval}."
    return f"KD and CE could not be told apart at n={p.n}: {interval}; the interval contains 0."


def _p(p: float) -> str:
    if math.isnan(p):
        return "n/a"
    return f"{p:.2g}" if p >= 1e-4 else "< 0.0001"

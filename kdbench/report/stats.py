"""The statistics a report prints: mean ± sd with n per arm, KD − CE paired over shared seeds, and the
fidelity of the students' stored test predictions (agreement with the teacher, per-class change, McNemar).

A finalist arm is one configuration re-trained on ``seeds`` fresh seeds; KD and CE finalists share
seeds and data order, so their per-seed test accuracies pair. The difference's 95 % confidence
interval is Student's t on the paired differences; the p-value is the paired t-test
(``scipy.stats.ttest_rel``). Whether KD helped is decided by the interval alone: it helped when
the interval lies above 0, hurt when below, and could not be told apart when it contains 0; then the
verdict also says the smallest difference the design would have detected at 80 % power
(:func:`detectable_difference`, statsmodels' ``TTestPower``).

The prediction statistics take int arrays over the test set (one predicted class per image, the
stored int16 argmax) and the dataset's labels: :func:`agreement` (top-1, e.g. teacher–student),
:func:`per_class_delta` (KD − CE accuracy per class, paired by seed, then averaged) and
:func:`mcnemar_test` (KD against CE on the same images, ``statsmodels``' McNemar, exact when the
discordant images are few).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import stats

from kdbench.defaults import MCNEMAR_EXACT_BELOW

__all__ = [
    "CONFIDENCE",
    "POWER",
    "McNemar",
    "Paired",
    "Summary",
    "agreement",
    "detectable_difference",
    "mcnemar_test",
    "p_text",
    "paired_difference",
    "per_class_delta",
    "power_clause",
    "summarize",
    "verdict",
]

CONFIDENCE = 0.95  # two-sided level of every interval in a report
POWER = 0.80  # the power at which a "could not be told apart" verdict states the smallest difference it could detect


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


def detectable_difference(p: Paired, power: float = POWER) -> float:
    """The smallest true KD − CE a paired t-test at this n and spread detects with probability ``power``
    (two-sided, at 1 − :data:`CONFIDENCE`): the effect size statsmodels' ``TTestPower`` solves for, times
    the sd of the paired differences.

    Returns:
        The difference (a fraction, like the accuracies); NaN below 2 pairs or with no spread.
    """
    if p.n < 2 or not p.sd > 1e-12:
        return math.nan
    from statsmodels.stats.power import TTestPower  # a one-sample t-test on the paired differences

    d = TTestPower().solve_power(effect_size=None, nobs=p.n, alpha=1 - CONFIDENCE, power=power,
                                 alternative="two-sided")
    return float(np.asarray(d).item()) * p.sd


def verdict(p: Paired, baseline: str = "CE") -> str:
    """One sentence: did KD help, hurt, or could the two not be told apart at this n? (decided by the CI).

    Args:
        p: the paired KD − baseline result.
        baseline: the baseline's name (``CE``, or ``CE+LS`` when the better baseline on validation is
            label-smoothed: :func:`kdbench.report.baselines.best_baseline`).

    Returns:
        The verdict, with the difference, its interval and p-value when there is one.
    """
    if p.n == 0:
        return f"KD and {baseline} could not be compared: no seed has a complete KD and {baseline} finalist yet."
    if p.n < 2:
        return (f"KD and {baseline} could not be told apart at n={p.n}: a confidence interval needs at least 2 shared "
                f"seeds (KD − {baseline} = {100 * p.mean:+.2f} pp on the one there is), and {power_clause(p)}.")
    if math.isnan(p.ci_low):
        return (f"KD and {baseline} could not be told apart at n={p.n}: every seed gave KD − {baseline} = "
                f"{100 * p.mean:+.2f} pp, and with no spread a t interval is undefined ({power_clause(p)}); add seeds.")
    interval = (f"KD − {baseline} = {100 * p.mean:+.2f} pp, {CONFIDENCE:.0%} CI [{100 * p.ci_low:+.2f}, "
                f"{100 * p.ci_high:+.2f}] pp, paired t-test p = {p_text(p.p_value)}, n={p.n} shared seeds")
    if p.ci_low > 0:
        return f"KD helped: {interval}."
    if p.ci_high < 0:
        return f"KD hurt: {interval}."
    return (f"KD and {baseline} could not be told apart at n={p.n}: {interval}; the interval contains 0 "
            f"({power_clause(p)}).")


def power_clause(p: Paired) -> str:
    """What a paired comparison that could not tell its arms apart would have detected, as a clause: n, the sd
    of the paired differences and :func:`detectable_difference`, or why no power statement is possible.

    Args:
        p: the paired result (any difference: KD − CE, a method − CE).

    Returns:
        E.g. "n = 5, paired sd 0.65 pp: a true difference smaller than about 1.13 pp would have been detected with
        probability under 80% (paired t-test, two-sided 5%)".
    """
    if p.n < 2:
        return f"no power statement is possible with {'one seed' if p.n == 1 else 'no seed'}"
    mde = detectable_difference(p)
    if math.isnan(mde):
        return f"n = {p.n} with no spread between seeds: no power statement is possible"
    return (f"n = {p.n}, paired sd {100 * p.sd:.2f} pp: a true difference smaller than about {100 * mde:.2f} pp would "
            f"have been detected with probability under {POWER:.0%} (paired t-test, two-sided {1 - CONFIDENCE:.0%})")


def p_text(p: float) -> str:
    """A p-value as sentences print it: two significant digits, "< 0.0001" below that, "n/a" when there is none."""
    if math.isnan(p):
        return "n/a"
    return f"{p:.2g}" if p >= 1e-4 else "< 0.0001"


# ---------------------------------------------------------------------------------------------- predictions

Labels = npt.NDArray[np.integer]


def agreement(a: Labels, b: Labels) -> float:
    """Top-1 agreement: the fraction of test images on which two models predict the same class.

    Args:
        a: one model's predicted class per test image.
        b: the other's, same length.

    Returns:
        The fraction in [0, 1] (NaN for no images).

    Raises:
        ValueError: the arrays differ in length.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"predictions of {a.shape} and {b.shape} images cannot be compared")
    return float(np.mean(a == b)) if a.size else math.nan


def per_class_delta(labels: Labels, kd: dict[int, Labels], ce: dict[int, Labels], n_classes: int) -> pd.DataFrame:
    """Accuracy per class of the KD and CE students and KD − CE, paired by seed, then averaged over seeds.

    Args:
        labels: the true class of each test image.
        kd: the KD student's predictions per seed.
        ce: the CE student's predictions per seed.
        n_classes: classes in the dataset (classes with no test image get NaN).

    Returns:
        One row per class: ``class``, ``n_images``, ``ce_acc`` and ``kd_acc`` (means over the shared seeds),
        ``delta`` (the mean over seeds of KD − CE on that class, fractions) and ``n_seeds``.
    """
    labels = np.asarray(labels)
    seeds = sorted(set(kd) & set(ce))
    counts = np.bincount(labels, minlength=n_classes).astype(float)

    def per_class(pred: Labels) -> npt.NDArray[np.float64]:
        correct = np.bincount(labels, weights=(np.asarray(pred) == labels).astype(float), minlength=n_classes)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(counts > 0, correct / counts, np.nan)

    ce_acc = np.array([per_class(ce[s]) for s in seeds]).reshape(len(seeds), n_classes)
    kd_acc = np.array([per_class(kd[s]) for s in seeds]).reshape(len(seeds), n_classes)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mean of no seeds: NaN, said by n_seeds = 0
        out = pd.DataFrame({"class": np.arange(n_classes), "n_images": counts.astype(int),
                            "ce_acc": ce_acc.mean(axis=0), "kd_acc": kd_acc.mean(axis=0),
                            "delta": (kd_acc - ce_acc).mean(axis=0), "n_seeds": len(seeds)})
    return out


@dataclass(frozen=True)
class McNemar:
    """McNemar's test of KD against CE on the same test images.

    Attributes:
        ce_only: images the CE student got right and the KD student wrong.
        kd_only: images the KD student got right and the CE student wrong.
        statistic: the test statistic (the smaller discordant count when exact, else chi-square).
        p_value: two-sided p-value.
        exact: whether the exact binomial test was used (fewer than ``MCNEMAR_EXACT_BELOW`` discordant images).
    """

    ce_only: int
    kd_only: int
    statistic: float
    p_value: float
    exact: bool


def mcnemar_test(labels: Labels, kd: Labels, ce: Labels) -> McNemar:
    """McNemar's test on paired test predictions (``statsmodels.stats.contingency_tables.mcnemar``).

    Only the discordant images count: those one student got right and the other wrong. With fewer than
    ``MCNEMAR_EXACT_BELOW`` of them the exact binomial test is used, else chi-square with continuity correction.

    Args:
        labels: the true class of each test image.
        kd: the KD student's predictions.
        ce: the CE student's predictions (same seed: same images, same order).

    Returns:
        The discordant counts, statistic, p-value and which test was used (p is 1 with no discordant image).
    """
    from statsmodels.stats.contingency_tables import mcnemar

    labels = np.asarray(labels)
    kd_right, ce_right = np.asarray(kd) == labels, np.asarray(ce) == labels
    table = [[int(np.sum(ce_right & kd_right)), int(np.sum(ce_right & ~kd_right))],
             [int(np.sum(~ce_right & kd_right)), int(np.sum(~ce_right & ~kd_right))]]
    ce_only, kd_only = table[0][1], table[1][0]
    exact = ce_only + kd_only < MCNEMAR_EXACT_BELOW
    result = mcnemar(table, exact=exact, correction=True)
    return McNemar(ce_only, kd_only, float(result.statistic), float(result.pvalue), exact)

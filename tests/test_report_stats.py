"""The prediction statistics of report/stats.py against hand computations on small fixed arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kdbench.defaults import MCNEMAR_EXACT_BELOW
from kdbench.report.stats import agreement, mcnemar_test, per_class_delta


def _paired(both: int, ce_only: int, kd_only: int, neither: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels (all class 0) and KD, CE predictions with the given counts of (CE right?, KD right?) images."""
    ce = [0] * both + [0] * ce_only + [1] * kd_only + [1] * neither
    kd = [0] * both + [1] * ce_only + [0] * kd_only + [2] * neither
    return np.zeros(len(ce), dtype=np.int16), np.array(kd, dtype=np.int16), np.array(ce, dtype=np.int16)


def test_agreement_is_the_share_of_equal_predictions() -> None:
    assert agreement(np.array([0, 1, 2, 3]), np.array([0, 1, 0, 3])) == 0.75
    assert agreement(np.array([5, 5]), np.array([5, 5])) == 1.0
    assert math.isnan(agreement(np.array([], dtype=int), np.array([], dtype=int)))
    with pytest.raises(ValueError, match="cannot be compared"):
        agreement(np.array([1, 2]), np.array([1]))


def test_per_class_delta_pairs_by_seed_then_averages() -> None:
    labels = np.array([0, 0, 1, 1, 1, 2])
    ce = {1: np.array([0, 1, 1, 1, 0, 2]), 2: np.array([0, 0, 1, 0, 0, 0]), 9: np.array([0, 0, 1, 1, 1, 2])}
    kd = {1: np.array([0, 0, 1, 1, 1, 2]), 2: np.array([1, 0, 1, 1, 0, 2])}  # seed 9 has no KD: left out
    out = per_class_delta(labels, kd, ce, n_classes=4).set_index("class")
    # class 0: CE 1/2, 2/2; KD 2/2, 1/2 -> deltas +1/2, -1/2 -> 0. class 1: CE 2/3, 1/3; KD 3/3, 2/3 -> +1/3 both.
    # class 2: CE 1, 0; KD 1, 1 -> 0, +1 -> +1/2. class 3: no test image.
    assert out["delta"].tolist()[:3] == pytest.approx([0.0, 1 / 3, 0.5])
    assert out.loc[0, "ce_acc"] == pytest.approx(0.75) and out.loc[1, "kd_acc"] == pytest.approx(5 / 6)
    assert out["n_images"].tolist() == [2, 3, 1, 0] and math.isnan(out.loc[3, "delta"])
    assert (out["n_seeds"] == 2).all()


def test_mcnemar_exact_with_few_discordant_images() -> None:
    labels, kd, ce = _paired(both=5, ce_only=2, kd_only=8, neither=5)
    m = mcnemar_test(labels, kd, ce)
    assert (m.ce_only, m.kd_only, m.exact) == (2, 8, True)
    # exact two-sided binomial: 2 * P(X <= 2), X ~ Bin(10, 1/2) = 2 * (1 + 10 + 45) / 1024
    assert m.p_value == pytest.approx(2 * (1 + 10 + 45) / 1024) and m.statistic == 2


def test_mcnemar_chi_square_with_many_discordant_images() -> None:
    labels, kd, ce = _paired(both=50, ce_only=10, kd_only=30, neither=7)
    assert MCNEMAR_EXACT_BELOW <= 10 + 30
    m = mcnemar_test(labels, kd, ce)
    chi2 = (abs(10 - 30) - 1) ** 2 / (10 + 30)  # with continuity correction: 361 / 40
    assert not m.exact and m.statistic == pytest.approx(chi2)
    assert m.p_value == pytest.approx(math.erfc(math.sqrt(chi2 / 2)))  # chi-square, 1 df: P(X > x)


def test_mcnemar_with_no_discordant_image() -> None:
    labels, kd, ce = _paired(both=4, ce_only=0, kd_only=0, neither=3)
    m = mcnemar_test(labels, kd, ce)
    assert (m.ce_only, m.kd_only, m.p_value) == (0, 0, 1.0)


def test_detectable_difference_is_the_paired_t_tests_80_percent_power_point() -> None:
    """By hand: the power of a two-sided one-sample t-test on n differences with sd s against a true mean δ is
    P(|T| > t_crit) with T noncentral t (n − 1 df, noncentrality δ√n / s); the detectable δ solves power = 0.8."""
    import pandas as pd
    from scipy import optimize, stats

    from kdbench.report.stats import detectable_difference, paired_difference, verdict

    kd = pd.Series([0.861, 0.872, 0.869, 0.858, 0.877], index=[10, 11, 12, 13, 14])
    ce = pd.Series([0.855, 0.860, 0.866, 0.857, 0.861], index=[10, 11, 12, 13, 14])
    p = paired_difference(kd, ce)
    n, s = 5, float(np.std(kd.to_numpy() - ce.to_numpy(), ddof=1))
    crit = stats.t.ppf(0.975, n - 1)

    def power(delta: float) -> float:
        nc = delta * math.sqrt(n) / s
        return float(stats.nct.sf(crit, n - 1, nc) + stats.nct.cdf(-crit, n - 1, nc))

    hand = optimize.brentq(lambda x: power(x) - 0.8, 1e-3 * s, 10 * s)
    assert detectable_difference(p) == pytest.approx(hand, rel=1e-4)
    assert power(detectable_difference(p)) == pytest.approx(0.80, abs=1e-4)  # the solved d, through scipy's nct
    # the fixed frame's value: differences 0.6, 1.2, 0.3, 0.1, 1.6 pp, sd 0.6269 pp; at n = 5, 80 % power needs
    # δ/s = 1.6820 (the noncentral t above, to 4 decimals), so δ = 1.054 pp
    assert 100 * s == pytest.approx(0.6269, abs=1e-4) and hand / s == pytest.approx(1.6820, abs=1e-4)
    assert 100 * detectable_difference(p) == pytest.approx(1.0544, abs=1e-4)
    assert p.ci_low < 0 < p.ci_high  # this frame cannot tell them apart, so the verdict states its power
    assert (f"the interval contains 0 (n = 5, paired sd 0.63 pp: a true difference smaller than about "
            f"{100 * hand:.2f} pp would have been detected with probability under 80% (paired t-test, two-sided "
            "5%))") in verdict(p)
    one = paired_difference(kd.iloc[:1], ce.iloc[:1])
    assert math.isnan(detectable_difference(one)) and "no power statement is possible with one seed" in verdict(one)
    flat = paired_difference(kd, kd - 0.01)  # every seed +1 pp: no spread, no power statement
    assert "n = 5 with no spread between seeds: no power statement is possible" in verdict(flat)

"""Calibration from the stored test logits: expected calibration error, negative log-likelihood, and the
reliability diagram's bins, for the teacher and each finalist.

ECE (Guo et al. 2017, "On Calibration of Modern Neural Networks", §2) with ``CALIBRATION_BINS`` equal-width
bins of the top-class confidence: ``sum_b |B_b| / n * |accuracy(B_b) - confidence(B_b)|``. Written here
(about ten lines of numpy) rather than taken from torchmetrics or netcal, neither of which kdbench depends on;
tests/test_report_calibration.py checks it against a hand computation. NLL is the mean of
``-log softmax(z)[y]`` (``scipy.special.log_softmax``). Logits are stored in float16: the softmax is taken in
float64 after decoding.

ECE after temperature scaling (Guo et al. 2017, §4.2): each finalist's test logits divided by the temperature fitted
on validation when it trained (:func:`kdbench.evaluate.fit_temperature`), so that a method whose probabilities are
only over- or under-confident is told apart from one whose ranking of the classes is off.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy.special import log_softmax

from kdbench.defaults import CALIBRATION_BINS

__all__ = ["BASELINE_ARMS", "CALIBRATION_COLUMNS", "calibration", "calibration_flags", "calibration_frames",
           "decode_logits", "ece", "nll", "reliability_bins"]


def decode_logits(blob: bytes | None, n_test: int) -> npt.NDArray[np.float64] | None:
    """Stored float16 logits as a ``[n_test, classes]`` float64 array (None when absent or malformed)."""
    if not blob or n_test <= 0 or len(blob) % (2 * n_test):
        return None
    return np.frombuffer(blob, dtype=np.float16).astype(np.float64).reshape(n_test, -1)


def reliability_bins(logits: npt.NDArray[np.float64], labels: npt.NDArray[np.int64],
                     bins: int = CALIBRATION_BINS) -> pd.DataFrame:
    """Per equal-width confidence bin ``(lo, hi]``: count, mean confidence and accuracy (empty bins: count 0)."""
    prob = np.exp(log_softmax(logits, axis=1))
    conf, correct = prob.max(1), (prob.argmax(1) == labels).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    rows = []
    for b in range(bins):
        inside = which == b
        n = int(inside.sum())
        rows.append({"lo": edges[b], "hi": edges[b + 1], "count": n,
                     "confidence": float(conf[inside].mean()) if n else np.nan,
                     "accuracy": float(correct[inside].mean()) if n else np.nan})
    return pd.DataFrame(rows)


def ece(logits: npt.NDArray[np.float64], labels: npt.NDArray[np.int64], bins: int = CALIBRATION_BINS) -> float:
    """Expected calibration error (a fraction) over equal-width confidence bins."""
    r = reliability_bins(logits, labels, bins)
    used = r[r["count"] > 0]
    return float((used["count"] * (used["accuracy"] - used["confidence"]).abs()).sum() / r["count"].sum())


def nll(logits: npt.NDArray[np.float64], labels: npt.NDArray[np.int64]) -> float:
    """Mean negative log-likelihood of the true labels (nats)."""
    return float(-log_softmax(logits, axis=1)[np.arange(len(labels)), labels].mean())


def calibration(arms: dict[str, list[npt.NDArray[np.float64]]], labels: npt.NDArray[np.int64],
                temperatures: dict[str, list[float | None]] | None = None) -> pd.DataFrame:
    """ECE and NLL of each arm, mean ± sd over its runs (seeds), with n; and ECE after temperature scaling.

    Args:
        arms: each arm's test logits, one array per run (the teacher: one).
        labels: the test labels.
        temperatures: each arm's fitted temperature per run, in the order of ``arms`` (None where not stored).

    Returns:
        One row per arm: ``arm, ece_mean, ece_sd, nll_mean, nll_sd, n, ece_ts_mean, ece_ts_sd, t_mean, n_ts``
        (sd NaN for one run; the ``_ts`` columns over the runs with a temperature, NaN and 0 when none has one).
    """
    rows = []
    for arm, runs in arms.items():
        e = np.array([ece(z, labels) for z in runs])
        n_ = np.array([nll(z, labels) for z in runs])
        temps = (temperatures or {}).get(arm) or [None] * len(runs)
        scaled = [(z, t) for z, t in zip(runs, temps, strict=True) if t is not None]
        ets = np.array([ece(z / t, labels) for z, t in scaled])
        rows.append({"arm": arm, "ece_mean": _mean(e), "ece_sd": _sd(e), "nll_mean": _mean(n_), "nll_sd": _sd(n_),
                     "n": len(runs), "ece_ts_mean": _mean(ets), "ece_ts_sd": _sd(ets),
                     "t_mean": _mean(np.array([t for _, t in scaled])), "n_ts": len(scaled)})
    return pd.DataFrame(rows, columns=CALIBRATION_COLUMNS)


CALIBRATION_COLUMNS = ["arm", "ece_mean", "ece_sd", "nll_mean", "nll_sd", "n", "ece_ts_mean", "ece_ts_sd", "t_mean",
                       "n_ts"]


def _mean(x: npt.NDArray[np.float64]) -> float:
    return float(x.mean()) if len(x) else np.nan


def _sd(x: npt.NDArray[np.float64]) -> float:
    return float(x.std(ddof=1)) if len(x) > 1 else np.nan


def calibration_frames(logits: dict[str, dict[int, bytes]], teacher_logits: bytes | None,
                       labels: npt.NDArray[np.int64] | None, names: dict[str, str],
                       temperatures: dict[str, dict[int, float]] | None = None) -> tuple[pd.DataFrame,
                                                                                          pd.DataFrame, str]:
    """The calibration table, the reliability bins (each arm's seeds pooled) and a note on what is missing.

    Args:
        logits: stored float16 test logits of each loss's best finalist, by seed.
        teacher_logits: the teacher's (None when recorded before they were kept).
        labels: the test labels (None when the test split could not be read).
        names: display name of each loss.
        temperatures: each loss's fitted calibration temperature by seed (finalists recorded since it is kept).
    """
    empty = calibration({}, np.zeros(0, dtype=np.int64)), pd.DataFrame(
        columns=["arm", "lo", "hi", "count", "confidence", "accuracy"])
    if not logits and teacher_logits is None:
        return *empty, ("not computed: no stored test logits (no finalist yet, or finalists and teachers recorded "
                        "by kdbench before schema 2, which kept predictions only; re-run the finalists to get them)")
    if labels is None:
        return *empty, ("not computed: the test labels are read with the finalists' predictions (no CE and KD "
                        "finalist of one seed yet, or the dataset's files could not be read)")
    n = len(labels)
    arms: dict[str, list[npt.NDArray[np.float64]]] = {}
    teacher = decode_logits(teacher_logits, n)
    if teacher is not None:
        arms["teacher"] = [teacher]
    temps: dict[str, list[float | None]] = {}
    for loss in sorted(logits, key=lambda k: (k != "ce", k != "kd", k)):
        fitted = (temperatures or {}).get(loss, {})
        pairs = ((sd, decode_logits(b, n)) for sd, b in sorted(logits[loss].items()))
        decoded = [(z, fitted.get(sd)) for sd, z in pairs if z is not None]
        if decoded:
            arms[names.get(loss, loss)] = [z for z, _ in decoded]
            temps[names.get(loss, loss)] = [t for _, t in decoded]
    if not arms:
        return *empty, ("not computed: no stored test logits (finalists and teachers recorded by kdbench before "
                        "schema 2 kept predictions only; re-run the finalists to get them)")
    bins = []
    for arm, runs in arms.items():
        b = reliability_bins(np.concatenate(runs), np.tile(labels, len(runs)))
        bins.append(b.assign(arm=arm))
    note = "" if "teacher" in arms else "the teacher's test logits were not stored (recorded before schema 2)"
    return calibration(arms, labels, temps), pd.concat(bins, ignore_index=True)[empty[1].columns], note


BASELINE_ARMS = ("CE student", "CE+LS student")  # the arms a student's calibration is held against (the best)


def calibration_flags(table: pd.DataFrame, baselines: Collection[str] = BASELINE_ARMS, factor: float = 2.0) -> str:
    """A sentence naming each student arm whose mean test ECE is more than ``factor`` times the best (lowest)
    baseline's (accuracy alone would hide that its probabilities are badly calibrated); "" when none is, or no
    baseline has an ECE.

    Args:
        table: :func:`calibration`'s result.
        baselines: the baseline arms (CE, and any other the study trains); the one with the lowest ECE is held.
        factor: how many times the best baseline's ECE an arm may reach before it is named.
    """
    rows = table.set_index("arm")
    held = rows[rows.index.isin(list(baselines)) & np.isfinite(rows["ece_mean"].astype(float))]
    if held.empty:
        return ""
    baseline = str(held["ece_mean"].astype(float).idxmin())
    base = float(held.loc[baseline, "ece_mean"])
    bad = rows[~rows.index.isin(list(baselines)) & (rows.index != "teacher") & (rows["ece_mean"] > factor * base)]
    if bad.empty:
        return ""
    def scaled(r: pd.Series) -> str:  # ECE after temperature scaling, where fitted: a fixable over-confidence or not
        ts = r.get("ece_ts_mean")
        return "" if ts is None or not np.isfinite(ts) else f"; {100 * ts:.1f} % after temperature scaling"

    names = ", ".join(f"{arm} (ECE {100 * r['ece_mean']:.1f} %, n={int(r['n'])}{scaled(r)})"
                      for arm, r in bad.iterrows())
    best = "the best baseline's, the " if len(held) > 1 else "the "
    return (f"Calibration: {names} more than {factor:g}× {best}{baseline}'s ECE ({100 * base:.1f} %): "
            "its accuracy comes with badly calibrated probabilities.")

"""``kdbench report A B ... --pool``: several studies of the same pair pooled into one random-effects estimate.

A study's verdict interval covers its finalist seeds only; a retest on another split, teacher and seeds
varies what that interval holds fixed. Pooling treats each study's paired KD − CE test-accuracy mean (over its
finalist seeds) as one estimate with its standard error (sd of the paired differences / √n) and combines them
with ``statsmodels.stats.meta_analysis.combine_effects``: the between-study variance τ² by DerSimonian–Laird
(:data:`~kdbench.defaults.POOL_TAU2_METHOD`, truncated at 0: statsmodels' one-step estimate is not), each
study weighted 1 / (se² + τ²), a normal 95 % interval and, beside it, the Hartung–Knapp interval (t with
k − 1 df), which allows for τ² being estimated; heterogeneity as τ², I² and Cochran's Q with its p. Only
studies of the same pair pool: the same student model, dataset and finalist arms, else one line names the
study and what differs. :func:`pool_studies` checks the studies and hands their paired results to
:func:`pool_effects`, which computes the frame (one row per study, then the pooled row: pool.csv and the
forest plot's data); :func:`pool_display` is its text table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from statsmodels.stats.meta_analysis import combine_effects

from kdbench.defaults import POOL_TAU2_METHOD
from kdbench.errors import ConfigError
from kdbench.report.stats import CONFIDENCE, Paired, p_text, paired_difference

if TYPE_CHECKING:
    from kdbench.report.frames import StudyFrames

__all__ = ["POOL_COLUMNS", "Pooled", "kd_minus_ce", "pair_of", "pool_display", "pool_effects", "pool_studies"]

POOL_COLUMNS = ["row", "study", "teacher", "seeds", "n", "mean", "sd", "se", "ci_low", "ci_high", "weight",
                "hk_low", "hk_high", "tau2", "i2", "q", "q_df", "q_p"]
METHOD_NAMES = {"dl": "DerSimonian–Laird", "chi2": "DerSimonian–Laird", "pm": "Paule–Mandel",
                "iterated": "Paule–Mandel"}


@dataclass(frozen=True)
class Pooled:
    """The pooled KD − CE: ``table`` (columns :data:`POOL_COLUMNS`, fractions; one ``row == "study"`` per study
    with its own paired t interval and its share of the random-effects weight, then the ``"pooled"`` row with
    the normal and Hartung–Knapp intervals and the heterogeneity) and the sentence the report prints."""

    table: pd.DataFrame
    sentence: str


def pair_of(sf: StudyFrames) -> dict[str, str]:
    """What makes two studies the same pair: the student model, the dataset and the best finalist arms."""
    arms = sorted(str(a) for a in sf.arms["arm"] if a != "teacher" and "#" not in str(a))
    return {"student": str(sf.config["student"]["model"]), "dataset": str(sf.config["data"]["dataset"]),
            "arms": ", ".join(arms) or "none"}


def kd_minus_ce(sf: StudyFrames) -> Paired:
    """The study's best KD finalist against its CE finalist, paired by seed: the one comparison every study has.
    Not the verdict's own (:attr:`StudyFrames.paired`), which is against CE+LS where that baseline was better on
    the study's validation: pooling one study's KD − CE with another's KD − CE+LS would mix two quantities."""
    seeds = sf.seeds.set_index("seed")
    return paired_difference(seeds["kd"], seeds["ce"])


def _check(frames: list[StudyFrames], paired: list[Paired]) -> None:
    if len(frames) < 2:
        names = ", ".join(f.name for f in frames) or "none"
        raise ConfigError(f"--pool: pooling needs at least two studies of the same pair, got one ({names}); "
                          "name the others (retests, other teachers or splits) before --pool")
    first, want = frames[0], pair_of(frames[0])
    for sf in frames[1:]:
        got = pair_of(sf)
        if got != want:
            what = "; ".join(f"{k} {got[k]} (not {want[k]})" for k in want if got[k] != want[k])
            raise ConfigError(f"--pool: study {sf.name} is not the same pair as {first.name}: {what}; pool only "
                              "studies of the same student model, dataset and arms")
    for sf, p in zip(frames, paired, strict=True):
        if p.n < 2 or not p.sd > 1e-12:
            raise ConfigError(f"--pool: study {sf.name} has no standard error for KD − CE ({p.n} shared finalist "
                              "seed(s), at least 2 with some spread needed); finish its finalists or leave it out")


def pool_studies(frames: list[StudyFrames], method: str = POOL_TAU2_METHOD) -> Pooled:
    """Pool the studies' paired KD − CE test-accuracy differences into one random-effects estimate.

    Args:
        frames: two or more studies of the same pair, each with at least two shared finalist seeds.
        method: statsmodels' ``method_re``: ``"dl"`` (DerSimonian–Laird) or ``"pm"`` (Paule–Mandel).

    Returns:
        The frame and the sentence (:func:`pool_effects` on the studies' paired results).

    Raises:
        ConfigError: one study, studies of different pairs, or a study with no standard error (one line each).
    """
    paired = [kd_minus_ce(sf) for sf in frames]
    _check(frames, paired)
    effects = pd.DataFrame([{"study": sf.name, "teacher": _teacher(sf), "n": p.n, "mean": p.mean,
                             "seeds": " ".join(str(int(s)) for s in sf.seeds["seed"]), "sd": p.sd,
                             "ci_low": p.ci_low, "ci_high": p.ci_high} for sf, p in zip(frames, paired, strict=True)])
    pair = pair_of(frames[0])
    return pool_effects(effects, f"{pair['student']} on {pair['dataset']} ({pair['arms']})", method)


def pool_effects(effects: pd.DataFrame, pair: str, method: str = POOL_TAU2_METHOD) -> Pooled:
    """The random-effects pooling itself, on one row per study.

    Args:
        effects: ``study, teacher, seeds, n, mean, sd, ci_low, ci_high``: each study's paired KD − CE over its
            ``n`` finalist seeds (mean, sd of the differences, its t interval; fractions).
        pair: what the studies compare, for the sentence ("mlp-800 on fashion-mnist (CE student, KD student)").
        method: statsmodels' ``method_re``.

    Returns:
        The frame (:data:`POOL_COLUMNS`) and the sentence.
    """
    eff = effects["mean"].to_numpy(dtype=float)
    var = (effects["sd"] ** 2 / effects["n"]).to_numpy(dtype=float)
    with np.errstate(invalid="ignore"):  # a negative DL τ² makes statsmodels' random-effects sds NaN: not used then
        res = combine_effects(eff, var, method_re=method, row_names=list(effects["study"]), alpha=1 - CONFIDENCE,
                              use_t=False)
        normal, t = res.conf_int(alpha=1 - CONFIDENCE, use_t=False), res.conf_int(alpha=1 - CONFIDENCE, use_t=True)
    # τ² truncated at 0 (DerSimonian–Laird's one-step estimate can be negative): the fixed-effect fields are then
    # the random-effects ones
    re, k = bool(res.tau2 > 0), len(effects)
    mean, se = (res.mean_effect_re, res.sd_eff_w_re) if re else (res.mean_effect_fe, res.sd_eff_w_fe)
    ci, hk = normal[int(re)], t[2 + int(re)]  # (fe, re, fe Hartung–Knapp, re Hartung–Knapp)
    homogeneity = res.test_homogeneity()
    studies = effects.assign(row="study", se=np.sqrt(var), weight=res.weights_rel_re if re else res.weights_rel_fe)
    pooled = {"row": "pooled", "study": f"pooled ({METHOD_NAMES.get(method, method)}, k = {k})",
              "n": int(effects["n"].sum()), "mean": float(mean), "se": float(se), "ci_low": float(ci[0]),
              "ci_high": float(ci[1]), "weight": 1.0, "hk_low": float(hk[0]), "hk_high": float(hk[1]),
              "tau2": float(res.tau2) if re else 0.0, "i2": max(0.0, float(res.i2)) if res.q > 0 else 0.0,
              "q": float(homogeneity.statistic), "q_df": k - 1, "q_p": float(homogeneity.pvalue)}
    table = pd.concat([studies, pd.DataFrame([pooled])], ignore_index=True).reindex(columns=POOL_COLUMNS)
    return Pooled(table, _sentence(table, pair, method))


def _teacher(sf: StudyFrames) -> str:
    t = sf.arms[sf.arms["arm"] == "teacher"]
    return f"{t['model'].iloc[0]} ({100 * t['test_mean'].iloc[0]:.2f} %)" if len(t) else "none recorded"


def _sentence(table: pd.DataFrame, pair: str, method: str) -> str:
    p = table.iloc[-1]
    k, ci = int(p["q_df"]) + 1, f"{CONFIDENCE:.0%} CI"
    tau = (f"τ² = {10_000 * p['tau2']:.3g} pp² (τ = {100 * math.sqrt(p['tau2']):.2f} pp)" if p["tau2"] > 0 else
           "τ² = 0 (the studies differ no more than their standard errors allow)")
    where = "lies above 0" if p["ci_low"] > 0 else "lies below 0" if p["ci_high"] < 0 else "contains 0"
    text = (f"Pooled over k = {k} studies of {pair}, {int(p['n'])} finalist seeds in all; random effects "
            f"({METHOD_NAMES.get(method, method)}): KD − CE = "
            f"{100 * p['mean']:+.2f} pp, {ci} [{100 * p['ci_low']:+.2f}, {100 * p['ci_high']:+.2f}] pp (normal; "
            f"the interval {where}), Hartung–Knapp {ci} [{100 * p['hk_low']:+.2f}, {100 * p['hk_high']:+.2f}] pp "
            f"(t, {k - 1} df). Heterogeneity: {tau}, I² = {p['i2']:.0%}, Q = {p['q']:.2f} on {k - 1} df, "
            f"p = {p_text(p['q_p'])}.")
    text += (" Each study contributes its KD − CE, whichever baseline its own verdict compared with (CE+LS, where "
             "that was better on its validation).") if "CE+LS" in pair else ""
    if k == 2:
        text += (" With k = 2, τ² from two studies is barely estimable: the normal interval may be too narrow, and "
                 "the Hartung–Knapp one shows how little two studies pin down.")
    return text


def pool_display(pooled: Pooled) -> pd.DataFrame:
    """The pooled frame as a text table: differences and intervals in pp (H–K: Hartung–Knapp), weights in %
    (the standard errors are in the frame, pool.csv)."""
    def pp(x: float) -> str:
        return "" if pd.isna(x) else f"{100 * x:+.2f}"

    rows = [{"study": r["study"], "teacher": "" if pd.isna(r["teacher"]) else r["teacher"],
             "n": str(int(r["n"])), "KD − CE (pp)": pp(r["mean"]),
             f"{CONFIDENCE:.0%} CI (pp)": f"[{pp(r['ci_low'])}, {pp(r['ci_high'])}]",
             "H–K CI (pp)": "" if pd.isna(r["hk_low"]) else f"[{pp(r['hk_low'])}, {pp(r['hk_high'])}]",
             "weight": f"{r['weight']:.0%}"} for _, r in pooled.table.iterrows()]
    return pd.DataFrame(rows)

"""Pooling studies (``report --pool``): DerSimonian–Laird by hand on a fixed frame, the forest plot's frame, and
the CLI's refusals and end-to-end run on small stored studies (no training)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from report_db import CE_TEST, KD_TEST, make_db
from scipy import stats

from kdbench import cli
from kdbench.report.pool import POOL_COLUMNS, pool_effects

PAIR = "mlp-800 on fashion-mnist (CE student, KD student)"
# three studies' paired KD − CE over their finalist seeds (fractions): far enough apart that τ² > 0
EFFECTS = pd.DataFrame({"study": ["quick", "retest", "h200"], "teacher": ["cnn-m"] * 3, "seeds": ["1 2 3"] * 3,
                        "n": [5, 5, 3], "mean": [0.0077, 0.0184, 0.0030], "sd": [0.0065, 0.0069, 0.0040],
                        "ci_low": [0.0, 0.01, -0.007], "ci_high": [0.016, 0.027, 0.013]})


def _dersimonian_laird(y: list[float], v: list[float]) -> dict[str, float]:
    """DerSimonian & Laird (1986) by hand: fixed-effect weights, Cochran's Q, τ² = max(0, (Q − df) / C), then
    random-effects weights 1 / (v + τ²); the normal interval and the Hartung–Knapp one (t, k − 1 df)."""
    k = len(y)
    w = [1 / x for x in v]
    fixed = sum(wi * yi for wi, yi in zip(w, y, strict=True)) / sum(w)
    q = sum(wi * (yi - fixed) ** 2 for wi, yi in zip(w, y, strict=True))
    c = sum(w) - sum(wi ** 2 for wi in w) / sum(w)
    tau2 = max(0.0, (q - (k - 1)) / c)
    ws = [1 / (x + tau2) for x in v]
    mu = sum(wi * yi for wi, yi in zip(ws, y, strict=True)) / sum(ws)
    se = math.sqrt(1 / sum(ws))
    z, t = stats.norm.ppf(0.975), stats.t.ppf(0.975, k - 1)
    hk_se = math.sqrt(sum(wi * (yi - mu) ** 2 for wi, yi in zip(ws, y, strict=True)) / ((k - 1) * sum(ws)))
    return {"mean": mu, "se": se, "ci_low": mu - z * se, "ci_high": mu + z * se, "hk_low": mu - t * hk_se,
            "hk_high": mu + t * hk_se, "tau2": tau2, "i2": max(0.0, (q - (k - 1)) / q), "q": q,
            "q_p": float(stats.chi2.sf(q, k - 1)), "weights": [wi / sum(ws) for wi in ws]}


def test_dersimonian_laird_by_hand_on_three_studies() -> None:
    pooled = pool_effects(EFFECTS, PAIR)
    v = (EFFECTS["sd"] ** 2 / EFFECTS["n"]).tolist()
    hand = _dersimonian_laird(EFFECTS["mean"].tolist(), v)
    row = pooled.table.iloc[-1]
    assert hand["tau2"] > 0 and row["row"] == "pooled" and row["q_df"] == 2 and row["n"] == 13
    for key in ("mean", "se", "ci_low", "ci_high", "hk_low", "hk_high", "tau2", "i2", "q", "q_p"):
        assert row[key] == pytest.approx(hand[key], rel=1e-9), key
    studies = pooled.table[pooled.table["row"] == "study"]
    assert studies["weight"].tolist() == pytest.approx(hand["weights"])
    assert studies["se"].tolist() == pytest.approx([math.sqrt(x) for x in v])
    s = pooled.sentence
    assert s.startswith(f"Pooled over k = 3 studies of {PAIR}, 13 finalist seeds in all; random effects "
                        f"(DerSimonian–Laird): KD − CE = {100 * hand['mean']:+.2f} pp, 95% CI "
                        f"[{100 * hand['ci_low']:+.2f}, {100 * hand['ci_high']:+.2f}] pp")
    assert f"I² = {hand['i2']:.0%}, Q = {hand['q']:.2f} on 2 df" in s and "barely estimable" not in s


def test_a_negative_dersimonian_laird_tau2_is_truncated_at_zero() -> None:
    """Two studies that agree better than their standard errors: Q < df, so DL's τ² is negative (statsmodels
    does not truncate it) and the pooled estimate is the fixed-effect one; with k = 2 the sentence says so."""
    two = EFFECTS.iloc[:2].assign(mean=[0.0100, 0.0102])
    pooled = pool_effects(two, PAIR)
    hand = _dersimonian_laird(two["mean"].tolist(), (two["sd"] ** 2 / two["n"]).tolist())
    row = pooled.table.iloc[-1]
    assert hand["tau2"] == 0 and row["tau2"] == 0 and row["i2"] == 0
    for key in ("mean", "se", "ci_low", "ci_high", "hk_low", "hk_high"):
        assert row[key] == pytest.approx(hand[key], rel=1e-9), key
    assert "τ² = 0 (the studies differ no more than their standard errors allow)" in pooled.sentence
    assert "With k = 2, τ² from two studies is barely estimable" in pooled.sentence


def test_the_forest_plots_frame_is_one_row_per_study_then_the_pooled_row() -> None:
    from kdbench.report.figures import forest
    from kdbench.report.pool import Pooled, pool_display

    pooled = pool_effects(EFFECTS, PAIR)
    t = pooled.table
    assert list(t.columns) == POOL_COLUMNS and t["row"].tolist() == ["study"] * 3 + ["pooled"]
    assert t["study"].tolist()[:3] == ["quick", "retest", "h200"] and t["study"].iloc[-1].startswith("pooled")
    studies = t.iloc[:3]
    assert studies["mean"].tolist() == EFFECTS["mean"].tolist() and studies["ci_low"].tolist() == [0.0, 0.01, -0.007]
    assert studies["weight"].sum() == pytest.approx(1.0) and studies[["hk_low", "tau2", "q"]].isna().all().all()
    display = pool_display(pooled)
    assert display["KD − CE (pp)"].tolist()[0] == "+0.77" and display["weight"].iloc[-1] == "100%"
    fig = forest(t)
    labels = [x.get_text() for x in fig.axes[0].get_yticklabels()]
    assert labels[0].startswith("quick (n=5, ") and labels[-1] == t["study"].iloc[-1]
    assert isinstance(pooled, Pooled)


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('pool') / 'kd.db'}"
    make_db(url, "known")  # KD − CE: +1, +1.5, +2, +0.5, +1.5 pp
    make_db(url, "retest", kd_test={1: 0.91, 2: 0.93, 3: 0.92}, ce_test={1: 0.90, 2: 0.90, 3: 0.905})
    make_db(url, "cnn-s", student="cnn-s")
    make_db(url, "unfinished", kd_test={1: 0.90}, ce_test={1: 0.89})
    return url


@pytest.mark.parametrize(("studies", "says"), [
    (["known"], "--pool: pooling needs at least two studies of the same pair, got one (known)"),
    (["known", "known"], "got one (known)"),
    (["known", "cnn-s"], "--pool: study cnn-s is not the same pair as known: student cnn-s (not mlp-800)"),
    (["known", "unfinished"], "--pool: study unfinished has no standard error for KD − CE (1 shared finalist"),
])
def test_pool_refuses_in_one_line(db: str, tmp_path: Path, studies: list[str], says: str) -> None:
    out = tmp_path / "out"
    res = CliRunner().invoke(cli.main, ["report", *studies, "--pool", "--storage", db, "--out", str(out)])
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and says in lines[0], res.output
    assert not out.exists()  # refused before anything was written


def test_pool_end_to_end_in_markdown(db: str) -> None:
    res = CliRunner().invoke(cli.main, ["report", "known", "retest", "--pool", "--format", "md", "--storage", db])
    assert res.exit_code == 0, res.output
    diffs = [[0.01, 0.015, 0.02, 0.005, 0.015], [0.01, 0.03, 0.015]]  # KD − CE per seed, as make_db stores them
    hand = _dersimonian_laird([statistics.mean(d) for d in diffs], [statistics.variance(d) / len(d) for d in diffs])
    assert f"KD − CE = {100 * hand['mean']:+.2f} pp, 95% CI [{100 * hand['ci_low']:+.2f}, " in res.output
    assert "| pooled (DerSimonian–Laird, k = 2) |" in res.output and "barely estimable" in res.output


@pytest.mark.slow  # draws every figure of two studies
def test_pool_writes_its_section_table_and_forest_plot(db: str, tmp_path: Path) -> None:
    res = CliRunner().invoke(cli.main, ["report", "known", "retest", "--pool", "--storage", db,
                                        "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert {f"pool.{x}" for x in ("md", "csv", "tex", "png", "svg")} <= {p.name for p in tmp_path.iterdir()}
    csv = pd.read_csv(tmp_path / "pool.csv")
    assert csv["study"].tolist()[:2] == ["known", "retest"] and csv["row"].iloc[-1] == "pooled"
    assert csv["mean"].iloc[0] == pytest.approx(0.013) and csv["n"].tolist() == [5, 3, 8]
    html = (tmp_path / "index.html").read_text()
    assert '<h2 id="pool">Pooled across studies</h2>' in html and "forest plot of the pooled studies" in html
    assert "pooled: Pooled over k = 2 studies" in res.output


def test_pool_takes_kd_minus_ce_from_every_study_whatever_baseline_its_verdict_chose(tmp_path: Path) -> None:
    """Study "ls-better" has CE+LS better than CE on validation, so its verdict is KD − CE+LS; the pool still takes
    its KD − CE (one quantity across studies), checked against DerSimonian–Laird by hand."""
    url = f"sqlite:///{tmp_path / 'kd.db'}"
    make_db(url, "ls-better", ls_test={s: a + 0.01 for s, a in CE_TEST.items()})  # KD − CE+LS is 1 pp less
    make_db(url, "ce-better", kd_test={1: 0.91, 2: 0.93, 3: 0.92}, ce_test={1: 0.90, 2: 0.90, 3: 0.905},
            ls_test={1: 0.89, 2: 0.89, 3: 0.89})
    res = CliRunner().invoke(cli.main, ["report", "ls-better", "ce-better", "--pool", "--format", "md",
                                        "--storage", url])
    assert res.exit_code == 0, res.output
    diffs = [[KD_TEST[s] - CE_TEST[s] for s in sorted(KD_TEST)], [0.01, 0.03, 0.015]]
    hand = _dersimonian_laird([statistics.mean(d) for d in diffs], [statistics.variance(d) / len(d) for d in diffs])
    assert f"KD − CE = {100 * hand['mean']:+.2f} pp, 95% CI [{100 * hand['ci_low']:+.2f}, " in res.output
    assert "| ls-better                         | cnn-m (90.50 %) |   5 |          +1.30 |" in res.output
    assert "whichever baseline its own verdict compared with" in res.output

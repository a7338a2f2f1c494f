"""kdbench.report.effects against hand computations on a small fixed design.

The design: T ∈ {1, 4} × α ∈ {0.1, 0.9} and CE, two lrs, three replicate seeds, literal accuracies chosen so
that the best lr differs between cells (and CE's two lrs tie). Every expected value below is computed
here by plain arithmetic (textbook sd, t quantiles as literals, Holm and sums of squares by hand).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from kdbench.report.bins import BIN_COLUMNS, binned_effect
from kdbench.report.effects import (
    ANOVA_COLUMNS,
    CELL_COLUMNS,
    DELTA_COLUMNS,
    LEVEL_COLUMNS,
    PARTLY_RELIABLE,
    PER_LR_COLUMNS,
    RELIABLE,
    best_lr_cells,
    delta_vs_ce,
    main_effects,
    reliability,
    reliability_sentence,
    seed_matrix,
)

SEEDS = (3, 5, 8)  # not 0..R-1, so that a positional mix-up shows
# Student t quantiles 0.975, exact to the last digit: 0.95 / √(2 · 0.975 · 0.025) for 2 degrees of freedom
# (the often-quoted 4.302652729911275 is off in the tenth decimal) and tan(0.475 π) for 1
T_975_2 = 4.302652729749464
T_975_1 = 12.706204736174696
CE = None
# cell -> lr -> val_acc per seed (in SEEDS' order)
VALUES: dict[tuple[float, float] | None, dict[float, list[float]]] = {
    (1.0, 0.1): {0.01: [0.80, 0.82, 0.81], 0.1: [0.78, 0.79, 0.80]},  # best lr 0.01
    (1.0, 0.9): {0.01: [0.79, 0.80, 0.78], 0.1: [0.83, 0.82, 0.84]},  # best lr 0.1
    (4.0, 0.1): {0.01: [0.85, 0.86, 0.84], 0.1: [0.80, 0.81, 0.79]},  # best lr 0.01
    (4.0, 0.9): {0.01: [0.82, 0.82, 0.83], 0.1: [0.84, 0.87, 0.85]},  # best lr 0.1
    CE: {0.01: [0.80, 0.81, 0.79], 0.1: [0.80, 0.81, 0.79]},  # a tie: the smaller lr wins
}
BEST_LR = {(1.0, 0.1): 0.01, (1.0, 0.9): 0.1, (4.0, 0.1): 0.01, (4.0, 0.9): 0.1, CE: 0.01}
KD_CELLS = [(1.0, 0.1), (1.0, 0.9), (4.0, 0.1), (4.0, 0.9)]


def _frame(values: dict = VALUES) -> pd.DataFrame:
    rows = []
    for cell, by_lr in values.items():
        for lr, accs in by_lr.items():
            for seed, acc in zip(SEEDS, accs, strict=True):
                rows.append({"stage": "ce" if cell is None else "kd",
                             "temperature": math.nan if cell is None else cell[0],
                             "alpha": math.nan if cell is None else cell[1], "lr": lr, "seed": seed, "val_acc": acc})
    return pd.DataFrame(rows)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _sd(xs: list[float]) -> float:
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _pearson(xs: list[float], ys: list[float]) -> float:
    mx, my = _mean(xs), _mean(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    return sxy / math.sqrt(sum((x - mx) ** 2 for x in xs) * sum((y - my) ** 2 for y in ys))


def _best(cell: tuple[float, float] | None) -> list[float]:
    return VALUES[cell][BEST_LR[cell]]


def _matrix(values: dict = VALUES) -> pd.DataFrame:
    runs = _frame(values)
    return seed_matrix(runs, best_lr_cells(runs).cells)


def test_best_lr_cells_by_hand() -> None:
    best = best_lr_cells(_frame())
    cells = best.cells
    assert list(cells.columns) == list(CELL_COLUMNS)
    assert list(cells["stage"]) == ["kd"] * 4 + ["ce"]
    assert list(zip(cells["temperature"][:4], cells["alpha"][:4], strict=True)) == KD_CELLS
    assert cells["temperature"].iloc[4] != cells["temperature"].iloc[4]  # NaN for CE
    for i, cell in enumerate([*KD_CELLS, CE]):
        xs = _best(cell)
        half = T_975_2 * _sd(xs) / math.sqrt(3)
        row = cells.iloc[i]
        assert row["best_lr"] == BEST_LR[cell]
        assert (row["n"], row["n_lrs"]) == (3, 2)
        assert row["mean"] == pytest.approx(_mean(xs), abs=1e-12)
        assert row["sd"] == pytest.approx(_sd(xs), abs=1e-12)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((_mean(xs) - half, _mean(xs) + half), abs=1e-12)
        assert row["ci_half"] == pytest.approx(half, abs=1e-12)
    per_lr = best.per_lr
    assert list(per_lr.columns) == list(PER_LR_COLUMNS) and len(per_lr) == 10
    for row in per_lr.itertuples(index=False):
        cell = None if row.stage == "ce" else (row.temperature, row.alpha)
        assert row.mean == pytest.approx(_mean(VALUES[cell][row.lr]), abs=1e-12)
        assert row.best == (row.lr == BEST_LR[cell])


def test_seed_matrix_holds_each_cells_best_lr_values() -> None:
    m = _matrix()
    assert list(m.columns) == list(SEEDS) and m.columns.name == "seed"
    assert list(m.index.names) == ["temperature", "alpha"]
    for i, cell in enumerate(KD_CELLS):
        assert m.index[i] == cell
        assert list(m.iloc[i]) == _best(cell)
    assert all(np.isnan(m.index[4])) and list(m.iloc[4]) == _best(CE)


def test_delta_vs_ce_by_hand() -> None:
    d = delta_vs_ce(_matrix())
    assert list(d.columns) == list(DELTA_COLUMNS) and len(d) == 4
    ce = _best(CE)
    p_by_hand = {}
    for i, cell in enumerate(KD_CELLS):
        diffs = [k - c for k, c in zip(_best(cell), ce, strict=True)]
        row = d.iloc[i]
        assert (row["temperature"], row["alpha"], row["n"]) == (*cell, 3)
        assert row["mean"] == pytest.approx(_mean(diffs), abs=1e-12)
        if cell == (4.0, 0.1):  # every seed gives +0.05: no spread, so no t statistic
            assert math.isnan(row["ci_low"]) and math.isnan(row["p_greater"]) and math.isnan(row["p_holm"])
            assert not row["holm_above_zero"]
            continue
        se = _sd(diffs) / math.sqrt(3)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx(
            (_mean(diffs) - T_975_2 * se, _mean(diffs) + T_975_2 * se), abs=1e-12)
        t = _mean(diffs) / se
        p_by_hand[cell] = 0.5 - t / (2 * math.sqrt(2 + t * t))  # the t(2) distribution's tail, in closed form
        assert row["p_greater"] == pytest.approx(p_by_hand[cell], abs=1e-12)
    # Holm by hand over the three defined p-values: sort, times m - i + 1, running maximum, capped at 1
    order = sorted(p_by_hand, key=p_by_hand.__getitem__)
    holm, running = {}, 0.0
    for i, cell in enumerate(order):
        running = max(running, min(1.0, (len(order) - i) * p_by_hand[cell]))
        holm[cell] = running
    assert order == [(4.0, 0.9), (1.0, 0.9), (1.0, 0.1)]
    assert holm[(1.0, 0.1)] == pytest.approx(holm[(1.0, 0.9)])  # the running maximum lifted it
    for i, cell in enumerate(KD_CELLS):
        if cell in holm:
            assert d.iloc[i]["p_holm"] == pytest.approx(holm[cell], abs=1e-12)
            assert d.iloc[i]["holm_above_zero"] == (holm[cell] < 0.05)
    assert list(d["holm_above_zero"]) == [False, False, False, True]


def _level_by_seed(factor: int) -> dict[float, list[float]]:
    """Per level of T (factor 0) or α (1): per seed, the mean over the other factor's cells."""
    levels = sorted({c[factor] for c in KD_CELLS})
    return {lv: [_mean([_best(c)[s] for c in KD_CELLS if c[factor] == lv]) for s in range(3)] for lv in levels}


def test_main_effects_levels_and_paired_effects_by_hand() -> None:
    effects = main_effects(_matrix(), min_anova_seeds=2)
    levels = effects.levels
    assert list(levels.columns) == list(LEVEL_COLUMNS) and len(levels) == 4
    grand = [_mean([_best(c)[s] for c in KD_CELLS]) for s in range(3)]
    for factor_index, factor in enumerate(["temperature", "alpha"]):
        for level, per_seed in _level_by_seed(factor_index).items():
            row = levels[(levels["factor"] == factor) & (levels["level"] == level)].iloc[0]
            half = T_975_2 * _sd(per_seed) / math.sqrt(3)
            assert row["n"] == 3
            assert row["mean"] == pytest.approx(_mean(per_seed), abs=1e-12)
            assert (row["ci_low"], row["ci_high"]) == pytest.approx(
                (_mean(per_seed) - half, _mean(per_seed) + half), abs=1e-12)
            eff = [x - g for x, g in zip(per_seed, grand, strict=True)]
            half = T_975_2 * _sd(eff) / math.sqrt(3)
            assert row["effect"] == pytest.approx(_mean(eff), abs=1e-12)
            assert (row["effect_ci_low"], row["effect_ci_high"]) == pytest.approx(
                (_mean(eff) - half, _mean(eff) + half), abs=1e-12)
    assert effects.notes == []


def _anova_by_hand() -> dict[str, float]:
    """F of T, α and T × α in the 2 × 2 × 3 (T × α × seed) repeated-measures design, from sums of squares."""
    y = {(t, a, s): _best((t, a))[s] for t, a in KD_CELLS for s in range(3)}
    ts, als, ss = (1.0, 4.0), (0.1, 0.9), range(3)
    g = _mean(list(y.values()))
    mt = {t: _mean([y[t, a, s] for a in als for s in ss]) for t in ts}
    ma = {a: _mean([y[t, a, s] for t in ts for s in ss]) for a in als}
    ms = {s: _mean([y[t, a, s] for t in ts for a in als]) for s in ss}
    mts = {(t, s): _mean([y[t, a, s] for a in als]) for t in ts for s in ss}
    mas = {(a, s): _mean([y[t, a, s] for t in ts]) for a in als for s in ss}
    mta = {(t, a): _mean([y[t, a, s] for s in ss]) for t in ts for a in als}
    ss_t = 2 * 3 * sum((mt[t] - g) ** 2 for t in ts)
    ss_ts = 2 * sum((mts[t, s] - mt[t] - ms[s] + g) ** 2 for t in ts for s in ss)
    ss_a = 2 * 3 * sum((ma[a] - g) ** 2 for a in als)
    ss_as = 2 * sum((mas[a, s] - ma[a] - ms[s] + g) ** 2 for a in als for s in ss)
    ss_ta = 3 * sum((mta[t, a] - mt[t] - ma[a] + g) ** 2 for t in ts for a in als)
    ss_tas = sum((y[t, a, s] - mta[t, a] - mts[t, s] - mas[a, s] + mt[t] + ma[a] + ms[s] - g) ** 2
                 for t in ts for a in als for s in ss)
    # every effect has 1 df and its error (effect × seed) 2: F = (SS / 1) / (SS_error / 2)
    return {"temperature": ss_t / (ss_ts / 2), "alpha": ss_a / (ss_as / 2), "temperature:alpha": ss_ta / (ss_tas / 2)}


def test_rm_anova_by_hand() -> None:
    anova = main_effects(_matrix(), min_anova_seeds=2).anova
    assert anova is not None and list(anova.columns) == list(ANOVA_COLUMNS)
    assert list(anova["term"]) == ["temperature", "alpha", "temperature:alpha"]
    for term, f in _anova_by_hand().items():
        row = anova[anova["term"] == term].iloc[0]
        assert row["F"] == pytest.approx(f, rel=1e-9)
        assert (row["df_num"], row["df_den"]) == (1, 2)
        assert row["p"] == pytest.approx(1 - math.sqrt(f / (2 + f)), rel=1e-9)  # F(1, 2) = t(2)², closed form


def test_factor_sentences_say_the_test_and_the_best_level_in_pp() -> None:
    sentences = main_effects(_matrix(), min_anova_seeds=2).sentences
    f_t, f_a = _anova_by_hand()["temperature"], _anova_by_hand()["alpha"]
    grand = [_mean([_best(c)[s] for c in KD_CELLS]) for s in range(3)]
    eff = [x - g for x, g in zip(_level_by_seed(0)[4.0], grand, strict=True)]
    lo, hi = _mean(eff) - T_975_2 * _sd(eff) / math.sqrt(3), _mean(eff) + T_975_2 * _sd(eff) / math.sqrt(3)
    p_t, p_a = 1 - math.sqrt(f_t / (2 + f_t)), 1 - math.sqrt(f_a / (2 + f_a))
    assert p_t < 0.05 < p_a
    assert sentences["temperature"] == (
        f"T changes validation accuracy (RM-ANOVA F(1, 2) = {f_t:.1f}, p = {p_t:.2g}); best T = 4: "
        f"{100 * _mean(eff):+.2f} pp over the grid mean, 95% CI [{100 * lo:+.2f}, {100 * hi:+.2f}].")
    assert sentences["alpha"] == (
        f"α's effect cannot be told apart from seed noise (F(1, 2) = {f_a:.1f}, p = {p_a:.2g}).")
    # a grid planned wider than its data so far: the same sentence, and which planned levels it leaves out
    wider = main_effects(_matrix(), {"temperature": [1.0, 2.0, 4.0, 8.0], "alpha": [0.1, 0.9]},
                         min_anova_seeds=2).sentences
    assert wider["temperature"] == sentences["temperature"][:-1] + " (T = 2, 8: no complete KD run yet)."
    assert wider["alpha"] == sentences["alpha"]
    nothing = main_effects(pd.DataFrame(), {"temperature": [2.0, 4.0], "alpha": [0.5]}).sentences
    assert nothing["temperature"] == "T's effect cannot be estimated yet: no KD cell of the planned T ∈ {2, 4} has a " \
        "complete run."


def test_reliability_by_hand_for_three_seeds() -> None:
    rs = []
    for alone in range(3):  # the splits {a}|{b, c}, {b}|{a, c}, {c}|{a, b}
        rest = [s for s in range(3) if s != alone]
        one = [_best(c)[alone] for c in KD_CELLS]
        two = [_mean([_best(c)[s] for s in rest]) for c in KD_CELLS]
        rs.append(_pearson(one, two))
    r = _mean(rs)
    rho = 2 * r / (1 + r)
    rel = reliability(_matrix())
    assert rel.half_r == pytest.approx(r, abs=1e-12)
    assert rel.coefficient == pytest.approx(rho, abs=1e-12)
    assert (rel.n_splits, rel.n_seeds, rel.n_cells) == (3, 3, 4)
    assert rho >= RELIABLE
    assert rel.sentence == f"Cell-to-cell differences are larger than seed noise (reliability {rho:.2f})."


def test_reliability_sentences_switch_at_the_thresholds() -> None:
    assert "are larger than seed noise (reliability 0.70)" in reliability_sentence(RELIABLE)
    assert "only partly larger" in reliability_sentence(RELIABLE - 1e-9)
    assert "trust the row and column effects" in reliability_sentence(PARTLY_RELIABLE)
    assert "are not larger than seed noise" in reliability_sentence(PARTLY_RELIABLE - 1e-9)
    assert "no single cell can be called best" in reliability_sentence(-0.5)
    assert "unknown" in reliability_sentence(math.nan)


def test_reliability_counts_each_even_split_once_and_says_why_not() -> None:
    m = _matrix()
    four = m.assign(**{"9": m[3] + m[5] - m[8]}).rename(columns={"9": 9})  # a fourth seed
    assert reliability(four).n_splits == 3  # C(4, 2) / 2
    assert reliability(m[[3, 5]]).n_splits == 1
    one = reliability(m[[3]])
    assert math.isnan(one.coefficient) and "fewer than 2 seeds" in one.sentence
    two_cells = reliability(m.iloc[[0, 1, 4]])
    assert math.isnan(two_cells.coefficient) and "fewer than 3 KD cells" in two_cells.sentence
    flat = reliability(m * 0 + 0.5)
    assert math.isnan(flat.coefficient) and "no variance" in flat.sentence


def test_binned_effect_by_hand() -> None:
    ts, accs = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [0.70, 0.74, 0.72, 0.80, 0.78, 0.82]
    runs = pd.DataFrame({"stage": "kd", "temperature": ts, "alpha": 0.5, "lr": 0.1, "seed": 0, "val_acc": accs})
    runs = pd.concat([runs, pd.DataFrame([{"stage": "ce", "temperature": math.nan, "alpha": math.nan, "lr": 0.1,
                                          "seed": 0, "val_acc": 0.1}])], ignore_index=True)
    b = binned_effect(runs, "temperature", 2)
    assert list(b.columns) == list(BIN_COLUMNS) and len(b) == 2
    assert list(b["low"]) == [1.0, 3.5] and list(b["high"]) == [3.5, 6.0] and list(b["n"]) == [3, 3]
    for i, xs in enumerate([accs[:3], accs[3:]]):
        half = T_975_2 * _sd(xs) / math.sqrt(3)
        assert b.iloc[i]["mean"] == pytest.approx(_mean(xs), abs=1e-12)
        assert (b.iloc[i]["ci_low"], b.iloc[i]["ci_high"]) == pytest.approx((_mean(xs) - half, _mean(xs) + half))
    dup = binned_effect(runs.assign(temperature=[1.0, 1, 1, 1, 5, 6, math.nan]), "temperature", 4)
    # quantile edges 1, 1, 1, 4, 6 (1 + 0.75 · (5 − 1) at position 3.75): the duplicates dropped, two bins
    assert list(dup["n"]) == [4, 2] and list(dup["high"]) == [4.0, 6.0]
    single = binned_effect(runs.iloc[:2], "temperature", 2)
    assert list(single["n"]) == [1, 1] and single["ci_low"].isna().all()
    assert list(binned_effect(runs, "alpha", 3)["n"]) == [6]  # one value: one bin
    with pytest.raises(ValueError, match="param"):
        binned_effect(runs, "lr", 2)


def test_an_incomplete_design_uses_what_is_there() -> None:
    runs = _frame()
    missing = (runs["temperature"] == 4.0) & (runs["alpha"] == 0.9) & (runs["lr"] == 0.1) & (runs["seed"] == 8)
    runs = runs[~missing]
    cells = best_lr_cells(runs).cells
    row = cells.iloc[3]
    xs = _best((4.0, 0.9))[:2]
    assert (row["best_lr"], row["n"]) == (0.1, 2)
    assert row["mean"] == pytest.approx(_mean(xs))
    assert row["ci_half"] == pytest.approx(T_975_1 * _sd(xs) / math.sqrt(2))
    m = seed_matrix(runs, cells)
    assert math.isnan(m.loc[(4.0, 0.9), 8])
    assert list(delta_vs_ce(m)["n"]) == [3, 3, 3, 2]
    effects = main_effects(m)
    assert effects.anova is None and any("incomplete" in n for n in effects.notes)
    assert "RM-ANOVA was not run" in effects.sentences["temperature"]
    assert list(effects.levels["n"]) == [3, 3, 3, 3]
    assert reliability(m).n_seeds == 3


def test_empty_frames_give_empty_results() -> None:
    for runs in (pd.DataFrame(), _frame().iloc[:0]):
        best = best_lr_cells(runs)
        assert best.cells.empty and list(best.cells.columns) == list(CELL_COLUMNS) and best.per_lr.empty
        m = seed_matrix(runs, best.cells)
        assert m.empty
        assert delta_vs_ce(m).empty and list(delta_vs_ce(m).columns) == list(DELTA_COLUMNS)
        effects = main_effects(m)
        assert effects.levels.empty and effects.anova is None and effects.notes
        assert math.isnan(reliability(m).coefficient)
        assert binned_effect(runs, "temperature", 3).empty
    assert delta_vs_ce(pd.DataFrame()).empty and main_effects(pd.DataFrame()).anova is None


def test_identical_values_and_a_missing_ce_do_not_crash() -> None:
    values = {**VALUES, (1.0, 0.1): {0.01: [0.9, 0.9, 0.9], 0.1: [0.5, 0.5, 0.5]}}
    values.pop(CE)
    runs = _frame(values)
    cells = best_lr_cells(runs).cells
    assert cells.iloc[0]["sd"] == 0 and math.isnan(cells.iloc[0]["ci_low"]) and math.isnan(cells.iloc[0]["ci_half"])
    assert list(cells["stage"]) == ["kd"] * 4
    m = seed_matrix(runs, cells)
    d = delta_vs_ce(m)
    assert list(d["n"]) == [0] * 4 and d["p_holm"].isna().all() and not d["holm_above_zero"].any()
    assert main_effects(m, min_anova_seeds=2).anova is not None
    # every seed = seed 3 + a shift of its own, in every cell: the cells differ alike on all seeds
    same_pattern = m.apply(lambda col: m[3] + 0.01 * list(m.columns).index(col.name))
    effects = main_effects(same_pattern, min_anova_seeds=2)
    assert effects.anova is None and "no error variance" in effects.notes[0]


def test_missing_columns_are_named() -> None:
    with pytest.raises(ValueError, match="val_acc"):
        best_lr_cells(_frame().drop(columns="val_acc"))


def test_no_rm_anova_below_four_seeds_by_default() -> None:
    """Three seeds cannot check sphericity: the default runs no RM-ANOVA, says why, and the sentences fall back to
    the level effects with their intervals."""
    effects = main_effects(_matrix())
    assert effects.anova is None
    assert effects.notes == ["no RM-ANOVA: it needs at least 4 seeds with KD runs, there are 3: with fewer, its "
                             "p-values rest on a sphericity assumption they cannot check"]
    assert effects.sentences["temperature"].startswith("T's RM-ANOVA was not run (it needs at least 4 seeds")
    assert "best T = 4: " in effects.sentences["temperature"]


def test_rm_anova_is_greenhouse_geisser_corrected_by_hand() -> None:
    """T ∈ {1, 2, 4} (α fixed) on 5 seeds: F by hand, ε = tr(S)² / ((k − 1) tr(S²)) with S the covariance of
    orthonormal contrasts over seeds (Greenhouse & Geisser 1959), p from F(ε(k − 1), ε(k − 1)(n − 1))."""
    y = np.array([[0.80, 0.83, 0.85], [0.82, 0.82, 0.88], [0.79, 0.84, 0.84], [0.81, 0.81, 0.87],
                  [0.80, 0.85, 0.86]])  # seeds × T levels
    rows = [{"stage": "kd", "temperature": t, "alpha": 0.5, "lr": 0.01, "seed": s, "val_acc": y[s, j]}
            for s in range(5) for j, t in enumerate((1.0, 2.0, 4.0))]
    runs = pd.DataFrame(rows)
    effects = main_effects(seed_matrix(runs, best_lr_cells(runs).cells))  # 5 seeds: the default runs it
    assert effects.anova is not None
    row = effects.anova.set_index("term").loc["temperature"]
    n, k = y.shape
    g, mt, ms = y.mean(), y.mean(axis=0), y.mean(axis=1)
    ss_t = n * ((mt - g) ** 2).sum()
    ss_err = ((y - mt[None, :] - ms[:, None] + g) ** 2).sum()
    f = (ss_t / (k - 1)) / (ss_err / ((k - 1) * (n - 1)))
    c = np.array([[1, -1, 0], [1, 1, -2]], dtype=float).T / np.array([math.sqrt(2), math.sqrt(6)])
    s = c.T @ np.cov(y, rowvar=False) @ c
    eps = np.trace(s) ** 2 / ((k - 1) * np.trace(s @ s))
    assert 0.5 <= eps < 1  # between its floor 1 / (k − 1) and 1: the data are not spherical
    assert (row["F"], row["df_num"], row["df_den"]) == pytest.approx((f, 2, 8))
    assert row["epsilon"] == pytest.approx(eps, rel=1e-9)
    assert row["p_uncorrected"] == pytest.approx(stats.f.sf(f, 2, 8), rel=1e-9)
    assert row["p"] == pytest.approx(stats.f.sf(f, 2 * eps, 8 * eps), rel=1e-9)
    assert f"F(2, 8) = {f:.1f}, Greenhouse–Geisser ε = {eps:.2f}, p = " in effects.sentences["temperature"]

"""The method table against a hand computation on a fixed frame."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from kdbench.report.methods import holm, method_cells, method_sentence, method_table
from kdbench.report.stats import Paired, detectable_difference

T_975_3 = 3.182446305284263  # Student's t, 0.975 quantile, 3 degrees of freedom (a printed table's value)

ACC = {  # test accuracy of each method's best configuration on finalist seeds 1..4
    "ce": [0.80, 0.82, 0.81, 0.79],
    "kd": [0.82, 0.83, 0.83, 0.80],
    "dkd": [0.83, 0.85, 0.84, 0.83],
    "lskd": [0.79, 0.83, 0.80, 0.80],
}


def _frame() -> pd.DataFrame:
    rows = []
    for method, accs in ACC.items():
        for seed, acc in enumerate(accs, start=1):
            rows.append({"kind": "finalist", "loss": method, "rank": 0, "seed": seed, "state": "complete",
                         "test_acc": acc, "temperature": None if method == "ce" else 4.0,
                         "alpha": 0.5 if method == "kd" else None, "lr": 1e-3,
                         "params": '{"nckd_weight": 8.0}' if method == "dkd" else None,
                         "visit": f"final/{method}/rank=0/seed={seed}", "wall_time_s": 9.0})
        if method != "ce":  # two cells x one lr x two seeds, each trial twice as long as CE's (2 s vs 1 s)
            for cell in ("T=2", "T=4"):
                for r in (0, 1):
                    rows.append({"kind": method, "loss": method, "state": "complete", "wall_time_s": 2.0,
                                 "visit": f"{method}/{cell}/lr=0.001/r={r}", "rank": None, "seed": 1000 + r})
    rows += [{"kind": "ce", "loss": "ce", "state": "complete", "wall_time_s": 1.0, "visit": f"ce/lr=0.001/r={r}",
              "rank": None, "seed": 1000 + r} for r in (0, 1)]
    return pd.DataFrame(rows)


def _hand(a: list[float], b: list[float]) -> tuple[float, float, float]:
    d = [x - y for x, y in zip(a, b, strict=True)]
    mean = sum(d) / len(d)
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1))
    half = T_975_3 * sd / math.sqrt(len(d))
    return mean, mean - half, mean + half


def test_method_table_by_hand() -> None:
    table = method_table(_frame(), ["kd", "dkd", "lskd"]).set_index("method")
    assert list(table.index) == ["Hinton KD", "DKD", "LS-KD", "CE"]
    for method, name in (("kd", "Hinton KD"), ("dkd", "DKD"), ("lskd", "LS-KD")):
        row = table.loc[name]
        mean, low, high = _hand(ACC[method], ACC["ce"])
        assert (row["vs_ce_mean"], row["vs_ce_low"], row["vs_ce_high"]) == pytest.approx((mean, low, high))
        assert row["n"] == 4 and row["vs_ce_n"] == 4
        assert row["search_runs"] == 4 and row["cells"] == 2 and row["trial_cost_vs_ce"] == pytest.approx(2.0)
    # DKD - KD: differences 0.01, 0.02, 0.01, 0.03
    mean, low, high = _hand(ACC["dkd"], ACC["kd"])
    assert (table.loc["DKD", "vs_kd_mean"], table.loc["DKD", "vs_kd_low"]) == pytest.approx((mean, low))
    assert math.isnan(table.loc["Hinton KD", "vs_kd_mean"]) and math.isnan(table.loc["CE", "vs_ce_mean"])
    assert table.loc["DKD", "configuration"] == "T=4, nckd_weight=8, lr=0.001"
    assert table.loc["Hinton KD", "configuration"] == "T=4, α=0.5, lr=0.001"
    # Holm over the three methods' p-values against CE, by hand: sorted p times (m - i), running maximum
    p = table.loc[["Hinton KD", "DKD", "LS-KD"], "vs_ce_p"].to_numpy()
    order = sorted(range(3), key=lambda i: p[i])
    adjusted, running = [0.0] * 3, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (3 - rank) * p[i]))
        adjusted[i] = running
    assert table.loc[["Hinton KD", "DKD", "LS-KD"], "vs_ce_p_holm"].tolist() == pytest.approx(adjusted)


def test_holm_leaves_missing_p_values_out_of_the_family() -> None:
    got = holm([0.01, float("nan"), 0.04])
    assert got[0] == pytest.approx(0.02) and math.isnan(got[1]) and got[2] == pytest.approx(0.04)


def test_the_method_sentence_says_what_the_data_can_tell() -> None:
    table = method_table(_frame(), ["kd", "dkd", "lskd"])
    sentence = method_sentence(table)
    def power(a: list[float], b: list[float]) -> str:  # the clause at the hand-computed sd of the differences
        d = [x - y for x, y in zip(a, b, strict=True)]
        sd = math.sqrt(sum((x - sum(d) / 4) ** 2 for x in d) / 3)
        mde = detectable_difference(Paired(0.0, sd, -1.0, 1.0, 1.0, 4))  # tested by hand in test_report_stats
        return (f"n = 4, paired sd {100 * sd:.2f} pp: a true difference smaller than about {100 * mde:.2f} pp would "
                "have been detected with probability under 80% (paired t-test, two-sided 5%), before Holm's correction")

    assert sentence == (
        "Against CE (difference in pp, 95 % paired t interval, p Holm-corrected over 3 methods, n=4 shared seeds): "
        "Hinton KD helped over CE (+1.50 pp [+0.58, +2.42], p Holm = 0.028); DKD helped over CE (+3.25 pp "
        "[+2.45, +4.05], p Holm = 0.0029); LS-KD and CE could not be told apart (+0.00 pp [-1.84, +1.84], p Holm = 1; "
        f"{power(ACC['lskd'], ACC['ce'])}). "
        "Against Hinton KD (difference in pp, 95 % paired t interval, p Holm-corrected over 2 methods, n=4 shared "
        "seeds): DKD and Hinton KD could not be told apart (+1.75 pp [+0.23, +3.27], p Holm = 0.071; "
        f"{power(ACC['dkd'], ACC['kd'])}); LS-KD and "
        f"Hinton KD could not be told apart (-1.50 pp [-4.26, +1.26], p Holm = 0.18; {power(ACC['lskd'], ACC['kd'])}).")
    assert "1.15 pp" in power(ACC["lskd"], ACC["ce"])  # LS-KD − CE: −1, +1, −1, +1 pp
    # by hand: DKD − KD differs by 0.01, 0.02, 0.01, 0.03 (mean 1.75 pp, its interval from _hand); its p 0.035
    # doubled by Holm over the two methods against KD (LS-KD's 0.18 is the larger): 0.071, not below 0.05
    dkd = table.set_index("method").loc["DKD"]
    _, low, high = _hand(ACC["dkd"], ACC["kd"])
    assert (100 * dkd["vs_kd_low"], 100 * dkd["vs_kd_high"]) == pytest.approx((100 * low, 100 * high))
    assert dkd["vs_kd_p_holm"] == pytest.approx(2 * dkd["vs_kd_p"])
    none = method_table(_frame()[lambda f: f["loss"].isin(["ce", "lskd"])], ["lskd"])
    assert method_sentence(none).startswith("Against CE (difference in pp, 95 % paired t interval, p Holm-corrected "
                                            "over 1 method, n=4 shared seeds): LS-KD and CE could not be told apart")
    assert method_sentence(method_table(_frame()[lambda f: f["kind"] != "finalist"], ["kd"])).startswith(
        "The methods cannot be compared with CE yet")


def test_a_method_that_helped_where_kd_did_not_is_not_called_better_than_kd() -> None:
    # the case: DKD significant against CE, Hinton KD not, and DKD − KD's interval contains 0
    acc = {"ce": [0.80, 0.82, 0.81, 0.79], "kd": [0.82, 0.815, 0.825, 0.79], "dkd": [0.815, 0.83, 0.822, 0.801]}
    frame = _frame()
    for method, accs in acc.items():
        for seed, a in enumerate(accs, start=1):
            frame.loc[(frame["kind"] == "finalist") & (frame["loss"] == method) & (frame["seed"] == seed),
                      "test_acc"] = a
    sentence = method_sentence(method_table(frame[frame["loss"] != "lskd"], ["kd", "dkd"]))
    mean, low, high = _hand(acc["dkd"], acc["kd"])  # +0.45 pp, an interval around 0
    assert low < 0 < high
    assert "DKD helped over CE" in sentence and "Hinton KD and CE could not be told apart" in sentence
    assert (f"DKD and Hinton KD could not be told apart ({100 * mean:+.2f} pp [{100 * low:+.2f}, {100 * high:+.2f}]"
            in sentence)
    assert "better than" not in sentence


def test_method_cells_take_each_cells_best_lr_mean() -> None:
    rows = []
    for t, w, lr, accs in ((2.0, 1.0, 1e-3, [0.80, 0.82]), (2.0, 1.0, 3e-3, [0.83, 0.85]),
                           (4.0, 1.0, 1e-3, [0.70, 0.72]), (2.0, 9.0, 1e-3, [0.90, 0.90])):
        for acc in accs:
            rows.append({"kind": "lskd", "state": "complete", "temperature": t, "alpha": None, "lr": lr,
                         "params": f'{{"ce_weight": 0.1, "kd_weight": {w}}}', "val_acc": acc})
    cells = method_cells(pd.DataFrame(rows), "lskd")
    assert list(cells.columns) == ["T", "kd_weight", "val_mean", "val_sd", "n", "best_lr"]  # ce_weight is fixed
    assert cells.iloc[0].tolist() == pytest.approx([2.0, 9.0, 0.90, 0.0, 2, 1e-3])
    t2 = cells[(cells["T"] == 2.0) & (cells["kd_weight"] == 1.0)].iloc[0]
    assert (t2["val_mean"], t2["best_lr"]) == pytest.approx((0.84, 3e-3))  # the better lr's mean, not the best run
    assert len(cells) == 3


def test_the_cost_note_flags_noisy_timings() -> None:
    from kdbench.report.cost import cost_note, cost_table

    steady = pd.DataFrame([{"kind": k, "state": "complete", "wall_time_s": t, "loss": k, "finished": i, "run_id": i}
                           for i, (k, t) in enumerate([("ce", 1.0), ("ce", 1.1), ("ce", 1.05), ("kd", 1.2),
                                                       ("kd", 1.3), ("kd", 1.25)])])
    assert cost_note(steady) == ""
    table = cost_table(steady, 60.0).set_index(["arm", "stage"])
    assert table.loc[("Hinton KD", "search"), "vs_ce"] == pytest.approx(1.25 / 1.05)
    assert table.loc[("teacher", "training, once"), "total_s"] == 60.0
    busy = steady.assign(wall_time_s=[1.0, 4.0, 1.05, 1.2, 1.3, 1.25])  # one CE trial ran on a loaded machine
    assert "Timings are noisy" in cost_note(busy) and "CE trial" in cost_note(busy)


def test_the_method_table_flags_an_ece_over_twice_the_best_baselines() -> None:
    from kdbench.report.methods import method_ece

    calib = pd.DataFrame({"arm": ["teacher", "CE student", "KD student", "DKD student"],
                          "ece_mean": [0.5, 0.045, 0.08, 0.67]})
    table = method_ece(method_table(_frame(), ["kd", "dkd", "lskd"]), calib).set_index("method")
    assert table["ece_mean"].tolist()[:2] == [0.08, 0.67] and math.isnan(table.loc["LS-KD", "ece_mean"])
    # 0.08 < 2 × 0.045 = 0.09 < 0.67; LS-KD has no stored logits; CE is the baseline itself
    assert table["ece_flag"].tolist() == [False, True, False, False]

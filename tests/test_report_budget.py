"""The budget axis's statistics on fixed frames, each against a hand computation: per-epoch rank correlation,
the pruner's warning, the transfer check (rank correlation, winner's rank, gap, sentence) and KD − CE per budget."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from kdbench.report.budget import (
    budget_labels,
    budget_table,
    epoch_rank_correlation,
    main_runs,
    pruner_warnings,
    spearman_interval,
    transfer,
)

CONFIG = {"name": "b", "student": {"model": "mlp-800", "epochs": 3, "batch_size": 128},
          "search": {"temperature": [1, 2, 4, 8, 16], "alpha": [0.5], "budget": None},
          "finalists": {"budget": {"epochs": 15, "steps": None}, "probe": 4}}


def _hand_spearman(x: list[float], y: list[float]) -> float:
    """1 − 6 Σd² / (n (n² − 1)) on the ranks: Spearman's formula for data without ties."""
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    n = len(x)
    return 1 - 6 * float(((rx - ry) ** 2).sum()) / (n * (n * n - 1))


def _run(run_id: int, kind: str, state: str = "complete", **kw: object) -> dict:
    return {"run_id": run_id, "visit": f"v{run_id}", "kind": kind, "loss": kw.pop("loss", kind), "state": state,
            "budget": "3 epochs", "temperature": None, "alpha": None, "lr": 1e-3, "params": None, "rank": None,
            "epochs_done": 3, **kw}


# ---------------------------------------------------------------------------------------------- per epoch

# six KD trials of 3 epochs: epoch 1 ranks the final one loosely, epoch 2 exactly (no ties anywhere)
E1 = [0.50, 0.62, 0.55, 0.70, 0.63, 0.61]
E2 = [0.60, 0.70, 0.66, 0.80, 0.68, 0.69]
FINAL = [0.70, 0.81, 0.78, 0.90, 0.79, 0.80]


def _trials(pruned_at: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    runs = [_run(i, "kd") for i in range(6)]
    epochs = [{"run_id": i, "epoch": e, "val_acc": v} for i in range(6) for e, v in enumerate((E1[i], E2[i], FINAL[i]))]
    if pruned_at is not None:  # two trials the pruner stopped after epoch `pruned_at` (no final value)
        runs += [_run(10 + j, "kd", "pruned", epochs_done=pruned_at) for j in range(2)]
        epochs += [{"run_id": 10 + j, "epoch": 0, "val_acc": 0.4} for j in range(2)]
    return pd.DataFrame(runs), pd.DataFrame(epochs)


def test_each_epochs_rank_correlation_with_the_final_one_matches_the_hand_computation() -> None:
    runs, epochs = _trials(pruned_at=1)
    out = epoch_rank_correlation(runs, epochs)
    assert list(out["epoch"]) == [1, 2] and set(out["epochs"]) == {3} and set(out["stage"]) == {"kd"}
    assert list(out["n"]) == [6, 6]  # complete trials only: the pruned ones have no final value
    # by hand: epoch 1 ranks (0, 3, 1, 5, 4, 2) vs final (0, 4, 1, 5, 2, 3): d² = 0+1+0+0+4+1 = 6
    assert _hand_spearman(E1, FINAL) == pytest.approx(1 - 6 * 6 / (6 * 35))
    assert out["rho"].iloc[0] == pytest.approx(_hand_spearman(E1, FINAL))
    assert out["rho"].iloc[1] == pytest.approx(1.0) == _hand_spearman(E2, FINAL)
    # a perfect ranking: every resample that has a ρ has ρ = 1, so the interval is [1, 1]
    assert (out["ci_low"].iloc[1], out["ci_high"].iloc[1]) == pytest.approx((1.0, 1.0))
    lo, hi = out["ci_low"].iloc[0], out["ci_high"].iloc[0]
    assert lo <= out["rho"].iloc[0] <= hi <= 1.0
    again = epoch_rank_correlation(runs, epochs)  # seeded: the same interval every time
    assert (again["ci_low"].iloc[0], again["ci_high"].iloc[0]) == (lo, hi)


def test_the_pruner_is_warned_about_where_it_acted_on_a_low_correlation() -> None:
    runs, epochs = _trials(pruned_at=1)
    rho = epoch_rank_correlation(runs, epochs)
    low = rho.copy()
    low.loc[low["epoch"] == 1, "rho"] = 0.5  # as if epoch 1 ranked the final one poorly
    [warning] = pruner_warnings(runs, low, "median")
    assert "The median pruner stopped 2 KD trials after epoch 1" in warning and "ρ = 0.50" in warning
    assert "n = 6 complete trials" in warning
    assert pruner_warnings(runs, rho, "median") == []  # the measured ρ (0.83) is above the floor: no warning
    late, _ = _trials(pruned_at=2)
    assert pruner_warnings(late, rho, "median") == []  # epoch 2 ranks it perfectly
    assert pruner_warnings(_trials()[0], low, "none") == []  # nothing pruned, nothing to warn about


def _step_grid(epochs: pd.DataFrame) -> pd.DataFrame:
    """The same trials as :func:`_trials` validated on ``student.eval_every: 100``'s grid of a 300-step run in
    one epoch: three points, at steps 100, 200 and 300 (``epoch`` numbers the point, as the store keeps it)."""
    return epochs.assign(steps=100 * (epochs["epoch"] + 1))


def test_on_a_step_grid_each_point_is_named_by_its_step() -> None:
    runs, epochs = _trials()
    points = _step_grid(epochs)
    out = epoch_rank_correlation(runs, points, eval_every=100)
    assert list(out["step"]) == [100, 200] and set(out["steps"]) == {300}
    assert out["rho"].tolist() == pytest.approx([_hand_spearman(E1, FINAL), 1.0])  # the same ranking as by epoch
    by_epoch = epoch_rank_correlation(runs, points)  # without eval_every: epochs, no steps
    assert by_epoch["step"].isna().all() and by_epoch["rho"].tolist() == out["rho"].tolist()


def test_on_a_step_grid_the_pruner_is_warned_at_the_step_it_stopped() -> None:
    """A trial pruned at its second point (step 200) of a one-epoch run stored epochs_done = 1: the warning names
    step 200 and that point's ρ, not epoch 1's."""
    runs, epochs = _trials()
    runs = pd.concat([runs, pd.DataFrame([_run(10 + j, "kd", "pruned", epochs_done=1) for j in range(2)])])
    epochs = pd.concat([epochs, pd.DataFrame([{"run_id": 10 + j, "epoch": e, "val_acc": 0.4} for j in range(2)
                                              for e in (0, 1)])])
    points = _step_grid(epochs)
    rho = epoch_rank_correlation(runs, points, eval_every=100)
    low = rho.assign(rho=[0.9, 0.5])  # as if step 200 ranked the final accuracy poorly, step 100 well
    [warning] = pruner_warnings(runs, low, "median", points)
    assert warning.startswith("The median pruner stopped 2 KD trials after step 200, where accuracy ranks the "
                              "final one only with Spearman ρ = 0.50") and "epoch" not in warning
    assert pruner_warnings(runs, rho, "median", points) == []  # step 200 ranks it perfectly
    assert pruner_warnings(runs, low, "median") == []  # read as epochs, it would be epoch 1's ρ (0.9): no warning


def test_the_budget_table_and_figure_say_steps_on_a_step_grid_and_epochs_otherwise(tmp_path: Path) -> None:
    from report_db import make_db

    from kdbench.report import figures
    from kdbench.report.frames import study_frames
    from kdbench.report.tables import epoch_rho_display

    url = f"sqlite:///{tmp_path / 'known.db'}"
    make_db(url)
    known = study_frames(url, "known", load_images=False)
    runs, epochs = _trials()
    on_steps = dataclasses.replace(known, config={**known.config, "student": {**known.config["student"],
                                                                               "eval_every": 100}},
                                   epoch_rho=epoch_rank_correlation(runs, _step_grid(epochs), eval_every=100))
    on_epochs = dataclasses.replace(known, epoch_rho=epoch_rank_correlation(runs, epochs))
    shown = epoch_rho_display(on_steps)
    assert list(shown.columns[:3]) == ["arm", "budget", "step"] and list(shown["step"]) == ["100 of 300",
                                                                                             "200 of 300"]
    assert set(shown["arm"]) == {"KD"}
    assert list(epoch_rho_display(on_epochs)["epoch"]) == ["1 of 3", "2 of 3"]
    for sf, unit, label, ticks in ((on_steps, "step", "optimiser step", [100, 200]), (on_epochs, "epoch", "epoch",
                                                                                        [1, 2])):
        right = figures.budget(sf).axes[1]
        assert right.get_title().startswith(f"Does an early {unit} rank the final one?")
        assert right.get_xlabel() == label and list(right.get_xticks()) == ticks
    empty = dataclasses.replace(on_steps, epoch_rho=epoch_rank_correlation(runs.iloc[:0], epochs))
    assert "recorded two evaluation points" in figures.left_out(empty)["budget"]
    assert "recorded two epochs" in figures.left_out(dataclasses.replace(on_epochs, epoch_rho=empty.epoch_rho))[
        "budget"]


def test_a_spearman_interval_needs_five_pairs_and_a_varying_side() -> None:
    rho, lo, hi = spearman_interval(np.array([1.0, 2, 3, 4]), np.array([1.0, 3, 2, 4]))
    assert rho == pytest.approx(stats.spearmanr([1, 2, 3, 4], [1, 3, 2, 4]).statistic) and math.isnan(lo)
    assert math.isnan(hi)
    assert all(math.isnan(v) for v in spearman_interval(np.array([1.0, 1, 1, 1, 1]), np.arange(5.0)))


# ---------------------------------------------------------------------------------------------- transfer

# five KD cells (T = 1 .. 16): search value (2 replicate seeds) and value at 15 epochs (3 finalist seeds)
SEARCH = {1: (0.80, 0.82), 2: (0.84, 0.86), 4: (0.88, 0.90), 8: (0.86, 0.88), 16: (0.82, 0.84)}
FULL = {1: (0.85, 0.86, 0.87), 2: (0.89, 0.90, 0.91), 4: (0.90, 0.91, 0.92), 8: (0.93, 0.94, 0.95),
        16: (0.86, 0.87, 0.88)}


def _transfer_runs(full: dict[int, tuple[float, ...]]) -> pd.DataFrame:
    rows, i = [], 0
    search_rank = {t: r for r, t in enumerate(sorted(SEARCH, key=lambda t: -sum(SEARCH[t])))}
    for t, values in SEARCH.items():
        for r, v in enumerate(values):
            rows.append(_run(i, "kd", temperature=float(t), alpha=0.5, val_acc=v, seed=1000 + r))
            i += 1
    for r, v in enumerate((0.80, 0.80)):  # CE in the search
        rows.append(_run(i, "ce", val_acc=v, seed=1000 + r))
        i += 1
    for t, values in full.items():
        kind = "finalist" if search_rank[t] == 0 else "probe"
        for s, v in enumerate(values):
            rows.append(_run(i, kind, loss="kd", temperature=float(t), alpha=0.5, val_acc=v, seed=1 + s,
                             rank=search_rank[t], budget="15 epochs", epochs_done=15))
            i += 1
    for s, v in enumerate((0.88, 0.89, 0.90)):
        rows.append(_run(i, "finalist", loss="ce", val_acc=v, seed=1 + s, rank=0, budget="15 epochs"))
        i += 1
    return pd.DataFrame(rows)


def test_transfer_statistics_match_the_hand_computation() -> None:
    t = transfer(_transfer_runs(FULL), CONFIG, "kd")
    table = t.table
    assert list(table["config"]) == ["T=4 α=0.5 lr=0.001", "T=8 α=0.5 lr=0.001", "T=2 α=0.5 lr=0.001",
                                     "T=16 α=0.5 lr=0.001", "T=1 α=0.5 lr=0.001"]  # search order
    assert list(table["search_rank"]) == [1, 2, 3, 4, 5] and list(table["search_n"]) == [2] * 5
    assert list(table["full_n"]) == [3] * 5
    assert table["search_val"].tolist() == pytest.approx([0.89, 0.87, 0.85, 0.83, 0.81])
    assert table["full_val"].tolist() == pytest.approx([0.91, 0.94, 0.90, 0.87, 0.86])
    assert list(table["full_rank"]) == [2, 1, 3, 4, 5]
    # Spearman by hand: search ranks 1..5 vs full ranks (2, 1, 3, 4, 5): d² = 1 + 1 = 2 -> 1 - 12/120 = 0.9
    assert t.rho == pytest.approx(0.9) == _hand_spearman([-1, -2, -3, -4, -5], [-2, -1, -3, -4, -5])
    assert t.ci_low <= t.rho <= t.ci_high
    # the winner (T=4) is 2nd at full budget; the best (T=8) beats it by 0.03 on every seed
    assert t.winner_rank == 2 and t.gap.n == 3 and t.gap.mean == pytest.approx(0.03)
    assert "2nd of 5" in t.sentence and "3.00 pp" in t.sentence


def test_the_transfer_sentence_says_holds_does_not_hold_or_cannot_tell() -> None:
    config = CONFIG
    # the winner is also best at full budget and the ranking is perfect: holds
    same = {t: tuple(v + 0.05 for v in (*SEARCH[t], SEARCH[t][1])) for t in SEARCH}
    same = {t: (v[0], v[1] + 0.001 * k, v[2]) for k, (t, v) in enumerate(same.items())}
    held = transfer(_transfer_runs(same), config)
    assert held.winner_rank == 1 and held.rho == pytest.approx(1.0)
    assert held.sentence.startswith("The short trials' ranking holds at 15 epochs (3 epochs in the search)")
    # the winner is behind the best by 3 pp with spread: a paired interval above 0 -> does not hold
    behind = {**FULL, 8: (0.93, 0.945, 0.95)}
    lost = transfer(_transfer_runs(behind), config)
    assert lost.gap.ci_low > 0 and lost.sentence.startswith("The short trials' ranking does not hold at 15 epochs")
    # three configurations: too few to measure
    few = transfer(_transfer_runs({t: FULL[t] for t in (1, 4, 8)}), config)
    assert few.sentence.startswith("Whether the short trials' ranking holds at 15 epochs (3 epochs in the search) "
                                   "cannot be told") \
        and "too few for an interval" in few.sentence
    none = transfer(_transfer_runs({4: FULL[4]}), config)
    assert "cannot be measured: 1 configuration was trained there" in none.sentence


def test_kd_minus_ce_at_both_budgets_is_paired_by_seed() -> None:
    table = budget_table(_transfer_runs(FULL), CONFIG)
    assert list(table["budget"]) == ["3 epochs", "15 epochs"]
    search, full = table.iloc[0], table.iloc[1]
    # the search: the best cell T=4 (0.88, 0.90) against CE (0.80, 0.80): +0.08, +0.10 -> mean 0.09, n = 2
    assert search["best_cell"] == "T=4 α=0.5 lr=0.001" and search["n"] == 2
    assert search["diff"] == pytest.approx(0.09)
    half = stats.t.ppf(0.975, 1) * np.std([0.08, 0.10], ddof=1) / math.sqrt(2)
    assert (search["ci_low"], search["ci_high"]) == pytest.approx((0.09 - half, 0.09 + half))
    # 15 epochs: the best configuration there (T=8: .93 .94 .95) against the CE finalist (.88 .89 .90): +0.05 each
    assert full["best_cell"] == "T=8 α=0.5 lr=0.001" and full["n"] == 3 and full["diff"] == pytest.approx(0.05)


def test_budget_labels_and_the_runs_other_sections_read() -> None:
    labels = budget_labels({"name": "b", "student": {"steps": 200}, "search": {}, "finalists": {}})
    assert (labels.search, labels.selection, labels.finalists, labels.longer) == (["200 steps"], "200 steps",
                                                                                   "200 steps", False)
    axis = {"name": "b", "student": {"epochs": 3}, "search": {"budget": [{"epochs": 3}, {"epochs": 1}]},
            "finalists": {"budget": {"epochs": 15}}}
    labels = budget_labels(axis)
    assert labels.search == ["1 epoch", "3 epochs"] and labels.selection == "3 epochs" and labels.longer
    runs = pd.DataFrame([_run(0, "kd", budget="1 epoch"), _run(1, "kd", budget="3 epochs"),
                         _run(2, "probe", loss="kd", budget="15 epochs"), _run(3, "finalist", budget="15 epochs")])
    assert list(main_runs(runs, axis)["run_id"]) == [1, 3]  # the selection budget's search, and the finalists

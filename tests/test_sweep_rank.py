"""The one ranking of configurations (kdbench.sweep.rank), by hand on a fixed frame: replicate means, a missing
replicate, a NaN, ties; the report's best lr per cell and a method's cells read it, so they agree with the
planner by construction."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from kdbench.report.effects import RUN_COLUMNS, best_lr_cells
from kdbench.report.methods import method_cells
from kdbench.sweep.rank import best_per_cell, rank_configs, ranked_configs, replicate_mean


def _run(t: float, a: float, lr: float, r: int, acc: float | None, kind: str = "kd") -> dict[str, object]:
    visit = f"kd/T={t:g}/a={a:g}/lr={lr:g}/r={r}" if kind == "kd" else f"ce/lr={lr:g}/r={r}"
    return {"visit": visit, "kind": kind, "state": "complete", "temperature": t if kind == "kd" else None,
            "alpha": a if kind == "kd" else None, "lr": lr, "params": None, "val_acc": acc, "seed": r}


# cell (T=2, a=0.5): lr 0.01 -> (0.5 + 1.0 + 0.75) / 3 = 0.75; lr 0.001 -> (0.625 + 0.875) / 2 = 0.75, replicate 2
#   missing: a tie (exact: binary fractions), which goes to the smaller lr, 0.001
# cell (T=1, a=0.5): lr 0.01 -> (1.0 + NaN + 0.5) / 2 = 0.75 (the NaN left out, n = 2): ties with T=2's 0.75 and
#   ranks before it (smaller T); lr 0.001 -> NaN (no accuracy at all): last
# cell (T=4, a=0.5): lr 0.01 -> (0.75 + 1.0 + 0.875) / 3 = 0.875: the best
RUNS = [
    _run(2, 0.5, 0.01, 0, 0.5), _run(2, 0.5, 0.01, 1, 1.0), _run(2, 0.5, 0.01, 2, 0.75),
    _run(2, 0.5, 0.001, 0, 0.625), _run(2, 0.5, 0.001, 1, 0.875),
    _run(1, 0.5, 0.01, 0, 1.0), _run(1, 0.5, 0.01, 1, math.nan), _run(1, 0.5, 0.01, 2, 0.5),
    _run(1, 0.5, 0.001, 0, None),
    _run(4, 0.5, 0.01, 0, 0.75), _run(4, 0.5, 0.01, 1, 1.0), _run(4, 0.5, 0.01, 2, 0.875),
]


def test_replicate_mean_is_exactly_rounded_and_leaves_unset_values_out() -> None:
    assert replicate_mean([0.1, 0.2, 0.3]) == (0.6 / 3, 3)  # fsum: 0.6 exactly rounded, not 0.6000000000000001
    assert replicate_mean([0.3, 0.2, 0.1])[0] == replicate_mean([0.1, 0.2, 0.3])[0]  # any order: one value
    assert replicate_mean([0.5, None, math.nan, 0.7]) == (0.6, 2)
    mean, n = replicate_mean([None, math.nan])
    assert math.isnan(mean) and n == 0


def test_rank_configs_by_hand() -> None:
    ranked = rank_configs(RUNS)
    got = [(dict(c.cell)["temperature"], c.lr, c.n) for c in ranked]
    assert got == [(4, 0.01, 3), (1, 0.01, 2), (2, 0.001, 2), (2, 0.01, 3), (1, 0.001, 0)]
    assert [c.mean for c in ranked[:4]] == [0.875, 0.75, 0.75, 0.75]  # exact ties, broken by T, then lr
    assert math.isnan(ranked[4].mean)
    assert ranked[0].row is RUNS[9] and ranked[1].values == (1.0, 0.5)
    assert [(dict(c.cell)["temperature"], c.lr) for c in best_per_cell(ranked)] == [(4, 0.01), (1, 0.01),
                                                                                    (2, 0.001)]
    flipped = rank_configs(reversed(RUNS))  # row order changes no mean and no rank
    assert [(c.cell, c.lr, c.n) for c in flipped] == [(c.cell, c.lr, c.n) for c in ranked]
    assert [c.mean for c in flipped[:4]] == [c.mean for c in ranked[:4]]


def test_the_planners_rows() -> None:
    rows = ranked_configs(RUNS, "kd", grid=True)
    assert [(r["cell"], r["lr"]) for r in rows] == [("kd/T=4/a=0.5", 0.01), ("kd/T=1/a=0.5", 0.01),
                                                    ("kd/T=2/a=0.5", 0.001)]
    assert rows[0]["val_acc"] == 0.875 and rows[0]["visit"] == RUNS[9]["visit"]
    trials = [{**r, "trial_number": i} for i, r in enumerate(RUNS[:3])]
    assert [r["trial_number"] for r in ranked_configs(trials, "kd", grid=False)] == [1, 2, 0]
    assert ranked_configs(RUNS, "ce", grid=True) == []


def test_the_report_ranks_as_the_planner() -> None:
    runs = [*RUNS, _run(0, 0, 0.01, 0, 0.5, "ce"), _run(0, 0, 0.01, 1, 0.75, "ce"),
            _run(0, 0, 0.001, 0, 0.625, "ce"), _run(0, 0, 0.001, 1, 0.625, "ce")]  # CE: a tie, to the smaller lr
    frame = pd.DataFrame(runs).rename(columns={"kind": "stage"})[list(RUN_COLUMNS)]
    cells = best_lr_cells(frame).cells
    best = {(r.stage, None if r.stage == "ce" else r.temperature): r.best_lr for r in cells.itertuples()}
    assert best == {("kd", 1.0): 0.01, ("kd", 2.0): 0.001, ("kd", 4.0): 0.01, ("ce", None): 0.001}
    shown = method_cells(pd.DataFrame(RUNS), "kd")
    planned = ranked_configs(RUNS, "kd", grid=True)
    assert list(zip(shown["T"], shown["best_lr"], shown["val_mean"], strict=True)) == [
        (r["temperature"], r["lr"], r["val_acc"]) for r in planned]
    assert list(shown["n"]) == [3, 2, 2] and shown["val_sd"].iloc[1] == pytest.approx(math.sqrt(0.125))

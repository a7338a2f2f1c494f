"""The optimisation history of report/cost.py against a hand computation on a fixed frame."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from kdbench.report.cost import curve_axis, curve_points, finalist_curves, optimisation_history, trial_curves
from kdbench.report.figures import one_evaluation


def test_history_tracks_the_best_replicate_mean_of_configurations_with_all_their_seeds() -> None:
    # (kind, T, lr, seed, val_acc) in the order they finished; two seeds per configuration
    rows = [("kd", 1.0, 1e-3, 0, 0.90), ("kd", 2.0, 1e-3, 0, 0.70), ("ce", None, 1e-3, 0, 0.80),
            ("kd", 1.0, 1e-3, 1, 0.60), ("kd", 2.0, 1e-3, 1, 0.72), ("ce", None, 1e-3, 1, 0.82),
            ("kd", 4.0, 1e-3, 0, 0.99), ("kd", 4.0, 1e-3, 1, 0.75)]
    runs = pd.DataFrame([{"kind": k, "state": "complete", "temperature": t, "alpha": 0.5 if k == "kd" else None,
                          "lr": lr, "params": None, "budget": None, "seed": sd, "val_acc": v, "run_id": i,
                          "finished": pd.Timestamp("2026-01-01") + pd.Timedelta(seconds=i)}
                         for i, (k, t, lr, sd, v) in enumerate(rows)])
    runs = pd.concat([runs, runs.iloc[:1].assign(kind="finalist", val_acc=0.99, run_id=99)], ignore_index=True)
    h = optimisation_history(runs)
    kd = h[h["kind"] == "kd"]
    # by hand: T=1 full after its 2nd seed (0.75); T=2 full (0.71) keeps 0.75; T=4 full at 0.87
    assert kd["val_acc"].tolist() == [0.90, 0.70, 0.60, 0.72, 0.99, 0.75]
    best = kd["best_so_far"].tolist()
    assert math.isnan(best[0]) and math.isnan(best[1])
    assert best[2:] == pytest.approx([0.75, 0.75, 0.75, 0.87])  # the single 0.99 draw is not a result
    ce = h[h["kind"] == "ce"]
    assert math.isnan(ce["best_so_far"].iloc[0]) and ce["best_so_far"].iloc[1] == pytest.approx(0.81)
    assert set(h["n"]) == {2} and len(h) == 8  # finalists are not search trials


def _points(steps: list[int]) -> pd.DataFrame:
    """Two CE and two KD finalists (rank 0) and one KD search trial, each stored at ``steps``."""
    rows = []
    for run_id, (kind, loss, seed) in enumerate([("finalist", "ce", 0), ("finalist", "ce", 1), ("finalist", "kd", 0),
                                                 ("finalist", "kd", 1), ("kd", "kd", 0)]):
        for i, st in enumerate(steps):
            rows.append({"run_id": run_id, "visit": f"v{run_id}", "kind": kind, "loss": loss, "seed": seed,
                         "rank": 0 if kind == "finalist" else None, "epoch": i, "steps": st,
                         "train_loss": 2.0 - 0.1 * i - 0.05 * seed, "val_acc": 0.5 + 0.1 * i + 0.02 * seed,
                         "val_loss": 1.0, "seconds": 1.0, "lr": 1e-3})
    return pd.DataFrame(rows)


def test_a_step_grid_draws_several_points_per_run_at_their_steps() -> None:
    """eval_every 3 on 10 steps: four points per run at x = 3, 6, 9, 10; mean and sd over seeds by hand."""
    points = curve_points(_points([3, 6, 9, 10]), eval_every=3)
    finals = pd.DataFrame({"run_id": [0, 1, 2, 3], "rank": [0, 0, 0, 0]})
    curves = finalist_curves(points, finals)
    ce = curves[curves["loss"] == "ce"]
    assert ce["x"].tolist() == [3.0, 6.0, 9.0, 10.0] and ce["n"].tolist() == [2] * 4
    assert ce["val_mean"].tolist() == pytest.approx([0.51, 0.61, 0.71, 0.81])
    assert ce["val_sd"].tolist() == pytest.approx([0.02 / math.sqrt(2)] * 4)  # sd of (a, a + 0.02)
    assert ce["loss_mean"].tolist() == pytest.approx([1.975, 1.875, 1.775, 1.675])
    runs = pd.DataFrame({"run_id": [0, 1, 2, 3, 4], "kind": ["finalist"] * 4 + ["kd"], "state": ["complete"] * 5})
    trials = trial_curves(points, runs)
    assert trials["x"].tolist() == [3.0, 6.0, 9.0, 10.0] and set(trials["state"]) == {"complete"}
    assert not one_evaluation(curves, "loss") and not one_evaluation(trials, "run_id")
    assert curve_axis(3) == "optimiser step"


def test_without_a_step_grid_the_curves_stay_on_epochs() -> None:
    """The default (one point per epoch) and rows stored before steps were kept: x is the epoch from 1."""
    old = _points([469, 938]).assign(steps=None)
    for frame in (old, _points([469, 938])):
        assert curve_points(frame, eval_every=None)["x"].tolist()[:2] == [1.0, 2.0]
    assert curve_axis(None) == "epoch"
    once = curve_points(_points([200]), eval_every=None)  # the quick study: one evaluation, at the end
    assert one_evaluation(finalist_curves(once, pd.DataFrame({"run_id": [0, 1, 2, 3], "rank": [0] * 4})), "loss")

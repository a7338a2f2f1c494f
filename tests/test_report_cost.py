"""The optimisation history of report/cost.py against a hand computation on a fixed frame."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from kdbench.report.cost import optimisation_history


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

"""The baseline the verdict compares KD with: the better on validation, CE on a tie, CE alone unremarked."""

from __future__ import annotations

import pandas as pd

from kdbench.report.baselines import Baseline, best_baseline

LS = '{"label_smoothing": 0.1}'


def _finalists(*rows: tuple[str, int, float, str | None]) -> pd.DataFrame:
    return pd.DataFrame([{"loss": loss, "rank": rank, "val_mean": val, "params": params, "n": 5}
                         for loss, rank, val, params in rows])


def test_the_better_baseline_on_validation_is_chosen_and_said() -> None:
    kd = ("kd", 0, 0.95, None)  # never a baseline, however good
    b = best_baseline(_finalists(kd, ("ce", 0, 0.8412, None), ("ce_ls", 0, 0.8450, LS)))
    assert (b.loss, b.name) == ("ce_ls", "CE+LS")
    assert b.sentence == (" The baseline is CE+LS, the better on validation of CE (84.12 %, n=5) and CE+LS (label "
                          "smoothing 0.1) (84.50 %, n=5) (the finalists' mean validation accuracy over their seeds; "
                          "the test set chose nothing).")
    assert best_baseline(_finalists(kd, ("ce", 0, 0.85, None), ("ce_ls", 0, 0.85, LS))).loss == "ce"  # a tie: CE
    assert best_baseline(_finalists(("ce", 0, 0.80, None), ("ce_ls", 1, 0.99, LS))).loss == "ce"  # rank 0 only


def test_ce_alone_adds_nothing_and_label_smoothing_alone_says_why() -> None:
    assert best_baseline(_finalists(("kd", 0, 0.9, None), ("ce", 0, 0.8, None))) == Baseline("ce", "CE", "")
    assert best_baseline(_finalists(("kd", 0, 0.9, None))) == Baseline("ce", "CE", "")
    only = best_baseline(_finalists(("ce_ls", 0, 0.8, LS)))
    assert only == Baseline("ce_ls", "CE+LS", " The baseline is CE+LS (label smoothing 0.1): baseline.ce is off.")

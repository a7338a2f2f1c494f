"""ECE, NLL and the reliability bins against a hand computation on fixed arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kdbench.report.calibration import calibration, decode_logits, ece, nll, reliability_bins

PROBS = np.array([[0.9, 0.1], [0.58, 0.42], [0.3, 0.7], [0.55, 0.45]])
LABELS = np.array([0, 1, 1, 0])
LOGITS = np.log(PROBS)  # softmax(log p) = p


def test_ece_and_nll_by_hand() -> None:
    # top-class confidence 0.9 (right), 0.58 (wrong), 0.7 (right), 0.55 (right); 15 bins of width 1/15:
    # 0.58 and 0.55 share (8/15, 9/15] = (0.533, 0.6]: accuracy 0.5, confidence 0.565; 0.9 and 0.7 are alone
    expected = (2 * abs(0.5 - 0.565) + abs(1 - 0.9) + abs(1 - 0.7)) / 4
    assert ece(LOGITS, LABELS) == pytest.approx(expected)
    assert nll(LOGITS, LABELS) == pytest.approx(-(math.log(0.9) + math.log(0.42) + math.log(0.7) + math.log(0.55)) / 4)
    bins = reliability_bins(LOGITS, LABELS)
    assert len(bins) == 15 and bins["count"].sum() == 4
    assert bins.loc[8, ["count", "accuracy", "confidence"]].tolist() == pytest.approx([2, 0.5, 0.565])
    assert bins.loc[13, "count"] == 1 and bins.loc[10, "count"] == 1


def test_a_perfectly_calibrated_set_has_zero_ece() -> None:
    # ten samples at confidence 0.8, eight of them right
    logits = np.log(np.tile([0.8, 0.2], (10, 1)))
    labels = np.array([0] * 8 + [1] * 2)
    assert ece(logits, labels) == pytest.approx(0.0, abs=1e-12)


def test_calibration_per_arm_and_decoding() -> None:
    blob = LOGITS.astype(np.float16).tobytes()
    decoded = decode_logits(blob, 4)
    assert decoded is not None and decoded.shape == (4, 2)
    assert decode_logits(None, 4) is None and decode_logits(blob[:-2], 4) is None
    table = calibration({"teacher": [LOGITS], "KD": [LOGITS, np.log(np.tile([0.8, 0.2], (4, 1)))]}, LABELS)
    t, kd = table.iloc[0], table.iloc[1]
    assert t["n"] == 1 and math.isnan(t["ece_sd"]) and t["ece_mean"] == pytest.approx(ece(LOGITS, LABELS))
    second = ece(np.log(np.tile([0.8, 0.2], (4, 1))), LABELS)  # 4 at 0.8, 2 right: |0.5 - 0.8|
    assert second == pytest.approx(0.3)
    assert kd["n"] == 2 and kd["ece_mean"] == pytest.approx((ece(LOGITS, LABELS) + 0.3) / 2)
    assert kd["ece_sd"] == pytest.approx(np.std([ece(LOGITS, LABELS), 0.3], ddof=1))


def test_an_arm_with_more_than_twice_the_baselines_ece_is_named() -> None:
    import pandas as pd

    from kdbench.report.calibration import calibration_flags
    from kdbench.report.methods import method_sentence

    table = pd.DataFrame({"arm": ["teacher", "CE student", "KD student", "DIST student"],
                          "ece_mean": [0.50, 0.045, 0.08, 0.67], "ece_sd": [None, 0.01, 0.01, 0.02],
                          "nll_mean": [1.0, 0.3, 0.3, 2.2], "nll_sd": [None] * 4, "n": [1, 5, 5, 5]})
    flag = calibration_flags(table)
    assert flag == ("Calibration: DIST student (ECE 67.0 %, n=5) more than 2× the CE student's ECE (4.5 %): its "
                    "accuracy comes with badly calibrated probabilities.")  # 0.08 < 2 × 0.045; the teacher is not held
    assert calibration_flags(table[table["arm"] != "CE student"]) == ""
    # held against the best of several baselines: a label-smoothed CE at 2.0 % makes KD's 8 % more than twice it
    smoothed = pd.concat([table, pd.DataFrame({"arm": ["CE+LS student"], "ece_mean": [0.02], "n": [5]})])
    assert calibration_flags(smoothed, ("CE student", "CE+LS student")) == (
        "Calibration: KD student (ECE 8.0 %, n=5), DIST student (ECE 67.0 %, n=5) more than 2× the best baseline's, "
        "the CE+LS student's ECE (2.0 %): its accuracy comes with badly calibrated probabilities.")
    empty = pd.DataFrame(columns=["method", "vs_ce_n"])
    assert method_sentence(empty, table).endswith(flag)


def test_ece_after_temperature_scaling_per_arm_by_hand() -> None:
    # the KD arm's two runs: the first has a fitted T of 2 (its logits halved), the second none stored
    second = np.log(np.tile([0.8, 0.2], (4, 1)))
    table = calibration({"teacher": [LOGITS], "KD": [LOGITS, second]}, LABELS,
                        {"KD": [2.0, None]}).set_index("arm")
    assert table.loc["KD", "n"] == 2 and table.loc["KD", "n_ts"] == 1
    assert table.loc["KD", "ece_ts_mean"] == pytest.approx(ece(LOGITS / 2, LABELS))
    assert math.isnan(table.loc["KD", "ece_ts_sd"]) and table.loc["KD", "t_mean"] == 2.0
    assert table.loc["teacher", "n_ts"] == 0 and math.isnan(table.loc["teacher", "ece_ts_mean"])
    # by hand: p ∝ sqrt(p) after halving the log-probabilities. Row 1: sqrt(.9)/(sqrt(.9)+sqrt(.1)) = 0.75,
    # right; row 2: sqrt(.58) vs sqrt(.42) -> 0.5403 (class 0), wrong; row 3: 0.6046 (class 1), right;
    # row 4: 0.5249 (class 0), right
    conf = [np.sqrt(0.9) / (np.sqrt(0.9) + np.sqrt(0.1)), np.sqrt(0.58) / (np.sqrt(0.58) + np.sqrt(0.42)),
            np.sqrt(0.7) / (np.sqrt(0.7) + np.sqrt(0.3)), np.sqrt(0.55) / (np.sqrt(0.55) + np.sqrt(0.45))]
    edges = np.linspace(0, 1, 16)
    which = [int(np.searchsorted(edges, c) - 1) for c in conf]  # (lo, hi] bins
    right = [1, 0, 1, 1]
    expected = 0.0
    for b in set(which):
        members = [i for i in range(4) if which[i] == b]
        expected += len(members) / 4 * abs(np.mean([right[i] for i in members]) - np.mean([conf[i] for i in members]))
    assert table.loc["KD", "ece_ts_mean"] == pytest.approx(expected)


def test_the_flag_gives_the_ece_after_temperature_scaling_where_fitted() -> None:
    import pandas as pd

    from kdbench.report.calibration import calibration_flags

    table = pd.DataFrame({"arm": ["CE student", "DIST student"], "ece_mean": [0.045, 0.67], "ece_sd": [0.01, 0.02],
                          "nll_mean": [0.3, 2.2], "nll_sd": [None] * 2, "n": [5, 5], "ece_ts_mean": [0.02, 0.031]})
    assert "DIST student (ECE 67.0 %, n=5; 3.1 % after temperature scaling)" in calibration_flags(table)

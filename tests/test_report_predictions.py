"""The stored test predictions' statistics in a report: teacher agreement, McNemar, per-class change."""

from __future__ import annotations

import math

import pytest
from report_db import KD_TEST, make_db

from kdbench.report.frames import study_frames


@pytest.fixture
def known(db_url: str) -> str:
    make_db(db_url)
    return db_url


def test_fidelity_from_stored_predictions(known: str, needs_fmnist: None) -> None:
    """Teacher agreement, McNemar and per-class change recomputed by hand from report_db's stored predictions and
    Fashion-MNIST's test labels; the comparison's McNemar p is the median over seeds."""
    import numpy as np
    from report_db import _predictions
    from scipy.stats import binomtest, chi2

    f = study_frames(known, "known")
    labels = f.predictions.table["label"]  # the grid's images: their labels are the dataset's
    assert len(labels) == 24 and f.fidelity.notes == []
    from kdbench.data import load_raw

    _, _, test, _ = load_raw("fashion-mnist", download=False)
    y = test.labels.numpy()
    assert (y[f.predictions.table["index"]] == labels).all()
    teacher = np.frombuffer(_predictions(0, 9), dtype=np.int16)
    rows = f.fidelity.seeds.set_index("seed")
    ps = []
    for seed in sorted(KD_TEST):
        kd, ce = (np.frombuffer(_predictions(seed, shift), dtype=np.int16) for shift in (True, False))
        b, c = int(((ce == y) & (kd != y)).sum()), int(((kd == y) & (ce != y)).sum())
        r = rows.loc[seed]
        assert (r["ce_only"], r["kd_only"]) == (b, c)
        p = chi2.sf((abs(b - c) - 1) ** 2 / (b + c), 1) if b + c >= 25 else binomtest(b, b + c).pvalue
        assert r["mcnemar_p"] == pytest.approx(p) and r["mcnemar_exact"] == (b + c < 25)
        assert r["ce_agree"] == pytest.approx(float((teacher == ce).mean()))
        assert r["kd_agree"] == pytest.approx(float((teacher == kd).mean()))
        ps.append(p)
    assert f.arms.set_index("arm").loc["KD student", "mcnemar_p"] == pytest.approx(float(np.median(ps)))
    pc = f.fidelity.per_class.set_index("class")
    assert pc.loc[9, "name"] == "Ankle boot" and (pc["n_images"] == 1000).all() and (pc["n_seeds"] == 5).all()
    hand = np.mean([(np.frombuffer(_predictions(s, True), dtype=np.int16)[y == 4] == 4).mean()
                    - (np.frombuffer(_predictions(s, False), dtype=np.int16)[y == 4] == 4).mean() for s in KD_TEST])
    assert pc.loc[4, "delta"] == pytest.approx(hand)


def test_fidelity_without_labels_still_gives_agreement(known: str) -> None:
    f = study_frames(known, "known", load_images=False)
    assert f.fidelity.seeds["ce_agree"].notna().all() and f.fidelity.seeds["mcnemar_p"].isna().all()
    assert f.fidelity.per_class.empty and any("test labels unavailable (not loaded)" in n for n in f.fidelity.notes)
    assert math.isnan(f.arms.set_index("arm").loc["KD student", "mcnemar_p"])

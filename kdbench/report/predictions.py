"""What the best finalists' stored test predictions show: the prediction grid and the students' fidelity.

:func:`prediction_grid` picks the test images the report draws (the first ones, then the first where the
CE and KD students of one seed disagree) and counts every disagreement; :func:`fidelity` computes, for
every seed both best finalists share, each student's top-1 agreement with the teacher, McNemar's test
of KD against CE on the test images and the per-class change KD − CE (paired by seed, then averaged),
with :mod:`kdbench.report.stats`. Both are pure functions of what :mod:`kdbench.report.sources` read
(predictions are the stored int16 argmax, labels the dataset's); whatever is missing becomes a note.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pandas as pd

from kdbench.report.sources import PredictionSources, TeacherSource
from kdbench.report.stats import agreement, mcnemar_test, per_class_delta

__all__ = ["FIDELITY_COLUMNS", "PREDICTION_IMAGES", "Fidelity", "Predictions", "fidelity", "prediction_grid"]

PREDICTION_IMAGES = 24  # test images in the prediction grid (half the first ones, half disagreements)
FIDELITY_COLUMNS = ["seed", "ce_acc", "kd_acc", "ce_only", "kd_only", "mcnemar_p", "mcnemar_exact", "ce_agree",
                    "kd_agree"]


@dataclass
class Predictions:
    """The prediction grid: chosen test images with label and each model's prediction.

    Attributes:
        table: one row per image: ``index`` (in the test split), ``label``, ``teacher``, ``ce``, ``kd``
            (class indices; -1 where that model's predictions are missing).
        images: ``uint8 [k, C, H, W]`` test images in the table's order, or None when the data is missing.
        classes: class names by index.
        seed: the finalist seed whose predictions are shown.
        notes: what is missing.
        n_disagree: test images where that seed's CE and KD students disagree (0 when unknown).
        n_test: test images compared (0 when unknown).
    """

    table: pd.DataFrame
    images: npt.NDArray[np.uint8] | None
    classes: list[str]
    seed: int | None
    notes: list[str] = field(default_factory=list)
    n_disagree: int = 0
    n_test: int = 0


@dataclass
class Fidelity:
    """What the best finalists' stored test predictions say beyond accuracy, per seed both have.

    Attributes:
        seeds: one row per shared seed (``FIDELITY_COLUMNS``): CE's and KD's accuracy recomputed from the
            predictions, the discordant images (``ce_only``: CE right and KD wrong; ``kd_only``: the reverse) with
            McNemar's p-value and whether it was exact, and each student's top-1 agreement with the teacher.
            Accuracies and McNemar are NaN without the test labels, agreements NaN without the teacher's predictions.
        per_class: :func:`~kdbench.report.stats.per_class_delta` with the class ``name``; empty without labels.
        notes: what is missing.
    """

    seeds: pd.DataFrame
    per_class: pd.DataFrame
    notes: list[str] = field(default_factory=list)


def _decode(blob: bytes | None) -> npt.NDArray[np.int16] | None:
    return None if blob is None else np.frombuffer(blob, dtype=np.int16)


def prediction_grid(src: PredictionSources, teacher: TeacherSource | None) -> Predictions:
    """The first half of the test images, then those where KD and CE disagree; notes say what is missing."""
    empty = pd.DataFrame(columns=["index", "label", "teacher", "ce", "kd"])
    if src.seed is None:
        return Predictions(empty, None, src.classes, None, ["no seed with both a KD and a CE finalist yet"])
    kd_p, ce_p = _decode(src.kd), _decode(src.ce)
    t_p = _decode(teacher.test_predictions) if teacher is not None else None
    notes = [] if t_p is not None else ["teacher test predictions missing"]
    if kd_p is None or ce_p is None:
        return Predictions(empty, None, src.classes, src.seed, [*notes, "finalist test predictions missing"])
    if not src.load_images:
        return Predictions(empty, None, src.classes, src.seed, [*notes, "test images not loaded"])
    if src.test is None:
        reason = (src.test_error or "not read").splitlines()[0]
        return Predictions(empty, None, src.classes, src.seed, [*notes, f"test images unavailable: {reason}"])
    labels = src.test.labels
    n = len(labels)
    if any(p is not None and len(p) != n for p in (kd_p, ce_p, t_p)):
        return Predictions(empty, None, src.test.classes, src.seed,
                           [*notes, f"stored predictions do not match the {n} test images found"])
    half = PREDICTION_IMAGES // 2
    first = list(range(min(half, n)))
    disagree = [int(i) for i in np.flatnonzero(kd_p != ce_p) if i >= half][: PREDICTION_IMAGES - len(first)]
    idx = np.array(first + disagree, dtype=np.int64)
    table = pd.DataFrame({"index": idx, "label": labels[idx].astype(int),
                          "teacher": t_p[idx].astype(int) if t_p is not None else -1,
                          "ce": ce_p[idx].astype(int), "kd": kd_p[idx].astype(int)})
    return Predictions(table, src.test.images[idx], src.test.classes, src.seed, notes,
                       n_disagree=int((kd_p != ce_p).sum()), n_test=n)


def fidelity(src: PredictionSources, teacher: TeacherSource | None) -> Fidelity:
    """Teacher agreement, McNemar and the per-class change of every seed with both students' predictions."""
    empty = Fidelity(pd.DataFrame(columns=FIDELITY_COLUMNS), pd.DataFrame())
    seeds = sorted(set(src.kd_by_seed) & set(src.ce_by_seed))
    if not seeds:
        empty.notes.append("no seed has stored test predictions of both a complete CE and KD finalist yet")
        return empty
    kd = {sd: np.asarray(_decode(src.kd_by_seed[sd])) for sd in seeds}
    ce = {sd: np.asarray(_decode(src.ce_by_seed[sd])) for sd in seeds}
    n = len(kd[seeds[0]])
    if any(len(p) != n for p in (*kd.values(), *ce.values())):
        empty.notes.append("the finalists' stored predictions differ in length: not comparable")
        return empty
    notes: list[str] = []
    t_p = _decode(teacher.test_predictions) if teacher is not None else None
    if t_p is None or len(t_p) != n:
        notes.append("teacher test predictions missing or of another length: no teacher agreement")
        t_p = None
    labels = src.test.labels if src.test is not None else None
    if labels is None or len(labels) != n:
        why = "not loaded" if not src.load_images else (
            (src.test_error or "").splitlines()[0] if src.test_error else f"not {n} images")
        notes.append(f"test labels unavailable ({why}): no per-class change or McNemar test")
        labels = None
    rows = []
    for sd in seeds:
        m = mcnemar_test(labels, kd[sd], ce[sd]) if labels is not None else None
        rows.append({"seed": sd,
                     "ce_acc": agreement(ce[sd], labels) if labels is not None else math.nan,
                     "kd_acc": agreement(kd[sd], labels) if labels is not None else math.nan,
                     "ce_only": m.ce_only if m else math.nan, "kd_only": m.kd_only if m else math.nan,
                     "mcnemar_p": m.p_value if m else math.nan, "mcnemar_exact": m.exact if m else None,
                     "ce_agree": agreement(t_p, ce[sd]) if t_p is not None else math.nan,
                     "kd_agree": agreement(t_p, kd[sd]) if t_p is not None else math.nan})
    per_class = pd.DataFrame()
    if labels is not None:
        names = src.test.classes if src.test is not None and src.test.classes else src.classes
        n_classes = max(len(names), int(labels.max()) + 1)
        per_class = per_class_delta(labels, kd, ce, n_classes)
        per_class.insert(1, "name", [names[c] if c < len(names) else str(c) for c in per_class["class"]])
    return Fidelity(pd.DataFrame(rows, columns=FIDELITY_COLUMNS), per_class, notes)

"""Which baseline the verdict compares KD with: of the baseline arms' finalists (CE, and CE with label smoothing,
``baseline.label_smoothing``), the one with the best mean validation accuracy, chosen like everything else
before the test set is read.

A KD gain over plain CE is often partly label smoothing's (Yuan et al., CVPR 2020, "Revisiting knowledge
distillation via label smoothing regularization"), so a study that trains both baselines is judged against the
stronger on validation. A study with CE alone keeps CE and says nothing more: its report is the one it always was.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from kdbench.report.methods import arm_label

__all__ = ["BASELINES", "Baseline", "best_baseline"]

BASELINES = ("ce", "ce_ls")  # the baseline arms, each named as everywhere else (:func:`arm_label`)


@dataclass(frozen=True)
class Baseline:
    """The baseline the verdict compares KD with.

    Attributes:
        loss: its arm, ``ce`` or ``ce_ls``.
        name: as the verdict names it (``CE``, ``CE+LS``).
        sentence: why it was chosen, with the validation accuracies and n it was chosen on; ``""`` when CE is the
            only baseline with finalists.
    """

    loss: str
    name: str
    sentence: str


def best_baseline(finalists: pd.DataFrame) -> Baseline:
    """The baseline arm whose best (rank 0) finalist has the highest mean validation accuracy (CE on a tie).

    Args:
        finalists: the store's finalist summary (:meth:`kdbench.store.Store.finalist_summary`: ``loss``, ``rank``,
            ``params``, ``val_mean``, ``n``).

    Returns:
        The chosen baseline; CE (with no sentence) when no baseline arm has a complete finalist yet.
    """
    rows = finalists[finalists["loss"].isin(BASELINES) & (finalists["rank"] == 0)]
    if rows.empty:
        return Baseline("ce", "CE", "")
    rows = rows.assign(_tie=rows["loss"] != "ce").sort_values(["val_mean", "_tie"], ascending=[False, True])
    best = rows.iloc[0]
    loss = str(best["loss"])
    name = arm_label(loss)
    if len(rows) == 1:
        return Baseline(loss, name, "" if loss == "ce" else f" The baseline is {arm_label(loss, best['params'])}: "
                                                            "baseline.ce is off.")
    accs = " and ".join(f"{arm_label(str(r['loss']), r['params'])} ({100 * r['val_mean']:.2f} %, "
                        f"n={int(r['n'])})" for _, r in rows.sort_values("loss").iterrows())
    return Baseline(loss, name, f" The baseline is {name}, the better on validation of {accs} (the finalists' mean "
                                "validation accuracy over their seeds; the test set chose nothing).")

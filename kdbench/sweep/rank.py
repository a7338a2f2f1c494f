"""Configurations ranked by validation accuracy: the one ranking the sweep plans from (finalists, the lr
extension) and the report shows (each cell's best lr, a method's cells, "as the finalists were chosen").

A *configuration* is a method's parameters, lr included; its *cell* the same without the lr. A grid trains each
configuration on the same replicate seeds, and its value is the replicate mean of validation accuracy. The mean
is ``math.fsum`` over the replicates there, divided by their number: the sum exactly rounded, so it does not
depend on the order the rows were read in, and two readers of the same runs (a worker's plain rows, the
report's DataFrame) rank them alike by construction. A replicate missing, or without a validation accuracy,
is left out (``n`` says how many were there); a configuration with none has a NaN mean and ranks last.
Equal means go to the smaller parameters: the cell's in their order (T, α, then the method's others by
name), then the smaller lr.

Plain rows in (:meth:`kdbench.store.Store.run_records`, or a DataFrame's ``to_dict("records")``), so that a
sweep worker ranks without pandas.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kdbench.store import RunRecord, cell_key, is_unset, run_values

__all__ = ["Cell", "Ranked", "best_per_cell", "rank_configs", "ranked_configs", "replicate_mean"]

Cell = tuple[tuple[str, float], ...]  # a configuration's parameters but lr, (name, value) in their order


@dataclass(frozen=True)
class Ranked:
    """One configuration's replicates.

    Attributes:
        cell: its parameters but lr, ``(name, value)`` in their order (empty for CE).
        lr: its learning rate (None where the runs have none).
        mean: the replicate mean of validation accuracy (see the module docstring); NaN when ``n == 0``.
        n: the replicates with a validation accuracy.
        values: those accuracies, in row order (for a spread).
        row: the configuration's first run, in row order.
    """

    cell: Cell
    lr: float | None
    mean: float
    n: int
    values: tuple[float, ...]
    row: RunRecord


def replicate_mean(values: Iterable[Any]) -> tuple[float, int]:
    """The mean of the set values (None and NaN left out) with ``math.fsum``, and how many there were;
    ``(nan, 0)`` when none is set."""
    kept = [float(v) for v in values if not is_unset(v)]
    return (math.fsum(kept) / len(kept) if kept else math.nan), len(kept)


def rank_configs(runs: Iterable[RunRecord]) -> list[Ranked]:
    """Every configuration of the runs (of one method: their parameters are the same names), best first.

    Args:
        runs: plain rows with ``val_acc`` and a run's parameters (``temperature``, ``alpha``, ``lr``, ``params``;
            see :func:`kdbench.store.run_values`).

    Returns:
        One :class:`Ranked` per configuration: highest mean first, NaN last, equal means by smaller parameters.
    """
    rows: dict[tuple[Cell, float | None], list[RunRecord]] = {}
    for r in runs:
        values = run_values(r)
        lr = values.pop("lr", None)
        rows.setdefault((tuple(values.items()), lr), []).append(r)
    ranked = []
    for (cell, lr), group in rows.items():
        accs = tuple(float(r["val_acc"]) for r in group if not is_unset(r["val_acc"]))
        mean, n = replicate_mean(accs)
        ranked.append(Ranked(cell, lr, mean, n, accs, group[0]))
    return sorted(ranked, key=lambda c: (*_descending(c.mean), c.cell, *_ascending(c.lr)))


def best_per_cell(ranked: list[Ranked]) -> list[Ranked]:
    """Each cell's best configuration (its best lr), best cell first: :func:`rank_configs`' order kept."""
    best: dict[Cell, Ranked] = {}
    for c in ranked:
        best.setdefault(c.cell, c)
    return list(best.values())


def ranked_configs(done: Iterable[RunRecord], method: str, grid: bool) -> list[dict[str, Any]]:
    """The planner's view: the configurations of one method (or ce) among the runs, best first, as rows.

    A grid: one row per cell at its best lr (:func:`best_per_cell`), the first run's with ``val_acc`` the
    replicate mean and ``cell`` its key (:func:`kdbench.store.cell_key`). A range search (each trial its own
    configuration): its trials by validation accuracy, a missing one last, ties by trial number.
    """
    runs = [r for r in done if r["kind"] == method]
    if not grid:
        return sorted((dict(r) for r in runs),
                      key=lambda r: (*_descending(r["val_acc"]), *_ascending(r.get("trial_number"))))
    return [{**c.row, "val_acc": c.mean, "cell": cell_key(c.row["visit"])} for c in best_per_cell(rank_configs(runs))]


def _descending(value: Any) -> tuple[bool, float]:
    """A sort key: larger first, unset last."""
    return (True, 0.0) if is_unset(value) else (False, -float(value))


def _ascending(value: Any) -> tuple[bool, float]:
    """A sort key: smaller first, unset last."""
    return (True, 0.0) if is_unset(value) else (False, float(value))

"""What a sweep tells a display: progress over every worker's runs, and hooks for each event."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from kdbench.config import Study
from kdbench.store import Store
from kdbench.sweep.plan import BASELINES, Visit, planned_total
from kdbench.train import EpochRecord

__all__ = ["TERMINAL", "Progress", "SweepEvents", "study_progress"]

TERMINAL = ("complete", "pruned", "failed")  # run states after which a visit is never run again


@dataclass(frozen=True)
class Progress:
    """Where the whole study stands, over every worker's runs (for progress displays)."""

    done: int  # planned visits that are final (complete, pruned or failed)
    total: int  # planned visits, search and finalists, and the lr extension's once it is decided
    counts: dict[str, int]  # runs by state, retired attempts included
    best: dict[str, float]  # best validation accuracy so far, by stage (kd, ce)
    running: list[tuple[str, int]]  # (visit, epochs done) of the runs in progress
    steps: bool = False  # validation on student.eval_every's step grid: a run's epochs done are not its points


def study_progress(store: Store, study: Study, study_id: int | None = None) -> Progress:
    """Count the study's final visits and find its best validation accuracies so far."""
    if study_id is None:
        row = store.study(study.name)
        rows = [] if row is None else store.run_states(row.id)
    else:
        rows = store.run_states(study_id)
    counts: dict[str, int] = {}
    best: dict[str, float] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
        if r.state == "complete" and r.kind in ("kd", "ce") and r.val_acc is not None:
            best[r.kind] = max(best.get(r.kind, -math.inf), r.val_acc)
    arms = {*BASELINES, *study.search.methods}
    search_rows = sum(1 for r in rows if "#" not in r.visit and r.kind in arms)
    extended = max(0, search_rows - study.search_visits)  # search runs beyond the plan: the lr extension's
    return Progress(
        done=sum(1 for r in rows if "#" not in r.visit and r.state in TERMINAL), total=planned_total(study) + extended,
        counts=counts, best=best,
        running=[(str(r.visit), int(r.epochs_done or 0)) for r in rows if r.state == "running"],
        steps=study.student.eval_every is not None)


@dataclass
class SweepEvents:
    """Hooks for progress displays; every one is optional."""

    on_progress: Callable[[Progress], None] = lambda p: None
    on_visit_start: Callable[[Visit, dict[str, float]], None] = lambda v, p: None
    on_epoch: Callable[[EpochRecord, int], None] = lambda r, total: None
    on_teacher_epoch: Callable[[EpochRecord, int], None] | None = None  # None: on_epoch's
    # a point of student.eval_every's step grid, with the run's optimiser steps (None: on_epoch's, with its epochs)
    on_step_point: Callable[[EpochRecord, int], None] | None = None
    on_visit_end: Callable[[Visit, str, float | None, str | None], None] = lambda v, state, acc, note: None
    on_status: Callable[[str], None] = lambda msg: None
    on_log: Callable[[str], None] = lambda line: None  # a line from another process (worker output)

    def teacher_epoch(self, rec: EpochRecord, total: int) -> None:
        """One epoch of the teacher's training (its own hook when given, else :attr:`on_epoch`)."""
        (self.on_teacher_epoch or self.on_epoch)(rec, total)

    def student_point(self, rec: EpochRecord, epochs: int, steps: int | None) -> None:
        """One evaluation point of a student's run: with ``steps`` (validation on ``student.eval_every``'s step
        grid: the run's optimiser steps) :attr:`on_step_point` when given, else :attr:`on_epoch` with ``epochs``."""
        if steps is not None and self.on_step_point is not None:
            self.on_step_point(rec, steps)
        else:
            self.on_epoch(rec, epochs)

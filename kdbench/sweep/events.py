"""What a sweep tells a display: progress over every worker's runs, and hooks for each event."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kdbench.config import Study
from kdbench.store import Store
from kdbench.sweep.plan import Visit, planned_total
from kdbench.train import EpochRecord

__all__ = ["TERMINAL", "Progress", "SweepEvents", "study_progress"]

TERMINAL = ("complete", "pruned", "failed")  # run states after which a visit is never run again


@dataclass(frozen=True)
class Progress:
    """Where the whole study stands, over every worker's runs (for progress displays)."""

    done: int  # planned visits that are final (complete, pruned or failed)
    total: int  # planned visits, search and finalists
    counts: dict[str, int]  # runs by state, retired attempts included
    best: dict[str, float]  # best validation accuracy so far, by stage (kd, ce)
    running: list[tuple[str, int]]  # (visit, epochs done) of the runs in progress


def study_progress(store: Store, study: Study) -> Progress:
    """Count the study's final visits and find its best validation accuracies so far."""
    runs = store.runs(study.name)
    planned = ~runs["visit"].str.contains("#", regex=False)
    ok = runs[(runs["state"] == "complete") & runs["kind"].isin(["kd", "ce"])]
    live = runs[runs["state"] == "running"]
    return Progress(
        done=int((planned & runs["state"].isin(TERMINAL)).sum()), total=planned_total(study),
        counts={str(k): int(v) for k, v in runs["state"].value_counts().items()},
        best={str(k): float(v) for k, v in ok.groupby("kind")["val_acc"].max().items()},
        running=[(str(v), int(e)) for v, e in zip(live["visit"], live["epochs_done"], strict=True)])


@dataclass
class SweepEvents:
    """Hooks for progress displays; every one is optional."""

    on_progress: Callable[[Progress], None] = lambda p: None
    on_visit_start: Callable[[Visit, dict[str, float]], None] = lambda v, p: None
    on_epoch: Callable[[EpochRecord, int], None] = lambda r, total: None
    on_visit_end: Callable[[Visit, str, float | None, str | None], None] = lambda v, state, acc, note: None
    on_status: Callable[[str], None] = lambda msg: None
    on_log: Callable[[str], None] = lambda line: None  # a line from another process (worker output)

"""What a sweep shows while it runs: two live lines (rich), or one plain line per finished trial (--quiet).

The live lines: the whole study (visits done/total over every worker, an ETA from this session's pace,
the best validation accuracy so far, the trial now running) and the epochs of the current trial (its optimiser
steps where validation runs on ``student.eval_every``'s step grid).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from kdbench.sweep import Progress, SweepEvents, Visit
from kdbench.train import EpochRecord

__all__ = ["describe_params", "sweep_display"]


def describe_params(params: dict[str, float]) -> str:
    """``T=4 α=0.5 lr=0.00123`` for a trial's parameters."""
    names = {"temperature": "T", "alpha": "α", "lr": "lr"}
    return " ".join(f"{names.get(k, k)}={v:.3g}" for k, v in params.items())


def _best(p: Progress) -> str:
    return "  ".join(f"best {k.upper()} val {a:.2%}" for k, a in sorted(p.best.items(), reverse=True))


class _Pace:
    """ETA from the visits finished since this display started (other workers' included)."""

    def __init__(self) -> None:
        self.start: tuple[float, int] | None = None

    def eta(self, p: Progress) -> str:
        now = time.monotonic()
        if self.start is None:
            self.start = (now, p.done)
        t0, d0 = self.start
        if p.done <= d0 or p.done >= p.total:
            return "ETA -" if p.done < p.total else "done"
        s = (now - t0) / (p.done - d0) * (p.total - p.done)
        return f"ETA {int(s // 3600)}:{int(s % 3600 // 60):02d}:{int(s % 60):02d}"


@contextmanager
def sweep_display(quiet: bool, total_epochs: int | None = 1) -> Iterator[SweepEvents]:
    """Progress hooks for :func:`kdbench.sweep.run_sweep` (and the teacher's epochs).

    Args:
        quiet: plain lines (one per finished trial, each status once) instead of live lines.
        total_epochs: epochs of a student trial, for the epoch line (None: not known before the data are
            loaded, as when ``student.steps`` sets the budget; the first epoch tells).
    """
    state: dict[str, Any] = {"progress": None, "params": {}, "status": None}
    pace = _Pace()

    def remember(p: Progress) -> None:
        state["progress"] = p

    def start(v: Visit, params: dict[str, float]) -> None:
        state["params"] = params
        state.setdefault("by_visit", {})[v.key] = params  # a fused group starts all its visits first

    if quiet:
        def end(v: Visit, s: str, acc: float | None, note: str | None) -> None:
            val = f", val {acc:.4f}" if acc is not None else ""
            why = f" ({note})" if note and s != "complete" else ""
            line = f"{v.key}: {s}{val}  {describe_params(state.get('by_visit', {}).pop(v.key, {}))}{why}"
            if s == "interrupted":
                click.echo(line)
            else:
                state.setdefault("lines", []).append(line)

        def counted(p: Progress) -> None:  # follows the end of a visit (or of a fused group): study-wide count
            remember(p)
            for line in state.pop("lines", []):
                click.echo(f"[{p.done}/{p.total}] {line}")

        def status(msg: str) -> None:
            if msg != state["status"]:
                click.echo(msg)
                state["status"] = msg

        def teacher_epoch(r: EpochRecord, total: int) -> None:  # minutes each: a line per epoch
            click.echo(f"teacher epoch {r.epoch + 1}/{total}: train loss {r.train_loss:.4f}, val {r.val_acc:.2%} "
                       f"({r.seconds:.1f} s)")

        yield SweepEvents(on_progress=counted, on_visit_start=start, on_visit_end=end, on_status=status,
                          on_log=click.echo, on_teacher_epoch=teacher_epoch)
        return

    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Live

    with Live(TextColumn("{task.description:<7}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
              TextColumn("{task.fields[info]}"), transient=False) as bar:
        sweep_task = bar.add_task("sweep", total=None, info="", visible=False)
        epoch_task = bar.add_task("epochs", total=total_epochs, info="")

        def show() -> None:
            p: Progress | None = state["progress"]
            if p is None:
                return
            now = describe_params(state["params"]) if state["params"] else ", ".join(
                v if p.steps else f"{v} (epoch {e})" for v, e in p.running)  # on a step grid: no epoch count
            bar.update(sweep_task, total=p.total, completed=p.done, visible=True,
                       info=f"{pace.eta(p)}  {_best(p)}  now: {now}")

        def progress(p: Progress) -> None:
            remember(p)
            show()

        def start_live(v: Visit, params: dict[str, float]) -> None:
            start(v, params)
            bar.reset(epoch_task, total=total_epochs, description="epochs", info=f"{v.stage} {v.key}")
            show()

        def epoch(r: EpochRecord, total: int) -> None:
            bar.update(epoch_task, total=total, completed=r.epoch + 1,
                       info=f"train loss {r.train_loss:.4f}  val {r.val_acc:.2%}  ({r.seconds:.1f} s)")

        def step_point(r: EpochRecord, total: int) -> None:  # a point of the step grid: steps, not epochs
            bar.update(epoch_task, total=total, completed=r.steps, description="steps",
                       info=f"step {r.steps}: train loss {r.train_loss:.4f}  val {r.val_acc:.2%}  ({r.seconds:.1f} s)")

        def status(msg: str) -> None:
            bar.update(epoch_task, info=msg)

        def log(line: str) -> None:
            bar.console.print(line, markup=False, highlight=False)

        yield SweepEvents(on_progress=progress, on_visit_start=start_live, on_epoch=epoch, on_status=status,
                          on_log=log, on_step_point=step_point)

"""The plain (--quiet, non-terminal) progress lines: one per finished trial, fused groups included."""

from __future__ import annotations

import re

import pytest

from kdbench.progress import sweep_display
from kdbench.sweep.events import Progress
from kdbench.sweep.plan import Visit


def test_a_fused_group_prints_one_line_per_visit_with_its_own_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    visits = [Visit(f"kd/T={t}/a=0.5/lr=0.001/r=0", "kd", "kd", 1000, float(t), 0.5, 1e-3) for t in (1, 2, 4)]
    with sweep_display(quiet=True) as events:
        for v in visits:  # a fused group asks for every trial first, then trains them together
            events.on_visit_start(v, {"temperature": v.temperature or 0.0, "alpha": 0.5, "lr": 1e-3})
        for i, v in enumerate(visits):
            events.on_visit_end(v, "complete", 0.8 + i / 100, None)
        events.on_progress(Progress(done=3, total=9, counts={"complete": 3}, best={}, running=[]))
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"[3/9] kd/T={t}/a=0.5/lr=0.001/r=0: complete, val {0.8 + i / 100:.4f}  T={t} α=0.5 lr=0.001"
                     for i, t in enumerate((1, 2, 4))]


def test_the_teacher_prints_a_line_per_epoch(capsys: pytest.CaptureFixture[str]) -> None:
    from kdbench.train import EpochRecord

    with sweep_display(quiet=True) as events:
        events.teacher_epoch(EpochRecord(epoch=0, train_loss=0.5, val_acc=0.875, val_loss=0.4, seconds=12.0, lr=1e-3,
                                         steps=100), 3)
    assert capsys.readouterr().out == "teacher epoch 1/3: train loss 0.5000, val 87.50% (12.0 s)\n"


@pytest.mark.parametrize(("steps", "shown"), [
    (200, r"steps +\S+ +100/200 .*step 100: train loss 0\.5000  val 80\.00%"),
    (None, r"epochs +\S+ +1/1 .*train loss 0\.5000  val 80\.00%"),
])
def test_the_live_line_counts_steps_on_a_step_grid_and_epochs_otherwise(capsys: pytest.CaptureFixture[str],
                                                                        steps: int | None, shown: str) -> None:
    """With ``student.eval_every`` the first of two points of a 200-step, one-epoch run is step 100 of 200 (not
    epoch 1 of 1, a full bar halfway through); a run validated at epoch ends keeps its epoch count."""
    from kdbench.train import EpochRecord

    visit = Visit("ce/lr=0.001/r=0", "ce", "ce", 1000, None, None, 1e-3)
    with sweep_display(quiet=False, total_epochs=None) as events:
        events.on_visit_start(visit, {"lr": 1e-3})
        events.student_point(EpochRecord(epoch=0, train_loss=0.5, val_acc=0.8, val_loss=0.4, seconds=1.0, lr=1e-3,
                                         steps=100 if steps else 430), 1, steps)
    out = capsys.readouterr().out
    assert re.search(shown, out) and ("epoch" in out) == (steps is None), out


@pytest.mark.parametrize("steps", [True, False])
def test_the_running_visits_of_other_workers_show_an_epoch_count_only_at_epoch_ends(
        capsys: pytest.CaptureFixture[str], steps: bool) -> None:
    """A worker's run validated every N steps has stored 1 epoch done after its first point (step 100 of a
    430-step epoch): the line names the visit without an epoch count, which would read as a finished epoch."""
    with sweep_display(quiet=False) as events:
        events.on_progress(Progress(done=2, total=9, counts={"complete": 2, "running": 1}, best={},
                                    running=[("kd/T=2/a=0.5/lr=0.001/r=0", 1)], steps=steps))
    out = capsys.readouterr().out
    assert "now: kd/T=2/a=0.5/lr=0.001/r=0" in out and ("(epoch 1)" in out) != steps, out

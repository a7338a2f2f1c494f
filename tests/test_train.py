from __future__ import annotations

import pytest
import torch

from kdbench.config import Recipe, parse_study
from kdbench.data import load_data
from kdbench.errors import NonFiniteLossError
from kdbench.models import build_model
from kdbench.teacher import prepare_teacher
from kdbench.train import KDParams, LiveTeacher, eval_points, lr_factor, make_optimizer, make_scheduler, train


def _setup(study_dict: dict, tmp_path):  # type: ignore[no-untyped-def]
    study = parse_study(study_dict)
    data = load_data("fashion-mnist", val_fraction=0.05, subset=600, seed=0)
    teacher = prepare_teacher(study, cache_dir=tmp_path / "cache")
    return study, data, teacher


def _student(data):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    return build_model("mlp-800", in_channels=1, num_classes=10, image_size=28)


@pytest.mark.slow
def test_cached_logits_equal_live_teacher(needs_fmnist: None, tiny_study_dict: dict, tmp_path) -> None:
    study, data, teacher = _setup(tiny_study_dict, tmp_path)
    kd = KDParams(temperature=4.0, alpha=0.3)
    cached = train(_student(data), data, study.student, seed=3, teacher=teacher.signal_for(data), kd=kd,
                   keep_step_losses=True)
    live = train(_student(data), data, study.student, seed=3, teacher=LiveTeacher(teacher.model), kd=kd,
                 keep_step_losses=True)
    assert len(cached.step_losses) == len(live.step_losses) > 5
    torch.testing.assert_close(torch.tensor(cached.step_losses), torch.tensor(live.step_losses), atol=1e-5, rtol=0)
    assert cached.val_acc == pytest.approx(live.val_acc, abs=2e-3)


def test_same_seed_same_result_and_curves(needs_fmnist: None, tiny_study_dict: dict) -> None:
    study = parse_study(tiny_study_dict)
    data = load_data("fashion-mnist", val_fraction=0.05, subset=600, seed=0)
    a = train(_student(data), data, study.student, seed=1, keep_step_losses=True)
    b = train(_student(data), data, study.student, seed=1, keep_step_losses=True)
    assert a.step_losses == b.step_losses and a.val_acc == b.val_acc
    assert len(a.epochs) == 1 and a.samples_per_s > 0 and 0.3 < a.val_acc <= 1.0


@pytest.mark.slow
def test_non_finite_loss_names_the_step(needs_fmnist: None, tiny_study_dict: dict) -> None:
    study = parse_study(tiny_study_dict)
    data = load_data("fashion-mnist", val_fraction=0.05, subset=600, seed=0)
    model = _student(data)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"at step 0 \(epoch 0\)") as err:
        train(model, data, study.student, seed=0)
    assert err.value.step == 0


@pytest.mark.slow
def test_steps_budget_and_schedules(needs_fmnist: None, tiny_study_dict: dict) -> None:
    study = parse_study(tiny_study_dict)
    data = load_data("fashion-mnist", val_fraction=0.05, subset=600, seed=0)
    for sched, opt in [("cosine", "sgd"), ("step", "adamw"), ("constant", "adam")]:
        recipe = study.student.model_copy(
            update={"steps": 7, "schedule": sched, "optimizer": opt, "warmup_epochs": 0.5})
        res = train(_student(data), data, recipe, seed=0)
        assert res.steps == 7


# lr_factor's schedules at known steps, each value worked out by hand from the formulas in the comments.
# steps_per_epoch is 10 throughout, so warmup = round(warmup_epochs * 10) steps of (step + 1) / warmup.
_SCHEDULES = {
    # constant, no warm-up: 1 at every step
    "constant": (dict(schedule="constant"), 20, {0: 1.0, 10: 1.0, 19: 1.0}),
    # constant, warmup_epochs 0.5 -> warmup = 5: (0+1)/5 = 0.2, (2+1)/5 = 0.6, (4+1)/5 = 1, then 1
    "constant-warmup": (dict(schedule="constant", warmup_epochs=0.5), 20,
                        {0: 0.2, 2: 0.6, 4: 1.0, 5: 1.0, 19: 1.0}),
    # cosine, no warm-up, total 10: 0.5 * (1 + cos(pi * step / 10))
    #   step 0: 0.5 * (1 + 1) = 1; step 5: 0.5 * (1 + cos(pi/2)) = 0.5;
    #   step 9 (the last): 0.5 * (1 + cos(0.9 pi)) = 0.5 * (1 - 0.9510565162951535) = 0.024471741852423234
    "cosine": (dict(schedule="cosine"), 10, {0: 1.0, 5: 0.5, 9: 0.024471741852423234}),
    # cosine, warmup 5, total 25, so span = 20: warm-up 0.2 .. 1, then 0.5 * (1 + cos(pi * (step - 5) / 20))
    #   step 5 (start): 1; step 10: 0.5 * (1 + cos(pi/4)) = 0.5 * 1.7071067811865475 = 0.8535533905932737;
    #   step 15 (middle): 0.5 * (1 + cos(pi/2)) = 0.5;
    #   step 24 (the last): 0.5 * (1 + cos(0.95 pi)) = 0.5 * (1 - 0.9876883405951378) = 0.006155829702431115
    "cosine-warmup": (dict(schedule="cosine", warmup_epochs=0.5), 25,
                      {0: 0.2, 4: 1.0, 5: 1.0, 10: 0.8535533905932737, 15: 0.5, 24: 0.006155829702431115}),
    # step, the defaults: milestones (0.5, 0.75) of 100 steps = steps 50 and 75, gamma 0.1:
    #   1 up to step 49, 0.1 from 50 to 74, 0.1^2 = 0.01 from 75
    "step": (dict(schedule="step"), 100, {0: 1.0, 49: 1.0, 50: 0.1, 74: 0.1, 75: 0.01, 99: 0.01}),
    # step, milestones (0.3, 0.6, 0.9) of 20 steps = steps 6, 12, 18, gamma 0.5, warmup_epochs 0.2 -> warmup 2:
    #   (0+1)/2 = 0.5, (1+1)/2 = 1; 1 up to step 5, 0.5 from 6, 0.25 from 12, 0.125 from 18
    "step-warmup": (dict(schedule="step", step_milestones=(0.3, 0.6, 0.9), step_gamma=0.5, warmup_epochs=0.2), 20,
                    {0: 0.5, 1: 1.0, 2: 1.0, 5: 1.0, 6: 0.5, 11: 0.5, 12: 0.25, 17: 0.25, 18: 0.125, 19: 0.125}),
}


@pytest.mark.parametrize("name", list(_SCHEDULES))
def test_lr_factor_at_known_steps(name: str) -> None:
    fields, total, expected = _SCHEDULES[name]
    factor = lr_factor(Recipe(model="mlp-800", **fields), total, 10)
    got = {step: factor(step) for step in expected}
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("name", list(_SCHEDULES))
def test_scheduler_sets_base_lr_times_factor(name: str) -> None:
    fields, total, expected = _SCHEDULES[name]
    recipe = Recipe(model="mlp-800", **fields)
    base_lr = 0.3
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    sched = make_scheduler(opt, recipe, total, 10)
    factor = lr_factor(recipe, total, 10)
    seen = {}
    for step in range(total):  # the lr in force at optimiser step `step`, then one scheduler step per step
        lr = opt.param_groups[0]["lr"]
        assert lr == base_lr * factor(step), f"step {step}"
        if step in expected:
            seen[step] = lr
        opt.step()
        sched.step()
    assert seen == pytest.approx({s: base_lr * v for s, v in expected.items()}, rel=1e-12, abs=1e-15)


def test_eval_points_on_the_step_grid_and_at_epoch_ends() -> None:
    assert eval_points(36, 10, 3) == [3, 6, 9, 10]  # a run shorter than an epoch: the grid, then the end
    assert eval_points(36, 10) == [10]  # the default: once, at the end
    assert eval_points(9, 20) == [9, 18, 20]  # each epoch's end
    assert eval_points(9, 20, 6) == [6, 9, 12, 18, 20]  # the grid and the epoch ends, each once
    assert eval_points(9, 18, 20) == [9, 18]  # a grid wider than the run adds nothing


def test_eval_every_records_the_grid_and_leaves_the_run_unchanged(needs_fmnist: None) -> None:
    """Steps 10, eval_every 3: points at 3, 6, 9 and 10; the same steps, and the same final validation accuracy
    (what selection reads), as the run that evaluates once."""
    study = parse_study({"name": "g", "student": {"model": "mlp-800", "steps": 10, "batch_size": 16,
                                                  "eval_every": 3}})
    data = load_data("fashion-mnist", val_fraction=0.05, subset=600, seed=0)
    seen: list[int] = []
    grid = train(_student(data), data, study.student, seed=2, keep_step_losses=True,
                 eval_every=study.student.eval_every, callback=lambda r: seen.append(r.steps))
    once = train(_student(data), data, study.student, seed=2, keep_step_losses=True)
    assert [r.steps for r in grid.epochs] == seen == [3, 6, 9, 10]
    assert [r.point for r in grid.epochs] == [0, 1, 2, 3] and {r.epoch for r in grid.epochs} == {0}
    assert [r.steps for r in once.epochs] == [10] and once.epochs[0].point == 0
    assert grid.step_losses == once.step_losses and grid.steps == once.steps == 10
    assert (grid.val_acc, grid.val_loss) == (once.val_acc, once.val_loss)
    assert grid.epochs[-1].val_acc == once.epochs[-1].val_acc
    assert grid.epochs[0].train_loss == pytest.approx(sum(grid.step_losses[:3]) / 3)
    assert len({r.val_loss for r in grid.epochs}) == 4  # four real evaluations, not one copied


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_adam_runs_torchs_fused_kernel_on_float_parameters(optimizer: str) -> None:
    """Adam and AdamW take torch's fused step on the CPU's float parameters, and step them as the default loop
    does (to float tolerance); SGD keeps torch's default."""
    model = build_model("mlp-800", in_channels=1, num_classes=10, image_size=28)
    recipe = Recipe(model="mlp-800", optimizer=optimizer, weight_decay=1e-4)
    opt = make_optimizer(model, recipe, 1e-3)
    assert opt.defaults["fused"] is True
    loop = build_model("mlp-800", in_channels=1, num_classes=10, image_size=28)
    loop.load_state_dict(model.state_dict())
    ref = (torch.optim.Adam if optimizer == "adam" else torch.optim.AdamW)(loop.parameters(), lr=1e-3,
                                                                          weight_decay=1e-4)
    x = torch.randn(16, 1, 28, 28)
    for m, o in ((model, opt), (loop, ref)):
        for _ in range(3):
            o.zero_grad()
            m(x).square().mean().backward()
            o.step()
    for a, b in zip(model.parameters(), loop.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    assert make_optimizer(model, Recipe(model="mlp-800", optimizer="sgd"), 1e-3).defaults.get("fused") is None

from __future__ import annotations

import pytest
import torch

from kdbench.config import parse_study
from kdbench.data import load_data
from kdbench.errors import NonFiniteLossError
from kdbench.models import build_model
from kdbench.teacher import prepare_teacher
from kdbench.train import KDParams, LiveTeacher, train


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

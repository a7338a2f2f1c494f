"""Fused training of K students equals K sequential trainings with the same seed."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
import torch

from kdbench.config import parse_study
from kdbench.data import load_data
from kdbench.fused import FusedStudent, train_fused
from kdbench.models import build_model
from kdbench.train import CachedLogits, KDParams, TrainResult, train

STUDENTS = [  # (lr, T, alpha); None: cross-entropy
    (1e-3, 2.0, 0.5),
    (3e-3, 4.0, 0.1),
    (5e-4, None, None),
    (2e-3, 8.0, 0.0),
]


def _data():  # type: ignore[no-untyped-def]
    data = load_data("fashion-mnist", val_fraction=0.05, subset=600, seed=0)
    few = torch.arange(500)  # evaluation is not what is compared here: keep it short
    return dataclasses.replace(data, val=data.val.take(few), test=data.test.take(few))


def _teacher(data) -> CachedLogits:  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(7)  # any fixed logits will do: the comparison is fused vs sequential
    return CachedLogits((3 * torch.randn(1, len(data.train), 10, generator=gen)).half())


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(11)
    return build_model(name, in_channels=1, num_classes=10, image_size=28)


def _kd(t: float | None, a: float | None) -> KDParams | None:
    return None if t is None or a is None else KDParams(t, a)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "optimizer", "steps"), [("mlp-800", "adam", 12), ("cnn-s", "sgd", 8),
                                                          ("mlp-800", "adamw", 6)])
def test_fused_equals_sequential(needs_fmnist: None, name: str, optimizer: str, steps: int) -> None:
    data = _data()
    teacher = _teacher(data)
    study = parse_study({"name": "f", "student": {"model": name, "batch_size": 64, "steps": steps,
                                                  "optimizer": optimizer, "weight_decay": 1e-3,
                                                  "nesterov": True, "schedule": "cosine"}})
    recipe = study.student
    seq_models = [_model(name) for _ in STUDENTS]
    seq = [train(m, data, recipe, lr=lr, seed=3, teacher=teacher, kd=_kd(t, a), keep_step_losses=True,
                 evaluate_test=True) for m, (lr, t, a) in zip(seq_models, STUDENTS, strict=True)]
    fused_models = [_model(name) for _ in STUDENTS]
    out = train_fused(fused_models, data, recipe, [FusedStudent(lr, _kd(t, a)) for lr, t, a in STUDENTS],
                      seed=3, teacher=teacher, keep_step_losses=True, evaluate_test=True)
    for s, f, ms, mf in zip(seq, out, seq_models, fused_models, strict=True):
        assert isinstance(f, TrainResult)
        assert len(f.step_losses) == len(s.step_losses) == steps
        torch.testing.assert_close(torch.tensor(f.step_losses), torch.tensor(s.step_losses), rtol=1e-4, atol=1e-5)
        # Adam divides by sqrt(v) + 1e-8: where a gradient is ~0 (border pixels) float noise in it moves the
        # update by up to ~1e-5 per step, so weights get an absolute tolerance a little above that.
        for (key, ws), wf in zip(ms.state_dict().items(), mf.state_dict().values(), strict=True):
            torch.testing.assert_close(wf, ws, rtol=1e-4, atol=1e-4, msg=key)
        assert f.val_acc == pytest.approx(s.val_acc, abs=2e-3) and f.test_acc == pytest.approx(s.test_acc, abs=2e-3)
        assert [e.lr for e in f.epochs] == pytest.approx([e.lr for e in s.epochs])


@pytest.mark.slow
def test_fused_students_evaluate_on_the_step_grid_as_sequential_runs(needs_fmnist: None) -> None:
    """eval_every 4 on 10 steps (one epoch of 570 rows by 64): points at 4, 8 and 10, as train gives them."""
    data = _data()
    recipe = parse_study({"name": "f", "student": {"model": "mlp-800", "batch_size": 64, "steps": 10}}).student
    students = STUDENTS[:2]
    seq = [train(_model("mlp-800"), data, recipe, lr=lr, seed=3, teacher=_teacher(data), kd=_kd(t, a),
                 eval_every=4) for lr, t, a in students]
    out = train_fused([_model("mlp-800") for _ in students], data, recipe,
                      [FusedStudent(lr, _kd(t, a)) for lr, t, a in students], seed=3, teacher=_teacher(data),
                      eval_every=4)
    for s, f in zip(seq, out, strict=True):
        assert isinstance(f, TrainResult)
        assert [e.steps for e in f.epochs] == [e.steps for e in s.epochs] == [4, 8, 10]
        assert [e.point for e in f.epochs] == [0, 1, 2]
        assert [e.val_acc for e in f.epochs] == pytest.approx([e.val_acc for e in s.epochs], abs=2e-3)
        assert f.val_acc == f.epochs[-1].val_acc == pytest.approx(s.val_acc, abs=2e-3)


@pytest.mark.slow
def test_fused_prunes_and_fails_per_student(needs_fmnist: None) -> None:
    data = _data()
    recipe = parse_study({"name": "f", "student": {"model": "mlp-800", "batch_size": 128, "epochs": 2}}).student

    def prune(rec) -> None:  # type: ignore[no-untyped-def]
        raise optuna.TrialPruned(f"epoch {rec.epoch}")

    students = [FusedStudent(1e-3, KDParams(2.0, 0.5)), FusedStudent(1e-3, KDParams(2.0, 0.5), callback=prune),
                FusedStudent(float("inf"), None)]
    models = [_model("mlp-800") for _ in students]
    before = [p.clone() for p in models[1].parameters()]
    out = train_fused(models, data, recipe, students, seed=0, teacher=_teacher(data))
    assert isinstance(out[0], TrainResult) and len(out[0].epochs) == 2 and out[0].val_acc > 0.3
    assert isinstance(out[1], optuna.TrialPruned)
    assert any(not torch.equal(a, b) for a, b in zip(before, models[1].parameters(), strict=True))
    assert type(out[2]).__name__ == "NonFiniteLossError" and "at step 1 (epoch 0)" in str(out[2])


def test_fused_refuses_mixed_architectures(needs_fmnist: None) -> None:
    data = _data()
    recipe = parse_study({"name": "f"}).student
    with pytest.raises(ValueError, match="one architecture"):
        train_fused([_model("mlp-800"), _model("cnn-s")], data, recipe, [FusedStudent(1e-3)] * 2)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dkd", "dist", "lskd"])
def test_fused_equals_sequential_for_every_method(needs_fmnist: None, method: str) -> None:
    """Each method's students (their own T, weights and parameters), a CE student among them and a warm-up:
    fused step losses and weights equal the sequential ones."""
    from kdbench.losses import METHOD_DEFAULTS, METHOD_PARAMS

    data = _data()
    teacher = _teacher(data)
    recipe = parse_study({"name": "f", "student": {"model": "mlp-800", "batch_size": 64, "steps": 6}}).student
    names = METHOD_PARAMS[method]
    extra = [tuple((n, METHOD_DEFAULTS[method][n] * f) for n in names) for f in (1.0, 0.5)]
    kds: list[KDParams | None] = [KDParams(2.0, None, method, 1.0, 1.0, extra[0], warmup_epochs=0.5),
                                  KDParams(4.0, None, method, 0.1, 3.0, extra[1], warmup_epochs=0.5), None]
    lrs = [1e-3, 2e-3, 5e-4]
    seq_models = [_model("mlp-800") for _ in kds]
    seq = [train(m, data, recipe, lr=lr, seed=3, teacher=teacher, kd=kd, keep_step_losses=True)
           for m, lr, kd in zip(seq_models, lrs, kds, strict=True)]
    fused_models = [_model("mlp-800") for _ in kds]
    out = train_fused(fused_models, data, recipe, [FusedStudent(lr, kd) for lr, kd in zip(lrs, kds, strict=True)],
                      seed=3, teacher=teacher, keep_step_losses=True)
    for s, f, ms, mf in zip(seq, out, seq_models, fused_models, strict=True):
        assert isinstance(f, TrainResult)
        torch.testing.assert_close(torch.tensor(f.step_losses), torch.tensor(s.step_losses), rtol=1e-4, atol=1e-5)
        for (key, ws), wf in zip(ms.state_dict().items(), mf.state_dict().values(), strict=True):
            # Adam's sqrt(v) + 1e-8 on ~0 gradients, as above: one weight in 627,200 moves by 1.1e-4 (DIST)
            torch.testing.assert_close(wf, ws, rtol=1e-4, atol=2e-4, msg=key)


def test_fused_students_must_share_one_method(needs_fmnist: None) -> None:
    data = _data()
    recipe = parse_study({"name": "f", "student": {"model": "mlp-800", "steps": 1}}).student
    kds = [KDParams(2.0, 0.5), KDParams(2.0, None, "lskd", 0.1, 9.0)]
    with pytest.raises(ValueError, match="one distillation method"):
        train_fused([_model("mlp-800") for _ in kds], data, recipe, [FusedStudent(1e-3, kd) for kd in kds],
                    teacher=_teacher(data))

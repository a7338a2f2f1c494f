"""One training loop for teachers and students: optimiser, schedule and the step. It knows nothing of
Optuna or the store.

:func:`train` runs in the frame of :mod:`kdbench.loop` (seeded data views, batch order, budget, checks),
which :func:`kdbench.fused.train_fused` shares; evaluation lives in :mod:`kdbench.evaluate`. The names
other modules take from here (the run's inputs and outputs, ``predict_logits``, ...) are re-exported.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.config import Recipe
from kdbench.data import Data
from kdbench.evaluate import autocast, evaluate, inference_ms_per_batch, predict_logits
from kdbench.loop import (
    CachedLogits,
    EpochRecord,
    KDParams,
    LiveTeacher,
    TeacherSignal,
    TrainResult,
    budget,
    configure_device,
    eval_points,
    start_loop,
    view_images,
)
from kdbench.losses import METHODS, method_loss

__all__ = [
    "CachedLogits",  # re-exported from kdbench.loop with the run's other inputs and outputs below
    "EpochRecord",
    "KDParams",
    "LiveTeacher",
    "TeacherSignal",
    "TrainResult",
    "budget",
    "eval_points",
    "evaluate",  # re-exported from kdbench.evaluate with the two below
    "inference_ms_per_batch",
    "lr_factor",
    "make_optimizer",
    "make_scheduler",
    "predict_logits",
    "resolve_device",
    "setup_device",
    "train",
    "view_images",
]



def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/"auto" picks CUDA when available, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def setup_device(device: str | torch.device | None = "auto", threads: int | None = None) -> torch.device:
    """The training device, checked and configured (cuDNN autotuning and TF32 on CUDA), and torch's CPU
    threads set to ``threads`` when given: what ``kdbench sweep`` and :func:`kdbench.sweep` do first.

    Raises:
        ConfigError: a CUDA device where CUDA is not available.
    """
    from kdbench.errors import ConfigError

    if threads is not None:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available here; use --device cpu")
    configure_device(dev)  # cuDNN autotuning and TF32, set in one place
    return dev


def make_optimizer(model: nn.Module, recipe: Recipe, lr: float) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD (momentum, nesterov) with weight decay, per the recipe."""
    params = [p for p in model.parameters() if p.requires_grad]
    # torch's fused Adam kernel, one pass over each parameter per step where it exists (float parameters on the
    # CPU or CUDA): an mlp-800 step of batch 128 took 13.9 ms against 21.9 ms for the default loop on 2 CPU cores
    fused = True if params and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params) else None
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=recipe.weight_decay, fused=fused)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=recipe.weight_decay, fused=fused)
    return torch.optim.SGD(
        params, lr=lr, momentum=recipe.momentum, nesterov=recipe.nesterov and recipe.momentum > 0,
        weight_decay=recipe.weight_decay,
    )


def lr_factor(recipe: Recipe, total_steps: int, steps_per_epoch: int) -> Callable[[int], float]:
    """The multiplier of the base lr at optimiser step ``step``: linear warm-up, then constant/cosine/step."""
    warmup = round(recipe.warmup_epochs * steps_per_epoch)
    milestones = [int(m * total_steps) for m in recipe.step_milestones]

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if recipe.schedule == "cosine":
            span = max(1, total_steps - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / span)))
        if recipe.schedule == "step":
            return float(recipe.step_gamma ** sum(step >= m for m in milestones))
        return 1.0

    return factor


def make_scheduler(
    optimizer: torch.optim.Optimizer, recipe: Recipe, total_steps: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up then constant, cosine (to 0) or step decay; stepped once per optimiser step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(recipe, total_steps, steps_per_epoch))


# torch.compile'd modules kept for the life of the process, one per architecture, device and memory format:
# a new trial copies its freshly initialised weights into the compiled module instead of compiling again.
_COMPILED: dict[tuple[str, str, bool], tuple[nn.Module, nn.Module]] = {}
_COMPILED_MAX = 4


def _compiled(model: nn.Module, compile_: bool) -> tuple[nn.Module, nn.Module]:
    """``(module to train, callable for the forward pass)``: ``model`` twice, or a cached compiled pair."""
    if not compile_:
        return model, model
    weight = next(model.parameters())
    key = (repr(model), str(weight.device), weight.dim() == 4 and weight.is_contiguous(
        memory_format=torch.channels_last) and not weight.is_contiguous())
    if key not in _COMPILED:
        if len(_COMPILED) >= _COMPILED_MAX:
            _COMPILED.pop(next(iter(_COMPILED)))
        cached = copy.deepcopy(model)
        _COMPILED[key] = (cached, torch.compile(cached))  # type: ignore[assignment]
    cached, step_model = _COMPILED[key]
    cached.load_state_dict(model.state_dict())
    return cached, step_model


def train(
    model: nn.Module,
    data: Data,
    recipe: Recipe,
    *,
    lr: float | None = None,
    seed: int = 0,
    teacher: TeacherSignal | None = None,
    kd: KDParams | None = None,
    augment_kind: str = "none",
    callback: Callable[[EpochRecord], None] | None = None,
    evaluate_test: bool = False,
    keep_step_losses: bool = False,
    eval_every: int | None = None,
) -> TrainResult:
    """Train ``model`` on ``data.train`` following ``recipe``; return accuracies, curves and timings.

    Args:
        model: the network, already on ``data.device``; trained in place.
        data: splits as uint8 tensors on the training device.
        recipe: optimiser, schedule, budget and the rest (see :class:`kdbench.config.Recipe`).
        lr: overrides ``recipe.lr`` (what a sweep trial searches).
        seed: seeds the data order, augmentation, dropout and anything else random in the loop.
            The same seed gives the same data order whatever the loss, so KD and CE runs pair.
        teacher: cached logits or a live teacher; needed when ``kd`` reads it (a distillation weight > 0).
        kd: the distillation loss (method, T, weights); ``None`` trains with cross-entropy only.
        augment_kind: 'none', 'flip', 'crop' or 'crop+flip'.
        callback: called after every evaluation point with its :class:`EpochRecord`; may raise to stop.
        evaluate_test: also evaluate on the test split at the end (finalists and teachers only).
        keep_step_losses: return every step's loss (for tests that compare runs step by step).
        eval_every: also evaluate validation every this many optimiser steps (``student.eval_every``); None:
            at each epoch's end only. The last point is the end of the run either way.

    Raises:
        NonFiniteLossError: the loss became NaN/inf; the message names the step.
    """
    lr = recipe.lr if lr is None else lr
    use_kd = kd is not None and kd.reads_teacher
    loop = start_loop(model, data, recipe, seed=seed, teacher=teacher, augment_kind=augment_kind, use_kd=use_kd,
                      eval_every=eval_every)
    if loop.channels_last:
        model = model.to(memory_format=torch.channels_last)
    user_model, model, step_model = model, *_compiled(model, recipe.compile)
    optimizer = make_optimizer(model, recipe, lr)
    scheduler = make_scheduler(optimizer, recipe, loop.total_steps, loop.steps_per_epoch)

    result = TrainResult(math.nan, math.nan, None, None, device=str(data.device))
    if kd is not None:  # the loss's fixed parts, once per run (KDParams checked every value)
        method, (ce_w, kd_w), extra = METHODS[kd.method], kd.weights, dict(kd.extra)
    model.train()
    for epoch in loop.epochs():
        losses = torch.zeros(epoch.todo, device=data.device)
        for batch in loop.batches(epoch):
            with autocast(data.device, recipe.amp):
                out = step_model(batch.x)
            t_logits = loop.teacher_logits(epoch, batch, recipe.amp)
            if kd is not None and t_logits is not None:
                loss = method_loss(method, out, t_logits, batch.y, temperature=kd.temperature, ce_weight=ce_w,
                                   kd_weight=kd_w * kd.ramp(epoch.first_step + batch.i, loop.steps_per_epoch),
                                   label_smoothing=recipe.label_smoothing, **extra)
            else:
                loss = F.cross_entropy(out.float(), batch.y, label_smoothing=recipe.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses[batch.i] = loss.detach()
        step_losses = loop.end_epoch(epoch, losses)
        error = epoch.non_finite(step_losses)
        if error is not None:
            raise error
        if keep_step_losses:
            result.step_losses.extend(step_losses.tolist())
        val = evaluate(model, data.val, data.info, amp=recipe.amp)
        record = epoch.record(step_losses, val, lr=float(optimizer.param_groups[0]["lr"]))
        result.epochs.append(record)
        result.val_acc, result.val_loss = val
        if callback is not None:
            callback(record)
    if evaluate_test:
        result.test_acc, result.test_loss = evaluate(model, data.test, data.info, amp=recipe.amp)
    if model is not user_model:  # trained the cached compiled module: hand the weights back
        user_model.load_state_dict(model.state_dict())
    if loop.channels_last:
        user_model.to(memory_format=torch.contiguous_format)
    loop.finish([result])
    return result

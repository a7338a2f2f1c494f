"""K students of one architecture, each with its own (T, alpha, lr), trained in one fused step.

A sweep is many short trainings of one small model: one such model cannot keep a big GPU busy, K of
them at once can. ``torch.func.stack_module_state`` stacks the K students' parameters and buffers
along a new leading dimension; ``vmap`` over ``functional_call`` runs the K forward passes as one
batched computation on the *shared* batch (all K see the same data order: the sweep's search visits
share the study's seed); each student's loss is :func:`kdbench.losses.method_loss` (the sequential
loop's) with its own T and weight tensors; the K losses are summed and one backward pass gives every
student its own gradient
(the students share no parameter, so the sum's gradient is each student's own). The loop around
the step (seeding, checks, budget, batch order, epoch pixels, teacher logits, records, totals) is
:func:`kdbench.train.start_loop`'s :class:`~kdbench.train.StepLoop`, the one :func:`kdbench.train.train` runs in.

The optimiser is written here on the stacked tensors, with one lr per student (a ``[K]`` tensor
times the recipe's schedule factor) and per-student moment buffers, following torch.optim's update
rules for Adam, AdamW and SGD (momentum, nesterov, weight decay). So fused training equals K
sequential :func:`kdbench.train.train` calls with the same seed, to float tolerance
(tests/test_fused.py checks per-step losses and final weights for ``mlp-800`` and ``cnn-s``).

Batch norm is fusion-safe: running statistics are stacked like the parameters and passed to vmap
with ``in_dims=0``, so every student normalises with, and updates, its own statistics (train and
eval mode). Dropout draws per-student masks (vmap ``randomness='different'``): such students train
correctly but not mask-for-mask like their sequential twin. ``recipe.compile`` is not applied here.

A student whose epoch callback raises (the sweep's pruner) or whose loss goes non-finite leaves the
group at that epoch's end; its slot in the result holds the exception, the others train on.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from kdbench.config import Recipe
from kdbench.data import Data, DatasetInfo, Split, normalize
from kdbench.evaluate import autocast
from kdbench.loop import EpochRecord, KDParams, TeacherSignal, TrainResult, start_loop
from kdbench.losses import METHODS, method_loss
from kdbench.train import lr_factor

__all__ = ["FusedStudent", "StackedOptimizer", "train_fused"]

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class FusedStudent:
    """One student of a fused group: its lr, its KD parameters (None: cross-entropy) and its epoch callback."""

    lr: float
    kd: KDParams | None = None
    callback: Callable[[EpochRecord], None] | None = None


class StackedOptimizer:
    """Adam, AdamW or SGD over stacked ``[K, ...]`` parameters, one lr per student.

    The update rules are torch.optim's (``betas=(0.9, 0.999)``, ``eps=1e-8``; L2 weight decay for Adam
    and SGD, decoupled for AdamW; SGD momentum without dampening, optional nesterov).
    """

    def __init__(self, recipe: Recipe, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.recipe, self.betas, self.eps = recipe, betas, eps
        self.state: dict[str, Tensors] = {}
        self.steps = 0

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only the students at ``rows`` (the others left the group)."""
        self.state = {n: {k: v[rows] for k, v in st.items()} for n, st in self.state.items()}

    @torch.no_grad()
    def step(self, params: Tensors, lr: torch.Tensor) -> None:
        """One update of every parameter with its ``.grad``; ``lr`` is ``[K]``."""
        self.steps += 1
        r = self.recipe
        for name, p in params.items():
            if p.grad is None:
                continue
            g = p.grad
            lr_b = lr.view(-1, *([1] * (p.dim() - 1))).to(p.dtype)
            st = self.state.setdefault(name, {})
            if r.weight_decay and r.optimizer == "adamw":
                p.mul_(1 - lr_b * r.weight_decay)
            elif r.weight_decay:
                g = g.add(p, alpha=r.weight_decay)
            if r.optimizer == "sgd":
                if r.momentum > 0:
                    buf = st.get("momentum")
                    if buf is None:
                        buf = st["momentum"] = g.clone()
                    else:
                        buf.mul_(r.momentum).add_(g)
                    g = g.add(buf, alpha=r.momentum) if r.nesterov else buf
                p.sub_(lr_b * g)
                continue
            b1, b2 = self.betas
            m = st.setdefault("exp_avg", torch.zeros_like(p))
            v = st.setdefault("exp_avg_sq", torch.zeros_like(p))
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            bc1, bc2 = 1 - b1**self.steps, 1 - b2**self.steps
            denom = (v.sqrt() / math.sqrt(bc2)).add_(self.eps)
            p.sub_((lr_b / bc1) * m / denom)


def _stacked_logits(
    base: nn.Module, params: Tensors, buffers: Tensors, x: torch.Tensor
) -> torch.Tensor:
    def forward(p: Tensors, b: Tensors, xb: torch.Tensor) -> torch.Tensor:
        return functional_call(base, (p, b), (xb,))

    return vmap(forward, in_dims=(0, 0, None), randomness="different")(params, buffers, x)


@torch.no_grad()
def _evaluate(
    base: nn.Module, params: Tensors, buffers: Tensors, split: Split, info: DatasetInfo, amp: bool,
    batch_size: int = 1024,
) -> list[tuple[float, float]]:
    """(accuracy, mean CE) of each stacked student on ``split``, as :func:`kdbench.evaluate.evaluate` computes."""
    k = next(iter(params.values())).shape[0]
    if len(split) == 0:
        return [(math.nan, math.nan)] * k
    base.eval()
    correct = torch.zeros(k, device=split.images.device)
    loss = torch.zeros(k, device=split.images.device)
    try:
        for i in range(0, len(split), batch_size):
            x = normalize(split.images[i : i + batch_size], info)
            y = split.labels[i : i + batch_size]
            with autocast(x.device, amp):
                logits = _stacked_logits(base, params, buffers, x).float()
            loss += F.cross_entropy(logits.transpose(1, 2), y.expand(k, -1), reduction="none").sum(1)
            correct += (logits.argmax(-1) == y).sum(1)
    finally:
        base.train()
    stats = torch.stack([correct, loss], 1).cpu() / len(split)
    return [(float(a), float(b)) for a, b in stats]


def train_fused(
    models: Sequence[nn.Module],
    data: Data,
    recipe: Recipe,
    students: Sequence[FusedStudent],
    *,
    seed: int = 0,
    teacher: TeacherSignal | None = None,
    augment_kind: str = "none",
    evaluate_test: bool = False,
    keep_step_losses: bool = False,
    eval_every: int | None = None,
) -> list[TrainResult | Exception]:
    """Train K students of one architecture together; what K calls of :func:`kdbench.train.train` would do.

    Args:
        models: K freshly built models of one architecture on ``data.device``; their weights (and batch-norm
            statistics) are overwritten with the trained ones.
        data: splits as uint8 tensors on the training device.
        recipe: the shared recipe (optimiser, schedule, budget, batch size); ``lr`` comes from each student.
        students: K (lr, KD parameters, callback) triples, one per model.
        seed: seeds the shared data order and augmentation, as :func:`kdbench.train.train` does.
        teacher: cached logits or a live teacher (its forward runs once per batch for all K).
        augment_kind: 'none', 'flip', 'crop' or 'crop+flip'.
        evaluate_test: also evaluate on the test split at the end.
        keep_step_losses: return every step's loss per student.
        eval_every: also evaluate validation every this many optimiser steps, as :func:`kdbench.train.train`.

    Returns:
        K outcomes in order: a :class:`TrainResult`, or the exception that stopped that student (the one its
        callback raised, e.g. ``optuna.TrialPruned``, or :class:`NonFiniteLossError`).

    Raises:
        ValueError: the models differ in architecture, or the teacher signal does not fit.
    """
    k = len(models)
    if k == 0 or len(students) != k:
        raise ValueError(f"train_fused needs one student per model, got {k} models and {len(students)} students")
    if len({repr(m) for m in models}) != 1:
        raise ValueError("fused students must share one architecture (the same model name and sizes)")
    device = data.device
    real = [s.kd for s in students if s.kd is not None and s.kd.reads_teacher]
    if len({kd.method for kd in real}) > 1 or len({kd.warmup_epochs for kd in real}) > 1:
        raise ValueError("fused students must share one distillation method and warm-up (CE students join any)")
    group = real[0] if real else KDParams(1.0, 1.0)  # the group's method, extra parameters and warm-up
    method, extra_names = METHODS[group.method], [name for name, _ in group.extra]
    # a CE student: weight 0 on the group's term (its other values the first student's: the term stays finite)
    ce = KDParams(1.0, None, group.method, 1.0, 0.0, group.extra, group.warmup_epochs)
    kds = [s.kd if s.kd is not None and s.kd.reads_teacher else ce for s in students]
    use_kd = bool(real)
    loop = start_loop(models[0], data, recipe, seed=seed, teacher=teacher, augment_kind=augment_kind, use_kd=use_kd,
                      eval_every=eval_every)
    for m in models:
        m.train()
    params, buffers = stack_module_state(list(models))
    base = copy.deepcopy(models[0]).to("meta")
    columns = {"temperature": [kd.temperature for kd in kds],  # each student's loss parameters, stacked
               "ce_weight": [kd.weights[0] for kd in kds], "kd_weight": [kd.weights[1] for kd in kds]}
    columns |= {name: [dict(kd.extra)[name] for kd in kds] for name in extra_names}
    per = {name: torch.tensor(values, device=device) for name, values in columns.items()}
    lrs = torch.tensor([s.lr for s in students], device=device)
    optimizer = StackedOptimizer(recipe)
    factor = lr_factor(recipe, loop.total_steps, loop.steps_per_epoch)

    def losses_of(out: torch.Tensor, t_logits: torch.Tensor | None, y: torch.Tensor, step: int) -> torch.Tensor:
        if t_logits is None:  # every student is CE: no teacher to read
            return vmap(lambda o: F.cross_entropy(o.float(), y, label_smoothing=recipe.label_smoothing))(out)
        ramp = group.ramp(step, loop.steps_per_epoch)
        names = [n for n in per if n != "temperature"]

        def one(o: torch.Tensor, t: torch.Tensor, *values: torch.Tensor) -> torch.Tensor:
            kw = dict(zip(names, values, strict=True))
            kw["kd_weight"] = kw["kd_weight"] * ramp
            return method_loss(method, o, t_logits, y, temperature=t, label_smoothing=recipe.label_smoothing, **kw)

        return vmap(one)(out, per["temperature"], *(per[n] for n in names))

    # bf16 autocast with vmapped batch norm fails in backward (running stats stay float32): BN students
    # train fused in float32 on CUDA; everything else keeps the recipe's amp
    amp = recipe.amp and not any(name.endswith("running_mean") for name in buffers)
    active = list(range(k))  # original index of each stacked row
    outcomes: list[TrainResult | Exception | None] = [None] * k
    results = [TrainResult(math.nan, math.nan, None, None, device=str(device)) for _ in range(k)]

    def write_back(rows: list[int]) -> None:
        with torch.no_grad():
            for row in rows:
                model = models[active[row]]
                for name, t in params.items():
                    model.get_parameter(name).copy_(t[row])
                for name, t in buffers.items():
                    model.get_buffer(name).copy_(t[row])

    for epoch in loop.epochs():
        losses = torch.zeros(epoch.todo, len(active), device=device)
        for batch in loop.batches(epoch):
            t_logits = loop.teacher_logits(epoch, batch, amp)
            with autocast(device, amp):
                out = _stacked_logits(base, params, buffers, batch.x)
            loss = losses_of(out, t_logits, batch.y, epoch.first_step + batch.i)
            for p in params.values():
                p.grad = None
            loss.sum().backward()
            optimizer.step(params, lrs * factor(epoch.first_step + batch.i))
            losses[batch.i] = loss.detach()
        step_losses = loop.end_epoch(epoch, losses)
        evals = _evaluate(base, params, buffers, data.val, data.info, amp)
        leaving: list[int] = []
        for row, orig in enumerate(active):
            res = results[orig]
            column = step_losses[:, row]
            error = epoch.non_finite(column)
            if error is not None:
                outcomes[orig] = error
                leaving.append(row)
                continue
            if keep_step_losses:
                res.step_losses.extend(column.tolist())
            record = epoch.record(column, evals[row], lr=students[orig].lr * factor(loop.step))
            res.epochs.append(record)
            res.val_acc, res.val_loss = evals[row]
            callback = students[orig].callback
            if callback is not None:
                try:
                    callback(record)
                except Exception as exc:  # the pruner's TrialPruned, or any error: this student stops
                    outcomes[orig] = exc
                    leaving.append(row)
        if leaving:
            write_back(leaving)
            keep = [row for row in range(len(active)) if row not in leaving]
            rows = torch.tensor(keep, dtype=torch.long, device=device)
            params = {name: t.detach()[rows].requires_grad_() for name, t in params.items()}
            buffers = {name: t[rows] for name, t in buffers.items()}
            optimizer.keep(rows)
            per = {name: t[rows] for name, t in per.items()}
            lrs = lrs[rows]
            active = [active[row] for row in keep]
        if not active:
            break
    if active:
        write_back(list(range(len(active))))
        if evaluate_test:
            for row, (acc, loss_) in enumerate(_evaluate(base, params, buffers, data.test, data.info, amp)):
                results[active[row]].test_acc, results[active[row]].test_loss = acc, loss_
    loop.finish(results[orig] for orig in active)
    for orig in active:
        outcomes[orig] = results[orig]
    return [o if o is not None else RuntimeError("student left without an outcome") for o in outcomes]

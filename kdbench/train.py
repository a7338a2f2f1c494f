"""One training loop for teachers and students. It knows nothing of Optuna or the store.

Data stay on the device as uint8 tensors; each epoch draws a seeded permutation, augments the whole
split in one batched call (so a cached teacher view and the student see the same pixels), and every
step normalises its batch on the device. Losses are summed into a device tensor: nothing synchronises
with the host inside the step loop; the epoch end reads the losses back once and checks them.

The frame of that loop (seeding, checks, budget, epochs and their batches, the teacher's logits for
a batch, the epoch's record and the run's totals) is :class:`StepLoop`, made by :func:`start_loop`:
:func:`train` and :func:`kdbench.fused.train_fused` both run in it, so K fused students see exactly
the batches K sequential runs see. Evaluation lives in :mod:`kdbench.evaluate`; its functions are
importable from here too.

The module runs past 500 lines because it is one story, read top to bottom: what a run takes and
returns, the seeded data views, optimiser and schedule, the checks, the frame built from those, and
:func:`train` in it. Fused training's agreement with :func:`train` rests on every piece matching, so
the pieces stay beside the one loop that reads them all in order.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.config import Recipe
from kdbench.data import Data, augment, normalize
from kdbench.errors import NonFiniteLossError
from kdbench.evaluate import autocast, evaluate, inference_ms_per_batch, predict_logits
from kdbench.losses import distillation_loss, validate_alpha, validate_temperature

__all__ = [
    "Batch",
    "CachedLogits",
    "Epoch",
    "EpochRecord",
    "KDParams",
    "LiveTeacher",
    "StepLoop",
    "TeacherSignal",
    "TrainResult",
    "batch_order",
    "budget",
    "check_teacher",
    "configure_device",
    "epoch_pixels",
    "evaluate",  # re-exported from kdbench.evaluate, with the two below
    "first_non_finite",
    "inference_ms_per_batch",
    "lr_factor",
    "make_optimizer",
    "make_scheduler",
    "predict_logits",
    "resolve_device",
    "start_loop",
    "train",
    "uses_channels_last",
    "view_images",
]


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/"auto" picks CUDA when available, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass(frozen=True)
class KDParams:
    """Temperature and alpha of the distillation loss (alpha weights the hard labels)."""

    temperature: float
    alpha: float

    def __post_init__(self) -> None:
        validate_temperature(self.temperature)
        validate_alpha(self.alpha)


@dataclass
class CachedLogits:
    """Teacher logits cached per training row: ``[views, N, K]``; epoch e reads view ``e % views``.

    ``views == 1`` with ``augmented == False`` is the 'fixed' cache (logits of the clean images).
    With ``augmented`` the view v is the image augmented with seed ``(seed, v)``, exactly as
    :func:`view_images` makes it, so the student sees the pixels the teacher saw.
    """

    logits: torch.Tensor
    augmented: bool = False
    seed: int = 0

    @property
    def views(self) -> int:
        return int(self.logits.shape[0])


@dataclass
class LiveTeacher:
    """The teacher runs forward on every student batch (the notebook's way).

    Its logits are rounded to ``logit_dtype`` like the cache, so 'live' and 'fixed' are the same
    computation when there is no augmentation.
    """

    model: nn.Module
    logit_dtype: torch.dtype = torch.float16


TeacherSignal = CachedLogits | LiveTeacher


@dataclass
class EpochRecord:
    """What one epoch produced; handed to the callback, which may raise to stop (e.g. to prune)."""

    epoch: int
    train_loss: float
    val_acc: float
    val_loss: float
    seconds: float
    lr: float
    steps: int


@dataclass
class TrainResult:
    """Accuracies are fractions in [0, 1]; times are seconds."""

    val_acc: float
    val_loss: float
    test_acc: float | None
    test_loss: float | None
    epochs: list[EpochRecord] = field(default_factory=list)
    steps: int = 0
    wall_time_s: float = 0.0
    train_time_s: float = 0.0
    samples_per_s: float = 0.0
    device: str = "cpu"
    step_losses: list[float] = field(default_factory=list)


def view_images(images: torch.Tensor, kind: str, seed: int, view: int) -> torch.Tensor:
    """The augmented view number ``view`` of a whole split, reproducible from ``(seed, view)``."""
    if kind == "none":
        return images
    gen = torch.Generator(device=images.device)
    gen.manual_seed(_mix(seed, view, 0xA5))
    return augment(images, kind, gen)


def _mix(*parts: int) -> int:
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (p & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) & 0x7FFFFFFFFFFFFFFF
    return h


def make_optimizer(model: nn.Module, recipe: Recipe, lr: float) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD (momentum, nesterov) with weight decay, per the recipe."""
    params = [p for p in model.parameters() if p.requires_grad]
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=recipe.weight_decay)
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


def budget(recipe: Recipe, n: int) -> tuple[int, int, int]:
    """``(steps_per_epoch, total_steps, epochs)`` of a recipe on ``n`` training rows (``steps`` beats ``epochs``)."""
    steps_per_epoch = math.ceil(n / recipe.batch_size)
    if recipe.steps is not None:
        return steps_per_epoch, recipe.steps, math.ceil(recipe.steps / steps_per_epoch)
    epochs = recipe.epochs or 1
    return steps_per_epoch, epochs * steps_per_epoch, epochs


def check_teacher(teacher: TeacherSignal | None, data: Data, augment_kind: str, use_kd: bool) -> None:
    """Refuse a teacher signal that does not fit the training split or the augmentation."""
    if use_kd and teacher is None:
        raise ValueError("kd with alpha < 1 needs a teacher (cached logits or a live model)")
    if isinstance(teacher, CachedLogits) and teacher.logits.shape[1] != len(data.train):
        raise ValueError(
            f"cached logits cover {teacher.logits.shape[1]} rows, the training split has {len(data.train)}"
        )
    if isinstance(teacher, CachedLogits) and teacher.augmented and augment_kind == "none":
        raise ValueError("augmented teacher views need the same augmentation for the student")


def epoch_pixels(
    data: Data, teacher: TeacherSignal | None, augment_kind: str, seed: int, epoch: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The uint8 images epoch ``epoch`` trains on, and the cached teacher logits for them (None if live/none).

    A cached augmented view when the teacher has them, else a fresh seeded augmentation of the split.
    """
    if isinstance(teacher, CachedLogits) and teacher.augmented:
        view = epoch % teacher.views
        return view_images(data.train.images, augment_kind, teacher.seed, view), teacher.logits[view]
    images = view_images(data.train.images, augment_kind, _mix(seed, 0xA11), epoch)
    return images, teacher.logits[0] if isinstance(teacher, CachedLogits) else None


def batch_order(n: int, seed: int, device: torch.device) -> Callable[[int], Iterator[torch.Tensor]]:
    """Seeded generator of per-epoch batch indices: ``order(batch_size)`` yields one epoch's batches."""
    gen = torch.Generator(device=device)
    gen.manual_seed(_mix(seed, 0x5EED))

    def order(batch_size: int) -> Iterator[torch.Tensor]:
        return _batches(n, batch_size, gen, device)

    return order


def first_non_finite(step_losses: torch.Tensor) -> int | None:
    """Index of the first NaN/inf in a CPU tensor of step losses, or None."""
    finite = torch.isfinite(step_losses)
    return None if bool(finite.all()) else int((~finite).nonzero()[0, 0])


def uses_channels_last(recipe: Recipe, device: torch.device, model: nn.Module) -> bool:
    """``channels_last: auto`` turns it on for convolutional models on CUDA."""
    return recipe.channels_last is True or (
        recipe.channels_last == "auto" and device.type == "cuda" and _is_conv(model)
    )


def configure_device(device: torch.device) -> None:
    """cuDNN autotuning and TF32 matmuls on CUDA (fixed shapes: the autotuner runs once per shape)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def _is_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


class Batch(NamedTuple):
    """One step's batch: its position ``i`` in the epoch, its training ``rows``, images ``x``, labels ``y``."""

    i: int
    rows: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor


@dataclass
class Epoch:
    """One epoch of a :class:`StepLoop`: the pixels it trains on and the steps it runs.

    Attributes:
        index: the 0-based epoch.
        first_step: optimiser steps taken before it.
        todo: steps it runs (the last epoch may stop short, at the budget).
        images: the uint8 training images of this epoch (see :func:`epoch_pixels`).
        cached_logits: the cached teacher logits for them, or None (live teacher or none).
        started: ``time.perf_counter()`` at its start.
    """

    index: int
    first_step: int
    todo: int
    images: torch.Tensor
    cached_logits: torch.Tensor | None
    started: float

    def non_finite(self, step_losses: torch.Tensor) -> NonFiniteLossError | None:
        """The error naming the first NaN/inf among one student's CPU step losses of this epoch, or None."""
        bad = first_non_finite(step_losses)
        return None if bad is None else NonFiniteLossError(self.first_step + bad, self.index, float(step_losses[bad]))

    def record(self, step_losses: torch.Tensor, val: tuple[float, float], lr: float) -> EpochRecord:
        """This epoch's record, from one student's step losses, its (accuracy, loss) on val and its lr."""
        return EpochRecord(
            epoch=self.index,
            train_loss=float(step_losses.mean()) if self.todo else math.nan,
            val_acc=val[0],
            val_loss=val[1],
            seconds=time.perf_counter() - self.started,
            lr=lr,
            steps=self.first_step + self.todo,
        )


@dataclass
class StepLoop:
    """The frame of the step loop that :func:`train` and :func:`kdbench.fused.train_fused` share.

    Made by :func:`start_loop`. The caller runs ``for epoch in loop.epochs()``, in it ``for batch in
    loop.batches(epoch)`` with its own forward, loss and update, then :meth:`end_epoch`; at the end
    :meth:`finish` writes the totals into the results. The loop counts steps, samples and training time.
    """

    data: Data
    recipe: Recipe
    teacher: TeacherSignal | None
    augment_kind: str
    seed: int
    use_kd: bool
    channels_last: bool
    steps_per_epoch: int
    total_steps: int
    num_epochs: int
    order: Callable[[int], Iterator[torch.Tensor]]
    started: float
    step: int = 0
    samples: int = 0
    train_time: float = 0.0

    def epochs(self) -> Iterator[Epoch]:
        """Each epoch in turn, until the caller stops or an epoch's end reaches the step budget."""
        for index in range(self.num_epochs):
            started = time.perf_counter()
            images, cached = epoch_pixels(self.data, self.teacher, self.augment_kind, self.seed, index)
            todo = min(self.steps_per_epoch, self.total_steps - self.step)
            yield Epoch(index, self.step, todo, images, cached, started)
            if self.step >= self.total_steps:
                return

    def batches(self, epoch: Epoch) -> Iterator[Batch]:
        """The epoch's ``todo`` seeded batches, normalised on the device (channels-last if the loop is)."""
        for i, rows in enumerate(self.order(self.recipe.batch_size)):
            if i >= epoch.todo:
                break
            x = normalize(epoch.images[rows], self.data.info)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield Batch(i, rows, x, self.data.train.labels[rows])
            self.samples += int(rows.shape[0])

    def teacher_logits(self, epoch: Epoch, batch: Batch, amp: bool) -> torch.Tensor | None:
        """The teacher's logits for ``batch``: cached rows, a live no-grad forward, or None (no KD)."""
        if not self.use_kd:
            return None
        if epoch.cached_logits is not None:
            return epoch.cached_logits[batch.rows]
        assert isinstance(self.teacher, LiveTeacher)
        with torch.no_grad(), autocast(self.data.device, amp):
            return self.teacher.model(batch.x).float().to(self.teacher.logit_dtype)

    def end_epoch(self, epoch: Epoch, losses: torch.Tensor) -> torch.Tensor:
        """Read the epoch's device losses back (the loop's one host sync), count its steps and time."""
        step_losses = losses.cpu()
        self.step += epoch.todo
        self.train_time += time.perf_counter() - epoch.started
        return step_losses

    def finish(self, results: Iterable[TrainResult]) -> None:
        """Write the run's steps, training time, throughput and wall time into each result."""
        wall = time.perf_counter() - self.started
        for result in results:
            result.steps, result.train_time_s, result.wall_time_s = self.step, self.train_time, wall
            result.samples_per_s = self.samples / self.train_time if self.train_time > 0 else math.nan


def start_loop(
    model: nn.Module,
    data: Data,
    recipe: Recipe,
    *,
    seed: int,
    teacher: TeacherSignal | None,
    augment_kind: str,
    use_kd: bool,
) -> StepLoop:
    """Start a training run: seed it, check the teacher, set up the device, the budget and the batch order.

    Args:
        model: the network to train (for fused students, any one of them): decides channels-last.
        data: splits as uint8 tensors on the training device.
        recipe: the budget, batch size and memory format.
        seed: seeds torch (dropout, anything random in the step) and the data order and augmentation.
        teacher: cached logits, a live teacher (put in eval mode here) or None.
        augment_kind: 'none', 'flip', 'crop' or 'crop+flip'.
        use_kd: whether any loss reads the teacher.

    Returns:
        The loop, at step 0.

    Raises:
        ValueError: the teacher signal does not fit the training split or the augmentation.
    """
    started = time.perf_counter()
    torch.manual_seed(seed)
    check_teacher(teacher, data, augment_kind, use_kd)
    configure_device(data.device)
    n = len(data.train)
    steps_per_epoch, total_steps, epochs = budget(recipe, n)
    if isinstance(teacher, LiveTeacher):
        teacher.model.eval()
    return StepLoop(
        data, recipe, teacher, augment_kind, seed, use_kd, uses_channels_last(recipe, data.device, model),
        steps_per_epoch, total_steps, epochs, batch_order(n, seed, data.device), started,
    )


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


def _batches(n: int, batch_size: int, gen: torch.Generator, device: torch.device) -> Iterator[torch.Tensor]:
    perm = torch.randperm(n, generator=gen, device=device)
    yield from perm.split(batch_size)


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
) -> TrainResult:
    """Train ``model`` on ``data.train`` following ``recipe``; return accuracies, curves and timings.

    Args:
        model: the network, already on ``data.device``; trained in place.
        data: splits as uint8 tensors on the training device.
        recipe: optimiser, schedule, budget and the rest (see :class:`kdbench.config.Recipe`).
        lr: overrides ``recipe.lr`` (what a sweep trial searches).
        seed: seeds the data order, augmentation, dropout and anything else random in the loop.
            The same seed gives the same data order whatever the loss, so KD and CE runs pair.
        teacher: cached logits or a live teacher; needed when ``kd`` is given and ``kd.alpha < 1``.
        kd: temperature and alpha; ``None`` trains with cross-entropy only.
        augment_kind: 'none', 'flip', 'crop' or 'crop+flip'.
        callback: called after every epoch with its :class:`EpochRecord`; may raise to stop.
        evaluate_test: also evaluate on the test split at the end (finalists and teachers only).
        keep_step_losses: return every step's loss (for tests that compare runs step by step).

    Raises:
        NonFiniteLossError: the loss became NaN/inf; the message names the step.
    """
    lr = recipe.lr if lr is None else lr
    use_kd = kd is not None and kd.alpha < 1.0
    loop = start_loop(model, data, recipe, seed=seed, teacher=teacher, augment_kind=augment_kind, use_kd=use_kd)
    if loop.channels_last:
        model = model.to(memory_format=torch.channels_last)
    user_model, model, step_model = model, *_compiled(model, recipe.compile)
    optimizer = make_optimizer(model, recipe, lr)
    scheduler = make_scheduler(optimizer, recipe, loop.total_steps, loop.steps_per_epoch)

    result = TrainResult(math.nan, math.nan, None, None, device=str(data.device))
    model.train()
    for epoch in loop.epochs():
        losses = torch.zeros(epoch.todo, device=data.device)
        for batch in loop.batches(epoch):
            with autocast(data.device, recipe.amp):
                out = step_model(batch.x)
            t_logits = loop.teacher_logits(epoch, batch, recipe.amp)
            if kd is not None and t_logits is not None:
                loss = distillation_loss(
                    out, t_logits, batch.y, temperature=kd.temperature, alpha=kd.alpha,
                    label_smoothing=recipe.label_smoothing,
                )
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

"""One training loop for teachers and students. It knows nothing of Optuna or the store.

Data stay on the device as uint8 tensors; each epoch draws a seeded permutation, augments the whole
split in one batched call (so a cached teacher view and the student see the same pixels), and every
step normalises its batch on the device. Losses are summed into a device tensor: nothing synchronises
with the host inside the step loop; the epoch end reads the losses back once and checks them.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.config import Recipe
from kdbench.data import Data, DatasetInfo, Split, augment, normalize
from kdbench.errors import NonFiniteLossError
from kdbench.losses import distillation_loss, validate_alpha, validate_temperature

__all__ = [
    "CachedLogits",
    "EpochRecord",
    "KDParams",
    "LiveTeacher",
    "TrainResult",
    "evaluate",
    "inference_ms_per_batch",
    "make_optimizer",
    "make_scheduler",
    "predict_logits",
    "resolve_device",
    "train",
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


def make_scheduler(
    optimizer: torch.optim.Optimizer, recipe: Recipe, total_steps: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up then constant, cosine (to 0) or step decay; stepped once per optimiser step."""
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

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager[Any]:
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _is_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


@torch.no_grad()
def predict_logits(
    model: nn.Module, images: torch.Tensor, info: DatasetInfo, *, batch_size: int = 1024, amp: bool = True
) -> torch.Tensor:
    """Float32 logits of ``model`` (in eval mode) for uint8 ``images``, batched on their device."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for i in range(0, images.shape[0], batch_size):
            x = normalize(images[i : i + batch_size], info)
            with _autocast(images.device, amp):
                out.append(model(x).float())
    finally:
        model.train(was_training)
    if not out:
        return torch.empty(0, info.num_classes, device=images.device)
    return torch.cat(out)


@torch.no_grad()
def evaluate(
    model: nn.Module, split: Split, info: DatasetInfo, *, batch_size: int = 1024, amp: bool = True
) -> tuple[float, float]:
    """(accuracy in [0, 1], mean cross-entropy) of ``model`` on ``split``; (nan, nan) if it is empty."""
    if len(split) == 0:
        return math.nan, math.nan
    logits = predict_logits(model, split.images, info, batch_size=batch_size, amp=amp)
    loss = F.cross_entropy(logits, split.labels, reduction="sum")
    correct = (logits.argmax(1) == split.labels).sum()
    stats = torch.stack([correct.float(), loss]).cpu()
    return float(stats[0]) / len(split), float(stats[1]) / len(split)


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
    device = data.device
    t_start = time.perf_counter()
    torch.manual_seed(seed)
    lr = recipe.lr if lr is None else lr
    use_kd = kd is not None and kd.alpha < 1.0
    if use_kd and teacher is None:
        raise ValueError("kd with alpha < 1 needs a teacher (cached logits or a live model)")
    if isinstance(teacher, CachedLogits) and teacher.logits.shape[1] != len(data.train):
        raise ValueError(
            f"cached logits cover {teacher.logits.shape[1]} rows, the training split has {len(data.train)}"
        )
    if isinstance(teacher, CachedLogits) and teacher.augmented and augment_kind == "none":
        raise ValueError("augmented teacher views need the same augmentation for the student")

    channels_last = recipe.channels_last is True or (
        recipe.channels_last == "auto" and device.type == "cuda" and _is_conv(model)
    )
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    step_model: nn.Module = torch.compile(model) if recipe.compile else model  # type: ignore[assignment]

    n = len(data.train)
    steps_per_epoch = math.ceil(n / recipe.batch_size)
    if recipe.steps is not None:
        total_steps = recipe.steps
        epochs = math.ceil(total_steps / steps_per_epoch)
    else:
        epochs = recipe.epochs or 1
        total_steps = epochs * steps_per_epoch
    optimizer = make_optimizer(model, recipe, lr)
    scheduler = make_scheduler(optimizer, recipe, total_steps, steps_per_epoch)
    gen = torch.Generator(device=device)
    gen.manual_seed(_mix(seed, 0x5EED))
    info = data.info
    if isinstance(teacher, LiveTeacher):
        teacher.model.eval()

    result = TrainResult(math.nan, math.nan, None, None, device=str(device))
    step = 0
    train_time = 0.0
    samples = 0
    model.train()
    for epoch in range(epochs):
        t_epoch = time.perf_counter()
        # Which pixels this epoch trains on: a cached view, or a fresh seeded augmentation.
        if isinstance(teacher, CachedLogits) and teacher.augmented:
            view = epoch % teacher.views
            images = view_images(data.train.images, augment_kind, teacher.seed, view)
            epoch_logits: torch.Tensor | None = teacher.logits[view]
        else:
            images = view_images(data.train.images, augment_kind, _mix(seed, 0xA11), epoch)
            epoch_logits = teacher.logits[0] if isinstance(teacher, CachedLogits) else None
        budget = min(steps_per_epoch, total_steps - step)
        losses = torch.zeros(budget, device=device)
        for i, idx in enumerate(_batches(n, recipe.batch_size, gen, device)):
            if i >= budget:
                break
            x = normalize(images[idx], info)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = data.train.labels[idx]
            with _autocast(device, recipe.amp):
                out = step_model(x)
            if use_kd:
                assert kd is not None
                if epoch_logits is not None:
                    t_logits = epoch_logits[idx]
                else:
                    assert isinstance(teacher, LiveTeacher)
                    with torch.no_grad(), _autocast(device, recipe.amp):
                        t_logits = teacher.model(x).float().to(teacher.logit_dtype)
                loss = distillation_loss(
                    out, t_logits, y, temperature=kd.temperature, alpha=kd.alpha,
                    label_smoothing=recipe.label_smoothing,
                )
            else:
                loss = F.cross_entropy(out.float(), y, label_smoothing=recipe.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses[i] = loss.detach()
            samples += int(idx.shape[0])
        step_losses = losses.cpu()
        finite = torch.isfinite(step_losses)
        if not bool(finite.all()):
            bad = int((~finite).nonzero()[0, 0])
            raise NonFiniteLossError(step + bad, epoch, float(step_losses[bad]))
        step += budget
        if keep_step_losses:
            result.step_losses.extend(step_losses.tolist())
        train_time += time.perf_counter() - t_epoch
        val_acc, val_loss = evaluate(model, data.val, info, amp=recipe.amp)
        record = EpochRecord(
            epoch=epoch,
            train_loss=float(step_losses.mean()) if budget else math.nan,
            val_acc=val_acc,
            val_loss=val_loss,
            seconds=time.perf_counter() - t_epoch,
            lr=float(optimizer.param_groups[0]["lr"]),
            steps=step,
        )
        result.epochs.append(record)
        result.val_acc, result.val_loss = val_acc, val_loss
        if callback is not None:
            callback(record)
        if step >= total_steps:
            break
    if evaluate_test:
        result.test_acc, result.test_loss = evaluate(model, data.test, info, amp=recipe.amp)
    if channels_last:
        model.to(memory_format=torch.contiguous_format)
    result.steps = step
    result.train_time_s = train_time
    result.samples_per_s = samples / train_time if train_time > 0 else math.nan
    result.wall_time_s = time.perf_counter() - t_start
    return result


@torch.no_grad()
def inference_ms_per_batch(
    model: nn.Module, info: DatasetInfo, device: torch.device | str, *, batch_size: int = 256, repeats: int = 10
) -> float:
    """Median milliseconds of one eval-mode forward pass over a batch of ``batch_size`` images."""
    device = torch.device(device)
    x = torch.randn(batch_size, info.channels, info.image_size, info.image_size, device=device)
    was_training = model.training
    model.eval()
    times = []
    try:
        for i in range(repeats + 2):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= 2:  # the first calls warm caches and allocators
                times.append(time.perf_counter() - t0)
    finally:
        model.train(was_training)
    return 1000.0 * sorted(times)[len(times) // 2]

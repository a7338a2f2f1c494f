"""One training loop for teachers and students. It knows nothing of Optuna or the store.

Data stay on the device as uint8 tensors; each epoch draws a seeded permutation, augments the whole
split in one batched call (so a cached teacher view and the student see the same pixels), and every
step normalises its batch on the device. Losses are summed into a device tensor: nothing synchronises
with the host inside the step loop; the epoch end reads the losses back once and checks them.
"""

from __future__ import annotations

import contextlib
import copy
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
    "batch_order",
    "budget",
    "check_teacher",
    "configure_device",
    "epoch_pixels",
    "evaluate",
    "first_non_finite",
    "inference_ms_per_batch",
    "lr_factor",
    "make_optimizer",
    "make_scheduler",
    "predict_logits",
    "resolve_device",
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
    device = data.device
    t_start = time.perf_counter()
    torch.manual_seed(seed)
    lr = recipe.lr if lr is None else lr
    use_kd = kd is not None and kd.alpha < 1.0
    check_teacher(teacher, data, augment_kind, use_kd)
    configure_device(device)
    channels_last = uses_channels_last(recipe, device, model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    user_model, model, step_model = model, *_compiled(model, recipe.compile)

    n = len(data.train)
    steps_per_epoch, total_steps, epochs = budget(recipe, n)
    optimizer = make_optimizer(model, recipe, lr)
    scheduler = make_scheduler(optimizer, recipe, total_steps, steps_per_epoch)
    order = batch_order(n, seed, device)
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
        images, epoch_logits = epoch_pixels(data, teacher, augment_kind, seed, epoch)
        todo = min(steps_per_epoch, total_steps - step)
        losses = torch.zeros(todo, device=device)
        for i, idx in enumerate(order(recipe.batch_size)):
            if i >= todo:
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
        bad = first_non_finite(step_losses)
        if bad is not None:
            raise NonFiniteLossError(step + bad, epoch, float(step_losses[bad]))
        step += todo
        if keep_step_losses:
            result.step_losses.extend(step_losses.tolist())
        train_time += time.perf_counter() - t_epoch
        val_acc, val_loss = evaluate(model, data.val, info, amp=recipe.amp)
        record = EpochRecord(
            epoch=epoch,
            train_loss=float(step_losses.mean()) if todo else math.nan,
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
    if model is not user_model:  # trained the cached compiled module: hand the weights back
        user_model.load_state_dict(model.state_dict())
    if channels_last:
        user_model.to(memory_format=torch.contiguous_format)
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

"""The frame every training loop runs in: what a run takes and returns, the seeded data views and batch
order, the budget, the checks, and :class:`StepLoop` (made by :func:`start_loop`).

:func:`kdbench.train.train` and :func:`kdbench.fused.train_fused` both run in this frame, so K fused
students see exactly the batches K sequential runs see: each epoch draws a seeded permutation, augments
the whole split in one batched call (so a cached teacher view and the student see the same pixels), and
every step normalises its batch on the device. Losses are summed into a device tensor: nothing
synchronises with the host inside the step loop; the epoch end reads the losses back once and checks them.
It knows nothing of Optuna or the store.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from kdbench.config import Recipe
from kdbench.data import Data, augment, normalize
from kdbench.errors import NonFiniteLossError
from kdbench.evaluate import autocast
from kdbench.losses import KDParams

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
    "eval_points",
    "first_non_finite",
    "start_loop",
    "uses_channels_last",
    "view_images",
]



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
    """What one evaluation point produced (an epoch's end, or a point of ``eval_every``'s step grid); handed to
    the callback, which may raise to stop (e.g. to prune). ``train_loss`` and ``seconds`` cover the steps since
    the previous point; ``steps`` counts the optimiser steps taken by the point, ``point`` numbers it from 0
    (the epoch itself when validation runs at epoch ends only)."""

    epoch: int
    train_loss: float
    val_acc: float
    val_loss: float
    seconds: float
    lr: float
    steps: int
    point: int = -1  # -1: the epoch's own number (validation at epoch ends only)

    def __post_init__(self) -> None:
        if self.point < 0:
            self.point = self.epoch


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


def budget(recipe: Recipe, n: int) -> tuple[int, int, int]:
    """``(steps_per_epoch, total_steps, epochs)`` of a recipe on ``n`` training rows (``steps`` beats ``epochs``)."""
    steps_per_epoch = math.ceil(n / recipe.batch_size)
    if recipe.steps is not None:
        return steps_per_epoch, recipe.steps, math.ceil(recipe.steps / steps_per_epoch)
    epochs = recipe.epochs or 1
    return steps_per_epoch, epochs * steps_per_epoch, epochs


def eval_points(steps_per_epoch: int, total_steps: int, eval_every: int | None = None) -> list[int]:
    """The optimiser steps after which validation runs: each epoch's end (the last one at the budget), and with
    ``eval_every`` also every multiple of it; ``[3, 6, 9, 10]`` for 10 steps in one epoch with ``eval_every=3``."""
    ends = set(range(steps_per_epoch, total_steps, steps_per_epoch)) | {total_steps}
    grid = set(range(eval_every, total_steps, eval_every)) if eval_every is not None else set()
    return sorted(ends | grid)


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
    """``channels_last: auto`` turns it on for convolutional models on CUDA and the CPU.

    On the CPU, oneDNN's convolutions run faster in it too: a cnn-m training step of batch 128 took 0.65x the
    time, cnn-s 0.64x, resnet8x4 (batch 64) 0.76x (``python bench/step_costs.py``, 2 cores).
    """
    return recipe.channels_last is True or (
        recipe.channels_last == "auto" and device.type in ("cuda", "cpu") and _is_conv(model)
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
        rows: the epoch's seeded batches of training rows (shared by the parts of one epoch).
        point: the evaluation point its end is (see :func:`eval_points`), numbered from 0.

    With ``eval_every`` an epoch comes in parts, one per evaluation point it holds: each part is an
    :class:`Epoch` of the same ``index``, pixels and batch order, whose ``first_step`` and ``todo`` are the part's.
    """

    index: int
    first_step: int
    todo: int
    images: torch.Tensor
    cached_logits: torch.Tensor | None
    started: float
    rows: Iterator[torch.Tensor]
    point: int

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
            point=self.point,
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
    eval_every: int | None = None
    step: int = 0
    samples: int = 0
    train_time: float = 0.0

    def epochs(self) -> Iterator[Epoch]:
        """Each epoch in turn (in parts, one per evaluation point, with ``eval_every``), until the caller stops or
        an epoch's end reaches the step budget; the caller evaluates at the end of each."""
        points = iter(enumerate(eval_points(self.steps_per_epoch, self.total_steps, self.eval_every)))
        for index in range(self.num_epochs):
            started = time.perf_counter()
            images, cached = epoch_pixels(self.data, self.teacher, self.augment_kind, self.seed, index)
            end = self.step + min(self.steps_per_epoch, self.total_steps - self.step)
            rows = self.order(self.recipe.batch_size)
            while self.step < end:
                point, at = next(points)
                yield Epoch(index, self.step, at - self.step, images, cached, started, rows, point)
                started = time.perf_counter()
            if self.step >= self.total_steps:
                return

    def batches(self, epoch: Epoch) -> Iterator[Batch]:
        """The epoch's ``todo`` seeded batches, normalised on the device (channels-last if the loop is)."""
        for i, rows in enumerate(itertools.islice(epoch.rows, epoch.todo)):
            x = normalize(epoch.images[rows], self.data.info)
            if self.channels_last and x.dim() == 4:  # features or token ids have no channels
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
    eval_every: int | None = None,
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
        eval_every: also evaluate every this many optimiser steps (:func:`eval_points`); None: at epoch ends.

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
        steps_per_epoch, total_steps, epochs, batch_order(n, seed, data.device), started, eval_every,
    )


def _batches(n: int, batch_size: int, gen: torch.Generator, device: torch.device) -> Iterator[torch.Tensor]:
    perm = torch.randperm(n, generator=gen, device=device)
    yield from perm.split(batch_size)

"""How many search visits one fused step trains (``search.fuse``), decided once per worker and said out loud.

Fusing K students (:mod:`kdbench.fused`) pays on a GPU, where one small student leaves most of the chip
idle: ``bench/fused.py`` measured ×6.1–6.7 students·samples/s at K = 16 on an H200. On the CPU it costs:
the same script on a quiet 2-core machine measured ×0.64–0.90 for mlp-800 and ×0.35–0.73 for cnn-s, since
one student's matrix products already fill the cores. So:

- ``auto`` (the default): on CUDA, as many students as fit (an estimate of one student's training memory
  against :data:`~kdbench.config.FUSE_MEMORY_SHARE` of the free GPU memory), up to
  :data:`~kdbench.config.FUSE_AUTO_MAX`; on the CPU, sequential.
- ``K``: K students per step on CUDA; on the CPU it is not applied (sequential), with one line saying why.

The decision is a :class:`FusePlan` whose ``why`` the sweep prints once; every fused run's stored ``device``
says ``fused ×k``. Fused and sequential training give the same results to float tolerance
(tests/test_fused.py), so the choice changes the speed of a sweep, not its numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kdbench.config import Study
from kdbench.data import DatasetInfo
from kdbench.defaults import FUSE_AUTO_MAX, FUSE_MEMORY_SHARE
from kdbench.models import build_model
from kdbench.models.sources import study_model

__all__ = ["FusePlan", "fuse_plan", "student_training_bytes"]

MIB = 1 << 20


@dataclass(frozen=True)
class FusePlan:
    """Up to ``k`` search visits of one seed per fused step (1: sequential), and the reason in one line."""

    k: int
    why: str


def student_training_bytes(model: nn.Module, batch_size: int, info: DatasetInfo) -> int:
    """An estimate of one student's training memory: weights, gradients and Adam's two moments (4 copies of
    the parameters, float32) plus every module's output for a batch, kept for the backward pass (float32)."""
    params = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    outputs = [0]

    def count(_m: nn.Module, _i: object, out: object) -> None:
        if isinstance(out, torch.Tensor):
            outputs[0] += out.numel()

    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(info.example_batch(1))
        model.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    return 4 * (4 * params + outputs[0] * batch_size)


def fuse_plan(study: Study, device: torch.device, info: DatasetInfo, free_bytes: int | None = None) -> FusePlan:
    """How many visits to fuse for ``study`` on ``device``.

    Args:
        study: the validated study (``search.fuse``, the student and its batch size).
        device: the training device.
        info: the dataset's shape (to build the student for the memory estimate).
        free_bytes: free GPU memory (default: ``torch.cuda.mem_get_info``); for tests.
    """
    fuse = study.search.fuse
    if device.type != "cuda":
        if fuse == "auto" or fuse == 1:
            return FusePlan(1, "")
        return FusePlan(1, f"search.fuse: {fuse} is not applied on the CPU (fused students train slower than "
                           "sequential ones there: bench/fused.py measured x0.64-0.90 for mlp-800 on 2 cores); "
                           "training the visits one by one")
    if fuse != "auto":
        return FusePlan(fuse, f"fusing up to {fuse} search visits per step (search.fuse: {fuse})" if fuse > 1 else "")
    s = study.student
    student = build_model(study_model(study, "student"), **info.model_shape, weights=s.weights,
                          model_args=s.model_args, folder=study.folder)
    need = student_training_bytes(student, study.student.batch_size, info)
    free = torch.cuda.mem_get_info(device)[0] if free_bytes is None else free_bytes
    k = max(1, min(FUSE_AUTO_MAX, int(FUSE_MEMORY_SHARE * free // need)))
    if k == 1:
        return FusePlan(1, f"search.fuse: auto: one {study.student.model} needs about {need / MIB:.0f} MiB to "
                           f"train, {FUSE_MEMORY_SHARE:.0%} of the free {free / MIB:.0f} MiB holds one; sequential")
    return FusePlan(k, f"search.fuse: auto: fusing up to {k} search visits of one seed per step "
                       f"(about {need / MIB:.0f} MiB each, {FUSE_MEMORY_SHARE:.0%} of the free {free / MIB:.0f} MiB "
                       f"on {device}; at most {FUSE_AUTO_MAX})")

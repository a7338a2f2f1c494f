"""The distillation loss of Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network".

    L = alpha * CE(y, s) + (1 - alpha) * T^2 * KL(softmax(t / T) || softmax(s / T))

``alpha`` weights the *hard* labels, as in the notebook kdbench grew from: ``alpha = 1`` is plain
cross-entropy and ``alpha = 0`` is pure distillation. Some tools (e.g. RepDistiller's ``-b``/``-r``
flags, torchdistill's ``alpha``) weight the KD term with alpha instead; convert with ``1 - alpha``.

The T^2 factor keeps the soft term's gradient magnitude roughly independent of T (Hinton et al. §2):
the gradient of the KD term with respect to a student logit is ``T * (softmax(s/T) - softmax(t/T))``
times ``(1 - alpha) / batch``, which tends to ``(s - t) / K`` per logit for large T.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["distillation_loss", "kd_term", "mixed_loss", "validate_alpha", "validate_temperature"]


def validate_temperature(temperature: float) -> float:
    """Return ``temperature`` as a float, or raise ValueError if it is not a finite number > 0."""
    t = float(temperature)
    if not math.isfinite(t) or t <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return t


def validate_alpha(alpha: float) -> float:
    """Return ``alpha`` as a float, or raise ValueError if it is outside [0, 1]."""
    a = float(alpha)
    if not (0.0 <= a <= 1.0):  # also rejects NaN
        raise ValueError(f"alpha must be in [0, 1] (the weight of the hard-label CE term), got {alpha!r}")
    return a


def kd_term(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))``, averaged over the batch (``batchmean``).

    Both sides go through ``log_softmax`` in float32, so large logits and fp16/bf16 inputs are safe
    (no ``log`` of a softmax that has underflowed to zero).
    """
    return _soft(student_logits, teacher_logits, validate_temperature(temperature))


def _soft(student_logits: torch.Tensor, teacher_logits: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    log_p_student = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
    if isinstance(t, torch.Tensor):  # under vmap, where kl_div has no batching rule: the same sum, written out
        kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum() / student_logits.shape[0]
    else:
        kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * (t * t)


def mixed_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: torch.Tensor,
    alpha: torch.Tensor,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """:func:`distillation_loss` with T and alpha as (0-dim) tensors, unvalidated and without shortcuts.

    For ``torch.func.vmap`` over students that each have their own T and alpha (kdbench.fused). At
    alpha = 1 it is ``CE + 0 * KD``: the same value and gradient as plain CE while the KD term is finite.
    The caller validates T and alpha (:class:`kdbench.train.KDParams` does).
    """
    ce = F.cross_entropy(student_logits.float(), labels, label_smoothing=label_smoothing)
    return alpha * ce + (1.0 - alpha) * _soft(student_logits, teacher_logits, temperature)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Hinton's knowledge-distillation loss.

    ``L = alpha * CE(labels, s) + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T))``

    Args:
        student_logits: ``[B, K]`` student outputs (any float dtype; computed in float32).
        teacher_logits: ``[B, K]`` teacher outputs for the same inputs (fp16 cache is fine).
        labels: ``[B]`` integer class labels.
        temperature: T > 0; softens both distributions.
        alpha: weight of the hard-label cross-entropy in [0, 1]. ``alpha=1`` is exactly
            cross-entropy (the teacher is not even read); ``alpha=0`` is pure distillation.
        label_smoothing: passed to the CE term.

    Returns:
        A scalar float32 tensor.

    Raises:
        ValueError: if ``temperature`` or ``alpha`` is invalid (the message names the value).
    """
    t = validate_temperature(temperature)
    a = validate_alpha(alpha)
    ce = F.cross_entropy(student_logits.float(), labels, label_smoothing=label_smoothing)
    if a == 1.0:
        return ce
    kd = kd_term(student_logits, teacher_logits, t)
    if a == 0.0:
        return kd
    return a * ce + (1.0 - a) * kd

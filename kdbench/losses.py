"""The distillation loss of Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network".

    L = alpha * CE(y, s) + (1 - alpha) * T^2 * KL(softmax(t / T) || softmax(s / T))

``alpha`` weights the *hard* labels, as in the notebook kdbench grew from: ``alpha = 1`` is plain
cross-entropy and ``alpha = 0`` is pure distillation. Some tools (e.g. RepDistiller's ``-b``/``-r``
flags, torchdistill's ``alpha``) weight the KD term with alpha instead; convert with ``1 - alpha``.

The T^2 factor keeps the soft term's gradient magnitude roughly independent of T (Hinton et al. §2):
the gradient of the KD term with respect to a student logit is ``T * (softmax(s/T) - softmax(t/T))``
times ``(1 - alpha) / batch``, which tends to ``(s - t) / K`` per logit for large T.

Three later logit-distillation terms sit beside it, each checked against its authors' code:
:func:`dkd_loss` (Decoupled KD, CVPR 2022), :func:`dist_loss` (DIST, NeurIPS 2022) and
:func:`lskd_loss` (logit-standardised KD, CVPR 2024), with :func:`kd_loss` (Hinton's term alone) and
the tables :data:`METHODS`, :data:`METHOD_PARAMS` and :data:`METHOD_DEFAULTS` (published defaults).
They return the distillation term only; :func:`method_loss` adds the cross-entropy and the weights, as
:class:`KDParams` (one student's method, T, weights and warm-up) says.

The module runs past 400 lines because each of the four published terms carries its formula, paper,
published defaults and the authors' code it was checked against: one place for every loss kdbench trains.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kdbench.config import METHOD_DEFAULTS, METHOD_PARAMS

__all__ = [
    "METHODS",
    "METHOD_DEFAULTS",
    "METHOD_PARAMS",
    "KDParams",
    "dist_loss",
    "distillation_loss",
    "dkd_loss",
    "kd_loss",
    "kd_term",
    "lskd_loss",
    "method_loss",
    "mixed_loss",
    "validate_alpha",
    "validate_temperature",
]


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


# --------------------------------------------------------------------------------------------------
# Published logit-distillation losses: the distillation term only (the caller adds CE and weights).
#
# Each takes ``(student_logits, teacher_logits, labels, *, temperature, <weights>)`` and returns a
# 0-dim tensor in float32, or float64 for float64 inputs (``promote_types(dtype, float32)``: fp16/bf16
# logits are upcast before anything is computed). Python-number hyperparameters are validated; 0-dim
# tensor hyperparameters are not (the fused caller validates them) and may be batched by
# ``torch.func.vmap`` over a leading student dimension, so these functions use no ``F.kl_div`` (no
# batching rule), no data-dependent Python control flow, no in-place ops and no boolean indexing.
# --------------------------------------------------------------------------------------------------

Hyper = float | torch.Tensor


def _check_temperature(temperature: Hyper) -> Hyper:
    return temperature if isinstance(temperature, torch.Tensor) else validate_temperature(temperature)


def _check_weight(name: str, value: Hyper) -> Hyper:
    if isinstance(value, torch.Tensor):
        return value
    w = float(value)
    if not (math.isfinite(w) and w >= 0.0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return w


def _compute(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32, or in float64 if it already is (fp16/bf16 inputs are upcast first)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``sum_k p_k (log p_k - log q_k)`` over the last dim, from log-probabilities (finite inputs)."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    temperature: Hyper,
) -> torch.Tensor:
    """Hinton's distillation term alone: ``T^2 * KL(softmax(t/T) || softmax(s/T))``, batchmean.

    Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network". The same value
    as :func:`kd_term`, but it also takes a (vmapped) tensor T and keeps float64 inputs in float64.
    ``labels`` is unused (the common signature of :data:`METHODS`).

    Published default (``METHOD_DEFAULTS["kd"]``): T = 4, the usual CIFAR-100 setting (RepDistiller,
    mdistiller ``CFG.KD.TEMPERATURE = 4``, where CE weight 0.1 and KD weight 0.9).

    Raises:
        ValueError: if a Python-number ``temperature`` is not finite and > 0.
    """
    t = _check_temperature(temperature)
    s, te = _compute(student_logits), _compute(teacher_logits)
    log_ps = F.log_softmax(s / t, dim=-1)
    log_pt = F.log_softmax(te / t, dim=-1)
    return _kl_rows(log_pt, log_ps).mean() * (t * t)


def dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: Hyper,
    tckd_weight: Hyper,
    nckd_weight: Hyper,
) -> torch.Tensor:
    """Decoupled Knowledge Distillation: ``tckd_weight * TCKD + nckd_weight * NCKD``, each times T^2.

    Zhao, Cui, Song, Qiu & Liang, "Decoupled Knowledge Distillation", CVPR 2022 (arXiv 2203.08679).
    With ``p = softmax(z/T)`` and ``g`` the label of each sample:

    * TCKD = ``KL(b_t || b_s)`` with the binary distributions ``b = [p_g, 1 - p_g]``;
    * NCKD = ``KL(q_t || q_s)`` with ``q`` the softmax over the non-target classes only
      (``q_k = p_k / (1 - p_g)``, k != g);

    both summed over the batch, divided by the batch size, and multiplied by T^2. Classic KD is
    ``TCKD + (1 - p_g^teacher) * NCKD``; DKD decouples the two weights.

    The value equals the authors' ``dkd_loss(logits_student, logits_teacher, target,
    alpha=tckd_weight, beta=nckd_weight, temperature)`` in github.com/megvii-research/mdistiller,
    ``mdistiller/distillers/DKD.py`` at commit a08d46f10d6102bd6e3f258ca5ac880b020ea259. There NCKD
    masks the target logit by subtracting 1000.0 from ``z/T``, and TCKD takes ``torch.log`` of summed
    softmax probabilities; here both are computed from log-softmax / logsumexp over the non-target
    classes, which is the same up to float rounding, but exact (the 1000 offset is not enough once
    logit gaps reach ~1000·T) and finite with huge logits (``log`` of an underflowed probability is
    -inf there). Needs at least 2 classes.

    Published defaults (``METHOD_DEFAULTS["dkd"]``, mdistiller ``CFG.DKD``): T = 4, tckd (alpha) 1,
    nckd (beta) 8, CE weight 1, and the whole DKD term ramped in linearly over the first 20 epochs
    (``min(epoch / 20, 1)``, epochs counted from 1) -- the ramp is the caller's job. CIFAR-100
    resnet32x4 -> resnet8x4: 76.32 top-1 vs 73.33 for KD. The authors' configs lower beta for other
    pairs (2 for resnet56/110 -> resnet20/32; 6 for vgg13 -> vgg8/MobileNetV2 and wrn_40_2 students)
    and use T = 1, beta 0.5 (R34 -> R18) or 2 (R50 -> MobileNetV1), warmup 1 on ImageNet.

    Raises:
        ValueError: if a Python-number ``temperature`` is not > 0 or a weight is negative / not finite.
    """
    t = _check_temperature(temperature)
    a = _check_weight("tckd_weight", tckd_weight)
    b = _check_weight("nckd_weight", nckd_weight)
    s, te = _compute(student_logits), _compute(teacher_logits)
    num_classes = s.shape[-1]
    gt = labels.reshape(-1, 1) == torch.arange(num_classes, device=labels.device)  # [B, K], unbatched

    def parts(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        zt = z / t
        lse_all = torch.logsumexp(zt, dim=-1)
        lse_other = torch.logsumexp(torch.where(gt, -math.inf, zt), dim=-1)  # over the non-target classes
        log_gt = torch.where(gt, zt, 0.0).sum(-1) - lse_all  # log p_g
        log_other = lse_other - lse_all  # log(1 - p_g)
        # log q_k = z_k/T - logsumexp_{j != g} z_j/T for k != g (straight from the logits: no cancellation
        # when p_g ~ 1); a harmless 0 at k = g, so exp() cannot overflow there
        log_q = torch.where(gt, 0.0, zt - lse_other.unsqueeze(-1))
        return torch.stack((log_gt, log_other), dim=-1), log_q

    log_b_s, log_q_s = parts(s)
    log_b_t, log_q_t = parts(te)
    tckd = _kl_rows(log_b_t, log_b_s).mean()
    nckd = torch.where(gt, 0.0, log_q_t.exp() * (log_q_t - log_q_s)).sum(-1).mean()
    return (a * tckd + b * nckd) * (t * t)


def _pearson_rows(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-row Pearson correlation, as the cosine similarity of the row-centred vectors (+eps)."""
    xc = x - x.mean(-1, keepdim=True)
    yc = y - y.mean(-1, keepdim=True)
    norms = torch.linalg.vector_norm(xc, dim=-1) * torch.linalg.vector_norm(yc, dim=-1)
    return (xc * yc).sum(-1) / (norms + eps)


def dist_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    temperature: Hyper,
    inter_weight: Hyper,
    intra_weight: Hyper,
) -> torch.Tensor:
    """DIST: ``inter_weight * T^2 * L_inter + intra_weight * T^2 * L_intra``.

    Huang, You, Wang, Qian & Xu, "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022
    (arXiv 2205.10536). With ``P_s = softmax(s/T)``, ``P_t = softmax(t/T)`` (``[B, K]``) and
    ``rho(u, v) = <u - mean u, v - mean v> / (|u - mean u| * |v - mean v| + 1e-8)``:

    * ``L_inter = 1 - mean_i rho(P_s[i, :], P_t[i, :])`` (each sample's distribution over classes);
    * ``L_intra = 1 - mean_k rho(P_s[:, k], P_t[:, k])`` (each class's probabilities over the batch).

    Matches the authors' ``DIST(beta=inter_weight, gamma=intra_weight, tau=temperature)`` in
    github.com/hunto/image_classification_sota, ``lib/models/losses/dist_kd.py`` at commit
    d9662f7df68fe46b973c4580b7c9b896cedcd301 (the ``classification`` submodule of
    github.com/hunto/DIST_KD at 2418f18b1fedd7c2646a7b1b9a27d5c674c2170b; unchanged at the submodule's
    newest stored commit 6f7a70a1dd57fd88413d83909d3d53243068f701), including the eps = 1e-8 added to
    the denominator: a zero-variance row or column (identical probabilities, a batch of one, a class
    every sample gives the same probability) has correlation 0 there, so the value stays finite.
    ``labels`` is unused.

    Published defaults (``METHOD_DEFAULTS["dist"]``): T = 4 on CIFAR-100 (``kd: dist_t4``; resnet32x4
    -> resnet8x4: 76.31), T = 1 on ImageNet (``kd: dist``); inter = intra = 1 here, which is the
    ``DIST`` class's ``beta = gamma = 1`` -- but every released config multiplies the whole DIST term by
    ``kd_loss_weight: 2`` (with CE weight 1), i.e. beta = gamma = 2 in effect; pass 2 to reproduce.

    Raises:
        ValueError: if a Python-number ``temperature`` is not > 0 or a weight is negative / not finite.
    """
    t = _check_temperature(temperature)
    wi = _check_weight("inter_weight", inter_weight)
    wc = _check_weight("intra_weight", intra_weight)
    p_s = F.softmax(_compute(student_logits) / t, dim=-1)
    p_t = F.softmax(_compute(teacher_logits) / t, dim=-1)
    inter = 1.0 - _pearson_rows(p_s, p_t).mean()
    intra = 1.0 - _pearson_rows(p_s.transpose(-1, -2), p_t.transpose(-1, -2)).mean()
    return (wi * inter + wc * intra) * (t * t)


def _standardise(z: torch.Tensor) -> torch.Tensor:
    """``(z - mean) / (std + 1e-7)`` per sample, std unbiased (``torch.std``), as the LS-KD code."""
    return (z - z.mean(-1, keepdim=True)) / (z.std(-1, keepdim=True) + 1e-7)


def lskd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    temperature: Hyper,
) -> torch.Tensor:
    """Logit-standardised KD: Hinton's term on per-sample Z-scored logits, times T^2.

    Sun, Ren, Li, Wang & Cao, "Logit Standardization in Knowledge Distillation", CVPR 2024
    (arXiv 2403.01427). ``Z(z) = (z - mean(z)) / (std(z) + 1e-7)`` over the classes of each sample,
    with the unbiased (K - 1) std of ``torch.std``; the loss is
    ``T^2 * KL(softmax(Z(t)/T) || softmax(Z(s)/T))``, batchmean. Constant logits give ``Z = 0``.
    ``labels`` is unused.

    Matches ``kd_loss(..., logit_stand=True)`` with ``normalize`` in
    github.com/sunshangquan/logit-standardization-KD, ``mdistiller/distillers/KD.py`` at commit
    f6e5aa5172bad618e801163c3385322eea673754.

    Published defaults (``METHOD_DEFAULTS["lskd"]``): base temperature T = 2 with KD weight 9 and
    CE weight 0.1 (``tools/train.py --logit-stand --base-temp 2 --kd-weight 9``; CIFAR-100
    resnet32x4 -> resnet8x4: 76.62). Some pairs use T = 3, or T = 4 with KD weight 12.

    Raises:
        ValueError: if a Python-number ``temperature`` is not finite and > 0.
    """
    t = _check_temperature(temperature)
    log_ps = F.log_softmax(_standardise(_compute(student_logits)) / t, dim=-1)
    log_pt = F.log_softmax(_standardise(_compute(teacher_logits)) / t, dim=-1)
    return _kl_rows(log_pt, log_ps).mean() * (t * t)


METHODS: dict[str, Callable[..., torch.Tensor]] = {
    "kd": kd_loss,
    "dkd": dkd_loss,
    "dist": dist_loss,
    "lskd": lskd_loss,
}
"""Distillation term of each method: ``fn(student_logits, teacher_logits, labels, *, temperature, ...)``."""

@dataclass(frozen=True)
class KDParams:
    """The distillation loss of one student: ``ce_weight * CE + kd_weight * ramp * term(method)``.

    ``KDParams(T, alpha)`` is Hinton's KD in its convex form (ce_weight = alpha, kd_weight = 1 - alpha);
    another method gives ``method``, its two weights (or alpha) and its own hyperparameters in ``extra``.
    ``warmup_epochs`` ramps the distillation term in linearly (DKD's published recipe ramps over 20 epochs).
    """

    temperature: float
    alpha: float | None = None
    method: str = "kd"
    ce_weight: float | None = None
    kd_weight: float | None = None
    extra: tuple[tuple[str, float], ...] = ()
    warmup_epochs: float = 0.0

    def __post_init__(self) -> None:
        validate_temperature(self.temperature)
        if self.alpha is not None:
            validate_alpha(self.alpha)
        elif self.ce_weight is None or self.kd_weight is None:
            raise ValueError("give alpha, or both ce_weight and kd_weight")
        for name, w in (("ce_weight", self.ce_weight), ("kd_weight", self.kd_weight), *self.extra):
            if w is not None and not (math.isfinite(w) and w >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {w!r}")

    @property
    def weights(self) -> tuple[float, float]:
        """(ce_weight, kd_weight): from alpha when it is given."""
        if self.alpha is not None:
            return self.alpha, 1.0 - self.alpha
        assert self.ce_weight is not None and self.kd_weight is not None
        return self.ce_weight, self.kd_weight

    @property
    def reads_teacher(self) -> bool:
        """Whether the loss reads the teacher at all (a zero distillation weight is plain CE)."""
        return self.weights[1] > 0.0

    @property
    def hinton(self) -> bool:
        """Hinton's KD in its convex form without a ramp: :func:`kdbench.losses.distillation_loss` exactly."""
        return self.method == "kd" and self.alpha is not None and self.warmup_epochs == 0.0

    def ramp(self, step: int, steps_per_epoch: int) -> float:
        """The distillation term's factor at optimiser step ``step`` (0-based): linear up to 1 over the warm-up."""
        if self.warmup_epochs <= 0.0:
            return 1.0
        return min(1.0, (step + 1) / (self.warmup_epochs * steps_per_epoch))


def method_loss(
    method: str,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: Hyper,
    ce_weight: Hyper,
    kd_weight: Hyper,
    label_smoothing: float = 0.0,
    **params: Hyper,
) -> torch.Tensor:
    """``ce_weight * CE(labels, s) + kd_weight * term``, the term being ``METHODS[method]`` with ``params``.

    How a study's methods are trained (kdbench.config.METHOD_DEFAULTS holds the published weights): Hinton's
    ``alpha`` is ``ce_weight = alpha, kd_weight = 1 - alpha``; DKD's published loss is CE + 1 x DKD, LS-KD's
    0.1 CE + 9 KD. Hyperparameters may be 0-dim tensors (under ``vmap``, one per fused student).
    """
    ce = F.cross_entropy(student_logits.float(), labels, label_smoothing=label_smoothing)
    term = METHODS[method](student_logits, teacher_logits, labels, temperature=temperature, **params)
    return ce_weight * ce + kd_weight * term

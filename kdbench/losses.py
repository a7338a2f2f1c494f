"""The distillation losses kdbench trains with, and :data:`METHODS`, their registry: one record per method.

Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network":

    L = alpha * CE(y, s) + (1 - alpha) * T^2 * KL(softmax(t / T) || softmax(s / T))

``alpha`` weights the *hard* labels, as in the notebook kdbench grew from: ``alpha = 1`` is plain
cross-entropy and ``alpha = 0`` is pure distillation. Some tools (e.g. RepDistiller's ``-b``/``-r``
flags, torchdistill's ``alpha``) weight the KD term with alpha instead; convert with ``1 - alpha``.

The T^2 factor keeps the soft term's gradient magnitude roughly independent of T (Hinton et al. §2):
the gradient of the KD term with respect to a student logit is ``T * (softmax(s/T) - softmax(t/T))``
times ``(1 - alpha) / batch``, which tends to ``(s - t) / K`` per logit for large T.

Three later logit-distillation terms sit beside it, each checked against its authors' code:
:func:`dkd_loss` (Decoupled KD, CVPR 2022), :func:`dist_loss` (DIST, NeurIPS 2022) and
:func:`lskd_loss` (logit-standardised KD, CVPR 2024), with :func:`kd_loss` (Hinton's term alone). Each
public loss checks its hyperparameters (:func:`check_hyperparameters`) and returns the distillation term
only. :func:`method_loss` adds the cross-entropy and the weights without checking anything: it is what both
training loops call on every step (sequential, and fused under ``vmap``), once :class:`KDParams` (one
student's method, T, weights and warm-up) has checked the run's values. The temperature-scaled KL that
Hinton's term and LS-KD's need is :func:`tempered_kl`, written once.

**Adding a method** is one :class:`Method` record in :data:`METHODS`, beside its loss: its name (the key of
``search.method``), its title, its distillation term, its own hyperparameters and their published defaults,
and its paper. The study schema, the Optuna study names, the report's labels and the fused step read it from
there.

The module runs past 400 lines because each of the four published terms carries its formula, paper, published
defaults and the authors' code it was checked against, beside the registry record that names them: one place
for every loss kdbench trains.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch
import torch.nn.functional as F

__all__ = [
    "METHODS",
    "METHOD_DEFAULTS",
    "METHOD_PARAMS",
    "WEIGHTS",
    "KDParams",
    "Method",
    "check_hyperparameters",
    "dist_loss",
    "distillation_loss",
    "dkd_loss",
    "kd_loss",
    "kd_term",
    "lskd_loss",
    "method_loss",
    "tempered_kl",
]

WEIGHTS = ("ce_weight", "kd_weight")  # the explicit form of a method's two loss weights (instead of alpha)
Hyper = float | torch.Tensor  # a hyperparameter: a number, or a 0-dim tensor (one per fused student, under vmap)


def check_hyperparameters(*, temperature: Hyper, alpha: float | None = None, **weights: Hyper | None) -> None:
    """Raise ValueError (naming the value) for a temperature that is not finite and > 0, an alpha outside [0, 1]
    or a weight that is not finite and >= 0. Tensors are not read: their caller checked what they were made from."""
    if not isinstance(temperature, torch.Tensor):
        t = float(temperature)
        if not math.isfinite(t) or t <= 0:
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if alpha is not None and not (0.0 <= float(alpha) <= 1.0):  # also rejects NaN
        raise ValueError(f"alpha must be in [0, 1] (the weight of the hard-label CE term), got {alpha!r}")
    for name, value in weights.items():
        if value is None or isinstance(value, torch.Tensor):
            continue
        w = float(value)
        if not (math.isfinite(w) and w >= 0.0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _compute(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32, or in float64 if it already is (fp16/bf16 inputs are upcast first)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``sum_k p_k (log p_k - log q_k)`` over the last dim, from log-probabilities (finite inputs)."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def tempered_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: Hyper) -> torch.Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))``, averaged over the batch (``batchmean``); T unchecked.

    The one temperature-scaled KL here (Hinton's term; LS-KD's on standardised logits). Both sides go through
    ``log_softmax`` in float32 (float64 stays float64), so large logits and fp16/bf16 inputs are safe: no
    ``log`` of a softmax that has underflowed to zero. A tensor T (one per student under ``vmap``, where
    ``F.kl_div`` has no batching rule) gets the same sum written out.
    """
    log_p_student = F.log_softmax(_compute(student_logits) / temperature, dim=-1)
    log_p_teacher = F.log_softmax(_compute(teacher_logits) / temperature, dim=-1)
    if isinstance(temperature, torch.Tensor):
        kl = _kl_rows(log_p_teacher, log_p_student).mean()
    else:
        kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * (temperature * temperature)


def kd_term(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's term ``T^2 * KL(softmax(t/T) || softmax(s/T))`` (batchmean): :func:`tempered_kl` with T checked.

    Raises:
        ValueError: ``temperature`` is not a finite number > 0.
    """
    check_hyperparameters(temperature=temperature)
    return tempered_kl(student_logits, teacher_logits, float(temperature))


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
    check_hyperparameters(temperature=temperature, alpha=alpha)
    a = float(alpha)
    if a == 1.0:
        return F.cross_entropy(student_logits.float(), labels, label_smoothing=label_smoothing)
    return method_loss(METHODS["kd"], student_logits, teacher_logits, labels, temperature=float(temperature),
                       ce_weight=a, kd_weight=1.0 - a, label_smoothing=label_smoothing)


# Published logit-distillation terms. Each public ``*_loss`` checks its Python-number hyperparameters and returns
# a 0-dim tensor in float32 (float64 for float64 inputs; fp16/bf16 logits are upcast first). The unchecked
# ``_*_term`` behind it is what :data:`METHODS` holds and the step calls; its 0-dim tensor hyperparameters may be
# batched by ``torch.func.vmap`` over students, so the terms use no ``F.kl_div`` under a tensor T (no batching
# rule), no data-dependent Python control flow, no in-place ops and no boolean indexing.


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    temperature: Hyper,
) -> torch.Tensor:
    """Hinton's distillation term alone: ``T^2 * KL(softmax(t/T) || softmax(s/T))``, batchmean.

    Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network". The same value
    as :func:`kd_term` (both are :func:`tempered_kl`); it also takes a (vmapped) tensor T.
    ``labels`` is unused (the common signature of :data:`METHODS`' terms).

    Published default (``METHODS["kd"].defaults``): T = 4, the usual CIFAR-100 setting (RepDistiller,
    mdistiller ``CFG.KD.TEMPERATURE = 4``, where CE weight 0.1 and KD weight 0.9).

    Raises:
        ValueError: if a Python-number ``temperature`` is not finite and > 0.
    """
    check_hyperparameters(temperature=temperature)
    return _kd_term(student_logits, teacher_logits, labels, temperature=temperature)


def _kd_term(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None, *,
             temperature: Hyper) -> torch.Tensor:
    return tempered_kl(student_logits, teacher_logits, temperature)


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

    Published defaults (``METHODS["dkd"].defaults``, mdistiller ``CFG.DKD``): T = 4, tckd (alpha) 1,
    nckd (beta) 8, CE weight 1, and the whole DKD term ramped in linearly over the first 20 epochs
    (``min(epoch / 20, 1)``, epochs counted from 1) -- the ramp is the caller's job. CIFAR-100
    resnet32x4 -> resnet8x4: 76.32 top-1 vs 73.33 for KD. The authors' configs lower beta for other
    pairs (2 for resnet56/110 -> resnet20/32; 6 for vgg13 -> vgg8/MobileNetV2 and wrn_40_2 students)
    and use T = 1, beta 0.5 (R34 -> R18) or 2 (R50 -> MobileNetV1), warmup 1 on ImageNet.

    Raises:
        ValueError: if a Python-number ``temperature`` is not > 0 or a weight is negative / not finite.
    """
    check_hyperparameters(temperature=temperature, tckd_weight=tckd_weight, nckd_weight=nckd_weight)
    return _dkd_term(student_logits, teacher_logits, labels, temperature=temperature, tckd_weight=tckd_weight,
                     nckd_weight=nckd_weight)


def _dkd_term(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, *,
              temperature: Hyper, tckd_weight: Hyper, nckd_weight: Hyper) -> torch.Tensor:
    t = temperature
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
    return (tckd_weight * tckd + nckd_weight * nckd) * (t * t)


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

    Published defaults (``METHODS["dist"].defaults``): T = 4 on CIFAR-100 (``kd: dist_t4``; resnet32x4
    -> resnet8x4: 76.31), T = 1 on ImageNet (``kd: dist``); inter = intra = 1 here, which is the
    ``DIST`` class's ``beta = gamma = 1`` -- but every released config multiplies the whole DIST term by
    ``kd_loss_weight: 2`` (with CE weight 1), i.e. beta = gamma = 2 in effect; pass 2 to reproduce.

    Raises:
        ValueError: if a Python-number ``temperature`` is not > 0 or a weight is negative / not finite.
    """
    check_hyperparameters(temperature=temperature, inter_weight=inter_weight, intra_weight=intra_weight)
    return _dist_term(student_logits, teacher_logits, labels, temperature=temperature, inter_weight=inter_weight,
                      intra_weight=intra_weight)


def _dist_term(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None, *,
               temperature: Hyper, inter_weight: Hyper, intra_weight: Hyper) -> torch.Tensor:
    t = temperature
    p_s = F.softmax(_compute(student_logits) / t, dim=-1)
    p_t = F.softmax(_compute(teacher_logits) / t, dim=-1)
    inter = 1.0 - _pearson_rows(p_s, p_t).mean()
    intra = 1.0 - _pearson_rows(p_s.transpose(-1, -2), p_t.transpose(-1, -2)).mean()
    return (inter_weight * inter + intra_weight * intra) * (t * t)


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

    Published defaults (``METHODS["lskd"].defaults``): base temperature T = 2 with KD weight 9 and
    CE weight 0.1 (``tools/train.py --logit-stand --base-temp 2 --kd-weight 9``; CIFAR-100
    resnet32x4 -> resnet8x4: 76.62). Some pairs use T = 3, or T = 4 with KD weight 12.

    Raises:
        ValueError: if a Python-number ``temperature`` is not finite and > 0.
    """
    check_hyperparameters(temperature=temperature)
    return _lskd_term(student_logits, teacher_logits, labels, temperature=temperature)


def _lskd_term(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None, *,
               temperature: Hyper) -> torch.Tensor:
    return tempered_kl(_standardise(_compute(student_logits)), _standardise(_compute(teacher_logits)), temperature)


# --------------------------------------------------------------------------------------------------
# The registry


@dataclass(frozen=True)
class Method:
    """One distillation method: everything kdbench knows of it.

    Its loss is ``ce_weight * CE + kd_weight * term``; ``alpha``, where a study's space gives it, means
    ``ce_weight = alpha, kd_weight = 1 - alpha`` (Hinton's convex form).

    Attributes:
        name: its key in study files (``search.method``), visit keys and Optuna study names (``<study>.<name>``).
        title: how the report names it.
        loss: the public distillation term, checking its hyperparameters (:func:`dkd_loss`, ...).
        term: the same term unchecked, which the training step calls.
        params: its own hyperparameters beyond T and the two weights, in the order :attr:`loss` takes them.
        defaults: the published values a study falls back on for any parameter it does not give
            (temperature, the two weights, ``params``): the paper's CIFAR-100 setting.
        paper: the paper, as the report cites it.
    """

    name: str
    title: str
    loss: Callable[..., torch.Tensor]
    term: Callable[..., torch.Tensor]
    params: tuple[str, ...]
    defaults: Mapping[str, float]
    paper: str

    def __post_init__(self) -> None:
        if set(self.defaults) != {"temperature", *WEIGHTS, *self.params}:
            raise ValueError(f"method {self.name!r}: defaults must give temperature, {', '.join(WEIGHTS)} and "
                             f"its parameters {self.params}, got {sorted(self.defaults)}")
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))

    def __call__(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None,
                 **hyper: Hyper) -> torch.Tensor:
        """The distillation term, hyperparameters checked (:attr:`loss`)."""
        return self.loss(student_logits, teacher_logits, labels, **hyper)


METHODS: Mapping[str, Method] = MappingProxyType({m.name: m for m in (
    # Hinton et al. 2015, with RepDistiller's CIFAR-100 KD weights
    Method("kd", "Hinton KD", kd_loss, _kd_term, (), {"temperature": 4.0, "ce_weight": 0.1, "kd_weight": 0.9},
           "Hinton, Vinyals & Dean 2015, Distilling the Knowledge in a Neural Network"),
    Method("dkd", "DKD", dkd_loss, _dkd_term, ("tckd_weight", "nckd_weight"),
           {"temperature": 4.0, "ce_weight": 1.0, "kd_weight": 1.0, "tckd_weight": 1.0, "nckd_weight": 8.0},
           "Zhao et al. 2022, Decoupled Knowledge Distillation (CVPR)"),
    # the class's beta = gamma = 1, and every released config's kd_loss_weight 2 (hunto/image_classification_sota)
    Method("dist", "DIST", dist_loss, _dist_term, ("inter_weight", "intra_weight"),
           {"temperature": 4.0, "ce_weight": 1.0, "kd_weight": 2.0, "inter_weight": 1.0, "intra_weight": 1.0},
           "Huang et al. 2022, Knowledge Distillation from A Stronger Teacher (NeurIPS)"),
    Method("lskd", "LS-KD", lskd_loss, _lskd_term, (), {"temperature": 2.0, "ce_weight": 0.1, "kd_weight": 9.0},
           "Sun et al. 2024, Logit Standardization in Knowledge Distillation (CVPR)"),
)})
"""Every distillation method, by name (see :class:`Method`)."""

METHOD_PARAMS: Mapping[str, tuple[str, ...]] = MappingProxyType({n: m.params for n, m in METHODS.items()})
"""Each method's hyperparameters beyond T and the two weights (read from :data:`METHODS`)."""
METHOD_DEFAULTS: Mapping[str, Mapping[str, float]] = MappingProxyType({n: m.defaults for n, m in METHODS.items()})
"""Each method's published defaults (read from :data:`METHODS`)."""


@dataclass(frozen=True)
class KDParams:
    """The distillation loss of one student: ``ce_weight * CE + kd_weight * ramp * term(method)``.

    ``KDParams(T, alpha)`` is Hinton's KD in its convex form (ce_weight = alpha, kd_weight = 1 - alpha);
    another method gives ``method``, its two weights (or alpha) and its own hyperparameters in ``extra``.
    ``warmup_epochs`` ramps the distillation term in linearly (DKD's published recipe ramps over 20 epochs).
    Every value is checked here, once per run: the training step computes :func:`method_loss` unchecked.
    """

    temperature: float
    alpha: float | None = None
    method: str = "kd"
    ce_weight: float | None = None
    kd_weight: float | None = None
    extra: tuple[tuple[str, float], ...] = ()
    warmup_epochs: float = 0.0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown distillation method {self.method!r}; choose from {', '.join(METHODS)}")
        if self.alpha is None and (self.ce_weight is None or self.kd_weight is None):
            raise ValueError("give alpha, or both ce_weight and kd_weight")
        check_hyperparameters(temperature=self.temperature, alpha=self.alpha, ce_weight=self.ce_weight,
                              kd_weight=self.kd_weight, **dict(self.extra))

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
    method: str | Method,
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
    """``ce_weight * CE(labels, s) + kd_weight * term``, the term being the method's with ``params``; unchecked.

    The loss both training loops compute on every step, for every method (:class:`KDParams` checked the values
    once): Hinton's ``alpha`` is ``ce_weight = alpha, kd_weight = 1 - alpha``; DKD's published loss is
    CE + 1 x DKD, LS-KD's 0.1 CE + 9 KD (:attr:`Method.defaults`). Hyperparameters may be 0-dim tensors
    (under ``vmap``, one per fused student).
    """
    m = METHODS[method] if isinstance(method, str) else method
    ce = F.cross_entropy(student_logits.float(), labels, label_smoothing=label_smoothing)
    term = m.term(student_logits, teacher_logits, labels, temperature=temperature, **params)
    return ce_weight * ce + kd_weight * term

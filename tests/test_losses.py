from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench.losses import (
    METHOD_DEFAULTS,
    METHOD_PARAMS,
    METHODS,
    KDParams,
    dist_loss,
    distillation_loss,
    dkd_loss,
    kd_loss,
    kd_term,
    lskd_loss,
    method_loss,
)


def _manual(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, T: float, a: float) -> float:
    """Independent computation with numpy-style loops over the batch."""
    total_kl = 0.0
    for i in range(s.shape[0]):
        p = [math.exp(v / T) for v in t[i].tolist()]
        q = [math.exp(v / T) for v in s[i].tolist()]
        zp, zq = sum(p), sum(q)
        total_kl += sum((pi / zp) * math.log((pi / zp) / (qi / zq)) for pi, qi in zip(p, q, strict=True))
    kl = total_kl / s.shape[0]
    ce = 0.0
    for i in range(s.shape[0]):
        z = sum(math.exp(v) for v in s[i].tolist())
        ce -= math.log(math.exp(s[i, int(y[i])].item()) / z)
    ce /= s.shape[0]
    return a * ce + (1 - a) * T * T * kl


def test_hand_checked_values() -> None:
    s = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    t = torch.tensor([[2.0, 1.0, 0.0], [0.5, 0.5, 2.0]])
    y = torch.tensor([1, 2])
    for T, a in [(1.0, 0.5), (4.0, 0.1), (2.0, 0.0)]:
        got = distillation_loss(s, t, y, temperature=T, alpha=a).item()
        assert got == pytest.approx(_manual(s, t, y, T, a), rel=1e-5)


def test_alpha_one_is_cross_entropy_exactly() -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 10, generator=g), torch.randn(8, 10, generator=g)
    y = torch.randint(0, 10, (8,), generator=g)
    assert torch.equal(distillation_loss(s, t, y, temperature=3.0, alpha=1.0), F.cross_entropy(s, y))


def test_kd_gradient_scales_as_documented() -> None:
    g = torch.Generator().manual_seed(1)
    s = torch.randn(4, 5, generator=g, requires_grad=True)
    t = torch.randn(4, 5, generator=g)
    T = 3.0
    kd_term(s, t, T).backward()
    expected = T * (torch.softmax(s.detach() / T, 1) - torch.softmax(t / T, 1)) / 4
    torch.testing.assert_close(s.grad, expected, rtol=1e-5, atol=1e-6)


def test_large_logits_and_bf16_are_finite() -> None:
    s = torch.tensor([[1000.0, -1000.0, 0.0]])
    t = torch.tensor([[-1000.0, 1000.0, 0.0]])
    y = torch.tensor([0])
    loss = distillation_loss(s, t, y, temperature=1.0, alpha=0.5)
    assert torch.isfinite(loss)
    lb = distillation_loss(s.bfloat16(), t.half(), y, temperature=2.0, alpha=0.3)
    assert torch.isfinite(lb) and lb.dtype == torch.float32
    s2 = torch.randn(16, 10) * 5
    t2 = torch.randn(16, 10) * 5
    y2 = torch.randint(0, 10, (16,))
    ref = distillation_loss(s2, t2, y2, temperature=4.0, alpha=0.5)
    low = distillation_loss(s2.bfloat16(), t2.bfloat16(), y2, temperature=4.0, alpha=0.5)
    assert low.item() == pytest.approx(ref.item(), rel=0.05)


@pytest.mark.parametrize("kwargs, word", [({"temperature": 0.0, "alpha": 0.5}, "temperature"),
                                          ({"temperature": -1, "alpha": 0.5}, "temperature"),
                                          ({"temperature": 2.0, "alpha": 1.5}, "alpha"),
                                          ({"temperature": 2.0, "alpha": float("nan")}, "alpha")])
def test_invalid_values_raise(kwargs: dict, word: str) -> None:
    s = torch.zeros(1, 3)
    with pytest.raises(ValueError, match=word):
        distillation_loss(s, s, torch.tensor([0]), **kwargs)


# --------------------------------------------------------------------------------------------------
# DKD, DIST, LS-KD (and kd_loss): independent references that follow the authors' code literally.
# --------------------------------------------------------------------------------------------------


def _ref_dkd(logits_student: Tensor, logits_teacher: Tensor, target: Tensor, alpha: float, beta: float,
             temperature: float) -> Tensor:
    """mdistiller/distillers/DKD.py @ a08d46f1 (``size_average=False`` written as ``reduction="sum"``)."""

    def _get_gt_mask(logits: Tensor, target: Tensor) -> Tensor:
        target = target.reshape(-1)
        return torch.zeros_like(logits).scatter_(1, target.unsqueeze(1), 1).bool()

    def _get_other_mask(logits: Tensor, target: Tensor) -> Tensor:
        target = target.reshape(-1)
        return torch.ones_like(logits).scatter_(1, target.unsqueeze(1), 0).bool()

    def cat_mask(t: Tensor, mask1: Tensor, mask2: Tensor) -> Tensor:
        t1 = (t * mask1).sum(dim=1, keepdim=True)
        t2 = (t * mask2).sum(1, keepdim=True)
        return torch.cat([t1, t2], dim=1)

    gt_mask = _get_gt_mask(logits_student, target)
    other_mask = _get_other_mask(logits_student, target)
    pred_student = F.softmax(logits_student / temperature, dim=1)
    pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
    pred_student = cat_mask(pred_student, gt_mask, other_mask)
    pred_teacher = cat_mask(pred_teacher, gt_mask, other_mask)
    log_pred_student = torch.log(pred_student)
    tckd_loss = F.kl_div(log_pred_student, pred_teacher, reduction="sum") * (temperature**2) / target.shape[0]
    pred_teacher_part2 = F.softmax(logits_teacher / temperature - 1000.0 * gt_mask, dim=1)
    log_pred_student_part2 = F.log_softmax(logits_student / temperature - 1000.0 * gt_mask, dim=1)
    nckd_loss = (
        F.kl_div(log_pred_student_part2, pred_teacher_part2, reduction="sum") * (temperature**2) / target.shape[0]
    )
    return alpha * tckd_loss + beta * nckd_loss


def _ref_dist(z_s: Tensor, z_t: Tensor, beta: float, gamma: float, tau: float) -> Tensor:
    """image_classification_sota lib/models/losses/dist_kd.py @ d9662f7d (DIST_KD's classification)."""

    def cosine_similarity(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
        return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)

    def pearson_correlation(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
        return cosine_similarity(a - a.mean(1).unsqueeze(1), b - b.mean(1).unsqueeze(1), eps)

    def inter_class_relation(y_s: Tensor, y_t: Tensor) -> Tensor:
        return 1 - pearson_correlation(y_s, y_t).mean()

    def intra_class_relation(y_s: Tensor, y_t: Tensor) -> Tensor:
        return inter_class_relation(y_s.transpose(0, 1), y_t.transpose(0, 1))

    y_s = (z_s / tau).softmax(dim=1)
    y_t = (z_t / tau).softmax(dim=1)
    inter_loss = tau**2 * inter_class_relation(y_s, y_t)
    intra_loss = tau**2 * intra_class_relation(y_s, y_t)
    return beta * inter_loss + gamma * intra_loss


def _ref_lskd(logits_student_in: Tensor, logits_teacher_in: Tensor, temperature: float) -> Tensor:
    """logit-standardization-KD mdistiller/distillers/KD.py @ f6e5aa51, ``kd_loss(..., logit_stand=True)``."""

    def normalize(logit: Tensor) -> Tensor:
        mean = logit.mean(dim=-1, keepdims=True)
        stdv = logit.std(dim=-1, keepdims=True)
        return (logit - mean) / (1e-7 + stdv)

    logits_student = normalize(logits_student_in)
    logits_teacher = normalize(logits_teacher_in)
    log_pred_student = F.log_softmax(logits_student / temperature, dim=1)
    pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
    loss_kd = F.kl_div(log_pred_student, pred_teacher, reduction="none").sum(1).mean()
    return loss_kd * temperature**2


def _ref_kd(s: Tensor, t: Tensor, temperature: float) -> Tensor:
    """RepDistiller/mdistiller-style KD: ``kl_div(log_softmax(s/T), softmax(t/T), sum) / B * T^2``."""
    return F.kl_div(F.log_softmax(s / temperature, 1), F.softmax(t / temperature, 1), reduction="sum") / s.shape[0] * (
        temperature**2
    )


def _reference(method: str, s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, T: float, w: tuple) -> torch.Tensor:
    if method == "kd":
        return _ref_kd(s, t, T)
    if method == "dkd":
        return _ref_dkd(s, t, y, w[0], w[1], T)
    if method == "dist":
        return _ref_dist(s, t, w[0], w[1], T)
    return _ref_lskd(s, t, T)


_WEIGHTS = {"kd": (), "dkd": (0.7, 3.0), "dist": (1.5, 0.5), "lskd": ()}


def _call(method: str, s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, T: object, w: tuple) -> torch.Tensor:
    return METHODS[method](s, t, y, temperature=T, **dict(zip(METHOD_PARAMS[method], w, strict=True)))


def _logits(seed: int, b: int = 16, k: int = 10, scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, k, generator=g) * scale, torch.randn(b, k, generator=g) * scale


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("T", [1.0, 2.0, 4.0, 8.0])
def test_matches_authors_code(method: str, dtype: torch.dtype, T: float) -> None:
    s, t = _logits(int(T) + (100 if dtype == torch.float16 else 0))
    s, t = s.to(dtype), t.to(dtype)
    g = torch.Generator().manual_seed(7)
    labels = {
        "all classes": torch.arange(16) % 10,
        "classes 7-9 absent": torch.randint(0, 7, (16,), generator=g),
    }
    for y in labels.values():
        got = _call(method, s, t, y, T, _WEIGHTS[method])
        assert got.dtype == torch.float32 and got.dim() == 0
        ref = _reference(method, s.float(), t.float(), y, T, _WEIGHTS[method])  # fp16: the same rounded values
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=0.0)


def test_kd_loss_is_kd_term() -> None:
    s, t = _logits(3)
    y = torch.zeros(16, dtype=torch.long)
    for T in (1.0, 4.0):
        torch.testing.assert_close(kd_loss(s, t, y, temperature=T), kd_term(s, t, T), rtol=1e-6, atol=0.0)


def test_dkd_kd_decomposition() -> None:
    """The paper's Eq. (1): per sample, KD = TCKD + (1 - p_target^teacher) * NCKD."""
    s, t = _logits(4, b=1)
    y = torch.tensor([3])
    T = 2.0
    tckd = dkd_loss(s, t, y, temperature=T, tckd_weight=1.0, nckd_weight=0.0)
    nckd = dkd_loss(s, t, y, temperature=T, tckd_weight=0.0, nckd_weight=1.0)
    p_gt = torch.softmax(t / T, 1)[0, 3]
    torch.testing.assert_close(kd_loss(s, t, y, temperature=T), tckd + (1 - p_gt) * nckd, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_gradcheck_float64(method: str) -> None:
    s, t = _logits(5, b=4, k=5)
    s = s.double().requires_grad_()
    t = t.double().requires_grad_()
    y = torch.tensor([0, 2, 2, 4])
    w = _WEIGHTS[method]
    assert _call(method, s, t, y, 2.0, w).dtype == torch.float64
    assert torch.autograd.gradcheck(lambda a, b: _call(method, a, b, y, 2.0, w), (s, t))
    T = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)  # also through a tensor temperature
    assert torch.autograd.gradcheck(lambda a, temp: _call(method, a, t.detach(), y, temp, w), (s, T))


def _finite_with_grad(method: str, s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, T: float = 4.0) -> float:
    s = s.clone().requires_grad_()
    loss = _call(method, s, t, y, T, _WEIGHTS[method])
    loss.backward()
    assert torch.isfinite(loss), (method, loss)
    assert s.grad is not None and torch.isfinite(s.grad).all(), (method, s.grad)
    return loss.item()


@pytest.mark.parametrize("method", sorted(METHODS))
def test_degenerate_inputs_are_finite(method: str) -> None:
    s, t = _logits(6, b=8, k=5)
    y = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    # identical student and teacher: no distillation signal (DIST: 1 - rho with rho = 1 - O(eps))
    assert _finite_with_grad(method, s, s, y) == pytest.approx(0.0, abs=1e-5)
    # constant logits (LS-KD: std 0), student and teacher
    z = torch.full((8, 5), 2.5)
    _finite_with_grad(method, z, t, y)
    _finite_with_grad(method, s, z, y)
    # a batch of one (DIST intra: every column is constant)
    _finite_with_grad(method, s[:1], t[:1], y[:1])
    # every label one class, and a teacher that says the same for every sample (constant columns)
    _finite_with_grad(method, s, t[:1].expand(8, 5), torch.full((8,), 3))
    # huge logits, at T = 1 (the mdistiller 1000.0 mask is not enough there) and T = 4
    big_s = torch.tensor([[1000.0, -1000.0, 0.0], [-1000.0, 1000.0, 0.0]])
    big_t = torch.tensor([[-1000.0, 1000.0, 0.0], [1000.0, 0.0, -1000.0]])
    for T in (1.0, 4.0):
        _finite_with_grad(method, big_s, big_t, torch.tensor([0, 1]), T)
        _finite_with_grad(method, big_s, big_t.half(), torch.tensor([2, 0]), T)


def test_dkd_exact_where_the_1000_mask_is_not_enough() -> None:
    """At logit gaps ~1000·T the authors' ``- 1000.0 * gt_mask`` no longer removes the target class (and their
    TCKD takes the log of an underflowed ``1 - p_g``); here NCKD is still the exact non-target KL."""
    s = torch.tensor([[1000.0, 0.0, 1.0]])
    t = torch.tensor([[1000.0, 1.0, 0.0]])
    y = torch.tensor([0])
    nckd = dkd_loss(s, t, y, temperature=1.0, tckd_weight=0.0, nckd_weight=1.0)
    log_q_s, log_q_t = F.log_softmax(s[:, 1:], 1), F.log_softmax(t[:, 1:], 1)  # the non-target classes
    exact = (log_q_t.exp() * (log_q_t - log_q_s)).sum()
    torch.testing.assert_close(nckd, exact, rtol=1e-6, atol=0.0)
    # the authors' code: the target class is still in the "non-target" softmax, and log(1 - p_g) = log(0)
    assert not torch.isfinite(_ref_dkd(s, t, y, 0.0, 1.0, 1.0))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_vmap_over_students_equals_separate_calls(method: str) -> None:
    g = torch.Generator().manual_seed(8)
    students = (torch.randn(3, 12, 6, generator=g) * 3).requires_grad_()
    teacher = torch.randn(12, 6, generator=g) * 3
    y = torch.randint(0, 6, (12,), generator=g)
    temps = [1.0, 2.5, 4.0]
    weights = [(0.5, 2.0), (1.0, 8.0), (0.0, 1.5)][: 3 if METHOD_PARAMS[method] else 0]
    w_cols = [torch.tensor([w[i] for w in weights]) for i in range(len(METHOD_PARAMS[method]))]

    def one(s: torch.Tensor, temp: torch.Tensor, *w: torch.Tensor) -> torch.Tensor:
        return _call(method, s, teacher, y, temp, w)

    fused = torch.func.vmap(one)(students, torch.tensor(temps), *w_cols)
    fused.sum().backward()
    assert fused.shape == (3,) and fused.dtype == torch.float32
    for i, T in enumerate(temps):
        s_i = students.detach()[i].clone().requires_grad_()
        w_i = tuple(c[i].item() for c in w_cols)
        single = _call(method, s_i, teacher, y, T, w_i)
        single.backward()
        torch.testing.assert_close(fused[i], single.detach(), rtol=1e-6, atol=1e-6)
        assert students.grad is not None and s_i.grad is not None
        torch.testing.assert_close(students.grad[i], s_i.grad, rtol=1e-6, atol=1e-6)


def test_method_tables_agree() -> None:
    expected = {"kd": kd_loss, "dkd": dkd_loss, "dist": dist_loss, "lskd": lskd_loss}
    assert expected == {name: m.loss for name, m in METHODS.items()}
    assert set(METHOD_PARAMS) == set(METHOD_DEFAULTS) == set(METHODS)
    published = {  # the papers' CIFAR-100 settings (weights: CE weight and the term's weight)
        "kd": {"temperature": 4.0, "ce_weight": 0.1, "kd_weight": 0.9},
        "dkd": {"temperature": 4.0, "ce_weight": 1.0, "kd_weight": 1.0, "tckd_weight": 1.0, "nckd_weight": 8.0},
        "dist": {"temperature": 4.0, "ce_weight": 1.0, "kd_weight": 2.0, "inter_weight": 1.0, "intra_weight": 1.0},
        "lskd": {"temperature": 2.0, "ce_weight": 0.1, "kd_weight": 9.0},
    }
    assert published == METHOD_DEFAULTS
    s, t = _logits(9)
    y = torch.arange(16) % 10
    for name, fn in METHODS.items():  # a record is called as its checked loss
        defaults = METHOD_DEFAULTS[name]
        assert set(defaults) == {"temperature", "ce_weight", "kd_weight", *METHOD_PARAMS[name]}
        term = fn(s, t, y, **{k: v for k, v in defaults.items() if k not in ("ce_weight", "kd_weight")})
        assert torch.isfinite(term)
        # the whole loss: the weights applied as the published code applies them
        whole = method_loss(name, s, t, y, **defaults)
        expected = defaults["ce_weight"] * F.cross_entropy(s, y) + defaults["kd_weight"] * term
        torch.testing.assert_close(whole, expected)


_BAD = [
    (m, key, bad)
    for m in sorted(METHODS)
    for key, bads in [("temperature", [0.0, -1.0, float("nan"), float("inf")])]
    + [(p, [-0.5, float("nan"), float("inf")]) for p in METHOD_PARAMS[m]]
    for bad in bads
]


@pytest.mark.parametrize("method, key, bad", _BAD)
def test_invalid_hyperparameters_raise(method: str, key: str, bad: float) -> None:
    s = torch.zeros(2, 3)
    kwargs = {k: v for k, v in METHOD_DEFAULTS[method].items() if k not in ("ce_weight", "kd_weight")} | {key: bad}
    with pytest.raises(ValueError, match=key):
        METHODS[method](s, s, torch.tensor([0, 1]), **kwargs)


def test_kd_params_weights_and_warm_up_by_hand() -> None:
    hinton = KDParams(2.0, 0.3)
    assert hinton.weights == (0.3, pytest.approx(0.7)) and hinton.hinton and hinton.reads_teacher
    assert not KDParams(2.0, 1.0).reads_teacher  # alpha = 1: plain CE, the teacher is never read
    dkd = KDParams(4.0, None, "dkd", 1.0, 1.0, (("nckd_weight", 8.0), ("tckd_weight", 1.0)), warmup_epochs=0.5)
    assert dkd.weights == (1.0, 1.0) and not dkd.hinton
    # 10 steps per epoch, half an epoch of warm-up: 1/5, 2/5, ... then 1 (mdistiller: min(epoch / warmup, 1))
    assert [dkd.ramp(step, 10) for step in range(7)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0])
    assert KDParams(4.0, 0.5, warmup_epochs=0.5).hinton is False  # a ramped KD goes through method_loss
    with pytest.raises(ValueError, match="ce_weight and kd_weight"):
        KDParams(4.0, None, "dkd")
    with pytest.raises(ValueError, match="nckd_weight"):
        KDParams(4.0, None, "dkd", 1.0, 1.0, (("nckd_weight", -1.0),))


def test_method_loss_of_hinton_kd_equals_the_convex_form() -> None:
    s, t = torch.randn(8, 10), torch.randn(8, 10)
    y = torch.arange(8) % 10
    for a in (0.0, 0.3, 1.0):
        torch.testing.assert_close(method_loss("kd", s, t, y, temperature=3.0, ce_weight=a, kd_weight=1 - a),
                                   distillation_loss(s, t, y, temperature=3.0, alpha=a))

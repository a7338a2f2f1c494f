from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdbench.losses import distillation_loss, kd_term


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

"""Temperature scaling's fit against the closed form on a fixed two-class frame, and a grid search by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdbench.evaluate import TEMPERATURE_BOUNDS, fit_temperature


def test_the_fitted_temperature_is_the_closed_form_on_two_classes() -> None:
    # every sample has logits (4, 0); 80 % are class 0. NLL(T) is smallest where sigmoid(4 / T) = 0.8, that is
    # T = 4 / logit(0.8) = 4 / ln 4 (= 2.885)
    logits = torch.tensor([[4.0, 0.0]] * 10)
    labels = torch.tensor([0] * 8 + [1] * 2)
    assert fit_temperature(logits, labels) == pytest.approx(4 / math.log(4), rel=1e-3)


def test_the_fit_matches_a_fine_grid_by_hand() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(200, 5, generator=gen)
    labels = torch.randint(0, 5, (200,), generator=gen)
    z, y = logits.double().numpy(), labels.numpy()

    def nll(t: float) -> float:
        s = z / t
        s = s - s.max(1, keepdims=True)
        return float(-(s[np.arange(len(y)), y] - np.log(np.exp(s).sum(1))).mean())

    grid = np.exp(np.linspace(math.log(TEMPERATURE_BOUNDS[0]), math.log(TEMPERATURE_BOUNDS[1]), 20001))
    best = grid[int(np.argmin([nll(t) for t in grid]))]
    fitted = fit_temperature(logits, labels)
    assert fitted is not None and fitted == pytest.approx(best, rel=1e-3)
    assert nll(fitted) <= nll(1.0)


def test_nothing_to_fit_on_is_none() -> None:
    assert fit_temperature(torch.empty(0, 3), torch.empty(0, dtype=torch.long)) is None

"""Stratified, seeded splits of row indices: the validation carve-out, ``subset`` and imagefolder's test set.

:func:`stratified_split` takes a sample in which every class keeps its share of the rows (largest-remainder
rounding makes the total exact) and leaves the rest; the same labels and seed always give the same split.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import torch

from kdbench.errors import ConfigError

__all__ = ["stratified_split"]


def stratified_split(
    labels: torch.Tensor, fraction_or_count: float | int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split row indices into a stratified sample and the rest.

    Each class contributes in proportion to its size (largest-remainder rounding, so the total is exact);
    within a class the rows are chosen by a permutation seeded with ``seed``.

    Args:
        labels: ``[N]`` class indices ``>= 0`` (any device; the work is done on the CPU).
        fraction_or_count: a float in ``[0, 1]`` (fraction of the rows, rounded to the nearest count) or
            an int in ``[0, N]`` (exact number of rows).
        seed: the seed of the permutation; the same seed and labels give the same split.

    Returns:
        ``(taken, rest)``: disjoint, ascending int64 CPU index tensors that together cover ``0 .. N-1``.

    Raises:
        ConfigError: ``fraction_or_count`` is out of range or not a number.
    """
    y = labels.detach().to("cpu", torch.int64).reshape(-1).numpy()
    n = len(y)
    if isinstance(fraction_or_count, bool) or not isinstance(fraction_or_count, (int, float)):
        raise ConfigError(f"split size must be a fraction in [0, 1] or a count, got {fraction_or_count!r}")
    if isinstance(fraction_or_count, int):
        k = fraction_or_count
        if not 0 <= k <= n:
            raise ConfigError(
                f"split count {k} is outside 0..{n} (the number of rows); choose a count in range"
            )
    else:
        if not 0.0 <= fraction_or_count <= 1.0:  # also rejects NaN
            raise ConfigError(
                f"split fraction {fraction_or_count!r} is outside [0, 1]; choose a fraction in range"
            )
        k = math.floor(fraction_or_count * n + 0.5)
    if k == 0:
        return torch.empty(0, dtype=torch.int64), torch.arange(n)
    if int(y.min()) < 0:
        raise ConfigError("stratified_split needs class indices >= 0 as labels; map the labels to 0..K-1")

    # numpy, single-threaded: torch's sorts on a busy machine cost 100x more for no gain at this size.
    counts = np.bincount(y)
    quota = _largest_remainder(counts, k)
    perm = np.random.default_rng(int(seed)).permutation(n)
    grouped = perm[np.argsort(y[perm], kind="stable")]  # class by class, random order within each
    group_of = y[grouped]
    starts = np.cumsum(counts) - counts
    rank_in_class = np.arange(n) - starts[group_of]
    taken = np.zeros(n, dtype=bool)
    taken[grouped[rank_in_class < quota[group_of]]] = True
    return torch.from_numpy(np.flatnonzero(taken)), torch.from_numpy(np.flatnonzero(~taken))


def _largest_remainder(counts: npt.NDArray[np.int64], k: int) -> npt.NDArray[np.int64]:
    """Integer quotas proportional to ``counts`` summing to ``k`` (ties go to the earlier class)."""
    n = int(counts.sum())
    scaled = counts * k
    quota = scaled // n
    short = k - int(quota.sum())
    if short:
        order = np.argsort(-(scaled % n), kind="stable")
        quota[order[:short]] += 1
    return quota

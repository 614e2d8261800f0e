"""Planted low-rank tensors with controlled collinearity and noise (test helper)."""

from __future__ import annotations

import numpy as np

from cptensor import CPTensor, reconstruct
from cptensor.structured import LowRankBlockTensor


def collinear_factor(rng: np.random.Generator, size: int, rank: int, rho: float) -> np.ndarray:
    """``(size, rank)`` with unit columns whose pairwise cosines are about ``rho``.

    When ``rank > size`` no such matrix need exist: the columns are then independent
    Gaussian directions (cosines about ``±1/√size``)."""
    if rank > size:
        a = rng.standard_normal((size, rank))
        return a / np.linalg.norm(a, axis=0)
    corr = np.full((rank, rank), rho) + (1 - rho) * np.eye(rank)
    q, _ = np.linalg.qr(rng.standard_normal((size, rank)))
    return q @ np.linalg.cholesky(corr).T


def planted(
    seed: int,
    shape: tuple[int, ...],
    rank: int,
    *,
    rho: float = 0.4,
    noise: float = 0.01,
) -> tuple[np.ndarray, CPTensor]:
    """A rank-``rank`` tensor plus ``noise`` relative Gaussian noise, and its true CP."""
    rng = np.random.default_rng(seed)
    factors = [collinear_factor(rng, n, rank, rho) for n in shape]
    weights = 1.0 + rng.random(rank)
    cp = CPTensor(weights, factors)
    x = reconstruct(cp)
    e = rng.standard_normal(shape)
    x = x + noise * np.linalg.norm(x) / np.linalg.norm(e) * e
    return x, cp


def small_lowrank_delta(seed: int = 0) -> tuple[LowRankBlockTensor, np.ndarray]:
    """A 6 × 3 × 2 × 3 × 2 LoRTA-shaped tensor of rank-2 blocks (one per layer and matrix)
    as a :class:`LowRankBlockTensor`, and the same tensor dense."""
    rng = np.random.default_rng(seed)
    pairs = {
        (l, m): (rng.standard_normal((6, 2)), rng.standard_normal((6, 2)))
        for l in range(3)
        for m in range(2)
    }
    lr = LowRankBlockTensor((6, 3, 2, 3, 2), (0,), (1, 2), pairs)
    return lr, lr.to_dense()

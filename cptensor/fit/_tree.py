"""Private kernels of the ALS dimension tree (kept here so that the fitting code does not
depend on the private helpers of :mod:`cptensor.products`).

Layouts are rank-first: a Khatri–Rao product is built as the row-major ``(R, ∏ I_k)``
array (first matrix slowest), and partial contractions of ``x`` are ``(R, I_a, …, I_b)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .._backend import Array, device, float64_of, is_torch, namespace, shape_tuple


def f64(xp: Any, a: Array) -> Array:
    """``a`` in float64 (``a`` itself, no copy, when it already is)."""
    if is_torch(a):
        import torch

        return a if a.dtype == torch.float64 else float64_of(xp, a)
    return a if a.dtype == xp.float64 else float64_of(xp, a)


def contiguous(a: Array) -> Array:
    if is_torch(a):
        return a.contiguous()
    import numpy as np

    return np.ascontiguousarray(a)


def best_split(shape: Sequence[int]) -> int:
    """Split point ``1 <= k < N`` minimising ``∏ shape[:k] + ∏ shape[k:]``."""
    return min(range(1, len(shape)), key=lambda k: math.prod(shape[:k]) + math.prod(shape[k:]))


def kr_t(mats: Sequence[Array], like: Array, weights: Array | None = None) -> Array:
    """Khatri–Rao product of ``mats`` transposed, ``(R, ∏ I_k)`` row-major (first slowest),
    columns scaled by ``weights``."""
    xp = namespace(like)
    rank = int(like.shape[1])
    if not mats:
        out = xp.ones((rank, 1), dtype=like.dtype, device=device(like))
        return out if weights is None else out * weights[:, None]
    ts = [contiguous(m.T) for m in mats]
    if weights is not None:
        i = min(range(len(ts)), key=lambda j: int(ts[j].shape[1]))
        ts[i] = ts[i] * weights[:, None]
    out = ts[0]
    for t in ts[1:]:
        out = xp.reshape(out[:, :, None] * t[:, None, :], (rank, -1))
    return out


def contract_rank_first(p: Array, mats: Sequence[Array], keep: int) -> Array:
    """For ``p`` of shape ``(R, J_0, …, J_{k-1})`` and ``mats[j]`` of shape ``(J_j, R)``,
    contract every mode but ``keep`` (``Σ p[r, …] Π_{j≠keep} mats[j][i_j, r]``):
    ``(J_keep, R)``. Batched GEMVs over ``r``."""
    xp = namespace(p)
    rank = int(p.shape[0])
    dims = list(shape_tuple(p)[1:])
    for j in range(len(dims) - 1, keep, -1):
        rest = math.prod(dims[:j])
        p = xp.matmul(xp.reshape(p, (rank, rest, dims[j])), mats[j].T[:, :, None])
        dims = dims[:j]
    for j in range(keep):
        rest = math.prod(dims[1:])
        p = xp.matmul(mats[j].T[:, None, :], xp.reshape(p, (rank, dims[0], rest)))
        dims = dims[1:]
    return xp.reshape(p, (rank, dims[0])).T


def _einsum(spec: str, *ops: Array) -> Array:
    if is_torch(ops[0]):
        import torch

        return torch.einsum(spec, *ops)
    import numpy as np

    return np.einsum(spec, *ops)


def contract_rank_last(p: Array, mats: Sequence[Array], keep: int) -> Array:
    """For ``p`` of shape ``(J_0, …, J_{k-1}, R)`` and ``mats[j]`` of shape ``(J_j, R)``,
    contract every mode but ``keep``: ``(J_keep, R)``. One ``einsum`` per contracted mode
    (the partial results are ``R``-times smaller than ``x``)."""
    xp = namespace(p)
    rank = int(p.shape[-1])
    dims = list(shape_tuple(p)[:-1])
    for j in range(len(dims) - 1, keep, -1):
        rest = math.prod(dims[:j])
        p = _einsum("ajr,jr->ar", xp.reshape(p, (rest, dims[j], rank)), mats[j])
        dims = dims[:j]
    for j in range(keep):
        rest = math.prod(dims[1:])
        p = _einsum("jar,jr->ar", xp.reshape(p, (dims[0], rest, rank)), mats[j])
        dims = dims[1:]
    return xp.reshape(p, (dims[0], rank))

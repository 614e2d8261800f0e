"""From CP form to values: the dense tensor, unfoldings, selected entries, sub-tensors."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ._backend import Array, device, is_array, namespace, shape_tuple, validate_mode
from .cp import CPTensor, as_cp
from .errors import CPTensorError, CPTensorTypeError
from .products import _best_split, _khatri_rao_t

__all__ = ["entries", "fix_modes", "reconstruct", "reconstruct_unfolded"]


def _check_cp(cp: Any, name: str = "cp") -> CPTensor:
    return as_cp(cp, name)


def reconstruct(cp: CPTensor) -> Array:
    """The dense tensor ``Σ_r λ_r a_1r ∘ … ∘ a_Nr``, in the factors' backend and dtype.

    One GEMM of the output's size, ``KR(first block) @ KR(second block)ᵀ``, with the modes
    split where the two Khatri–Rao products are smallest (weights folded into the smallest
    operand); the row-major GEMM output is the tensor itself.

    >>> import numpy as np
    >>> from cptensor import CPTensor
    >>> cp = CPTensor(np.array([2.0]), [np.array([[1.0], [2.0]]), np.array([[1.0], [3.0]])])
    >>> reconstruct(cp)
    array([[ 2.,  6.],
           [ 4., 12.]])
    """
    cp = _check_cp(cp)
    xp = cp.xp
    mats, w = cp.factors, cp.weights
    if cp.ndim == 1:
        return xp.matmul(mats[0], w)
    shape = cp.shape
    k = _best_split(shape)
    left, right = math.prod(shape[:k]), math.prod(shape[k:])
    kl = _khatri_rao_t(mats[:k], w if left <= right else None, like=mats[0])  # (R, left)
    kr = _khatri_rao_t(mats[k:], None if left <= right else w, like=mats[0])  # (R, right)
    return xp.reshape(xp.matmul(kl.T, kr), shape)


def reconstruct_unfolded(cp: CPTensor, mode: int) -> Array:
    """``unfold(reconstruct(cp), mode)`` computed directly as ``A_mode (λ ⊙ KR(others))ᵀ``.

    >>> import numpy as np
    >>> from cptensor import CPTensor, unfold
    >>> rng = np.random.default_rng(0)
    >>> cp = CPTensor(None, [rng.standard_normal((n, 2)) for n in (3, 4, 5)])
    >>> np.allclose(reconstruct_unfolded(cp, 1), unfold(reconstruct(cp), 1))
    True
    """
    cp = _check_cp(cp)
    mode = validate_mode(mode, cp.ndim)
    others = [f for n, f in enumerate(cp.factors) if n != mode]
    krt = _khatri_rao_t(others, cp.weights, like=cp.factors[0])  # (R, ∏ others)
    return cp.xp.matmul(cp.factors[mode], krt)


def _index_arrays(indices: Any, shape: tuple[int, ...], like: Array) -> list[Any]:
    """Normalise ``indices`` to N integer index arrays of one length, bounds-checked."""
    n = len(shape)
    if is_array(indices) and not isinstance(indices, tuple):
        idx = indices
        if idx.ndim != 2 or int(idx.shape[1]) != n:
            raise CPTensorError(
                f"indices as an array must have shape (n_points, {n}), got {shape_tuple(idx)}"
            )
        cols = [idx[:, k] for k in range(n)]
    elif isinstance(indices, (tuple, list)):
        if len(indices) != n:
            raise CPTensorError(
                f"indices must hold one index array per mode ({n}), got {len(indices)}"
            )
        cols = list(indices)
    else:
        raise CPTensorTypeError(
            "indices must be a tuple of N index arrays (as for x[indices]) or an integer "
            f"array of shape (n_points, N), got {type(indices).__name__}"
        )
    xp = namespace(like)
    out = []
    lengths = set()
    for k, c in enumerate(cols):
        c_np = np.asarray(c.detach().cpu() if hasattr(c, "detach") else c)
        if c_np.dtype.kind not in "iu":
            raise CPTensorTypeError(
                f"indices for mode {k} must be integers, got dtype {c_np.dtype}"
            )
        c_np = c_np.reshape(-1)
        if c_np.size and (c_np.min() < -shape[k] or c_np.max() >= shape[k]):
            raise IndexError(f"indices for mode {k} are out of range for size {shape[k]}")
        lengths.add(c_np.size)
        out.append(xp.asarray(c_np % shape[k] if shape[k] else c_np, device=device(like)))
    if len(lengths) > 1:
        raise CPTensorError(
            f"index arrays of all modes must have one length, got {sorted(lengths)}"
        )
    return out


def entries(cp: CPTensor, indices: Any) -> Array:
    """Values of the CP tensor at given multi-indices, without the dense tensor.

    ``indices`` is a tuple of N integer arrays (as in ``x[indices]``) or an integer array of
    shape ``(n_points, N)``. Cost: ``n_points · N · R``.

    >>> import numpy as np
    >>> from cptensor import CPTensor, reconstruct
    >>> rng = np.random.default_rng(0)
    >>> cp = CPTensor(None, [rng.standard_normal((n, 2)) for n in (3, 4, 5)])
    >>> idx = (np.array([0, 2]), np.array([1, 3]), np.array([4, 0]))
    >>> np.allclose(entries(cp, idx), reconstruct(cp)[idx])
    True
    """
    cp = _check_cp(cp)
    xp = cp.xp
    cols = _index_arrays(indices, cp.shape, cp.factors[0])
    prod = None
    for f, c in zip(cp.factors, cols):
        rows = xp.take(f, c, axis=0)
        prod = rows if prod is None else prod * rows
    return xp.matmul(prod, cp.weights)


def fix_modes(cp: CPTensor, fixed: Mapping[int, int]) -> CPTensor:
    """The CP tensor over the remaining modes when some modes are fixed to an index.

    ``fix_modes(cp, {3: l, 4: m})`` of a 5-way LoRTA tensor is the 3-way tensor of layer
    ``l`` and matrix ``m``; its reconstruction equals ``reconstruct(cp)[:, :, :, l, m]``.
    The fixed rows are absorbed into the weights.

    >>> import numpy as np
    >>> from cptensor import CPTensor, reconstruct
    >>> rng = np.random.default_rng(0)
    >>> cp = CPTensor(None, [rng.standard_normal((n, 2)) for n in (3, 4, 5)])
    >>> np.allclose(reconstruct(fix_modes(cp, {1: 2})), reconstruct(cp)[:, 2, :])
    True
    """
    cp = _check_cp(cp)
    if not isinstance(fixed, Mapping):
        raise CPTensorTypeError(
            f"fixed must be a mapping {{mode: index}}, got {type(fixed).__name__}"
        )
    norm_fixed: dict[int, int] = {}
    for mode, index in fixed.items():
        m = validate_mode(mode, cp.ndim, "fixed mode")
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise CPTensorTypeError(
                f"index for mode {m} must be an int, got {type(index).__name__}"
            )
        if not -cp.shape[m] <= int(index) < cp.shape[m]:
            raise IndexError(f"index {index} is out of range for mode {m} of size {cp.shape[m]}")
        norm_fixed[m] = int(index) % cp.shape[m]
    if len(norm_fixed) == cp.ndim:
        raise CPTensorError(
            "fixed names every mode; at least one mode must remain free "
            "(use entries() for single values)"
        )
    w = cp.weights
    for m, i in norm_fixed.items():
        w = w * cp.factors[m][i, :]
    return CPTensor(w, [f for n, f in enumerate(cp.factors) if n not in norm_fixed])

"""Unfoldings, mode products, Khatri–Rao and Kronecker products, and MTTKRP.

Unfolding convention (row-major, as NumPy lays out memory): the mode-``n`` unfolding of a
tensor X of shape ``(I_0, …, I_{N-1})`` is the ``(I_n, ∏_{k≠n} I_k)`` matrix whose column
index runs over the remaining modes in their original order, the *last* mode varying
fastest::

    unfold(x, n) == moveaxis(x, n, 0).reshape(I_n, -1)

This is TensorLy's convention. The matching Khatri–Rao order puts the *first* matrix
slowest: ``khatri_rao([A, B])[i * J + j, r] == A[i, r] * B[j, r]``, so that
``unfold(x, n) @ khatri_rao(factors, skip=n)`` is the MTTKRP of mode ``n``.

MTTKRP never forms the Khatri–Rao product of all other modes and never copies ``x`` into
an unfolding: a row-major view of ``x`` as ``(left, I_n, right)`` is contracted with the
Khatri–Rao product of one side in a GEMM, then with the other side in a batched product.
``mttkrp_all`` shares work between modes (a dimension tree split once): two GEMMs over
``x`` per sweep instead of one per mode.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ._backend import (
    Array,
    check_same_device_dtype,
    device,
    namespace,
    shape_tuple,
    validate_mode,
)
from .cp import CPTensor
from .operator import is_operator

__all__ = [
    "fold",
    "khatri_rao",
    "kronecker",
    "mode_product",
    "mttkrp",
    "mttkrp_all",
    "multi_mode_product",
    "unfold",
]


def unfold(x: Array, mode: int) -> Array:
    """The mode-``mode`` unfolding of ``x``, of shape ``(I_mode, ∏_{k≠mode} I_k)``.

    Row-major convention (see the module docstring); a view when ``mode == 0`` and a copy
    otherwise, as for any transpose-and-reshape.

    >>> import numpy as np
    >>> x = np.arange(24.0).reshape(2, 3, 4)
    >>> unfold(x, 1).shape
    (3, 8)
    >>> bool((unfold(x, 1)[:, 0] == x[0, :, 0]).all())
    True
    """
    xp = namespace(x, names=["x"])
    mode = validate_mode(mode, x.ndim)
    return xp.reshape(xp.moveaxis(x, mode, 0), (int(x.shape[mode]), -1))


def fold(matrix: Array, mode: int, shape: Sequence[int]) -> Array:
    """Inverse of :func:`unfold`: the tensor of ``shape`` whose mode-``mode`` unfolding is
    ``matrix``.

    >>> import numpy as np
    >>> x = np.arange(24.0).reshape(2, 3, 4)
    >>> bool((fold(unfold(x, 2), 2, x.shape) == x).all())
    True
    """
    xp = namespace(matrix, names=["matrix"])
    shape = tuple(int(s) for s in shape)
    mode = validate_mode(mode, len(shape))
    rest = math.prod(shape) // shape[mode] if shape[mode] else 0
    if matrix.ndim != 2 or shape_tuple(matrix) != (shape[mode], rest):
        raise ValueError(
            f"matrix has shape {shape_tuple(matrix)}, expected ({shape[mode]}, {rest}) "
            f"to fold into shape {shape} along mode {mode}"
        )
    moved = (shape[mode], *shape[:mode], *shape[mode + 1 :])
    return xp.moveaxis(xp.reshape(matrix, moved), 0, mode)


def _check_matrices(matrices: Sequence[Array], name: str) -> list[Array]:
    if isinstance(matrices, CPTensor) or not isinstance(matrices, Sequence):
        raise TypeError(f"{name} must be a sequence of 2-D arrays, got {type(matrices).__name__}")
    matrices = list(matrices)
    if not matrices:
        raise ValueError(f"{name} must not be empty")
    names = [f"{name}[{i}]" for i in range(len(matrices))]
    namespace(*matrices, names=names)
    for n, m in zip(names, matrices):
        if m.ndim != 2:
            raise ValueError(f"{n} must be 2-D, got shape {shape_tuple(m)}")
    check_same_device_dtype(matrices, names)
    return matrices


def _skip_list(skip: int | Sequence[int] | None, n: int) -> set[int]:
    if skip is None:
        return set()
    if isinstance(skip, (int,)) and not isinstance(skip, bool):
        return {validate_mode(skip, n, "skip")}
    return {validate_mode(s, n, "skip") for s in skip}


def khatri_rao(
    matrices: Sequence[Array],
    skip: int | Sequence[int] | None = None,
    weights: Array | None = None,
) -> Array:
    """Column-wise Kronecker (Khatri–Rao) product, first matrix varying slowest.

    ``matrices`` are ``(I_k, R)``; the result is ``(∏ I_k, R)`` over the matrices not in
    ``skip``. ``weights`` (length R) scale the columns.

    >>> import numpy as np
    >>> a, b = np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[1.0, 1.0], [0.0, 2.0]])
    >>> khatri_rao([a, b])
    array([[1., 2.],
           [0., 4.],
           [3., 4.],
           [0., 8.]])
    """
    matrices = _check_matrices(matrices, "matrices")
    skipped = _skip_list(skip, len(matrices))
    rank = int(matrices[0].shape[1])
    for i, m in enumerate(matrices):
        if int(m.shape[1]) != rank:
            raise ValueError(
                f"matrices[{i}] has {int(m.shape[1])} columns, expected {rank} "
                "(all Khatri–Rao operands need the same number of columns)"
            )
    kept = [m for i, m in enumerate(matrices) if i not in skipped]
    if weights is not None:
        namespace(matrices[0], weights, names=["matrices[0]", "weights"])
        if weights.ndim != 1 or int(weights.shape[0]) != rank:
            raise ValueError(f"weights must have shape ({rank},), got {shape_tuple(weights)}")
    return _khatri_rao(kept, weights, like=matrices[0])


def _khatri_rao(kept: Sequence[Array], weights: Array | None, like: Array) -> Array:
    """Khatri–Rao of ``kept`` without validation; ``like`` supplies the empty case."""
    xp = namespace(like)
    rank = int(like.shape[1])
    if not kept:
        out = xp.ones((1, rank), dtype=like.dtype, device=device(like))
        return out if weights is None else out * weights
    # Scale the smallest operand by the weights: the cheapest place to do it.
    kept = list(kept)
    if weights is not None:
        i = min(range(len(kept)), key=lambda k: int(kept[k].shape[0]))
        kept[i] = kept[i] * weights
    out = kept[0]
    for m in kept[1:]:
        out = xp.reshape(out[:, None, :] * m[None, :, :], (-1, rank))
    return out


def kronecker(matrices: Sequence[Array]) -> Array:
    """Kronecker product ``A_0 ⊗ A_1 ⊗ …`` (as ``numpy.kron`` chained).

    >>> import numpy as np
    >>> kronecker([np.eye(2), np.ones((1, 2))])
    array([[1., 1., 0., 0.],
           [0., 0., 1., 1.]])
    """
    matrices = _check_matrices(matrices, "matrices")
    xp = namespace(matrices[0])
    out = matrices[0]
    for m in matrices[1:]:
        (p, q), (r, s) = shape_tuple(out), shape_tuple(m)
        out = xp.reshape(out[:, None, :, None] * m[None, :, None, :], (p * r, q * s))
    return out


def mode_product(x: Array, matrix: Array, mode: int, *, transpose: bool = False) -> Array:
    """The mode-``mode`` product ``x ×_mode matrix``.

    ``matrix`` is ``(J, I_mode)`` (``(I_mode, J)`` with ``transpose=True``, which uses its
    transpose); the result has ``I_mode`` replaced by ``J`` and satisfies
    ``unfold(result, mode) == matrix @ unfold(x, mode)``. A 1-D ``matrix`` (a vector)
    contracts the mode away.

    >>> import numpy as np
    >>> x = np.ones((2, 3, 4))
    >>> mode_product(x, np.ones((5, 3)), 1).shape
    (2, 5, 4)
    """
    xp = namespace(x, matrix, names=["x", "matrix"])
    check_same_device_dtype([x, matrix], ["x", "matrix"])
    mode = validate_mode(mode, x.ndim)
    size = int(x.shape[mode])
    if matrix.ndim == 1:
        if int(matrix.shape[0]) != size:
            raise ValueError(
                f"matrix is a vector of length {int(matrix.shape[0])}, expected {size} "
                f"(the size of mode {mode} of x, shape {shape_tuple(x)})"
            )
        moved = xp.moveaxis(x, mode, -1)
        return xp.matmul(moved, matrix)
    if matrix.ndim != 2:
        raise ValueError(f"matrix must be 1-D or 2-D, got shape {shape_tuple(matrix)}")
    m = matrix.T if transpose else matrix
    if int(m.shape[1]) != size:
        expected = f"({size}, J)" if transpose else f"(J, {size})"
        raise ValueError(
            f"matrix has shape {shape_tuple(matrix)}, expected {expected} to multiply "
            f"mode {mode} of x (shape {shape_tuple(x)})"
        )
    # (…, I_mode, …) -> move mode last, multiply by mᵀ, move back.
    moved = xp.moveaxis(x, mode, -1)
    return xp.moveaxis(xp.matmul(moved, m.T), -1, mode)


def multi_mode_product(
    x: Array,
    matrices: Sequence[Array],
    modes: Sequence[int] | None = None,
    skip: int | Sequence[int] | None = None,
    transpose: bool = False,
) -> Array:
    """``x`` multiplied by ``matrices[i]`` along ``modes[i]`` (default: modes 0, 1, …).

    ``skip`` leaves out one or more entries of ``modes``; ``transpose=True`` multiplies by
    each matrix's transpose (as in projecting onto factor matrices).

    >>> import numpy as np
    >>> x = np.ones((2, 3, 4))
    >>> multi_mode_product(x, [np.ones((5, 2)), np.ones((6, 3)), np.ones((7, 4))]).shape
    (5, 6, 7)
    """
    namespace(x, names=["x"])
    if not isinstance(matrices, Sequence):
        raise TypeError(f"matrices must be a sequence of arrays, got {type(matrices).__name__}")
    if modes is None:
        if len(matrices) != x.ndim:
            raise ValueError(
                f"got {len(matrices)} matrices for a {x.ndim}-way x; pass modes= to "
                "multiply only some modes"
            )
        modes = range(len(matrices))
    modes = [validate_mode(m, x.ndim, "modes") for m in modes]
    if len(modes) != len(matrices):
        raise ValueError(f"modes has {len(modes)} entries but matrices has {len(matrices)}")
    if len(set(modes)) != len(modes):
        raise ValueError(f"modes must be distinct, got {modes}")
    skipped = _skip_list(skip, x.ndim) if skip is not None else set()
    out = x
    for matrix, mode in zip(matrices, modes):
        if mode in skipped:
            continue
        out = mode_product(out, matrix, mode, transpose=transpose)
    return out


def _as_factors(
    factors: Any, ndim: int | None, name: str = "factors"
) -> tuple[list[Array], Array | None]:
    """Accept a CPTensor (weights applied) or a sequence of factor matrices."""
    if isinstance(factors, CPTensor):
        mats, weights = list(factors.factors), factors.weights
    else:
        mats, weights = _check_matrices(factors, name), None
        rank = int(mats[0].shape[1])
        for i, m in enumerate(mats):
            if int(m.shape[1]) != rank:
                raise ValueError(
                    f"{name}[{i}] has {int(m.shape[1])} columns but {name}[0] has {rank}"
                )
    if ndim is not None and len(mats) != ndim:
        raise ValueError(
            f"{name} has {len(mats)} factor matrices, expected {ndim} (one per mode of x)"
        )
    return mats, weights


def _check_tensor_and_factors(x: Array, mats: Sequence[Array], name: str = "factors") -> None:
    namespace(x, mats[0], names=["x", f"{name}[0]"])
    check_same_device_dtype([x, mats[0]], ["x", f"{name}[0]"])
    for n, m in enumerate(mats):
        if int(m.shape[0]) != int(x.shape[n]):
            raise ValueError(
                f"{name}[{n}] has {int(m.shape[0])} rows, expected {int(x.shape[n])} "
                f"(mode {n} of x, shape {shape_tuple(x)})"
            )


def mttkrp(x: Any, factors: Any, mode: int) -> Array:
    """Matricized tensor times Khatri–Rao product for one mode.

    ``mttkrp(x, factors, n) == unfold(x, n) @ khatri_rao(factors, skip=n)`` (times the
    weights, column-wise, when ``factors`` is a :class:`CPTensor`), computed without forming
    the Khatri–Rao product of all other modes or copying ``x``: a GEMM of a row-major view
    of ``x`` with the Khatri–Rao product of the larger side, then a batched contraction with
    the smaller side. ``x`` may also be a :class:`~cptensor.operator.TensorOperator`.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((4, 5, 6))
    >>> fs = [rng.standard_normal((n, 2)) for n in x.shape]
    >>> np.allclose(mttkrp(x, fs, 1), unfold(x, 1) @ khatri_rao(fs, skip=1))
    True
    """
    if is_operator(x):
        mats, weights = _as_factors(factors, len(x.shape))
        mode = validate_mode(mode, len(x.shape))
        out = x.mttkrp(mats, mode)
        return out if weights is None else out * weights
    namespace(x, names=["x"])
    mats, weights = _as_factors(factors, x.ndim)
    mode = validate_mode(mode, x.ndim)
    _check_tensor_and_factors(x, mats)
    out = _mttkrp_one(x, mats, mode)
    return out if weights is None else out * weights


def _mttkrp_one(x: Array, mats: Sequence[Array], mode: int) -> Array:
    xp = namespace(x)
    shape = shape_tuple(x)
    rank = int(mats[0].shape[1])
    left = math.prod(shape[:mode])
    right = math.prod(shape[mode + 1 :])
    size = shape[mode]
    last = len(shape) - 1
    if last == 0:
        return xp.reshape(x, (size, 1)) * xp.ones_like(mats[mode])
    if mode == 0 or (mode != last and right >= left):
        # GEMM with the right side's Khatri–Rao: (left*I_n, right) @ (right, R).
        kr_right = _khatri_rao(mats[mode + 1 :], None, like=mats[0])
        t = xp.reshape(xp.matmul(xp.reshape(x, (left * size, right)), kr_right), (left, size, rank))
        if mode == 0:
            return t[0]
        kr_left = _khatri_rao(mats[:mode], None, like=mats[0])
        # Σ_l t[l, i, r] kr_left[l, r]: batched over r.
        t = xp.permute_dims(t, (2, 1, 0))  # (R, I_n, left) view
        return xp.matmul(t, xp.permute_dims(kr_left, (1, 0))[:, :, None])[:, :, 0].T
    kr_left = _khatri_rao(mats[:mode], None, like=mats[0])
    t = xp.matmul(kr_left.T, xp.reshape(x, (left, size * right)))  # (R, I_n * right)
    t = xp.reshape(t, (rank, size, right))
    if mode == last:
        return t[:, :, 0].T
    kr_right = _khatri_rao(mats[mode + 1 :], None, like=mats[0])
    return xp.matmul(t, xp.permute_dims(kr_right, (1, 0))[:, :, None])[:, :, 0].T


def _contract_rank_first(p: Array, mats: Sequence[Array], keep: int) -> Array:
    """Given ``p`` of shape ``(R, J_0, …, J_{k-1})`` and factors ``mats[j]`` of shape
    ``(J_j, R)``, contract every mode except ``keep``: returns ``(J_keep, R)``."""
    xp = namespace(p)
    rank = int(p.shape[0])
    dims = list(shape_tuple(p)[1:])
    # Contract trailing modes (last first), then leading modes: each a batched GEMV.
    for j in range(len(dims) - 1, keep, -1):
        rest = math.prod(dims[:j])
        p = xp.matmul(xp.reshape(p, (rank, rest, dims[j])), mats[j].T[:, :, None])
        dims = dims[:j]
    for j in range(keep):
        rest = math.prod(dims[1:])
        p = xp.matmul(mats[j].T[:, None, :], xp.reshape(p, (rank, dims[0], rest)))
        dims = dims[1:]
    return xp.reshape(p, (rank, dims[0])).T


def mttkrp_all(x: Any, factors: Any) -> list[Array]:
    """MTTKRP of every mode, ``[mttkrp(x, factors, n) for n in range(N)]``, sharing work.

    ``x`` is split once into a left block of modes and a right block (chosen so that the
    partial results are smallest); two GEMMs over ``x`` produce the partial contractions
    ``x ×_{right} KR(right)`` and ``KR(left)ᵀ ×_{left} x``, from which each mode's MTTKRP
    is finished on tensors ``R``× smaller than ``x`` in the usual case. Use it once per ALS
    sweep when all factors are fixed; ALS that updates factors in turn needs
    :func:`mttkrp` after each update (see ``cptensor.fit``).

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((3, 4, 5, 6))
    >>> fs = [rng.standard_normal((n, 2)) for n in x.shape]
    >>> all(np.allclose(m, mttkrp(x, fs, n)) for n, m in enumerate(mttkrp_all(x, fs)))
    True
    """
    if is_operator(x):
        mats, weights = _as_factors(factors, len(x.shape))
        outs = x.mttkrp_all(mats)
        return list(outs) if weights is None else [o * weights for o in outs]
    namespace(x, names=["x"])
    mats, weights = _as_factors(factors, x.ndim)
    _check_tensor_and_factors(x, mats)
    outs = _mttkrp_all(x, mats)
    return outs if weights is None else [o * weights for o in outs]


def _best_split(shape: Sequence[int]) -> int:
    """Split point k (1 <= k < N) minimising the size of the two partial results."""
    return min(
        range(1, len(shape)),
        key=lambda k: math.prod(shape[:k]) + math.prod(shape[k:]),
    )


def _mttkrp_all(x: Array, mats: Sequence[Array]) -> list[Array]:
    xp = namespace(x)
    shape = shape_tuple(x)
    n = len(shape)
    if n == 1:
        return [xp.reshape(x, (shape[0], 1)) * xp.ones_like(mats[0])]
    if n == 2:
        return [xp.matmul(x, mats[1]), xp.matmul(x.T, mats[0])]
    k = _best_split(shape)
    rank = int(mats[0].shape[1])
    left, right = math.prod(shape[:k]), math.prod(shape[k:])
    flat = xp.reshape(x, (left, right))
    # Left partial: x contracted with the right block's Khatri–Rao -> (R, I_0, …, I_{k-1}).
    p_left = xp.matmul(flat, _khatri_rao(mats[k:], None, like=mats[0])).T
    p_left = xp.reshape(p_left, (rank, *shape[:k]))
    # Right partial: the left block's Khatri–Rao contracted with x -> (R, I_k, …).
    p_right = xp.matmul(_khatri_rao(mats[:k], None, like=mats[0]).T, flat)
    p_right = xp.reshape(p_right, (rank, *shape[k:]))
    outs = [_contract_rank_first(p_left, mats[:k], j) for j in range(k)]
    outs += [_contract_rank_first(p_right, mats[k:], j) for j in range(n - k)]
    return outs

"""Unfoldings, mode products, Khatri–Rao and Kronecker products, and MTTKRP.

Unfolding convention (row-major, as NumPy lays out memory): the mode-``n`` unfolding of a
tensor X of shape ``(I_0, …, I_{N-1})`` is the ``(I_n, ∏_{k≠n} I_k)`` matrix whose column
index runs over the remaining modes in their original order, the *last* mode varying
fastest::

    unfold(x, n) == moveaxis(x, n, 0).reshape(I_n, -1)

This is TensorLy's convention. The matching Khatri–Rao order puts the *first* matrix
slowest: ``khatri_rao([A, B])[i * J + j, r] == A[i, r] * B[j, r]``, so that
``unfold(x, n) @ khatri_rao(factors, skip=n)`` is the MTTKRP of mode ``n``.

MTTKRP never forms the Khatri–Rao product of all other modes and never copies a
contiguous ``x`` into an unfolding: a row-major view of ``x`` is contracted with the
Khatri–Rao product of one block of the other modes in a GEMM (or a batched GEMM), then the
much smaller intermediate with the Khatri–Rao product of the remaining block; blocks and
order are chosen to keep intermediates small. ``mttkrp_all`` shares work between modes (a
dimension tree split once): two passes over ``x`` per sweep instead of one per mode.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._backend import (
    Array,
    check_same_device_dtype,
    contiguous,
    device,
    is_array,
    is_numpy,
    is_torch,
    namespace,
    numpy_dtype,
    shape_tuple,
    validate_mode,
)
from .cp import CPTensor, _to_cp
from .errors import CPTensorError, CPTensorTypeError
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
        raise CPTensorError(
            f"matrix has shape {shape_tuple(matrix)}, expected ({shape[mode]}, {rest}) "
            f"to fold into shape {shape} along mode {mode}"
        )
    moved = (shape[mode], *shape[:mode], *shape[mode + 1 :])
    return xp.moveaxis(xp.reshape(matrix, moved), 0, mode)


def _check_matrices(matrices: Sequence[Array], name: str) -> list[Array]:
    if isinstance(matrices, CPTensor) or not isinstance(matrices, Sequence):
        raise CPTensorTypeError(
            f"{name} must be a sequence of 2-D arrays, got {type(matrices).__name__}"
        )
    matrices = list(matrices)
    if not matrices:
        raise CPTensorError(f"{name} must not be empty")
    names = [f"{name}[{i}]" for i in range(len(matrices))]
    namespace(*matrices, names=names)
    for n, m in zip(names, matrices):
        if m.ndim != 2:
            raise CPTensorError(f"{n} must be 2-D, got shape {shape_tuple(m)}")
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
            raise CPTensorError(
                f"matrices[{i}] has {int(m.shape[1])} columns, expected {rank} "
                "(all Khatri–Rao operands need the same number of columns)"
            )
    kept = [m for i, m in enumerate(matrices) if i not in skipped]
    if weights is not None:
        namespace(matrices[0], weights, names=["matrices[0]", "weights"])
        if weights.ndim != 1 or int(weights.shape[0]) != rank:
            raise CPTensorError(f"weights must have shape ({rank},), got {shape_tuple(weights)}")
    return _khatri_rao(kept, weights, like=matrices[0])


def _khatri_rao_t(kept: Sequence[Array], weights: Array | None, like: Array) -> Array:
    """Rank-first Khatri–Rao product ``khatri_rao(kept, weights=weights).T``, unvalidated.

    ``kept[k]`` are ``(I_k, R)``; the result is a row-major ``(R, ∏ I_k)`` array, first
    matrix varying slowest, row ``r`` scaled by ``weights[r]`` when ``weights`` (length R)
    is given. It is C-contiguous for NumPy and torch (a view of ``kept[0]`` when that is
    the only, unweighted operand and ``kept[0].T`` is contiguous already). ``like`` is any
    ``(·, R)`` matrix of the operands' backend (e.g. ``kept[0]``): it supplies R, and with
    ``kept`` empty the backend, device and dtype of the ``(R, 1)`` column of ones (or of
    ``weights``) returned.

    Built in this layout because the inner loops then run over the long mode sizes rather
    than over R, and because it is the operand layout the GEMMs below want.
    """
    xp = namespace(like)
    rank = int(like.shape[1])
    if not kept:
        out = xp.ones((rank, 1), dtype=like.dtype, device=device(like))
        return out if weights is None else out * weights[:, None]
    ts = [contiguous(m.T) for m in kept]  # (R, I_k)
    if weights is not None:
        # Scale the smallest operand by the weights: the cheapest place to do it.
        i = min(range(len(ts)), key=lambda k: int(ts[k].shape[1]))
        ts[i] = ts[i] * weights[:, None]
    # Built from the last operand to the first, so that the innermost (contiguous) axis of
    # every broadcast product is the long partial result rather than one short mode: up
    # to 10x faster on many short modes (LoRTA's 32×12×6×4 block).
    out = ts[-1]
    for t in ts[-2::-1]:
        a, b = t[:, :, None], out[:, None, :]
        buf = _host_empty((rank, int(a.shape[1]), int(b.shape[2])), like)
        prod = a * b if buf is None else _torch_mul(a, b, buf)
        out = xp.reshape(prod, (rank, -1))
    return out


def _host_empty(shape: tuple[int, ...], like: Array) -> Array | None:
    """An uninitialised torch CPU tensor of ``like``'s dtype in memory allocated by NumPy,
    or None when ``like`` is not a torch CPU tensor.

    For the large products of every ALS sweep: torch's CPU allocator maps each large block
    afresh, so every new tensor page-faults through its first writes (about 2 µs per
    4 KiB, as much as the product itself for a small rank), while NumPy's blocks come
    back from the heap already mapped.
    """
    if not is_torch(like) or like.device.type != "cpu":
        return None
    import torch

    return torch.from_numpy(np.empty(shape, numpy_dtype(like.dtype)))


def _torch_mul(a: Array, b: Array, out: Array) -> Array:
    import torch

    return torch.mul(a, b, out=out)


def _matmul(a: Array, b: Array) -> Array:
    """``a @ b`` for 2-D ``a`` and ``b``, into :func:`_host_empty` memory for torch CPU."""
    out = _host_empty((int(a.shape[0]), int(b.shape[1])), a)
    if out is None:
        return a @ b
    import torch

    return torch.matmul(a, b, out=out)


def _khatri_rao(kept: Sequence[Array], weights: Array | None, like: Array) -> Array:
    """Khatri–Rao of ``kept`` (``(∏ I_k, R)``) without validation; ``like`` supplies the
    empty case. The result is the transpose of a row-major ``(R, ∏ I_k)`` array."""
    return _khatri_rao_t(kept, weights, like).T


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
    namespace(x, matrix, names=["x", "matrix"])
    check_same_device_dtype([x, matrix], ["x", "matrix"])
    mode = validate_mode(mode, x.ndim)
    size = int(x.shape[mode])
    if matrix.ndim == 1:
        if int(matrix.shape[0]) != size:
            raise CPTensorError(
                f"matrix is a vector of length {int(matrix.shape[0])}, expected {size} "
                f"(the size of mode {mode} of x, shape {shape_tuple(x)})"
            )
        return _mode_product(x, matrix, mode)
    if matrix.ndim != 2:
        raise CPTensorError(f"matrix must be 1-D or 2-D, got shape {shape_tuple(matrix)}")
    m = matrix.T if transpose else matrix
    if int(m.shape[1]) != size:
        expected = f"({size}, J)" if transpose else f"(J, {size})"
        raise CPTensorError(
            f"matrix has shape {shape_tuple(matrix)}, expected {expected} to multiply "
            f"mode {mode} of x (shape {shape_tuple(x)})"
        )
    return _mode_product(x, m, mode)


def _mode_product(x: Array, m: Array, mode: int) -> Array:
    """``x ×_mode m`` for a ``(J, I_mode)`` matrix or an ``(I_mode,)`` vector, unvalidated.

    Row-major views of ``x`` only: one GEMM for the first and last modes, a batched GEMM
    over the leading modes otherwise (or one GEMM on a transposed copy when the trailing
    block is too small for the batches to be efficient).
    """
    xp = namespace(x)
    shape = shape_tuple(x)
    size = shape[mode]
    left, right = math.prod(shape[:mode]), math.prod(shape[mode + 1 :])
    vector = m.ndim == 1
    out_dims = () if vector else (int(m.shape[0]),)
    out_shape = (*shape[:mode], *out_dims, *shape[mode + 1 :])
    mt = m if vector else m.T
    if right == 1:
        return xp.reshape(xp.matmul(xp.reshape(x, (left, size)), mt), out_shape)
    if left == 1:
        return xp.reshape(xp.matmul(m, xp.reshape(x, (size, right))), out_shape)
    if right >= 32:
        return xp.reshape(xp.matmul(m, xp.reshape(x, (left, size, right))), out_shape)
    moved = xp.reshape(xp.moveaxis(xp.reshape(x, (left, size, right)), 1, 2), (-1, size))
    prod = xp.matmul(moved, mt)  # (left * right, J) or (left * right,)
    if vector:
        return xp.reshape(prod, out_shape)
    prod = xp.moveaxis(xp.reshape(prod, (left, right, int(m.shape[0]))), 2, 1)
    return xp.reshape(contiguous(prod), out_shape)


def multi_mode_product(
    x: Array,
    matrices: Sequence[Array],
    modes: Sequence[int] | None = None,
    skip: int | Sequence[int] | None = None,
    transpose: bool = False,
) -> Array:
    """``x`` multiplied by ``matrices[i]`` along ``modes[i]`` (default: modes 0, 1, …).

    ``skip`` is the index (or indices) into ``matrices`` of entries to leave out, as in
    TensorLy's ``multi_mode_dot``; ``transpose=True`` multiplies by each matrix's transpose
    (as in projecting onto factor matrices). A vector contracts its mode away; ``modes``
    always name modes of the input ``x``.

    >>> import numpy as np
    >>> x = np.ones((2, 3, 4))
    >>> multi_mode_product(x, [np.ones((5, 2)), np.ones((6, 3)), np.ones((7, 4))]).shape
    (5, 6, 7)
    """
    namespace(x, names=["x"])
    if not isinstance(matrices, Sequence):
        raise CPTensorTypeError(
            f"matrices must be a sequence of arrays, got {type(matrices).__name__}"
        )
    if modes is None:
        if len(matrices) != x.ndim:
            raise CPTensorError(
                f"got {len(matrices)} matrices for a {x.ndim}-way x; pass modes= to "
                "multiply only some modes"
            )
        modes = range(len(matrices))
    modes = [validate_mode(m, x.ndim, "modes") for m in modes]
    if len(modes) != len(matrices):
        raise CPTensorError(f"modes has {len(modes)} entries but matrices has {len(matrices)}")
    if len(set(modes)) != len(modes):
        raise CPTensorError(f"modes must be distinct, got {modes}")
    skipped = set()
    for k in [] if skip is None else [skip] if isinstance(skip, (int, np.integer)) else skip:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise CPTensorTypeError(f"skip must hold ints (indices into matrices), got {k!r}")
        if not -len(matrices) <= int(k) < len(matrices):
            raise CPTensorError(
                f"skip={int(k)} is out of range: it indexes matrices, which has "
                f"{len(matrices)} entries"
            )
        skipped.add(int(k) % len(matrices))
    out = x
    removed: list[int] = []  # modes of x contracted away by vectors so far
    for i, (matrix, mode) in enumerate(zip(matrices, modes)):
        if i in skipped:
            continue
        current = mode - sum(1 for r in removed if r < mode)
        try:
            out = mode_product(out, matrix, current, transpose=transpose)
        except (ValueError, TypeError) as err:
            raise type(err)(f"matrices[{i}] (mode {mode}): {err}") from None
        if getattr(matrix, "ndim", 2) == 1:
            removed.append(mode)
    return out


def _as_factors(
    factors: Any, ndim: int | None, name: str = "factors"
) -> tuple[list[Array], Array | None]:
    """Accept a CP model (a CPTensor, CPFit, TensorLy CPTensor or (weights, factors) pair;
    weights applied) or a sequence of factor matrices."""
    cp = None if is_array(factors) else _to_cp(factors, name)
    if cp is not None:
        mats, weights = list(cp.factors), cp.weights
    else:
        mats, weights = _check_matrices(factors, name), None
        rank = int(mats[0].shape[1])
        for i, m in enumerate(mats):
            if int(m.shape[1]) != rank:
                raise CPTensorError(
                    f"{name}[{i}] has {int(m.shape[1])} columns but {name}[0] has {rank}"
                )
    if ndim is not None and len(mats) != ndim:
        raise CPTensorError(
            f"{name} has {len(mats)} factor matrices, expected {ndim} (one per mode of x)"
        )
    return mats, weights


def _check_tensor_and_factors(x: Array, mats: Sequence[Array], name: str = "factors") -> None:
    namespace(x, mats[0], names=["x", f"{name}[0]"])
    check_same_device_dtype([x, mats[0]], ["x", f"{name}[0]"])
    for n, m in enumerate(mats):
        if int(m.shape[0]) != int(x.shape[n]):
            raise CPTensorError(
                f"{name}[{n}] has {int(m.shape[0])} rows, expected {int(x.shape[n])} "
                f"(mode {n} of x, shape {shape_tuple(x)})"
            )


def mttkrp(x: Any, factors: Any, mode: int) -> Array:
    """Matricized tensor times Khatri–Rao product for one mode.

    ``mttkrp(x, factors, n) == unfold(x, n) @ khatri_rao(factors, skip=n)`` (times the
    weights, column-wise, when ``factors`` is a :class:`CPTensor`), computed without forming
    the Khatri–Rao product of all other modes or copying ``x`` (when ``x`` is contiguous):
    a GEMM (or batched GEMM) of a row-major view of ``x`` with the Khatri–Rao product of
    one block of the other modes, then a contraction of the intermediate with the other
    block's. ``x`` may also be a :class:`~cptensor.operator.TensorOperator`.

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


def _argmin_split(lo: int, hi: int, cost: Any) -> int:
    return min(range(lo, hi + 1), key=cost)


def _einsum(spec: str, a: Array, b: Array) -> Array:
    """Two-operand ``einsum`` (``"abc,bc->ac"`` style, each index at most once per operand):
    the library's own for NumPy and torch, broadcasting and summing elsewhere."""
    if is_numpy(a):
        import numpy as np

        return np.einsum(spec, a, b)
    if is_torch(a):
        import torch

        return torch.einsum(spec, a, b)
    return _einsum_broadcast(spec, a, b)


def _einsum_broadcast(spec: str, a: Array, b: Array) -> Array:
    """:func:`_einsum` with array-API operations only (broadcast, multiply, sum)."""
    xp = namespace(a, b)
    ins, out = spec.split("->")
    ia, ib = ins.split(",")
    order = list(dict.fromkeys(ia + ib))

    def expand(t: Array, idx: str) -> Array:
        perm = tuple(sorted(range(len(idx)), key=lambda k: order.index(idx[k])))
        t = xp.permute_dims(t, perm)
        dims = {idx[k]: int(t.shape[i]) for i, k in enumerate(perm)}
        return xp.reshape(t, tuple(dims.get(c, 1) for c in order))

    prod = expand(a, ia) * expand(b, ib)
    summed = tuple(k for k, c in enumerate(order) if c not in out)
    prod = xp.sum(prod, axis=summed) if summed else prod
    kept = [c for c in order if c in out]
    return xp.permute_dims(prod, tuple(kept.index(c) for c in out))


#: Cost of one GEMM call inside a batched GEMM, in units of R numbers of memory traffic.
_BATCH_PENALTY = 8


def _mttkrp_plans_end(shape: Sequence[int], mode: int) -> tuple[str, int]:
    """How to compute the MTTKRP of the first or last mode: ``(plan, j)``.

    The other modes are split at ``j`` into two blocks; the plan contracts one block by a
    GEMM over a row-major view of ``x`` (``"gemm"``) or by a batched GEMM over the leading
    modes (``"batched"``), then the other block on the intermediate. The choice minimises
    the memory touched besides ``x``: both Khatri–Rao products plus the intermediate (the
    full Khatri–Rao product of all other modes is never formed), in units of R numbers.
    Each GEMM of a batched plan is charged ``_BATCH_PENALTY`` more, for its call overhead.
    """
    n = len(shape)
    plans = []
    if mode == 0:
        i0 = shape[0]
        for j in range(2, n):
            a, b = math.prod(shape[1:j]), math.prod(shape[j:])
            plans.append((b + i0 * a + a, 0, "gemm", j))
            plans.append((a + i0 * b + b + _BATCH_PENALTY * i0, 1, "batched", j))
    else:
        il = shape[-1]
        for j in range(1, n - 1):
            a, b = math.prod(shape[:j]), math.prod(shape[j : n - 1])
            plans.append((a + b * il + b, 0, "gemm", j))
            plans.append((b + a * il + a + _BATCH_PENALTY * a, 1, "batched", j))
    _, _, plan, j = min(plans)
    return plan, j


def _mttkrp_one(x: Array, mats: Sequence[Array], mode: int) -> Array:
    """MTTKRP of one mode, unvalidated: ``(I_mode, R)``.

    Two steps over row-major views of ``x`` (no copy of a contiguous ``x``): one GEMM (or
    batched GEMM) with the Khatri–Rao product of a block of modes, never of all modes but
    ``mode``, then a contraction of the intermediate with the Khatri–Rao product of the
    remaining block. Blocks and order are chosen to keep the intermediate small.
    """
    xp = namespace(x)
    shape = shape_tuple(x)
    n = len(shape)
    rank = int(mats[0].shape[1])
    like = mats[0]
    size = shape[mode]
    if n == 1:
        return xp.reshape(x, (size, 1)) * xp.ones_like(mats[0])
    if n == 2:
        return xp.matmul(x, mats[1]) if mode == 0 else xp.matmul(x.T, mats[0])
    last = n - 1
    if mode == 0:
        plan, j = _mttkrp_plans_end(shape, 0)
        a, b = math.prod(shape[1:j]), math.prod(shape[j:])
        if plan == "gemm":  # (I_0 · A, B) @ KR_B -> (I_0, A, R); then sum over A
            t = xp.matmul(xp.reshape(x, (size * a, b)), _khatri_rao_t(mats[j:], None, like).T)
            kr_a = _khatri_rao(mats[1:j], None, like)
            return _einsum("iar,ar->ir", xp.reshape(t, (size, a, rank)), kr_a)
        # KR_Aᵀ @ (I_0, A, B) batched -> (I_0, R, B); then sum over B
        t = xp.matmul(_khatri_rao_t(mats[1:j], None, like), xp.reshape(x, (size, a, b)))
        return _einsum("irb,rb->ir", t, _khatri_rao_t(mats[j:], None, like))
    if mode == last:
        plan, j = _mttkrp_plans_end(shape, last)
        a, b = math.prod(shape[:j]), math.prod(shape[j:last])
        if plan == "gemm":  # KR_Aᵀ @ (A, B · I_N) -> (R, B, I_N); then sum over B
            t = xp.matmul(_khatri_rao_t(mats[:j], None, like), xp.reshape(x, (a, b * size)))
            kr_b = _khatri_rao_t(mats[j:last], None, like)
            return _einsum("rbk,rb->kr", xp.reshape(t, (rank, b, size)), kr_b)
        # KR_Bᵀ @ (A, B, I_N) batched -> (A, R, I_N); then sum over A
        t = xp.matmul(_khatri_rao_t(mats[j:last], None, like), xp.reshape(x, (a, b, size)))
        return _einsum("ark,ar->kr", t, _khatri_rao(mats[:j], None, like))
    left, right = math.prod(shape[:mode]), math.prod(shape[mode + 1 :])
    if right + left * size + left <= left + size * right + right:
        # (left · I_n, right) @ KR(right) -> (left, I_n, R), then sum over left.
        kr_right = _khatri_rao_t(mats[mode + 1 :], None, like).T
        t = xp.matmul(xp.reshape(x, (left * size, right)), kr_right)
        t = xp.reshape(t, (left, size, rank))
        return _einsum("lir,lr->ir", t, _khatri_rao(mats[:mode], None, like))
    # KR(left)ᵀ @ (left, I_n · right) -> (R, I_n, right), then sum over right.
    t = xp.matmul(_khatri_rao_t(mats[:mode], None, like), xp.reshape(x, (left, size * right)))
    t = xp.reshape(t, (rank, size, right))
    return _einsum("rib,rb->ir", t, _khatri_rao_t(mats[mode + 1 :], None, like))


def _contract_rank_first(p: Array, mats: Sequence[Array], keep: int) -> Array:
    """Finish an MTTKRP from a rank-first partial contraction (unvalidated).

    ``p`` is ``(R, J_0, …, J_{k-1})`` (rank axis first, any strides: it is only reshaped)
    and ``mats[j]`` is ``(J_j, R)``; returns the ``(J_keep, R)`` matrix
    ``out[i, r] = Σ p[r, j_0, …, i, …, j_{k-1}] Π_{j≠keep} mats[j][j_j, r]``, a transposed
    view of an ``(R, J_keep)`` array. ``mats[keep]`` is not read. One two-operand
    ``einsum`` per contracted mode, trailing modes first, then leading ones; no
    intermediate is larger than ``p``.
    """
    xp = namespace(p)
    rank = int(p.shape[0])
    dims = list(shape_tuple(p)[1:])
    # Contract trailing modes (last first), then leading modes.
    for j in range(len(dims) - 1, keep, -1):
        rest = math.prod(dims[:j])
        p = _einsum("rab,br->ra", xp.reshape(p, (rank, rest, dims[j])), mats[j])
        dims = dims[:j]
    for j in range(keep):
        rest = math.prod(dims[1:])
        p = _einsum("rab,ar->rb", xp.reshape(p, (rank, dims[0], rest)), mats[j])
        dims = dims[1:]
    return xp.reshape(p, (rank, dims[0])).T


def mttkrp_all(x: Any, factors: Any) -> list[Array]:
    """MTTKRP of every mode, ``[mttkrp(x, factors, n) for n in range(N)]``, sharing work.

    For N >= 4, ``x`` is split once into a left and a right block of at least two modes
    each (chosen so that the partial results are smallest); two GEMMs over ``x`` produce
    the partial contractions ``x ×_{right} KR(right)`` and ``KR(left)ᵀ ×_{left} x``, from
    which each mode's MTTKRP is finished on tensors ``R``× smaller than ``x`` in the usual
    case. For N = 3, two single-factor contractions of ``x`` (of ``x ×_2 A_2``,
    ``A_0ᵀ ×_0 x``, ``A_1ᵀ ×_1 x``, the pair with the smallest results) serve all modes.
    Use it once per ALS sweep when all factors are fixed; ALS that updates factors in turn
    needs :func:`mttkrp` after each update (see ``cptensor.fit``).

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


def _best_split(shape: Sequence[int], lo: int = 1, hi: int | None = None) -> int:
    """Split point k (``lo <= k <= hi``, default ``1 <= k < N``) minimising the size of the
    two partial results, ``∏ shape[:k] + ∏ shape[k:]`` (the smallest such k on ties).

    Splits the modes into a left block ``0..k-1`` and a right block ``k..N-1`` for a
    two-level dimension tree (:func:`mttkrp_all`, :mod:`cptensor.fit.als`) and for
    block-wise reconstruction. Needs ``lo <= hi`` (so ``N >= 2`` by default).
    """
    hi = len(shape) - 1 if hi is None else hi
    return _argmin_split(lo, hi, lambda k: math.prod(shape[:k]) + math.prod(shape[k:]))


def _mttkrp_all(x: Array, mats: Sequence[Array]) -> list[Array]:
    xp = namespace(x)
    shape = shape_tuple(x)
    n = len(shape)
    like = mats[0]
    rank = int(like.shape[1])
    if n == 1:
        return [xp.reshape(x, (shape[0], 1)) * xp.ones_like(mats[0])]
    if n == 2:
        return [xp.matmul(x, mats[1]), xp.matmul(x.T, mats[0])]
    if n == 3:
        return _mttkrp_all_3way(x, mats)
    # Split into two blocks of at least two modes each, so that neither GEMM uses the
    # Khatri–Rao product of all modes but one.
    k = _best_split(shape, 2, n - 2)
    left, right = math.prod(shape[:k]), math.prod(shape[k:])
    flat = xp.reshape(x, (left, right))
    # Left partial: x contracted with the right block's Khatri–Rao -> (R, I_0, …, I_{k-1}).
    p_left = xp.matmul(flat, _khatri_rao_t(mats[k:], None, like).T)  # (left, R)
    p_left = xp.reshape(contiguous(p_left.T), (rank, *shape[:k]))
    # Right partial: the left block's Khatri–Rao contracted with x -> (R, I_k, …).
    p_right = xp.matmul(_khatri_rao_t(mats[:k], None, like), flat)
    p_right = xp.reshape(p_right, (rank, *shape[k:]))
    outs = [_contract_rank_first(p_left, mats[:k], j) for j in range(k)]
    outs += [_contract_rank_first(p_right, mats[k:], j) for j in range(n - k)]
    return outs


def _mttkrp_all_3way(x: Array, mats: Sequence[Array]) -> list[Array]:
    """All three MTTKRPs of a 3-way ``x`` from two single-factor contractions of ``x``.

    ``T = x ×_2 A_2`` (I_0, I_1, R) serves modes 0 and 1, ``U = A_0ᵀ ×_0 x`` (R, I_1, I_2)
    modes 1 and 2, ``V = A_1ᵀ ×_1 x`` (I_0, R, I_2, a batched GEMM) modes 0 and 2. Two of
    them cover every mode; the pair with the smallest intermediates is used (two passes
    over ``x``, no Khatri–Rao product at all).
    """
    xp = namespace(x)
    i0, i1, i2 = shape_tuple(x)
    rank = int(mats[0].shape[1])
    a0, a1, a2 = mats
    sizes = {"T": i0 * i1, "U": i1 * i2, "V": i0 * i2 + _BATCH_PENALTY * i0}
    # Drop the largest (ties: prefer plain GEMMs, i.e. drop V first).
    drop = max(("V", "U", "T"), key=lambda k: sizes[k])
    outs: dict[int, tuple[int, Array]] = {}

    def offer(m: int, cost: int, make: Any) -> None:
        if m not in outs or cost < outs[m][0]:
            outs[m] = (cost, make)

    if drop != "T":
        t = xp.reshape(xp.matmul(xp.reshape(x, (i0 * i1, i2)), a2), (i0, i1, rank))
        offer(0, sizes["T"], lambda t=t: _einsum("ijr,jr->ir", t, a1))
        offer(1, sizes["T"], lambda t=t: _einsum("ijr,ir->jr", t, a0))
    if drop != "U":
        u = xp.matmul(contiguous(a0.T), xp.reshape(x, (i0, i1 * i2)))
        u = xp.reshape(u, (rank, i1, i2))
        offer(1, sizes["U"], lambda u=u: _einsum("rjk,kr->jr", u, a2))
        offer(2, sizes["U"], lambda u=u: _einsum("rjk,jr->kr", u, a1))
    if drop != "V":
        v = xp.matmul(contiguous(a1.T), x)  # (I_0, R, I_2)
        offer(0, sizes["V"], lambda v=v: _einsum("irk,kr->ir", v, a2))
        offer(2, sizes["V"], lambda v=v: _einsum("irk,ir->kr", v, a0))
    return [outs[m][1]() for m in range(3)]

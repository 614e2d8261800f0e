"""CP algebra: norms and inner products without densifying, and the indeterminacies
(scaling, permutation, sign) made explicit: normalize, arrange, fix_signs, permute."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._backend import (
    Array,
    check_same_device_dtype,
    conj,
    is_array,
    is_complex,
    namespace,
    shape_tuple,
    to_numpy,
    validate_mode,
)
from .cp import _CP_FORMS, CPTensor, _to_cp, as_cp
from .errors import CPTensorError, CPTensorTypeError
from .operator import is_operator
from .products import _mttkrp_one

__all__ = ["arrange", "cp_mode_product", "fix_signs", "inner", "norm", "normalize", "permute"]


def _gram_hadamard(a: Sequence[Array], b: Sequence[Array]) -> Array:
    """``⊛_n A_nᴴ B_n`` (R_a × R_b; ``A_nᵀ B_n`` for real factors)."""
    out = None
    for fa, fb in zip(a, b):
        g = conj(fa).T @ fb
        out = g if out is None else out * g
    return out


def norm(x: Any) -> Any:
    """Frobenius norm of a CP tensor (from Gram matrices), a dense array or an operator.

    For a :class:`CPTensor` it is ``sqrt(λᴴ (⊛_n A_nᴴA_n) λ)`` (``ᴴ`` is the conjugate
    transpose, ``ᵀ`` for real factors), a real 0-d array of the factors' backend, never
    forming the dense tensor. For a dense array, ``‖x‖`` of its backend (real also for
    complex ``x``); for a :class:`~cptensor.operator.TensorOperator`, its ``norm()``.

    >>> import numpy as np
    >>> from cptensor import CPTensor, reconstruct
    >>> rng = np.random.default_rng(0)
    >>> cp = CPTensor(None, [rng.standard_normal((n, 2)) for n in (3, 4, 5)])
    >>> bool(np.isclose(norm(cp), np.linalg.norm(reconstruct(cp))))
    True
    """
    if is_operator(x):
        return x.norm()
    x = _model_or_self(x, "x")
    if isinstance(x, CPTensor):
        xp = x.xp
        v = _gram_hadamard(x.factors, x.factors)
        sq = conj(x.weights) @ (v @ x.weights)
        if is_complex(sq):  # λᴴVλ is real for Hermitian V; drop the round-off imaginary part
            sq = xp.real(sq)
        return xp.sqrt(xp.clip(sq, 0, None))  # round-off can make a ~0 norm negative
    if is_array(x):
        xp = namespace(x)
        return xp.linalg.vector_norm(xp.reshape(x, (-1,)))
    raise CPTensorTypeError(
        f"x must be an array, a TensorOperator or a CP model ({_CP_FORMS}), got {type(x).__name__}"
    )


def inner(a: Any, b: Any) -> Any:
    """Inner product ``⟨a, b⟩`` of CP tensors, dense arrays and operators, in any mix.

    CP·CP uses ``λ_aᴴ (⊛_n A_nᴴB_n) λ_b``; CP·dense uses one MTTKRP of the dense side; an
    operator contracts itself with the CP side. The CP side is never densified. For
    complex values ``a`` is conjugated, ``⟨a, b⟩ = Σ conj(a)·b`` (so
    ``⟨a, b⟩ = conj(⟨b, a⟩)`` and ``⟨a, a⟩ = ‖a‖²``); for real values it is ``Σ a·b``.

    >>> import numpy as np
    >>> from cptensor import CPTensor, reconstruct
    >>> rng = np.random.default_rng(0)
    >>> a = CPTensor(None, [rng.standard_normal((n, 2)) for n in (3, 4, 5)])
    >>> x = rng.standard_normal((3, 4, 5))
    >>> bool(np.isclose(inner(a, x), np.sum(reconstruct(a) * x)))
    True
    """
    a, b = _model_or_self(a, "a"), _model_or_self(b, "b")
    a_cp, b_cp = isinstance(a, CPTensor), isinstance(b, CPTensor)
    if a_cp and b_cp:
        if a.shape != b.shape:
            raise CPTensorError(f"shapes differ: a has shape {a.shape} but b has shape {b.shape}")
        namespace(a.factors[0], b.factors[0], names=["a", "b"])
        check_same_device_dtype([a.factors[0], b.factors[0]], ["a", "b"])
        return conj(a.weights) @ (_gram_hadamard(a.factors, b.factors) @ b.weights)
    names = ("a", "b")
    swapped = False
    if b_cp and not a_cp:
        a, b = b, a
        a_cp, b_cp = True, False
        names = ("b", "a")
        swapped = True
    if a_cp:
        cp_name, other = names
        if is_operator(b):
            _check_shapes(a.shape, tuple(b.shape), names)
            m = b.mttkrp([conj(f) for f in a.factors], 0)
            out = a.xp.sum(m * conj(a.factors[0]) * conj(a.weights))
            return conj(out) if swapped else out
        if not is_array(b):
            raise CPTensorTypeError(
                f"{other}: expected an array, CPTensor or TensorOperator, got {type(b).__name__}"
            )
        _check_shapes(a.shape, shape_tuple(b), names)
        namespace(b, a.factors[0], names=[other, f"{cp_name}.factors[0]"])
        check_same_device_dtype([a.factors[0], b], [cp_name, other])
        # Σ conj(cp)·x: the MTTKRP with conjugated factors (no-ops for real factors)
        m = _mttkrp_one(b, [conj(f) for f in a.factors], 0)
        out = a.xp.sum(m * conj(a.factors[0]) * conj(a.weights))
        return conj(out) if swapped else out
    if is_operator(a) or is_operator(b):
        raise CPTensorTypeError("inner of two TensorOperators is not supported; densify one side")
    xp = namespace(a, b, names=["a", "b"])
    _check_shapes(shape_tuple(a), shape_tuple(b), ("a", "b"))
    check_same_device_dtype([a, b], ["a", "b"])
    return xp.sum(conj(a) * b)


def _check_shapes(sa: tuple[int, ...], sb: tuple[int, ...], names: tuple[str, str]) -> None:
    if sa != sb:
        raise CPTensorError(
            f"shapes differ: {names[0]} has shape {sa} but {names[1]} has shape {sb}"
        )


def _check_cp(cp: Any, name: str = "cp") -> CPTensor:
    return as_cp(cp, name)


def _model_or_self(x: Any, name: str) -> Any:
    """``x`` as a CPTensor when it is a CP model in any accepted form (a CPFit, a TensorLy
    CPTensor, a ``(weights, factors)`` pair); arrays, operators and anything else as is."""
    if is_array(x) or is_operator(x):
        return x
    cp = _to_cp(x, name)
    return x if cp is None else cp


def normalize(cp: CPTensor, *, norm: int = 2) -> CPTensor:
    """Unit-norm factor columns with the norms absorbed into the weights.

    Parameters
    ----------
    cp:
        The CP tensor (real or complex).
    norm:
        ``2`` (default): unit Euclidean columns; ``1``: unit 1-norm columns,
        ``Σ_i |a_ir| = 1`` (pyttb's ``normalize(normtype=1)``, Tensor Toolbox's
        ``normalize(X, [], 1)``).

    Returns
    -------
    CPTensor
        The same tensor; zero columns stay zero (their weight becomes 0), never NaN.
        Signs of the weights are kept (:func:`arrange` makes them non-negative).

    Raises
    ------
    ValueError
        When ``norm`` is not 1 or 2.

    Examples
    --------
    >>> import numpy as np
    >>> from cptensor import CPTensor
    >>> cp = normalize(CPTensor(None, [np.array([[3.0], [4.0]]), np.array([[2.0]])]))
    >>> cp.weights, cp.factors[0].ravel()
    (array([10.]), array([0.6, 0.8]))
    >>> normalize(cp, norm=1).factors[0].ravel().round(4)
    array([0.4286, 0.5714])
    """
    cp = _check_cp(cp)
    if isinstance(norm, bool) or norm not in (1, 2):
        raise CPTensorError(f"norm must be 1 or 2 (the column norm to divide by), got {norm!r}")
    xp = cp.xp
    w = cp.weights
    factors = []
    if norm == 1:
        for f in cp.factors:
            n = xp.sum(xp.abs(f), axis=0)
            factors.append(f / xp.where(n > 0, n, xp.ones_like(n)))
            w = w * n
        return CPTensor(w, factors)
    for f in cp.factors:
        # Scaled by the largest magnitude first (as BLAS nrm2 does), so that columns of
        # tiny entries, whose squares underflow, are still normalized.
        big = xp.max(xp.abs(f), axis=0)
        big = xp.where(big > 0, big, xp.ones_like(big))
        n = big * xp.linalg.vector_norm(f / big, axis=0)
        safe = xp.where(n > 0, n, xp.ones_like(n))
        factors.append(f / safe)
        w = w * n
    return CPTensor(w, factors)


def permute(cp: CPTensor, perm: Sequence[int] | Array) -> CPTensor:
    """Reorder the components: component ``k`` of the result is component ``perm[k]``.

    >>> import numpy as np
    >>> from cptensor import CPTensor
    >>> permute(CPTensor(np.array([1.0, 2.0]), [np.eye(2)]), [1, 0]).weights
    array([2., 1.])
    """
    cp = _check_cp(cp)
    p = np.asarray(perm.detach().cpu() if hasattr(perm, "detach") else perm)
    if p.ndim != 1 or sorted(p.tolist()) != list(range(cp.rank)):
        raise CPTensorError(f"perm must be a permutation of range({cp.rank}), got {p.tolist()}")
    xp = cp.xp
    idx = xp.asarray(p.astype(np.int64), device=cp.device)
    return CPTensor(xp.take(cp.weights, idx, axis=0), [xp.take(f, idx, axis=1) for f in cp.factors])


def arrange(cp: CPTensor, order: Sequence[int] | Array | None = None) -> CPTensor:
    """Normalize, then sort components by weight, largest first (Tensor Toolbox ``arrange``).

    Negative weights are made positive first, their signs moved into the first factor
    (the tensor is unchanged), so the order is by magnitude: weights ``(-5, 1)`` become
    ``(5, 1)``. For a complex tensor the weights become real and non-negative the same
    way, their phases ``λ/|λ|`` moved into the first factor. With ``order``, apply that
    permutation instead of sorting (after normalizing).

    >>> import numpy as np
    >>> from cptensor import CPTensor
    >>> arrange(CPTensor(None, [np.array([[1.0, 0.0], [0.0, 5.0]])])).weights
    array([5., 1.])
    """
    cp = normalize(_check_cp(cp))
    xp = cp.xp
    if is_complex(cp.weights):
        mag = xp.abs(cp.weights)
        phase = cp.weights / xp.astype(xp.where(mag > 0, mag, xp.ones_like(mag)), cp.dtype)
        phase = xp.where(mag > 0, phase, xp.ones_like(phase))
        cp = CPTensor(xp.astype(mag, cp.dtype), [cp.factors[0] * phase, *cp.factors[1:]])
        if order is None:
            order = xp.argsort(-mag, stable=True)
        return permute(cp, order)
    # weights made non-negative first, their signs absorbed into the first factor (as
    # Tensor Toolbox and pyttb do), so that sorting orders components by magnitude
    signs = xp.where(cp.weights < 0, -xp.ones_like(cp.weights), xp.ones_like(cp.weights))
    if bool(xp.any(signs < 0)):
        factors = [cp.factors[0] * signs, *cp.factors[1:]]
        cp = CPTensor(cp.weights * signs, factors)
    if order is None:
        order = xp.argsort(-cp.weights, stable=True)
    return permute(cp, order)


def fix_signs(cp: CPTensor, reference: CPTensor | None = None) -> CPTensor:
    """Resolve the sign indeterminacy of each component (Tensor Toolbox ``fixsigns``).

    Without ``reference`` (Tensor Toolbox and pyttb ``fixsigns``): in each mode, make the
    entry of largest magnitude of each column positive, flipping columns in pairs so that
    the tensor is unchanged; when a component has an odd number of such negative modes,
    the last of them (in mode order) keeps its negative sign.

    With ``reference`` (same shape and rank), align each column's sign with the
    reference's column instead: a column is flipped when its cosine with the reference's
    column is negative, again in pairs. When a component has an odd number of negative
    cosines, either the negative one closest to zero is left alone or, when the smallest
    non-negative cosine is closer to zero still, that one is flipped too (Tensor Toolbox's
    rule; pyttb 1.8's port of it flips an odd number of columns in these cases, which
    changes the tensor).

    For complex factors the indeterminacy is a phase: each column is rotated so that its
    largest entry (or, with ``reference``, its inner product with the reference's
    column) is real and positive, and the product of the rotations, which must be one,
    is restored in the last rotated mode (with ``reference``: the mode whose cosine is
    smallest in magnitude). Weights are kept.

    Parameters
    ----------
    cp:
        The CP tensor.
    reference:
        Optional CP tensor to align with, of ``cp``'s shape, rank, backend and dtype.

    Returns
    -------
    CPTensor
        The same tensor with column signs (phases) fixed.

    Examples
    --------
    >>> import numpy as np
    >>> from cptensor import CPTensor
    >>> cp = fix_signs(CPTensor(None, [np.array([[-2.0], [1.0]]), np.array([[-1.0], [0.5]])]))
    >>> cp.factors[0].ravel(), cp.factors[1].ravel()
    (array([ 2., -1.]), array([ 1. , -0.5]))
    >>> odd = CPTensor(None, [np.array([[-2.0]]), np.array([[-1.0]]), np.array([[-3.0]])])
    >>> [float(f[0, 0]) for f in fix_signs(odd).factors]  # the last negative mode keeps it
    [2.0, 1.0, -3.0]
    """
    cp = _check_cp(cp)
    xp = cp.xp
    if reference is not None:
        reference = _check_cp(reference, "reference")
        if reference.shape != cp.shape or reference.rank != cp.rank:
            raise CPTensorError(
                f"reference has shape {reference.shape} and rank {reference.rank}, expected "
                f"shape {cp.shape} and rank {cp.rank}"
            )
        namespace(cp.factors[0], reference.factors[0], names=["cp", "reference"])
        check_same_device_dtype([cp.factors[0], reference.factors[0]], ["cp", "reference"])
        rot = _aligning_rotations(cp, reference)
        rot = xp.asarray(rot, dtype=cp.dtype, device=cp.device)
        return CPTensor(cp.weights, [f * rot[n] for n, f in enumerate(cp.factors)])
    rows = []
    for f in cp.factors:
        idx = xp.argmax(xp.abs(f), axis=0)
        rows.append(xp.take_along_axis(f, idx[None, :], axis=0)[0, :])
    s = xp.stack(rows)  # (N, R): each column's entry of largest magnitude
    ones = xp.ones_like(s)
    if is_complex(s):
        mag = xp.abs(s)
        unit = s / xp.astype(xp.where(mag > 0, mag, xp.ones_like(mag)), s.dtype)
        unit = xp.where(mag > 0, unit, ones)
    else:
        unit = xp.where(s < 0, -ones, ones)
    # Turning every column by conj(unit) leaves the product of the units over; it goes
    # back into the last turned mode (for real data: with an odd number of negative
    # modes, the last negative mode keeps its sign, as in Tensor Toolbox).
    total = xp.prod(unit, axis=0)
    turns = conj(unit)
    done = xp.zeros(s.shape[1:], dtype=xp.bool, device=cp.device)
    rot: list[Array] = []
    for n in reversed(range(cp.ndim)):
        here = (unit[n] != 1) & ~done
        rot.append(xp.where(here, turns[n] * total, turns[n]))
        done = done | here
    rot.reverse()
    return CPTensor(cp.weights, [f * rot[n] for n, f in enumerate(cp.factors)])


def _aligning_rotations(cp: CPTensor, reference: CPTensor) -> np.ndarray:
    """``(N, R)`` column multipliers (±1, or unit complex numbers) aligning ``cp`` with
    ``reference``, whose product over the modes is one (computed on the host: N·R
    numbers)."""
    cos = []
    for f, g in zip(cp.factors, reference.factors):
        c = to_numpy(cp.xp.sum(conj(f) * g, axis=0)).astype(np.complex128)
        na = to_numpy(cp.xp.linalg.vector_norm(f, axis=0)).astype(np.float64)
        nb = to_numpy(cp.xp.linalg.vector_norm(g, axis=0)).astype(np.float64)
        den = na * nb
        cos.append(np.where(den > 0, c / np.where(den > 0, den, 1.0), 0.0))
    c = np.stack(cos)  # (N, R)
    if is_complex(cp.factors[0]):
        mag = np.abs(c)
        unit = np.where(mag > 0, c / np.where(mag > 0, mag, 1.0), 1.0)
        smallest = np.argmin(mag, axis=0)
        cols = np.arange(c.shape[1])
        unit[smallest, cols] *= np.conj(np.prod(unit, axis=0))
        return unit
    c = c.real
    flips = np.ones_like(c)
    for r in range(c.shape[1]):
        neg = c[:, r] < 0
        flip = neg.copy()
        if neg.sum() % 2 == 1:
            least = np.flatnonzero(neg)[np.argmax(c[neg, r])]  # the negative closest to 0
            pos = np.flatnonzero(~neg)
            nearest = pos[np.argmin(c[pos, r])] if pos.size else None
            if nearest is not None and -c[least, r] > c[nearest, r]:
                flip[nearest] = True
            else:
                flip[least] = False
        flips[flip, r] = -1.0
    return flips


def cp_mode_product(cp: CPTensor, matrix: Array, mode: int) -> CPTensor:
    """The CP form of ``mode_product(reconstruct(cp), matrix, mode)``: ``A_mode ← M A_mode``.

    >>> import numpy as np
    >>> from cptensor import CPTensor
    >>> cp = CPTensor(None, [np.ones((3, 2)), np.ones((4, 2))])
    >>> cp_mode_product(cp, np.ones((5, 3)), 0).shape
    (5, 4)
    """
    cp = _check_cp(cp)
    mode = validate_mode(mode, cp.ndim)
    namespace(cp.factors[0], matrix, names=["cp", "matrix"])
    check_same_device_dtype([cp.factors[0], matrix], ["cp.factors[0]", "matrix"])
    if matrix.ndim != 2 or int(matrix.shape[1]) != cp.shape[mode]:
        raise CPTensorError(
            f"matrix has shape {shape_tuple(matrix)}, expected (J, {cp.shape[mode]}) to "
            f"multiply mode {mode} of a CP tensor of shape {cp.shape}"
        )
    factors = list(cp.factors)
    factors[mode] = matrix @ factors[mode]
    return CPTensor(cp.weights, factors)

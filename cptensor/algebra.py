"""CP algebra: norms and inner products without densifying, and the indeterminacies
(scaling, permutation, sign) made explicit: normalize, arrange, fix_signs, permute."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._backend import (
    Array,
    check_same_device_dtype,
    is_array,
    namespace,
    shape_tuple,
    validate_mode,
)
from .cp import CPTensor
from .errors import CPTensorError, CPTensorTypeError
from .operator import is_operator
from .products import _mttkrp_one

__all__ = ["arrange", "cp_mode_product", "fix_signs", "inner", "norm", "normalize", "permute"]


def _gram_hadamard(a: Sequence[Array], b: Sequence[Array]) -> Array:
    """``⊛_n A_nᵀ B_n`` (R_a × R_b)."""
    out = None
    for fa, fb in zip(a, b):
        g = fa.T @ fb
        out = g if out is None else out * g
    return out


def norm(x: Any) -> Any:
    """Frobenius norm of a CP tensor (from Gram matrices), a dense array or an operator.

    For a :class:`CPTensor` it is ``sqrt(λᵀ (⊛_n A_nᵀA_n) λ)``, a 0-d array of the factors'
    backend, never forming the dense tensor. For a dense array, ``‖x‖`` of its backend; for a
    :class:`~cptensor.operator.TensorOperator`, its ``norm()``.

    >>> import numpy as np
    >>> from cptensor import CPTensor, reconstruct
    >>> rng = np.random.default_rng(0)
    >>> cp = CPTensor(None, [rng.standard_normal((n, 2)) for n in (3, 4, 5)])
    >>> bool(np.isclose(norm(cp), np.linalg.norm(reconstruct(cp))))
    True
    """
    if is_operator(x):
        return x.norm()
    if isinstance(x, CPTensor):
        xp = x.xp
        v = _gram_hadamard(x.factors, x.factors)
        sq = x.weights @ (v @ x.weights)
        return xp.sqrt(xp.clip(sq, 0, None))  # round-off can make a ~0 norm negative
    if is_array(x):
        xp = namespace(x)
        return xp.linalg.vector_norm(xp.reshape(x, (-1,)))
    raise CPTensorTypeError(
        f"x must be a CPTensor, an array or a TensorOperator, got {type(x).__name__}"
    )


def inner(a: Any, b: Any) -> Any:
    """Inner product ``⟨a, b⟩`` of CP tensors, dense arrays and operators, in any mix.

    CP·CP uses ``λ_aᵀ (⊛_n A_nᵀB_n) λ_b``; CP·dense uses one MTTKRP of the dense side; an
    operator contracts itself with the CP side. The CP side is never densified.

    >>> import numpy as np
    >>> from cptensor import CPTensor, reconstruct
    >>> rng = np.random.default_rng(0)
    >>> a = CPTensor(None, [rng.standard_normal((n, 2)) for n in (3, 4, 5)])
    >>> x = rng.standard_normal((3, 4, 5))
    >>> bool(np.isclose(inner(a, x), np.sum(reconstruct(a) * x)))
    True
    """
    a_cp, b_cp = isinstance(a, CPTensor), isinstance(b, CPTensor)
    if a_cp and b_cp:
        if a.shape != b.shape:
            raise CPTensorError(f"shapes differ: a has shape {a.shape} but b has shape {b.shape}")
        namespace(a.factors[0], b.factors[0], names=["a", "b"])
        check_same_device_dtype([a.factors[0], b.factors[0]], ["a", "b"])
        return a.weights @ (_gram_hadamard(a.factors, b.factors) @ b.weights)
    names = ("a", "b")
    if b_cp and not a_cp:
        a, b = b, a
        a_cp, b_cp = True, False
        names = ("b", "a")
    if a_cp:
        cp_name, other = names
        if is_operator(b):
            _check_shapes(a.shape, tuple(b.shape), names)
            m = b.mttkrp(list(a.factors), 0)
            return a.xp.sum(m * a.factors[0] * a.weights)
        if not is_array(b):
            raise CPTensorTypeError(
                f"{other}: expected an array, CPTensor or TensorOperator, got {type(b).__name__}"
            )
        _check_shapes(a.shape, shape_tuple(b), names)
        namespace(b, a.factors[0], names=[other, f"{cp_name}.factors[0]"])
        check_same_device_dtype([a.factors[0], b], [cp_name, other])
        m = _mttkrp_one(b, list(a.factors), 0)
        return a.xp.sum(m * a.factors[0] * a.weights)
    if is_operator(a) or is_operator(b):
        raise CPTensorTypeError("inner of two TensorOperators is not supported; densify one side")
    xp = namespace(a, b, names=["a", "b"])
    _check_shapes(shape_tuple(a), shape_tuple(b), ("a", "b"))
    check_same_device_dtype([a, b], ["a", "b"])
    return xp.sum(a * b)


def _check_shapes(sa: tuple[int, ...], sb: tuple[int, ...], names: tuple[str, str]) -> None:
    if sa != sb:
        raise CPTensorError(
            f"shapes differ: {names[0]} has shape {sa} but {names[1]} has shape {sb}"
        )


def _check_cp(cp: Any, name: str = "cp") -> CPTensor:
    if not isinstance(cp, CPTensor):
        raise CPTensorTypeError(f"{name} must be a cptensor.CPTensor, got {type(cp).__name__}")
    return cp


def normalize(cp: CPTensor) -> CPTensor:
    """Unit-norm factor columns with the norms absorbed into the weights.

    Zero columns stay zero (their weight becomes 0), never NaN.

    >>> import numpy as np
    >>> from cptensor import CPTensor
    >>> cp = normalize(CPTensor(None, [np.array([[3.0], [4.0]]), np.array([[2.0]])]))
    >>> cp.weights, cp.factors[0].ravel()
    (array([10.]), array([0.6, 0.8]))
    """
    cp = _check_cp(cp)
    xp = cp.xp
    w = cp.weights
    factors = []
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
    import numpy as np

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
    ``(5, 1)``. With ``order``, apply that permutation instead of sorting (after
    normalizing).

    >>> import numpy as np
    >>> from cptensor import CPTensor
    >>> arrange(CPTensor(None, [np.array([[1.0, 0.0], [0.0, 5.0]])])).weights
    array([5., 1.])
    """
    cp = normalize(_check_cp(cp))
    xp = cp.xp
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

    Without ``reference``: in each mode, make the entry of largest magnitude of each
    column positive; flips come in pairs (so the tensor is unchanged), and when a
    component has an odd number of negative modes, the mode whose largest entry is
    smallest in magnitude keeps its negative sign. With ``reference`` (same shape and
    rank), align each column's sign with the reference's column instead (by the sign of
    their inner product), with the same pairing rule. Weights are kept.

    >>> import numpy as np
    >>> from cptensor import CPTensor
    >>> cp = fix_signs(CPTensor(None, [np.array([[-2.0], [1.0]]), np.array([[-1.0], [0.5]])]))
    >>> cp.factors[0].ravel(), cp.factors[1].ravel()
    (array([ 2., -1.]), array([ 1. , -0.5]))
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
        scores = [xp.sum(f * g, axis=0) for f, g in zip(cp.factors, reference.factors)]
    else:
        scores = []
        for f in cp.factors:
            idx = xp.argmax(xp.abs(f), axis=0)
            scores.append(xp.take_along_axis(f, idx[None, :], axis=0)[0, :])
    s = xp.stack(scores)  # (N, R)
    neg = s < 0
    flips = xp.where(neg, -xp.ones_like(s), xp.ones_like(s))
    odd = (xp.sum(xp.astype(neg, xp.int64), axis=0) % 2) == 1
    # For odd components, undo the flip of the negative mode with the smallest |score|.
    big = xp.max(xp.abs(s)) + 1
    mag = xp.where(neg, xp.abs(s), xp.full_like(s, big))
    keep = xp.argmin(mag, axis=0)  # (R,)
    modes = xp.arange(s.shape[0], device=cp.device)[:, None]
    undo = (modes == keep[None, :]) & odd[None, :]
    flips = xp.where(undo, xp.ones_like(flips), flips)
    return CPTensor(cp.weights, [f * flips[n] for n, f in enumerate(cp.factors)])


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

"""Initial CP factors for fitting: random, orthogonal, and SVD-based (HOSVD-style).

Every initializer returns a :class:`~cptensor.CPTensor` with unit weights on the backend,
device and dtype of its reference (``x`` for :func:`svd`, ``like`` for :func:`random` and
:func:`orthogonal`); complex dtypes (complex64, complex128) give complex factors. Random
numbers come from a seeded NumPy ``Generator`` (``seed`` may be an int, a
``numpy.random.Generator`` or ``None`` for fresh entropy) and are then placed on the target
device, so the same seed gives the same factors on every backend and device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from ._backend import (
    Array,
    conj,
    contiguous,
    device,
    is_array,
    is_complex,
    is_complex_dtype,
    is_inexact,
    namespace,
    shape_tuple,
    to_numpy,
)
from .cp import CPTensor
from .errors import CPTensorError, CPTensorTypeError
from .keywords import tensorly_keywords
from .operator import is_operator

__all__ = ["orthogonal", "random", "svd"]

Seed = int | np.random.Generator | None

#: Elements per chunk when a mode's unfolding is streamed (bounds temporary copies).
_CHUNK_ELEMENTS = 1 << 22


def _rng(seed: Any) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None or (isinstance(seed, (int, np.integer)) and not isinstance(seed, bool)):
        return np.random.default_rng(None if seed is None else int(seed))
    raise CPTensorTypeError(
        f"seed must be an int, a numpy.random.Generator or None, got {type(seed).__name__}"
    )


def _check_rank(rank: Any) -> int:
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
        raise CPTensorTypeError(
            f"rank must be a positive int, got {type(rank).__name__} ({rank!r})"
        )
    if int(rank) < 1:
        raise CPTensorError(f"rank must be >= 1, got {int(rank)}")
    return int(rank)


def _check_shape(shape: Any) -> tuple[int, ...]:
    try:
        out = tuple(int(s) for s in shape)
    except TypeError:
        raise CPTensorTypeError(
            f"shape must be a sequence of ints, got {type(shape).__name__}"
        ) from None
    if not out or any(s < 1 for s in out):
        raise CPTensorError(f"shape must be a non-empty sequence of positive ints, got {out}")
    return out


def _placement(like: Any, dtype: Any, dev: Any) -> tuple[Any, Any, Any]:
    """(namespace, dtype, device) of the factors to create."""
    if like is None:
        if dev not in (None, "cpu"):
            raise CPTensorError(
                f"device={dev!r} needs like= (an array of the target backend); without like "
                "the factors are NumPy arrays on the CPU"
            )
        dt = np.dtype(np.float64 if dtype is None else dtype)
        if dt.kind not in "fc":
            raise CPTensorTypeError(f"dtype must be a floating or complex dtype, got {dt}")
        return namespace(np.zeros(1)), dt, "cpu"
    if not is_array(like):
        raise CPTensorTypeError(
            f"like must be an array (NumPy or torch), got {type(like).__name__}"
        )
    xp = namespace(like)
    dt = like.dtype if dtype is None else dtype
    return xp, dt, device(like) if dev is None else dev


def _seeded_factors(
    draw: Callable[[np.random.Generator, int, int, bool], np.ndarray],
    shape: Any,
    rank: Any,
    like: Any,
    dtype: Any,
    dev: Any,
    seed: Any,
) -> CPTensor:
    """Validate the arguments, then ``draw(rng, I_n, rank, complex)`` each factor and place
    it."""
    shape = _check_shape(shape)
    rank = _check_rank(rank)
    xp, dt, dev = _placement(like, dtype, dev)
    rng = _rng(seed)
    cplx = is_complex_dtype(dt)
    factors = [xp.asarray(draw(rng, s, rank, cplx), dtype=dt, device=dev) for s in shape]
    return CPTensor(None, factors)


def _with_random_unit_columns(rng: np.random.Generator, u: np.ndarray, rank: int) -> np.ndarray:
    """``u`` (``size × k``) with ``rank − k`` random unit columns appended (``u`` if none;
    complex columns for a complex ``u``)."""
    size, k = u.shape
    if rank <= k:
        return u
    extra = _normal_columns(rng, size, rank - k, np.iscomplexobj(u))
    extra /= np.linalg.norm(extra, axis=0, keepdims=True)
    return np.concatenate([u, extra], axis=1)


@tensorly_keywords("init.random")
def random(
    shape: Sequence[int],
    rank: int,
    *,
    like: Array | None = None,
    dtype: Any = None,
    device: Any = None,
    seed: Seed = None,
) -> CPTensor:
    """A CP tensor with standard normal factor entries and unit weights.

    For a complex dtype the entries are standard complex normal, ``(g + i·h)/√2`` with
    ``g, h`` independent standard normal (unit expected ``|a|²``).

    Parameters
    ----------
    shape:
        The tensor shape ``(I_1, …, I_N)``.
    rank:
        The number of components ``R >= 1``.
    like:
        An array whose backend, dtype and device the factors take (default: NumPy float64).
    dtype, device:
        Override ``like``'s dtype / device.
    seed:
        An int, a ``numpy.random.Generator`` or ``None``; the same seed gives the same
        factors on every backend.

    Returns
    -------
    CPTensor
        Factors of shape ``(I_n, rank)``, weights all one.

    Examples
    --------
    >>> from cptensor import init
    >>> cp = init.random((3, 4, 5), 2, seed=0)
    >>> cp.shape, cp.rank
    ((3, 4, 5), 2)
    >>> bool((init.random((3, 4, 5), 2, seed=0).factors[0] == cp.factors[0]).all())
    True
    """
    return _seeded_factors(_normal_columns, shape, rank, like, dtype, device, seed)


def _normal_columns(
    rng: np.random.Generator, size: int, rank: int, cplx: bool = False
) -> np.ndarray:
    """``(size, rank)`` standard normal entries (standard complex normal if ``cplx``)."""
    if not cplx:
        return rng.standard_normal((size, rank))
    parts = rng.standard_normal((2, size, rank))
    return (parts[0] + 1j * parts[1]) / np.sqrt(2.0)


def _orthonormal_columns(
    rng: np.random.Generator, size: int, rank: int, cplx: bool = False
) -> np.ndarray:
    """``(size, rank)`` with orthonormal columns; beyond ``size`` columns, random unit ones."""
    k = min(size, rank)
    q, r = np.linalg.qr(_normal_columns(rng, size, k, cplx))
    d = np.diag(r)
    if cplx:  # unique QR: diag(r) real positive
        mag = np.abs(d)
        q = q * np.where(mag > 0, d / np.where(mag > 0, mag, 1.0), 1.0)
    else:
        q = q * np.where(d < 0, -1.0, 1.0)  # unique (sign-fixed) QR
    return _with_random_unit_columns(rng, q, rank)


@tensorly_keywords("init.orthogonal")
def orthogonal(
    shape: Sequence[int],
    rank: int,
    *,
    like: Array | None = None,
    dtype: Any = None,
    device: Any = None,
    seed: Seed = None,
) -> CPTensor:
    """A CP tensor whose factors have orthonormal columns (random, seeded), unit weights.

    Orthonormal in the Hermitian sense (``AᴴA = I``) for a complex dtype.

    Where ``rank`` exceeds a mode's size ``I_n``, the first ``I_n`` columns of that factor
    are an orthonormal basis and the rest are random unit vectors. Arguments as for
    :func:`random`.

    Examples
    --------
    >>> import numpy as np
    >>> from cptensor import init
    >>> a = init.orthogonal((5, 6), 3, seed=1).factors[0]
    >>> bool(np.allclose(a.T @ a, np.eye(3)))
    True
    """
    return _seeded_factors(_orthonormal_columns, shape, rank, like, dtype, device, seed)


# -- SVD initialisation -------------------------------------------------------------------


def _unfold_chunks(x: Array, mode: int) -> Iterator[tuple[int, int, Array]]:
    """Stream the mode-``mode`` unfolding of ``x`` as column blocks ``(start, stop, Z)``.

    ``x`` is viewed (row-major, no copy) as ``(left, I_n, right)``; a block of ``c`` left
    indices is the ``(I_n, c·right)`` slice of the unfolding, the only copy made (bounded
    by ``_CHUNK_ELEMENTS``). Mode 0 is a view of ``x`` itself.
    """
    xp = namespace(x)
    shape = shape_tuple(x)
    size = shape[mode]
    left, right = math.prod(shape[:mode]), math.prod(shape[mode + 1 :])
    if left == 1:
        yield 0, right, xp.reshape(x, (size, right))
        return
    x3 = xp.reshape(x, (left, size, right))
    step = max(1, _CHUNK_ELEMENTS // max(1, size * right))
    for start in range(0, left, step):
        stop = min(left, start + step)
        block = xp.permute_dims(x3[start:stop], (1, 0, 2))
        yield start * right, stop * right, xp.reshape(block, (size, (stop - start) * right))


def _gram(x: Array, mode: int) -> Array:
    """``X_(n) X_(n)ᴴ`` (``I_n × I_n``; ``ᵀ`` for real x) without a full unfolding copy."""
    out = None
    for _, _, z in _unfold_chunks(x, mode):
        g = z @ conj(z).T
        out = g if out is None else out + g
    return out


def _unfold_times(x: Array, mode: int, b: Array) -> Array:
    """``X_(n) @ b`` for ``b`` of shape ``(∏_{k≠n} I_k, k)``."""
    out = None
    for start, stop, z in _unfold_chunks(x, mode):
        p = z @ b[start:stop]
        out = p if out is None else out + p
    return out


def _times_unfold(x: Array, mode: int, u: Array) -> Array:
    """``uᴴ @ X_(n)`` for ``u`` of shape ``(I_n, k)``: shape ``(k, ∏_{k≠n} I_k)``."""
    xp = namespace(x)
    parts = [conj(u).T @ z for _, _, z in _unfold_chunks(x, mode)]
    return parts[0] if len(parts) == 1 else xp.concat(parts, axis=1)


def _sign_fix(u: np.ndarray) -> np.ndarray:
    """Make the largest-magnitude entry of each column positive (deterministic signs; for
    complex columns, the phase that makes it real and positive)."""
    if u.size == 0:
        return u
    idx = np.argmax(np.abs(u), axis=0)
    top = u[idx, np.arange(u.shape[1])]
    if np.iscomplexobj(u):
        mag = np.abs(top)
        return u * np.where(mag > 0, np.conj(top) / np.where(mag > 0, mag, 1.0), 1.0)
    signs = np.sign(top)
    return u * np.where(signs == 0, 1.0, signs)


def _leading_vectors_dense(x: Array, mode: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """The ``k`` leading left singular vectors of ``X_(mode)`` as float64 (complex128 for
    complex ``x``) NumPy."""
    cplx = is_complex(x)
    f64 = np.complex128 if cplx else np.float64
    shape = shape_tuple(x)
    size = shape[mode]
    other = math.prod(shape) // size
    randomized = size > 512 and other > 512 and size > 4 * (k + 10)
    if randomized:
        # Randomized range finder (Halko, Martinsson & Tropp 2011), 2 power iterations.
        xp = namespace(x)
        p = min(size, k + 10)
        omega = xp.asarray(_normal_columns(rng, other, p, cplx), dtype=x.dtype, device=device(x))
        y = _unfold_times(x, mode, omega)
        for _ in range(2):
            q = xp.linalg.qr(y)[0]
            q = xp.linalg.qr(conj(_times_unfold(x, mode, q)).T)[0]  # qr(X_(n)ᴴ q)
            y = _unfold_times(x, mode, q)
        q = to_numpy(xp.linalg.qr(y)[0]).astype(f64)
        b = to_numpy(_times_unfold(x, mode, xp.asarray(q, dtype=x.dtype, device=device(x))))
        u_small, _, _ = np.linalg.svd(b.astype(f64), full_matrices=False)
        return q @ u_small[:, :k]
    if size <= other:
        g = to_numpy(_gram(x, mode)).astype(f64)
        vals, vecs = np.linalg.eigh((g + g.conj().T) / 2)
        return vecs[:, ::-1][:, :k]
    # Mode larger than the rest: Gram on the small side, U = X_(n) V Σ⁻¹.
    xp = namespace(x)
    xn = to_numpy(xp.reshape(xp.moveaxis(x, mode, 0), (size, other))).astype(f64)
    vals, vecs = np.linalg.eigh(xn.conj().T @ xn)
    vals, vecs = vals[::-1][:k], vecs[:, ::-1][:, :k]
    u = xn @ vecs
    norms = np.linalg.norm(u, axis=0)
    return u / np.where(norms > 0, norms, 1.0)


@tensorly_keywords("init.svd")
def svd(x: Any, rank: int, *, seed: Seed = None) -> CPTensor:
    """HOSVD-style initialisation: the leading left singular vectors of each unfolding.

    For mode ``n`` the ``min(rank, I_n)`` leading left singular vectors of the unfolding
    ``X_(n)`` come from the eigenvectors of the Gram matrix on the *small* side (``I_n × I_n``
    streamed over column blocks of the unfolding, never a full unfolding copy), or from a
    seeded randomized SVD when both sides are large (both over 512). Where ``rank``
    exceeds ``I_n``, the remaining columns are random unit vectors drawn from ``seed``.
    Column signs are fixed (largest entry positive) so the result is deterministic. The
    eigen-decompositions of the small Gram matrices run in float64 on the host; the
    factors are returned on ``x``'s backend, device and dtype, with unit weights. For
    complex ``x`` these are the left singular vectors of the complex unfoldings (Gram
    ``X_(n) X_(n)ᴴ``, eigen-decomposed in complex128), each column's phase fixed so
    that its largest entry is real and positive.

    ``x`` may be a :class:`~cptensor.operator.TensorOperator` that provides
    ``gram(mode)`` (the ``I_n × I_n`` matrix ``X_(n) X_(n)ᵀ``); other operators raise
    ``TypeError`` (fit them with ``init="random"``).

    Examples
    --------
    >>> import numpy as np
    >>> from cptensor import init
    >>> x = np.random.default_rng(0).standard_normal((4, 5, 6))
    >>> cp = init.svd(x, 3)
    >>> [f.shape for f in cp.factors]
    [(4, 3), (5, 3), (6, 3)]
    >>> a = cp.factors[0]
    >>> bool(np.allclose(a.T @ a, np.eye(3)))
    True
    """
    rank = _check_rank(rank)
    rng = _rng(seed)
    if is_operator(x):
        if not hasattr(x, "gram"):
            raise CPTensorTypeError(
                f"init 'svd' for an operator ({type(x).__name__}) needs a gram(mode) method; "
                "use init='random' instead"
            )
        shape = tuple(int(s) for s in x.shape)
        like = None
        cols = []
        for mode, size in enumerate(shape):
            g = x.gram(mode)
            like = g
            g64 = to_numpy(g).astype(np.float64)
            vecs = np.linalg.eigh((g64 + g64.T) / 2)[1][:, ::-1][:, : min(rank, size)]
            cols.append(vecs)
    else:
        if not is_array(x):
            raise CPTensorTypeError(
                f"x must be an array (NumPy or torch) or a TensorOperator, got {type(x).__name__}"
            )
        namespace(x, names=["x"])
        if x.ndim < 1:
            raise CPTensorError(f"x must have at least one mode, got shape {shape_tuple(x)}")
        if not is_inexact(x):
            raise CPTensorTypeError(
                f"x must have a floating or complex dtype (float32/float64, "
                f"complex64/complex128), got {x.dtype}"
            )
        shape = shape_tuple(x)
        like = x
        x = contiguous(x)
        cols = [
            _leading_vectors_dense(x, mode, min(rank, size), rng) for mode, size in enumerate(shape)
        ]
    factors = []
    xp = namespace(like)
    for u in cols:
        u = _with_random_unit_columns(rng, _sign_fix(np.ascontiguousarray(u)), rank)
        factors.append(xp.asarray(u, dtype=like.dtype, device=device(like)))
    return CPTensor(None, factors)

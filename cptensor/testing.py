"""Hypothesis strategies and assertions for testing CP code, ours and yours.

Strategies (all draw every number from Hypothesis, so failures shrink and replay; no
``seed`` argument anywhere):

- :func:`shapes` — small tensor shapes;
- :func:`dense_tensors` — dense arrays of a given (or drawn) shape;
- :func:`cp_tensors` — :class:`~cptensor.CPTensor` objects of a given (or drawn) shape
  and rank;
- :func:`low_rank_tensors` — a dense tensor with a planted CP structure, controllable
  noise and component collinearity, returned with the truth as a :class:`LowRankTensor`.

Each takes ``backend="numpy"`` or ``"torch"``, a ``dtype`` (``"float32"``/``"float64"``
or a NumPy/torch dtype) and, for torch, a ``device``.

Assertions, for any backend (NumPy and torch, mixed too):

- :func:`assert_allclose` — values equal to a tolerance chosen from the dtype;
- :func:`assert_cp_equivalent` — two CP tensors equal up to the CP indeterminacies
  (permutation, scaling and sign of components), matched by the Hungarian algorithm.

This module imports ``hypothesis`` when it is imported (it is in the ``dev`` extra; install
it to use these helpers). ``torch`` is imported only when ``backend="torch"`` is asked for.

Example: a property test of your own decomposition code::

    from hypothesis import given
    from cptensor.testing import cp_tensors, assert_allclose
    import cptensor as ct

    @given(cp_tensors(rank=3))
    def test_norm_matches_dense(cp):
        assert_allclose(ct.norm(cp), ct.norm(ct.reconstruct(cp)))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ._backend import Array, is_array, is_torch, to_numpy
from .cp import CPTensor, as_cp
from .errors import CPTensorError

__all__ = [
    "LowRankTensor",
    "assert_allclose",
    "assert_cp_equivalent",
    "cp_tensors",
    "dense_tensors",
    "low_rank_tensors",
    "shapes",
]

_BACKENDS = ("numpy", "torch")


# ----------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------
def _np_dtype(dtype: Any) -> np.dtype:
    """The NumPy dtype named by ``dtype`` (a string, NumPy dtype or torch dtype)."""
    if dtype is None:
        return np.dtype(np.float64)
    name = str(dtype).removeprefix("torch.")
    if name not in ("float32", "float64"):
        raise CPTensorError(f"dtype must be float32 or float64, got {dtype!r}")
    return np.dtype(name)


def _check_backend(backend: str) -> None:
    if backend not in _BACKENDS:
        raise CPTensorError(f"backend must be one of {_BACKENDS}, got {backend!r}")


def _convert(a: np.ndarray, backend: str, device: Any) -> Array:
    """A NumPy array as an array of ``backend`` (torch imported only when asked for)."""
    if backend == "numpy":
        if device not in (None, "cpu"):
            raise CPTensorError(f"device={device!r} is not available for the numpy backend")
        return a
    import torch

    return torch.asarray(a, device=device if device is not None else "cpu")


def _strategy(value: Any) -> st.SearchStrategy[Any]:
    """``value`` itself when it is a strategy, else a strategy that always gives it."""
    return value if isinstance(value, st.SearchStrategy) else st.just(value)


def _elements(dtype: np.dtype, bound: float) -> st.SearchStrategy[float]:
    """Finite floats in ``[-bound, bound]`` without subnormals (flushed to zero on some
    devices, and unnormalizable: not worth testing on)."""
    return st.floats(
        -bound,
        bound,
        allow_nan=False,
        allow_infinity=False,
        allow_subnormal=False,
        width=8 * dtype.itemsize,
    )


def _draw_array(draw: Any, dtype: np.dtype, shape: tuple[int, ...], bound: float) -> np.ndarray:
    """An array of finite entries in ``[-bound, bound]``; subnormals (which Hypothesis's
    array fill can still produce) are replaced by zeros."""
    arr = draw(hnp.arrays(dtype, shape, elements=_elements(dtype, bound)))
    return np.where(np.abs(arr) < np.finfo(dtype).tiny, np.zeros((), dtype), arr)


# ----------------------------------------------------------------------------------------
# strategies
# ----------------------------------------------------------------------------------------
def shapes(
    *,
    min_ndim: int = 2,
    max_ndim: int = 4,
    min_side: int = 1,
    max_side: int = 5,
    max_size: int = 256,
) -> st.SearchStrategy[tuple[int, ...]]:
    """Tensor shapes with ``min_ndim..max_ndim`` modes of sizes ``min_side..max_side``,
    and at most ``max_size`` entries in all (small by default, so tests stay fast).

    Examples
    --------
    >>> from hypothesis import given, settings
    >>> @settings(max_examples=10)
    ... @given(shapes(min_ndim=3, max_ndim=3))
    ... def test(shape):
    ...     assert len(shape) == 3 and all(1 <= s <= 5 for s in shape)
    >>> test()
    """
    if not 1 <= min_ndim <= max_ndim:
        raise CPTensorError(f"need 1 <= min_ndim <= max_ndim, got {min_ndim} and {max_ndim}")
    if not 1 <= min_side <= max_side:
        raise CPTensorError(f"need 1 <= min_side <= max_side, got {min_side} and {max_side}")
    if max_size < min_side**min_ndim:
        raise CPTensorError(
            f"max_size={max_size} is below the smallest possible size "
            f"{min_side}**{min_ndim}; raise max_size or lower min_side/min_ndim"
        )
    return (
        st.lists(st.integers(min_side, max_side), min_size=min_ndim, max_size=max_ndim)
        .map(tuple)
        .filter(lambda s: math.prod(s) <= max_size)
    )


@st.composite
def dense_tensors(
    draw: Any,
    shape: Sequence[int] | st.SearchStrategy[tuple[int, ...]] | None = None,
    *,
    backend: str = "numpy",
    dtype: Any = "float64",
    device: Any = None,
    bound: float = 1.0,
) -> Array:
    """Dense arrays of ``shape`` (default: drawn from :func:`shapes`) with finite entries
    in ``[-bound, bound]``, of ``backend``, ``dtype`` and (torch) ``device``.

    Examples
    --------
    >>> from hypothesis import given, settings
    >>> @settings(max_examples=10)
    ... @given(dense_tensors((2, 3), dtype="float32"))
    ... def test(x):
    ...     assert x.shape == (2, 3) and str(x.dtype) == "float32"
    >>> test()
    """
    _check_backend(backend)
    dt = _np_dtype(dtype)
    shp = tuple(draw(_strategy(shapes() if shape is None else shape)))
    arr = _draw_array(draw, dt, shp, bound)
    return _convert(arr, backend, device)


@st.composite
def cp_tensors(
    draw: Any,
    shape: Sequence[int] | st.SearchStrategy[tuple[int, ...]] | None = None,
    rank: int | st.SearchStrategy[int] | None = None,
    *,
    backend: str = "numpy",
    dtype: Any = "float64",
    device: Any = None,
    weights: bool = True,
    bound: float = 1.0,
) -> CPTensor:
    """:class:`~cptensor.CPTensor` objects of ``shape`` and ``rank`` (each a value, a
    strategy, or ``None`` for :func:`shapes` and ranks 1 to 4).

    Factor entries lie in ``[-bound, bound]``; with ``weights=True`` the weights are drawn
    from ``[-2, 2]`` too, else they are ones. Every number comes from Hypothesis, so
    degenerate cases (zero columns, repeated components) are drawn as well: properties
    that need well-conditioned factors should use :func:`low_rank_tensors`.

    Examples
    --------
    >>> from hypothesis import given, settings
    >>> @settings(max_examples=10)
    ... @given(cp_tensors(shape=(3, 4, 5), rank=2))
    ... def test(cp):
    ...     assert cp.shape == (3, 4, 5) and cp.rank == 2
    >>> test()
    """
    _check_backend(backend)
    dt = _np_dtype(dtype)
    shp = tuple(draw(_strategy(shapes() if shape is None else shape)))
    r = int(draw(_strategy(st.integers(1, 4) if rank is None else rank)))
    if r < 1:
        raise CPTensorError(f"rank must be at least 1, got {r}")
    factors = [_draw_array(draw, dt, (n, r), bound) for n in shp]
    w = _draw_array(draw, dt, (r,), 2.0) if weights else np.ones(r, dt)
    return CPTensor(_convert(w, backend, device), [_convert(f, backend, device) for f in factors])


@dataclass(frozen=True)
class LowRankTensor:
    """A dense tensor with a planted CP structure (drawn by :func:`low_rank_tensors`).

    Attributes
    ----------
    tensor:
        The dense tensor ``reconstruct(cp) + noise``.
    cp:
        The planted CP tensor (the truth), unit-norm columns, weights in ``[1, 2]``.
    noise:
        The relative noise level ``‖noise‖ / ‖reconstruct(cp)‖`` that was added.
    collinearity:
        The congruence between any two columns of each factor (exact when the mode has
        at least ``rank`` rows).

    Examples
    --------
    >>> from hypothesis import given
    >>> from cptensor.testing import low_rank_tensors
    >>> @given(low_rank_tensors(shape=(4, 5, 6), rank=2, noise=0.0))
    ... def check(planted):
    ...     assert planted.tensor.shape == (4, 5, 6) and planted.cp.rank == 2
    >>> check()
    """

    tensor: Array
    cp: CPTensor
    noise: float
    collinearity: float


def _collinear_factor(rng: np.random.Generator, n: int, r: int, c: float) -> np.ndarray:
    """An ``(n, r)`` matrix with unit columns whose pairwise congruences equal ``c``."""
    z = rng.standard_normal((n, r))
    if n >= r:
        q, rr = np.linalg.qr(z)
        q = q * np.where(np.diag(rr) < 0, -1.0, 1.0)
    else:  # not enough rows for exact orthogonality: nearly independent columns
        q = z / np.linalg.norm(z, axis=0)
    corr = (1.0 - c) * np.eye(r) + c * np.ones((r, r))
    f = q @ np.linalg.cholesky(corr).T
    return f / np.linalg.norm(f, axis=0)


@st.composite
def low_rank_tensors(
    draw: Any,
    shape: Sequence[int] | st.SearchStrategy[tuple[int, ...]] | None = None,
    rank: int | st.SearchStrategy[int] | None = None,
    *,
    noise: float | st.SearchStrategy[float] = 0.0,
    collinearity: float | st.SearchStrategy[float] = 0.0,
    backend: str = "numpy",
    dtype: Any = "float64",
    device: Any = None,
) -> LowRankTensor:
    """Dense tensors of planted CP rank, with the truth: a :class:`LowRankTensor`.

    Factors have unit-norm columns with pairwise congruence ``collinearity`` (in
    ``[0, 1)``; near 1 the components are hard to tell apart), weights lie in ``[1, 2]``,
    and Gaussian noise of relative norm ``noise`` is added. ``shape`` defaults to 3-way
    shapes with sides 3..6, ``rank`` to 1..3. The Gaussian numbers come from a generator
    whose seed Hypothesis draws (so examples replay and shrink).

    Examples
    --------
    >>> from hypothesis import given, settings
    >>> import cptensor as ct
    >>> @settings(max_examples=10)
    ... @given(low_rank_tensors(shape=(4, 5, 6), rank=2, noise=0.0))
    ... def test(d):
    ...     assert_allclose(ct.reconstruct(d.cp), d.tensor)
    >>> test()
    """
    _check_backend(backend)
    dt = _np_dtype(dtype)
    default_shape = shapes(min_ndim=3, max_ndim=3, min_side=3, max_side=6, max_size=216)
    shp = tuple(draw(_strategy(default_shape if shape is None else shape)))
    r = int(draw(_strategy(st.integers(1, 3) if rank is None else rank)))
    eta = float(draw(_strategy(noise)))
    c = float(draw(_strategy(collinearity)))
    if r < 1:
        raise CPTensorError(f"rank must be at least 1, got {r}")
    if not 0.0 <= c < 1.0:
        raise CPTensorError(f"collinearity must be in [0, 1), got {c}")
    if eta < 0.0:
        raise CPTensorError(f"noise must be >= 0, got {eta}")
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    factors = [_collinear_factor(rng, n, r, c) for n in shp]
    weights = np.sort(rng.uniform(1.0, 2.0, r))[::-1].copy()
    truth = CPTensor(weights, factors)
    from .reconstruct import reconstruct

    x = reconstruct(truth)
    if eta > 0:
        e = rng.standard_normal(x.shape)
        x = x + eta * np.linalg.norm(x) / np.linalg.norm(e) * e
    cp = CPTensor(
        _convert(weights.astype(dt), backend, device),
        [_convert(f.astype(dt), backend, device) for f in factors],
    )
    return LowRankTensor(_convert(x.astype(dt), backend, device), cp, eta, c)


# ----------------------------------------------------------------------------------------
# assertions
# ----------------------------------------------------------------------------------------
def _backend_name(x: Any) -> str:
    if is_torch(x):
        return f"torch ({x.dtype}, {x.device})"
    if isinstance(x, CPTensor):
        return f"CPTensor ({x.dtype}, {x.device})"
    return f"{type(x).__module__.split('.')[0]} ({getattr(x, 'dtype', type(x).__name__)})"


def _default_rtol(*arrays: Any) -> float:
    single = any(
        str(getattr(a, "dtype", "float64")).endswith(("float32", "float16")) for a in arrays
    )
    return 1e-4 if single else 1e-9


def _as_numpy_values(x: Any) -> np.ndarray:
    if isinstance(x, CPTensor):
        from .reconstruct import reconstruct

        x = reconstruct(x)
    if is_array(x) or is_torch(x):
        return np.asarray(to_numpy(x), dtype=np.float64)
    return np.asarray(x, dtype=np.float64)


def assert_allclose(
    actual: Any,
    desired: Any,
    rtol: float | None = None,
    atol: float | None = None,
    *,
    check_backend: bool = False,
    err_msg: str = "",
) -> None:
    """Assert that two arrays (NumPy, torch, scalars, or CPTensors — reconstructed) are
    equal to a tolerance, whatever their backends.

    Defaults: ``rtol`` from the less precise dtype (``1e-4`` for float32, ``1e-9`` for
    float64) and ``atol = rtol · max|desired|`` plus the smallest normal float32 (errors
    relative to the tensor's scale, so near-zero entries do not fail on round-off). With
    ``check_backend=True``, arrays of different backends fail with a message that names
    both.

    Examples
    --------
    >>> import numpy as np
    >>> assert_allclose(np.array([1.0, 2.0]), np.array([1.0, 2.0 + 1e-12]))
    >>> assert_allclose(np.ones(2), np.zeros(2))
    Traceback (most recent call last):
    ...
    AssertionError: ...
    """
    kind_a, kind_d = _backend_name(actual), _backend_name(desired)
    if check_backend and kind_a.split(" ")[0] != kind_d.split(" ")[0]:
        raise AssertionError(
            f"backends differ: actual is {kind_a}, desired is {kind_d} "
            "(pass check_backend=False to compare values across backends)"
        )
    a, d = _as_numpy_values(actual), _as_numpy_values(desired)
    if a.shape != d.shape:
        raise AssertionError(
            f"shapes differ: actual {a.shape} ({kind_a}) vs desired {d.shape} ({kind_d}). {err_msg}"
        )
    rtol = _default_rtol(actual, desired) if rtol is None else rtol
    if atol is None:
        tiny = float(np.finfo(np.float32).tiny)  # round-off below this is underflow
        atol = rtol * (float(np.max(np.abs(d))) if d.size else 0.0) + tiny
    np.testing.assert_allclose(
        a,
        d,
        rtol=rtol,
        atol=atol,
        err_msg=f"actual: {kind_a}; desired: {kind_d}. {err_msg}".strip(),
    )


def assert_cp_equivalent(
    actual: Any,
    desired: Any,
    rtol: float | None = None,
    atol: float = 0.0,
) -> None:
    """Assert that two CP tensors are equal up to permutation, scaling and sign of their
    components.

    Both are normalized (unit-norm columns, norms into the weights), their components are
    matched by the Hungarian algorithm on the congruence ``∏_n |⟨a_n, b_n⟩|``, signs are
    aligned mode by mode, and then, per matched pair, the weights must agree to
    ``rtol · max|λ| + atol`` and every factor column to ``rtol + atol`` (columns have unit
    norm). Components whose weight is negligible in both (below that tolerance) are
    compared by weight only, as their directions are arbitrary. ``rtol`` defaults from the
    dtype (``1e-3`` for float32, ``1e-7`` for float64).

    Accepts :class:`~cptensor.CPTensor` objects or ``(weights, factors)`` pairs of any
    backend (mixed too).

    Examples
    --------
    >>> import numpy as np
    >>> from cptensor import CPTensor
    >>> a = CPTensor(np.array([1.0, 2.0]), [np.eye(2), np.eye(2)])
    >>> b = CPTensor(np.array([4.0, 2.0]), [-np.eye(2)[:, ::-1], -0.5 * np.eye(2)[:, ::-1]])
    >>> assert_cp_equivalent(a, b)
    """
    from scipy.optimize import linear_sum_assignment

    from .algebra import normalize

    a, b = as_cp(actual, "actual"), as_cp(desired, "desired")
    if a.shape != b.shape:
        raise AssertionError(f"shapes differ: actual {a.shape} vs desired {b.shape}")
    if a.rank != b.rank:
        raise AssertionError(f"ranks differ: actual rank {a.rank} vs desired rank {b.rank}")
    if rtol is None:
        single = any(str(t.dtype).endswith(("float32", "float16")) for t in (a, b))
        rtol = 1e-3 if single else 1e-7

    def host(cp: CPTensor) -> tuple[np.ndarray, list[np.ndarray]]:
        n = normalize(cp)
        w = np.asarray(to_numpy(n.weights), dtype=np.float64)
        fs = [np.asarray(to_numpy(f), dtype=np.float64) for f in n.factors]
        return w, fs

    wa, fa = host(a)
    wb, fb = host(b)
    for label, w, fs in (("actual", wa, fa), ("desired", wb, fb)):
        if not (np.all(np.isfinite(w)) and all(np.all(np.isfinite(f)) for f in fs)):
            raise AssertionError(f"{label} holds NaN or infinite values")
    # Congruence of components (R × R); weights break ties among identical directions.
    cong = np.ones((a.rank, b.rank))
    for x, y in zip(fa, fb):
        cong *= np.abs(x.T @ y)
    scale = max(float(np.max(np.abs(wa), initial=0.0)), float(np.max(np.abs(wb), initial=0.0)))
    wdiff = np.abs(np.abs(wa)[:, None] - np.abs(wb)[None, :]) / (scale if scale > 0 else 1.0)
    rows, cols = linear_sum_assignment(-(cong - 1e-3 * wdiff))
    wtol = rtol * scale + atol
    problems = []
    for i, j in zip(rows, cols):
        signs = [1.0 if float(x[:, i] @ y[:, j]) >= 0 else -1.0 for x, y in zip(fa, fb)]
        wb_signed = wb[j] * math.prod(signs)
        if abs(wa[i] - wb_signed) > wtol:
            problems.append(
                f"component {i} of actual (weight {wa[i]:.6g}) matched to component {j} of "
                f"desired (weight {wb_signed:.6g} after sign alignment, congruence "
                f"{cong[i, j]:.6f}): weights differ by {abs(wa[i] - wb_signed):.3g} > {wtol:.3g}"
            )
            continue
        if abs(wa[i]) <= wtol and abs(wb[j]) <= wtol:
            continue  # negligible component: its directions are arbitrary
        for n, (x, y, s) in enumerate(zip(fa, fb, signs)):
            err = float(np.max(np.abs(x[:, i] - s * y[:, j]), initial=0.0))
            if err > rtol + atol:
                problems.append(
                    f"component {i} of actual matched to component {j} of desired "
                    f"(congruence {cong[i, j]:.6f}): normalized factor {n} columns differ "
                    f"by up to {err:.3g} > {rtol + atol:.3g}"
                )
    if problems:
        raise AssertionError(
            "CP tensors are not equivalent up to permutation, scaling and sign:\n  "
            + "\n  ".join(problems)
        )

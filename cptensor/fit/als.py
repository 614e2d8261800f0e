"""CP alternating least squares: dimension-tree MTTKRPs, exact errors, never NaN.

One ALS sweep updates the factors in turn, so each mode needs its MTTKRP with the latest
factors. For a dense tensor the modes are split once into a left block ``0..k-1`` and a
right block ``k..N-1`` (the top of a dimension tree, ``k`` chosen so that the partial
results are smallest). At the start of the sweep one GEMM over ``x`` contracts the right
block away, ``P_L = X ×_{right} KR(A_right)`` of shape ``(R, I_0, …, I_{k-1})``; every
left mode's MTTKRP is finished from ``P_L`` with the *latest* left factors (the right ones
have not changed). After the left block is updated, a second GEMM gives
``P_R = X ×_{left} KR(A_left)`` and the right modes are finished from it. So a sweep
costs two passes over ``x`` whatever its order (TensorLy's ``parafac`` forms a full
Khatri–Rao product and unfolds ``x`` once per mode), and nothing else in it reads ``x``:
within a block the same split is applied again to the (much smaller) partial result
(:meth:`_Dense.tree`), and the normal equations and the fit only touch ``R × R`` and
``I_n × R`` arrays. ``benchmarks fit:bound`` times sweeps against bare GEMM pairs.

The fit is tracked with the cheap formula ``‖X‖² + ‖M‖² − 2⟨X, M⟩`` accumulated in float64
(``⟨X, M⟩`` from the last mode's MTTKRP, ``‖M‖²`` from float64 Gram matrices). That
formula cancels catastrophically when the fit is good, so once its relative error²
drops below ``1000·eps`` of the working dtype the residual is computed directly
(reconstructed block by block and subtracted), and the reported ``rel_error`` is always
the direct one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np

from .. import init as _init
from .._backend import (
    Array,
    abs2,
    conj,
    contiguous,
    float64_of,
    is_complex,
    is_complex_dtype,
    is_numpy,
    is_torch,
    namespace,
    numpy_dtype,
    scalar,
    shape_tuple,
)
from ..algebra import arrange, fix_signs
from ..cp import CPTensor
from ..errors import CPTensorError, CPTensorTypeError
from ..keywords import tensorly_keywords
from ..operator import is_operator
from ..products import _best_split, _contract_rank_first, _khatri_rao_t, _matmul
from ._common import (
    check_callback,
    check_fixed_modes,
    check_int,
    check_nonneg_float,
    check_nonnegative,
    check_tensor,
    coerce_start,
    eps_of,
    magnitude_scale,
    norm_within_scale,
    prepare_mask,
    progress_bar,
    reduce_elements,
    rescaled,
    resolve_start,
    scratch,
    sum_squares64,
    sum_squares_chunk,
)
from ._solve import SolveLog, solve_normal
from .result import CPFit, FitState

__all__ = ["fit_als"]

_INITS = ("svd", "random", "orthogonal")


def _f64(xp: Any, a: Array) -> Array:
    """``a`` in float64 (complex128 for complex ``a``) on its own device: ``a`` itself (no
    copy) when it already is, else :func:`~cptensor._backend.float64_of` (float32 on MPS,
    which has no float64)."""
    if is_complex(a):
        return float64_of(xp, a) if a.dtype == xp.complex64 else a
    if is_torch(a):
        import torch

        return a if a.dtype == torch.float64 else float64_of(xp, a)
    return a if a.dtype == xp.float64 else float64_of(xp, a)


def _observed_mean(xp: Any, masked: Array, x_obs: Array) -> float | complex:
    """The mean of the observed entries (``x_obs`` is zero where ``masked`` is False)."""
    n_obs = int(xp.sum(xp.astype(masked, xp.int64)))
    total = xp.sum(_f64(xp, x_obs))
    if is_complex(total):
        return complex(total.item() if is_torch(total) else total) / n_obs
    return float(total) / n_obs


# -- engines: where the MTTKRPs and residuals come from -----------------------------------


class _Dense:
    """A dense tensor viewed as ``(left, right)`` for the dimension tree of an ALS sweep.

    Both partial contractions are kept rank first, ``(R, I_a, …, I_b)``: every step below
    the two GEMMs over ``x`` is then a batched row-vector × matrix product on contiguous
    ``R`` slices (:func:`_contract_trailing`, :func:`_contract_leading`).
    """

    def __init__(self, x: Array, shape: tuple[int, ...]) -> None:
        self.xp = namespace(x)
        self.shape = shape
        self.k = _best_split(shape)
        self.left = math.prod(shape[: self.k])
        self.right = math.prod(shape[self.k :])
        # The operand order of the first GEMM: OpenBLAS's sgemm is fastest on
        # ``X @ KR`` (rank last, transposed afterwards: a copy of only ``left × R``
        # numbers), its dgemm and torch's CPU GEMMs on ``KRᵀ @ Xᵀ`` (rank first), by up to
        # 2x either way on the 3- to 5-way shapes of ``benchmarks fit:bound``. Only the
        # speed depends on it (the two orders agree to round-off).
        self.left_rank_last = is_numpy(x) and x.dtype == np.float32
        self.set_x(x)
        self.cache: Array | None = None  # P_L valid for the current right factors

    def set_x(self, x: Array) -> None:
        self.flat = self.xp.reshape(x, (self.left, self.right))
        self.cache = None

    def partial_left(self, factors: Sequence[Array]) -> Array:
        """``X ×_{right} KR(A_right)``, rank first: ``(R, I_0, …, I_{k-1})`` (one GEMM)."""
        krt = _khatri_rao_t(factors[self.k :], None, factors[0])
        if self.left_rank_last:
            p = contiguous((self.flat @ krt.T).T)
        else:
            p = _matmul(krt, self.flat.T)
        return self.xp.reshape(p, (int(krt.shape[0]), *self.shape[: self.k]))

    def partial_right(self, factors: Sequence[Array]) -> Array:
        """``X ×_{left} KR(A_left)``, rank first: ``(R, I_k, …, I_{N-1})`` (one GEMM,
        ``KR(A_left)ᵀ @ X`` with ``x`` untransposed: up to twice as fast in OpenBLAS as
        ``Xᵀ @ KR(A_left)``, which makes BLAS walk ``x`` across its rows)."""
        klt = _khatri_rao_t(factors[: self.k], None, factors[0])
        p = _matmul(klt, self.flat)
        return self.xp.reshape(p, (int(klt.shape[0]), *self.shape[self.k :]))

    def finish_left(self, p: Array, mats: Sequence[Array], mode: int) -> Array:
        """The MTTKRP of left mode ``mode`` from :meth:`partial_left`'s ``p``."""
        return _contract_rank_first(p, mats[: self.k], mode)

    def finish_right(self, p: Array, mats: Sequence[Array], mode: int) -> Array:
        """The MTTKRP of right mode ``mode`` (``>= k``) from :meth:`partial_right`'s ``p``."""
        return _contract_rank_first(p, mats[self.k :], mode - self.k)

    def tree(
        self,
        p: Array,
        lo: int,
        free: Collection[int],
        mats: Callable[[], Sequence[Array]],
        update: Callable[[int, Array], None],
    ) -> None:
        """Update the free modes ``lo, lo+1, …`` of the rank-first partial ``p`` in order.

        ``p`` is ``(R, I_lo, …, I_hi)``: ``x`` with every other mode contracted away (with
        the latest factors). The modes are split in two; the first half's partial
        contracts the second half away with its current factors, and, once the first half
        is updated, the second half's partial contracts the first half with the new ones
        (recursively: each level reads its partial twice, so the whole tree costs about two
        passes over the partials of the top level). ``mats()`` gives the current factors
        to contract with; ``update(mode, m)`` stores mode ``mode``'s update from its
        MTTKRP ``m`` (``(I_mode, R)``).

        For torch CPU data the tree runs on NumPy views of ``p`` and of the factors: its
        batched row-vector × matrix products are about 3x as fast in NumPy as in torch.
        """
        if is_torch(p) and _on_host(p):
            p, mats = p.numpy(force=True), _numpy_views(mats)
        dims = shape_tuple(p)[1:]
        hi = lo + len(dims)
        if not any(lo <= n < hi for n in free):
            return
        rank = int(p.shape[0])
        if len(dims) == 1:
            update(lo, p.T)
            return
        j = _best_split(dims)
        a, b = math.prod(dims[:j]), math.prod(dims[j:])
        p3 = p.reshape((rank, a, b))
        if any(lo <= n < lo + j for n in free):
            ms = mats()
            kr = _khatri_rao_t(ms[lo + j : hi], None, ms[lo])
            q = _contract_trailing(p3, kr)
            self.tree(q.reshape((rank, *dims[:j])), lo, free, mats, update)
        if any(lo + j <= n < hi for n in free):
            ms = mats()
            kr = _khatri_rao_t(ms[lo : lo + j], None, ms[lo])
            q = _contract_leading(p3, kr)
            self.tree(q.reshape((rank, *dims[j:])), lo + j, free, mats, update)

    def reconstruct_flat(self, factors: Sequence[Array], lam: Array) -> Array:
        klt = _khatri_rao_t(factors[: self.k], lam, factors[0])
        krt = _khatri_rao_t(factors[self.k :], None, factors[0])
        return klt.T @ krt

    def residual_sq(self, factors: Sequence[Array], lam: Array) -> float:
        """``‖X − M‖²`` directly, reconstructed in row blocks, summed in float64."""
        xp = self.xp
        kl = _khatri_rao_t(factors[: self.k], lam, factors[0]).T
        krt = _khatri_rao_t(factors[self.k :], None, factors[0])
        step = max(1, reduce_elements(self.flat) // max(1, self.right))
        total: Any = 0.0
        for start in range(0, self.left, step):
            diff = _minus_product(self.flat[start : start + step], kl[start : start + step], krt)
            total = total + sum_squares_chunk(xp, diff)
        return float(total)


def _minus_product(x: Array, a: Array, b: Array) -> Array:
    """``x − a @ b`` in one pass over the product (torch's ``addmm`` fuses the subtraction
    into the GEMM; NumPy overwrites the product with the difference). For data in CPU
    memory the result is a NumPy view of the thread's reused ``"residual"`` scratch array
    (:func:`~cptensor.fit._common.scratch`), valid until the next call."""
    if _on_host(x):
        out = scratch("residual", (int(a.shape[0]), int(b.shape[1])), numpy_dtype(x.dtype))
        if is_torch(x):
            import torch

            torch.addmm(x, a, b, alpha=-1, out=torch.from_numpy(out))
            return out
        np.matmul(a, b, out=out)
        return np.subtract(x, out, out=out)
    if is_torch(x):
        import torch

        return torch.addmm(x, a, b, alpha=-1)
    return x - a @ b


def _numpy_views(mats: Callable[[], Sequence[Array]]) -> Callable[[], list[np.ndarray]]:
    """``mats`` giving NumPy views of its torch CPU tensors (conjugation resolved)."""

    def views() -> list[np.ndarray]:
        return [m.numpy(force=True) for m in mats()]

    return views


def _contract_trailing(p: Array, kr: Array) -> Array:
    """``q[r, a] = Σ_b p[r, a, b] kr[r, b]``: ``(R, A, B)``, ``(R, B)`` → ``(R, A)``.

    As ``R`` row-vector × matrix products, ``kr[r] @ p[r]ᵀ``: faster in NumPy and torch
    than ``einsum`` or the matrix × column-vector form (a batched GEMV) on these shapes.
    """
    return (kr[:, None, :] @ p.mT)[:, 0, :]


def _contract_leading(p: Array, kr: Array) -> Array:
    """``q[r, b] = Σ_a p[r, a, b] kr[r, a]``: ``(R, A, B)``, ``(R, A)`` → ``(R, B)``."""
    return (kr[:, None, :] @ p)[:, 0, :]


# -- the fitting state --------------------------------------------------------------------


class _State:
    """Factors (free ones normalized), weights and float64 Gram matrices.

    With ``normalized=False`` (TensorLy's ``l2_reg`` form) the factors keep their scale and
    the weights stay as given (ones). For complex data the Gram matrices are
    ``A_nᵀ conj(A_n) = conj(A_nᴴ A_n)``: their Hadamard product over the other modes is the
    matrix of the normal equations ``A_n conj(V) = X_(n) conj(KR)``, and MTTKRPs are taken
    with the conjugated factors (:meth:`mats`).

    Besides ``factors`` (the working dtype and backend, for the products with ``x``) the
    state keeps ``f64``, each factor in float64 as rounded to the working dtype, and
    ``lam64``, ``grams``: the small ``R × R`` and ``I_n × R`` algebra of an update runs on
    these. For data in CPU memory (NumPy, torch CPU) they are NumPy arrays (zero-copy views
    of torch tensors where the dtype allows): there a sweep's small operations, a few
    microseconds each in NumPy and LAPACK, cost several times more as torch or array-API
    calls, which are most of a sweep's time on small tensors.
    """

    def __init__(
        self, factors: list[Array], lam: Array, free: Sequence[int], normalized: bool = True
    ) -> None:
        self.xp = namespace(factors[0])
        self.host = _on_host(factors[0])
        self.sp = np if self.host else self.xp  # the namespace of the float64 arrays
        self.factors = list(factors)
        self.free = list(free)
        self.dtype = factors[0].dtype
        self.normalized = normalized
        self.complex = is_complex(factors[0])
        self.f64 = [self.small64(f) for f in self.factors]
        lam64 = self.small64(lam)
        for n in self.free if normalized else ():  # normalize free factors, norms into λ
            a64 = self.f64[n]
            norms = _column_norms(self.sp, a64)
            lam64 = lam64 * norms
            self._store(n, a64 / self.sp.where(norms > 0, norms, 1.0))
        self.lam64 = lam64
        self.grams = [a64.T @ conj(a64) for a64 in self.f64]

    def small64(self, a: Array) -> Array:
        """``a`` (a factor, the weights or an MTTKRP) as a float64 (complex128) array of
        the small algebra: no copy when it already is one."""
        if self.host:
            return _host64(a)
        return _f64(self.xp, a)

    def _store(self, mode: int, a64: Array) -> None:
        """Set factor ``mode`` to ``a64`` rounded to the working dtype."""
        if self.host:
            self.factors[mode], self.f64[mode] = _host_factor(a64, self.factors[mode])
        else:
            self.factors[mode] = self.xp.astype(a64, self.dtype)
            self.f64[mode] = _f64(self.xp, self.factors[mode])

    def mats(self) -> list[Array]:
        """The factors to take MTTKRPs with: conjugated for complex data."""
        return [conj(f) for f in self.factors] if self.complex else self.factors

    @property
    def lam(self) -> Array:
        if self.host:
            return _host_factor(self.lam64, self.factors[0])[0]
        return self.xp.astype(self.lam64, self.dtype)

    def copy(self) -> _State:
        new = object.__new__(_State)
        new.__dict__.update(self.__dict__)
        new.factors, new.f64, new.grams = list(self.factors), list(self.f64), list(self.grams)
        return new

    def v_except(self, mode: int) -> Array:
        out = None
        for n, g in enumerate(self.grams):
            if n != mode:
                out = g if out is None else out * g
        return out

    def model_norm_sq(self) -> float:
        v = self.grams[0]
        for g in self.grams[1:]:
            v = v * g
        if not self.complex:
            return float(self.lam64 @ (v @ self.lam64))
        lam = self.lam64 if self.host else self.xp.astype(self.lam64, v.dtype)  # no promotion
        return float(self.sp.real(lam @ (v @ conj(lam))))

    def inner(self, mode: int, m64: Array) -> float:
        """``Re ⟨X, M⟩`` from mode ``mode``'s float64 MTTKRP ``m64`` (taken with the
        conjugated factors for complex data) and the current model."""
        if self.complex:
            a64 = conj(self.f64[mode])
            return float(self.sp.real(self.sp.sum(m64 * a64 * conj(self.lam64))))
        return float(self.sp.sum(m64 * self.f64[mode] * self.lam64))

    def set_factor(self, mode: int, b64: Array) -> None:
        """Store an unnormalized float64 update: normalize, norms become the weights (kept
        as it is, weights untouched, when the state is not normalized)."""
        if self.normalized:
            norms = _column_norms(self.sp, b64)
            b64 = b64 / self.sp.where(norms > 0, norms, 1.0)
            self.lam64 = norms
        self._store(mode, b64)
        a64 = self.f64[mode]
        self.grams[mode] = a64.T @ conj(a64)

    def cp(self) -> CPTensor:
        return CPTensor(self.lam, self.factors)


def _column_norms(sp: Any, a: Array) -> Array:
    """The Euclidean norms of the columns of ``a`` (``sp``: its namespace; an ``einsum``
    for NumPy, which is twice as fast as a sum over the first axis)."""
    if sp is np:
        return np.sqrt(np.einsum("ir,ir->r", conj(a), a).real)
    return sp.sqrt(sp.sum(abs2(a), axis=0))


def _on_host(a: Array) -> bool:
    """True for an array in CPU memory that NumPy can view (NumPy, torch CPU)."""
    return is_numpy(a) or (is_torch(a) and a.device.type == "cpu")


def _host64(a: Array) -> np.ndarray:
    """A CPU array as a float64 (complex128) NumPy array: a view when it is one already."""
    if is_torch(a):
        a = a.numpy(force=True)  # no copy for a CPU tensor (resolves lazy conjugation)
    return a.astype(np.complex128 if a.dtype.kind == "c" else np.float64, copy=False)


def _host_factor(a64: np.ndarray, like: Array) -> tuple[Array, np.ndarray]:
    """``a64`` rounded to ``like``'s dtype, as ``like``'s kind of array (a torch tensor
    sharing the NumPy array's memory), and the rounded values in float64."""
    if is_torch(like):
        import torch

        a = a64.astype(numpy_dtype(like.dtype), copy=False)
        return torch.from_numpy(a), _host64(a)
    a = a64.astype(like.dtype, copy=False)
    return a, _host64(a)


def _hals(m64: Array, v: Array, b64: Array, ridge: float) -> Array:
    """One HALS pass: exact nonnegative least squares column by column (in float64)."""
    xp = namespace(m64)
    rank = int(v.shape[0])
    cols = [b64[:, r] for r in range(rank)]
    for r in range(rank):
        vrr = float(v[r, r]) + ridge
        if vrr <= 0:
            continue
        bv = None
        for s in range(rank):
            term = cols[s] * v[s, r]
            bv = term if bv is None else bv + term
        new = cols[r] + (m64[:, r] - bv - ridge * cols[r]) / vrr
        cols[r] = xp.clip(new, 0.0, None)
    return xp.stack(cols, axis=1)


# -- the public entry point ---------------------------------------------------------------


@tensorly_keywords("fit_als")
def fit_als(
    x: Any,
    rank: int | CPTensor,
    *,
    init: str | CPTensor = "svd",
    seed: int | np.random.Generator | None = None,
    max_iter: int = 500,
    tol: float = 1e-8,
    ridge: float = 0.0,
    l2_reg: float = 0.0,
    mask: Array | None = None,
    fixed_modes: Sequence[int] = (),
    nonnegative: bool | Collection[int] = False,
    line_search: bool = True,
    callback: Callable[[FitState], Any] | None = None,
    progress: bool = False,
) -> CPFit:
    """Fit a rank-``rank`` CP model to ``x`` by alternating least squares.

    Parameters
    ----------
    x:
        A dense NumPy array or torch tensor (float32, float64, complex64 or complex128,
        any device, at least 2 modes), or a real
        :class:`~cptensor.operator.TensorOperator` (fitted through its ``mttkrp``,
        ``norm`` and optional ``residual_norm``). All work happens on ``x``'s
        backend and device, in its dtype; scalar bookkeeping is in float64.
    rank:
        The number of components ``R >= 1``, or a :class:`~cptensor.CPTensor` to start from
        (its rank is used and ``init`` is ignored).
    init:
        ``"svd"`` (leading singular vectors of each unfolding, :func:`cptensor.init.svd`),
        ``"random"``, ``"orthogonal"`` or a CPTensor. For an operator, ``"svd"`` uses the
        operator's ``gram(mode)`` method when it has one and falls back to ``"random"``
        otherwise (recorded in ``info["init"]``). With a mask, ``"svd"`` is computed on
        ``x`` with missing entries set to the mean of the observed ones.
    seed:
        Seed (int or ``numpy.random.Generator``) for random initialisation and random SVD
        columns; the same seed gives the same result.
    max_iter:
        Maximum number of ALS sweeps.
    tol:
        Stop when the relative change of the fit between sweeps is at most ``tol``
        (floored at the working dtype's epsilon, which is all a float32 fit can resolve).
        ``tol=0`` runs exactly ``max_iter`` sweeps unless the fit is exact.
    ridge:
        Tikhonov term: ``ridge·I`` is added to every normal-equation matrix (0 = plain
        ALS). The factors of the other modes have unit-norm columns when mode ``n`` is
        updated (their norms live in the weights), so each update minimises
        ``‖X − [[B_n; others]]‖² + ridge·‖B_n‖²`` over ``B_n = A_n·diag(λ)``, the factor
        being updated with the weights folded in: the penalty falls on the whole scale
        of the model, on one factor at a time. Independently, numerically singular normal
        equations get a tiny ridge or a pseudo-inverse, reported in ``stop_reason``.
    l2_reg:
        TensorLy's ``parafac(l2_reg=...)``: minimise
        ``‖X − [[A_1, …, A_N]]‖² + l2_reg·Σ_n ‖A_n‖²`` with unnormalized factors (the
        start's weights folded into its last free factor, the weights then kept at one),
        so each update solves ``A_n (V + l2_reg·I) = M`` with ``V`` from the other
        factors at their own scale. The same start gives TensorLy's iterates (with
        ``line_search=False``). Give either ``ridge`` or ``l2_reg``, not both.
    mask:
        Boolean array of ``x``'s shape and backend, True = observed. Fitting uses
        EM-style imputation ALS: before each sweep the missing entries are filled with
        the current model, which never increases the error on the observed entries.
        ``rel_error`` is then ``‖mask·(X − M)‖ / ‖mask·X‖``. When ``mask`` is None, NaNs in
        ``x`` are treated as missing (with a warning). Not supported for operators.
    fixed_modes:
        Modes whose factors are kept as given by the start (never updated).
    nonnegative:
        ``True``: keep all factors >= 0 using HALS (hierarchical ALS: each column is the
        exact nonnegative least-squares update given the others, one pass per mode and
        sweep); the start is made nonnegative by taking absolute values. A collection
        of mode indices (TensorLy's ``nn_modes``, e.g. ``nonnegative=(0, 2)``): HALS for
        those modes only, unconstrained least squares for the others. ``False`` or an
        empty collection: no constraint. Not available for complex data.
    line_search:
        Bro's extrapolation: after each sweep from the third on, try
        ``A_prev + s·(A_new − A_prev)`` with ``s = iteration^(1/p)`` (``p = 3``, raised after
        repeated failures); it is accepted only when it lowers the loss, evaluated with
        the same pass over ``x`` that the next sweep reuses. Skipped once the error is at
        round-off level. Counts are in ``info["line_search"]``.
    callback:
        Called after every sweep with a :class:`~cptensor.fit.result.FitState`; returning
        True stops the fit (``stop_reason`` says so).
    progress:
        Show a ``tqdm`` progress bar with the current fit (needs ``tqdm``).

    Returns
    -------
    CPFit
        The normalized, arranged, sign-fixed model with its exact relative error.

    Raises
    ------
    TypeError, ValueError
        For a bad ``rank``, ``mask`` of the wrong shape or dtype, all entries masked,
        ``fixed_modes`` naming every mode, non-finite values where observed, a mask with an
        operator, or arguments of the wrong type.

    Examples
    --------
    >>> import numpy as np
    >>> import cptensor as ct
    >>> from cptensor.fit import fit_als
    >>> truth = ct.init.random((10, 11, 12), 3, seed=1)
    >>> x = ct.reconstruct(truth)
    >>> result = fit_als(x, 3, seed=0)
    >>> result.rel_error < 1e-6, result.cp.rank
    (True, 3)
    """
    t0 = time.perf_counter()
    rank, init = coerce_start(rank, init)
    op = is_operator(x)
    shape, dtype = check_tensor(x, complex_ok=True)
    ndim = len(shape)
    start, R = resolve_start(x, shape, rank, init, _INITS)
    if isinstance(rank, CPTensor) and isinstance(init, CPTensor):
        raise CPTensorError("give the start either as rank= or as init=, not both")
    max_iter = check_int(max_iter, "max_iter", 0)
    tol = check_nonneg_float(tol, "tol")
    ridge = check_nonneg_float(ridge, "ridge")
    l2_reg = check_nonneg_float(l2_reg, "l2_reg")
    if ridge and l2_reg:
        raise CPTensorError(
            f"give ridge= or l2_reg=, not both (got ridge={ridge:g}, l2_reg={l2_reg:g}): "
            "ridge penalises the updated factor with the others normalized, l2_reg the sum "
            "of squares of all unnormalized factors (TensorLy's form)"
        )
    fixed = check_fixed_modes(fixed_modes, ndim)
    callback = check_callback(callback)
    nn = check_nonnegative(nonnegative, ndim)
    if nn and is_complex_dtype(dtype):
        raise CPTensorTypeError(
            f"nonnegative={nonnegative!r} is not defined for complex data (x has dtype "
            f"{dtype}): complex numbers have no order; fit without nonnegative="
        )
    if not isinstance(line_search, (bool, np.bool_)):
        raise CPTensorTypeError(f"line_search must be a bool, got {type(line_search).__name__}")
    info: dict[str, Any] = {}

    if op:
        if mask is not None:
            raise CPTensorTypeError(
                f"mask is not supported when x is a TensorOperator ({type(x).__name__}); "
                "densify it (x.to_dense()) to fit with missing data"
            )
        masked = None
    else:
        x = contiguous(x)
        if getattr(x, "requires_grad", False):  # fitting is not differentiated: no graph
            x = x.detach()
        # A finite sum of squares proves every entry finite: prepare_mask's read of x is
        # then not needed.
        norm_x2 = sum_squares64(namespace(x), x) if mask is None else math.inf
        masked = None if math.isfinite(norm_x2) else prepare_mask(x, mask)
    eps = eps_of(dtype)

    # -- data norms -------------------------------------------------------------------
    if op:
        nx = x.norm()
        norm_x2 = (float(nx) if isinstance(nx, (int, float)) else scalar(nx)) ** 2
        xp_x = None
    else:
        xp_x = namespace(x)
        x_obs = x if masked is None else xp_x.where(masked, x, xp_x.zeros_like(x))
        # l2_reg's objective is not scale-invariant (rescaling x would change the fit)
        if l2_reg or (masked is None and norm_within_scale(norm_x2, math.prod(shape))):
            s = 1.0
        else:
            s = magnitude_scale(xp_x, x_obs)
        if s != 1.0:  # tiny or huge data: fit an exact power-of-two rescaling of it
            return rescaled(
                fit_als,
                x,
                s,
                rank,
                init,
                callback,
                seed=seed,
                max_iter=max_iter,
                tol=tol,
                ridge=ridge,
                mask=masked,
                fixed_modes=fixed,
                nonnegative=nonnegative,
                line_search=line_search,
                progress=progress,
            )
        if masked is not None or not math.isfinite(norm_x2):
            norm_x2 = sum_squares64(xp_x, x_obs)

    # -- start ------------------------------------------------------------------------
    if start is None:
        start = _make_start(x, x_obs if not op else None, masked, shape, R, init, seed, info)
    else:
        info["init"] = "given CPTensor"
    factors = list(start.factors)
    lam = start.weights
    if nn:
        xps = start.xp
        factors = [xps.abs(f) if n in nn else f for n, f in enumerate(factors)]
        lam = xps.abs(lam)
    free = [n for n in range(ndim) if n not in fixed]
    if l2_reg:  # TensorLy's form: unit weights, the start's weights in the last free factor
        factors[free[-1]] = factors[free[-1]] * lam
        lam = start.xp.ones_like(lam)
    penalty = l2_reg or ridge
    state = _State(factors, lam, free, normalized=not l2_reg)
    xp = state.xp
    log = SolveLog()

    if norm_x2 == 0.0:
        zero = CPTensor(xp.zeros_like(state.lam), state.factors)
        return CPFit(
            cp=fix_signs(arrange(zero)),
            fit=1.0,
            rel_error=0.0,
            history=(),
            n_iter=0,
            converged=True,
            stop_reason="x is all zeros: the zero CP tensor (all weights 0) fits it exactly",
            seconds=time.perf_counter() - t0,
            info={**info, "rel_error_method": "x is zero"},
            method="als",
        )

    dense = None if op else _Dense(x_obs, shape)
    has_residual = op and hasattr(x, "residual_norm")
    roundoff_sq = 1e3 * eps  # relative error² below which the cheap formula is not trusted
    exact_mode = masked is not None
    ls_tried = ls_accepted = 0
    acc_pow, acc_fail = 3.0, 0
    history: list[float] = []
    stop_reason = f"max_iter={max_iter} reached without convergence"
    converged = False
    err2 = math.inf
    err_exact = masked is not None
    # tol=0: run max_iter sweeps (fixed-count benchmarks rely on it); otherwise a tolerance
    # below round-off means "until the fit stops changing"
    tol_eff = max(tol, eps) if tol > 0 else None
    bar = progress_bar(progress, max_iter, "ALS")
    rec_flat = None
    if masked is not None:
        mask_flat = xp.reshape(masked, (dense.left, dense.right))
        obs_flat = dense.flat
        # first sweep: missing entries at the mean of the observed ones
        mean = _observed_mean(xp, masked, x_obs)
        fill = xp.where(mask_flat, obs_flat, xp.full_like(obs_flat, mean))

    def masked_loss(st: _State) -> tuple[float, Array]:
        rec = dense.reconstruct_flat(st.factors, st.lam)
        diff = xp.where(mask_flat, obs_flat - rec, xp.zeros_like(rec))
        return sum_squares64(xp, diff), rec

    def sweep(st: _State) -> tuple[int, Array]:
        """One ALS sweep in place; returns (last updated mode, its float64 MTTKRP)."""
        last: tuple[int, Array] | None = None

        def update(n: int, m: Array) -> None:
            """Mode ``n``'s update from its MTTKRP ``m`` (converted to float64 once)."""
            nonlocal last
            m64 = st.small64(m)
            v = st.v_except(n)
            if n in nn:
                b64 = _hals(m64, v, st.f64[n] * st.lam64, penalty)
            else:
                b64 = solve_normal(m64, v, log, n, penalty)
            st.set_factor(n, b64)
            last = (n, m64)

        if op:
            for n in st.free:
                update(n, x.mttkrp(st.factors, n))
            return last
        k = dense.k
        if any(n < k for n in st.free):
            p = dense.cache if dense.cache is not None else dense.partial_left(st.mats())
            dense.tree(p, 0, st.free, st.mats, update)
        dense.cache = None
        if any(n >= k for n in st.free):
            dense.tree(dense.partial_right(st.mats()), k, st.free, st.mats, update)
        return last

    def cheap_err2(st: _State, inner: float) -> float:
        return max(norm_x2 + st.model_norm_sq() - 2.0 * inner, 0.0)

    def inner_from_mttkrp(st: _State, mode: int, m: Array) -> float:
        return st.inner(mode, st.small64(m))

    def exact_err2(st: _State) -> tuple[float, bool]:
        if masked is not None:
            return masked_loss(st)[0], True
        if op:
            if has_residual:
                return float(x.residual_norm(st.cp())) ** 2, True
            return math.nan, False
        return dense.residual_sq(st.factors, st.lam), True

    if nn and max_iter:
        # A start far from the data's scale makes the first HALS pass zero whole columns
        # (the other columns' overshoot dominates), and a zero column never comes back:
        # start HALS from the least-squares scale of the start, λ·⟨X, M⟩/‖M‖².
        mats0 = state.mats()
        if op:
            m0 = x.mttkrp(mats0, 0)
        else:
            dense.cache = dense.partial_left(mats0)  # reused by the first sweep
            m0 = dense.finish_left(dense.cache, mats0, 0)
        ip, mn = inner_from_mttkrp(state, 0, m0), state.model_norm_sq()
        if ip > 0 and mn > 0:
            state.lam64 = state.lam64 * (ip / mn)

    it = 0
    prev: _State | None = None
    try:
        for it in range(1, max_iter + 1):
            before = state.copy()
            if masked is not None:
                dense.set_x(fill)
            mode_last, m_last = sweep(state)
            switched = False
            if masked is not None:
                err2, rec_flat = masked_loss(state)
                err_exact = True
            else:
                err2 = cheap_err2(state, inner_from_mttkrp(state, mode_last, m_last))
                err_exact = False
                if not exact_mode and err2 < roundoff_sq * norm_x2:
                    exact_mode, switched = True, True
                if exact_mode:
                    e2, ok = exact_err2(state)
                    if ok:
                        err2, err_exact = e2, True
            # Bro's line search between the start of the sweep and its end.
            if line_search and prev is not None and (masked is not None or not exact_mode):
                ls_tried += 1
                step = it ** (1.0 / acc_pow)
                cand = _extrapolate(before, state, step, nn)
                if masked is not None:
                    e2c, rec_c = masked_loss(cand)
                    margin = 0.0
                elif op:
                    m0 = x.mttkrp(cand.factors, 0)
                    e2c = cheap_err2(cand, inner_from_mttkrp(cand, 0, m0))
                    margin = 10 * eps * norm_x2
                else:
                    mats_c = cand.mats()
                    p_c = dense.partial_left(mats_c)
                    m0 = dense.finish_left(p_c, mats_c, 0)
                    e2c = cheap_err2(cand, inner_from_mttkrp(cand, 0, m0))
                    margin = 10 * eps * norm_x2
                if e2c < err2 - margin:
                    ls_accepted += 1
                    acc_fail = 0
                    state, err2 = cand, e2c
                    if masked is not None:
                        rec_flat = rec_c
                    elif not op:
                        dense.cache = p_c
                else:
                    acc_fail += 1
                    if acc_fail >= 4:
                        acc_pow, acc_fail = acc_pow + 1.0, 0
            prev = before
            if masked is not None:
                fill = xp.where(mask_flat, obs_flat, rec_flat)
            rel = math.sqrt(err2 / norm_x2)
            fit = 1.0 - rel
            last_fit = history[-1] if history else None
            history.append(fit)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(fit=f"{fit:.8f}", refresh=False)
            if callback is not None:
                fs = FitState(iteration=it, fit=fit, rel_error=rel, exact=err_exact, cp=state.cp())
                if callback(fs) is True:
                    stop_reason = f"stopped by callback at iteration {it}"
                    break
            if err_exact and rel <= 10 * eps:
                stop_reason = f"converged: exact fit (relative error {rel:.2e} at round-off level)"
                converged = True
                break
            if last_fit is not None and not switched and tol_eff is not None:
                if abs(fit - last_fit) <= tol_eff * max(abs(last_fit), 1e-300):
                    stop_reason = (
                        f"converged: relative change of the fit below tol={tol:g} "
                        f"after {it} iterations"
                    )
                    converged = True
                    break
    finally:
        if bar is not None:
            bar.close()

    # -- the reported error is always computed directly (where possible) ---------------
    e2, ok = exact_err2(state)
    if ok:
        err2 = e2
        method = "direct residual" + (" on observed entries" if masked is not None else "")
        if op:
            method = "operator residual_norm"
    else:
        if math.isinf(err2):  # max_iter == 0: nothing computed yet
            m = x.mttkrp(state.factors, 0)
            err2 = cheap_err2(state, inner_from_mttkrp(state, 0, m))
        method = (
            "float64 cheap formula ‖X‖²+‖M‖²−2⟨X,M⟩ (operator has no residual_norm): "
            f"absolute error² accurate to about {10 * eps:.1e}·‖X‖²"
        )
    rel = math.sqrt(err2 / norm_x2)
    notes = log.notes()
    if notes:
        stop_reason = stop_reason + "; " + "; ".join(notes)
    info.update(
        rel_error_method=method,
        line_search={"tried": ls_tried, "accepted": ls_accepted},
        solver=notes,
    )
    if masked is not None:
        info["missing"] = "EM imputation ALS; rel_error over observed entries"
    cp = _arranged(state.cp())
    return CPFit(
        cp=cp,
        fit=1.0 - rel,
        rel_error=rel,
        history=tuple(history),
        n_iter=it if max_iter else 0,
        converged=converged,
        stop_reason=stop_reason,
        seconds=time.perf_counter() - t0,
        info=info,
        method="als",
    )


def _extrapolate(before: _State, after: _State, step: float, nn: Collection[int] = ()) -> _State:
    """``before + step·(after − before)`` on the free factors (weights folded into the last
    free mode), renormalized (unless the state is not normalized); modes in ``nn`` are
    clipped at zero."""
    xp = after.xp
    cand = after.copy()
    last = after.free[-1]
    lam = xp.ones_like(after.lam)
    for n in after.free:
        a0, a1 = before.factors[n], after.factors[n]
        if n == last:
            a0 = a0 * before.lam
            a1 = a1 * after.lam
        c = a0 + step * (a1 - a0)
        if n in nn:
            c = xp.clip(c, 0.0, None)
        cand.factors[n] = c
    return _State(cand.factors, lam, after.free, after.normalized)


def _arranged(cp: CPTensor) -> CPTensor:
    """``fix_signs(arrange(cp))``; for torch CPU tensors computed on NumPy views (a few
    dozen operations on small arrays, each several times cheaper in NumPy than in torch)
    and handed back as torch tensors."""
    if not (is_torch(cp.weights) and _on_host(cp.weights)):
        return fix_signs(arrange(cp))
    import torch

    views = CPTensor(cp.weights.numpy(force=True), [f.numpy(force=True) for f in cp.factors])
    out = fix_signs(arrange(views))
    return CPTensor(torch.from_numpy(out.weights), [torch.from_numpy(f) for f in out.factors])


def _make_start(
    x: Any,
    x_obs: Array | None,
    masked: Array | None,
    shape: tuple[int, ...],
    rank: int,
    init: str,
    seed: Any,
    info: dict[str, Any],
) -> CPTensor:
    """The initial CPTensor for ``init`` in ``x``'s backend, device and dtype."""
    if is_operator(x):
        like = _operator_like(x)
        if init == "svd" and hasattr(x, "gram"):
            info["init"] = "svd (operator gram)"
            return _init.svd(x, rank, seed=seed)
        if init == "svd":
            info["init"] = "random (operator has no gram(mode); svd not available)"
            init = "random"
        else:
            info["init"] = init
        maker = _init.random if init == "random" else _init.orthogonal
        return maker(shape, rank, like=like, seed=seed)
    info["init"] = init
    if init == "svd":
        src = x
        if masked is not None:
            xp = namespace(x)
            mean = _observed_mean(xp, masked, x_obs)
            src = xp.where(masked, x_obs, xp.full_like(x_obs, mean))
        return _init.svd(src, rank, seed=seed)
    maker = _init.random if init == "random" else _init.orthogonal
    return maker(shape, rank, like=x, seed=seed)


def _operator_like(x: Any) -> Array:
    """A tiny array of the operator's backend, device and dtype (for random starts)."""
    dt = x.dtype
    if type(dt).__module__.startswith("torch"):
        import torch

        return torch.zeros(1, dtype=dt, device=getattr(x, "device", "cpu"))
    return np.zeros(1, dtype=dt)

"""Normal equations ``A V = M`` of ALS (V symmetric positive semi-definite, or Hermitian
for complex data), never NaN.

A Cholesky factorisation is tried first. When it fails or its pivots show that V is
numerically singular (rank higher than the data supports, duplicated components, zero
columns), the minimum-norm least-squares solution is computed from V's eigen-decomposition
(eigenvalues below ``1e-12`` of the largest dropped), and the event is reported. A plain
ridge would not do: rounding leaves ``M`` with tiny components in V's null space, which
``(V + δI)⁻¹`` amplifies by ``1/δ``. The user's Tikhonov ``ridge`` is added before all this.
Everything runs in float64 (complex128 for complex data; on the arrays' own device).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.linalg import lapack

from .._backend import Array, conj, device, is_complex, is_numpy, namespace
from ._common import all_finite as _all_finite

#: Squared pivot ratio below which V counts as numerically singular.
_RCOND = 1e-13
#: Eigenvalues of a singular V below this fraction of the largest are dropped.
_PINV_RCOND = 1e-12


@dataclass
class SolveLog:
    """What the solver had to do, for ``stop_reason`` and ``CPFit.info``."""

    pinv_solves: int = 0
    pinv_dropped: int = 0
    zero_solves: int = 0
    modes: set[int] = field(default_factory=set)

    def notes(self) -> list[str]:
        """Human-readable notes (empty when every solve was a plain Cholesky)."""
        out = []
        modes = sorted(self.modes)
        if self.pinv_solves:
            out.append(
                "rank-deficient normal equations (more components than the data supports, or "
                f"duplicated components): minimum-norm least-squares solve in "
                f"{self.pinv_solves} solve(s), up to {self.pinv_dropped} direction(s) "
                f"dropped (modes {modes})"
            )
        if self.zero_solves:
            out.append(
                f"all-zero normal equations (zero factors) in {self.zero_solves} solve(s): "
                "those factors were set to zero"
            )
        return out


def _cholesky(v: Array) -> Array | None:
    """Lower Cholesky factor of a torch V, or None when V is not (numerically) positive
    definite (NumPy arrays take :func:`_solve_numpy`)."""
    import torch

    low, info = torch.linalg.cholesky_ex(v)
    return low if int(info.item()) == 0 else None


def _cho_solve(low: Array, m: Array) -> Array:
    """``M V⁻¹`` for torch arrays given the lower Cholesky factor L of V = L Lᴴ."""
    import torch

    if low.dtype.is_complex:  # M V⁻¹ = (V⁻¹ Mᴴ)ᴴ for Hermitian V
        return torch.cholesky_solve(m.conj().T, low).conj().T
    return torch.cholesky_solve(m.T, low).T


def solve_normal(m: Array, v: Array, log: SolveLog, mode: int, ridge: float = 0.0) -> Array:
    """``A = M (V + ridge·I)⁻¹`` for float64 ``m`` (I × R) and symmetric ``v`` (R × R)
    (complex128 ``m`` and Hermitian ``v`` for complex data).

    ``ridge`` is the user's Tikhonov term; an extra small ridge (or a pseudo-inverse) is
    applied and recorded in ``log`` when V is numerically singular. The result is always
    finite.
    """
    if is_numpy(m) and is_numpy(v):
        return _solve_numpy(m, v, log, mode, ridge)
    xp = namespace(m, v)
    if ridge > 0:
        v = v + ridge * xp.eye(int(v.shape[0]), dtype=v.dtype, device=device(v))
    diag = xp.linalg.diagonal(v)
    if is_complex(diag):
        diag = xp.real(diag)
    vmax = float(xp.max(diag))
    if not np.isfinite(vmax) or vmax <= 0.0:
        log.zero_solves += 1
        log.modes.add(mode)
        return xp.zeros_like(m)
    low = _cholesky(v)
    if low is not None:
        d = xp.linalg.diagonal(low)
        if is_complex(d):
            d = xp.real(d)
        dmin, dmax = float(xp.min(d)), float(xp.max(d))
        if dmax > 0 and (dmin / dmax) ** 2 >= _RCOND:
            a = _cho_solve(low, m)
            if _all_finite(xp, a):
                return a
    return _pinv_solve(m, v, log, mode)


@functools.cache
def _lapack(dtype: np.dtype) -> tuple[Any, Any]:
    return lapack.get_lapack_funcs(("potrf", "trtri"), dtype=dtype)


def _solve_numpy(m: np.ndarray, v: np.ndarray, log: SolveLog, mode: int, ridge: float) -> Array:
    """:func:`solve_normal` for NumPy arrays, with LAPACK's ``potrf`` and ``trtri`` called
    directly: for these R × R systems ``numpy.linalg``'s and the array-API wrappers'
    per-call checks cost several times the factorisation itself. ``M V⁻¹ = (M L⁻ᴴ) L⁻¹``
    is applied as two GEMMs with the small triangular inverse (``potrs``/``trsm`` are
    slower for these tiny systems); forming ``V⁻¹`` first would save one GEMM on ``M``
    but squares the conditioning it is computed with: ALS then stops being monotone on
    nearly singular (still accepted) V."""
    if ridge > 0:
        v = v + ridge * np.eye(v.shape[0])
    potrf, trtri = _lapack(v.dtype)
    low, info = potrf(v, lower=1)
    if info == 0:  # V's diagonal is positive: only the pivots' spread is left to check
        d = low.diagonal().real.tolist()  # R numbers: faster in Python than as reductions
        dmin, dmax = min(d), max(d)
        if dmax > 0 and (dmin / dmax) ** 2 >= _RCOND:
            linv, info = trtri(low, lower=1)
            if info == 0:
                a = (m @ conj(linv).T) @ linv
                if np.isfinite(a).all():  # a small array: cheaper than a guarded sum
                    return a
    vmax = float(v.diagonal().real.max())
    if not math.isfinite(vmax) or vmax <= 0.0:
        log.zero_solves += 1
        log.modes.add(mode)
        return np.zeros_like(m)
    return _pinv_solve(m, v, log, mode)


def _pinv_solve(m: Array, v: Array, log: SolveLog, mode: int) -> Array:
    """The minimum-norm least-squares ``A V = M`` from V's eigen-decomposition (V is
    symmetric, or Hermitian), logged."""
    xp = namespace(m, v)
    w, q = xp.linalg.eigh((v + conj(v).T) / 2)
    wmax = float(xp.max(w))
    keep = w > _PINV_RCOND * wmax
    inv = xp.where(keep, 1.0 / xp.where(keep, w, xp.ones_like(w)), xp.zeros_like(w))
    if is_complex(q):
        inv = xp.astype(inv, q.dtype)
    a = ((m @ q) * inv) @ conj(q).T
    log.pinv_solves += 1
    log.pinv_dropped = max(log.pinv_dropped, int(xp.sum(xp.astype(~keep, xp.int64))))
    log.modes.add(mode)
    if not _all_finite(xp, a):  # pragma: no cover - only with overflowing inputs
        a = xp.where(xp.isfinite(a), a, xp.zeros_like(a))
    return a

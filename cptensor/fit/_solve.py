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

from dataclasses import dataclass, field

import numpy as np

from .._backend import Array, conj, device, is_complex, is_torch, namespace
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
    """Lower Cholesky factor, or None when V is not (numerically) positive definite."""
    if is_torch(v):
        import torch

        low, info = torch.linalg.cholesky_ex(v)
        return low if int(info.item()) == 0 else None
    try:
        return np.linalg.cholesky(v)
    except np.linalg.LinAlgError:
        return None


def _cho_solve(low: Array, m: Array) -> Array:
    """``M V⁻¹ = (M L⁻ᴴ) L⁻¹`` given the lower Cholesky factor L of V = L Lᴴ.

    For NumPy the small triangular inverse is formed once (R × R) and applied with two
    GEMMs: LAPACK's ``potrs``/``trtrs`` through SciPy are far slower for these tiny
    systems (thread start-up in a second BLAS).
    """
    if is_torch(low):
        import torch

        if low.dtype.is_complex:  # M V⁻¹ = (V⁻¹ Mᴴ)ᴴ for Hermitian V
            return torch.cholesky_solve(m.conj().T, low).conj().T
        return torch.cholesky_solve(m.T, low).T
    linv = np.linalg.inv(low)
    if np.iscomplexobj(linv):
        return (m @ linv.conj().T) @ linv
    return (m @ linv.T) @ linv


def solve_normal(m: Array, v: Array, log: SolveLog, mode: int, ridge: float = 0.0) -> Array:
    """``A = M (V + ridge·I)⁻¹`` for float64 ``m`` (I × R) and symmetric ``v`` (R × R)
    (complex128 ``m`` and Hermitian ``v`` for complex data).

    ``ridge`` is the user's Tikhonov term; an extra small ridge (or a pseudo-inverse) is
    applied and recorded in ``log`` when V is numerically singular. The result is always
    finite.
    """
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
    # Pseudo-inverse from the eigen-decomposition (V is symmetric, or Hermitian).
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

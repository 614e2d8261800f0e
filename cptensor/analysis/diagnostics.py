"""Diagnostics of a fitted CP model: core consistency, degeneracy, explained variance.

All accept a dense array (NumPy or torch) or a :class:`~cptensor.operator.TensorOperator`
(e.g. :class:`~cptensor.structured.BlockTensor`) for ``x``; none densifies an operator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._backend import (
    Array,
    check_same_device_dtype,
    float64_of,
    is_array,
    namespace,
    scalar,
    shape_tuple,
    to_numpy,
)
from ..cp import CPTensor
from ..errors import CPTensorError, CPTensorTypeError
from ..operator import is_operator
from ..products import _mttkrp_one, multi_mode_product
from ..reconstruct import reconstruct

__all__ = [
    "DEGENERACY_THRESHOLD",
    "ExplainedVariance",
    "core_consistency",
    "degeneracy",
    "explained_variance",
]

#: Degeneracy below this value flags a troublesome (degenerate) model: Krijnen & Kroonenberg
#: (1993), as cited by Bro (1997) and used by tlviz.
DEGENERACY_THRESHOLD: float = -0.85


def _check_x_cp(x: Any, cp: Any) -> tuple[tuple[int, ...], bool]:
    if not isinstance(cp, CPTensor):
        raise CPTensorTypeError(f"cp must be a cptensor.CPTensor, got {type(cp).__name__}")
    if is_operator(x):
        shape = tuple(int(s) for s in x.shape)
        op = True
    elif is_array(x):
        shape = shape_tuple(x)
        op = False
        namespace(x, cp.factors[0], names=["x", "cp.factors[0]"])
        check_same_device_dtype([x, cp.factors[0]], ["x", "cp.factors[0]"])
    else:
        raise CPTensorTypeError(
            f"x must be an array (NumPy or torch) or a TensorOperator, got {type(x).__name__}"
        )
    if shape != cp.shape:
        raise CPTensorError(
            f"cp has shape {cp.shape} but x has shape {shape}; the CP model must have one "
            "factor row per index of each mode of x"
        )
    return shape, op


def _observed(x: Array, mask: Any) -> Array | None:
    """The boolean mask of observed entries: ``mask``, or ``~isnan(x)`` if x has NaNs."""
    xp = namespace(x)
    if mask is not None:
        if not is_array(mask) or shape_tuple(mask) != shape_tuple(x):
            got = shape_tuple(mask) if is_array(mask) else type(mask).__name__
            raise CPTensorError(
                f"mask must be a boolean array of shape {shape_tuple(x)}, got {got}"
            )
        return xp.astype(mask, xp.bool)
    nan = xp.isnan(x)
    if bool(xp.any(nan)):
        return ~nan
    return None


def core_consistency(
    x: Any,
    cp: CPTensor,
    *,
    normalised: bool = False,
    mask: Array | None = None,
    max_core_entries: int = 2**26,
) -> float:
    """Core consistency diagnostic (CORCONDIA, Bro & Kiers 2003), in percent.

    With the weights folded into the first factor, the least-squares Tucker core of
    ``x`` for the CP factors is ``G = x ×_1 A_1⁺ ×_2 A_2⁺ … ×_N A_N⁺`` (pseudo-inverses
    applied mode by mode, the most-reducing mode first; Papalexakis & Faloutsos 2015,
    never a Kronecker product of the factors). The diagnostic is
    ``100 · (1 − ‖G − I‖² / R)`` with ``I`` the superdiagonal identity core, or with the
    denominator ``‖G‖²`` when ``normalised=True`` (the N-way toolbox form). 100 means the
    data show no interactions between components beyond the CP model; values far below
    (< 50, often negative) mean too many components or a model that does not fit.

    Parameters
    ----------
    x:
        The data: a dense array or a :class:`~cptensor.operator.TensorOperator` that
        provides ``multi_mode_product(matrices)`` (both ``cptensor.structured`` classes
        do).
    cp:
        The CP model, same shape as ``x``, same backend and dtype.
    normalised:
        Divide by ``‖G‖²`` instead of ``R``.
    mask:
        Boolean array, True where ``x`` is observed (dense ``x`` only). Missing entries
        (and NaNs when ``mask`` is None) are imputed from the model before the core is
        estimated, as the N-way toolbox does.
    max_core_entries:
        The core has ``R^N`` entries; refuse larger cores with a ``ValueError``.

    Returns
    -------
    float
        The core consistency in percent (at most 100; can be very negative).

    Raises
    ------
    ValueError
        ``x`` with infinite values or no observed entry, a ``cp`` with NaN or infinite
        values, a core too large or not finite.

    Examples
    --------
    >>> import numpy as np
    >>> from cptensor import CPTensor, reconstruct
    >>> rng = np.random.default_rng(0)
    >>> cp = CPTensor(None, [rng.standard_normal((n, 3)) for n in (5, 6, 7)])
    >>> round(core_consistency(reconstruct(cp), cp), 6)
    100.0
    """
    shape, op = _check_x_cp(x, cp)
    rank, n = cp.rank, cp.ndim
    if rank**n > max_core_entries:
        raise CPTensorError(
            f"the core of a rank-{rank} model of a {n}-way tensor has {rank}^{n} = "
            f"{rank**n} entries, more than max_core_entries={max_core_entries}; raise the "
            "limit if memory allows"
        )
    xp = cp.xp
    if not all(bool(xp.all(xp.isfinite(a))) for a in (cp.weights, *cp.factors)):
        raise CPTensorError("cp holds NaN or infinite values; core consistency is undefined")
    mats = list(cp.factors)
    mats[0] = mats[0] * cp.weights
    pinvs = [xp.linalg.pinv(m) for m in mats]  # (R, I_n)
    if op:
        if not hasattr(x, "multi_mode_product"):
            raise CPTensorTypeError(
                f"core_consistency needs x.multi_mode_product(matrices); {type(x).__name__} "
                "does not provide it"
            )
        g = x.multi_mode_product(pinvs)
    else:
        obs = _observed(x, mask)
        seen = x if obs is None else xp.where(obs, x, xp.zeros_like(x))
        if obs is not None and not bool(xp.any(obs)):
            raise CPTensorError("x has no observed entries (all masked or NaN)")
        if not bool(xp.all(xp.isfinite(seen))):
            raise CPTensorError("x holds infinite values (or NaN where the mask says observed)")
        if obs is not None:
            x = xp.where(obs, x, reconstruct(cp))
        order = sorted(range(n), key=lambda k: rank / shape[k])
        g = multi_mode_product(x, [pinvs[k] for k in order], modes=order)
    g64 = to_numpy(float64_of(namespace(g), g))
    if not np.all(np.isfinite(g64)):
        raise CPTensorError("the Tucker core is not finite (x or its values overflow)")
    ident = np.zeros((rank,) * n)
    ident[(np.arange(rank),) * n] = 1.0
    denom = float(np.sum(g64**2)) if normalised else float(rank)
    return float(100.0 - 100.0 * np.sum((g64 - ident) ** 2) / denom)


def degeneracy(cp: CPTensor) -> float:
    """The most negative product of component cosines across modes (degeneracy score).

    For components ``i ≠ j``, ``Π_n cos(a_n,i, a_n,j)``; the minimum over pairs. Near −1,
    two components point in opposite directions in every mode and cancel (a "two-factor
    degeneracy", typical of a rank too high or a tensor with no best low-rank
    approximation); below :data:`DEGENERACY_THRESHOLD` (−0.85) treat the model as
    degenerate. A rank-1 model scores 1.0.

    This equals tlviz's ``degeneracy_score`` (which takes the minimum over the whole
    congruence matrix, diagonal of ones included, so the two coincide for rank ≥ 1)
    except for zero columns: here a zero column has cosine 0 with everything, where tlviz
    would divide by zero.

    >>> import numpy as np
    >>> from cptensor import CPTensor
    >>> a = np.array([[1.0, -1.0], [0.0, 0.1]])
    >>> round(degeneracy(CPTensor(None, [a, a, a])), 3)
    -0.985
    """
    if not isinstance(cp, CPTensor):
        raise CPTensorTypeError(f"cp must be a cptensor.CPTensor, got {type(cp).__name__}")
    rank = cp.rank
    if rank < 2:
        return 1.0
    c = np.ones((rank, rank))
    for f in cp.factors:
        a = to_numpy(f).astype(np.float64)
        nrm = np.linalg.norm(a, axis=0)
        a = a / np.where(nrm > 0, nrm, 1.0)
        c *= a.T @ a
    off = ~np.eye(rank, dtype=bool)
    return float(c[off].min())


@dataclass(frozen=True)
class ExplainedVariance:
    """Result of :func:`explained_variance`.

    Attributes
    ----------
    total:
        ``1 − ‖X − M‖² / ‖X‖²`` (uncentred R², the "fit" in sums of squares).
    per_component:
        Array of length R: ``1 − ‖X − M_r‖² / ‖X‖²`` for the model ``M_r`` made of
        component ``r`` alone. They add up to ``total`` only when components are
        orthogonal; a value near 0 marks a component that explains little on its own.

    Examples
    --------
    >>> import numpy as np
    >>> ev = ExplainedVariance(total=0.9, per_component=np.array([0.6, 0.3]))
    >>> ev.total, float(ev.per_component.sum())
    (0.9, 0.8999999999999999)
    """

    total: float
    per_component: np.ndarray


def explained_variance(x: Any, cp: CPTensor, *, mask: Array | None = None) -> ExplainedVariance:
    """Share of the sum of squares of ``x`` that ``cp`` explains, in total and per component.

    Sums of squares are uncentred (no mean is removed, as in CP fitting) and accumulated in
    float64. ``total`` uses the exact residual (``x.residual_norm(cp)`` for an operator
    that has it). With ``mask`` (or NaNs in a dense ``x``), only observed entries count.

    Parameters
    ----------
    x:
        Dense array or :class:`~cptensor.operator.TensorOperator`.
    cp:
        The CP model, same shape as ``x``.
    mask:
        Boolean array, True where ``x`` is observed (dense ``x`` only).

    Returns
    -------
    ExplainedVariance

    Examples
    --------
    >>> import numpy as np
    >>> from cptensor import CPTensor, reconstruct
    >>> a = CPTensor(None, [np.eye(3)[:, :2], np.eye(3)[:, :2]])
    >>> ev = explained_variance(reconstruct(a), a.with_(weights=np.array([1.0, 0.0])))
    >>> round(ev.total, 6), ev.per_component.round(6).tolist()
    (0.5, [0.5, 0.0])
    """
    _, op = _check_x_cp(x, cp)
    xp = cp.xp
    w64 = to_numpy(float64_of(xp, cp.weights))
    if op:
        x_sq = float(x.norm()) ** 2
        m0 = x.mttkrp(list(cp.factors), 0)
        inner_r = to_numpy(float64_of(xp, xp.sum(m0 * cp.factors[0], axis=0))) * w64
        col_sq = np.ones(cp.rank)
        for f in cp.factors:
            col_sq *= to_numpy(float64_of(xp, xp.sum(f * f, axis=0)))
        comp_sq = w64**2 * col_sq
        if hasattr(x, "residual_norm"):
            res_sq = float(x.residual_norm(cp)) ** 2
        else:
            g = np.ones((cp.rank, cp.rank))
            for f in cp.factors:
                f64 = to_numpy(float64_of(xp, f))
                g *= f64.T @ f64
            res_sq = max(x_sq + float(w64 @ g @ w64) - 2 * float(inner_r.sum()), 0.0)
    else:
        obs = _observed(x, mask)
        x64 = float64_of(xp, x)
        f64 = [float64_of(xp, f) for f in cp.factors]
        cp64 = CPTensor(float64_of(xp, cp.weights), f64)
        if obs is not None:
            x64 = xp.where(obs, x64, xp.zeros_like(x64))
            mf = xp.astype(obs, x64.dtype)
            sq = [f * f for f in f64]
            col_sq = to_numpy(xp.sum(_mttkrp_one(mf, sq, 0) * sq[0], axis=0))
            res = (x64 - reconstruct(cp64)) * mf
        else:
            col_sq = np.ones(cp.rank)
            for f in f64:
                col_sq *= to_numpy(xp.sum(f * f, axis=0))
            res = x64 - reconstruct(cp64)
        x_sq = scalar(xp.sum(x64 * x64))
        m0 = _mttkrp_one(x64, f64, 0)
        inner_r = to_numpy(xp.sum(m0 * f64[0], axis=0)) * w64
        comp_sq = w64**2 * col_sq
        res_sq = scalar(xp.sum(res * res))
    if x_sq == 0:
        raise CPTensorError("x is zero (on its observed entries): explained variance is undefined")
    per = (2.0 * inner_r - comp_sq) / x_sq
    return ExplainedVariance(total=1.0 - res_sq / x_sq, per_component=np.asarray(per))

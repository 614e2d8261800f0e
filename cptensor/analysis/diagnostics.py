"""Diagnostics of a fitted CP model: core consistency, degeneracy, explained variance.

All accept a dense array (NumPy or torch) or a :class:`~cptensor.operator.TensorOperator`
(e.g. :class:`~cptensor.structured.BlockTensor`) for ``x``; none densifies an operator.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._backend import (
    Array,
    abs2,
    check_same_device_dtype,
    conj,
    float64_of,
    is_array,
    is_complex,
    namespace,
    scalar,
    shape_tuple,
    to_numpy,
)
from ..cp import CPTensor, as_cp
from ..errors import CPTensorError, CPTensorTypeError
from ..operator import is_operator
from ..products import _khatri_rao, _mttkrp_one, multi_mode_product
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


def _check_x_cp(x: Any, cp: CPTensor) -> tuple[tuple[int, ...], bool]:
    """``x``'s shape and whether it is an operator; ``cp`` has been through ``as_cp``."""
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


def _set_partitions(items: list[int]) -> Iterator[list[list[int]]]:
    """Every partition of ``items`` into non-empty blocks (Bell(len(items)) of them)."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in _set_partitions(rest):
        yield [[first], *part]
        for i in range(len(part)):
            yield [*part[:i], [first, *part[i]], *part[i + 1 :]]


def _merged_groups(shape: tuple[int, ...], rank: int) -> tuple[tuple[int, ...], ...] | None:
    """The modes of ``shape`` grouped so that every group's size (the product of its
    modes' sizes) is at least ``rank``, with as many groups as possible.

    Every mode of size >= ``rank`` alone when that is possible (then nothing is merged).
    Among groupings with the most groups, the one whose merged groups hold the fewest
    entries (the smallest merged factors), then the first in sorted order. ``None`` when
    merging is needed and fewer than three groups are possible. Brute force over the set
    partitions of the modes (at most Bell(9) = 21,147) up to 9 modes; beyond that, a
    greedy grouping (small modes in ascending size, each group closed once it reaches
    ``rank``, a short last group joined to the previous one or to the smallest large mode).
    """
    n = len(shape)
    if all(s >= rank for s in shape):
        return tuple((k,) for k in range(n))
    best: tuple[Any, ...] | None = None
    if n <= 9:
        for part in _set_partitions(list(range(n))):
            sizes = [math.prod(shape[k] for k in b) for b in part]
            if min(sizes) < rank:
                continue
            merged = sum(s for b, s in zip(part, sizes) if len(b) > 1)
            groups = tuple(sorted(tuple(b) for b in part))
            key = (-len(part), merged, groups)
            if best is None or key < best:
                best = key
        groups_out = None if best is None else best[2]
    else:
        small = sorted((k for k in range(n) if shape[k] < rank), key=lambda k: (shape[k], k))
        large = sorted((k for k in range(n) if shape[k] >= rank), key=lambda k: (shape[k], k))
        blocks: list[list[int]] = []
        cur: list[int] = []
        for k in small:
            cur.append(k)
            if math.prod(shape[j] for j in cur) >= rank:
                blocks.append(cur)
                cur = []
        singles = [[k] for k in large]
        if cur:
            if blocks:
                blocks[-1].extend(cur)
            elif singles:
                singles[0].extend(cur)
            else:
                blocks.append(cur)  # every mode together and still too small
        groups_out = tuple(sorted(tuple(sorted(b)) for b in blocks + singles))
    if groups_out is None or len(groups_out) < 3:
        return None
    return groups_out


def core_consistency(
    x: Any,
    cp: CPTensor,
    *,
    normalised: bool = False,
    mask: Array | None = None,
    max_core_entries: int = 2**26,
    merge_small_modes: bool = False,
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

    **Ranks above a mode's size.** When ``R > I_n``, the factor ``A_n`` (``I_n × R``)
    cannot have full column rank, ``A_n⁺ A_n`` is a projection of rank ``I_n`` and even an
    exact CP model gives ``G ≠ I``: its classic value is at most ``100 · I_n / R`` (a
    4-wide mode, such as the Q, K, V, O mode of a LoRTA tensor, caps an exact model at 80
    for R = 5 and 66.7 for R = 6). With ``merge_small_modes=True`` the modes are first
    grouped so that every group's size (the product of its modes' sizes) is at least
    ``R``, with as many groups as possible, and Bro's diagnostic is computed for the
    lower-order CP model whose factor for a group is the Khatri–Rao product of its
    modes' factors. That product of generic factors has full column rank ``R`` as soon
    as the group's size is ``>= R``, so an exact model measures 100 again, and the
    superdiagonal core still tests for interactions between components in every group.
    Among groupings with the most groups, the one with the smallest merged groups is
    used (ties: the first in sorted order). When every ``I_n >= R`` nothing is merged
    and the value is the classic one. When merging is needed and fewer than three
    groups are possible the diagnostic is undefined (a CP model of a matrix is not
    unique, and its core is the identity for any exact factorisation) and NaN is
    returned.

    For an operator the merged modes are left untouched by ``x.multi_mode_product``
    (identity matrices, so they keep their small sizes) and contracted with the
    pseudo-inverse of their Khatri–Rao factor afterwards, on the small intermediate
    tensor: nothing is densified, and the intermediate has ``R^(groups kept alone) ·
    Π (merged sizes)`` entries, fewer than the ``R^N`` of the classic core.

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
        The core has ``R^N`` entries (``R^(number of groups)`` when modes are merged, and
        the intermediate tensor is counted as well); refuse larger ones with a
        ``ValueError``.
    merge_small_modes:
        Merge modes smaller than ``R`` as described above (``rank_sweep`` does).

    Returns
    -------
    float
        The core consistency in percent (at most 100; can be very negative); NaN when
        ``merge_small_modes=True`` and it is undefined.

    Raises
    ------
    ValueError
        ``x`` with infinite values or no observed entry, a ``cp`` with NaN or infinite
        values, a core too large or not finite.
    TypeError
        ``merge_small_modes`` not a bool, or an operator without ``multi_mode_product``.

    Examples
    --------
    >>> import numpy as np
    >>> from cptensor import CPTensor, reconstruct
    >>> rng = np.random.default_rng(0)
    >>> cp = CPTensor(None, [rng.standard_normal((n, 3)) for n in (5, 6, 7)])
    >>> round(core_consistency(reconstruct(cp), cp), 6)
    100.0

    An exact rank-6 model with a 4-wide mode: the classic value is capped at
    ``100 · 4 / 6``; the merged one (modes 2 and 3 merged, 7 · 4 >= 6) is 100.

    >>> cp = CPTensor(None, [rng.standard_normal((n, 6)) for n in (8, 9, 7, 4)])
    >>> x = reconstruct(cp)
    >>> classic = core_consistency(x, cp)
    >>> merged = core_consistency(x, cp, merge_small_modes=True)
    >>> round(classic, 1), round(merged, 6)
    (66.7, 100.0)
    """
    cp = as_cp(cp)
    if not isinstance(merge_small_modes, bool):
        raise CPTensorTypeError(
            f"merge_small_modes must be a bool, got {type(merge_small_modes).__name__}"
        )
    shape, op = _check_x_cp(x, cp)
    rank, n = cp.rank, cp.ndim
    groups = _merged_groups(shape, rank) if merge_small_modes else tuple((k,) for k in range(n))
    if groups is None:
        return math.nan
    alone = [g[0] for g in groups if len(g) == 1]
    merged = [g for g in groups if len(g) > 1]
    core_entries = rank ** len(groups)
    mid_entries = rank ** len(alone) * math.prod(shape[k] for g in merged for k in g)
    if max(core_entries, mid_entries) > max_core_entries:
        what = (
            f"the core of a rank-{rank} model of a {n}-way tensor has {rank}^{n} = "
            f"{core_entries} entries"
            if not merged
            else f"the merged core (modes grouped as {groups}) needs "
            f"{max(core_entries, mid_entries)} entries"
        )
        raise CPTensorError(
            f"{what}, more than max_core_entries={max_core_entries}; raise the limit if "
            "memory allows"
        )
    xp = cp.xp
    if not all(bool(xp.all(xp.isfinite(a))) for a in (cp.weights, *cp.factors)):
        raise CPTensorError("cp holds NaN or infinite values; core consistency is undefined")
    mats = list(cp.factors)
    mats[0] = mats[0] * cp.weights
    pinvs = {k: xp.linalg.pinv(mats[k]) for k in alone}  # (R, I_n)
    if op:
        if not hasattr(x, "multi_mode_product"):
            raise CPTensorTypeError(
                f"core_consistency needs x.multi_mode_product(matrices); {type(x).__name__} "
                "does not provide it"
            )
        g = x.multi_mode_product(
            [
                pinvs[k] if k in pinvs else xp.eye(shape[k], dtype=cp.dtype, device=cp.device)
                for k in range(n)
            ]
        )
    else:
        obs = _observed(x, mask)
        seen = x if obs is None else xp.where(obs, x, xp.zeros_like(x))
        if obs is not None and not bool(xp.any(obs)):
            raise CPTensorError("x has no observed entries (all masked or NaN)")
        if not bool(xp.all(xp.isfinite(seen))):
            raise CPTensorError("x holds infinite values (or NaN where the mask says observed)")
        if obs is not None:
            x = xp.where(obs, x, reconstruct(cp))
        order = sorted(alone, key=lambda k: rank / shape[k])
        g = multi_mode_product(x, [pinvs[k] for k in order], modes=order) if order else x
    g = _contract_merged(g, mats, merged)
    g64 = to_numpy(float64_of(namespace(g), g))
    if not np.all(np.isfinite(g64)):
        raise CPTensorError("the Tucker core is not finite (x or its values overflow)")
    ident = np.zeros((rank,) * len(groups))
    ident[(np.arange(rank),) * len(groups)] = 1.0
    denom = float(np.sum(np.abs(g64) ** 2)) if normalised else float(rank)
    return float(100.0 - 100.0 * np.sum(np.abs(g64 - ident) ** 2) / denom)


def _contract_merged(t: Array, mats: list[Array], merged: list[tuple[int, ...]]) -> Array:
    """Contract each group of modes of ``t`` (still at their full sizes) with the
    pseudo-inverse of the Khatri–Rao product of the group's factors (``R`` rows); the
    other axes keep their order and each group's new axis goes last."""
    xp = namespace(t)
    labels: list[Any] = list(range(t.ndim))
    for gi, group in enumerate(merged):
        # row-major: the last mode of the group varies fastest
        kr = _khatri_rao([mats[k] for k in group], None, like=mats[group[0]])
        axes = [labels.index(k) for k in group]
        others = [a for a in range(t.ndim) if a not in axes]
        t = xp.permute_dims(t, (*others, *axes))
        t = xp.reshape(t, (*t.shape[: len(others)], kr.shape[0]))
        t = xp.matmul(t, xp.linalg.pinv(kr).T)
        labels = [labels[a] for a in others] + [("group", gi)]
    return t


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
    cp = as_cp(cp)
    rank = cp.rank
    if rank < 2:
        return 1.0
    # complex factors: the real part of the product of the cosines a_iᴴa_j
    c = np.ones((rank, rank), dtype=np.complex128 if is_complex(cp.factors[0]) else np.float64)
    for f in cp.factors:
        a = to_numpy(f).astype(c.dtype)
        nrm = np.linalg.norm(a, axis=0)
        a = a / np.where(nrm > 0, nrm, 1.0)
        c *= a.conj().T @ a
    off = ~np.eye(rank, dtype=bool)
    return float(c.real[off].min())


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
    cp = as_cp(cp)
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
            sq = [abs2(f) for f in f64]
            mf = xp.astype(obs, sq[0].dtype)
            col_sq = to_numpy(xp.sum(_mttkrp_one(mf, sq, 0) * sq[0], axis=0))
            res = (x64 - reconstruct(cp64)) * mf
        else:
            col_sq = np.ones(cp.rank)
            for f in f64:
                col_sq *= to_numpy(xp.sum(abs2(f), axis=0))
            res = x64 - reconstruct(cp64)
        x_sq = scalar(xp.sum(abs2(x64)))
        # Re⟨X, M_r⟩ = Re Σ X·conj(M_r) (conjugations are no-ops for real data)
        m0 = _mttkrp_one(x64, [conj(f) for f in f64], 0)
        inner_r = (to_numpy(xp.sum(m0 * conj(f64[0]), axis=0)) * np.conj(w64)).real
        comp_sq = np.abs(w64) ** 2 * col_sq
        res_sq = scalar(xp.sum(abs2(res)))
    if x_sq == 0:
        raise CPTensorError("x is zero (on its observed entries): explained variance is undefined")
    per = (2.0 * inner_r - comp_sq) / x_sq
    return ExplainedVariance(total=1.0 - res_sq / x_sq, per_component=np.asarray(per))

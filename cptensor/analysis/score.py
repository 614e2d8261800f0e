"""Comparing CP decompositions up to their indeterminacies: ``score`` and ``congruence``.

Tensor Toolbox semantics (``ktensor/score``, as in pyttb's ``ktensor.score``): both CP
tensors are normalized (unit columns, norms in the weights, negative weights made positive
by flipping the first factor), the congruence of component ``i`` of ``a`` with component
``j`` of ``b`` is ``Π_n |a_n,iᵀ b_n,j|``, optionally times the weight penalty
``1 − |λ_i − μ_j| / max(λ_i, μ_j)``, and components are matched to maximise the sum.
``a`` may have more components than ``b``; the extra ones are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._backend import to_numpy
from ..cp import CPTensor, as_cp
from ..errors import CPTensorError

__all__ = ["Score", "congruence", "congruence_matrix", "score"]


@dataclass(frozen=True)
class Score:
    """Result of :func:`score`.

    Attributes
    ----------
    value:
        The mean matched congruence, in ``[0, 1]`` (1: same components up to scaling,
        sign and order, and, with the weight penalty, the same weights).
    permutation:
        Integer array of length ``rank(a)``: ``permutation[j]`` is the component of ``a``
        matched to component ``j`` of ``b`` for ``j < rank(b)``; the unmatched components
        of ``a`` follow in increasing order (as Tensor Toolbox returns it), so
        ``permute(a, permutation)`` lines ``a`` up with ``b``.
    congruences:
        Array of length ``rank(b)``: the (penalised) congruence of each matched pair.

    Examples
    --------
    >>> import numpy as np
    >>> from cptensor import CPTensor
    >>> a = CPTensor(np.array([1.0, 1.0]), [np.eye(2), np.eye(2)])
    >>> s = score(a, CPTensor(np.array([1.0]), [np.eye(2)[:, 1:], np.eye(2)[:, 1:]]))
    >>> s.value, s.permutation.tolist(), s.congruences.tolist()
    (1.0, [1, 0], [1.0])
    """

    value: float
    permutation: np.ndarray
    congruences: np.ndarray

    def __float__(self) -> float:
        return self.value


def _normalized_numpy(cp: CPTensor) -> tuple[np.ndarray, list[np.ndarray]]:
    """pyttb's ``normalize()``: unit columns, absolute weights (sign put on factor 0; for
    complex tensors the weights' phases, in complex128)."""
    w = to_numpy(cp.weights)
    dt = np.complex128 if np.iscomplexobj(w) else np.float64
    w = w.astype(dt)  # astype copies: the caller's arrays are never written
    fs = [to_numpy(f).astype(dt) for f in cp.factors]
    for f in fs:
        n = np.linalg.norm(f, axis=0)
        safe = np.where(n > 0, n, 1.0)
        f /= safe
        w = w * n
    if dt is np.complex128:
        mag = np.abs(w)
        fs[0] = fs[0] * np.where(mag > 0, w / np.where(mag > 0, mag, 1.0), 1.0)
        return mag, fs
    neg = w < 0
    fs[0][:, neg] = -fs[0][:, neg]
    w[neg] = -w[neg]
    return w, fs


def _check_pair(a: Any, b: Any) -> tuple[CPTensor, CPTensor]:
    a, b = as_cp(a, "a"), as_cp(b, "b")
    if a.shape != b.shape:
        raise CPTensorError(f"a has shape {a.shape} but b has shape {b.shape}; they must match")
    if a.rank < b.rank:
        raise CPTensorError(
            f"a has rank {a.rank} but b has rank {b.rank}: a must have at least as many "
            "components as b (swap the arguments)"
        )
    return a, b


def congruence_matrix(a: CPTensor, b: CPTensor, *, weight_penalty: bool = True) -> np.ndarray:
    """All component-pair congruences, ``(rank(a), rank(b))`` (before matching).

    ``C[i, j] = Π_n |cos(a_n,i, b_n,j)|``, times ``1 − |λ_i − μ_j| / max(λ_i, μ_j)`` when
    ``weight_penalty`` (weights of the normalized tensors; two zero weights match).

    >>> import numpy as np
    >>> from cptensor import CPTensor
    >>> a = CPTensor(None, [np.eye(2), np.eye(2)])
    >>> congruence_matrix(a, a)
    array([[1., 0.],
           [0., 1.]])
    """
    a, b = _check_pair(a, b)
    wa, fa = _normalized_numpy(a)
    wb, fb = _normalized_numpy(b)
    c = np.ones((a.rank, b.rank))
    for x, y in zip(fa, fb):
        c *= np.abs(x.conj().T @ y)  # |a_iᴴ b_j|: the modulus for complex columns
    if weight_penalty:
        big = np.maximum(np.abs(wa)[:, None], np.abs(wb)[None, :])
        with np.errstate(divide="ignore", invalid="ignore"):
            p = 1.0 - np.abs(wa[:, None] - wb[None, :]) / big
        p = np.where(big == 0, 1.0, p)
        c = p * c
    return c


def score(a: CPTensor, b: CPTensor, *, weight_penalty: bool = True, greedy: bool = False) -> Score:
    """Factor match score of ``a`` against ``b`` (Tensor Toolbox ``score``).

    Parameters
    ----------
    a, b:
        CP tensors of the same shape, ``rank(a) >= rank(b)``; any backend (the comparison
        is computed in float64 NumPy, the factors are small).
    weight_penalty:
        Multiply each pair's congruence by ``1 − |λ_i − μ_j| / max(λ_i, μ_j)``.
    greedy:
        Match greedily (repeatedly take the largest remaining congruence, as Tensor
        Toolbox and pyttb do by default) instead of optimally (the Hungarian algorithm,
        ``scipy.optimize.linear_sum_assignment``, the default here). The optimal value is
        never below the greedy one.

    Returns
    -------
    Score
        ``value`` (mean of the matched congruences over the ``rank(b)`` components of
        ``b``), ``permutation`` and ``congruences``.

    Raises
    ------
    TypeError
        When ``a`` or ``b`` is not a CP model: a ``CPTensor``, a ``CPFit``, a TensorLy
        ``CPTensor`` or a ``(weights, factors)`` pair (see :func:`cptensor.as_cp`).
    ValueError
        When the shapes differ or ``rank(a) < rank(b)``.

    Examples
    --------
    >>> import numpy as np
    >>> from cptensor import CPTensor, permute
    >>> rng = np.random.default_rng(0)
    >>> b = CPTensor(None, [rng.standard_normal((n, 3)) for n in (4, 5, 6)])
    >>> s = score(permute(b, [2, 0, 1]), b)
    >>> round(s.value, 12), s.permutation.tolist()
    (1.0, [1, 2, 0])
    """
    c = congruence_matrix(a, b, weight_penalty=weight_penalty)
    ra, rb = c.shape
    perm = -np.ones(ra, dtype=np.int64)
    if greedy:
        work = c.copy()
        total = 0.0
        for _ in range(rb):
            # pyttb scans in column-major (Fortran) order: ties go to the first there.
            idx = int(np.argmax(work.reshape(-1, order="F")))
            i, j = idx % ra, idx // ra
            total += work[i, j]
            work[i, :] = -10
            work[:, j] = -10
            perm[j] = i
    else:
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(c, maximize=True)
        perm[cols] = rows
        total = float(c[rows, cols].sum())
    matched = perm[:rb].copy()
    rest = np.array([i for i in range(ra) if i not in set(matched.tolist())], dtype=np.int64)
    perm = np.concatenate([matched, rest])
    congr = c[matched, np.arange(rb)]
    value = float(total / rb) if rb else 1.0
    return Score(value=value, permutation=perm, congruences=congr)


def congruence(
    a: CPTensor, b: CPTensor, *, weight_penalty: bool = True, greedy: bool = False
) -> np.ndarray:
    """Per-component Tucker congruence of ``b``'s components with their match in ``a``.

    The matching is :func:`score`'s; entry ``j`` is ``Π_n |cos(a_n,π(j), b_n,j)|``, times
    the weight penalty unless ``weight_penalty=False`` (the weights count by default:
    two components with the same directions but very different magnitudes are not the
    same component).

    >>> import numpy as np
    >>> from cptensor import CPTensor
    >>> a = CPTensor(np.array([1.0, 2.0]), [np.eye(2), np.eye(2)])
    >>> b = CPTensor(np.array([1.0, 1.0]), [np.eye(2), np.eye(2)])
    >>> congruence(a, b).tolist(), congruence(a, b, weight_penalty=False).tolist()
    ([1.0, 0.5], [1.0, 1.0])
    """
    return score(a, b, weight_penalty=weight_penalty, greedy=greedy).congruences

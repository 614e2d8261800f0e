"""Ranks of unfoldings and of stacks of matrices: ``multilinear_rank``, ``matrix_rank_profile``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._backend import Array, is_array, namespace, shape_tuple, to_numpy
from ..errors import CPTensorError, CPTensorTypeError
from ..operator import is_operator
from ..products import unfold

__all__ = ["MultilinearRank", "RankProfile", "matrix_rank_profile", "multilinear_rank"]


def _eps(dtype: Any) -> float:
    name = str(dtype).split(".")[-1]
    table = {"float16": 2.0**-10, "bfloat16": 2.0**-7, "float32": 2.0**-23}
    return table.get(name, float(np.finfo(np.float64).eps))


def _check_rtol(rtol: Any) -> float | None:
    if rtol is None:
        return None
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float, np.floating)):
        raise CPTensorTypeError(f"rtol must be a float or None, got {type(rtol).__name__}")
    if not 0 <= float(rtol) < 1:
        raise CPTensorError(f"rtol must be in [0, 1), got {rtol}")
    return float(rtol)


@dataclass(frozen=True)
class MultilinearRank:
    """Result of :func:`multilinear_rank`.

    Attributes
    ----------
    ranks:
        The numerical rank of each mode-``n`` unfolding.
    spectra:
        The singular values of each unfolding, descending (float64 NumPy arrays).
    rtol:
        The relative tolerance used per mode: singular values above ``rtol[n] · σ_max``
        count.

    Examples
    --------
    >>> import numpy as np
    >>> res = multilinear_rank(np.ones((2, 3, 4)))
    >>> res.ranks, [s.shape for s in res.spectra]
    ((1, 1, 1), [(2,), (3,), (4,)])
    """

    ranks: tuple[int, ...]
    spectra: tuple[np.ndarray, ...]
    rtol: tuple[float, ...]


def multilinear_rank(x: Any, *, rtol: float | None = None) -> MultilinearRank:
    """Numerical rank of every unfolding of ``x`` (its multilinear, or Tucker, rank).

    For a dense ``x`` the singular values of each unfolding are computed directly (an SVD
    of ``unfold(x, n)``, in ``x``'s backend). For a
    :class:`~cptensor.operator.TensorOperator` with an ``unfolding_gram(mode)`` or
    ``gram(mode)`` method (both ``cptensor.structured`` classes) they are the square roots
    of the eigenvalues of the Gram matrix ``X_(n) X_(n)ᵀ``, which resolves singular values
    only down to about ``sqrt(eps) · σ_max``.

    Parameters
    ----------
    x:
        Dense array or operator.
    rtol:
        Relative tolerance; default ``max(I_n, ∏_{k≠n} I_k) · eps`` of ``x``'s dtype (as
        ``numpy.linalg.matrix_rank``), and at least ``sqrt(eps)`` for operators.

    Returns
    -------
    MultilinearRank

    Examples
    --------
    >>> import numpy as np
    >>> from cptensor import CPTensor, reconstruct
    >>> rng = np.random.default_rng(0)
    >>> x = reconstruct(CPTensor(None, [rng.standard_normal((n, 2)) for n in (4, 5, 6)]))
    >>> multilinear_rank(x).ranks
    (2, 2, 2)
    """
    rtol = _check_rtol(rtol)
    if is_operator(x):
        gram = getattr(x, "unfolding_gram", None) or getattr(x, "gram", None)
        if gram is None:
            raise CPTensorTypeError(
                "multilinear_rank needs x.unfolding_gram(mode) or x.gram(mode) for an "
                f"operator; {type(x).__name__} "
                "does not provide it"
            )
        shape = tuple(int(s) for s in x.shape)
        eps = _eps(x.dtype)
    elif is_array(x):
        namespace(x, names=["x"])
        shape = shape_tuple(x)
        eps = _eps(x.dtype)
    else:
        raise CPTensorTypeError(f"x must be an array or a TensorOperator, got {type(x).__name__}")
    total = int(np.prod(shape))
    ranks, spectra, tols = [], [], []
    for n in range(len(shape)):
        if is_operator(x):
            g = to_numpy(gram(n)).astype(np.float64)
            ev = np.linalg.eigvalsh((g + g.T) / 2)[::-1]
            s = np.sqrt(np.clip(ev, 0, None))
            tol = (
                rtol
                if rtol is not None
                else max(max(shape[n], total // shape[n]) * eps, np.sqrt(eps))
            )
        else:
            xp = namespace(x)
            s = to_numpy(xp.linalg.svdvals(unfold(x, n))).astype(np.float64)
            tol = rtol if rtol is not None else max(shape[n], total // shape[n]) * eps
        smax = s[0] if s.size else 0.0
        ranks.append(int(np.sum(s > tol * smax)) if smax > 0 else 0)
        spectra.append(s)
        tols.append(float(tol))
    return MultilinearRank(tuple(ranks), tuple(spectra), tuple(tols))


@dataclass(frozen=True)
class RankProfile:
    """Result of :func:`matrix_rank_profile`: one entry per matrix of the stack.

    Attributes
    ----------
    numerical:
        Number of singular values above ``rtol · σ_max`` (int array).
    stable:
        Stable rank ``‖M‖_F² / ‖M‖_2² = Σσ² / σ_max²`` (between 1 and the rank).
    effective:
        Effective rank (Roy & Vetterli 2007): ``exp(H(p))`` with ``p_i = σ_i / Σσ`` and
        ``H`` the Shannon entropy.
    spectra:
        Singular values of each matrix, descending (float64).

    Examples
    --------
    >>> import numpy as np
    >>> matrix_rank_profile([np.eye(4), np.ones((3, 5))]).rows()[1]
    {'index': 1, 'numerical': 1, 'stable': 1.0, 'effective': 1.0}
    """

    numerical: np.ndarray
    stable: np.ndarray
    effective: np.ndarray
    spectra: tuple[np.ndarray, ...]

    def __len__(self) -> int:
        return len(self.spectra)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per matrix: index, numerical, stable and effective rank."""
        return [
            {
                "index": i,
                "numerical": int(self.numerical[i]),
                "stable": float(self.stable[i]),
                "effective": float(self.effective[i]),
            }
            for i in range(len(self))
        ]


def _lowrank_singular_values(u: Array, v: Array, i: int) -> tuple[np.ndarray, float, int]:
    """Singular values of ``U Vᵀ`` from thin QRs of ``U`` and ``V`` (no m×n matrix)."""
    namespace(u, v, names=[f"matrices[{i}][0]", f"matrices[{i}][1]"])
    if u.ndim != 2 or v.ndim != 2 or int(u.shape[1]) != int(v.shape[1]):
        raise CPTensorError(
            f"matrices[{i}] is a pair (U, V) with shapes {shape_tuple(u)} and "
            f"{shape_tuple(v)}; expected (m, s) and (n, s) so that U Vᵀ is m × n"
        )
    eps = _eps(u.dtype)
    un = to_numpy(u).astype(np.float64)
    vn = to_numpy(v).astype(np.float64)
    _, ru = np.linalg.qr(un)
    _, rv = np.linalg.qr(vn)
    s = np.linalg.svd(ru @ rv.T, compute_uv=False)
    return s, eps, max(un.shape[0], vn.shape[0])


def matrix_rank_profile(matrices: Any, *, rtol: float | None = None) -> RankProfile:
    """Numerical, stable and effective rank of each matrix of a stack.

    What a LoRA of each matrix would need: the numerical rank is the exact need, the
    stable and effective ranks say how many directions carry the energy.

    Parameters
    ----------
    matrices:
        A 3-D array ``(k, m, n)``, a sequence of 2-D arrays, or a sequence of pairs
        ``(U, V)`` standing for ``U Vᵀ`` (a LoRA update ``B A`` is ``(B, A.T)``), whose
        singular values come from two thin QRs and an ``s × s`` SVD, never the ``m × n``
        matrix. Kinds may be mixed. Spectra are computed in float64 NumPy.
    rtol:
        Relative tolerance for the numerical rank; default ``max(m, n) · eps`` of each
        matrix's dtype.

    Returns
    -------
    RankProfile

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> b, a = rng.standard_normal((50, 4)), rng.standard_normal((4, 40))
    >>> p = matrix_rank_profile([b @ a, (b, a.T), np.eye(3)])
    >>> p.numerical.tolist()
    [4, 4, 3]
    >>> bool(np.isclose(p.stable[0], p.stable[1])), round(float(p.effective[2]), 6)
    (True, 3.0)
    """
    rtol = _check_rtol(rtol)
    if is_array(matrices):
        if matrices.ndim != 3:
            raise CPTensorError(
                f"matrices as one array must be 3-D (k, m, n), got shape {shape_tuple(matrices)}"
            )
        items: Sequence[Any] = [matrices[i] for i in range(int(matrices.shape[0]))]
    elif isinstance(matrices, Sequence) and not isinstance(matrices, str):
        items = list(matrices)
    else:
        raise CPTensorTypeError(
            "matrices must be a 3-D array, or a sequence of 2-D arrays or (U, V) pairs, "
            f"got {type(matrices).__name__}"
        )
    if not items:
        raise CPTensorError("matrices must hold at least one matrix")
    nums, stables, effs, spectra = [], [], [], []
    for i, m in enumerate(items):
        if isinstance(m, (tuple, list)):
            if len(m) != 2:
                raise CPTensorError(
                    f"matrices[{i}] is a sequence of length {len(m)}, expected (U, V)"
                )
            s, eps, big = _lowrank_singular_values(m[0], m[1], i)
        elif is_array(m):
            if m.ndim != 2:
                raise CPTensorError(f"matrices[{i}] must be 2-D, got shape {shape_tuple(m)}")
            eps = _eps(m.dtype)
            big = max(shape_tuple(m))
            s = np.linalg.svd(to_numpy(m).astype(np.float64), compute_uv=False)
        else:
            raise CPTensorTypeError(
                f"matrices[{i}] must be a 2-D array or a (U, V) pair, got {type(m).__name__}"
            )
        tol = rtol if rtol is not None else big * eps
        smax = float(s[0]) if s.size else 0.0
        if smax > 0:
            nums.append(int(np.sum(s > tol * smax)))
            stables.append(float(np.sum(s**2) / smax**2))
            p = s[s > 0] / np.sum(s)
            effs.append(float(np.exp(-np.sum(p * np.log(p)))))
        else:
            nums.append(0)
            stables.append(0.0)
            effs.append(0.0)
        spectra.append(s)
    return RankProfile(
        numerical=np.asarray(nums, dtype=np.int64),
        stable=np.asarray(stables),
        effective=np.asarray(effs),
        spectra=tuple(spectra),
    )

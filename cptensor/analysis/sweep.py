"""Rank selection: fit a range of ranks from several starts, diagnose each, recommend one."""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._backend import Array, is_array, namespace, scalar, shape_tuple
from ..cp import CPTensor
from ..errors import CPTensorError, CPTensorKeyError, CPTensorTypeError
from ..operator import is_operator
from ..products import mttkrp
from ..reconstruct import reconstruct
from .diagnostics import DEGENERACY_THRESHOLD, core_consistency, degeneracy
from .score import score

__all__ = ["RankSweep", "rank_sweep"]

#: Default thresholds of :meth:`RankSweep.recommend`.
CC_THRESHOLD = 80.0
STABILITY_THRESHOLD = 0.9

_RULE = (
    "the largest swept rank whose core consistency >= {cc} %, stability (mean pairwise "
    "factor match score of the best starts) >= {st} when measured, and degeneracy >= "
    "{dg}; None when no rank passes"
)


def _check_ranks(ranks: Any) -> list[int]:
    if isinstance(ranks, (int, np.integer)) and not isinstance(ranks, bool):
        ranks = [ranks]
    if isinstance(ranks, (str, bytes)) or not isinstance(ranks, Iterable):
        raise CPTensorTypeError(
            f"ranks must be an iterable of positive ints (e.g. range(1, 6)), got "
            f"{type(ranks).__name__}"
        )
    out = []
    for r in ranks:
        if isinstance(r, bool) or not isinstance(r, (int, np.integer)):
            raise CPTensorTypeError(
                f"ranks must hold positive ints, got {r!r} ({type(r).__name__})"
            )
        if int(r) < 1:
            raise CPTensorError(f"ranks must hold positive ints (>= 1), got {int(r)}")
        out.append(int(r))
    if not out:
        raise CPTensorError("ranks must name at least one rank, got an empty iterable")
    return sorted(set(out))


@dataclass(frozen=True)
class RankSweep:
    """Result of :func:`rank_sweep`.

    Attributes
    ----------
    rows:
        One dict per rank (ascending): ``rank``, ``best_fit``, ``worst_fit``,
        ``fit_spread`` (best − worst over the starts), ``core_consistency`` (of the best
        start, percent; NaN when its core would be too large), ``stability`` (mean
        pairwise :func:`~cptensor.analysis.score`, without weight penalty, among the (at
        most 3) best starts whose relative error is within 10 % of the best one; NaN when
        only one start gets there), ``degeneracy`` (of the best start), ``n_iter`` and
        ``converged`` (of the best start), ``seconds`` (all starts), ``note``.
    fits:
        ``{rank: (CPFit, …)}``, the starts of each rank sorted by fit, best first.
    shape:
        Shape of the analysed tensor.

    Examples
    --------
    >>> import json
    >>> import numpy as np
    >>> from cptensor import CPTensor, reconstruct
    >>> rng = np.random.default_rng(1)
    >>> x = reconstruct(CPTensor(None, [rng.standard_normal((n, 2)) for n in (5, 6, 7)]))
    >>> sweep = rank_sweep(x, [1, 2, 3], n_starts=2, seed=0)
    >>> sweep.ranks, sweep.recommended_rank
    ([1, 2, 3], 2)
    >>> [round(r["best_fit"], 3) for r in sweep.table(as_frame=False)][:2]
    [0.295, 1.0]
    >>> json.loads(sweep.to_json())["recommended_rank"]
    2
    """

    rows: tuple[dict[str, Any], ...]
    fits: Mapping[int, tuple[Any, ...]] = field(repr=False)
    shape: tuple[int, ...] = ()

    @property
    def ranks(self) -> list[int]:
        """The swept ranks, ascending."""
        return [int(r["rank"]) for r in self.rows]

    def best(self, rank: int) -> Any:
        """The best ``CPFit`` of ``rank``."""
        if rank not in self.fits:
            raise CPTensorKeyError(f"rank {rank} was not swept; swept ranks: {self.ranks}")
        return self.fits[rank][0]

    def recommend(
        self,
        *,
        cc_threshold: float = CC_THRESHOLD,
        stability_threshold: float = STABILITY_THRESHOLD,
        degeneracy_threshold: float = DEGENERACY_THRESHOLD,
    ) -> int | None:
        """The recommended rank under the given thresholds.

        Rule: the largest swept rank whose core consistency is ``>= cc_threshold``
        (percent), stability ``>= stability_threshold`` (skipped where not measured, e.g.
        with one start) and degeneracy ``>= degeneracy_threshold``; ``None`` when no rank
        passes. Above the true rank the extra components fit noise: core consistency
        collapses and different starts put the extra component in different places
        (low stability); it takes both to pass. Ranks below the true rank are not
        required to be stable: under-factored models often have several equally good
        local optima.
        """
        best = None
        for row in self.rows:
            cc, st, dg = row["core_consistency"], row["stability"], row["degeneracy"]
            ok = (
                not math.isnan(cc)
                and cc >= cc_threshold
                and (math.isnan(st) or st >= stability_threshold)
                and dg >= degeneracy_threshold
            )
            if ok:
                best = int(row["rank"])
        return best

    @property
    def recommended_rank(self) -> int | None:
        """:meth:`recommend` with the default thresholds: the largest swept rank with
        core consistency >= 80 %, stability >= 0.9 (when measured) and degeneracy
        >= −0.85; None when no rank passes."""
        return self.recommend()

    def table(self, as_frame: bool | None = None) -> Any:
        """The rows as a pandas ``DataFrame`` or a list of dicts.

        ``as_frame=None`` gives a DataFrame when pandas is installed and a list of dicts
        otherwise; ``True`` requires pandas; ``False`` always gives the list.
        """
        rows = [dict(r) for r in self.rows]
        if as_frame is False:
            return rows
        try:
            import pandas as pd
        except ImportError:
            if as_frame:
                raise ImportError("table(as_frame=True) needs pandas; install it") from None
            return rows
        return pd.DataFrame(rows).set_index("rank")

    def to_json(self, **kwargs: Any) -> str:
        """JSON text: shape, rows (NaN as null), the recommended rank and the rule."""

        def clean(v: Any) -> Any:
            if isinstance(v, float) and not math.isfinite(v):
                return None
            return v

        doc = {
            "shape": list(self.shape),
            "recommended_rank": self.recommended_rank,
            "rule": _RULE.format(cc=CC_THRESHOLD, st=STABILITY_THRESHOLD, dg=DEGENERACY_THRESHOLD),
            "rows": [{k: clean(v) for k, v in r.items()} for r in self.rows],
        }
        return json.dumps(doc, **kwargs)

    def plot(self, *, title: str | None = None) -> Any:
        """A matplotlib ``Figure``: fit, core consistency and stability against rank.

        The recommended rank is marked. matplotlib is imported here (only); save the
        figure with ``fig.savefig("sweep.png")``.
        """
        try:
            from matplotlib.figure import Figure
        except ImportError:
            raise ImportError("RankSweep.plot needs matplotlib; install it") from None
        ranks = self.ranks
        fig = Figure(figsize=(6.0, 7.0), layout="constrained")
        axes = fig.subplots(3, 1, sharex=True)
        best = [r["best_fit"] for r in self.rows]
        worst = [r["worst_fit"] for r in self.rows]
        axes[0].plot(ranks, best, "o-", label="best start")
        axes[0].plot(ranks, worst, "x:", color="grey", label="worst start")
        axes[0].set_ylabel("fit (1 − rel. error)")
        axes[0].legend(loc="lower right")
        cc = [r["core_consistency"] for r in self.rows]
        axes[1].plot(ranks, cc, "o-", color="C1")
        axes[1].axhline(CC_THRESHOLD, color="grey", ls="--", lw=0.8)
        axes[1].set_ylabel("core consistency (%)")
        low = max(-100.0, min([c for c in cc if math.isfinite(c)] + [0.0]) - 5)
        axes[1].set_ylim(low, 105)
        clipped = [(r, c) for r, c in zip(ranks, cc) if math.isfinite(c) and c < low]
        if clipped:  # far below the axis: mark them at its bottom with their value
            axes[1].plot([r for r, _ in clipped], [low] * len(clipped), "v", color="C1")
            for r, c in clipped:
                axes[1].annotate(
                    f"{c:.3g}",
                    (r, low),
                    textcoords="offset points",
                    xytext=(0, 6),
                    ha="center",
                    fontsize=7,
                )
        st = [r["stability"] for r in self.rows]
        axes[2].plot(ranks, st, "o-", color="C2")
        axes[2].axhline(STABILITY_THRESHOLD, color="grey", ls="--", lw=0.8)
        axes[2].set_ylabel("stability (score)")
        axes[2].set_xlabel("rank")
        axes[2].set_ylim(-0.05, 1.05)
        axes[2].set_xticks(ranks)
        rec = self.recommended_rank
        if rec is not None:
            for ax in axes:
                ax.axvline(rec, color="C3", alpha=0.4, lw=6)
        fig.suptitle(title or f"rank sweep, shape {self.shape} (recommended: {rec})")
        return fig


# -- warm starts --------------------------------------------------------------------------
def _residual_component(
    x: Any, cp: CPTensor, resid: Array | None, rng: np.random.Generator, n_iter: int = 25
) -> CPTensor:
    """``cp`` plus one rank-1 component fitted to the residual by the higher-order power
    method, scaled optimally: the loss of the result is never above that of ``cp``."""
    xp = cp.xp
    like = cp.factors[0]
    vecs = []
    for size in cp.shape:
        v = rng.standard_normal((size, 1))
        v /= np.linalg.norm(v)
        vecs.append(xp.asarray(v, dtype=like.dtype, device=cp.device))

    def resid_mttkrp(n: int) -> Array:
        if resid is not None:
            return mttkrp(resid, vecs, n)
        m = x.mttkrp(vecs, n)
        coef = cp.weights
        for k, f in enumerate(cp.factors):
            if k != n:
                coef = coef * (vecs[k].T @ f)[0]
        return m - cp.factors[n] @ coef[:, None]

    sigma = 0.0
    for _ in range(n_iter):
        for n in range(cp.ndim):
            m = resid_mttkrp(n)
            nrm = scalar(xp.linalg.vector_norm(m))
            if nrm == 0:
                break
            vecs[n] = m / nrm
        sigma = scalar(xp.sum(resid_mttkrp(0) * vecs[0]))
    weights = xp.concat([cp.weights, xp.asarray([sigma], dtype=like.dtype, device=cp.device)])
    factors = [xp.concat([f, v], axis=1) for f, v in zip(cp.factors, vecs)]
    return CPTensor(weights, factors)


def _warm_start(
    x: Any, prev: CPTensor, rank: int, mask: Array | None, rng: np.random.Generator
) -> CPTensor:
    cp = prev
    while cp.rank < rank:
        if is_operator(x):
            resid = None
        else:
            xp = namespace(x)
            resid = x - reconstruct(cp)
            if mask is not None:
                resid = xp.where(mask, resid, xp.zeros_like(resid))
        cp = _residual_component(x, cp, resid, rng)
    return cp


# -- the sweep ----------------------------------------------------------------------------
def rank_sweep(
    x: Any,
    ranks: Iterable[int],
    *,
    n_starts: int = 5,
    seed: int | None = None,
    fit_kwargs: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> RankSweep:
    """Fit CP models of each rank from several starts and diagnose them.

    For every rank (ascending) ``n_starts`` ALS fits (:func:`cptensor.fit.fit_als`) are
    run and ranked by fit. The starts are:

    1. from the second swept rank on, a *warm start*: the best model of the previous
       rank plus one new component per missing rank, each the best rank-1 approximation
       (higher-order power method) of the current residual, optimally scaled. Its loss
       is at most the previous rank's best loss, and ALS never increases the loss, so
       **the best fit never decreases with rank** by construction (differences at
       round-off level, below 1e-9, are clamped and noted);
    2. ``init="svd"``;
    3. ``init="random"`` with seeds drawn from ``seed``.

    For each rank the table holds the best and worst fit, their spread, the core
    consistency and degeneracy of the best start, and the stability (mean pairwise
    factor match score, without weight penalty, among the (at most 3) best starts whose
    relative error is within 10 % of the best: starts stuck in clearly worse local minima
    say nothing about the uniqueness of the best model; NaN when only one start gets
    there). :attr:`RankSweep.recommended_rank` is the largest swept rank with core
    consistency >= 80 %, stability >= 0.9 (when measured) and degeneracy >= −0.85 (see
    :meth:`RankSweep.recommend` for the reasoning and other thresholds).

    Parameters
    ----------
    x:
        Dense array (NumPy or torch) or :class:`~cptensor.operator.TensorOperator`. NaNs
        in a dense ``x`` are missing values: a mask is built (unless ``fit_kwargs`` holds
        one) and the core consistency uses model-imputed values there.
    ranks:
        Positive ints (any order, duplicates dropped), e.g. ``range(1, 7)``.
    n_starts:
        Fits per rank, >= 1.
    seed:
        Seed of the random starts (same seed, same sweep).
    fit_kwargs:
        Extra keyword arguments for ``fit_als`` (e.g. ``max_iter``, ``tol``, ``mask``);
        ``init`` and ``seed`` are chosen by the sweep and may not be given.
    progress:
        Show a tqdm progress bar over all fits.

    Returns
    -------
    RankSweep

    Raises
    ------
    TypeError, ValueError
        For ranks that are not positive ints, ``n_starts < 1``, or forbidden
        ``fit_kwargs``.

    Examples
    --------
    >>> import numpy as np
    >>> from cptensor import CPTensor, reconstruct
    >>> rng = np.random.default_rng(0)
    >>> x = reconstruct(CPTensor(None, [rng.standard_normal((n, 2)) for n in (6, 7, 8)]))
    >>> x = x + 0.01 * np.linalg.norm(x) / np.sqrt(x.size) * rng.standard_normal(x.shape)
    >>> sweep = rank_sweep(x, range(1, 4), n_starts=2, seed=0)
    >>> sweep.recommended_rank
    2
    """
    from ..fit import fit_als

    rank_list = _check_ranks(ranks)
    if isinstance(n_starts, bool) or not isinstance(n_starts, (int, np.integer)):
        raise CPTensorTypeError(f"n_starts must be an int >= 1, got {type(n_starts).__name__}")
    if int(n_starts) < 1:
        raise CPTensorError(f"n_starts must be >= 1, got {int(n_starts)}")
    n_starts = int(n_starts)
    kwargs = dict(fit_kwargs or {})
    for bad in ("init", "seed", "rank", "progress"):
        if bad in kwargs:
            raise CPTensorError(
                f"fit_kwargs must not contain {bad!r}: rank_sweep chooses it (got "
                f"fit_kwargs keys {sorted(kwargs)})"
            )
    op = is_operator(x)
    if op:
        shape = tuple(int(s) for s in x.shape)
        mask = None
        if "mask" in kwargs:
            raise CPTensorError("fit_kwargs['mask'] is not supported for a TensorOperator x")
    elif is_array(x):
        xp = namespace(x)
        shape = shape_tuple(x)
        mask = kwargs.get("mask")
        if mask is None:
            nan = xp.isnan(x)
            if bool(xp.any(nan)):
                mask = ~nan
        if mask is not None:
            mask = xp.astype(mask, xp.bool)
            x = xp.where(mask, x, xp.zeros_like(x))  # a new array: the input is untouched
            kwargs["mask"] = mask
    else:
        raise CPTensorTypeError(
            f"x must be an array (NumPy or torch) or a TensorOperator, got {type(x).__name__}"
        )
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, 2**31 - 1, size=(len(rank_list), n_starts))
    warm_rng = np.random.default_rng(rng.integers(0, 2**31 - 1))

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(rank_list) * n_starts, desc="rank sweep")

    rows: list[dict[str, Any]] = []
    fits: dict[int, tuple[Any, ...]] = {}
    prev_best = None
    prev_fit = -math.inf
    try:
        for ri, rank in enumerate(rank_list):
            start_t = time.perf_counter()
            starts: list[tuple[str, Any]] = []
            if prev_best is not None:
                starts.append(("warm", _warm_start(x, prev_best.cp, rank, mask, warm_rng)))
            if len(starts) < n_starts:
                starts.append(("svd", "svd"))
            while len(starts) < n_starts:
                starts.append(("random", "random"))
            results = []
            for si, (_, init) in enumerate(starts):
                if isinstance(init, CPTensor):
                    res = fit_als(x, init, seed=int(seeds[ri, si]), **kwargs)
                else:
                    res = fit_als(x, rank, init=init, seed=int(seeds[ri, si]), **kwargs)
                results.append(res)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(rank=rank, fit=f"{res.fit:.4f}")
            results.sort(key=lambda r: -r.fit)
            best = results[0]
            note = []
            best_fit = float(best.fit)
            if best_fit < prev_fit:
                if prev_fit - best_fit <= 1e-9:
                    note.append(f"best fit clamped from {best_fit!r} (round-off)")
                    best_fit = prev_fit
                else:
                    note.append("best fit below the previous rank's (warm start lost?)")
            try:
                cc = (
                    core_consistency(x, best.cp, mask=mask)
                    if not op
                    else core_consistency(x, best.cp)
                )
            except ValueError as err:
                if "max_core_entries" not in str(err):
                    raise
                cc = math.nan
                note.append("core too large for core consistency")
            # Stability compares only starts that (nearly) reach the best fit (relative
            # error within 10 % of the best): a start stuck in a clearly worse local
            # minimum says nothing about the uniqueness of the best model.
            err0 = float(best.rel_error)
            near = [r for r in results if float(r.rel_error) <= 1.1 * err0 + 1e-6]
            top = near[:3]
            if len(top) >= 2:
                pair = [
                    score(a.cp, b.cp, weight_penalty=False).value
                    for a, b in itertools.combinations(top, 2)
                ]
                stab = float(np.mean(pair))
            else:
                stab = math.nan
            fit_values = [float(r.fit) for r in results]
            rows.append(
                {
                    "rank": rank,
                    "best_fit": best_fit,
                    "worst_fit": min(fit_values),
                    "fit_spread": max(fit_values) - min(fit_values),
                    "core_consistency": float(cc),
                    "stability": stab,
                    "degeneracy": degeneracy(best.cp),
                    "n_iter": int(best.n_iter),
                    "converged": bool(best.converged),
                    "seconds": time.perf_counter() - start_t,
                    "note": "; ".join(note),
                }
            )
            fits[rank] = tuple(results)
            prev_best, prev_fit = best, max(prev_fit, best_fit)
    finally:
        if bar is not None:
            bar.close()
    return RankSweep(rows=tuple(rows), fits=fits, shape=shape)

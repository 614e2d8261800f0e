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
from .diagnostics import DEGENERACY_THRESHOLD, _merged_groups, core_consistency, degeneracy
from .score import score

__all__ = ["RULE", "RankSweep", "rank_sweep"]

#: Default thresholds of :meth:`RankSweep.recommend`.
CC_THRESHOLD = 80.0
STABILITY_THRESHOLD = 0.9
#: Criterion (d) asks for a fit gain above ``GAIN_FACTOR`` times the noise floor.
GAIN_FACTOR = 1.0
#: Criterion (d) also asks for a fit gain above this share of the tensor's energy: below
#: it, differences of fit are those of round-off and of how far ALS converged, not data.
GAIN_ROUNDOFF = 1e-10

_RULE = (
    "recommended rank: the largest swept rank that passes (smaller ranks need not pass); "
    "None when no rank passes. A rank R passes when (a) its core consistency, with the "
    "modes smaller than R merged, is >= {cc:g} % where defined; (b) its stability is >= "
    "{st:g} where measured (two or more starts reach the best fit); (c) its degeneracy is "
    ">= {dg:g}; (d) its fit gain is significant: the share of the tensor's energy that it "
    "explains beyond the previous swept rank (beyond zero for the first) exceeds, per "
    "added component, (sum_n sqrt(I_n))^2 / (number of observed entries) of the previous "
    "residual energy, about the most that a rank-1 fit takes from Gaussian noise of that "
    "energy (I_n: the size of mode n), and exceeds {ro:g} of the tensor's energy "
    "(round-off)."
)


#: The rank rule in words, with the default thresholds: used by
#: :attr:`RankSweep.recommended_rank`, :meth:`RankSweep.to_json`, the command line and the
#: documentation, so that all of them state the same rule.
RULE: str = _RULE.format(
    cc=CC_THRESHOLD, st=STABILITY_THRESHOLD, dg=DEGENERACY_THRESHOLD, ro=GAIN_ROUNDOFF
)


def _verdict(
    row: Mapping[str, Any], cc_t: float, st_t: float, dg_t: float, gain_factor: float
) -> tuple[bool, str]:
    """Whether ``row`` passes the rule with these thresholds, and why in a few words."""
    fails, skipped = [], []
    cc, st, dg = row["core_consistency"], row["stability"], row["degeneracy"]
    if math.isnan(cc):
        skipped.append("CC undefined")
    elif cc < cc_t:
        fails.append(f"CC {cc:.4g} < {cc_t:g}")
    if math.isnan(st):
        skipped.append("stability not measured")
    elif st < st_t:
        fails.append(f"stability {st:.2f} < {st_t:g}")
    if not dg >= dg_t:
        fails.append(f"degeneracy {dg:.2f} < {dg_t:g}")
    gain, floor = row["fit_gain"], max(gain_factor * row["gain_floor"], GAIN_ROUNDOFF)
    if not gain > floor:
        fails.append(f"fit gain {gain:.2g} <= floor {floor:.2g}")
    if fails:
        return False, "fails: " + "; ".join(fails)
    return True, "passes" + (f" ({', '.join(skipped)})" if skipped else "")


def _judged(rows: list[dict[str, Any]]) -> None:
    """Add ``passes`` and ``why`` (default thresholds) to each row, in place."""
    for row in rows:
        row["passes"], row["why"] = _verdict(
            row, CC_THRESHOLD, STABILITY_THRESHOLD, DEGENERACY_THRESHOLD, GAIN_FACTOR
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
        start, percent, with the modes smaller than the rank merged, see
        :func:`~cptensor.analysis.core_consistency`; NaN when undefined or when its core
        would be too large), ``cc_variant`` (``"classic"``, ``"merged (…)"`` naming the
        merged mode groups, or ``"undefined"``), ``stability`` (mean pairwise
        :func:`~cptensor.analysis.score`, without weight penalty, among the (at most 3)
        best starts whose relative error is within 10 % of the best one; NaN when only
        one start gets there), ``degeneracy`` (of the best start), ``fit_gain`` (the share
        of ``‖X‖²`` the rank explains beyond the previous swept rank: the drop of
        ``(1 − best_fit)²``), ``gain_floor`` (the noise floor of that gain, see
        :data:`RULE`), ``n_iter`` and ``converged`` (of the best start), ``seconds`` (all
        starts), ``note``, and the verdict of the rule with the default thresholds:
        ``passes`` (bool) and ``why`` (the criteria that failed, or those skipped).
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
    >>> sweep
    RankSweep(shape=(5, 6, 7), ranks=range(1, 4), recommended_rank=2)
    >>> [round(r["best_fit"], 3) for r in sweep.table(as_frame=False)][:2]
    [0.295, 1.0]
    >>> [r["why"] for r in sweep.rows][2][:10]
    'fails: CC '
    >>> json.loads(sweep.to_json())["recommended_rank"]
    2
    """

    rows: tuple[dict[str, Any], ...]
    fits: Mapping[int, tuple[Any, ...]] = field(repr=False)
    shape: tuple[int, ...] = ()

    def __repr__(self) -> str:
        ranks = self.ranks
        if len(ranks) > 2 and ranks == list(range(ranks[0], ranks[-1] + 1)):
            shown = f"range({ranks[0]}, {ranks[-1] + 1})"
        else:
            shown = str(ranks)
        return (
            f"RankSweep(shape={tuple(self.shape)}, ranks={shown}, "
            f"recommended_rank={self.recommended_rank})"
        )

    @property
    def ranks(self) -> list[int]:
        """The swept ranks, ascending."""
        return [int(r["rank"]) for r in self.rows]

    @property
    def rule(self) -> str:
        """The rule of :attr:`recommended_rank` in words (the module constant :data:`RULE`)."""
        return RULE

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
        gain_factor: float = GAIN_FACTOR,
    ) -> int | None:
        """The recommended rank under the given thresholds.

        The rule (:data:`RULE` states it with the default thresholds): the largest swept
        rank that passes; ``None`` when no rank passes. A rank ``R`` passes when

        (a) its core consistency (:func:`~cptensor.analysis.core_consistency` with
            ``merge_small_modes=True``) is ``>= cc_threshold`` percent, where defined.
            The classic diagnostic cannot reach 100 once ``R`` exceeds a mode's size (at
            most ``100 · I_n / R`` for an exact model): on a LoRTA tensor, whose Q, K, V, O
            mode has 4 entries, it would cap every recommendation at 4 or 5. Merging the
            small modes restores 100 for exact models;
        (b) its stability is ``>= stability_threshold``, where measured (two or more
            starts reach the best fit). Above the true rank, different starts put the
            extra component in different places;
        (c) its degeneracy is ``>= degeneracy_threshold`` (no cancelling pair);
        (d) its fit gain is significant: the share of ``‖X‖²`` it explains beyond the
            previous swept rank (beyond the zero model for the first) exceeds
            ``gain_factor`` times the noise floor: per added component, ``(Σ_n √I_n)² /
            (number of entries)`` of the previous residual energy ``E``. A Gaussian
            tensor of energy ``E`` has spectral norm at most about ``√(E / entries) ·
            Σ_n √I_n`` (Gaussian comparison, the tensor analogue of ``√m + √n`` for
            matrices), so a component that explains more than that is not fitted noise.
            The gain must also exceed ``GAIN_ROUNDOFF`` (1e-10) of ``‖X‖²``: below it,
            fits differ by round-off and convergence only. This criterion needs neither
            several starts nor a defined core consistency, so an exact rank-8 tensor's
            rank 9 fails (its gain is about 0) in every case.

        Only the rank itself is judged, not the smaller swept ranks: below the true rank,
        models are often unstable (several equally good local optima of an
        under-factored model) and their core consistency can be low (truncated models of
        collinear components), so asking every smaller rank to pass would make the answer
        depend on how under-factored models happen to behave, and on the number of
        starts. A spurious pass far above the true rank is what (d) guards against: a
        rank that only fits noise does not explain more than the noise floor.
        """
        best = None
        for row in self.rows:
            ok, _ = _verdict(
                row, cc_threshold, stability_threshold, degeneracy_threshold, gain_factor
            )
            if ok:
                best = int(row["rank"])
        return best

    @property
    def recommended_rank(self) -> int | None:
        """:meth:`recommend` with the default thresholds: the largest swept rank that
        passes the rule :data:`RULE`; None when no rank passes."""
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
            "rule": self.rule,
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
    consistency (with the modes smaller than the rank merged,
    ``core_consistency(..., merge_small_modes=True)``) and degeneracy of the best start,
    the stability (mean pairwise factor match score, without weight penalty, among the
    (at most 3) best starts whose relative error is within 10 % of the best: starts
    stuck in clearly worse local minima say nothing about the uniqueness of the best
    model; NaN when only one start gets there), the fit gain over the previous swept
    rank with its noise floor, and whether the rank passes the rule and why.
    :attr:`RankSweep.recommended_rank` is the largest swept rank that passes; the rule
    (:attr:`RankSweep.rule`) needs neither several starts nor a defined core
    consistency, so the answer does not hinge on ``n_starts`` (see
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

    Rank 6 with a 4-wide mode (as the Q, K, V, O mode of a LoRTA tensor) and one start
    per rank: the core consistency merges modes 2 and 3, and rank 7, whose core
    consistency (85.7 = 100 · 6/7, the extra component is empty) would pass, fails on
    its fit gain.

    >>> x = reconstruct(CPTensor(None, [rng.standard_normal((n, 6)) for n in (12, 8, 6, 4)]))
    >>> sweep = rank_sweep(x, range(1, 9), n_starts=1, seed=0)
    >>> sweep.recommended_rank, sweep.rows[5]["cc_variant"]
    (6, 'merged (0), (1), (2, 3)')
    >>> round(sweep.rows[6]["core_consistency"], 1), sweep.rows[6]["why"][:15]
    (85.7, 'fails: fit gain')
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
    prev_rank, prev_resid_sq = 0, 1.0  # the zero model explains nothing
    # What a rank-1 fit takes from Gaussian noise, as a share of the noise's energy: its
    # spectral norm is at most about σ·Σ_n √I_n, and its energy is σ² per observed entry.
    n_entries = math.prod(shape) if mask is None else scalar(namespace(mask).sum(mask))
    noise_floor = sum(math.sqrt(s) for s in shape) ** 2 / max(n_entries, 1)
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
            groups = _merged_groups(shape, rank)
            if groups is None:
                variant = "undefined"
                note.append(
                    f"core consistency undefined: modes smaller than rank {rank} cannot be "
                    "merged into 3 or more groups of size >= the rank"
                )
            elif all(len(g) == 1 for g in groups):
                variant = "classic"
            else:
                variant = "merged " + ", ".join(
                    "(" + ", ".join(str(k) for k in g) + ")" for g in groups
                )
            try:
                cc = core_consistency(x, best.cp, mask=None if op else mask, merge_small_modes=True)
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
            resid_sq = (1.0 - best_fit) ** 2  # share of ‖X‖² left unexplained
            rows.append(
                {
                    "rank": rank,
                    "best_fit": best_fit,
                    "worst_fit": min(fit_values),
                    "fit_spread": max(fit_values) - min(fit_values),
                    "core_consistency": float(cc),
                    "cc_variant": variant,
                    "stability": stab,
                    "degeneracy": degeneracy(best.cp),
                    "fit_gain": prev_resid_sq - resid_sq,
                    "gain_floor": (rank - prev_rank) * noise_floor * prev_resid_sq,
                    "n_iter": int(best.n_iter),
                    "converged": bool(best.converged),
                    "seconds": time.perf_counter() - start_t,
                    "note": "; ".join(note),
                }
            )
            fits[rank] = tuple(results)
            prev_best, prev_fit = best, max(prev_fit, best_fit)
            prev_rank, prev_resid_sq = rank, resid_sq
    finally:
        if bar is not None:
            bar.close()
    _judged(rows)
    return RankSweep(rows=tuple(rows), fits=fits, shape=shape)

"""The tensor-rank analysis of a delta: :func:`analyze_delta` and its :class:`DeltaReport`.

The report's rows are typed records (:class:`CPRow`, :class:`MatrixRow`, :class:`LoraRow`,
:class:`EnergyRow`), read by the Markdown and JSON writers, the figures, the CLI and the
demo alike.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cptensor.errors import CPTensorError, CPTensorTypeError
from cptensor.files import jsonable

from ..layout import target_matrix
from .tensors import Delta, tensor_norm

__all__ = [
    "DEFAULT_ENERGIES",
    "CPRow",
    "DeltaReport",
    "EnergyRow",
    "LoraRow",
    "MatrixRow",
    "analyze_delta",
]

#: Shares of ``‖ΔW‖²`` in the "parameters needed" table.
DEFAULT_ENERGIES = (0.5, 0.8, 0.9, 0.95, 0.99)
_LORTA_MATRICES = ("Q", "K", "V", "O")


@dataclass(frozen=True)
class CPRow:
    """The CP fit of the delta at one rank (every CP tensor of the layout at that rank).

    Attributes
    ----------
    rank : int
    parameters : int
        ``rank × Σ`` mode sizes over the CP tensors: what an adapter of this rank trains.
    fit : float
        ``1 − ‖ΔW − CP‖ / ‖ΔW‖`` over all tensors.
    energy : float
        Share of ``‖ΔW‖²`` captured: ``1 − (1 − fit)²``.
    svd_energy_same_parameters : float
        What per-matrix truncated SVD (LoRA with the best rank per matrix) captures with
        as many parameters (0 when the budget buys no rank-1 term).
    core_consistency : float
        Core consistency (%) of the fit; the lowest of the tensors' when there are
        several (NaN when undefined).
    group_fits : tuple of float
        ``fit`` of each CP tensor.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal((6, 2, 3, 2, 4))
    >>> row = analyze_delta(x, [2], n_starts=1, max_iter=20).cp_rows[0]
    >>> row.rank, row.parameters, 0 < row.energy < 1
    (2, 34, True)
    """

    rank: int
    parameters: int
    fit: float
    energy: float
    svd_energy_same_parameters: float
    core_consistency: float
    group_fits: tuple[float, ...] = ()


@dataclass(frozen=True)
class MatrixRow:
    """One updated matrix: its ranks (what LoRA would need for it) and norm.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.zeros((4, 2, 2, 1, 4)); x[:, 0, 0, 0, 0] = 1.0   # Q of layer 0: rank 1
    >>> analyze_delta(x, [1], n_starts=1).profile_rows[0]
    MatrixRow(layer=0, matrix='Q', numerical=1, stable=1.0, effective=1.0, norm=2.0)
    """

    layer: int
    matrix: str
    numerical: int
    stable: float
    effective: float
    norm: float


@dataclass(frozen=True)
class LoraRow:
    """LoRA with one rank ``rank`` for every matrix: parameters and energy captured.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.zeros((4, 2, 2, 1, 4)); x[:, 0, 0, 0, 0] = 1.0
    >>> analyze_delta(x, [1], n_starts=1).lora_rows   # rank 1 on 4 matrices of 4 × 4
    [LoraRow(rank=1, parameters=32, energy=1.0)]
    """

    rank: int
    parameters: int
    energy: float


@dataclass(frozen=True)
class EnergyRow:
    """The fewest trainable parameters that capture ``energy`` of ``‖ΔW‖²`` with LoRA at
    one rank for every matrix, with per-matrix truncated SVD at the best rank per matrix,
    and with the CP layout (the smallest swept rank reaching it; ``None`` if none).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.zeros((4, 2, 2, 1, 4)); x[:, 0, 0, 0, 0] = 1.0
    >>> analyze_delta(x, [1], n_starts=1, energies=[0.9]).energy_table
    [EnergyRow(energy=0.9, lora_uniform_rank=1, lora_uniform_parameters=32, \
lora_svd_parameters=8, cp_rank=1, cp_parameters=13)]
    """

    energy: float
    lora_uniform_rank: int | None
    lora_uniform_parameters: int | None
    lora_svd_parameters: int
    cp_rank: int | None
    cp_parameters: int | None


def _rows(rows: Iterable[Any]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]


@dataclass(frozen=True)
class DeltaReport:
    """Result of :func:`analyze_delta`.

    Attributes
    ----------
    shapes : tuple of tuple of int
        The shape of each CP tensor of the layout.
    groups : tuple of str
        What each CP tensor holds (``"Q, K, V, O"``; ``"Q, O"`` and ``"K, V"`` under
        grouped-query attention).
    layout : str
        The layout's name.
    norm : float
        ``‖ΔW‖`` over all matrices.
    sweeps : tuple of cptensor.analysis.RankSweep
        The CP rank sweep of each tensor.
    cp_rows : list of CPRow
    profile_rows : list of MatrixRow
    lora_rows : list of LoraRow
    energy_table : list of EnergyRow
    spectra : dict
        ``"layer/matrix"`` → singular values.
    notes : list of str
    seconds : float
    title : str

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal((6, 2, 3, 2, 4))
    >>> report = analyze_delta(x, [1, 2], n_starts=1, max_iter=20)
    >>> report.shape, [row.rank for row in report.cp_rows]
    ((6, 2, 3, 2, 4), [1, 2])
    """

    shapes: tuple[tuple[int, ...], ...]
    groups: tuple[str, ...]
    layout: str
    norm: float
    sweeps: tuple[Any, ...] = field(repr=False)
    cp_rows: list[CPRow] = field(repr=False)
    profile_rows: list[MatrixRow] = field(repr=False)
    lora_rows: list[LoraRow] = field(repr=False)
    energy_table: list[EnergyRow] = field(repr=False)
    spectra: dict[str, list[float]] = field(repr=False)
    notes: list[str] = field(repr=False)
    seconds: float = 0.0
    title: str = "fine-tuned delta"

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of the CP tensor when there is one; the first tensor's otherwise."""
        return self.shapes[0]

    @property
    def recommended_rank(self) -> int | None:
        """The rank :func:`cptensor.analysis.rank_sweep`'s rule recommends; with several
        CP tensors, the smallest of their recommendations (``None`` if one has none)."""
        recs = [s.recommended_rank for s in self.sweeps]
        return None if any(r is None for r in recs) else min(recs)

    def _describe_shapes(self) -> str:
        return "; ".join(
            f"{g}: {s} ({math.prod(s):,} entries)" for g, s in zip(self.groups, self.shapes)
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (NaN as None)."""
        return jsonable(
            {
                "title": self.title,
                "layout": self.layout,
                "shape": list(self.shape),
                "groups": [
                    {"matrices": g, "shape": list(s)} for g, s in zip(self.groups, self.shapes)
                ],
                "norm": self.norm,
                "cp": _rows(self.cp_rows),
                "recommended_rank": self.recommended_rank,
                "sweeps": [json.loads(s.to_json()) for s in self.sweeps],
                "per_matrix": _rows(self.profile_rows),
                "lora_uniform_rank": _rows(self.lora_rows),
                "parameters_for_energy": _rows(self.energy_table),
                "spectra": self.spectra,
                "notes": self.notes,
                "seconds": self.seconds,
            }
        )

    def markdown(self) -> str:
        """The report as Markdown (what :meth:`save` writes to ``report.md``)."""
        lines = [
            f"# Tensor rank of the {self.title}",
            "",
            f"Delta laid out as the {len(self.shapes)} CP tensor(s) of an adapter with layout "
            f"{self.layout!r}: {self._describe_shapes()}; ‖ΔW‖ = {self.norm:.4g}.",
            "",
        ]
        lines += [f"- {n}" for n in self.notes] + [""]
        lines += [
            f"## CP ({self.layout!r} layout) at each rank",
            "",
            "| rank | parameters | fit | energy captured | per-matrix SVD, same parameters "
            "| core consistency (%) |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for r in self.cp_rows:
            cc = r.core_consistency
            cc_s = "n/a" if cc is None or not math.isfinite(cc) else f"{cc:.1f}"
            lines.append(
                f"| {r.rank} | {r.parameters:,} | {r.fit:.4f} | "
                f"{100 * r.energy:.2f}% | {100 * r.svd_energy_same_parameters:.2f}% "
                f"| {cc_s} |"
            )
        wins = [r.rank for r in self.cp_rows if r.energy > r.svd_energy_same_parameters]
        cp_in = f"a CP in the {self.layout!r} layout"
        if not wins:
            reading = (
                "Reading: at every swept rank, per-matrix truncated SVD (LoRA with the best "
                f"rank per matrix) captures more of this delta than {cp_in} with the same "
                "number of parameters: this delta is not low-rank as a tensor across layers, "
                "heads and matrices."
            )
        elif len(wins) == len(self.cp_rows):
            reading = (
                f"Reading: at every swept rank, {cp_in} captures more of this delta than "
                "per-matrix truncated SVD with the same number of parameters: the delta shares "
                "structure across layers, heads and matrices."
            )
        else:
            reading = (
                f"Reading: {cp_in} captures more of this delta than per-matrix truncated SVD "
                f"with the same number of parameters at ranks {wins}, less at the others."
            )
        lines += [
            "",
            reading,
            "",
            f"Recommended CP rank (core consistency, stability and degeneracy rule of "
            f"`rank_sweep`{'; the smallest over the CP tensors' if len(self.sweeps) > 1 else ''}"
            f"): {self.recommended_rank}.",
            "",
        ]
        lines += [
            "## Trainable parameters needed to capture a share of the delta's energy",
            "",
            "| energy | LoRA, one rank for all matrices | LoRA, best rank per matrix "
            f"(truncated SVD) | CP, {self.layout!r} layout |",
            "|---:|---:|---:|---:|",
        ]
        for e in self.energy_table:

            def fmt(v: Any) -> str:
                return "not reached" if v is None else f"{v:,}"

            cp_rank = "" if e.cp_rank is None else f" (r={e.cp_rank})"
            uni_rank = "" if e.lora_uniform_rank is None else f" (r={e.lora_uniform_rank})"
            lines.append(
                f"| {100 * e.energy:.0f}% | {fmt(e.lora_uniform_parameters)}{uni_rank} | "
                f"{fmt(e.lora_svd_parameters)} | {fmt(e.cp_parameters)}{cp_rank} |"
            )
        lines += [
            "",
            'CP ranks are those swept; a share that no swept rank reaches says "not reached".',
            "",
            "## Per-matrix rank profile (what LoRA would need per matrix)",
            "",
            "| layer | matrix | numerical rank | stable rank | effective rank | norm |",
            "|---:|:---:|---:|---:|---:|---:|",
        ]
        for p in self.profile_rows:
            lines.append(
                f"| {p.layer} | {p.matrix} | {p.numerical} | "
                f"{p.stable:.2f} | {p.effective:.2f} | {p.norm:.4g} |"
            )
        lines += [
            "",
            "## Figures",
            "",
            "![rank sweep](rank_sweep.png)",
            "",
            "![parameters for energy](energy_vs_parameters.png)",
            "",
            "![rank profile](rank_profile.png)",
            "",
            f"Analysis took {self.seconds:.1f} s.",
            "",
        ]
        return "\n".join(lines)

    def figures(self) -> dict[str, Any]:
        """``{file name: matplotlib Figure}`` for the three PNGs."""
        from matplotlib.figure import Figure

        figs = {"rank_sweep.png": self._sweep_figure()}
        fig = Figure(figsize=(6.5, 4.5), layout="constrained")
        ax = fig.subplots()
        lu = [(r.parameters, 100 * r.energy) for r in self.lora_rows]
        ax.plot(*zip(*lu), "s-", label="LoRA (same rank r for every matrix)")
        svd = self.spectra.get("_greedy_curve")
        if svd:
            ax.plot(
                svd[0],
                [100 * e for e in svd[1]],
                "-",
                color="grey",
                lw=1,
                label="per-matrix truncated SVD (best ranks)",
            )
        cp = [(r.parameters, 100 * r.energy) for r in self.cp_rows]
        ax.plot(*zip(*cp), "o-", color="C3", label=f"CP, {self.layout!r} layout (rank r)")
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters")
        ax.set_ylabel("share of ‖ΔW‖² captured (%)")
        ax.set_title(f"Parameters needed to capture the {self.title}")
        ax.grid(alpha=0.3)
        ax.legend()
        figs["energy_vs_parameters.png"] = fig
        fig2 = Figure(figsize=(6.5, 3.8), layout="constrained")
        axs = fig2.subplots(1, 2)
        layers = sorted({p.layer for p in self.profile_rows})
        mats = list(dict.fromkeys(p.matrix for p in self.profile_rows))
        L, M = len(layers), len(mats)
        for ax2, key, label in (
            (axs[0], "stable", "stable rank"),
            (axs[1], "effective", "effective rank"),
        ):
            grid = np.full((L, M), np.nan)
            for p in self.profile_rows:
                grid[layers.index(p.layer), mats.index(p.matrix)] = getattr(p, key)
            im = ax2.imshow(grid, cmap="viridis", aspect="auto")
            ax2.set_xticks(range(M), mats)
            ax2.set_yticks(range(L), [str(layer) for layer in layers])
            ax2.set_xlabel("matrix")
            ax2.set_ylabel("layer")
            ax2.set_title(label)
            lo, hi = np.nanmin(grid), np.nanmax(grid)
            for (i, j), v in np.ndenumerate(grid):
                if np.isfinite(v):
                    light = hi > lo and (v - lo) / (hi - lo) > 0.6  # yellow end of viridis
                    color = "k" if light else "w"
                    ax2.text(j, i, f"{v:.1f}", ha="center", va="center", color=color, fontsize=7)
            fig2.colorbar(im, ax=ax2)
        fig2.suptitle("Per-matrix rank of ΔW")
        figs["rank_profile.png"] = fig2
        return figs

    def _sweep_figure(self) -> Any:
        """The rank sweep's figure: :meth:`RankSweep.plot` for one CP tensor; for several,
        the fit of each and of the whole against the rank."""
        if len(self.sweeps) == 1:
            return self.sweeps[0].plot(title=f"CP rank sweep of the {self.title}")
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6.5, 4.5), layout="constrained")
        ax = fig.subplots()
        ranks = [r.rank for r in self.cp_rows]
        for g, label in enumerate(self.groups):
            ax.plot(ranks, [r.group_fits[g] for r in self.cp_rows], "o--", label=label)
        ax.plot(ranks, [r.fit for r in self.cp_rows], "s-", color="k", label="all")
        ax.set_xlabel("CP rank (of every tensor)")
        ax.set_ylabel("fit")
        ax.set_title(f"CP rank sweep of the {self.title}")
        ax.grid(alpha=0.3)
        ax.legend()
        return fig

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``report.md``, ``report.json`` and the PNG figures to ``directory``, as
        one atomic replacement of the directory (a crash leaves the previous report or
        this one, never a mix; other files in the directory are kept).

        Returns the directory (created if needed).
        """
        from cptensor.files import replaced_directory

        out = Path(directory)
        figures = self.figures()
        with replaced_directory(out) as tmp:
            (tmp / "report.json").write_text(json.dumps(self.to_dict(), indent=2))
            (tmp / "report.md").write_text(self.markdown())
            for name, fig in figures.items():
                fig.savefig(tmp / name, dpi=110)
        return out


def _check_ranks(ranks: Any) -> list[int]:
    try:
        out = sorted({int(r) for r in ranks})
        bad = [r for r in ranks if isinstance(r, bool) or int(r) != r or int(r) < 1]
    except (TypeError, ValueError):
        raise CPTensorTypeError(f"ranks must be positive integers; got {ranks!r}") from None
    if not out or bad:
        raise CPTensorError(
            f"ranks must be a non-empty collection of positive integers; got {ranks!r}"
        )
    return out


class _SvdBudget:
    """Per-matrix truncated SVD at the best ranks for a parameter budget: singular
    triplets taken greedily by energy per parameter (a triplet of an ``out × in`` matrix
    costs ``out + in``), which is exact when all matrices cost the same."""

    def __init__(self, spectra: Sequence[np.ndarray], costs: Sequence[int], total: float) -> None:
        sq = np.concatenate([np.square(s) for s in spectra])
        cost = np.concatenate([np.full(len(s), c) for s, c in zip(spectra, costs)])
        order = np.argsort(-sq / cost, kind="stable")
        self.cost = np.cumsum(cost[order])
        self.energy = np.cumsum(sq[order]) / total

    def energy_for(self, budget: int) -> float:
        """Energy share captured with at most ``budget`` parameters."""
        k = int(np.searchsorted(self.cost, budget, side="right"))
        return float(self.energy[k - 1]) if k > 0 else 0.0

    def parameters_for(self, energy: float) -> int:
        """Fewest parameters that capture ``energy``."""
        k = min(int(np.searchsorted(self.energy, energy - 1e-12)), len(self.energy) - 1)
        return int(self.cost[k])

    def curve(self, points: int = 4000) -> list[list[float]]:
        """``[parameters, energy]`` sampled on a log scale (for the figure)."""
        n = len(self.cost)
        idx = np.unique(np.geomspace(1, n, min(n, points)).astype(int)) - 1
        return [[int(self.cost[i]) for i in idx], [float(self.energy[i]) for i in idx]]


def _dense_lorta_matrices(x: np.ndarray) -> Iterable[tuple[int, str, np.ndarray]]:
    """``(layer, matrix, ΔW)`` of a dense ``(d, d_h, H, L, M)`` LoRTA tensor (heads split
    the output of the first three matrices, the input of the fourth, as ``"lorta"``)."""
    _, dh, H, L, M = x.shape
    for layer in range(L):
        for m in range(M):
            split = "in" if M == 4 and m == 3 else "out"
            name = _LORTA_MATRICES[m] if M == 4 else str(m)
            yield layer, name, target_matrix(x[..., layer, m], split, H, dh)


def _matrix_cost(mat: Any) -> int:
    """``out + in`` of a dense ``ΔW`` or of a pair ``(B, Aᵀ)``."""
    if isinstance(mat, tuple):
        return int(mat[0].shape[0] + mat[1].shape[0])
    return int(mat.shape[0] + mat.shape[1])


def _sweep_groups(
    groups: Sequence[Any],
    norms: Sequence[float],
    ranks: list[int],
    kwargs: dict[str, Any],
) -> list[Any]:
    from cptensor.analysis import rank_sweep

    return [rank_sweep(g, ranks, **kwargs) if n > 0 else None for g, n in zip(groups, norms)]


def analyze_delta(
    delta: Any,
    ranks: Sequence[int] | range = range(1, 9),
    *,
    n_starts: int = 2,
    seed: int = 0,
    max_iter: int = 100,
    tol: float = 1e-6,
    energies: Sequence[float] = DEFAULT_ENERGIES,
    progress: bool = False,
    title: str = "fine-tuned delta",
    callback: Callable[[str], None] | None = None,
) -> DeltaReport:
    """Analyse the tensor rank of a fine-tuned delta in the layout of its adapter.

    Every CP tensor of the delta (one under ``"lorta"``; two for a model with
    grouped-query attention) is swept at each rank, and the ranks' fits are combined
    over the tensors: an adapter of rank ``r`` has a rank-``r`` CP in each.

    Parameters
    ----------
    delta : Delta or array
        What the ``extract_*`` functions return, or a dense array of shape
        ``(d, d_h, H, L, M)`` laid out as ``"lorta"``.
    ranks : sequence of int
        CP ranks to sweep (positive).
    n_starts : int
        Fits per rank (see :func:`cptensor.analysis.rank_sweep`).
    seed : int
        Seed of the random starts.
    max_iter : int
        ALS sweeps of every fit, at most.
    tol : float
        ALS tolerance of every fit.
    energies : sequence of float
        Shares of ``‖ΔW‖²`` (in (0, 1]) for the "parameters needed" table.
    progress : bool
        Progress bars for the sweep.
    title : str
        Used in the report's headings.
    callback : callable, optional
        Called with a line of text at each stage (the CLI prints them).

    Returns
    -------
    DeltaReport

    Raises
    ------
    CPTensorError
        Ranks that are not positive integers, or beyond four times a tensor's largest
        mode; a dense delta that is not 5-way; energies outside (0, 1]; a zero delta.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal((6, 2, 3, 2, 4))
    >>> rep = analyze_delta(x, [1, 2], n_starts=1, max_iter=20)
    >>> [r.rank for r in rep.cp_rows], rep.cp_rows[0].parameters
    ([1, 2], 17)
    """
    t0 = time.perf_counter()
    say = callback or (lambda s: None)
    ranks = _check_ranks(ranks)
    es = [float(e) for e in energies]
    if any(not 0 < e <= 1 for e in es):
        raise CPTensorError(f"energies must lie in (0, 1]; got {list(energies)}")
    if isinstance(delta, Delta):
        groups: Sequence[Any] = delta.groups
        shapes = tuple(tuple(int(s) for s in p.shape) for p in delta.plans)
        labels = tuple(delta.group_label(i) for i in range(len(groups)))
        layout = delta.layout.name
        mats: Iterable[tuple[int, str, Any]] = delta.matrices()
        notes = list(delta.notes)
    else:
        x = np.asarray(delta)
        if x.ndim != 5:
            raise CPTensorError(f"delta must be 5-way (d, d_h, H, L, M); got shape {x.shape}")
        groups, shapes = [x], (tuple(int(s) for s in x.shape),)
        labels = (", ".join(_LORTA_MATRICES) if x.shape[4] == 4 else "all",)
        layout, mats, notes = "lorta", _dense_lorta_matrices(x), []
    for shape in shapes:
        if ranks[-1] > 4 * max(shape):
            raise CPTensorError(
                f"ranks up to {ranks[-1]} are out of range for shape {shape}; "
                f"expected ranks <= {4 * max(shape)}"
            )

    say("per-matrix singular values (what LoRA would need for each matrix)")
    from cptensor.analysis import matrix_rank_profile

    profile_rows, spectra, costs = [], {}, []
    for layer, name, mat in mats:
        prof = matrix_rank_profile([mat])
        s = prof.spectra[0]
        spectra[f"{layer}/{name}"] = [float(v) for v in s]
        costs.append(_matrix_cost(mat))
        profile_rows.append(
            MatrixRow(
                layer=layer,
                matrix=name,
                numerical=int(prof.numerical[0]),
                stable=float(prof.stable[0]),
                effective=float(prof.effective[0]),
                norm=float(np.sqrt(np.sum(s**2))),
            )
        )
    values = [np.asarray(v) for v in spectra.values()]
    total = sum(float(np.sum(np.square(v))) for v in values)
    if total <= 0:
        raise CPTensorError("the delta is zero: base and tuned weights are identical")
    lora_rows = []
    for r in range(1, max(len(v) for v in values) + 1):
        e = sum(float(np.sum(np.square(v[:r]))) for v in values) / total
        lora_rows.append(LoraRow(rank=r, parameters=r * sum(costs), energy=e))
        if e > 0.999999:
            break
    svd = _SvdBudget(values, costs, total)
    spectra["_greedy_curve"] = svd.curve()

    what = f"{len(groups)} tensors {list(shapes)}" if len(groups) > 1 else f"a {shapes[0]} tensor"
    say(f"CP rank sweep over ranks {ranks} ({n_starts} start(s) each) of {what}")
    norms = [tensor_norm(g) for g in groups]
    sweeps = _sweep_groups(
        groups,
        norms,
        ranks,
        {
            "n_starts": n_starts,
            "seed": seed,
            "fit_kwargs": {"max_iter": max_iter, "tol": tol},
            "progress": progress,
        },
    )
    per = sum(sum(s) for s in shapes)
    cp_rows = []
    for i, rank in enumerate(ranks):
        fits = [1.0 if s is None else float(s.rows[i]["best_fit"]) for s in sweeps]
        ccs = [float(s.rows[i]["core_consistency"]) for s in sweeps if s is not None]
        finite = [c for c in ccs if math.isfinite(c)]
        res2 = sum(((1.0 - f) * n) ** 2 for f, n in zip(fits, norms))
        rel = math.sqrt(res2 / sum(n * n for n in norms))
        cp_rows.append(
            CPRow(
                rank=rank,
                parameters=rank * per,
                fit=1.0 - rel,
                energy=max(0.0, 1.0 - rel * rel),
                svd_energy_same_parameters=svd.energy_for(rank * per),
                core_consistency=min(finite) if finite else math.nan,
                group_fits=tuple(fits),
            )
        )
    table = []
    for e in es:
        uni = next((r for r in lora_rows if r.energy >= e - 1e-12), None)
        cp = next((r for r in cp_rows if r.energy >= e - 1e-12), None)
        table.append(
            EnergyRow(
                energy=e,
                lora_uniform_rank=None if uni is None else uni.rank,
                lora_uniform_parameters=None if uni is None else uni.parameters,
                lora_svd_parameters=svd.parameters_for(e),
                cp_rank=None if cp is None else cp.rank,
                cp_parameters=None if cp is None else cp.parameters,
            )
        )
    return DeltaReport(
        shapes=shapes,
        groups=labels,
        layout=layout,
        norm=math.sqrt(total),
        sweeps=tuple(s for s in sweeps if s is not None),
        cp_rows=cp_rows,
        profile_rows=profile_rows,
        lora_rows=lora_rows,
        energy_table=table,
        spectra=spectra,
        notes=notes,
        seconds=time.perf_counter() - t0,
        title=title,
    )

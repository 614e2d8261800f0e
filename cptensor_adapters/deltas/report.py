"""The tensor-rank analysis of a delta: :func:`analyze_delta` and its :class:`DeltaReport`.

The report's rows are typed records (:class:`CPRow`, :class:`MatrixRow`, :class:`LoraRow`,
:class:`EnergyRow`), read by the Markdown and JSON writers, the figures, the CLI and the
demo alike. Every report opens with its :class:`~cptensor_adapters.deltas.verdict.Verdict`
(is the delta low tensor rank, and what to train) and gives energy in percent only.
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
from .verdict import (
    COLUMNS,
    ENERGY_UNIT,
    LORTA_MATRICES,
    LOW_RANK_ENERGY_PCT,
    Verdict,
    decide_verdict,
    fmt_converged,
    fmt_core_consistency,
    fmt_pct,
    fmt_stability,
    join_words,
)

__all__ = [
    "DEFAULT_ENERGIES_PCT",
    "CPRow",
    "DeltaReport",
    "EnergyRow",
    "LoraRow",
    "MatrixRow",
    "analyze_delta",
]

#: Shares of ``‖ΔW‖²`` (percent) in the "parameters needed" table.
DEFAULT_ENERGIES_PCT = (50.0, 80.0, 90.0, 95.0, 99.0)


@dataclass(frozen=True)
class CPRow:
    """The CP fit of the delta at one rank (every CP tensor of the layout at that rank).

    Attributes
    ----------
    rank : int
    parameters : int
        ``rank × Σ`` mode sizes over the CP tensors: what an adapter of this rank trains.
    fit : float
        ``1 − ‖ΔW − CP‖ / ‖ΔW‖`` over all tensors (a fraction).
    energy_captured_pct : float
        Share of ``‖ΔW‖²`` captured, in percent: ``100 · (1 − (1 − fit)²)``.
    svd_energy_captured_pct : float
        What per-matrix truncated SVD (LoRA with the best rank per matrix) captures with
        as many parameters, in percent (0 when the budget buys no rank-1 term).
    core_consistency : float
        Core consistency (%) of the fit; the lowest of the tensors' when there are
        several (NaN when undefined).
    stability : float
        Stability of the fit (:func:`cptensor.analysis.rank_sweep`); the lowest of the
        tensors' (NaN when no tensor had two starts near its best).
    converged : tuple of bool
        Whether the best start of each CP tensor converged.
    n_iter : tuple of int
        ALS sweeps of the best start of each CP tensor.
    group_fits : tuple of float
        ``fit`` of each CP tensor.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal((6, 2, 3, 2, 4))
    >>> row = analyze_delta(x, [2], n_starts=1, max_iter=20).cp_rows[0]
    >>> row.rank, row.parameters, 0 < row.energy_captured_pct < 100, len(row.converged)
    (2, 34, True, 1)
    """

    rank: int
    parameters: int
    fit: float
    energy_captured_pct: float
    svd_energy_captured_pct: float
    core_consistency: float
    stability: float = math.nan
    converged: tuple[bool, ...] = ()
    n_iter: tuple[int, ...] = ()
    group_fits: tuple[float, ...] = ()


@dataclass(frozen=True)
class MatrixRow:
    """One updated matrix: its ranks (what LoRA would need for it) and norm.

    Attributes
    ----------
    layer : int
    matrix : str
    numerical : int
        Singular values above ``max(d_out, d_in) · eps · σ₁``: the exact LoRA rank.
    rank_90pct : int
        The smallest LoRA rank capturing 90 % of the matrix's ``‖ΔW‖²``.
    stable : float
        ``‖ΔW‖_F² / σ₁²``.
    effective : float
        ``exp`` of the entropy of ``σᵢ / Σσ``.
    norm : float
        ``‖ΔW‖_F``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.zeros((4, 2, 2, 1, 4)); x[:, 0, 0, 0, 0] = 1.0   # Q of layer 0: rank 1
    >>> analyze_delta(x, [1], n_starts=1).profile_rows[0]
    MatrixRow(layer=0, matrix='Q', numerical=1, rank_90pct=1, stable=1.0, effective=1.0, norm=2.0)
    """

    layer: int
    matrix: str
    numerical: int
    rank_90pct: int
    stable: float
    effective: float
    norm: float


@dataclass(frozen=True)
class LoraRow:
    """LoRA with one rank ``rank`` for every matrix: parameters and energy captured (%).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.zeros((4, 2, 2, 1, 4)); x[:, 0, 0, 0, 0] = 1.0
    >>> analyze_delta(x, [1], n_starts=1).lora_rows   # rank 1 on 4 matrices of 4 × 4
    [LoraRow(rank=1, parameters=32, energy_captured_pct=100.0)]
    """

    rank: int
    parameters: int
    energy_captured_pct: float


@dataclass(frozen=True)
class EnergyRow:
    """The fewest trainable parameters that capture ``energy_pct`` percent of ``‖ΔW‖²``
    with LoRA at one rank for every matrix, with per-matrix truncated SVD at the best rank
    per matrix, and with the CP layout (the smallest swept rank reaching it; ``None`` if
    none).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.zeros((4, 2, 2, 1, 4)); x[:, 0, 0, 0, 0] = 1.0
    >>> analyze_delta(x, [1], n_starts=1, energies_pct=[90]).energy_table
    [EnergyRow(energy_pct=90.0, lora_uniform_rank=1, lora_uniform_parameters=32, \
lora_svd_parameters=8, cp_rank=1, cp_parameters=13)]
    """

    energy_pct: float
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
        ``"layer/matrix"`` → singular values; ``"_greedy_curve"`` → ``[parameters,
        energy captured (%)]`` of LoRA with the best rank per matrix.
    notes : list of str
    verdict : Verdict
        The bottom line: is the delta low tensor rank, and what to train.
    seconds : float
    title : str
    rule : str
        The rank rule of :func:`cptensor.analysis.rank_sweep`, in words.

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
    verdict: Verdict = field(repr=False)
    seconds: float = 0.0
    title: str = "fine-tuned delta"
    rule: str = ""

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
        """A JSON-serialisable dict (NaN as None), the verdict first; energies in percent
        (keys ending in ``_pct``)."""
        return jsonable(
            {
                "title": self.title,
                "verdict": asdict(self.verdict),
                "energy_unit": ENERGY_UNIT,
                "layout": self.layout,
                "shape": list(self.shape),
                "groups": [
                    {"matrices": g, "shape": list(s)} for g, s in zip(self.groups, self.shapes)
                ],
                "norm": self.norm,
                "recommended_rank": self.recommended_rank,
                "rank_rule": self.rule,
                "reading": self.reading,
                "cp": _rows(self.cp_rows),
                "sweeps": [json.loads(s.to_json()) for s in self.sweeps],
                "per_matrix": _rows(self.profile_rows),
                "lora_uniform_rank": _rows(self.lora_rows),
                "parameters_for_energy": _rows(self.energy_table),
                "columns": COLUMNS,
                "spectra": self.spectra,
                "notes": self.notes,
                "seconds": self.seconds,
            }
        )

    @property
    def reading(self) -> str:
        """One sentence: at which swept ranks the CP layout captures more of the delta than
        per-matrix truncated SVD (LoRA with the best rank per matrix) with as many
        parameters."""
        wins = [r.rank for r in self.cp_rows if r.energy_captured_pct > r.svd_energy_captured_pct]
        losses = [r.rank for r in self.cp_rows if r.rank not in wins]
        cp_in = "a CP model" + ("" if self.layout == "lorta" else f" in the {self.layout!r} layout")
        svd = "LoRA with the best rank per matrix (truncated SVD)"
        if not wins:
            return (
                f"At every swept rank, {svd} captures more of this delta than {cp_in} with "
                "the same number of parameters."
            )
        if not losses:
            return (
                f"At every swept rank, {cp_in} captures more of this delta than {svd} with the "
                "same number of parameters."
            )
        s_w, s_l = ("s" if len(wins) > 1 else ""), ("s" if len(losses) > 1 else "")
        return (
            f"{cp_in[0].upper()}{cp_in[1:]} captures more of this delta than {svd} with the "
            f"same number of parameters at rank{s_w} {join_words(wins)}, and less at "
            f"rank{s_l} {join_words(losses)}."
        )

    def _sweep_cells(self, i: int) -> tuple[str, str]:
        """``(converged, rank rule)`` cells of swept rank number ``i``: per CP tensor,
        ``"yes (12)"`` / ``"no (100)"``; the rule's verdict where the sweep gives one."""
        row = self.cp_rows[i]
        conv = fmt_converged(row.converged, row.n_iter)
        rows = [s.rows[i] for s in self.sweeps]
        if not rows or any("passes" not in r for r in rows):
            return conv, ""
        whys = [str(r.get("why") or ("passes" if r["passes"] else "fails")) for r in rows]
        return conv, "; ".join(dict.fromkeys(whys))

    def _rule_sentence(self) -> str:
        rec = self.recommended_rank
        several = " (the smallest over the CP tensors)" if len(self.sweeps) > 1 else ""
        said = (
            "No swept rank passes the rank rule of `rank_sweep`."
            if rec is None
            else f"The rank rule of `rank_sweep` recommends rank {rec}{several}."
        )
        return said + (f" The rule: {self.rule}" if self.rule else "")

    def markdown(self) -> str:
        """The report as Markdown (what :meth:`save` writes to ``report.md``): the verdict
        and the next step first, then the tables, the definitions of their columns and the
        figures."""
        v = self.verdict
        lines = [
            f"# Tensor rank of the {self.title}",
            "",
            f"**Verdict.** {v.text}",
            "",
            f"**Next step.** {v.next_step}",
            "",
            f"*Criterion:* the delta is low tensor rank when {v.criterion}. Energy is "
            "always in percent of ‖ΔW‖²; the columns are defined at the end.",
            "",
            f"Delta laid out as the {len(self.shapes)} CP tensor(s) of an adapter with layout "
            f"{self.layout!r}: {self._describe_shapes()}; ‖ΔW‖ = {self.norm:.4g}.",
            "",
        ]
        if self.notes:
            lines += [f"- {n}" for n in self.notes] + [""]
        cells = [self._sweep_cells(i) for i in range(len(self.cp_rows))]
        with_rule = any(rule for _, rule in cells)
        lines += [
            f"## CP ({self.layout!r} layout) at each rank",
            "",
            "| rank | parameters | fit | energy captured (%) | per-matrix SVD, same parameters "
            "(%) | core consistency (%) | stability | converged (ALS sweeps) |"
            + (" rank rule |" if with_rule else ""),
            "|---:|---:|---:|---:|---:|---:|---:|:---|" + (":---|" if with_rule else ""),
        ]
        for i, r in enumerate(self.cp_rows):
            notes = " ".join(str(s.rows[i].get("note", "")) for s in self.sweeps)
            conv, rule = cells[i]
            lines.append(
                f"| {r.rank} | {r.parameters:,} | {r.fit:.4f} | "
                f"{fmt_pct(r.energy_captured_pct)} | {fmt_pct(r.svd_energy_captured_pct)} | "
                f"{fmt_core_consistency(r.core_consistency, notes)} | "
                f"{fmt_stability(r.stability)} | {conv} |" + (f" {rule} |" if with_rule else "")
            )
        lines += ["", self.reading, "", self._rule_sentence(), ""]
        lines += [
            "## Trainable parameters needed to capture a share of the delta's energy",
            "",
            "| energy (%) | LoRA, one rank for all matrices | LoRA, best rank per matrix "
            f"(truncated SVD) | CP, {self.layout!r} layout |",
            "|---:|---:|---:|---:|",
        ]

        def count(v: int | None) -> str:
            return "not reached" if v is None else f"{v:,}"

        for e in self.energy_table:
            cp_rank = "" if e.cp_rank is None else f" (r={e.cp_rank})"
            uni_rank = "" if e.lora_uniform_rank is None else f" (r={e.lora_uniform_rank})"
            lines.append(
                f"| {e.energy_pct:g} | {count(e.lora_uniform_parameters)}{uni_rank} | "
                f"{count(e.lora_svd_parameters)} | {count(e.cp_parameters)}{cp_rank} |"
            )
        lines += [
            "",
            "## Per-matrix rank profile (what LoRA would need per matrix)",
            "",
            f"| layer | matrix | numerical rank | rank for {LOW_RANK_ENERGY_PCT:g} % energy | "
            "stable rank | effective rank | norm |",
            "|---:|:---:|---:|---:|---:|---:|---:|",
        ]
        for p in self.profile_rows:
            lines.append(
                f"| {p.layer} | {p.matrix} | {p.numerical} | {p.rank_90pct} | "
                f"{p.stable:.3g} | {p.effective:.3g} | {p.norm:.4g} |"
            )
        lines += ["", "## Columns", ""]
        for table, columns in COLUMNS.items():
            lines += [f"{table}:", ""]
            lines += [f"- **{name}**: {text}" for name, text in columns.items()]
            lines.append("")
        lines += [
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

    def _headline(self) -> str:
        v = self.verdict
        return f"low tensor rank (rank {v.rank})" if v.low_tensor_rank else "not low tensor rank"

    def figures(self) -> dict[str, Any]:
        """``{file name: matplotlib Figure}`` for the three PNGs."""
        from matplotlib.figure import Figure

        figs = {"rank_sweep.png": self._sweep_figure()}
        fig = Figure(figsize=(6.5, 4.5), layout="constrained")
        ax = fig.subplots()
        lu = [(r.parameters, r.energy_captured_pct) for r in self.lora_rows]
        ax.plot(
            *zip(*lu),
            "-",
            marker="s",
            ms=4,
            markevery=[i for i in range(len(lu)) if (i + 1) & i == 0],  # ranks 1, 2, 4, 8, …
            label="LoRA, one rank for every matrix (marks: r = 1, 2, 4, …)",
        )
        svd = self.spectra.get("_greedy_curve")
        if svd:
            ax.plot(
                svd[0],
                svd[1],
                "-",
                color="grey",
                lw=1,
                label="LoRA, best rank per matrix (truncated SVD)",
            )
        cp = [(r.parameters, r.energy_captured_pct) for r in self.cp_rows]
        step = max(1, len(cp) // 12)
        ax.plot(
            *zip(*cp),
            "-",
            marker="o",
            ms=5,
            markevery=step,
            color="C3",
            label=f"CP, {self.layout!r} layout (swept ranks)",
        )
        for r in self.cp_rows[::step]:
            ax.annotate(
                f"r={r.rank}",
                (r.parameters, r.energy_captured_pct),
                textcoords="offset points",
                xytext=(4, -10) if r.energy_captured_pct > 50 else (-4, 6),
                ha="left" if r.energy_captured_pct > 50 else "right",
                fontsize=7,
                color="C3",
            )
        ax.axhline(LOW_RANK_ENERGY_PCT, color="k", ls=":", lw=0.8)
        v = self.verdict
        ax.plot(
            [v.parameters],
            [v.energy_captured_pct],
            "*",
            ms=13,
            color="C3",
            mec="k",
            label=f"verdict: rank {v.rank}, {fmt_pct(v.energy_captured_pct)} %",
        )
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters")
        ax.set_ylabel("energy captured (% of ‖ΔW‖²)")
        ax.set_ylim(0, 102)
        ax.set_title(f"{self.title}: {self._headline()}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        figs["energy_vs_parameters.png"] = fig
        fig2 = Figure(figsize=(6.5, 3.8), layout="constrained")
        axs = fig2.subplots(1, 2)
        layers = sorted({p.layer for p in self.profile_rows})
        mats = list(dict.fromkeys(p.matrix for p in self.profile_rows))
        L, M = len(layers), len(mats)
        for ax2, key, label, fmt in (
            (axs[0], "rank_90pct", f"rank for {LOW_RANK_ENERGY_PCT:g} % energy", "{:.0f}"),
            (axs[1], "stable", "stable rank", "{:.1f}"),
        ):
            grid = np.full((L, M), np.nan)
            for p in self.profile_rows:
                grid[layers.index(p.layer), mats.index(p.matrix)] = getattr(p, key)
            im = ax2.imshow(grid, cmap="viridis", aspect="auto")
            ax2.set_xticks(range(M), mats)
            ax2.set_yticks(range(L), [str(layer) for layer in layers])
            ax2.set_xlabel("matrix")
            ax2.set_ylabel("layer")
            ax2.set_title(label, fontsize=10)
            lo, hi = np.nanmin(grid), np.nanmax(grid)
            for (i, j), val in np.ndenumerate(grid):
                if np.isfinite(val):
                    light = hi > lo and (val - lo) / (hi - lo) > 0.6  # yellow end of viridis
                    color = "k" if light else "w"
                    ax2.text(
                        j, i, fmt.format(val), ha="center", va="center", color=color, fontsize=7
                    )
            fig2.colorbar(im, ax=ax2)
        fig2.suptitle("Per-matrix rank of ΔW (what LoRA would need)")
        figs["rank_profile.png"] = fig2
        return figs

    def _sweep_figure(self) -> Any:
        """Energy captured, core consistency (clipped at −100) and stability against the
        rank, for every CP tensor (and all together when there are several)."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6.5, 7.0), layout="constrained")
        axes = fig.subplots(3, 1, sharex=True)
        ranks = [r.rank for r in self.cp_rows]
        several = len(self.sweeps) > 1
        if several:
            for g, label in enumerate(self.groups):
                energies = [100 * (1 - (1 - r.group_fits[g]) ** 2) for r in self.cp_rows]
                axes[0].plot(ranks, energies, "o--", ms=4, label=label)
        axes[0].plot(
            ranks,
            [r.energy_captured_pct for r in self.cp_rows],
            "s-",
            color="k",
            label="all" if several else "CP",
        )
        axes[0].axhline(LOW_RANK_ENERGY_PCT, color="grey", ls=":", lw=0.8)
        axes[0].set_ylabel("energy captured (%)")
        axes[0].set_ylim(0, 102)
        if several:
            axes[0].legend(fontsize=8, loc="lower right")
        names = list(self.groups) if several else [""]
        for g, (sweep, label) in enumerate(zip(self.sweeps, names)):
            color = f"C{g + 1}"
            cc = [float(row["core_consistency"]) for row in sweep.rows]
            shown = [max(c, -100.0) if math.isfinite(c) else math.nan for c in cc]
            axes[1].plot(ranks, shown, "o-", color=color, label=label or None)
            for r, c in zip(ranks, cc):
                if math.isfinite(c) and c < -100:  # far below the axis: its value, marked
                    axes[1].plot([r], [-100], "v", color=color)
                    axes[1].annotate(
                        f"{c:.3g}",
                        (r, -100),
                        textcoords="offset points",
                        xytext=(0, 6),
                        ha="center",
                        fontsize=7,
                    )
            st = [float(row["stability"]) for row in sweep.rows]
            axes[2].plot(ranks, st, "o-", color=color, label=label or None)
            missing = [r for r, s in zip(ranks, st) if not math.isfinite(s)]
            if missing:
                axes[2].plot(
                    missing,
                    [0.0] * len(missing),
                    "x",
                    color="grey",
                    label="n/a: one start near the best" if g == 0 else None,
                )
        axes[1].set_ylabel("core consistency (%)")
        axes[1].set_ylim(-110, 110)
        axes[2].set_ylabel("stability")
        axes[2].set_ylim(-0.05, 1.05)
        axes[2].set_xlabel("CP rank" + (" (of every tensor)" if several else ""))
        axes[2].set_xticks(ranks if len(ranks) <= 16 else ranks[:: len(ranks) // 16 + 1])
        for ax in axes[1:]:
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8, loc="lower left")
        rec = self.recommended_rank
        if rec is not None:
            for ax in axes:
                ax.axvline(rec, color="C3", alpha=0.3, lw=6)
        for ax in axes:
            ax.grid(alpha=0.3)
        rec_s = "none" if rec is None else str(rec)
        fig.suptitle(
            f"CP rank sweep of the {self.title}: {self._headline()}; rank rule: {rec_s}",
            fontsize=10,
        )
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
        """``[parameters, energy captured (%)]`` sampled on a log scale (for the figure)."""
        n = len(self.cost)
        idx = np.unique(np.geomspace(1, n, min(n, points)).astype(int)) - 1
        return [[int(self.cost[i]) for i in idx], [100 * float(self.energy[i]) for i in idx]]


def _dense_lorta_matrices(x: np.ndarray) -> Iterable[tuple[int, str, np.ndarray]]:
    """``(layer, matrix, ΔW)`` of a dense ``(d, d_h, H, L, M)`` LoRTA tensor (heads split
    the output of the first three matrices, the input of the fourth, as ``"lorta"``)."""
    _, dh, H, L, M = x.shape
    for layer in range(L):
        for m in range(M):
            split = "in" if M == 4 and m == 3 else "out"
            name = LORTA_MATRICES[m] if M == 4 else str(m)
            yield layer, name, target_matrix(x[..., layer, m], split, H, dh)


def _matrix_cost(mat: Any) -> int:
    """``out + in`` of a dense ``ΔW`` or of a pair ``(B, Aᵀ)``."""
    if isinstance(mat, tuple):
        return int(mat[0].shape[0] + mat[1].shape[0])
    return int(mat.shape[0] + mat.shape[1])


def _matrix_full_rank(mat: Any) -> int:
    """``min(out, in)`` of a dense ``ΔW`` or of a pair ``(B, Aᵀ)``."""
    if isinstance(mat, tuple):
        return int(min(mat[0].shape[0], mat[1].shape[0]))
    return int(min(mat.shape[0], mat.shape[1]))


def _rank_for_energy(s: np.ndarray, pct: float) -> int:
    """The fewest leading singular values of ``s`` holding ``pct`` percent of ``Σ s²``."""
    sq = np.square(np.asarray(s, dtype=np.float64))
    total = float(np.sum(sq))
    if total <= 0:
        return 0
    share = np.cumsum(sq) / total
    return int(min(np.searchsorted(share, pct / 100.0 - 1e-12) + 1, len(sq)))


def _rule_text(sweeps: Sequence[Any]) -> str:
    """The rank rule of the sweeps, in words (``RankSweep.rule`` where the sweep has it,
    else the ``"rule"`` of its JSON)."""
    for sweep in sweeps:
        text = getattr(sweep, "rule", None)
        if not isinstance(text, str):
            text = json.loads(sweep.to_json()).get("rule")
        if text:
            return str(text)
    return ""


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
    energies_pct: Sequence[float] = DEFAULT_ENERGIES_PCT,
    progress: bool = False,
    title: str = "fine-tuned delta",
    callback: Callable[[str], None] | None = None,
    rerun: str | None = None,
    distributed: bool = False,
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
    energies_pct : sequence of float
        Shares of ``‖ΔW‖²`` in percent (in (0, 100]) for the "parameters needed" table.
    progress : bool
        Progress bars for the sweep.
    title : str
        Used in the report's headings.
    callback : callable, optional
        Called with a line of text at each stage (the CLI prints them).
    rerun : str, optional
        The command that re-runs this analysis, without ``--ranks``: when the verdict
        advises sweeping larger ranks, its next step is this command with ``--ranks``
        appended (the CLI passes its own command line).
    distributed : bool
        Spread the CP sweeps over the processes of ``torch.distributed`` (initialised,
        e.g. under ``torchrun``): each process reads and contracts only its share of each
        tensor's blocks (:func:`cptensor.distributed.shard_over_processes`), and every
        process returns the same report. Every process must call it; write the report
        from rank 0 only. The per-matrix singular values are still computed by every
        process. A sharded low-rank delta has no SVD start (its shards cannot form the
        unfolding Gram of a layer or matrix mode): its starts are random, so its fits may
        differ from one process's where that start mattered.

    Returns
    -------
    DeltaReport
        Its :attr:`~DeltaReport.verdict` says whether the delta is low tensor rank (by the
        criterion of :class:`~cptensor_adapters.deltas.verdict.Verdict`) and what to
        train.

    Raises
    ------
    CPTensorError
        Ranks that are not positive integers, or beyond four times a tensor's largest
        mode; a dense delta that is not 5-way; energies outside (0, 100]; a zero delta.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal((6, 2, 3, 2, 4))
    >>> rep = analyze_delta(x, [1, 2], n_starts=1, max_iter=20)
    >>> [r.rank for r in rep.cp_rows], rep.cp_rows[0].parameters
    ([1, 2], 17)
    >>> rep.verdict.low_tensor_rank   # random numbers: no structure across the modes
    False
    """
    t0 = time.perf_counter()
    say = callback or (lambda s: None)
    ranks = _check_ranks(ranks)
    try:
        es = [float(e) for e in energies_pct]
    except (TypeError, ValueError):
        raise CPTensorTypeError(
            f"energies_pct must be numbers in (0, 100]; got {energies_pct!r}"
        ) from None
    if any(not 0 < e <= 100 for e in es):
        raise CPTensorError(
            f"energies_pct must lie in (0, 100] (percent of ‖ΔW‖²); got {list(energies_pct)}"
        )
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
        labels = (", ".join(LORTA_MATRICES) if x.shape[4] == 4 else "all",)
        layout, mats, notes = "lorta", _dense_lorta_matrices(x), []
    for shape in shapes:
        if ranks[-1] > 4 * max(shape):
            raise CPTensorError(
                f"ranks up to {ranks[-1]} are out of range for shape {shape}; "
                f"expected ranks <= {4 * max(shape)}"
            )

    say("per-matrix singular values (what LoRA would need for each matrix)")
    from cptensor.analysis import matrix_rank_profile

    profile_rows, spectra, costs, full_rank = [], {}, [], 1
    for layer, name, mat in mats:
        prof = matrix_rank_profile([mat])
        s = prof.spectra[0]
        spectra[f"{layer}/{name}"] = [float(v) for v in s]
        costs.append(_matrix_cost(mat))
        full_rank = max(full_rank, _matrix_full_rank(mat))
        profile_rows.append(
            MatrixRow(
                layer=layer,
                matrix=name,
                numerical=int(prof.numerical[0]),
                rank_90pct=_rank_for_energy(s, LOW_RANK_ENERGY_PCT),
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
        lora_rows.append(LoraRow(rank=r, parameters=r * sum(costs), energy_captured_pct=100 * e))
        if e > 0.999999:
            break
    svd = _SvdBudget(values, costs, total)
    spectra["_greedy_curve"] = svd.curve()

    what = f"{len(groups)} tensors {list(shapes)}" if len(groups) > 1 else f"a {shapes[0]} tensor"
    say(f"CP rank sweep over ranks {ranks} ({n_starts} start(s) each) of {what}")
    if distributed:
        from cptensor.distributed import shard_over_processes

        groups = [shard_over_processes(g) for g in groups]
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
        rows = [s.rows[i] for s in sweeps if s is not None]
        finite = [c for c in (float(r["core_consistency"]) for r in rows) if math.isfinite(c)]
        stable = [v for v in (float(r["stability"]) for r in rows) if math.isfinite(v)]
        res2 = sum(((1.0 - f) * n) ** 2 for f, n in zip(fits, norms))
        rel = math.sqrt(res2 / sum(n * n for n in norms))
        cp_rows.append(
            CPRow(
                rank=rank,
                parameters=rank * per,
                fit=1.0 - rel,
                energy_captured_pct=100 * max(0.0, 1.0 - rel * rel),
                svd_energy_captured_pct=100 * svd.energy_for(rank * per),
                core_consistency=min(finite) if finite else math.nan,
                stability=min(stable) if stable else math.nan,
                converged=tuple(bool(r["converged"]) for r in rows),
                n_iter=tuple(int(r["n_iter"]) for r in rows),
                group_fits=tuple(fits),
            )
        )
    table = []
    for e in es:
        uni = next((r for r in lora_rows if r.energy_captured_pct >= e - 1e-10), None)
        cp = next((r for r in cp_rows if r.energy_captured_pct >= e - 1e-10), None)
        table.append(
            EnergyRow(
                energy_pct=e,
                lora_uniform_rank=None if uni is None else uni.rank,
                lora_uniform_parameters=None if uni is None else uni.parameters,
                lora_svd_parameters=svd.parameters_for(e / 100),
                cp_rank=None if cp is None else cp.rank,
                cp_parameters=None if cp is None else cp.parameters,
            )
        )
    kept = tuple(s for s in sweeps if s is not None)
    recs = [s.recommended_rank for s in kept]
    verdict = decide_verdict(
        cp_rows,
        lora_rows,
        svd.parameters_for,
        None if any(r is None for r in recs) else min(recs),
        layout=layout,
        matrices=[row.matrix for row in profile_rows],
        max_rank=min(min(4 * max(s), math.prod(s) // max(s)) for s in shapes),
        full_rank=full_rank,
        rerun=rerun,
    )
    return DeltaReport(
        shapes=shapes,
        groups=labels,
        layout=layout,
        norm=math.sqrt(total),
        sweeps=kept,
        cp_rows=cp_rows,
        profile_rows=profile_rows,
        lora_rows=lora_rows,
        energy_table=table,
        spectra=spectra,
        notes=notes,
        verdict=verdict,
        seconds=time.perf_counter() - t0,
        title=title,
        rule=_rule_text(kept),
    )

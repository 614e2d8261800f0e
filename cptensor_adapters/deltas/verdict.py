"""The bottom line of a delta report: its :class:`Verdict`, column definitions and number
formats.

A report says first, in one sentence, whether the delta is low tensor rank, by a stated
criterion (:data:`LOW_RANK_ENERGY_PCT`, :data:`LOW_RANK_PARAMETER_RATIO`), and then which
adapter to train. Energy is in percent everywhere a report shows or stores it (Markdown,
JSON keys ending in ``_pct``, the command line): :data:`ENERGY_UNIT`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cptensor.errors import CPTensorError

__all__ = [
    "COLUMNS",
    "ENERGY_UNIT",
    "LORTA_MATRICES",
    "LOW_RANK_ENERGY_PCT",
    "LOW_RANK_PARAMETER_RATIO",
    "Verdict",
    "decide_verdict",
    "fmt_converged",
    "fmt_core_consistency",
    "fmt_pct",
    "fmt_stability",
    "join_words",
]

#: The unit of every energy figure of a report (and the suffix of its JSON keys).
ENERGY_UNIT = "percent"
#: The verdict's first condition: a swept rank captures at least this share of ‖ΔW‖² (%).
LOW_RANK_ENERGY_PCT = 90.0
#: The verdict's second condition: LoRA (best rank per matrix) needs at least this many
#: times the parameters of the CP layout for the same energy.
LOW_RANK_PARAMETER_RATIO = 2.0

#: The labels of the matrix mode of a delta laid out as the LoRTA tensor (M = 4).
LORTA_MATRICES = ("Q", "K", "V", "O")
_BUILTIN_LAYOUTS = ("lorta", "lora", "layer_shared")

#: Definitions of the report's columns, by table (what ``report.md`` and ``report.json``
#: print under "Columns").
COLUMNS: dict[str, dict[str, str]] = {
    "CP at each rank": {
        "rank": "the CP rank r: components in each CP tensor, i.e. the rank of an adapter in "
        "this layout.",
        "parameters": "what an adapter of rank r trains: r × (sum of the mode sizes), over "
        "the CP tensors.",
        "fit": "1 − ‖ΔW − CP‖ / ‖ΔW‖ over all CP tensors: one minus the relative error of "
        "the norm (not of the squared norm), a fraction from 0 to 1.",
        "energy captured (%)": "the share of ‖ΔW‖² the CP model reproduces: "
        "100 × (1 − (1 − fit)²).",
        "per-matrix SVD, same parameters (%)": "the energy captured by LoRA with the best rank "
        "for each matrix (truncated SVD, singular triplets taken by energy per parameter) "
        "given as many parameters as the CP model.",
        "core consistency (%)": "CORCONDIA (Bro & Kiers 2003): 100 × (1 − ‖G − I‖² / r), G the "
        "Tucker core fitted with the CP factors held fixed. Near 100: a clean CP structure; "
        "near or below 0: the rank is too high for the data. Always 100 at rank 1. Values "
        "below −100 are shown as '< −100' (report.json keeps the value); n/a when the core "
        "is too large to compute. With several CP tensors, the lowest.",
        "stability": "how reproducible the best model is: mean factor match score (1 = the "
        "same components up to order and scale) among the best starts whose error is "
        "within 10 % of the best; n/a when only one start gets there (e.g. one start per "
        "rank). With several CP tensors, the lowest.",
        "converged (ALS sweeps)": "whether the best start's ALS fit met its tolerance, and "
        "how many sweeps it ran, per CP tensor; 'no' means it stopped at the iteration "
        "limit and a longer fit may capture more.",
        "rank rule": "whether the rank passes the rank rule of rank_sweep (stated under the "
        "table), or which of its criteria failed, per CP tensor.",
    },
    "Parameters needed for a share of the energy": {
        "energy (%)": "a share of ‖ΔW‖² to capture; each other column gives the fewest "
        "trainable parameters that capture it.",
        "LoRA, one rank for all matrices": "truncated SVD of every matrix at the same rank r "
        "(r × (d_out + d_in) per matrix), the smallest r that reaches the share.",
        "LoRA, best rank per matrix": "truncated SVD with the parameters spent where the "
        "singular values are largest: a lower bound for any LoRA.",
        "CP": "the smallest swept rank of the CP layout that reaches the share; "
        "'not reached' when no swept rank does.",
    },
    "Per-matrix rank profile": {
        "numerical rank": "singular values above max(d_out, d_in) · eps · σ₁: the LoRA rank "
        "that reproduces the matrix exactly.",
        f"rank for {LOW_RANK_ENERGY_PCT:g} % energy": "the smallest LoRA rank of the matrix "
        f"that captures {LOW_RANK_ENERGY_PCT:g} % of its ‖ΔW‖².",
        "stable rank": "‖ΔW‖_F² / σ₁²: the energy in units of the largest direction's "
        "(between 1 and the rank).",
        "effective rank": "exp of the entropy of σᵢ / Σσ (Roy & Vetterli 2007): how many "
        "singular values are in play, small ones counting more than in the energy.",
        "norm": "‖ΔW‖_F of the matrix.",
    },
}


def fmt_pct(value: float | None) -> str:
    """A percentage with about three significant digits, never rounded up to 100.

    Parameters
    ----------
    value : float or None
        In percent.

    Returns
    -------
    str
        ``"n/a"`` for None or NaN.

    Examples
    --------
    >>> [fmt_pct(v) for v in (3.9012, 47.26, 99.96, 99.99999, 100.0, 0.04213, 0.0, None)]
    ['3.90', '47.3', '99.96', '> 99.99', '100.00', '0.042', '0', 'n/a']
    """
    if value is None or not math.isfinite(value):
        return "n/a"
    if value >= 99.95:
        return "100.00" if value >= 100.0 else ("> 99.99" if value >= 99.99 else f"{value:.2f}")
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return "0" if value == 0 else f"{value:.2g}"


def fmt_core_consistency(value: float | None, note: str = "") -> str:
    """Core consistency (%) for a table: one decimal, ``"< -100"`` below −100, n/a with
    the reason when undefined.

    Parameters
    ----------
    value : float or None
        The core consistency in percent.
    note : str
        The sweep row's note (says why a value is missing).

    Returns
    -------
    str

    Examples
    --------
    >>> fmt_core_consistency(99.99), fmt_core_consistency(-2355178265.0)
    ('100.0', '< -100')
    >>> fmt_core_consistency(float("nan"), "core too large for core consistency")
    'n/a (core too large)'
    """
    if value is None or not math.isfinite(value):
        return "n/a (core too large)" if "core too large" in note else "n/a"
    if value < -100:
        return "< -100"
    return f"{value:.1f}"


def fmt_stability(value: float | None) -> str:
    """Stability for a table: two decimals, ``"n/a (one start near best)"`` when not measured.

    Parameters
    ----------
    value : float or None

    Returns
    -------
    str

    Examples
    --------
    >>> fmt_stability(0.98765), fmt_stability(float("nan"))
    ('0.99', 'n/a (one start near best)')
    """
    if value is None or not math.isfinite(value):
        return "n/a (one start near best)"
    return f"{value:.2f}"


def fmt_converged(converged: Sequence[bool], n_iter: Sequence[int]) -> str:
    """Convergence for a table: per CP tensor, ``"yes (12)"`` / ``"no (100)"`` (whether the
    best start's ALS fit converged, and its sweeps); ``"n/a"`` when there is none.

    Parameters
    ----------
    converged : sequence of bool
    n_iter : sequence of int

    Returns
    -------
    str

    Examples
    --------
    >>> fmt_converged((True, False), (12, 100)), fmt_converged((), ())
    ('yes (12), no (100)', 'n/a')
    """
    cells = [f"{'yes' if c else 'no'} ({n})" for c, n in zip(converged, n_iter)]
    return ", ".join(cells) or "n/a"


def join_words(items: Sequence[Any], last: str = "and") -> str:
    """Items as prose: ``"1"``, ``"1 and 2"``, ``"1, 2 and 4"``.

    Parameters
    ----------
    items : sequence
    last : str
        The word before the last item.

    Returns
    -------
    str

    Examples
    --------
    >>> join_words([1]), join_words([1, 2]), join_words([1, 2, 4], "or")
    ('1', '1 and 2', '1, 2 or 4')
    """
    words = [str(i) for i in items]
    if len(words) <= 1:
        return "".join(words)
    return f"{', '.join(words[:-1])} {last} {words[-1]}"


def _times(ratio: float) -> str:
    if ratio >= 1:
        return f"{ratio:.3g}× as many"
    return f"{1 / ratio:.3g}× fewer" if ratio > 0 else "none"


@dataclass(frozen=True)
class Verdict:
    """The bottom line of a delta report: is the delta low tensor rank, and what to train.

    The delta **is low tensor rank** when a swept rank ``r`` of the CP layout captures at
    least :data:`LOW_RANK_ENERGY_PCT` % of ``‖ΔW‖²`` and LoRA with the best rank for each
    matrix (a lower bound for any LoRA) needs at least :data:`LOW_RANK_PARAMETER_RATIO`
    times as many parameters for the same energy. The rank spoken of is the rank rule's
    recommendation when it meets both conditions, else the smallest swept rank that does;
    when none does, the smallest swept rank reaching the energy, else the largest swept.

    Attributes
    ----------
    low_tensor_rank : bool
    rank : int
        The rank the verdict speaks of.
    energy_captured_pct : float
        Energy captured by the CP model of that rank (%).
    parameters : int
        Parameters of an adapter of that rank.
    lora_parameters : int
        Fewest LoRA parameters (best rank per matrix) for the same energy.
    lora_uniform_rank, lora_uniform_parameters : int or None
        LoRA with one rank for every matrix for the same energy (None when it would need
        more than the matrices' full rank).
    recommended_rank : int or None
        The rank rule's recommendation.
    converged : bool
        Whether every fit at ``rank`` converged.
    text : str
        The verdict as a sentence.
    next_step : str
        Which adapter to train (or what to run), with the exact call.
    criterion : str
        The criterion, in words.

    Examples
    --------
    >>> import numpy as np
    >>> from cptensor_adapters.deltas import analyze_delta
    >>> rng = np.random.default_rng(0)
    >>> x = np.einsum("a,b,c,d,e->abcde", *(rng.standard_normal(n) for n in (8, 2, 2, 2, 4)))
    >>> v = analyze_delta(x, [1, 2], n_starts=1).verdict   # a rank-1 tensor
    >>> v.low_tensor_rank, v.rank, v.parameters, v.lora_parameters  # 8 matrices 8 × 4
    (True, 1, 18, 96)
    >>> v.text.startswith("This delta is low tensor rank")
    True
    """

    low_tensor_rank: bool
    rank: int
    energy_captured_pct: float
    parameters: int
    lora_parameters: int
    lora_uniform_rank: int | None
    lora_uniform_parameters: int | None
    recommended_rank: int | None
    converged: bool
    text: str
    next_step: str
    criterion: str


def _criterion() -> str:
    return (
        f"a swept rank captures at least {LOW_RANK_ENERGY_PCT:g} % of ‖ΔW‖², and LoRA with the "
        f"best rank for each matrix needs at least {LOW_RANK_PARAMETER_RATIO:g}× as many "
        "parameters for the same energy"
    )


def _adapter_call(layout: str, rank: int, matrices: Sequence[str]) -> str:
    """``AdapterConfig(...)`` of an adapter of ``rank`` on ``matrices`` in ``layout``."""
    names = list(dict.fromkeys(matrices))
    args = [f"r={rank}"]
    if layout != "lorta":
        args.append(
            f"layout={layout!r}" if layout in _BUILTIN_LAYOUTS else "layout=<the analysed layout>"
        )
    if names and sorted(names) != sorted(LORTA_MATRICES):
        targets = [n.lower() if n in LORTA_MATRICES else n for n in names]
        args.append(f"targets={targets!r}")
    return f"cptensor_adapters.attach(model, AdapterConfig({', '.join(args)}))"


def _adapter_phrase(layout: str, rank: int) -> str:
    if layout == "lorta":
        return f"a LoRTA adapter of rank {rank}"
    return f"an adapter of rank {rank} in the {layout!r} layout"


def decide_verdict(
    cp_rows: Sequence[Any],
    lora_rows: Sequence[Any],
    lora_parameters_for: Callable[[float], int],
    recommended_rank: int | None,
    *,
    layout: str,
    matrices: Sequence[str],
    max_rank: int,
    full_rank: int,
    rerun: str | None = None,
) -> Verdict:
    """The :class:`Verdict` of a report's rows.

    Parameters
    ----------
    cp_rows : sequence of CPRow
        One per swept rank, ascending.
    lora_rows : sequence of LoraRow
        LoRA with one rank for every matrix, by rank.
    lora_parameters_for : callable
        Energy share (a fraction) → fewest parameters of LoRA with the best rank per
        matrix.
    recommended_rank : int or None
        The rank rule's recommendation.
    layout : str
        The layout's name.
    matrices : sequence of str
        The analysed matrices' names (``"Q"``, ...): the targets of the suggested adapter.
    max_rank : int
        The largest rank an analysis of this delta may sweep.
    full_rank : int
        The largest rank a matrix of the delta can have (``min(d_out, d_in)``).
    rerun : str, optional
        The command that re-runs the analysis, without ``--ranks`` (the next step appends
        it when larger ranks should be swept).

    Returns
    -------
    Verdict

    Examples
    --------
    >>> from types import SimpleNamespace as Row
    >>> cp = [Row(rank=2, parameters=100, energy_captured_pct=99.9,
    ...           svd_energy_captured_pct=40.0, converged=(True,))]
    >>> lora = [Row(rank=2, parameters=1024, energy_captured_pct=100.0)]
    >>> v = decide_verdict(cp, lora, lambda e: 1024, 2, layout="lorta",
    ...                    matrices=["Q", "V"], max_rank=16, full_rank=64)
    >>> v.low_tensor_rank, v.lora_parameters
    (True, 1024)
    >>> print(v.next_step.split(": ", 1)[1])
    `cptensor_adapters.attach(model, AdapterConfig(r=2, targets=['q', 'v']))`.
    """
    if not cp_rows:
        raise CPTensorError("cp_rows must hold at least one row (one per swept rank)")
    goal, need = LOW_RANK_ENERGY_PCT, LOW_RANK_PARAMETER_RATIO

    def lora_for(row: Any) -> int:
        return int(lora_parameters_for(min(1.0, row.energy_captured_pct / 100.0)))

    def meets(row: Any) -> bool:
        return row.energy_captured_pct >= goal and lora_for(row) >= need * row.parameters

    by_rank = {int(r.rank): r for r in cp_rows}
    rec_row = by_rank.get(recommended_rank) if recommended_rank is not None else None
    chosen = rec_row if rec_row is not None and meets(rec_row) else None
    chosen = chosen or next((r for r in cp_rows if meets(r)), None)
    low = chosen is not None
    if chosen is None:
        chosen = next((r for r in cp_rows if r.energy_captured_pct >= goal), cp_rows[-1])
    rank, n, e = int(chosen.rank), int(chosen.parameters), float(chosen.energy_captured_pct)
    m = lora_for(chosen)
    uni = next((r for r in lora_rows if r.energy_captured_pct >= e - 1e-9), None)
    converged = all(bool(c) for c in getattr(chosen, "converged", (True,)))
    adapter = _adapter_phrase(layout, rank)
    lora_same = (
        f"LoRA would need {m:,} parameters for the same energy with the best rank for each "
        f"matrix ({_times(m / n)})"
    )
    if uni is not None:
        lora_same += f", {int(uni.parameters):,} with rank {int(uni.rank)} for every matrix"
    if low:
        text = (
            f"This delta is low tensor rank: {adapter} would capture {fmt_pct(e)} % of its "
            f"energy (‖ΔW‖²) with {n:,} parameters; {lora_same}."
        )
    elif e >= goal:
        text = (
            f"This delta is not low tensor rank: {adapter} would capture {fmt_pct(e)} % of its "
            f"energy (‖ΔW‖²) with {n:,} parameters, but {lora_same}: less than the "
            f"{need:g}× saving the verdict asks for."
        )
    else:
        text = (
            f"This delta is not low tensor rank at the swept ranks: the largest, rank {rank}, "
            f"would capture only {fmt_pct(e)} % of its energy (‖ΔW‖²) with {n:,} parameters "
            f"(the verdict asks for {goal:g} %); {lora_same}."
        )
    if not converged:
        text += (
            f" The rank-{rank} fit stopped at the iteration limit before converging: more "
            "iterations (--max-iter; max_iter in Python) may capture more."
        )

    uni_rank = None if uni is None else int(uni.rank)
    uni_parameters = None if uni is None else int(uni.parameters)
    if low:
        step = f"Train {adapter}: `{_adapter_call(layout, rank, matrices)}`."
        if recommended_rank is not None and recommended_rank != rank:
            step += (
                f" (The rank rule recommends rank {recommended_rank}; rank {rank} is the one "
                "that meets the verdict's criterion.)"
            )
    else:
        steps = []
        top = cp_rows[-1]
        # the saving criterion already holds at the top rank, only the energy is short
        ahead = lora_for(top) >= need * int(top.parameters)
        if e < goal and ahead and int(top.rank) < max_rank:
            lo, hi = int(top.rank) + 1, min(max_rank, 4 * int(top.rank))
            how = (
                f"{rerun} --ranks {lo}-{hi}"
                if rerun
                else f"analyze_delta(delta, range({lo}, {hi + 1}))"
            )
            steps.append(
                f"sweep larger ranks before deciding (at rank {int(top.rank)} LoRA needs at least "
                f"{need:g}× as many parameters for the same energy): `{how}`"
            )
        goal_uni = next((r for r in lora_rows if r.energy_captured_pct >= goal - 1e-9), None)
        if goal_uni is not None:
            ru = int(goal_uni.rank)
            steps.append(
                f"train LoRA instead: rank {ru} for every matrix captures "
                f"{fmt_pct(goal_uni.energy_captured_pct)} % ({int(goal_uni.parameters):,} "
                f"parameters): `{_adapter_call('lora', ru, matrices)}` (or PEFT's "
                f"`LoraConfig(r={ru})`)"
            )
            if ru > 1 and 2 * ru > full_rank:
                steps[-1] += (
                    f"; at rank {ru} of at most {full_rank} the delta is not low rank per "
                    "matrix either, so no low-rank adapter imitates it closely (one may still "
                    "reach the same accuracy on the task)"
                )
        step = "; or ".join(steps) + "."
        step = step[0].upper() + step[1:]
    return Verdict(
        low_tensor_rank=low,
        rank=rank,
        energy_captured_pct=e,
        parameters=n,
        lora_parameters=m,
        lora_uniform_rank=uni_rank,
        lora_uniform_parameters=uni_parameters,
        recommended_rank=recommended_rank,
        converged=converged,
        text=text,
        next_step=step,
        criterion=_criterion(),
    )

"""A fine-tuned update as the CP tensors an adapter would train: :class:`Delta`.

The geometry is the adapters' own: a :class:`~cptensor_adapters.grid.WeightGrid` of the
updated weights, split by :func:`~cptensor_adapters.layout.plan_groups` into the CP
tensors of a :class:`~cptensor_adapters.layout.Layout`, each target's matrix placed in its
tensor by :func:`~cptensor_adapters.layout.target_block` — the orientation in which the
adapter's forward pass reads its factors. A rank-``r`` CP of every group is therefore
exactly an adapter of rank ``r`` of that layout, and a model with grouped-query attention
gets two tensors under ``"lorta"`` (Q with O; K with V, over the key/value heads), as its
adapter does.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from cptensor.errors import CPTensorError

from ..grid import ATTENTION_ROLES, Target, WeightGrid
from ..layout import GroupPlan, Layout

__all__ = ["Delta", "DeltaTensor", "LowRankDelta", "matrix_label", "plan_label", "tensor_norm"]


def matrix_label(matrix: str) -> str:
    """How reports name a matrix: ``"Q"``, ``"K"``, ``"V"``, ``"O"`` for the attention
    roles, the module path inside its layer otherwise (``"mlp.up_proj"``)."""
    return matrix.upper() if matrix in ATTENTION_ROLES else matrix


def plan_label(grid: WeightGrid, plan: GroupPlan) -> str:
    """``"Q, O"``-style label of a CP tensor's matrices (and its layer, if grouped by it)."""
    mats = dict.fromkeys(matrix_label(grid[m.target].matrix) for m in plan.members)
    label = ", ".join(mats)
    if "layer" in plan.key:
        label += f" of layer {plan.key['layer']}"
    return label


def tensor_norm(x: Any) -> float:
    """The Frobenius norm of a CP tensor of a delta (a dense block or an operator)."""
    if isinstance(x, np.ndarray) or not hasattr(x, "norm"):
        return float(np.linalg.norm(np.asarray(x)))
    return float(x.norm())


def _order(t: Target) -> tuple[int, int, str]:
    rank = ATTENTION_ROLES.index(t.matrix) if t.matrix in ATTENTION_ROLES else 4
    return t.layer, rank, t.matrix


class Delta:
    """An update ``ΔW`` of a model's weights, as one CP tensor per group of a layout.

    Built by the ``extract_*`` functions; :func:`~cptensor_adapters.deltas.analyze_delta`
    reads it.

    Attributes
    ----------
    grid : WeightGrid
        The updated weights and their geometry.
    layout : Layout
        How they form CP tensors.
    plans : tuple of GroupPlan
        One per CP tensor (:func:`~cptensor_adapters.layout.plan_groups`).
    groups : tuple
        The CP tensors, in the order of ``plans`` (``BlockTensor``, ``LowRankBlockTensor``
        or, for a one-matrix group, the block itself).
    matched : tuple of tuple
        One row per target, ordered by layer then matrix: ``(layer, matrix label, key…)``
        (the tensor names or module paths read; two for a base/tuned pair).
    notes : tuple of str
        What was read and how it was matched.

    Examples
    --------
    >>> import numpy as np
    >>> from cptensor_adapters.deltas import lowrank_delta_from_weights
    >>> rng = np.random.default_rng(0)
    >>> w = {f"layers.{l}.self_attn.{m}_proj": rng.standard_normal((8, 8)) for l in range(2)
    ...      for m in "qkvo"}
    >>> delta = lowrank_delta_from_weights(w, n_heads=2)
    >>> delta.describe_groups(), delta.parameters_per_rank
    ('Q, K, V, O: (8, 4, 2, 2, 4)', 20)
    >>> delta.matched[:2]
    ((0, 'Q', 'layers.0.self_attn.q_proj'), (0, 'K', 'layers.0.self_attn.k_proj'))
    """

    def __init__(
        self,
        grid: WeightGrid,
        layout: Layout,
        plans: Sequence[GroupPlan],
        groups: Sequence[Any],
        keys: Mapping[str, tuple[str, ...]],
        notes: Sequence[str],
    ) -> None:
        self.grid = grid
        self.layout = layout
        self.plans = tuple(plans)
        self.groups = tuple(groups)
        self.matched = tuple(
            (t.layer, matrix_label(t.matrix), *keys[t.name]) for t in self.targets()
        )
        self.notes = tuple(notes)

    # --------------------------------------------------------------- as one tensor
    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of the CP tensor, when there is one (else an error naming the groups)."""
        return tuple(int(s) for s in self._single().shape)

    def _single(self) -> Any:
        if len(self.groups) != 1:
            raise CPTensorError(
                f"this delta is {len(self.groups)} CP tensors ({self.describe_groups()}); "
                "use .groups (or analyze_delta, which sweeps them together)"
            )
        return self.groups[0]

    def to_dense(self) -> np.ndarray:
        """The single CP tensor as a dense NumPy array."""
        x = self._single()
        return np.asarray(x.to_dense() if hasattr(x, "to_dense") else x)

    def norm(self) -> float:
        """``‖ΔW‖`` over every group (Frobenius)."""
        return math.sqrt(sum(tensor_norm(g) ** 2 for g in self.groups))

    # ------------------------------------------------------------------- groups
    def group_label(self, index: int) -> str:
        """``"Q, O"``-style label of a group's matrices (and its layer, if grouped by it)."""
        return plan_label(self.grid, self.plans[index])

    def describe_groups(self) -> str:
        """One phrase per group: its matrices and shape."""
        return "; ".join(
            f"{self.group_label(i)}: {tuple(p.shape)}" for i, p in enumerate(self.plans)
        )

    @property
    def parameters_per_rank(self) -> int:
        """Numbers one CP component costs over all groups: ``Σ_g Σ_modes size``."""
        return sum(sum(p.shape) for p in self.plans)

    # ---------------------------------------------------------------- per matrix
    def targets(self) -> Iterator[Target]:
        """The updated targets, by layer then matrix."""
        return iter(sorted(self.grid.targets, key=_order))

    def matrices(self) -> Iterator[tuple[int, str, Any]]:
        """``(layer, matrix label, ΔW)`` per target (``out × in``); for a low-rank delta the
        pair ``(B_scaled, Aᵀ)`` with ``ΔW = B_scaled · A``."""
        raise NotImplementedError  # pragma: no cover - each kind defines it


class DeltaTensor(Delta):
    """``tuned − base`` of two models or checkpoints (:func:`extract_delta`), read lazily
    one target at a time and never cached.

    Extra attributes: ``prefixes`` (``{"base": …, "tuned": …}``, how the tensor names of
    the two sources differ, ``""`` when they agree) and ``sources`` (descriptions).

    Examples
    --------
    >>> import torch
    >>> from transformers import GPT2Config, GPT2Model
    >>> from cptensor_adapters.deltas import extract_delta
    >>> _ = torch.manual_seed(0)
    >>> cfg = GPT2Config(n_embd=16, n_head=4, n_layer=2, vocab_size=50, n_positions=16)
    >>> base, tuned = GPT2Model(cfg), GPT2Model(cfg)
    >>> delta = extract_delta(base, tuned)          # fused c_attn split into Q, K, V
    >>> delta.shape, delta.matched[1][2]
    ((16, 4, 4, 2, 4), 'h.0.attn.c_attn.weight')
    >>> layer, matrix, dw = next(delta.matrices())
    >>> layer, matrix, dw.shape
    (0, 'Q', (16, 16))
    """

    def __init__(
        self,
        grid: WeightGrid,
        layout: Layout,
        plans: Sequence[GroupPlan],
        groups: Sequence[Any],
        keys: Mapping[str, tuple[str, ...]],
        notes: Sequence[str],
        *,
        read: Any,
        prefixes: Mapping[str, str],
        sources: tuple[str, str],
    ) -> None:
        super().__init__(grid, layout, plans, groups, keys, notes)
        self._read = read
        self.prefixes = dict(prefixes)
        self.sources = sources

    def matrices(self) -> Iterator[tuple[int, str, Any]]:
        """``(layer, matrix label, ΔW)`` per target, ``ΔW`` dense (``out × in``), one at a time."""
        for t in self.targets():
            yield t.layer, matrix_label(t.matrix), self._read(t)


class LowRankDelta(Delta):
    """An adapter's updates ``ΔW = B·A`` (scaling in ``B``), never formed.

    Extra attributes: ``pairs`` (``{(layer, matrix label): (B_scaled, A)}``), ``config``
    (the adapter's parsed ``adapter_config.json``, ``{}`` when not read from files).

    Examples
    --------
    >>> import numpy as np
    >>> from cptensor_adapters.deltas import lowrank_delta_from_weights
    >>> rng = np.random.default_rng(0)
    >>> w = {f"layers.0.mlp.{m}": rng.standard_normal((8, 1)) @ rng.standard_normal((1, 8))
    ...      for m in ("up", "down")}
    >>> delta = lowrank_delta_from_weights(w)      # no attention: no head geometry needed
    >>> sorted(delta.pairs), delta.max_block_rank
    ([(0, 'mlp.down'), (0, 'mlp.up')], 1)
    """

    def __init__(
        self,
        grid: WeightGrid,
        layout: Layout,
        plans: Sequence[GroupPlan],
        groups: Sequence[Any],
        keys: Mapping[str, tuple[str, ...]],
        notes: Sequence[str],
        *,
        pairs: Mapping[str, tuple[Any, Any]],
        config: Mapping[str, Any],
    ) -> None:
        super().__init__(grid, layout, plans, groups, keys, notes)
        self._by_target = dict(pairs)
        self.pairs = {
            (grid[name].layer, matrix_label(grid[name].matrix)): ba for name, ba in pairs.items()
        }
        self.config = dict(config)

    @property
    def max_block_rank(self) -> int:
        """The largest rank of one target's update (columns of its ``B``)."""
        return max(int(b.shape[1]) for b, _ in self._by_target.values())

    def matrices(self) -> Iterator[tuple[int, str, Any]]:
        """``(layer, matrix label, (B_scaled, Aᵀ))`` per target."""
        for t in self.targets():
            b, a = self._by_target[t.name]
            yield t.layer, matrix_label(t.matrix), (b, a.T)

"""Layouts: how the weight grid of a model becomes CP tensors.

Every adapted weight ``ΔW`` (``out × in``) sits in a grid with five axes:

- ``out`` and ``in``: the two sides of the matrix;
- ``head``: the attention heads, splitting one side (``out`` for Q, K, V whose heads are
  output rows; ``in`` for O), chosen per matrix by ``head_split``;
- ``layer``: the transformer layer;
- ``matrix``: which projection (``"q"``, ``"k"``, ``"v"``, ``"o"``, or another module).

A :class:`Layout` names the axes that are CP *modes* of one shared tensor and the axes that
index independent *groups* (one CP tensor per value); an axis in neither is *shared* (the
update does not vary along it). ``out`` and ``in`` are always modes.

When ``head`` is a mode, the two matrix modes are oriented as in the paper's tensor
``d × d_h × H × L × M``: mode ``out`` is the side the heads do **not** split (size ``d``)
and mode ``in`` is one head of the split side (size ``d_h``). A matrix whose heads split its
output (Q, K, V by default) therefore enters the tensor transposed; O enters as is. A
target without head structure (an MLP projection) counts as one head spanning its ``in``
side (or the side ``head_split`` names).

Targets whose mode sizes differ cannot share a tensor; they go into separate groups
automatically. This is how grouped-query attention is handled: K and V have
``num_kv_heads < num_heads`` heads, so under ``"lorta"`` a Llama model with GQA gets two
tensors, one over Q and O (``d × d_h × H × L × 2``) and one over K and V
(``d × d_h × H_kv × L × 2``), each an exact CP tensor of the weights it holds.

Built-in layouts:

- ``"lorta"``: modes ``out, in, head, layer, matrix``; one tensor (the paper's LoRTA);
- ``"lora"``: modes ``out, in``, groups ``layer, matrix``: a rank-``r`` matrix per weight;
- ``"layer_shared"``: modes ``out, in, layer``, groups ``matrix``: one tensor per matrix type.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from array_api_compat import array_namespace

from cptensor.errors import CPTensorError
from cptensor.structured import BlockTensor, LowRankBlockTensor

from .grid import Side, Target, WeightGrid, ordered_matrices

__all__ = [
    "AXES",
    "LAYOUTS",
    "GroupPlan",
    "Layout",
    "Member",
    "group_tensor",
    "lora_equivalent_parameters",
    "lowrank_group_tensor",
    "plan_groups",
    "resolve_head_split",
    "target_block",
    "target_matrix",
]

#: The axes of the weight grid.
AXES: tuple[str, ...] = ("out", "in", "head", "layer", "matrix")


@dataclass(frozen=True)
class Layout:
    """Which grid axes are CP modes of a shared tensor and which index independent groups.

    Parameters
    ----------
    modes : tuple of str
        axes that are modes of each CP tensor, in order (must include ``"out"`` and
        ``"in"``); the CP factors come in this order.
    groups : tuple of str
        axes whose values index separate CP tensors (``"layer"``, ``"matrix"``).
    name : str
        a label (``"custom"`` unless built-in).

    Raises
    ------
    ValueError
        an axis that does not exist, an axis listed twice, ``out``/``in``
        missing from the modes, or ``head`` used as a group axis.

    Examples
    --------
    >>> Layout.resolve("lorta").modes
    ('out', 'in', 'head', 'layer', 'matrix')
    >>> custom = Layout(modes=("out", "in", "layer", "matrix"))  # CP across layers, no heads
    >>> custom.shared
    ('head',)
    >>> Layout(modes=("out", "in", "heads"))
    Traceback (most recent call last):
    ...
    cptensor.errors.CPTensorError: layout modes: unknown axis 'heads'; expected axes from ...
    """

    modes: tuple[str, ...]
    groups: tuple[str, ...] = ()
    name: str = "custom"

    def __post_init__(self) -> None:
        for label, axes in (("modes", self.modes), ("groups", self.groups)):
            if isinstance(axes, str) or not isinstance(axes, Sequence):
                raise CPTensorError(
                    f"layout {label}: expected a sequence of axis names, got {axes!r}"
                )
            for a in axes:
                if a not in AXES:
                    raise CPTensorError(
                        f"layout {label}: unknown axis {a!r}; expected axes from {AXES}"
                    )
        object.__setattr__(self, "modes", tuple(self.modes))
        object.__setattr__(self, "groups", tuple(self.groups))
        both = list(self.modes) + list(self.groups)
        dup = sorted({a for a in both if both.count(a) > 1})
        if dup:
            raise CPTensorError(
                f"layout: axes {dup} appear more than once in modes={self.modes}, "
                f"groups={self.groups}; each axis is a mode, a group axis, or neither"
            )
        for a in ("out", "in"):
            if a not in self.modes:
                raise CPTensorError(
                    f"layout modes: {self.modes} lacks {a!r}; 'out' and 'in' are always modes"
                )
        if "head" in self.groups:
            raise CPTensorError(
                "layout groups: 'head' cannot index independent groups (per-head adapters are "
                "not supported); make 'head' a mode or leave it out"
            )

    @property
    def shared(self) -> tuple[str, ...]:
        """Axes that are neither modes nor groups: the update is the same along them."""
        return tuple(a for a in AXES if a not in self.modes and a not in self.groups)

    @property
    def uses_heads(self) -> bool:
        """Whether heads split the matrices (``head`` is a mode)."""
        return "head" in self.modes

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (read back by :meth:`resolve`)."""
        return {"name": self.name, "modes": list(self.modes), "groups": list(self.groups)}

    @classmethod
    def resolve(cls, spec: str | Layout | Mapping[str, Any]) -> Layout:
        """A layout from a built-in name, a :class:`Layout`, or a dict with ``modes``
        (and optionally ``groups``, ``name``).

        Raises
        ------
        ValueError
            an unknown name or a malformed dict.

        Examples
        --------
        >>> Layout.resolve({"modes": ["out", "in", "layer"], "groups": ["matrix"]}).shared
        ('head',)
        """
        if isinstance(spec, Layout):
            return spec
        if isinstance(spec, str):
            if spec not in LAYOUTS:
                raise CPTensorError(
                    f"layout: unknown layout {spec!r}; expected one of {sorted(LAYOUTS)}, a "
                    "Layout, or a dict with 'modes' (and 'groups')"
                )
            return LAYOUTS[spec]
        if isinstance(spec, Mapping):
            extra = set(spec) - {"modes", "groups", "name"}
            if "modes" not in spec or extra:
                raise CPTensorError(
                    f"layout: a dict layout needs 'modes' (and may have 'groups', 'name'); got "
                    f"keys {sorted(spec)}"
                )
            name = spec.get("name", "custom")
            if (
                name in LAYOUTS
                and LAYOUTS[name].modes == tuple(spec["modes"])
                and LAYOUTS[name].groups == tuple(spec.get("groups", ()))
            ):
                return LAYOUTS[name]
            return cls(tuple(spec["modes"]), tuple(spec.get("groups", ())), name)
        raise CPTensorError(
            f"layout: expected a layout name, a Layout or a dict, got {type(spec).__name__}"
        )


LAYOUTS: dict[str, Layout] = {
    "lorta": Layout(("out", "in", "head", "layer", "matrix"), (), "lorta"),
    "lora": Layout(("out", "in"), ("layer", "matrix"), "lora"),
    "layer_shared": Layout(("out", "in", "layer"), ("matrix",), "layer_shared"),
}


def resolve_head_split(head_split: str | Mapping[str, str], target: Target) -> Side:
    """The side of ``target`` that heads split: ``"out"`` or ``"in"``.

    ``head_split`` is ``"auto"`` (the natural side: ``out`` for Q, K, V, ``in`` for O and for
    targets without heads), ``"out"``, ``"in"``, or a dict matrix name → side (matrices not
    in it keep the natural side).

    Examples
    --------
    >>> t = Target("q", "q", 0, "q", 8, 8, heads=2, head_dim=4, head_side="out")
    >>> resolve_head_split("auto", t), resolve_head_split({"q": "in"}, t)
    ('out', 'in')
    """
    natural: Side = target.head_side or "in"
    if isinstance(head_split, str):
        if head_split == "auto":
            return natural
        if head_split in ("out", "in"):
            return head_split  # type: ignore[return-value]
        raise CPTensorError(
            f"head_split: expected 'auto', 'out', 'in' or a dict matrix -> side, got {head_split!r}"
        )
    side = head_split.get(target.matrix, natural)
    if side not in ("out", "in"):
        raise CPTensorError(f"head_split[{target.matrix!r}]: expected 'out' or 'in', got {side!r}")
    return side  # type: ignore[return-value]


@dataclass(frozen=True)
class Member:
    """A target's place in a group's CP tensor.

    Attributes
    ----------
    target : str
        the target's name.
    index : dict of str to int
        position of each coefficient mode (``layer``, ``matrix``) of the group.
    split : {"out", "in"} or None
        side the heads split (``"out"``/``"in"``) if the layout has a head mode.
    heads : int
        heads along the split side (1 without head mode).
    head_dim : int
        size of one head (the ``in`` mode) under a head mode.
    """

    target: str
    index: dict[str, int]
    split: Side | None
    heads: int
    head_dim: int


@dataclass(frozen=True)
class GroupPlan:
    """One CP tensor of an adapter: its modes, their sizes and labels, and its members.

    Attributes
    ----------
    index : int
        position among the adapter's groups.
    key : dict
        values of the layout's group axes, plus the mode sizes (which separate
        differently shaped targets).
    modes : tuple of str
        the CP modes, in layout order.
    shape : tuple of int
        size of each mode.
    labels : dict of str to tuple
        for the ``layer`` and ``matrix`` modes, what each index stands for.
    members : tuple of Member
        the targets in this tensor.

    Examples
    --------
    >>> g = GroupPlan(0, {}, ("out", "in", "layer"), (8, 8, 3), {"layer": (0, 1, 2)})
    >>> g.num_parameters(r=4)
    76
    """

    index: int
    key: dict[str, Any]
    modes: tuple[str, ...]
    shape: tuple[int, ...]
    labels: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    members: tuple[Member, ...] = ()

    def num_parameters(self, r: int) -> int:
        """``r`` times the sum of the mode sizes."""
        return r * sum(self.shape)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description."""
        return {
            "index": self.index,
            "key": self.key,
            "modes": list(self.modes),
            "shape": list(self.shape),
            "labels": {k: list(v) for k, v in self.labels.items()},
            "targets": [m.target for m in self.members],
        }


def _target_sizes(t: Target, layout: Layout, side: Side) -> tuple[dict[str, int], int, int]:
    """Sizes of the out/in/head modes for ``t`` (oriented), heads and head size."""
    if not layout.uses_heads:
        return {"out": t.out_features, "in": t.in_features}, 1, 0
    other: Side = "in" if side == "out" else "out"
    if t.head_dim > 0:
        heads, d_h = t.heads_on(side), t.head_dim
    else:
        heads, d_h = 1, t.side_size(side)
    return {"out": t.side_size(other), "in": d_h, "head": heads}, heads, d_h


def plan_groups(
    grid: WeightGrid, layout: Layout, head_split: str | Mapping[str, str] = "auto"
) -> list[GroupPlan]:
    """Split the grid's targets into the CP tensors of ``layout``.

    Targets fall into one group when they agree on the layout's group axes and on the
    sizes of the ``out``/``in``/``head`` modes.

    Examples
    --------
    >>> from transformers import LlamaConfig, LlamaModel
    >>> cfg = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
    ...                   num_key_value_heads=2, intermediate_size=64, vocab_size=50)
    >>> grid = WeightGrid.from_model(LlamaModel(cfg))
    >>> [(g.shape, g.labels["matrix"]) for g in plan_groups(grid, Layout.resolve("lorta"))]
    [((32, 8, 4, 2, 2), ('q', 'o')), ((32, 8, 2, 2, 2), ('k', 'v'))]
    >>> len(plan_groups(grid, Layout.resolve("lora")))
    8
    """
    if isinstance(head_split, Mapping):
        unknown = sorted(set(head_split) - set(grid.matrices))
        if unknown:
            raise CPTensorError(
                f"head_split: {unknown} name no matrix of the targets; their matrices are "
                f"{list(grid.matrices)}"
            )
    buckets: dict[tuple[Any, ...], list[tuple[Target, Side | None, dict[str, int], int, int]]] = {}
    for t in grid.targets:
        side: Side | None = resolve_head_split(head_split, t) if layout.uses_heads else None
        sizes, heads, d_h = _target_sizes(t, layout, side or "in")
        key_axes = tuple((a, t.layer if a == "layer" else t.matrix) for a in layout.groups)
        key = (key_axes, tuple(sorted(sizes.items())))
        buckets.setdefault(key, []).append((t, side, sizes, heads, d_h))
    plans: list[GroupPlan] = []
    for i, ((key_axes, _), items) in enumerate(buckets.items()):
        sizes = items[0][2]
        labels: dict[str, tuple[Any, ...]] = {}
        if "layer" in layout.modes:
            labels["layer"] = tuple(sorted({t.layer for t, *_ in items}))
        if "matrix" in layout.modes:
            labels["matrix"] = ordered_matrices([t.matrix for t, *_ in items])
        shape = tuple(sizes[m] if m in sizes else len(labels[m]) for m in layout.modes)
        members = tuple(
            Member(
                target=t.name,
                index={m: labels[m].index(t.layer if m == "layer" else t.matrix) for m in labels},
                split=side,
                heads=heads,
                head_dim=d_h,
            )
            for t, side, _, heads, d_h in items
        )
        key = {a: v for a, v in key_axes}
        key["sizes"] = {m: sizes[m] for m in ("out", "in", "head") if m in sizes}
        plans.append(GroupPlan(i, key, layout.modes, shape, labels, members))
    return plans


def lora_equivalent_parameters(grid: WeightGrid, r: int) -> int:
    """Parameters LoRA at rank ``r`` trains on the same modules: one pair per module,
    ``Σ r·(in + out)``, as PEFT adapts a module. A fused module (GPT-2's ``c_attn``, whose
    targets are its Q, K, V slices) is one pair ``r·(in + Σ out of its targets)``, not one
    per slice.

    Examples
    --------
    >>> g = WeightGrid("custom", (Target("w", "w", 0, "w", 3, 2),))
    >>> lora_equivalent_parameters(g, 4)
    20
    >>> fused = WeightGrid("custom", tuple(
    ...     Target(f"c:{m}", "c", 0, m, 8, 8, out_offset=8 * i) for i, m in enumerate("qkv")))
    >>> lora_equivalent_parameters(fused, 4)  # 4·(8 + 24), not 3·4·(8 + 8)
    128
    """
    modules: dict[str, tuple[int, int]] = {}
    for t in grid.targets:
        in_f, out_f = modules.get(t.module, (t.in_features, 0))
        modules[t.module] = (in_f, out_f + t.out_features)
    return sum(r * (in_f + out_f) for in_f, out_f in modules.values())


# -- a target's matrix as its block of the group's CP tensor -----------------------------------
def target_block(delta: Any, split: Side | None, heads: int, head_dim: int) -> Any:
    """A target's ``(out × in)`` matrix (``Linear`` orientation) as its block of the CP
    tensor: ``(size_out, size_in)`` without a head mode, ``(size_out, head_dim, heads)``
    with one (a view when possible; NumPy or torch).

    With a head mode, mode ``out`` is the side the heads do not split and mode ``in`` one
    head of the split side: ``block[i, j, h] = ΔW[h·d_h + j, i]`` when the heads split
    the output (``split="out"``), ``ΔW[i, h·d_h + j]`` when they split the input. This is
    the orientation in which the adapter's forward pass reads its factors
    (:func:`cptensor_adapters.modules.target_factors`), so the block of ``B·A`` is the CP
    of the target's factor rows.

    Examples
    --------
    >>> import numpy as np
    >>> w = np.arange(12.0).reshape(4, 3)            # out = 2 heads of 2, in = 3
    >>> b = target_block(w, "out", 2, 2)
    >>> b.shape, b[0, 1, 1] == w[1 * 2 + 1, 0]
    ((3, 2, 2), np.True_)
    >>> bool((target_matrix(b, "out", 2, 2) == w).all())
    True
    """
    if split is None:
        return delta
    xp = array_namespace(delta)
    if split == "out":  # rows h·d_h + j, columns i  ->  [i, j, h]
        return xp.permute_dims(xp.reshape(delta, (heads, head_dim, -1)), (2, 1, 0))
    return xp.permute_dims(xp.reshape(delta, (delta.shape[0], heads, head_dim)), (0, 2, 1))


def target_matrix(block: Any, split: Side | None, heads: int, head_dim: int) -> Any:
    """The inverse of :func:`target_block`: a block back to the ``(out × in)`` matrix."""
    if split is None:
        return block
    xp = array_namespace(block)
    if split == "out":
        return xp.reshape(xp.permute_dims(block, (2, 1, 0)), (heads * head_dim, -1))
    return xp.reshape(xp.permute_dims(block, (0, 2, 1)), (block.shape[0], heads * head_dim))


def block_modes(plan: GroupPlan) -> tuple[int, ...]:
    """Positions of the modes one target's block covers (``out``, ``in``, ``head``), in
    the order of :func:`target_block`'s axes."""
    return tuple(plan.modes.index(m) for m in ("out", "in", "head") if m in plan.modes)


def _grid_key(plan: GroupPlan, member: Member) -> tuple[int, ...]:
    """The key of ``member``'s block among the group's other modes (increasing order)."""
    inner = block_modes(plan)
    return tuple(member.index[plan.modes[i]] for i in range(len(plan.modes)) if i not in inner)


def group_tensor(plan: GroupPlan, read: Callable[[Member], Any], dtype: Any = None) -> Any:
    """One group's CP tensor from its members' ``(out × in)`` matrices, in the adapter's
    orientation: a :class:`~cptensor.structured.BlockTensor` that calls ``read(member)``
    each time it needs a block (so a reader of files keeps one block in memory), or the
    block itself when the group has no ``layer``/``matrix`` mode. A member whose
    ``read`` returns ``None``, and a grid position no member holds, is a zero block (of
    the other blocks' library, dtype and device). ``dtype``: convert each block to it
    when read (see :class:`~cptensor.structured.BlockTensor`).

    Examples
    --------
    >>> import numpy as np
    >>> from cptensor_adapters.grid import Target, WeightGrid
    >>> ts = tuple(Target(f"{l}.{m}", f"{l}.{m}", l, m, 8, 8, heads=2, head_dim=4,
    ...                   head_side="in" if m == "o" else "out")
    ...            for l in range(2) for m in "qo")
    >>> plan, = plan_groups(WeightGrid("custom", ts), Layout.resolve("lorta"))
    >>> x = group_tensor(plan, lambda member: np.ones((8, 8)))
    >>> x.shape, float(x.norm() ** 2)
    ((8, 4, 2, 2, 2), 256.0)
    """
    inner = block_modes(plan)
    by_key = {_grid_key(plan, m): m for m in plan.members}
    if len(inner) == len(plan.modes):
        (member,) = plan.members
        return _block(read, member)
    sizes = tuple(plan.shape[i] for i in inner)
    zero: list[Any] = []  # made once, from the first block read, when a zero block is needed

    def block(key: tuple[int, ...]) -> Any:
        member = by_key.get(tuple(int(k) for k in key))
        out = None if member is None else _block(read, member)
        if out is not None:
            return out
        if not zero:  # of the library, dtype and device of the other blocks
            like = next(b for b in map(lambda m: _block(read, m), plan.members) if b is not None)
            xp = array_namespace(like)
            zero.append(xp.zeros(sizes, dtype=like.dtype, device=getattr(like, "device", None)))
        return zero[0]

    return BlockTensor(plan.shape, inner, block, dtype=dtype)


def _block(read: Callable[[Member], Any], member: Member) -> Any:
    w = read(member)
    if w is None:
        return None
    return target_block(w, member.split, member.heads, member.head_dim)


def lowrank_group_tensor(
    plan: GroupPlan, pairs: Callable[[Member], tuple[Any, Any] | None]
) -> LowRankBlockTensor:
    """One group's CP tensor from its members' low-rank updates ``ΔW = B·A`` (``B``:
    ``out × s``, ``A``: ``s × in``, scaling folded into ``B``), never formed: a
    :class:`~cptensor.structured.LowRankBlockTensor` in the orientation of
    :func:`target_block`. ``pairs(member)`` returning ``None`` is a zero block.

    Examples
    --------
    >>> import numpy as np
    >>> from cptensor_adapters.grid import Target, WeightGrid
    >>> rng = np.random.default_rng(0)
    >>> ts = tuple(Target(f"{l}.{m}", f"{l}.{m}", l, m, 8, 8, heads=2, head_dim=4,
    ...                   head_side="in" if m == "o" else "out")
    ...            for l in range(2) for m in "qo")
    >>> plan, = plan_groups(WeightGrid("custom", ts), Layout.resolve("lorta"))
    >>> ba = {m.target: (rng.standard_normal((8, 2)), rng.standard_normal((2, 8)))
    ...       for m in plan.members}
    >>> lr = lowrank_group_tensor(plan, lambda m: ba[m.target])
    >>> dense = group_tensor(plan, lambda m: ba[m.target][0] @ ba[m.target][1]).to_dense()
    >>> bool(np.allclose(lr.to_dense(), dense))
    True
    """
    pos = {m: plan.modes.index(m) for m in ("out", "in", "head") if m in plan.modes}
    rows = (pos["out"],)
    # the split side's index h·d_h + j reads as (head, in) row-major: no copy
    cols = (pos["head"], pos["in"]) if "head" in pos else (pos["in"],)
    by_key = {_grid_key(plan, m): m for m in plan.members}

    def factors(key: tuple[int, ...]) -> tuple[Any, Any] | None:
        member = by_key.get(tuple(int(k) for k in key))
        ba = None if member is None else pairs(member)
        if ba is None:
            return None
        b, a = ba
        if member.split == "out":  # the block is ΔWᵀ = Aᵀ Bᵀ
            return a.T, b
        return b, a.T

    if len(rows) + len(cols) == len(plan.modes):
        return LowRankBlockTensor(plan.shape, rows, cols, {(): factors(())})
    return LowRankBlockTensor(plan.shape, rows, cols, factors)

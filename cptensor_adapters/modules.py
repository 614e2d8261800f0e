"""Adapter modules: the shared factor store, the wrapper layer and ``modules_to_save``.

The CP factors of every adapter live once, in a :class:`FactorStore` attached to the root
of the model (attribute ``cp_adapters``), keyed by adapter name, as PEFT's VeRA stores its
shared matrices. Each adapted module is replaced by a :class:`CPAdapterLayer` that keeps the
original module as ``base_layer`` and a plain (unregistered) reference to the store, so the
factors appear once in ``state_dict()`` and ``parameters()``.

Forward pass (never a ``d × d`` matrix): for each target of a module the layer builds
*effective* factors ``A (r × d_in)`` and ``B (d_out × r)`` with ``ΔW = B·A`` from the CP
factors, at a cost of ``O(r·d)``:

- no head mode: ``A = U_inᵀ``, ``B = U_out·diag(s·c)`` with ``c`` the product of the
  coefficient rows (``layer``, ``matrix``) and ``s = alpha / r``;
- heads split the output (Q, K, V): ``A = U_outᵀ``, ``B[h·d_h + j, :] = s·c_h ⊙ U_in[j, :]``
  with ``c_h = C_H[h] ⊙ C_L[l] ⊙ C_M[m]``;
- heads split the input (O): ``A[:, h·d_h + j] = s·c_h ⊙ U_in[j, :]``, ``B = U_out``.

The update is then ``y = base(x) + (x·Aᵀ)·Bᵀ``, two thin GEMMs fused into one ``addmm`` (the
same work as LoRA at rank ``r``). A fused GPT-2 ``c_attn`` shares ``x·Aᵀ`` between Q, K, V
when ``A`` is the same factor (as under ``"lorta"``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import AdapterConfig
from .grid import Side, Target, WeightGrid, module_weight
from .layout import GroupPlan

__all__ = [
    "STORE_ATTR",
    "AdapterFactors",
    "CPAdapterLayer",
    "FactorGroup",
    "FactorStore",
    "ModulesToSaveWrapper",
]

#: Attribute of the root module that holds the :class:`FactorStore`.
STORE_ATTR = "cp_adapters"


class FactorGroup(nn.Module):
    """The factors of one CP tensor: a ``(size × r)`` parameter per mode.

    Example:
        >>> from cptensor_adapters.layout import GroupPlan
        >>> g = FactorGroup(GroupPlan(0, {}, ("out", "in"), (3, 2)), r=4, dtype=torch.float32)
        >>> [tuple(f.shape) for f in g.factor_list()]
        [(3, 4), (2, 4)]
    """

    def __init__(
        self,
        plan: GroupPlan,
        r: int,
        dtype: torch.dtype,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.plan = plan
        self.factors = nn.ParameterDict(
            {
                m: nn.Parameter(torch.zeros(size, r, dtype=dtype, device=device))
                for m, size in zip(plan.modes, plan.shape)
            }
        )

    def factor_list(self) -> list[torch.Tensor]:
        """Factors in mode order."""
        return [self.factors[m] for m in self.plan.modes]


class AdapterFactors(nn.Module):
    """All CP tensors of one named adapter, with its config, grid and group plans.

    Attributes:
        config: the :class:`AdapterConfig`.
        grid: the :class:`WeightGrid` of its targets.
        trainable: whether its factors train when it is active.
    """

    def __init__(
        self,
        config: AdapterConfig,
        grid: WeightGrid,
        plans: list[GroupPlan],
        dtype: torch.dtype,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.grid = grid
        self.plans = plans
        self.trainable = True
        self.groups = nn.ModuleList(FactorGroup(p, config.r, dtype, device) for p in plans)

    @torch.no_grad()
    def initialise(self) -> None:
        """(Re)initialise the factors from ``config.init`` and ``config.seed``.

        Kaiming-uniform with ``a = √5`` on each ``(size × r)`` factor (uniform in
        ``±1/√r``); the ``in`` factor is zero under ``"default"``, the ``out`` factor under
        ``"zero_out"``, none under ``"random"``.
        """
        init = self.config.init
        for g in self.groups:
            for mode, p in g.factors.items():
                if p.device.type == "meta":
                    continue
                zero = (init == "default" and mode == "in") or (
                    init == "zero_out" and mode == "out"
                )
                if zero:
                    p.zero_()
                    continue
                gen = torch.Generator(device=p.device)
                gen.manual_seed(_mode_seed(self.config.seed, g.plan.index, mode))
                bound = 1.0 / (p.shape[1] ** 0.5)
                p.copy_(
                    torch.rand(p.shape, generator=gen, device=p.device, dtype=torch.float32)
                    .mul_(2 * bound)
                    .sub_(bound)
                    .to(p.dtype)
                )

    def num_parameters(self) -> int:
        """Number of factor entries."""
        return sum(p.numel() for p in self.parameters())


def _mode_seed(seed: int, group: int, mode: str) -> int:
    return (
        seed * 1_000_003 + group * 101 + ("out", "in", "head", "layer", "matrix").index(mode)
    ) % (2**63)


class FactorStore(nn.Module):
    """Shared CP factors of every adapter of a model, keyed by adapter name.

    Attributes:
        adapters: ``ModuleDict`` name → :class:`AdapterFactors`.
        active: names of the active adapters (their updates are summed).
        disabled: depth of nested :func:`~cptensor_adapters.disabled` contexts.
    """

    def __init__(self) -> None:
        super().__init__()
        self.adapters = nn.ModuleDict()
        self.active: tuple[str, ...] = ()
        self.disabled = 0
        self.original_requires_grad: dict[str, bool] = {}

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - never called
        raise RuntimeError("FactorStore holds parameters; it is not called")

    def set_trainable(self) -> None:
        """``requires_grad`` = active and trainable, for every adapter's factors."""
        for name, a in self.adapters.items():
            flag = name in self.active and a.trainable
            for p in a.parameters():
                p.requires_grad_(flag)


@dataclass(frozen=True)
class _Piece:
    """How one target of a module reads its adapter's factors."""

    target: str
    group: int
    index: tuple[tuple[str, int], ...]  # coefficient modes (layer, matrix) and rows
    split: Side | None  # head split side, None without a head mode
    heads: int
    head_dim: int
    out_offset: int
    out_size: int
    in_size: int


class CPAdapterLayer(nn.Module):
    """Wraps a ``Linear``/``Conv1D`` and adds the factored updates of the active adapters.

    Attributes:
        base_layer: the original module.
        module_path: its path in the model.
        storage: ``"linear"`` or ``"conv1d"`` (weight stored transposed).
        merged: names of adapters currently merged into the base weight.
    """

    def __init__(self, base_layer: nn.Module, store: FactorStore, module_path: str) -> None:
        super().__init__()
        self.base_layer = base_layer
        object.__setattr__(self, "_store", store)
        self.module_path = module_path
        w = module_weight(base_layer)
        self.storage = "linear" if isinstance(base_layer, nn.Linear) else "conv1d"
        if self.storage == "conv1d":
            self.in_features, self.out_features = int(w.shape[0]), int(w.shape[1])
        else:
            self.in_features, self.out_features = int(w.shape[1]), int(w.shape[0])
        self.pieces: dict[str, tuple[_Piece, ...]] = {}
        self.merged: list[str] = []

    # ----------------------------------------------------------------- plumbing
    @property
    def weight(self) -> torch.Tensor:
        """The base layer's weight."""
        return self.base_layer.weight  # type: ignore[return-value]

    @property
    def bias(self) -> torch.Tensor | None:
        """The base layer's bias."""
        return self.base_layer.bias  # type: ignore[return-value]

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("_") or name == "base_layer":
                raise
            return getattr(self.base_layer, name)

    def extra_repr(self) -> str:
        return f"adapters={list(self.pieces)}, merged={self.merged}"

    def add_adapter(self, name: str, targets: list[Target], groups: list[GroupPlan]) -> None:
        """Register how adapter ``name`` reaches this module's targets."""
        where = {m.target: (g, m) for g in groups for m in g.members}
        pieces = []
        for t in targets:
            g, m = where[t.name]
            pieces.append(
                _Piece(
                    target=t.name,
                    group=g.index,
                    index=tuple(sorted(m.index.items(), key=lambda kv: g.modes.index(kv[0]))),
                    split=m.split,
                    heads=m.heads,
                    head_dim=m.head_dim,
                    out_offset=t.out_offset,
                    out_size=t.out_features,
                    in_size=t.in_features,
                )
            )
        self.pieces[name] = tuple(sorted(pieces, key=lambda p: p.out_offset))

    def remove_adapter(self, name: str) -> None:
        """Forget adapter ``name`` (unmerge it first if merged)."""
        if name in self.merged:
            self.unmerge(name)
        self.pieces.pop(name, None)

    # ------------------------------------------------------------ the factors
    def _target_factors(
        self, name: str
    ) -> list[tuple[_Piece, torch.Tensor, torch.Tensor, tuple[int, str] | None]]:
        """Per target: (piece, A (r × d_in), B (d_out_t × r), key of A if it is a raw factor)."""
        adapter: AdapterFactors = self._store.adapters[name]
        scaling = adapter.config.scaling
        out = []
        for pc in self.pieces[name]:
            f = adapter.groups[pc.group].factors
            coef: torch.Tensor | None = None
            for mode, row in pc.index:
                coef = f[mode][row] if coef is None else coef * f[mode][row]
            if pc.split is None:
                b_scale = coef * scaling if coef is not None else None
                B = f["out"] * b_scale if b_scale is not None else f["out"] * scaling
                out.append((pc, f["in"].t(), B, (pc.group, "in")))
                continue
            c = f["head"] * (coef * scaling if coef is not None else scaling)  # (heads, r)
            per_head = (c.unsqueeze(1) * f["in"].unsqueeze(0)).reshape(pc.heads * pc.head_dim, -1)
            if pc.split == "out":
                out.append((pc, f["out"].t(), per_head, (pc.group, "out")))
            else:
                out.append((pc, per_head.t(), f["out"], None))
        return out

    def effective_factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, B)`` with ``A`` of shape ``(R, in_features)`` and ``B`` of shape
        ``(out_features, R)`` such that the module's update is ``ΔW = B·A`` (``Linear``
        orientation, scaling included). ``R = r`` except for a fused module whose targets
        use different ``A`` (then ``R`` = r per target, ``B`` block-structured)."""
        parts = self._target_factors(name)
        if len(parts) == 1 and parts[0][0].out_size == self.out_features:
            _, A, B, _ = parts[0]
            return A, B
        keys = {k for *_, k in parts}
        if len(keys) == 1 and None not in keys:
            A = parts[0][1]
            blocks: list[torch.Tensor] = []
            pos = 0
            for pc, _, B, _ in parts:
                if pc.out_offset > pos:
                    blocks.append(B.new_zeros(pc.out_offset - pos, B.shape[1]))
                blocks.append(B)
                pos = pc.out_offset + pc.out_size
            if pos < self.out_features:
                blocks.append(B.new_zeros(self.out_features - pos, B.shape[1]))
            return A, torch.cat(blocks, 0)
        As, Bs = [], []
        for pc, A, B, _ in parts:
            As.append(A)
            Bs.append(
                F.pad(B, (0, 0, pc.out_offset, self.out_features - pc.out_offset - pc.out_size))
            )
        return torch.cat(As, 0), torch.cat(Bs, 1)

    def delta_weights(self, name: str) -> dict[str, torch.Tensor]:
        """Dense ``ΔW`` per target (``out × in``, ``Linear`` orientation, factor dtype)."""
        return {pc.target: B @ A for pc, A, B, _ in self._target_factors(name)}

    # ---------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        store: FactorStore = self._store
        if store.disabled:
            return result
        for name in store.active:
            if name not in self.pieces or name in self.merged:
                continue
            A, B = self.effective_factors(name)
            p = store.adapters[name].config.dropout
            xin = F.dropout(x, p, training=True) if p > 0 and self.training else x
            result = _add_update(result, xin, A, B)
        return result

    # ------------------------------------------------------------------ merge
    @torch.no_grad()
    def _delta_module(self, name: str) -> torch.Tensor:
        A, B = self.effective_factors(name)
        return B @ A

    @torch.no_grad()
    def merge(self, name: str) -> None:
        """Add adapter ``name``'s ``ΔW`` into the base weight."""
        if name in self.merged:
            return
        self._add_to_weight(self._delta_module(name), +1)
        self.merged.append(name)

    @torch.no_grad()
    def unmerge(self, name: str) -> None:
        """Subtract adapter ``name``'s ``ΔW`` from the base weight."""
        if name not in self.merged:
            return
        self._add_to_weight(self._delta_module(name), -1)
        self.merged.remove(name)

    def _add_to_weight(self, delta: torch.Tensor, sign: int) -> None:
        w = self.base_layer.weight
        if self.storage == "conv1d":
            delta = delta.t()
        if delta.device != w.device:
            raise RuntimeError(
                f"{self.module_path}: adapter factors on {delta.device}, weight on {w.device}; "
                "move the whole model with model.to(...)"
            )
        w.add_(delta.to(w.dtype), alpha=sign)


def _add_update(
    result: torch.Tensor, x: torch.Tensor, A: torch.Tensor, B: torch.Tensor
) -> torch.Tensor:
    """``result + (x·Aᵀ)·Bᵀ`` over the last dimension, computed in the factors' dtype."""
    if x.dtype != A.dtype:
        x = x.to(A.dtype)
    x2 = x.reshape(-1, x.shape[-1])
    t = torch.mm(x2, A.t())
    if result.dtype == B.dtype:
        out = torch.addmm(result.reshape(-1, result.shape[-1]), t, B.t())
        return out.view(result.shape)
    return result + torch.mm(t, B.t()).view(result.shape).to(result.dtype)


class ModulesToSaveWrapper(nn.Module):
    """Keeps the original module frozen and a trainable copy per adapter.

    The copy of the first active adapter that has one replaces the original in the forward
    pass; the original runs when the adapters are disabled or none active has a copy.
    """

    def __init__(self, original_module: nn.Module, store: FactorStore, module_path: str) -> None:
        super().__init__()
        self.original_module = original_module
        self.modules_to_save = nn.ModuleDict()
        self.module_path = module_path
        object.__setattr__(self, "_store", store)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("_") or name == "original_module":
                raise
            return getattr(self.original_module, name)

    def add_adapter(self, name: str) -> None:
        """Make a trainable copy of the original for adapter ``name``."""
        clone = copy.deepcopy(self.original_module)
        for p in clone.parameters():
            p.requires_grad_(True)
        self.modules_to_save[name] = clone

    def active_module(self) -> nn.Module:
        """The module the forward pass uses now."""
        store: FactorStore = self._store
        if not store.disabled:
            for name in store.active:
                if name in self.modules_to_save:
                    return self.modules_to_save[name]
        return self.original_module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.active_module()(*args, **kwargs)


def iter_adapter_layers(model: nn.Module) -> Iterator[tuple[str, CPAdapterLayer]]:
    """``(path, layer)`` for every :class:`CPAdapterLayer` in ``model``."""
    for path, m in model.named_modules():
        if isinstance(m, CPAdapterLayer):
            yield path, m


def iter_save_wrappers(model: nn.Module) -> Iterator[tuple[str, ModulesToSaveWrapper]]:
    """``(path, wrapper)`` for every :class:`ModulesToSaveWrapper` in ``model``."""
    for path, m in model.named_modules():
        if isinstance(m, ModulesToSaveWrapper):
            yield path, m

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

State dict: the wrappers are invisible in ``state_dict()`` keys. A wrapped module's own
tensors keep their original names (``...query.weight``, not ``...query.base_layer.weight``;
a ``modules_to_save`` original likewise), so a checkpoint of an adapted model holds the base
model under the names ``from_pretrained`` and the plain model expect; the adapters' tensors
sit under separate keys (``cp_adapters.*`` and ``<module>.modules_to_save.<adapter>.*``).
``load_state_dict`` accepts both spellings of the base keys.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cptensor.errors import CPTensorError

from .config import AdapterConfig
from .grid import Side, Target, WeightGrid, module_weight
from .inits import draw_factor
from .layout import GroupPlan
from .sharding import add_into, is_sharded

__all__ = [
    "STORE_ATTR",
    "AdapterFactors",
    "CPAdapterLayer",
    "FactorGroup",
    "FactorStore",
    "ModulesToSaveWrapper",
    "SharedInputScope",
]

#: Attribute of the root module that holds the :class:`FactorStore`.
STORE_ATTR = "cp_adapters"


class FactorGroup(nn.Module):
    """The factors of one CP tensor: a ``(size × r)`` parameter per mode.

    Examples
    --------
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

    Attributes
    ----------
    config : AdapterConfig
        the :class:`AdapterConfig`.
    grid : WeightGrid
        the :class:`WeightGrid` of its targets.
    trainable : bool
        whether its factors train when it is active.
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
        self.dtype = dtype
        self.groups = nn.ModuleList(FactorGroup(p, config.r, dtype, device) for p in plans)

    @torch.no_grad()
    def initialise(self) -> None:
        """(Re)initialise the factors from ``config.init`` and ``config.seed`` (the formulas
        are in :mod:`cptensor_adapters.inits`)."""
        for g in self.groups:
            for mode, p in g.factors.items():
                if p.device.type == "meta":
                    continue
                gen = torch.Generator(device=p.device)
                gen.manual_seed(_mode_seed(self.config.seed, g.plan.index, mode))
                drawn = draw_factor(self.config.init, mode, tuple(p.shape), gen, device=p.device)
                p.copy_(drawn.to(p.dtype))

    def num_parameters(self) -> int:
        """Number of factor entries."""
        return sum(p.numel() for p in self.parameters())


def _mode_seed(seed: int, group: int, mode: str) -> int:
    return (
        seed * 1_000_003 + group * 101 + ("out", "in", "head", "layer", "matrix").index(mode)
    ) % (2**63)


class FactorStore(nn.Module):
    """Shared CP factors of every adapter of a model, keyed by adapter name.

    Attributes
    ----------
    adapters : torch.nn.ModuleDict
        ``ModuleDict`` name → :class:`AdapterFactors`.
    active : tuple of str
        names of the active adapters (their updates are summed).
    disabled : int
        depth of nested :func:`~cptensor_adapters.disabled` contexts.
    share_inputs : bool
        let sibling modules that read the same input through the same factor
        (Q, K, V under ``"lorta"``) compute ``x·A`` once (see :class:`SharedInputScope`).

    Examples
    --------
    >>> from transformers import GPT2Config, GPT2Model
    >>> from cptensor_adapters import attach
    >>> m = attach(GPT2Model(GPT2Config(n_embd=32, n_layer=1, n_head=4)))
    >>> list(m.cp_adapters.adapters), m.cp_adapters.active
    (['default'], ('default',))
    """

    cp_adapter_role = "skip"  # not a target (see grid.iter_weight_modules)

    def __init__(self) -> None:
        super().__init__()
        self.adapters = nn.ModuleDict()
        self.active: tuple[str, ...] = ()
        self.disabled = 0
        self.share_inputs = True
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

    Attributes
    ----------
    base_layer : torch.nn.Module
        the original module.
    module_path : str
        its path in the model.
    storage : {"linear", "conv1d"}
        ``"linear"`` or ``"conv1d"`` (weight stored transposed).
    merged : list of str
        names of adapters currently merged into the base weight.

    Examples
    --------
    >>> from transformers import LlamaConfig, LlamaModel
    >>> from cptensor_adapters import attach
    >>> m = attach(LlamaModel(LlamaConfig(hidden_size=32, num_hidden_layers=1,
    ...            num_attention_heads=4, num_key_value_heads=2, intermediate_size=64)))
    >>> k = m.layers[0].self_attn.k_proj
    >>> type(k).__name__, type(k.base_layer).__name__, k.in_features, k.out_features
    ('CPAdapterLayer', 'Linear', 32, 16)
    """

    cp_adapter_role = "wraps"  # the grid sees base_layer (see grid.iter_weight_modules)

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
        self._merged_factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._scope: SharedInputScope | None = None
        _hide_in_state_dict(self, "base_layer")

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
            A, B = target_factors(f, pc.index, pc.split, pc.heads, pc.head_dim, scaling)
            # A is a raw factor (shared by the modules that read it) unless heads split `in`
            key = None if pc.split == "in" else (pc.group, "in" if pc.split is None else "out")
            out.append((pc, A, B, key))
        return out

    def effective_factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, B)`` with ``A`` of shape ``(R, in_features)`` and ``B`` of shape
        ``(out_features, R)`` such that the module's update is ``ΔW = B·A`` (``Linear``
        orientation, scaling included). ``R = r`` except for a fused module whose targets
        use different ``A`` (then ``R`` = r per target, ``B`` block-structured).

        Examples
        --------
        >>> from transformers import GPT2Config, GPT2Model
        >>> from cptensor_adapters import AdapterConfig, attach
        >>> m = attach(GPT2Model(GPT2Config(n_embd=32, n_layer=1, n_head=4)),
        ...            AdapterConfig(r=3))
        >>> A, B = m.h[0].attn.c_attn.effective_factors("default")  # Q, K, V share A
        >>> tuple(A.shape), tuple(B.shape)
        ((3, 32), (96, 3))
        """
        A, B, _ = self._effective(name)
        return A, B

    def _effective(self, name: str) -> tuple[torch.Tensor, torch.Tensor, tuple[int, str] | None]:
        """``(A, B, key)``: ``key`` names the raw factor ``A`` is (shared by every module
        whose targets read it), or ``None`` when ``A`` is built for this module alone."""
        parts = self._target_factors(name)
        if len(parts) == 1 and parts[0][0].out_size == self.out_features:
            _, A, B, key = parts[0]
            return A, B, key
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
            return A, torch.cat(blocks, 0), parts[0][3]
        As, Bs = [], []
        for pc, A, B, _ in parts:
            As.append(A)
            Bs.append(
                F.pad(B, (0, 0, pc.out_offset, self.out_features - pc.out_offset - pc.out_size))
            )
        return torch.cat(As, 0), torch.cat(Bs, 1), None

    def delta_weights(self, name: str) -> dict[str, torch.Tensor]:
        """Dense ``ΔW`` per target (``out × in``, ``Linear`` orientation, factor dtype)."""
        return {pc.target: B @ A for pc, A, B, _ in self._target_factors(name)}

    # ---------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        store: FactorStore = self._store
        names = (
            []
            if store.disabled
            else [n for n in store.active if n in self.pieces and n not in self.merged]
        )
        if not names:
            return self.base_layer(x, *args, **kwargs)
        if not args and not kwargs and self._fusable(x, names):
            return self._fused_forward(x, names)
        result = self.base_layer(x, *args, **kwargs)
        for name in names:
            A, B = self.effective_factors(name)
            p = store.adapters[name].config.dropout
            xin = F.dropout(x, p, training=True) if p > 0 and self.training else x
            result = _add_update(result, xin, A, B)
        return result

    def _fusable(self, x: torch.Tensor, names: list[str]) -> bool:
        """Whether the base layer and the updates can run as one fused autograd node:
        a plain ``Linear``/``Conv1D`` without hooks, one dtype everywhere, no autocast."""
        base = self.base_layer
        if type(base) is not nn.Linear and self.storage != "conv1d":
            return False
        if base._forward_hooks or base._forward_pre_hooks or _global_hooks():
            return False
        w = base.weight
        if x.dtype != w.dtype or x.device != w.device or _autocast_on(x):
            return False
        return all(self._store.adapters[n].dtype == w.dtype for n in names)

    def _fused_forward(self, x: torch.Tensor, names: list[str]) -> torch.Tensor:
        store: FactorStore = self._store
        x2 = x.reshape(-1, x.shape[-1])
        scope = self._scope if store.share_inputs else None
        cache = scope.cache if scope is not None else None
        # Inference tensors keep no version counter to validate a hit with. (The cache is
        # always None under torch.compile, which cannot trace is_inference().)
        if cache is not None and x.is_inference():
            cache = None
        a_parts: list[torch.Tensor] = []
        a_keys: list[tuple[Any, ...] | None] = []
        b_a: list[torch.Tensor] = []
        t_parts: list[torch.Tensor] = []
        b_t: list[torch.Tensor] = []
        for name in names:
            A, B, key = self._effective(name)
            p = store.adapters[name].config.dropout
            if p > 0 and self.training:  # own dropout mask: not shared
                t_parts.append(torch.mm(F.dropout(x2, p, training=True), A.t()))
                b_t.append(B)
                continue
            ck = (name, key) if key is not None and cache is not None else None
            hit = cache.get(ck) if ck is not None and cache is not None else None
            if hit is not None and hit[0] is x and hit[1] == x._version:
                t_parts.append(hit[2])
                b_t.append(B)
            else:
                a_parts.append(A)
                a_keys.append(ck)
                b_a.append(B)
        w, b = self.base_layer.weight, self.base_layer.bias
        A_cat = _cat(a_parts, 0)
        t_ext = _cat(t_parts, 1)
        B_cat = _cat(b_a + b_t, 1)
        assert B_cat is not None
        out, t_in = _LinearWithUpdate.apply(x2, w, b, A_cat, t_ext, B_cat, self.storage == "conv1d")
        if cache is not None and any(k is not None for k in a_keys):
            start = 0
            for A, ck in zip(a_parts, a_keys):
                stop = start + A.shape[0]
                if ck is not None:
                    cache[ck] = (x, x._version, t_in if len(a_parts) == 1 else t_in[:, start:stop])
                start = stop
        return out.view(*x.shape[:-1], out.shape[-1])

    # ------------------------------------------------------------------ merge
    @torch.no_grad()
    def merge_factors(self, name: str, A: torch.Tensor, B: torch.Tensor) -> None:
        """Add ``B·A`` into the base weight as adapter ``name``'s merged update, keeping
        the factors (``O(r·d)``) so that :meth:`unmerge` subtracts exactly what was added,
        even if the adapter's factors change in the meantime (``merge`` passes snapshots)."""
        self._add_to_weight(B @ A, +1)
        self._merged_factors[name] = (A, B)
        self.merged.append(name)

    @torch.no_grad()
    def unmerge(self, name: str) -> None:
        """Subtract the ``ΔW`` that :meth:`merge` added for adapter ``name``."""
        if name not in self.merged:
            return
        A, B = self._merged_factors.pop(name)
        self._add_to_weight(B @ A, -1)
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
        add_into(w, delta, sign)  # each rank's own shard of a weight sharded with FSDP2

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor | None:
        """A new tensor: the base weight plus the update of every active adapter not merged
        yet, added as :meth:`merge_factors` adds it (so bit for bit what ``merge`` would
        leave in the weight), or ``None`` when there is nothing to add. The layer is not
        changed.

        Raises
        ------
        ValueError
            there is an update to add and the weight is sharded with FSDP2 (``merge`` adds
            each rank's share of it instead).

        Examples
        --------
        >>> from transformers import GPT2Config, GPT2Model
        >>> from cptensor_adapters import AdapterConfig, attach, merge
        >>> m = attach(GPT2Model(GPT2Config(n_embd=32, n_layer=1, n_head=4)),
        ...            AdapterConfig(r=2, init="random"))
        >>> layer = m.h[0].attn.c_attn
        >>> w = layer.merged_weight()
        >>> bool(torch.equal(w, merge(m).h[0].attn.c_attn.weight)), layer.merged_weight()
        (True, None)
        """
        store: FactorStore = self._store
        if store.disabled:
            return None
        names = [n for n in store.active if n in self.pieces and n not in self.merged]
        if not names:
            return None
        if is_sharded(self.base_layer.weight):
            raise CPTensorError(
                f"model: {self.module_path}'s weight is sharded with FSDP2; merge(model) first "
                "(it adds each rank's share of the update)"
            )
        w = self.base_layer.weight.detach().clone()
        for name in names:
            A, B = self.effective_factors(name)
            delta = B @ A
            w.add_((delta.t() if self.storage == "conv1d" else delta).to(w.dtype))
        return w


def target_factors(
    factors: Mapping[str, torch.Tensor],
    index: Iterable[tuple[str, int]],
    split: Side | None,
    heads: int,
    head_dim: int,
    scaling: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` with ``ΔW = B·A`` (``A``: ``r × d_in``, ``B``: ``d_out × r``, scaling
    included) for one target of a CP group, from the group's factors ``{mode: (size, r)}``
    and the target's rows ``index`` in the coefficient modes (``layer``, ``matrix``).

    Without a head mode ``ΔW = U_out·diag(c)·U_inᵀ``; with one, the head factor scales a
    copy of ``U_in`` per head, stacked along the split side (output rows for Q, K, V;
    input columns for O).

    >>> f = {"out": torch.ones(6, 2), "in": torch.ones(3, 2), "head": torch.ones(2, 2)}
    >>> A, B = target_factors(f, (), "out", 2, 3, 0.5)
    >>> tuple(A.shape), tuple(B.shape), float((B @ A)[0, 0])
    ((2, 6), (6, 2), 1.0)
    """
    coef: torch.Tensor | None = None
    for mode, row in index:
        coef = factors[mode][row] if coef is None else coef * factors[mode][row]
    scale = coef * scaling if coef is not None else scaling
    if split is None:
        return factors["in"].t(), factors["out"] * scale
    c = factors["head"] * scale  # (heads, r)
    per_head = (c.unsqueeze(1) * factors["in"].unsqueeze(0)).reshape(heads * head_dim, -1)
    if split == "out":
        return factors["out"].t(), per_head
    return per_head.t(), factors["out"]


def _cat(parts: list[torch.Tensor], dim: int) -> torch.Tensor | None:
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim)


def _global_hooks() -> bool:
    from torch.nn.modules import module as _m

    return bool(
        getattr(_m, "_global_forward_hooks", None) or getattr(_m, "_global_forward_pre_hooks", None)
    )


def _autocast_on(x: torch.Tensor) -> bool:
    try:
        return bool(torch.is_autocast_enabled(x.device.type))
    except TypeError:  # pragma: no cover - torch < 2.4
        return bool(torch.is_autocast_enabled())


class _LinearWithUpdate(torch.autograd.Function):
    """``out = x·Wᵀ + b + [x·Aᵀ, t_ext]·Bᵀ`` as one autograd node.

    Returns ``(out, t_in)`` with ``t_in = x·Aᵀ`` (an empty tensor without ``A``): other
    modules that read the same input and the same raw factor reuse ``t_in``, and its
    gradient comes back here. The backward pass accumulates the update's input gradient
    into the base layer's in place (one ``addmm_``) instead of allocating and summing a
    second ``n × d_in`` tensor, and never forms ``ΔW``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x2: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        A: torch.Tensor | None,
        t_ext: torch.Tensor | None,
        B: torch.Tensor,
        conv1d: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        w = weight if conv1d else weight.t()
        out = torch.addmm(bias, x2, w) if bias is not None else torch.mm(x2, w)
        if A is not None:
            t_in = torch.mm(x2, A.t())
            t = t_in if t_ext is None else torch.cat([t_in, t_ext], 1)
        else:
            t_in = x2.new_empty(x2.shape[0], 0)
            assert t_ext is not None
            t = t_ext
        out.addmm_(t, B.t())
        ctx.conv1d = conv1d
        ctx.r_in = 0 if A is None else A.shape[0]
        ctx.set_materialize_grads(False)
        need = ctx.needs_input_grad
        keep_x = need[1] or need[3]
        ctx.save_for_backward(x2 if keep_x else None, weight, A, B, t)
        if A is None:
            ctx.mark_non_differentiable(t_in)
        return out, t_in

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor | None, g_t: torch.Tensor | None) -> tuple[Any, ...]:
        x2, weight, A, B, t = ctx.saved_tensors
        need_x, need_w, need_b, need_a, need_t, need_bf = ctx.needs_input_grad[:6]
        r_in = ctx.r_in
        gx = gw = gb = ga = gt_ext = gbf = None
        if g is None:  # only the shared t_in is used downstream
            if g_t is None or not r_in:
                return None, None, None, None, None, None, None
            if need_x:
                gx = torch.mm(g_t, A)
            if need_a:
                ga = torch.mm(g_t.t(), x2)
            return gx, None, None, ga, None, None, None
        gt = torch.mm(g, B) if (need_x and r_in) or need_a or need_t else None
        gt_in = None
        if gt is not None and r_in:
            gt_in = gt[:, :r_in]
            if g_t is not None:
                gt_in = gt_in + g_t
        if need_x:
            gx = torch.mm(g, weight.t() if ctx.conv1d else weight)
            if gt_in is not None:
                gx.addmm_(gt_in, A)
        if need_w:
            gw = torch.mm(x2.t(), g) if ctx.conv1d else torch.mm(g.t(), x2)
        if need_b:
            gb = g.sum(0)
        if need_a and gt_in is not None:
            ga = torch.mm(gt_in.t(), x2)
        if need_t and gt is not None:
            gt_ext = gt[:, r_in:]
        if need_bf:
            gbf = torch.mm(g.t(), t)
        return gx, gw, gb, ga, gt_ext, gbf, None


class SharedInputScope:
    """Lets the wrapped children of one module share ``x·A`` for one call of that module.

    Q, K and V read the same input; under ``"lorta"`` their ``A`` is the same factor, so
    ``x·A`` is computed once per attention call. The cache lives only while the parent
    module runs (its forward pre-hook opens it, its forward hook closes it), so it is
    rebuilt identically when activation checkpointing recomputes the parent, and it is off
    under ``torch.compile`` (the compiler sees plain code). Entries are used only for the
    same input object at the same version.

    Examples
    --------
    >>> scope = SharedInputScope()
    >>> scope.enter(None, ()); scope.cache
    {}
    >>> scope.exit(None, (), None); scope.cache is None
    True
    """

    def __init__(self) -> None:
        self.cache: dict[Any, Any] | None = None
        self.depth = 0

    def enter(self, module: Any, args: Any) -> None:
        """Forward pre-hook: open the cache (outermost call only)."""
        self.depth += 1
        if self.depth == 1:
            compiling = torch.compiler.is_compiling() if hasattr(torch, "compiler") else False
            self.cache = None if compiling else {}

    def exit(self, module: Any, args: Any, output: Any) -> None:
        """Forward hook: close the cache."""
        self.depth = max(self.depth - 1, 0)
        if self.depth == 0:
            self.cache = None


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

    Examples
    --------
    >>> from transformers import BertConfig, BertForSequenceClassification
    >>> from cptensor_adapters import AdapterConfig, attach
    >>> m = attach(BertForSequenceClassification(BertConfig(hidden_size=32,
    ...            num_hidden_layers=1, num_attention_heads=4, intermediate_size=64)),
    ...            AdapterConfig(modules_to_save=["classifier"]))
    >>> type(m.classifier).__name__, list(m.classifier.modules_to_save)
    ('ModulesToSaveWrapper', ['default'])
    """

    cp_adapter_role = "skip"  # saved in full, not a target (see grid.iter_weight_modules)

    def __init__(self, original_module: nn.Module, store: FactorStore, module_path: str) -> None:
        super().__init__()
        self.original_module = original_module
        self.modules_to_save = nn.ModuleDict()
        self.module_path = module_path
        object.__setattr__(self, "_store", store)
        _hide_in_state_dict(self, "original_module", keep=("modules_to_save",))

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


def _hide_in_state_dict(wrapper: nn.Module, child: str, keep: tuple[str, ...] = ()) -> None:
    """Give ``wrapper``'s state dict the keys of the module it wraps: ``<prefix><child>.k``
    is written as ``<prefix>k`` (children named in ``keep`` are left alone), and loading
    accepts either spelling. Plain functions, not bound methods: torch marks the hooks it
    is given with an attribute, which a bound method cannot take."""
    wrapper._cp_state_child = (child, keep)
    if hasattr(wrapper, "register_state_dict_post_hook"):
        wrapper.register_state_dict_post_hook(_lift_keys)
    else:  # pragma: no cover - torch < 2.5
        wrapper._register_state_dict_hook(_lift_keys)
    if hasattr(wrapper, "register_load_state_dict_pre_hook"):
        wrapper.register_load_state_dict_pre_hook(_lower_keys)
    else:  # pragma: no cover - torch < 2.5
        wrapper._register_load_state_dict_pre_hook(_lower_keys, with_module=True)


def _lift_keys(module: nn.Module, state_dict: Any, prefix: str, local_metadata: Any) -> None:
    """State-dict post-hook of a wrapper: ``<prefix><child>.k`` becomes ``<prefix>k``, in
    place and in the same order (the wrapper's keys are re-inserted together)."""
    child, _ = module._cp_state_child
    inner = prefix + child + "."
    mine = [k for k in state_dict if k.startswith(prefix)]
    if not any(k.startswith(inner) for k in mine):
        return
    items = [(k, state_dict.pop(k)) for k in mine]
    for k, v in items:
        state_dict[prefix + k[len(inner) :] if k.startswith(inner) else k] = v


def _lower_keys(
    module: nn.Module,
    state_dict: Any,
    prefix: str,
    local_metadata: Any,
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    """Load-state-dict pre-hook of a wrapper: ``<prefix>k`` goes back to
    ``<prefix><child>.k`` (keys already spelt that way, and those of ``keep``, stay)."""
    child, keep = module._cp_state_child
    own = tuple(prefix + c + "." for c in (child, *keep))
    for k in [k for k in state_dict if k.startswith(prefix) and not k.startswith(own)]:
        new = prefix + child + "." + k[len(prefix) :]
        if new not in state_dict:
            state_dict[new] = state_dict.pop(k)


def scope_of(parent: nn.Module, create: bool = True) -> SharedInputScope | None:
    """The :class:`SharedInputScope` hooked on ``parent`` (hooked now if ``create``)."""
    for fn in parent._forward_pre_hooks.values():
        owner = getattr(fn, "__self__", None)
        if isinstance(owner, SharedInputScope):
            return owner
    if not create:
        return None
    scope = SharedInputScope()
    parent.register_forward_pre_hook(scope.enter)
    parent.register_forward_hook(scope.exit, always_call=True)
    return scope


def remove_scopes(model: nn.Module) -> None:
    """Unhook every :class:`SharedInputScope` from ``model``'s modules."""
    for m in model.modules():
        for hooks in (m._forward_pre_hooks, m._forward_hooks):
            for key in [
                k
                for k, fn in hooks.items()
                if isinstance(getattr(fn, "__self__", None), SharedInputScope)
            ]:
                del hooks[key]
                m._forward_hooks_always_called.pop(key, None)


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

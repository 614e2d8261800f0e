"""Deltas of models and checkpoints: :func:`extract_delta`, and low-rank updates held in
memory (:func:`lowrank_delta_from_weights`, :func:`lora_delta_from_model`).

Every delta is laid out by the adapters' geometry (:mod:`cptensor_adapters.grid`,
:mod:`cptensor_adapters.layout`): see :class:`~cptensor_adapters.deltas.Delta`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from cptensor.errors import CPTensorError

from ..grid import Target, WeightGrid
from ..layout import Layout, group_tensor, lowrank_group_tensor, plan_groups
from .sources import WeightSource
from .tensors import DeltaTensor, LowRankDelta, plan_label

__all__ = ["extract_delta", "lora_delta_from_model", "lowrank_delta_from_weights"]


def head_geometry(grid: Any) -> dict[str, int | None]:
    """``num_heads``/``num_kv_heads``/``head_dim`` from an int (heads) or an object with
    those attributes (a :class:`WeightGrid`), for sources whose config does not say."""
    if grid is None:
        return {}
    if isinstance(grid, int) and not isinstance(grid, bool):
        return {"num_heads": grid}
    heads = getattr(grid, "num_heads", None) or getattr(grid, "n_heads", None)
    if heads is None:
        raise CPTensorError(
            f"grid: expected the number of heads (an int) or a WeightGrid, got "
            f"{type(grid).__name__}"
        )
    return {
        "num_heads": heads,
        "num_kv_heads": getattr(grid, "num_kv_heads", None),
        "head_dim": getattr(grid, "head_dim", None),
    }


def grid_of_shapes(
    shapes: Mapping[str, Any],
    config: Any,
    what: str,
    *,
    targets: Any = None,
    orientation: str = "stored",
    geometry: Mapping[str, int | None] | None = None,
) -> WeightGrid:
    """:meth:`WeightGrid.from_shapes`, its errors prefixed with ``what``."""
    try:
        return WeightGrid.from_shapes(
            shapes, config, targets, orientation=orientation, **(geometry or {})
        )
    except CPTensorError as exc:
        raise CPTensorError(f"{what}: {exc}") from None


def _by_place(grid: WeightGrid) -> dict[tuple[int, str], Target]:
    return {(t.layer, t.matrix): t for t in grid.targets}


def _common_suffix(a: str, b: str) -> tuple[str, str]:
    """The parts of two dotted names before their longest common dotted suffix."""
    pa, pb = a.split("."), b.split(".")
    n = 0
    while n < min(len(pa), len(pb)) and pa[-1 - n] == pb[-1 - n]:
        n += 1
    head_a, head_b = pa[: len(pa) - n], pb[: len(pb) - n]
    return ("".join(p + "." for p in head_a), "".join(p + "." for p in head_b))


def _compare(gb: WeightGrid, gt: WeightGrid) -> None:
    """Refuse two grids of different architectures, saying how they differ."""
    diffs = [
        f"{attr}: base {getattr(gb, attr)!r}, tuned {getattr(gt, attr)!r}"
        for attr in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim")
        if getattr(gb, attr) != getattr(gt, attr)
    ]
    pb, pt = _by_place(gb), _by_place(gt)
    only_b, only_t = sorted(set(pb) - set(pt)), sorted(set(pt) - set(pb))
    if only_b or only_t:
        diffs.append(f"(layer, matrix) only in base {only_b[:4]}, only in tuned {only_t[:4]}")
    for key in sorted(set(pb) & set(pt)):
        b, t = pb[key], pt[key]
        if (b.out_features, b.in_features) != (t.out_features, t.in_features):
            diffs.append(
                f"{t.name} is {b.out_features}×{b.in_features} in base, "
                f"{t.out_features}×{t.in_features} in tuned"
            )
    if diffs:
        raise CPTensorError(
            "base and tuned are models of different architectures (" + "; ".join(diffs[:6]) + ")"
        )


def read_target(src: WeightSource, t: Target) -> np.ndarray:
    """Target ``t``'s weight from ``src`` in ``Linear`` orientation (``out × in``)."""
    w = src.read(src.key_of(t.module))
    if t.storage == "conv1d":
        w = w.T
    w = w[t.out_offset : t.out_offset + t.out_features]
    if w.shape != (t.out_features, t.in_features):  # pragma: no cover - grid checked it
        raise CPTensorError(f"{src.what}: {t.module} does not have the grid's shape")
    return w


def extract_delta(
    base: Any,
    tuned: Any,
    grid: Any = None,
    layout: Any = "lorta",
    *,
    targets: Any = None,
    head_split: Any = "auto",
) -> DeltaTensor:
    """The fine-tuned delta ``tuned − base``, laid out as the CP tensors of an adapter.

    Parameters
    ----------
    base, tuned : torch.nn.Module or path
        Two models (their ``state_dict``) or two checkpoint directories (or
        ``.safetensors`` files) with ``config.json`` beside them. Files are
        memory-mapped and one weight is read at a time; nothing is loaded up front but
        the headers.
    grid : int or WeightGrid, optional
        The head geometry when neither source has a config: the number of heads, or a
        grid whose ``num_heads``, ``num_kv_heads`` and ``head_dim`` are used.
    layout : str, Layout or mapping
        The adapter layout whose CP tensors the delta is laid out as (default
        ``"lorta"``: the paper's tensor over out × in-per-head × head × layer × matrix; a
        model with grouped-query attention gets one tensor over Q and O and one over K
        and V, as its adapter does).
    targets : str or list of str, optional
        Which weights (as in :meth:`WeightGrid.from_model`); default the attention
        projections Q, K, V, O.
    head_split : str or mapping
        Which side the heads split, per matrix (as in ``AdapterConfig.head_split``).

    Returns
    -------
    DeltaTensor
        ``.groups`` holds one lazily read ``BlockTensor`` per CP tensor (``.shape`` when
        there is one); ``.matched`` which tensor names were paired; ``.prefixes`` and
        ``.notes`` what was done to match them (e.g. a ``bert.`` prefix present in one
        checkpoint only).

    Raises
    ------
    FileNotFoundError
        A path that does not exist or holds no safetensors file.
    CPTensorError
        An unknown layout, no weights found, models of different architectures (the
        message says how they differ), or an adapter directory instead of a checkpoint
        (the message names :func:`extract_adapter_delta`).

    Examples
    --------
    >>> import torch
    >>> from transformers import BertConfig, BertModel
    >>> cfg = BertConfig(hidden_size=16, num_attention_heads=4, num_hidden_layers=2,
    ...                  intermediate_size=32, vocab_size=50)
    >>> _ = torch.manual_seed(0)
    >>> base = BertModel(cfg)
    >>> tuned = BertModel(cfg)
    >>> _ = tuned.load_state_dict(base.state_dict())
    >>> with torch.no_grad():
    ...     _ = tuned.encoder.layer[1].attention.self.query.weight.add_(1.0)
    >>> delta = extract_delta(base, tuned)
    >>> delta.shape
    (16, 4, 4, 2, 4)
    >>> round(float(delta.norm()), 6)   # sqrt(16 * 16): one 16×16 block of ones
    16.0

    A Llama model with grouped-query attention (4 query heads, 2 key/value heads) gives
    the two tensors of its LoRTA adapter:

    >>> from transformers import LlamaConfig, LlamaModel
    >>> cfg = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
    ...                   num_key_value_heads=2, intermediate_size=64, vocab_size=50)
    >>> llama = LlamaModel(cfg)
    >>> extract_delta(llama, llama).describe_groups()
    'Q, O: (32, 8, 4, 2, 2); K, V: (32, 8, 2, 2, 2)'
    """
    layout_ = Layout.resolve(layout)
    src_b, src_t = WeightSource(base, "base"), WeightSource(tuned, "tuned")
    geometry = head_geometry(grid)
    cfg_b = src_b.config or src_t.config
    cfg_t = src_t.config or src_b.config
    gb = grid_of_shapes(src_b.shapes, cfg_b, "base", targets=targets, geometry=geometry)
    gt = grid_of_shapes(src_t.shapes, cfg_t, "tuned", targets=targets, geometry=geometry)
    _compare(gb, gt)
    base_of = {t.name: _by_place(gb)[(t.layer, t.matrix)] for t in gt.targets}

    def delta_of(t: Target) -> np.ndarray:
        return read_target(src_t, t) - read_target(src_b, base_of[t.name])

    plans = plan_groups(gt, layout_, head_split)
    groups = [group_tensor(p, lambda m: delta_of(gt[m.target]), dtype=np.float32) for p in plans]
    keys = {
        t.name: (src_b.key_of(base_of[t.name].module), src_t.key_of(t.module)) for t in gt.targets
    }
    first = gt.targets[0]
    pre_b, pre_t = _common_suffix(base_of[first.name].module, first.module)
    notes = [
        f"base: {_describe(gb)} ({src_b.description})",
        f"tuned: {_describe(gt)} ({src_t.description})",
        layout_note(layout_, gt, plans),
    ]
    if pre_b != pre_t:
        notes.append(
            f"key prefixes differ: base {pre_b!r}, tuned {pre_t!r}; matched "
            f"{len(gt)} weights by layer and matrix"
        )
    else:
        notes.append(f"matched {len(gt)} weights by name")
    return DeltaTensor(
        gt,
        layout_,
        plans,
        groups,
        keys,
        notes,
        read=delta_of,
        prefixes={"base": pre_b, "tuned": pre_t},
        sources=(src_b.description, src_t.description),
    )


def _describe(grid: WeightGrid) -> str:
    """One phrase: architecture, layers, width and heads of a grid."""
    text = f"{grid.architecture}-style model, {grid.num_layers} layers"
    if grid.num_heads:
        text += f", hidden {grid.hidden_size}, {grid.num_heads} heads of {grid.head_dim}"
        if grid.num_kv_heads and grid.num_kv_heads != grid.num_heads:
            text += f" ({grid.num_kv_heads} key/value heads: grouped-query attention)"
    return text


def layout_note(layout: Layout, grid: WeightGrid, plans: Any) -> str:
    """The note saying how a delta is laid out: the layout and each CP tensor's matrices
    and shape (the first three of many)."""
    parts = [f"{plan_label(grid, p)} {tuple(p.shape)}" for p in plans]
    if len(parts) > 4:
        parts = [*parts[:3], f"... ({len(parts) - 3} more)"]
    return f"layout {layout.name!r}: {len(plans)} CP tensor(s): " + "; ".join(parts)


def lowrank_delta(
    grid: WeightGrid,
    pairs: Mapping[str, tuple[Any, Any]],
    keys: Mapping[str, tuple[str, ...]],
    notes: list[str],
    config: Mapping[str, Any],
    layout: Any = "lorta",
    head_split: Any = "auto",
    plans: Any = None,
) -> LowRankDelta:
    """A :class:`LowRankDelta` of ``pairs`` (target name → ``(B_scaled, A)``) on ``grid``,
    laid out by ``layout`` (or the given ``plans``, e.g. a saved adapter's own)."""
    layout_ = Layout.resolve(layout)
    if plans is None:
        plans = plan_groups(grid, layout_, head_split)
    groups = [lowrank_group_tensor(p, lambda m: pairs.get(m.target)) for p in plans]
    notes = [*notes, layout_note(layout_, grid, plans)]
    return LowRankDelta(grid, layout_, plans, groups, keys, notes, pairs=pairs, config=config)


def target_pair(t: Target, b: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows of a module's ``B`` that belong to target ``t`` (a fused module's slice)."""
    return b[t.out_offset : t.out_offset + t.out_features], a


def lowrank_delta_from_weights(
    weights: Mapping[str, Any],
    n_heads: int | None = None,
    *,
    config: Any = None,
    layout: Any = "lorta",
    rtol: float = 1e-6,
) -> LowRankDelta:
    """Dense per-matrix updates ``{module path: ΔW}`` as a :class:`LowRankDelta`.

    Each ``ΔW`` (``out × in``, ``nn.Linear`` orientation, whatever the module's storage;
    torch or NumPy) is factored exactly by an SVD truncated at its numerical rank
    (singular values above ``rtol·σ_max``), so a LoRA-style update of rank r becomes a
    pair of rank r. Names are module paths as :meth:`WeightGrid.from_model` sees them (a
    trailing ``.weight`` is optional); the head geometry comes from ``n_heads`` or
    ``config``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> def low_rank():
    ...     return rng.standard_normal((8, 2)) @ rng.standard_normal((2, 8))
    >>> w = {f"encoder.layer.0.attention.{n}": low_rank()
    ...      for n in ("self.query", "self.key", "self.value", "output.dense")}
    >>> lr = lowrank_delta_from_weights(w, n_heads=2)
    >>> lr.shape, lr.max_block_rank
    ((8, 4, 2, 1, 4), 2)
    """
    mats: dict[str, np.ndarray] = {}
    for k, v in weights.items():
        a = v.detach().float().cpu().numpy() if hasattr(v, "detach") else np.asarray(v, float)
        if a.ndim != 2:
            raise CPTensorError(f"weights[{k!r}] has shape {a.shape}; expected a 2-D ΔW (out × in)")
        if not np.isfinite(a).all():
            raise CPTensorError(f"weights[{k!r}] holds NaN or infinite values")
        mats[k.removesuffix(".weight")] = a
    geometry = head_geometry(n_heads)
    grid = grid_of_shapes(
        {k: v.shape for k, v in mats.items()},
        config,
        "weights",
        targets=list(mats),
        orientation="linear",
        geometry=geometry,
    )
    pairs = {}
    for t in grid.targets:
        w = mats[t.module][t.out_offset : t.out_offset + t.out_features]
        u, s, vt = np.linalg.svd(w.astype(np.float64), full_matrices=False)
        k = max(1, int(np.sum(s > rtol * s[0]))) if s.size and s[0] > 0 else 1
        pairs[t.name] = ((u[:, :k] * s[:k]).astype(np.float32), vt[:k].astype(np.float32))
    keys = {t.name: (t.module,) for t in grid.targets}
    return lowrank_delta(grid, pairs, keys, [_describe(grid)], {}, layout)


def lora_delta_from_model(
    model: Any,
    adapter: str = "default",
    n_heads: int | None = None,
    *,
    layout: Any = "lorta",
) -> LowRankDelta:
    """The low-rank updates of an adapted model, as a :class:`LowRankDelta`.

    Reads, for every adapted module, the exact factors of its update ``ΔW = B·A``
    (scaling included): ``effective_factors(adapter)`` of this library's adapter layers
    (any layout), or ``lora_A``/``lora_B``/``scaling`` of PEFT's LoRA layers. The
    geometry is the model's config's (``n_heads`` when it does not say).

    Parameters
    ----------
    model : torch.nn.Module
        A model with adapter layers.
    adapter : str
        Adapter name (PEFT and this library both default to ``"default"``).
    n_heads : int, optional
        Number of heads when ``model.config`` does not say.
    layout : str, Layout or mapping
        The layout of the delta's CP tensors (default ``"lorta"``).

    Raises
    ------
    CPTensorError
        When the model has no adapter layer.

    Examples
    --------
    >>> import torch
    >>> from transformers import BertConfig, BertModel
    >>> cfg = BertConfig(hidden_size=16, num_attention_heads=4, num_hidden_layers=2,
    ...                  intermediate_size=32, vocab_size=50)
    >>> _ = torch.manual_seed(0)
    >>> base = BertModel(cfg)
    >>> from peft import LoraConfig, get_peft_model
    >>> peft_model = get_peft_model(base, LoraConfig(r=2, target_modules=["query", "value"]))
    >>> delta = lora_delta_from_model(peft_model)
    >>> delta.shape, len(delta.pairs)   # Q and V of 2 layers
    ((16, 4, 4, 2, 2), 4)
    """
    factors: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, mod in model.named_modules():
        ba = None
        if hasattr(mod, "effective_factors") and adapter in getattr(mod, "pieces", {adapter: 0}):
            import torch

            with torch.no_grad():
                a, b = mod.effective_factors(adapter)
            ba = (b.detach().float().cpu().numpy(), a.detach().float().cpu().numpy())
        elif hasattr(mod, "lora_A") and hasattr(mod, "lora_B") and hasattr(mod, "scaling"):
            if adapter in mod.lora_A:
                a = mod.lora_A[adapter].weight.detach().float().cpu().numpy()
                b = mod.lora_B[adapter].weight.detach().float().cpu().numpy()
                ba = (mod.scaling[adapter] * b, a)
        if ba is None:
            continue
        factors[name.removeprefix("base_model.model.")] = ba
    if not factors:
        raise CPTensorError(f"model has no adapter {adapter!r} on any module")
    grid = grid_of_shapes(
        {k: (b.shape[0], a.shape[1]) for k, (b, a) in factors.items()},
        getattr(model, "config", None),
        "model",
        targets=list(factors),
        orientation="linear",
        geometry=head_geometry(n_heads),
    )
    pairs = {t.name: target_pair(t, *factors[t.module]) for t in grid.targets}
    keys = {t.name: (t.module,) for t in grid.targets}
    return lowrank_delta(grid, pairs, keys, [_describe(grid)], {}, layout)

"""Adapter directories as deltas: PEFT LoRA adapters and this library's own.

:func:`extract_adapter_delta` reads either (the format is told by ``adapter_config.json``);
:func:`extract_lora_delta` reads PEFT's. This library's adapter format is owned by
:mod:`cptensor_adapters.io` (:func:`~cptensor_adapters.io.read_saved_adapter`); PEFT's
file is read here, through the validating safetensors reader.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cptensor.errors import CPTensorError
from cptensor.files import SafetensorsFile

from ..grid import ATTENTION_ROLES
from ..io import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from .extract import grid_of_shapes, lowrank_delta, target_pair
from .sources import (
    MAX_LAYERS,
    checked_dir,
    checked_file,
    finite_number,
    load_config,
    positive_int,
    read_json_object,
)
from .tensors import LowRankDelta, matrix_label

__all__ = ["extract_adapter_delta", "extract_lora_delta"]

_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.(?P<name>[^.]+))?\.weight$")


def _refuse_checkpoint(d: Path, arg: str) -> None:
    """A model checkpoint given where an adapter directory is expected: say which call
    reads it (a checkpoint has config.json or weights and no adapter_config.json)."""
    if (d / ADAPTER_CONFIG).is_file():
        return
    if (d / "config.json").is_file() or any(d.glob("*.safetensors")):
        raise CPTensorError(
            f"{arg} {str(d)!r} is a model checkpoint (config.json or *.safetensors, no "
            f"{ADAPTER_CONFIG}), not an adapter directory: to analyse a fine-tuned checkpoint, "
            f"compare it with its base: `cptensor analyze BASE {d}` (in Python: "
            "extract_delta(base, tuned))"
        )


def _is_own_format(acfg: Mapping[str, Any]) -> bool:
    """Whether an ``adapter_config.json`` was written by :func:`cptensor_adapters.save_adapter`."""
    from ..io import FORMAT

    return acfg.get("format") == FORMAT


def _read_safetensors(path: Path, keep: Callable[[str], bool]) -> tuple[dict[str, Any], list[str]]:
    """The tensors of ``path`` whose key passes ``keep`` (torch, as stored, memory-mapped;
    the others are not read) and all its keys, through the validating reader."""
    reader = SafetensorsFile(path)
    keys = reader.keys()
    return {k: reader.read(k, "pt") for k in keys if keep(k)}, keys


def extract_lora_delta(
    peft_adapter_dir: str | os.PathLike[str], base_config: Any = None
) -> LowRankDelta:
    """A PEFT LoRA adapter directory as the CP tensors of a LoRTA adapter on the same
    targets, with low-rank blocks.

    Each adapted matrix contributes ``ΔW = (α/r)·B A`` (``α/√r`` with rsLoRA;
    ``rank_pattern``/``alpha_pattern`` honoured) as a pair of factors; no block is
    formed. The grid is that of the adapted modules (with the base model's head
    geometry), laid out as ``"lorta"``: a LoRA on Q and V of every layer gives one tensor
    ``(d, d_h, H, L, 2)``; under grouped-query attention, Q and V fall into separate
    tensors (their head counts differ).

    Parameters
    ----------
    peft_adapter_dir : path
        Directory with ``adapter_config.json`` and ``adapter_model.safetensors`` (as
        written by ``PeftModel.save_pretrained`` or by ``save_as_peft_lora``).
    base_config : dict, transformers config or path, optional
        The base model's config (for the head geometry; its layer count is checked);
        default: the config that ``base_model_name_or_path`` of the adapter points to,
        when it is a local directory.

    Returns
    -------
    LowRankDelta

    Raises
    ------
    FileNotFoundError
        Missing directory or files.
    CPTensorError
        An adapter that is not LoRA, unreadable or inconsistent tensors, or attention
        targets whose head geometry no config gives.

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
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     peft_model.save_pretrained(tmp)
    ...     delta = extract_lora_delta(tmp, base_config=cfg)
    >>> delta.shape, sorted({name for _, name in delta.pairs})
    ((16, 4, 4, 2, 2), ['Q', 'V'])
    """
    d = checked_dir(peft_adapter_dir, "peft_adapter_dir")
    _refuse_checkpoint(d, "peft_adapter_dir")
    expected = "a PEFT LoRA adapter saved with save_pretrained"
    cfg_path = checked_file(d, ADAPTER_CONFIG, "peft_adapter_dir", expected)
    w_path = checked_file(d, ADAPTER_WEIGHTS, "peft_adapter_dir", expected)
    acfg = read_json_object(cfg_path, "adapter config")
    if _is_own_format(acfg):
        raise CPTensorError(
            f"{cfg_path}: a cptensor_adapters adapter (written by save_adapter), not a PEFT "
            "LoRA adapter; read it with extract_adapter_delta"
        )
    if str(acfg.get("peft_type", "LORA")).upper() != "LORA":
        raise CPTensorError(f"{cfg_path}: peft_type is {acfg.get('peft_type')!r}, expected 'LORA'")
    if base_config is None and isinstance(acfg.get("base_model_name_or_path"), str):
        cand = Path(acfg["base_model_name_or_path"])
        if (cand / "config.json").is_file():
            base_config = cand
    cfg = load_config(base_config)
    r_default = positive_int(acfg.get("r", 8), f"{cfg_path}: r")
    alpha_default = finite_number(acfg.get("lora_alpha", r_default), f"{cfg_path}: lora_alpha")
    rslora = bool(acfg.get("use_rslora", False))
    ranks = _pattern(acfg.get("rank_pattern"), f"{cfg_path}: rank_pattern", integer=True)
    alphas = _pattern(acfg.get("alpha_pattern"), f"{cfg_path}: alpha_pattern", integer=False)
    ab: dict[str, dict[str, np.ndarray]] = {}
    lora_tensors, _ = _read_safetensors(w_path, lambda k: _LORA_KEY.match(k) is not None)
    for k, t in lora_tensors.items():
        m = _LORA_KEY.match(k)
        assert m is not None
        ab.setdefault(m["module"], {})[m["ab"]] = _finite_factor(t, k, w_path)
    if not ab:
        raise CPTensorError(f"{w_path}: no lora_A / lora_B weights found")
    factors: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for module, parts in ab.items():
        if set(parts) != {"A", "B"}:
            raise CPTensorError(f"{w_path}: {module} has lora_{next(iter(parts))} only")
        a, b = parts["A"], parts["B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise CPTensorError(
                f"{w_path}: {module} has lora_A {a.shape} and lora_B {b.shape}; expected "
                "(r, in) and (out, r)"
            )
        r = int(next((v for k, v in ranks.items() if module.endswith(k)), r_default))
        alpha = float(next((v for k, v in alphas.items() if module.endswith(k)), alpha_default))
        scale = alpha / math.sqrt(r) if rslora else alpha / r
        factors[module] = (scale * b, a)
    # GPT-2 Conv1D LoRA still stores A (r, in) and B (out, r) in Linear orientation.
    grid = grid_of_shapes(
        {k: (b.shape[0], a.shape[1]) for k, (b, a) in factors.items()},
        cfg,
        f"{w_path}",
        targets=list(factors),
        orientation="linear",
    )
    _check_layers(grid, cfg, cfg_path)
    pairs = {t.name: target_pair(t, *factors[t.module]) for t in grid.targets}
    keys = {t.name: (t.module,) for t in grid.targets}
    notes = [
        f"adapter: PEFT LoRA on {len(pairs)} matrices of a {grid.architecture}-style model, "
        f"{grid.num_layers} layers; scale {'alpha/sqrt(r)' if rslora else 'alpha/r'}"
    ]
    return lowrank_delta(grid, pairs, keys, notes, acfg)


def _check_layers(grid: Any, cfg: Mapping[str, Any], where: Path) -> None:
    """Refuse layer numbers beyond :data:`MAX_LAYERS` or beyond the config's layer count."""
    last = max(t.layer for t in grid.targets)
    if last >= MAX_LAYERS:
        raise CPTensorError(
            f"{where}: a target is in layer {last}; this reader accepts layers below {MAX_LAYERS:,}"
        )
    n_layers = cfg.get("num_hidden_layers", cfg.get("n_layer"))
    if n_layers is not None:
        n_layers = positive_int(n_layers, "base_config num_hidden_layers", MAX_LAYERS)
        if n_layers <= last:
            raise CPTensorError(
                f"base_config: {n_layers} layers, but the adapter targets layer {last}"
            )


def _pattern(value: Any, what: str, *, integer: bool) -> dict[str, float]:
    """PEFT's ``rank_pattern``/``alpha_pattern``: module-name suffix → rank or alpha."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise CPTensorError(f"{what}: expected an object module name -> value, got {value!r}")
    check = positive_int if integer else finite_number
    return {k: check(v, f"{what}[{k!r}]") for k, v in value.items()}


def _finite_factor(t: Any, key: str, path: Path) -> np.ndarray:
    """A stored factor as float NumPy, refused unless floating and finite."""
    import torch

    if not t.dtype.is_floating_point:
        raise CPTensorError(f"{path}: tensor {key!r} has dtype {t.dtype}; expected a floating type")
    out = t.numpy() if t.dtype == torch.float64 else t.float().numpy()
    if not np.isfinite(out).all():
        raise CPTensorError(f"{path}: tensor {key!r} holds NaN or infinite values")
    return out


def extract_adapter_delta(
    adapter_dir: str | os.PathLike[str], base_config: Any = None, *, layout: Any = None
) -> LowRankDelta:
    """An adapter directory, PEFT LoRA or this library's, as CP tensors of low-rank blocks.

    The format is read from ``adapter_config.json``: a ``peft_type`` field marks a PEFT
    adapter (read by :func:`extract_lora_delta`); ``"format": "cptensor_adapters"`` marks
    one written by :func:`cptensor_adapters.save_adapter`. The latter stores CP factors
    (one CP tensor per layout group) and its weight grid, so the geometry comes from the
    files and no weight of the base model is read. Each target's update ``ΔW = B A`` is
    rebuilt from the factors as the adapter computes it in its forward pass (rank at most
    ``r``, scaling ``alpha / r`` included) and kept as that pair: no block is formed. By
    default the pairs are laid out as the adapter's own CP tensors (its groups, layout
    and ``head_split``), so each is :func:`cptensor_adapters.as_cp`'s tensor and has CP
    rank at most ``r`` — grouped-query attention, GPT-2's fused projection and targets
    beyond attention included.

    Parameters
    ----------
    adapter_dir : path
        Directory with ``adapter_config.json`` and ``adapter_model.safetensors``.
    base_config : dict, transformers config or path, optional
        The base model's config. For a PEFT adapter, as in :func:`extract_lora_delta`.
        For this library's adapters the files give the geometry; the config, when given,
        is checked against it (heads, key/value heads, hidden size, layer count).
    layout : str, Layout or mapping, optional
        This library's adapters: lay the updates out by another layout than the
        adapter's own (with the default head split).

    Returns
    -------
    LowRankDelta
        ``.config`` is the parsed ``adapter_config.json``, ``.matched`` rows ``(layer,
        matrix, target name)``, ``.notes`` what was read and what was left out
        (``modules_to_save`` copies).

    Raises
    ------
    FileNotFoundError
        Missing directory or files.
    CPTensorError
        An unknown format, a file that cannot be read, files that disagree with each
        other, a ``base_config`` that contradicts the adapter's geometry, or a model
        checkpoint instead of an adapter (the message names :func:`extract_delta`).

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np, torch
    >>> from transformers import BertConfig, BertModel
    >>> import cptensor_adapters as cpa
    >>> cfg = BertConfig(hidden_size=16, num_attention_heads=4, num_hidden_layers=2,
    ...                  intermediate_size=32, vocab_size=50)
    >>> _ = torch.manual_seed(0)
    >>> model = cpa.attach(BertModel(cfg), cpa.AdapterConfig(r=2, init="random"))
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     _ = cpa.save_adapter(model, tmp)
    ...     delta = extract_adapter_delta(tmp)
    >>> delta.shape, delta.max_block_rank
    ((16, 4, 4, 2, 4), 2)
    >>> b, a = delta.pairs[(1, "O")]     # ΔW = b @ a, exactly the adapter's update
    >>> dw = cpa.delta_weights(model)["encoder.layer.1.attention.output.dense"]
    >>> bool(np.allclose(b @ a, dw.numpy(), atol=1e-6))
    True
    """
    from ..io import FORMAT

    d = checked_dir(adapter_dir, "adapter_dir")
    _refuse_checkpoint(d, "adapter_dir")
    cfg_path = checked_file(
        d,
        ADAPTER_CONFIG,
        "adapter_dir",
        "a PEFT LoRA adapter (PeftModel.save_pretrained) or a cptensor_adapters adapter "
        "(save_adapter)",
    )
    meta = read_json_object(cfg_path, "adapter config")
    if _is_own_format(meta):
        checked_file(d, ADAPTER_WEIGHTS, "adapter_dir", "the two files written by save_adapter")
        return _cp_adapter_delta(cfg_path, meta, base_config, layout)
    if "peft_type" in meta:
        return extract_lora_delta(d, base_config)
    found = f"'format': {meta['format']!r}" if "format" in meta else f"keys {sorted(meta)[:6]}"
    raise CPTensorError(
        f"{cfg_path}: unknown adapter format ({found}); expected a PEFT adapter config "
        f"(with 'peft_type') or one written by save_adapter ('format': {FORMAT!r})"
    )


def _cp_adapter_delta(
    cfg_path: Path, meta: Mapping[str, Any], base_config: Any, layout: Any
) -> LowRankDelta:
    """:func:`extract_adapter_delta` for a directory written by ``save_adapter``."""
    from ..io import read_saved_adapter
    from ..modules import target_factors

    saved = read_saved_adapter(cfg_path.parent)
    config, grid = saved.config, saved.grid
    cfg = load_config(base_config)
    for what, mine, keys in (
        ("attention heads", grid.num_heads, ("num_attention_heads", "n_head")),
        ("key/value heads", grid.num_kv_heads, ("num_key_value_heads",)),
        ("hidden size", grid.hidden_size, ("hidden_size", "n_embd")),
    ):
        theirs = next((cfg[k] for k in keys if k in cfg), None)
        if theirs is not None and mine is not None and theirs != mine:
            raise CPTensorError(
                f"base_config: {what} {theirs!r}, but the adapter in {cfg_path.parent} was "
                f"saved for a model with {mine}"
            )
    _check_layers(grid, cfg, cfg_path)
    dtypes = {str(t.dtype) for fs in saved.factors for t in fs.values()}
    out_dtype = np.float64 if dtypes == {"torch.float64"} else np.float32
    pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for plan, fs in zip(saved.plans, saved.factors):
        f64 = {m: t.double() for m, t in fs.items()}
        for member in plan.members:
            a, b = target_factors(
                f64,
                member.index.items(),
                member.split,
                member.heads,
                member.head_dim,
                config.scaling,
            )
            pairs[member.target] = (b.numpy().astype(out_dtype), a.numpy().astype(out_dtype))
    own = layout is None
    layout_ = config.resolved_layout if own else layout
    keys = {t.name: (t.name,) for t in grid.targets}
    other = [t.name for t in grid.targets if t.matrix not in ATTENTION_ROLES]
    notes = [
        f"adapter: cptensor_adapters {config.resolved_layout.name!r} adapter "
        f"{meta.get('name')!r} (r={config.r}, scale alpha/r = {config.scaling:g}, "
        f"{len(saved.plans)} CP tensor(s)) of a {grid.architecture}-style model, "
        f"{grid.num_layers} layers, {len(grid)} adapted matrices",
        "laid out as the adapter's own CP tensors (its layout and head split): a CP of "
        f"rank {config.r} of each is exact"
        if own
        else f"laid out by layout {getattr(layout, 'name', layout)!r}, not the adapter's own",
    ]
    if other:
        names = sorted({matrix_label(grid[n].matrix) for n in other})
        notes.append(
            f"includes {len(other)} target(s) other than Q, K, V, O ({', '.join(names[:4])})"
        )
    if saved.others:
        notes.append(f"left out the modules_to_save copies ({len(saved.others)} tensors)")
    return lowrank_delta(
        grid,
        pairs,
        keys,
        notes,
        meta,
        layout_,
        config.head_split,
        plans=saved.plans if own else None,
    )

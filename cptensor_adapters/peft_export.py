"""Export an adapter as a PEFT LoRA adapter, exactly.

Every module's update is ``ΔW = B·A`` with thin effective factors (see
:mod:`cptensor_adapters.modules`), so it *is* a LoRA update of rank ``R`` (``R = r``; a fused
GPT-2 ``c_attn`` under a layout that gives Q, K, V different ``A`` has ``R = 3r``): the export
writes ``lora_A = A``, ``lora_B = B`` with ``lora_alpha = R`` (scaling 1, the adapter's
``alpha / r`` is already inside ``B``), so serving stacks that read PEFT LoRA serve LoRTA.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .io import write_adapter_directory
from .model import require_adapter
from .modules import iter_adapter_layers, iter_save_wrappers
from .sharding import gathered, sharded_model

__all__ = ["save_as_peft_lora"]


def save_as_peft_lora(
    model: nn.Module, path: str | os.PathLike[str], name: str = "default"
) -> Path:
    """Write adapter ``name`` as a PEFT LoRA adapter in directory ``path``.

    ``peft.PeftModel.from_pretrained(base_model, path)`` then reproduces the adapter's
    outputs (up to float rounding). Modules whose rank differs from the most common one get
    ``rank_pattern``/``alpha_pattern`` entries; GPT-2 ``Conv1D`` targets set
    ``fan_in_fan_out``; ``modules_to_save`` copies are exported too. The two files replace
    the directory's as one atomic step (see :func:`~cptensor_adapters.save_adapter`).

    Returns
    -------
    Path
        The directory, as a ``Path``.

    Examples
    --------
    >>> import copy, tempfile, torch
    >>> from peft import PeftModel
    >>> from transformers import GPT2Config, GPT2Model
    >>> from cptensor_adapters import AdapterConfig, attach
    >>> base = GPT2Model(GPT2Config(n_embd=32, n_layer=1, n_head=4)).eval()
    >>> ours = attach(copy.deepcopy(base), AdapterConfig(r=2, init="random", alpha=64))
    >>> ids = torch.tensor([[1, 2, 3]])
    >>> with tempfile.TemporaryDirectory() as d:
    ...     peft_model = PeftModel.from_pretrained(base, save_as_peft_lora(ours, d))
    >>> torch.allclose(peft_model(ids).last_hidden_state, ours(ids).last_hidden_state,
    ...                atol=1e-5)
    True
    """
    adapter = require_adapter(model, name)
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    conv1d = []
    with torch.no_grad(), gathered(model):  # whole factors on every rank under FSDP2
        for mpath, layer in iter_adapter_layers(model):
            if name not in layer.pieces:
                continue
            A, B = layer.effective_factors(name)
            tensors[f"base_model.model.{mpath}.lora_A.weight"] = (
                A.detach().cpu().contiguous().clone()
            )
            tensors[f"base_model.model.{mpath}.lora_B.weight"] = (
                B.detach().cpu().contiguous().clone()
            )
            ranks[mpath] = int(A.shape[0])
            conv1d.append(layer.storage == "conv1d")
        saved = []
        for mpath, w in iter_save_wrappers(model):
            if name in w.modules_to_save:
                saved.append(mpath)
                for pn, p in w.modules_to_save[name].state_dict().items():
                    tensors[f"base_model.model.{mpath}.{pn}"] = p.detach().contiguous().cpu()
    r = Counter(ranks.values()).most_common(1)[0][0]
    pattern = {re.escape(m): k for m, k in ranks.items() if k != r}
    base_name = getattr(getattr(model, "config", None), "_name_or_path", None) or None
    fields: dict[str, Any] = {
        "r": r,
        "lora_alpha": r,
        "target_modules": list(ranks),
        "lora_dropout": adapter.config.dropout,
        "fan_in_fan_out": bool(conv1d) and all(conv1d),
        "bias": "none",
        "modules_to_save": saved or None,
        "rank_pattern": pattern,
        "alpha_pattern": dict(pattern),
        "base_model_name_or_path": base_name,
        "init_lora_weights": True,
    }
    config = _peft_config_dict(fields)
    return write_adapter_directory(
        path, tensors, config, metadata={"format": "pt"}, collective=sharded_model(model)
    )


def _peft_config_dict(fields: dict[str, Any]) -> dict[str, Any]:
    """The config as PEFT's ``LoraConfig`` writes it (plain dict if PEFT is absent)."""
    try:
        from peft import LoraConfig
    except ImportError:  # pragma: no cover - peft is in the "hf" extra
        return {"peft_type": "LORA", "task_type": None, "inference_mode": True, **fields}
    cfg = LoraConfig(**fields)
    cfg.inference_mode = True
    data = cfg.to_dict()
    return json.loads(
        json.dumps(data, default=lambda o: sorted(o) if isinstance(o, set) else str(o))
    )

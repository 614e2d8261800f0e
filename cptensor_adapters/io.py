"""Saving and loading adapters: ``adapter_model.safetensors`` + ``adapter_config.json``.

The safetensors file holds each shared CP factor once (``groups.<i>.<mode>``) and the
``modules_to_save`` copies (``modules_to_save.<module path>.<parameter>``); the JSON file
holds the :class:`~cptensor_adapters.AdapterConfig`, the adapter's name and the weight grid
it was trained on, which :func:`load_adapter` checks against the model. Both files are
written atomically (a temporary file in the same directory, then ``os.replace``). No
pickle is involved at any point.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ._files import atomic_write_bytes, replace_into, temporary_beside
from .config import AdapterConfig
from .grid import WeightGrid
from .model import (
    _check_name,
    _grid_for,
    _require_adapter,
    _store,
    _update_requires_grad,
    attach,
)
from .modules import iter_save_wrappers

__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "FORMAT", "load_adapter", "save_adapter"]

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
FORMAT = "cptensor_adapters"
FORMAT_VERSION = 1


def atomic_save_safetensors(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """``safetensors.torch.save_file`` to a temporary file, then ``os.replace``."""
    tmp = temporary_beside(path)
    try:
        save_file(tensors, tmp, metadata=metadata)
        replace_into(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _adapter_parameters(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """The tensors of adapter ``name`` under their keys in ``adapter_model.safetensors``:
    the shared factors (``groups.<i>.<mode>``) and the ``modules_to_save`` copies
    (``modules_to_save.<module path>.<parameter>``), the model's own, not copies."""
    adapter = _require_adapter(model, name)
    tensors: dict[str, torch.Tensor] = {}
    for i, g in enumerate(adapter.groups):
        for mode, p in g.factors.items():
            tensors[f"groups.{i}.{mode}"] = p
    for path, w in iter_save_wrappers(model):
        if name in w.modules_to_save:
            for pn, p in w.modules_to_save[name].state_dict(keep_vars=True).items():
                tensors[f"modules_to_save.{path}.{pn}"] = p
    return tensors


def _adapter_tensors(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """What :func:`save_adapter` writes: :func:`_adapter_parameters`, detached, on the CPU."""
    return {k: p.detach().contiguous().cpu() for k, p in _adapter_parameters(model, name).items()}


def save_adapter(model: nn.Module, path: str | os.PathLike[str], name: str = "default") -> Path:
    """Write adapter ``name`` to the directory ``path`` (created if needed).

    Writes ``adapter_model.safetensors`` (shared factors stored once, ``modules_to_save``
    copies) and ``adapter_config.json`` (config, name, weight grid), each atomically.

    Returns:
        The directory, as a ``Path``.

    Raises:
        KeyError: no adapter ``name``.

    Example:
        >>> import tempfile
        >>> from transformers import BertConfig, BertModel
        >>> from cptensor_adapters import attach
        >>> m = attach(BertModel(BertConfig(hidden_size=32, num_hidden_layers=1,
        ...                                 num_attention_heads=4, intermediate_size=64)))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     sorted(p.name for p in save_adapter(m, d).iterdir())
        ['adapter_config.json', 'adapter_model.safetensors']
    """
    adapter = _require_adapter(model, name)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "config": adapter.config.to_dict(),
        "grid": adapter.grid.to_dict(),
        "groups": [p.to_dict() for p in adapter.plans],
    }
    atomic_save_safetensors(
        out / ADAPTER_WEIGHTS, _adapter_tensors(model, name), metadata={"format": FORMAT}
    )
    atomic_write_bytes(out / ADAPTER_CONFIG, json.dumps(meta, indent=2).encode())
    return out


def read_adapter_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed ``adapter_config.json`` of a saved adapter.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a file written by :func:`save_adapter`.
    """
    file = Path(path) / ADAPTER_CONFIG
    meta = json.loads(file.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"path: {file} is not a cptensor_adapters adapter (format={meta.get('format')!r}, "
            f"expected {FORMAT!r}); a PEFT LoRA directory loads with peft.PeftModel"
        )
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"path: {file} has format_version {meta['format_version']}, this library reads up "
            f"to {FORMAT_VERSION}"
        )
    return meta


def load_adapter(
    model: nn.Module,
    path: str | os.PathLike[str],
    name: str | None = None,
    trainable: bool = False,
) -> nn.Module:
    """Attach the adapter saved in ``path`` to ``model`` and return the model.

    The model's weight grid (found with the saved config's targets) must match the grid the
    adapter was saved from. The loaded adapter becomes active if no adapter is; its factors
    train only with ``trainable=True``.

    Args:
        model: a plain or already adapted model.
        path: directory written by :func:`save_adapter`.
        name: name to give the adapter (default: the saved name).
        trainable: whether its factors (and ``modules_to_save`` copies) train.

    Raises:
        ValueError: the model's geometry differs from the file's (the message lists what
            differs), the name is taken, or the files are inconsistent.

    Example:
        >>> import copy, tempfile, torch
        >>> from transformers import BertConfig, BertModel
        >>> from cptensor_adapters import AdapterConfig, attach
        >>> base = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1,
        ...                             num_attention_heads=4, intermediate_size=64)).eval()
        >>> a = attach(copy.deepcopy(base), AdapterConfig(init="random", alpha=64))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     b = load_adapter(base, save_adapter(a, d))
        >>> ids = torch.tensor([[3, 4, 5]])
        >>> torch.allclose(a(ids).last_hidden_state, b(ids).last_hidden_state)
        True
    """
    directory = Path(path)
    meta = read_adapter_config(directory)
    name = _check_name(meta["name"] if name is None else name)
    config = AdapterConfig.from_dict(meta["config"])
    saved_grid = WeightGrid.from_dict(meta["grid"])
    store = _store(model)
    if store is not None and name in store.adapters:
        raise ValueError(
            f"name: the model already has an adapter {name!r}; pass name= to load under another"
        )
    try:
        grid = _grid_for(model, config)
    except ValueError as exc:
        raise ValueError(
            f"model: cannot map the adapter in {directory} onto this model ({exc})"
        ) from None
    diffs = saved_grid.differences(grid, labels=("file", "model"))
    if diffs:
        raise ValueError(
            f"model: the adapter in {directory} was saved for a model of other geometry: "
            + "; ".join(diffs[:8])
            + (f"; ... ({len(diffs) - 8} more)" if len(diffs) > 8 else "")
        )
    tensors = load_file(str(directory / ADAPTER_WEIGHTS))
    attach(model, config, name)
    try:
        _copy_into(model, name, tensors, directory)
    except Exception:
        from .model import remove_adapter

        remove_adapter(model, name)
        raise
    adapter = _require_adapter(model, name)
    adapter.trainable = bool(trainable)
    store = _store(model)
    assert store is not None
    _update_requires_grad(model, store)
    return model


@torch.no_grad()
def _copy_into(model: nn.Module, name: str, tensors: dict[str, torch.Tensor], where: Path) -> None:
    expected = _adapter_parameters(model, name)
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ValueError(
            f"path: {where / ADAPTER_WEIGHTS} does not match its config: missing {missing[:5]}, "
            f"unexpected {extra[:5]}"
        )
    for key, p in expected.items():
        t = tensors[key]
        if tuple(t.shape) != tuple(p.shape):
            raise ValueError(
                f"path: tensor {key!r} in {where / ADAPTER_WEIGHTS} has shape {tuple(t.shape)}, "
                f"the model expects {tuple(p.shape)}"
            )
        # explicit I/O: the file's CPU tensor goes to the parameter's device and dtype
        p.copy_(t.to(device=p.device, dtype=p.dtype))

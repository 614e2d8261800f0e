"""Where the weights of a delta come from: models, checkpoint directories, config files.

A :class:`WeightSource` lists the 2-D tensors of a ``torch`` model's ``state_dict`` or of
a checkpoint directory's ``*.safetensors`` files (through the one validating reader,
:class:`cptensor.files.SafetensorsFile`: nothing is loaded but the header until a weight
is read), with the model's config. The other helpers read ``config.json`` and adapter
files defensively: regular files of bounded size, JSON objects, numbers in range.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cptensor.errors import CPTensorError, CPTensorTypeError
from cptensor.files import SafetensorsFile

__all__ = [
    "GEOMETRY_FIELDS",
    "MAX_LAYERS",
    "WeightSource",
    "check_config",
    "checked_dir",
    "checked_file",
    "finite_number",
    "load_config",
    "positive_int",
    "read_json_object",
]

#: Largest layer count a delta may declare (no transformer has more).
MAX_LAYERS = 4096


class WeightSource:
    """Named 2-D weights of a model or a checkpoint directory, read one at a time.

    Attributes
    ----------
    what : str
        How errors name the source (``"base"``, ``"tuned"``).
    shapes : dict
        Tensor name → shape as stored, for every 2-D tensor.
    config : dict
        The model's config (``config.json`` beside a checkpoint; ``{}`` when absent).
    description : str
        ``"checkpoint PATH"`` or ``"ModelClass model"``.
    """

    def __init__(self, obj: Any, what: str) -> None:
        self.what = what
        self.config: dict[str, Any] = {}
        if isinstance(obj, (str, os.PathLike)):
            self._init_path(Path(obj))
        elif hasattr(obj, "state_dict") and hasattr(obj, "named_parameters"):
            self.description = f"{type(obj).__name__} model"
            sd = obj.state_dict()
            self._tensors = {k: v for k, v in sd.items() if getattr(v, "ndim", 0) == 2}
            self.shapes = {k: tuple(v.shape) for k, v in self._tensors.items()}
            cfg = getattr(obj, "config", None)
            if cfg is not None:
                self.config = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(vars(cfg))
            self._files = None
        else:
            raise CPTensorTypeError(
                f"{what} must be a model (torch.nn.Module) or a checkpoint "
                f"directory; got {type(obj).__name__}"
            )

    def _init_path(self, p: Path) -> None:
        if not p.exists():
            raise FileNotFoundError(f"{self.what}: {str(p)!r} does not exist")
        files = [p] if p.is_file() else sorted(p.glob("*.safetensors"))
        if p.is_dir() and (p / "adapter_config.json").is_file():
            if all(f.name.startswith("adapter_model") for f in files):  # no model weights
                raise CPTensorError(
                    f"{self.what}: {str(p)!r} is an adapter directory (adapter_config.json, "
                    "no model weights), not a model checkpoint: analyse it with "
                    f"`cptensor analyze-adapter {p}` (in Python: extract_adapter_delta)"
                )
        odd = [f for f in files if not f.is_file()]
        if odd:
            raise CPTensorError(f"{self.what}: {odd[0]} is not a regular file")
        if not files:
            raise FileNotFoundError(
                f"{self.what}: no *.safetensors file in {str(p)!r}; expected a checkpoint "
                "directory saved with save_pretrained(..., safe_serialization=True)"
            )
        self.description = f"checkpoint {p}"
        cfg_path = (p.parent if p.is_file() else p) / "config.json"
        if cfg_path.is_file():
            self.config = check_config(read_json_object(cfg_path, self.what), f"{cfg_path}")
        self._files: dict[str, SafetensorsFile] | None = {}
        self.shapes = {}
        for f in files:
            try:
                reader = SafetensorsFile(f)
            except CPTensorError as exc:
                raise CPTensorError(f"{self.what}: {exc}") from None
            for k in reader.keys():
                shape = reader.shape(k)
                if len(shape) == 2:
                    self._files[k] = reader
                    self.shapes[k] = shape
        self._tensors = None

    def key_of(self, module: str) -> str:
        """The tensor name of ``module``'s weight (``module + ".weight"``, or the module
        path itself where the source names weights that way)."""
        key = module + ".weight"
        return key if key in self.shapes else module

    def read(self, name: str) -> np.ndarray:
        """The weight as float32 NumPy (one memory-mapped read for checkpoints)."""
        if self._tensors is not None:
            t = self._tensors[name].detach()
            where = self.description
        else:
            assert self._files is not None
            t = self._files[name].read(name, "pt")
            where = self._files[name].path
        if not t.dtype.is_floating_point:
            raise CPTensorError(f"{self.what}: weight {name!r} has dtype {t.dtype}, not floating")
        out = t.float().cpu().numpy()
        if not np.isfinite(out).all():
            raise CPTensorError(f"{self.what}: weight {name!r} in {where} holds NaN or inf values")
        return out


#: The ``config.json`` fields the geometry reads; each must be a positive integer if set.
GEOMETRY_FIELDS = (
    "num_attention_heads",
    "n_head",
    "num_key_value_heads",
    "hidden_size",
    "n_embd",
    "head_dim",
    "num_hidden_layers",
    "n_layer",
)


def check_config(config: Mapping[str, Any], what: str) -> dict[str, Any]:
    """``config`` after checking its geometry fields (:data:`GEOMETRY_FIELDS`) are
    positive integers, or absent or null; CPTensorError naming ``what`` and the field."""
    for key in GEOMETRY_FIELDS:
        if config.get(key) is not None:
            positive_int(config[key], f"{what}: {key}", MAX_LAYERS if "layer" in key else 1 << 20)
    return dict(config)


def load_config(base_config: Any) -> dict[str, Any]:
    if base_config is None:
        return {}
    if isinstance(base_config, Mapping):
        return check_config(base_config, "base_config")
    if hasattr(base_config, "to_dict"):
        return check_config(base_config.to_dict(), "base_config")
    if not isinstance(base_config, (str, os.PathLike)):
        raise CPTensorError(
            f"base_config: expected a config dict, a transformers config or a path to "
            f"config.json, got {type(base_config).__name__}"
        )
    p = Path(base_config)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise FileNotFoundError(
            f"base_config: {str(p)!r} does not exist; expected a config "
            "dict, a transformers config, or a path to config.json"
        )
    return check_config(read_json_object(p, "base_config"), f"base_config {p}")


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from a regular file of bounded size; ValueError naming the file."""
    from cptensor.files import read_regular_file

    try:
        data = json.loads(read_regular_file(path, what).decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise CPTensorError(
            f"{what}: {path} is not valid JSON ({type(exc).__name__}; UTF-8 JSON expected)"
        ) from None
    if not isinstance(data, dict):
        raise CPTensorError(
            f"{what}: {path} holds a JSON {type(data).__name__}, expected an object"
        )
    return data


def positive_int(value: Any, what: str, limit: int = 1 << 20) -> int:
    """``value`` as an integer in ``1..limit``; ValueError naming ``what`` otherwise."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not ok or not 1 <= value <= limit:
        raise CPTensorError(f"{what}: expected an integer from 1 to {limit:,}, got {value!r}")
    return int(value)


def checked_dir(path: str | os.PathLike[str], arg: str) -> Path:
    """``path`` as a directory; FileNotFoundError naming the argument when it is not one."""
    d = Path(path)
    if not d.is_dir():
        raise FileNotFoundError(f"{arg} {str(d)!r} is not a directory")
    return d


def checked_file(d: Path, name: str, arg: str, expected: str) -> Path:
    """``d / name``; FileNotFoundError naming the argument and what was ``expected`` when
    that file is missing."""
    p = d / name
    if not p.is_file():
        raise FileNotFoundError(f"{arg} {str(d)!r} lacks {name}; expected {expected}")
    return p


def finite_number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CPTensorError(f"{what}: expected a finite number, got {value!r}")
    return float(value)

"""Adapter configuration: a JSON-serialisable dataclass, validated on construction."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from cptensor.errors import CPTensorError
from cptensor.keywords import PEFT_KEYWORDS, KeywordHint, check_keywords

from .grid import ATTENTION_ROLES
from .inits import INITS
from .layout import LAYOUTS, Layout

__all__ = ["INITS", "AdapterConfig"]

# PEFT's LoraConfig names (cptensor.keywords.PEFT_KEYWORDS), with what this config takes
# instead spelt out where a one-word answer would leave the user guessing.
_PEFT_HINTS: Mapping[str, KeywordHint] = {
    **PEFT_KEYWORDS,
    "init_lora_weights": KeywordHint(
        "PEFT",
        "init",
        f"one of {INITS}; 'default' leaves the model unchanged at the start, as PEFT's "
        "init_lora_weights=True does (one factor zero); PEFT's 'gaussian', 'pissa', 'olora', "
        "'loftq' have no counterpart",
    ),
    "use_rslora": KeywordHint(
        "PEFT",
        None,
        "the update is always scaled by alpha / r; rsLoRA's lora_alpha / sqrt(r) is the same "
        "scale as alpha = lora_alpha * sqrt(r)",
    ),
    "bias": KeywordHint(
        "PEFT",
        None,
        "the adapter trains no biases (PEFT's bias='none'); a module listed in "
        "modules_to_save trains in full, bias included",
    ),
    "layers_to_transform": KeywordHint(
        "PEFT",
        None,
        "choose the layers through targets: a list of module paths or a regex such as "
        r"r'layer\.[0-3]\.attention' (layers then index the CP tensor's layer mode)",
    ),
    "inference_mode": KeywordHint(
        "PEFT",
        None,
        "whether factors train is not part of the config: load_adapter(..., trainable=False) "
        "loads frozen, set_active chooses the adapters that train",
    ),
}

_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


@dataclass
class AdapterConfig:
    """Configuration of one CP-factored adapter.

    Parameters
    ----------
    r : int
        CP rank (number of components), ``>= 1``.
    alpha : float
        the update is scaled by ``alpha / r`` (as LoRA's ``lora_alpha``).
    dropout : float
        dropout probability on the adapter's input, in ``[0, 1)``.
    layout : str or Layout or dict
        ``"lorta"``, ``"lora"``, ``"layer_shared"``, a :class:`~cptensor_adapters.Layout`
        or a dict ``{"modes": [...], "groups": [...]}``.
    targets : list of str or str, optional
        ``None`` (attention Q, K, V, O), a list of matrix/module names, or a regex
        (see :meth:`WeightGrid.from_model <cptensor_adapters.WeightGrid.from_model>`).
    head_split : str or dict of str to str
        ``"auto"`` (Q, K, V heads split the output, O the input), ``"out"``,
        ``"in"``, or a dict matrix → side.
    init : str
        one of :data:`~cptensor_adapters.inits.INITS`; the distribution of every
        factor is in :mod:`cptensor_adapters.inits` (``"reference"`` is the paper's code).
    seed : int
        seed of the initialisation (same seed, same factors).
    factor_dtype : str, optional
        ``"float32"``, ``"float64"``, ``"float16"``, ``"bfloat16"`` or
        ``None``: float32 when the targets are float16/bfloat16, else their dtype.
    modules_to_save : list of str, optional
        module names (exact or dotted suffix) trained in full beside the
        adapter, e.g. ``["classifier"]``.
    roles : dict of str to str, optional
        module-name suffix → ``"q"|"k"|"v"|"o"`` for architectures this library
        does not know (see :meth:`WeightGrid.from_model`).
    num_heads : int, optional
        number of attention heads, when the model's config does not say it.
    num_kv_heads : int, optional
        number of key/value heads (grouped-query attention), likewise.
    head_dim : int, optional
        size of one head, likewise.

    Raises
    ------
    ValueError
        a field out of range, naming the field, the value and what was expected.
    TypeError
        an unknown keyword; PEFT's ``LoraConfig`` names (``lora_alpha``,
        ``target_modules``, ``lora_dropout``, ``init_lora_weights``, ``task_type``,
        ``bias``, ``use_rslora``, ...) are answered with the field to use here, or why
        there is none.

    Notes
    -----
    Learning rate and steps. LoRTA's few factors want a larger learning rate than LoRA's
    at the same rank. On SST-2 with MiniLM-L6 (500 steps of batch 32; the full record is
    on the benchmarks page) the default ``AdapterConfig(r=8)`` did best at lr ``2e-2``
    (``alpha=32``), against ``4e-3`` for PEFT LoRA r = 8 on Q, V. The tuned recipe
    trains at ``8e-3`` and came closest to LoRA (83.1 % against 84.4 %, with 21x fewer
    adapter parameters): ``init="scaled"``, ``head_split="in"``, ``alpha = 2 r``, and
    the head, layer and matrix factors at four times the rate through
    ``create_optimizer(model, 8e-3, lr_ratios={"head": 4, "layer": 4, "matrix": 4})``.
    More steps help (1,500 steps: 84.0 %, with the sweep choosing ``4e-3``); rank 16
    was not better than rank 8 at 500 steps.

    Examples
    --------
    >>> try:
    ...     AdapterConfig(lora_alpha=16)  # PEFT's name
    ... except TypeError as err:
    ...     print(str(err).partition(": ")[2])
    use alpha=... (the update is scaled by alpha / r, as in PEFT)
    >>> tuned = AdapterConfig(r=8, alpha=16, init="scaled", head_split="in")
    >>> cfg = AdapterConfig(r=4, layout="lora", targets=["q", "v"])
    >>> AdapterConfig.from_json(cfg.to_json()) == cfg
    True
    >>> cfg.scaling
    2.0
    >>> AdapterConfig(r=0)
    Traceback (most recent call last):
    ...
    cptensor.errors.CPTensorError: r: expected an integer >= 1, got 0
    """

    r: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    layout: str | Layout | dict[str, Any] = "lorta"  # stored as a name or a dict
    targets: list[str] | str | None = None
    head_split: str | dict[str, str] = "auto"
    init: str = "default"
    seed: int = 0
    factor_dtype: str | None = None
    modules_to_save: list[str] | None = None
    roles: dict[str, str] | None = None
    num_heads: int | None = None
    num_kv_heads: int | None = None
    head_dim: int | None = None
    _layout: Layout = field(init=False, repr=False, compare=False)

    def __new__(cls, *args: Any, **kwargs: Any) -> AdapterConfig:
        # Before the dataclass __init__ answers "unexpected keyword argument": say which
        # field a PEFT name (or a near miss) means.
        if kwargs:
            check_keywords("AdapterConfig", kwargs, _init_fields(cls), _PEFT_HINTS)
        return super().__new__(cls)

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise CPTensorError(f"r: expected an integer >= 1, got {self.r!r}")
        if (
            isinstance(self.alpha, bool)
            or not isinstance(self.alpha, (int, float))
            or not math.isfinite(self.alpha)
        ):
            raise CPTensorError(f"alpha: expected a finite number, got {self.alpha!r}")
        if (
            isinstance(self.dropout, bool)
            or not isinstance(self.dropout, (int, float))
            or not 0.0 <= self.dropout < 1.0
        ):
            raise CPTensorError(f"dropout: expected a probability in [0, 1), got {self.dropout!r}")
        self._layout = Layout.resolve(self.layout)
        if isinstance(self.layout, Layout):  # keep the field JSON-friendly
            builtin = LAYOUTS.get(self.layout.name)
            self.layout = self.layout.name if builtin == self.layout else self.layout.to_dict()
        elif isinstance(self.layout, Mapping):
            self.layout = self._layout.to_dict()
        if isinstance(self.targets, tuple):
            self.targets = list(self.targets)
        if self.targets is not None and not (
            isinstance(self.targets, str)
            or (
                isinstance(self.targets, list)
                and all(isinstance(t, str) and t for t in self.targets)
            )
        ):
            raise CPTensorError(
                f"targets: expected None, a regex string or a list of names, got {self.targets!r}"
            )
        if isinstance(self.head_split, str):
            if self.head_split not in ("auto", "out", "in"):
                raise CPTensorError(
                    f"head_split: expected 'auto', 'out', 'in' or a dict matrix -> side, got "
                    f"{self.head_split!r}"
                )
        elif isinstance(self.head_split, Mapping):
            bad = {
                k: v
                for k, v in self.head_split.items()
                if not isinstance(k, str) or not isinstance(v, str) or v not in ("out", "in")
            }
            if bad:
                raise CPTensorError(f"head_split: sides must be 'out' or 'in', got {bad!r}")
            self.head_split = dict(self.head_split)
        else:
            raise CPTensorError(f"head_split: expected a string or a dict, got {self.head_split!r}")
        if not isinstance(self.init, str) or self.init not in INITS:
            raise CPTensorError(f"init: expected one of {INITS}, got {self.init!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise CPTensorError(f"seed: expected an integer, got {self.seed!r}")
        if self.factor_dtype is not None and (
            not isinstance(self.factor_dtype, str) or self.factor_dtype not in _DTYPES
        ):
            raise CPTensorError(
                f"factor_dtype: expected None or one of {sorted(_DTYPES)}, "
                f"got {self.factor_dtype!r}"
            )
        if self.modules_to_save is not None:
            if not isinstance(self.modules_to_save, (list, tuple)) or not all(
                isinstance(m, str) and m for m in self.modules_to_save
            ):
                raise CPTensorError(
                    "modules_to_save: expected a list of module names, got "
                    f"{self.modules_to_save!r}"
                )
            self.modules_to_save = list(self.modules_to_save)
        if self.roles is not None:
            if not isinstance(self.roles, Mapping) or not all(
                isinstance(k, str) and k for k in self.roles
            ):
                raise CPTensorError(
                    f"roles: expected a dict module-name suffix -> role, got {self.roles!r}"
                )
            bad_roles = {k: v for k, v in self.roles.items() if v not in ATTENTION_ROLES}
            if bad_roles:
                raise CPTensorError(
                    f"roles: values must be one of {list(ATTENTION_ROLES)}, got {bad_roles!r}"
                )
            self.roles = dict(self.roles)
        for name in ("num_heads", "num_kv_heads", "head_dim"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise CPTensorError(f"{name}: expected None or an integer >= 1, got {v!r}")

    @property
    def resolved_layout(self) -> Layout:
        """The :class:`Layout` object this config names."""
        return self._layout

    @property
    def scaling(self) -> float:
        """``alpha / r``."""
        return float(self.alpha) / self.r

    def dtype_for(self, weight_dtype: torch.dtype) -> torch.dtype:
        """Factor dtype for targets whose weights have ``weight_dtype``.

        Examples
        --------
        >>> AdapterConfig().dtype_for(torch.bfloat16)
        torch.float32
        """
        if self.factor_dtype is not None:
            return _DTYPES[self.factor_dtype]
        if weight_dtype in (torch.float16, torch.bfloat16):
            return torch.float32
        return weight_dtype

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (what :meth:`from_dict` reads back)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        return json.loads(json.dumps(out))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AdapterConfig:
        """Build from :meth:`to_dict` output; unknown keys are an error.

        Raises
        ------
        ValueError
            a key this version does not know.
        """
        known = {f.name for f in fields(cls) if f.init}
        unknown = sorted(set(data) - known)
        peft = [k for k in unknown if k in _PEFT_HINTS]
        if peft:  # e.g. a PEFT adapter_config.json
            check_keywords("AdapterConfig.from_dict", peft, _init_fields(cls), _PEFT_HINTS)
        if unknown:
            raise CPTensorError(
                f"AdapterConfig: unknown fields {unknown}; known fields {sorted(known)}"
            )
        return cls(**dict(data))

    def to_json(self) -> str:
        """JSON text."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> AdapterConfig:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> AdapterConfig:
        """A copy with some fields changed (the original is not modified).

        Examples
        --------
        >>> AdapterConfig(r=4).replace(r=16).r
        16
        """
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        data.update(changes)
        return type(self)(**data)


def _init_fields(cls: type) -> list[str]:
    """The keyword arguments of ``cls``'s dataclass ``__init__``, in order."""
    return [f.name for f in fields(cls) if f.init]

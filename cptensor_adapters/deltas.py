"""Fine-tuned weight deltas as tensors, and their tensor-rank analysis.

The attention updates of a fine-tuned transformer (layers × {Q, K, V, O}) are arranged as
the LoRTA tensor of DESIGN.md, shape ``(d, d_h, H, L, M)``:

* mode 0, ``d``: the side of each weight that the heads do *not* split (the input of Q,
  K, V; the output of O);
* modes 1 and 2, ``d_h`` and ``H``: the split side, head ``h`` owning rows (Q, K, V) or
  columns (O) ``h·d_h … (h+1)·d_h − 1``;
* mode 3, ``L``: the layer; mode 4, ``M``: the matrix, in the order Q, K, V, O.

So block ``(l, m)`` holds ``T[i, j, h] = ΔW[h·d_h + j, i]`` for Q, K, V and
``ΔW[i, h·d_h + j]`` for O, with ``ΔW`` in ``torch.nn.Linear`` storage (out × in). A
rank-``r`` CP of this tensor is exactly a LoRTA adapter of rank ``r``
(``r·(d + d_h + H + L + M)`` numbers); a per-matrix truncated SVD is LoRA.

* :func:`extract_delta` — ``tuned − base`` of two models or two checkpoint directories
  (safetensors, memory-mapped, one block read at a time) as a :class:`DeltaTensor`
  (a :class:`cptensor.structured.BlockTensor`).
* :func:`extract_lora_delta` — a PEFT LoRA adapter directory as a :class:`LowRankDelta`
  (a :class:`cptensor.structured.LowRankBlockTensor`; no block is formed).
* :func:`extract_adapter_delta` — any adapter directory, PEFT LoRA or written by
  :func:`cptensor_adapters.save_adapter` (the format is read from ``adapter_config.json``),
  as a :class:`LowRankDelta` built from the saved factors.
* :func:`analyze_delta` — rank sweep, per-matrix rank profile, "parameters needed to
  capture X % of the delta's energy" for LoRA and for the CP layout, core consistency;
  :meth:`DeltaReport.save` writes ``report.md``, ``report.json`` and PNG figures.

Supported checkpoints: BERT/RoBERTa-style (``…encoder.layer.{l}.attention.self.query``,
``key``, ``value``, ``…attention.output.dense``), Llama/Mistral/Qwen2-style
(``…layers.{l}.self_attn.{q,k,v,o}_proj``) and GPT-2 (fused ``c_attn``, Conv1D storage,
and ``c_proj``). Models with grouped-query attention (fewer K/V heads) do not fit the
``(d, d_h, H, L, 4)`` grid and are refused with a clear error.

Examples
--------
>>> import numpy as np, torch
>>> from transformers import BertConfig, BertModel
>>> cfg = BertConfig(hidden_size=16, num_attention_heads=4, num_hidden_layers=2,
...                  intermediate_size=32, vocab_size=50)
>>> torch.manual_seed(0); base = BertModel(cfg); tuned = BertModel(cfg)  # doctest: +ELLIPSIS
<...>
>>> _ = tuned.load_state_dict(base.state_dict())
>>> with torch.no_grad():
...     _ = tuned.encoder.layer[1].attention.self.query.weight.add_(1.0)
>>> delta = extract_delta(base, tuned)
>>> delta.shape
(16, 4, 4, 2, 4)
>>> round(delta.norm(), 6)   # sqrt(16 * 16)
16.0
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cptensor.errors import CPTensorError, CPTensorTypeError
from cptensor.files import SafetensorsFile, jsonable
from cptensor.structured import BlockTensor, LowRankBlockTensor

__all__ = [
    "MATRICES",
    "AttentionGeometry",
    "DeltaReport",
    "DeltaTensor",
    "LowRankDelta",
    "analyze_delta",
    "extract_adapter_delta",
    "extract_delta",
    "extract_lora_delta",
    "lora_delta_from_model",
    "lowrank_delta_from_weights",
]

MATRICES = ("Q", "K", "V", "O")
LAYOUTS = ("lorta",)

# -- recognising attention weights by name ---------------------------------------------------


def _weight_pattern(layers: str, module: str) -> re.Pattern[str]:
    """``<prefix><layers>.<layer>.<module>.weight`` (regex pieces), with groups ``prefix``
    and ``layer``."""
    return re.compile(rf"^(?P<prefix>.*?){layers}\.(?P<layer>\d+)\.{module}\.weight$")


# Each pattern: the naming scheme, the regex, the matrix (or "QKV" for GPT-2's fused
# projection) and whether the stored weight is transposed (Conv1D: in × out).
_PATTERNS: tuple[tuple[str, re.Pattern[str], str, bool], ...] = (
    ("bert", _weight_pattern(r"encoder\.layer", r"attention\.self\.query"), "Q", False),
    ("bert", _weight_pattern(r"encoder\.layer", r"attention\.self\.key"), "K", False),
    ("bert", _weight_pattern(r"encoder\.layer", r"attention\.self\.value"), "V", False),
    ("bert", _weight_pattern(r"encoder\.layer", r"attention\.output\.dense"), "O", False),
    ("llama", _weight_pattern("layers", r"self_attn\.q_proj"), "Q", False),
    ("llama", _weight_pattern("layers", r"self_attn\.k_proj"), "K", False),
    ("llama", _weight_pattern("layers", r"self_attn\.v_proj"), "V", False),
    ("llama", _weight_pattern("layers", r"self_attn\.o_proj"), "O", False),
    ("gpt2", _weight_pattern("h", r"attn\.c_attn"), "QKV", True),
    ("gpt2", _weight_pattern("h", r"attn\.c_proj"), "O", True),
)


@dataclass(frozen=True)
class AttentionGeometry:
    """The attention weights of one checkpoint, found by name.

    Attributes
    ----------
    family : str
        ``"bert"``, ``"llama"`` or ``"gpt2"`` (naming scheme).
    prefix : str
        Common key prefix (e.g. ``"bert."``; may be empty).
    n_layers : int
    hidden : int
        ``d``.
    n_heads : int
        ``H`` (from the config when known, else given).
    keys : dict
        ``(layer, matrix_index) -> (key, transposed, row_slice)``; ``row_slice`` selects
        Q, K or V from GPT-2's fused projection (in output coordinates), else None.

    Examples
    --------
    >>> import torch
    >>> from transformers import BertConfig, BertModel
    >>> cfg = BertConfig(hidden_size=16, num_attention_heads=4, num_hidden_layers=2,
    ...                  intermediate_size=32, vocab_size=50)
    >>> _ = torch.manual_seed(0)
    >>> base = BertModel(cfg)
    >>> geo = extract_delta(base, base).geometry
    >>> geo.family, geo.n_layers, geo.hidden, geo.n_heads, geo.head_size
    ('bert', 2, 16, 4, 4)
    >>> geo.shape
    (16, 4, 4, 2, 4)
    """

    family: str
    prefix: str
    n_layers: int
    hidden: int
    n_heads: int
    keys: Mapping[tuple[int, int], tuple[str, bool, tuple[int, int] | None]] = field(repr=False)

    @property
    def head_size(self) -> int:
        """``d_h = d / H``."""
        return self.hidden // self.n_heads

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        """The LoRTA tensor shape ``(d, d_h, H, L, 4)``."""
        return (self.hidden, self.head_size, self.n_heads, self.n_layers, len(MATRICES))

    def describe(self) -> str:
        """One line: family, prefix, sizes."""
        return (
            f"{self.family}-style attention, key prefix {self.prefix!r}, {self.n_layers} "
            f"layers, hidden {self.hidden}, {self.n_heads} heads of {self.head_size}"
        )


def _find_geometry(
    names_shapes: Mapping[str, tuple[int, ...]],
    n_heads: int | None,
    what: str,
    *,
    allow_missing: bool = False,
    n_layers: int | None = None,
) -> AttentionGeometry:
    """Recognise the attention weights among ``names_shapes`` (Linear/Conv1D storage).

    ``allow_missing`` (adapters): matrices and layers without a weight are allowed (zero
    blocks); the layer count is then ``max(n_layers, highest layer + 1)``.
    """
    found: dict[str, dict[tuple[int, int], tuple[str, bool, Any]]] = {}
    prefixes: dict[str, set[str]] = {}
    hidden: dict[str, int] = {}
    for name, shape in names_shapes.items():
        for family, pat, mat, transposed in _PATTERNS:
            m = pat.match(name)
            if not m:
                continue
            layer = int(m["layer"])
            prefixes.setdefault(family, set()).add(m["prefix"])
            fam = found.setdefault(family, {})
            if mat == "QKV":
                d_in, d3 = shape
                d = d3 // 3
                for i in range(3):
                    fam[(layer, i)] = (name, True, (i * d, (i + 1) * d))
                hidden[family] = d_in
            else:
                fam[(layer, MATRICES.index(mat))] = (name, transposed, None)
                if mat == "O":
                    hidden[family] = shape[0]
            break
    if not found:
        sample = ", ".join(list(names_shapes)[:5])
        raise CPTensorError(
            f"{what}: no attention projections found among {len(names_shapes)} weights "
            f"(e.g. {sample}); expected BERT/RoBERTa (…attention.self.query.weight), "
            "Llama (…self_attn.q_proj.weight) or GPT-2 (…attn.c_attn.weight) names"
        )
    family = max(found, key=lambda f: len(found[f]))
    keys = found[family]
    if len(prefixes[family]) != 1:
        raise CPTensorError(
            f"{what}: attention weights under several prefixes "
            f"{sorted(prefixes[family])}; expected one model per checkpoint"
        )
    layers = sorted({k[0] for k in keys})
    if allow_missing:
        layers = list(range(max(n_layers or 0, layers[-1] + 1)))
    if layers != list(range(len(layers))):
        raise CPTensorError(f"{what}: attention layers {layers} are not numbered 0..L-1")
    missing = [(l, MATRICES[m]) for l in layers for m in range(4) if (l, m) not in keys]
    if missing and not allow_missing:
        raise CPTensorError(f"{what}: attention weights missing for (layer, matrix) {missing[:4]}")
    if family not in hidden:  # no O projection (an adapter on Q, K, V only): d = in side
        name, transposed, _ = next(iter(keys.values()))
        shape = names_shapes[name]
        hidden[family] = shape[0] if transposed else shape[1]
    d = hidden[family]
    for name, transposed, sl in keys.values():
        shape = names_shapes[name]
        rows = shape[1] if transposed else shape[0]
        if sl is None and tuple(shape) != (d, d):
            raise CPTensorError(
                f"{what}: {name} has shape {tuple(shape)}, expected ({d}, {d}): the LoRTA "
                "grid needs equal-sized Q, K, V, O (grouped-query attention is not supported "
                "by extract_delta)"
            )
        if sl is not None and rows != 3 * d:
            raise CPTensorError(
                f"{what}: fused {name} has shape {tuple(shape)}, expected 3·d outputs"
            )
    if n_heads is None:
        raise CPTensorError(f"{what}: the number of attention heads is unknown; pass n_heads")
    if d % n_heads:
        raise CPTensorError(f"{what}: hidden size {d} is not divisible by {n_heads} heads")
    return AttentionGeometry(family, next(iter(prefixes[family])), len(layers), d, n_heads, keys)


def _update_geometry(
    out_in: Mapping[str, tuple[int, int]],
    n_heads: int | None,
    what: str,
    cfg: Mapping[str, Any],
) -> AttentionGeometry:
    """:func:`_find_geometry` of low-rank updates given as ``{weight key: (out, in)}``
    (Linear orientation, as LoRA factors hold them; GPT-2's Conv1D keys are given their
    stored ``(in, out)``). Matrices and layers without an update are zero blocks; the
    layer count is at least the one ``cfg`` gives."""
    names = {
        k: (v[1], v[0]) if ".c_attn." in k or ".c_proj." in k else v for k, v in out_in.items()
    }
    return _find_geometry(
        names,
        n_heads,
        what,
        allow_missing=True,
        n_layers=cfg.get("num_hidden_layers", cfg.get("n_layer")),
    )


def _heads_from_config(cfg: Mapping[str, Any]) -> int | None:
    for k in ("num_attention_heads", "n_head", "num_heads"):
        if k in cfg:
            heads = _positive_int(cfg[k], f"config {k}")
            kv = cfg.get("num_key_value_heads")
            if kv is not None and _positive_int(kv, "config num_key_value_heads") != heads:
                raise CPTensorError(
                    f"the model uses grouped-query attention ({heads} query heads, {kv} "
                    "key/value heads); extract_delta's LoRTA grid needs equal-sized Q, K, V, O"
                )
            return heads
    return None


# -- sources of weights --------------------------------------------------------------------
class _Source:
    """Named 2-D weights of a model or a checkpoint directory, read one at a time."""

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
            self.config = _read_json_object(cfg_path, self.what)
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


def _block_of(
    w: np.ndarray, m: int, transposed: bool, sl: tuple[int, int] | None, n_heads: int
) -> np.ndarray:
    """Canonical ``(d, d_h, H)`` block of a weight stored as ``w``."""
    if transposed:  # Conv1D: (in, out) -> Linear (out, in)
        w = w.T
    if sl is not None:
        w = w[sl[0] : sl[1]]
    d = w.shape[0]
    dh = d // n_heads
    if m < 3:  # heads split the output rows: T[i, j, h] = W[h*dh + j, i]
        return np.ascontiguousarray(w.T.reshape(d, n_heads, dh).transpose(0, 2, 1))
    return np.ascontiguousarray(w.reshape(d, n_heads, dh).transpose(0, 2, 1))


def _matrix_of(block: np.ndarray, m: int) -> np.ndarray:
    """``ΔW`` (Linear storage, out × in) of a canonical ``(d, d_h, H)`` block of matrix
    ``m``: the inverse of :func:`_block_of`."""
    d, dh, n_heads = block.shape
    w = block.transpose(0, 2, 1).reshape(d, n_heads * dh)
    return w.T if m < 3 else w


class DeltaTensor(BlockTensor):
    """The fine-tuned attention delta ``tuned − base`` as a lazily read LoRTA tensor.

    A :class:`~cptensor.structured.BlockTensor` of shape ``(d, d_h, H, L, 4)`` (see the
    module docstring); each ``(layer, matrix)`` block is read from both sources when
    needed and never cached. Extra attributes: ``geometry`` (:class:`AttentionGeometry`
    of the tuned source), ``matched`` (rows ``layer, matrix, base_key, tuned_key``),
    ``prefixes`` (``{"base": …, "tuned": …}``), ``notes`` (what was adapted to match).

    Examples
    --------
    >>> import torch
    >>> from transformers import BertConfig, BertModel
    >>> cfg = BertConfig(hidden_size=16, num_attention_heads=4, num_hidden_layers=2,
    ...                  intermediate_size=32, vocab_size=50)
    >>> _ = torch.manual_seed(0)
    >>> base = BertModel(cfg)
    >>> delta = extract_delta(base, base)     # a model against itself: a zero delta
    >>> delta.shape, float(delta.norm())
    ((16, 4, 4, 2, 4), 0.0)
    >>> delta.matched[0][:3]
    (0, 'Q', 'encoder.layer.0.attention.self.query.weight')
    """

    def __init__(
        self,
        base: _Source,
        tuned: _Source,
        gb: AttentionGeometry,
        gt: AttentionGeometry,
        notes: list[str],
    ) -> None:
        self.geometry = gt
        self.base_geometry = gb
        self.prefixes = {"base": gb.prefix, "tuned": gt.prefix}
        self.notes = tuple(notes)
        self.matched = tuple(
            (l, MATRICES[m], gb.keys[(l, m)][0], gt.keys[(l, m)][0])
            for l in range(gt.n_layers)
            for m in range(4)
        )
        self.sources = (base.description, tuned.description)
        self._base, self._tuned = base, tuned
        super().__init__(gt.shape, (0, 1, 2), self._read_block)

    def _read_block(self, key: tuple[int, ...]) -> np.ndarray:
        l, m = (int(k) for k in key)
        out = []
        for src, geo in ((self._base, self.base_geometry), (self._tuned, self.geometry)):
            name, transposed, sl = geo.keys[(l, m)]
            out.append(_block_of(src.read(name), m, transposed, sl, geo.n_heads))
        return out[1] - out[0]

    def matrices(self) -> Iterator[tuple[int, str, Any]]:
        """``(layer, matrix name, ΔW)`` for every block, ΔW dense (out × in), one at a time."""
        for l in range(self.shape[3]):
            for m in range(4):
                yield l, MATRICES[m], _matrix_of(self._read_block((l, m)), m)


class LowRankDelta(LowRankBlockTensor):
    """An adapter's low-rank updates as a LoRTA tensor of low-rank blocks (none formed).

    A :class:`~cptensor.structured.LowRankBlockTensor` of shape ``(d, d_h, H, L, 4)``;
    blocks of matrices the adapter does not touch are zero. Extra attributes:
    ``pairs`` (``{(layer, matrix name): (B_scaled, A)}``, ``ΔW = B_scaled @ A``),
    ``matched`` (rows ``layer, matrix, key of lora_A``), ``config`` (the adapter's
    ``adapter_config.json``), ``notes``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> def rank_one():
    ...     return rng.standard_normal((8, 1)) @ rng.standard_normal((1, 8))
    >>> w = {f"encoder.layer.0.attention.{n}": rank_one()
    ...      for n in ("self.query", "self.key", "self.value", "output.dense")}
    >>> lr = lowrank_delta_from_weights(w, n_heads=2)   # a LowRankDelta
    >>> sorted(lr.pairs)[:2], lr.shape
    ([(0, 'K'), (0, 'O')], (8, 4, 2, 1, 4))
    >>> bool(np.isclose(lr.norm(), np.sqrt(sum((v ** 2).sum() for v in w.values()))))
    True
    """

    def __init__(
        self,
        shape: tuple[int, ...],
        pairs: dict[tuple[int, str], tuple[Any, Any]],
        matched: Sequence[tuple[int, str, str]],
        config: Mapping[str, Any],
        notes: Sequence[str],
    ) -> None:
        self.pairs = dict(pairs)
        self.matched = tuple(matched)
        self.config = dict(config)
        self.notes = tuple(notes)
        dh, H = shape[1:3]

        def split(a: np.ndarray) -> np.ndarray:  # rows h*dh + j -> j*H + h
            return np.ascontiguousarray(a.reshape(H, dh, -1).transpose(1, 0, 2).reshape(H * dh, -1))

        blocks: dict[tuple[int, int], Any] = {}
        for l in range(shape[3]):
            for m, name in enumerate(MATRICES):
                pr = self.pairs.get((l, name))
                if pr is None:
                    blocks[(l, m)] = None
                    continue
                b, a = pr  # ΔW = b @ a, b: (out, r), a: (r, in)
                blocks[(l, m)] = (a.T.copy(), split(b)) if m < 3 else (b, split(a.T))
        super().__init__(shape, (0,), (1, 2), blocks)

    def matrices(self) -> Iterator[tuple[int, str, Any]]:
        """``(layer, matrix name, (B_scaled, Aᵀ))`` for every adapted matrix."""
        for (l, name), (b, a) in sorted(
            self.pairs.items(), key=lambda kv: (kv[0][0], MATRICES.index(kv[0][1]))
        ):
            yield l, name, (b, a.T)


def _check_layout(layout: Any) -> None:
    name = getattr(layout, "name", layout)
    if name not in LAYOUTS:
        raise CPTensorError(
            f"layout must be one of {LAYOUTS} (the paper's tensor over "
            f"out × in-per-head × head × layer × matrix); got {layout!r}"
        )


def extract_delta(base: Any, tuned: Any, grid: Any = None, layout: Any = "lorta") -> DeltaTensor:
    """The fine-tuned delta ``tuned − base`` of the attention weights, as a LoRTA tensor.

    Parameters
    ----------
    base, tuned : torch model or path
        Two models (``torch.nn.Module``: their ``state_dict``) or two checkpoint
        directories (or ``.safetensors`` files) with ``config.json`` beside them. Files
        are memory-mapped and one ``(layer, matrix)`` block is read at a time; nothing is
        loaded up front but the key names.
    grid : optional
        An object with ``n_heads`` (or ``num_heads``) giving the number of attention heads
        when neither source has a config (e.g. a ``WeightGrid``), or an int.
    layout : str
        ``"lorta"`` (the only layout for deltas: the tensor of the module docstring).

    Returns
    -------
    DeltaTensor
        Shape ``(d, d_h, H, L, 4)``. ``.matched`` lists which keys were paired,
        ``.prefixes`` and ``.notes`` say what was done to match them (e.g. a ``bert.``
        prefix present in one checkpoint only).

    Raises
    ------
    FileNotFoundError
        A path that does not exist or holds no safetensors file.
    ValueError
        Unknown layout, no attention weights found, or models of different
        architectures (layer count, sizes or naming scheme differ; the message says how).

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
    """
    _check_layout(layout)
    src_b, src_t = _Source(base, "base"), _Source(tuned, "tuned")
    heads = None
    if isinstance(grid, int) and not isinstance(grid, bool):
        heads = grid
    elif grid is not None:
        heads = getattr(grid, "n_heads", None) or getattr(grid, "num_heads", None)
        kv = getattr(grid, "num_kv_heads", None)
        if heads is not None and kv is not None and kv != heads:
            raise CPTensorError(
                f"grid has grouped-query attention ({heads} query heads, {kv} key/value "
                "heads); extract_delta's LoRTA grid needs equal-sized Q, K, V, O"
            )
    hb = heads or _heads_from_config(src_b.config) or _heads_from_config(src_t.config)
    ht = heads or _heads_from_config(src_t.config) or hb
    gb = _find_geometry(src_b.shapes, hb, "base")
    gt = _find_geometry(src_t.shapes, ht, "tuned")
    diffs = []
    for attr in ("family", "n_layers", "hidden", "n_heads"):
        if getattr(gb, attr) != getattr(gt, attr):
            diffs.append(f"{attr}: base {getattr(gb, attr)!r}, tuned {getattr(gt, attr)!r}")
    if diffs:
        raise CPTensorError(
            "base and tuned are models of different architectures (" + "; ".join(diffs) + ")"
        )
    for key, (nb, _, _) in gb.keys.items():
        nt = gt.keys[key][0]
        if src_b.shapes[nb] != src_t.shapes[nt]:
            raise CPTensorError(
                f"base and tuned are models of different architectures: {nb} has "
                f"shape {src_b.shapes[nb]} in base, {nt} {src_t.shapes[nt]} in tuned"
            )
    notes = [
        f"base: {gb.describe()} ({src_b.description})",
        f"tuned: {gt.describe()} ({src_t.description})",
    ]
    if gb.prefix != gt.prefix:
        notes.append(
            f"key prefixes differ: base {gb.prefix!r}, tuned {gt.prefix!r}; "
            f"matched {len(gb.keys)} attention weights by layer and matrix"
        )
    else:
        notes.append(f"matched {len(gb.keys)} attention weights by name")
    return DeltaTensor(src_b, src_t, gb, gt, notes)


def _load_config(base_config: Any) -> dict[str, Any]:
    if base_config is None:
        return {}
    if isinstance(base_config, Mapping):
        return dict(base_config)
    if hasattr(base_config, "to_dict"):
        return base_config.to_dict()
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
    return _read_json_object(p, "base_config")


def _read_json_object(path: Path, what: str) -> dict[str, Any]:
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


def _positive_int(value: Any, what: str, limit: int = 1 << 20) -> int:
    """``value`` as an integer in ``1..limit``; ValueError naming ``what`` otherwise."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not ok or not 1 <= value <= limit:
        raise CPTensorError(f"{what}: expected an integer from 1 to {limit:,}, got {value!r}")
    return int(value)


def _read_adapter_json(path: Path) -> dict[str, Any]:
    """``adapter_config.json`` as a dict; ValueError naming the file when it is not one."""
    return _read_json_object(path, "adapter config")


def _adapter_dir(path: str | os.PathLike[str], arg: str) -> Path:
    """``path`` as a directory; FileNotFoundError naming the argument when it is not one."""
    d = Path(path)
    if not d.is_dir():
        raise FileNotFoundError(f"{arg} {str(d)!r} is not a directory")
    return d


def _adapter_file(d: Path, name: str, arg: str, expected: str) -> Path:
    """``d / name``; FileNotFoundError naming the argument and what was ``expected`` when
    that file is missing."""
    p = d / name
    if not p.is_file():
        raise FileNotFoundError(f"{arg} {str(d)!r} lacks {name}; expected {expected}")
    return p


def _is_own_format(acfg: Mapping[str, Any]) -> bool:
    """Whether an ``adapter_config.json`` was written by :func:`cptensor_adapters.save_adapter`."""
    from .io import FORMAT

    return acfg.get("format") == FORMAT


def _read_safetensors(path: Path, keep: Callable[[str], bool]) -> tuple[dict[str, Any], list[str]]:
    """The tensors of ``path`` whose key passes ``keep`` (torch, as stored, memory-mapped;
    the others are not read) and all its keys, through the validating reader."""
    reader = SafetensorsFile(path)
    keys = reader.keys()
    return {k: reader.read(k, "pt") for k in keys if keep(k)}, keys


#: Largest layer count a delta may declare (no transformer has more).
MAX_LAYERS = 4096

_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.(?P<name>[^.]+))?\.weight$")


def extract_lora_delta(
    peft_adapter_dir: str | os.PathLike[str], base_config: Any = None
) -> LowRankDelta:
    """A PEFT LoRA adapter directory as a LoRTA-layout tensor of low-rank blocks.

    Each adapted attention matrix contributes ``ΔW = (α/r)·B A`` (``α/√r`` with
    rsLoRA) as a pair of factors; no block is formed. Matrices the adapter does not
    touch are zero blocks.

    Parameters
    ----------
    peft_adapter_dir : path
        Directory with ``adapter_config.json`` and ``adapter_model.safetensors`` (as
        written by ``PeftModel.save_pretrained`` or by ``save_as_peft_lora``).
    base_config : dict, transformers config or path, optional
        The base model's config (for the number of heads and layers); default: the
        config that ``base_model_name_or_path`` of the adapter points to, when it is a
        local directory.

    Returns
    -------
    LowRankDelta
        Shape ``(d, d_h, H, L, 4)``.

    Raises
    ------
    FileNotFoundError
        Missing directory or files.
    ValueError
        An adapter that is not LoRA, or whose targets are not attention projections.

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
    ((16, 4, 4, 2, 4), ['Q', 'V'])
    """
    d = _adapter_dir(peft_adapter_dir, "peft_adapter_dir")
    expected = "a PEFT LoRA adapter saved with save_pretrained"
    cfg_path = _adapter_file(d, "adapter_config.json", "peft_adapter_dir", expected)
    w_path = _adapter_file(d, "adapter_model.safetensors", "peft_adapter_dir", expected)
    acfg = _read_adapter_json(cfg_path)
    if _is_own_format(acfg):
        raise CPTensorError(
            f"{cfg_path}: a cptensor_adapters adapter (written by save_adapter), not a PEFT "
            "LoRA adapter; read it with extract_adapter_delta"
        )
    if str(acfg.get("peft_type", "LORA")).upper() != "LORA":
        raise CPTensorError(f"{cfg_path}: peft_type is {acfg.get('peft_type')!r}, expected 'LORA'")
    if base_config is None and acfg.get("base_model_name_or_path"):
        cand = Path(acfg["base_model_name_or_path"])
        if (cand / "config.json").is_file():
            base_config = cand
    cfg = _load_config(base_config)
    r_default = _positive_int(acfg.get("r", 8), f"{cfg_path}: r")
    alpha_default = _finite_number(acfg.get("lora_alpha", r_default), f"{cfg_path}: lora_alpha")
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
    shapes = {}
    for module, parts in ab.items():
        if set(parts) != {"A", "B"}:
            raise CPTensorError(f"{w_path}: {module} has lora_{next(iter(parts))} only")
        a, b = parts["A"], parts["B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise CPTensorError(
                f"{w_path}: {module} has lora_A {a.shape} and lora_B {b.shape}; expected "
                "(r, in) and (out, r)"
            )
        # GPT-2 Conv1D LoRA still stores A (r, in) and B (out, r) in Linear orientation.
        shapes[module + ".weight"] = (b.shape[0], a.shape[1])
    geo = _update_geometry(shapes, _heads_from_config(cfg), "adapter", cfg)
    pairs: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]] = {}
    matched = []
    for (l, m), (name, _, sl) in geo.keys.items():
        module = name[: -len(".weight")]
        a, b = ab[module]["A"], ab[module]["B"]
        r = int(next((v for k, v in ranks.items() if module.endswith(k)), r_default))
        alpha = float(next((v for k, v in alphas.items() if module.endswith(k)), alpha_default))
        scale = alpha / math.sqrt(r) if rslora else alpha / r
        if sl is not None:
            b = b[sl[0] : sl[1]]
        pairs[(l, MATRICES[m])] = (scale * b, a)
        matched.append((l, MATRICES[m], module))
    notes = [
        f"adapter: {geo.describe()}; {len(pairs)} adapted matrices of "
        f"{geo.n_layers * 4}; scale {'alpha/sqrt(r)' if rslora else 'alpha/r'}"
    ]
    return LowRankDelta(geo.shape, pairs, matched, acfg, notes)


def _finite_number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CPTensorError(f"{what}: expected a finite number, got {value!r}")
    return float(value)


def _pattern(value: Any, what: str, *, integer: bool) -> dict[str, float]:
    """PEFT's ``rank_pattern``/``alpha_pattern``: module-name suffix → rank or alpha."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise CPTensorError(f"{what}: expected an object module name -> value, got {value!r}")
    check = _positive_int if integer else _finite_number
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
    adapter_dir: str | os.PathLike[str], base_config: Any = None
) -> LowRankDelta:
    """An adapter directory, PEFT LoRA or this library's, as a LoRTA tensor of low-rank blocks.

    The format is read from ``adapter_config.json``: a ``peft_type`` field marks a PEFT
    adapter (read by :func:`extract_lora_delta`); ``"format": "cptensor_adapters"`` marks
    one written by :func:`cptensor_adapters.save_adapter`. The latter stores CP factors
    (one CP tensor per layout group) and its weight grid, so the geometry comes from the
    files and no weight of the base model is read. Each attention target's update
    ``ΔW = B A`` is rebuilt from the factors as the adapter computes it in its forward
    pass (rank at most ``r``, scaling ``alpha / r`` included) and kept as that pair: no
    block is formed. The blocks are arranged as in the module docstring whatever the
    adapter's layout and ``head_split``; for a ``"lorta"`` adapter over Q, K, V and O of
    every layer with the default ``head_split``, the result is the adapter's own CP
    tensor (:func:`cptensor_adapters.as_cp`), so its CP rank is at most ``r``.

    Parameters
    ----------
    adapter_dir : path
        Directory with ``adapter_config.json`` and ``adapter_model.safetensors``.
    base_config : dict, transformers config or path, optional
        The base model's config. For a PEFT adapter, as in :func:`extract_lora_delta`.
        For this library's adapters the files give the geometry; the config, when given,
        is checked against it and sets the number of layers (targets on some layers only
        leave the others as zero blocks).

    Returns
    -------
    LowRankDelta
        Shape ``(d, d_h, H, L, 4)``; ``.config`` is the parsed ``adapter_config.json``,
        ``.matched`` rows ``(layer, matrix, target name)``, ``.notes`` what was read and
        what was left out (targets other than Q, K, V, O; ``modules_to_save`` copies).

    Raises
    ------
    FileNotFoundError
        Missing directory or files.
    ValueError
        An unknown format, a file that cannot be read, files that disagree with each
        other, an adapter without attention targets, grouped-query attention (K, V smaller
        than Q, O), or a ``base_config`` that contradicts the adapter's geometry.

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
    from .io import ADAPTER_CONFIG, ADAPTER_WEIGHTS, FORMAT

    d = _adapter_dir(adapter_dir, "adapter_dir")
    cfg_path = _adapter_file(
        d,
        ADAPTER_CONFIG,
        "adapter_dir",
        "a PEFT LoRA adapter (PeftModel.save_pretrained) or a cptensor_adapters adapter "
        "(save_adapter)",
    )
    meta = _read_adapter_json(cfg_path)
    if _is_own_format(meta):
        w_path = _adapter_file(
            d, ADAPTER_WEIGHTS, "adapter_dir", "the two files written by save_adapter"
        )
        return _cp_adapter_delta(cfg_path, w_path, meta, base_config)
    if "peft_type" in meta:
        return extract_lora_delta(d, base_config)
    found = f"'format': {meta['format']!r}" if "format" in meta else f"keys {sorted(meta)[:6]}"
    raise CPTensorError(
        f"{cfg_path}: unknown adapter format ({found}); expected a PEFT adapter config "
        f"(with 'peft_type') or one written by save_adapter ('format': {FORMAT!r})"
    )


def _cp_adapter_delta(
    cfg_path: Path, w_path: Path, meta: Mapping[str, Any], base_config: Any
) -> LowRankDelta:
    """:func:`extract_adapter_delta` for a directory written by ``save_adapter``."""
    from .grid import ATTENTION_ROLES
    from .io import read_saved_adapter
    from .modules import target_factors

    saved = read_saved_adapter(cfg_path.parent)
    config, grid, plans = saved.config, saved.grid, saved.plans

    # geometry of the LoRTA delta tensor, from the grid (checked against base_config)
    attn = [t for t in grid.targets if t.matrix in ATTENTION_ROLES]
    other = [t.name for t in grid.targets if t.matrix not in ATTENTION_ROLES]
    if not attn:
        raise CPTensorError(
            f"{cfg_path}: the adapter targets no attention projection (targets "
            f"{other[:4]}); the delta tensor holds Q, K, V, O"
        )
    H, dh = grid.num_heads, grid.head_dim
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (H, dh)):
        raise CPTensorError(
            f"{cfg_path}: the saved grid's head geometry (num_heads={H!r}, head_dim={dh!r}) "
            "is not two positive integers"
        )
    assert isinstance(H, int) and isinstance(dh, int)
    d = H * dh
    for t in attn:
        if t.heads != H and t.matrix in ("k", "v"):
            raise CPTensorError(
                f"{cfg_path}: the adapter targets {t.name!r} of a model with grouped-query "
                f"attention ({H} query heads, {t.heads} key/value heads); the LoRTA delta "
                "tensor needs equal-sized Q, K, V, O"
            )
        if (t.out_features, t.in_features) != (d, d) or t.heads != H or t.head_dim != dh:
            raise CPTensorError(
                f"{cfg_path}: target {t.name!r} is {t.out_features}×{t.in_features} with "
                f"{t.heads} heads of {t.head_dim}; the LoRTA delta tensor needs every Q, K, V, "
                f"O to be {d}×{d} with {H} heads of {dh}"
            )
    cfg = _load_config(base_config)
    cfg_heads = next((cfg[k] for k in ("num_attention_heads", "n_head") if k in cfg), None)
    cfg_hidden = cfg.get("hidden_size", cfg.get("n_embd"))
    for what, mine, theirs in (("attention heads", H, cfg_heads), ("hidden size", d, cfg_hidden)):
        if theirs is not None and int(theirs) != mine:
            raise CPTensorError(
                f"base_config: {what} {theirs}, but the adapter in {cfg_path.parent} was saved "
                f"for a model with {mine}"
            )
    bad_layer = next((t for t in attn if type(t.layer) is not int or t.layer < 0), None)
    if bad_layer is not None:
        raise CPTensorError(f"{cfg_path}: target {bad_layer.name!r} has layer {bad_layer.layer!r}")
    last = max(t.layer for t in attn)
    if last >= MAX_LAYERS:
        raise CPTensorError(
            f"{cfg_path}: a target is in layer {last}; this reader accepts layers below "
            f"{MAX_LAYERS:,}"
        )
    n_layers = cfg.get("num_hidden_layers", cfg.get("n_layer"))
    if n_layers is not None:
        n_layers = _positive_int(n_layers, "base_config num_hidden_layers", MAX_LAYERS)
    if n_layers is not None and n_layers <= last:
        raise CPTensorError(f"base_config: {n_layers} layers, but the adapter targets layer {last}")
    L = max(int(n_layers or 0), last + 1)

    # the factors (read and checked by the adapter format's own reader)
    groups = [{m: t.double() for m, t in fs.items()} for fs in saved.factors]
    n_saved = len(saved.others)
    dtypes = {str(t.dtype) for fs in saved.factors for t in fs.values()}
    out_dtype = np.float64 if dtypes == {"torch.float64"} else np.float32

    pairs: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]] = {}
    matched = []
    for plan, fs in zip(plans, groups):
        for member in plan.members:
            t = grid[member.target]
            if t.matrix not in ATTENTION_ROLES:
                continue
            a, b = target_factors(
                fs,
                member.index.items(),
                member.split,
                member.heads,
                member.head_dim,
                config.scaling,
            )
            name = t.matrix.upper()
            if (t.layer, name) in pairs:
                raise CPTensorError(f"{cfg_path}: two targets are layer {t.layer}, matrix {name}")
            pairs[(t.layer, name)] = (b.numpy().astype(out_dtype), a.numpy().astype(out_dtype))
            matched.append((t.layer, name, t.name))
    matched.sort(key=lambda row: (row[0], MATRICES.index(row[1])))
    layout = config.resolved_layout
    notes = [
        f"adapter: cptensor_adapters {layout.name!r} adapter {meta.get('name')!r} "
        f"(r={config.r}, scale alpha/r = {config.scaling:g}, {len(plans)} CP tensor(s)) of a "
        f"{grid.architecture}-style model",
        f"attention: hidden {d}, {H} heads of {dh}, {L} layers; {len(pairs)} adapted "
        f"matrices of {4 * L}",
    ]
    if other:
        notes.append(
            f"left out {len(other)} target(s) other than Q, K, V, O (e.g. {other[0]!r}): "
            "the delta tensor holds attention only"
        )
    if n_saved:
        notes.append(f"left out the modules_to_save copies ({n_saved} tensors)")
    return LowRankDelta((d, dh, H, L, len(MATRICES)), pairs, matched, meta, notes)


def _lora_from_adapter_modules(
    geo_shape: tuple[int, ...], pairs: Any, notes: Sequence[str], config: Mapping[str, Any]
) -> LowRankDelta:
    """Build a :class:`LowRankDelta` from ``{(layer, "Q"|"K"|"V"|"O"): (B_scaled, A)}``."""
    matched = [(l, m, f"{m}[{l}]") for (l, m) in pairs]
    return LowRankDelta(geo_shape, dict(pairs), matched, config, notes)


def lowrank_delta_from_weights(
    weights: Mapping[str, Any], n_heads: int, *, rtol: float = 1e-6
) -> LowRankDelta:
    """Dense per-matrix updates ``{module name: ΔW}`` as a :class:`LowRankDelta`.

    Each ``ΔW`` (``nn.Linear`` storage, out × in; torch or NumPy) is factored exactly by
    an SVD truncated at its numerical rank (singular values above ``rtol·σ_max``), so a
    LoRA-style update of rank r becomes a pair of rank r. Names are recognised as in
    :func:`extract_delta` (``….attention.self.query``, ``…self_attn.q_proj``, …; a
    trailing ``.weight`` is optional).

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
    names: dict[str, tuple[int, ...]] = {}
    mats: dict[str, np.ndarray] = {}
    for k, v in weights.items():
        a = v.detach().float().cpu().numpy() if hasattr(v, "detach") else np.asarray(v, float)
        if not np.isfinite(a).all():
            raise CPTensorError(f"weights[{k!r}] holds NaN or infinite values")
        if a.ndim != 2:
            raise CPTensorError(f"weights[{k!r}] has shape {a.shape}; expected a 2-D ΔW (out × in)")
        key = k if k.endswith(".weight") else k + ".weight"
        names[key] = a.shape
        mats[key] = a
    geo = _find_geometry(names, n_heads, "weights")
    pairs = {}
    for (l, m), (name, transposed, sl) in geo.keys.items():
        w = mats[name].T if transposed else mats[name]
        if sl is not None:
            w = w[sl[0] : sl[1]]
        u, s, vt = np.linalg.svd(w.astype(np.float64), full_matrices=False)
        k = max(1, int(np.sum(s > rtol * s[0]))) if s.size and s[0] > 0 else 1
        pairs[(l, MATRICES[m])] = ((u[:, :k] * s[:k]).astype(np.float32), vt[:k].astype(np.float32))
    return _lora_from_adapter_modules(geo.shape, pairs, [geo.describe()], {})


def lora_delta_from_model(
    model: Any, adapter: str = "default", n_heads: int | None = None
) -> LowRankDelta:
    """The low-rank attention updates of an adapted model, as a :class:`LowRankDelta`.

    Reads, for every adapted attention projection, the exact factors of its update
    ``ΔW = B·A`` (scaling included): ``effective_factors(adapter)`` of this library's
    adapter layers (any layout: a ``"lora"`` adapter gives rank-r pairs, a LoRTA adapter
    rank-r pairs too), or ``lora_A``/``lora_B``/``scaling`` of PEFT's LoRA layers.

    Parameters
    ----------
    model : torch.nn.Module
        A model with adapter layers on its attention projections.
    adapter : str
        Adapter name (PEFT and this library both default to ``"default"``).
    n_heads : int, optional
        Number of heads when ``model.config`` does not say.

    Raises
    ------
    ValueError
        When the model has no adapter layer on its attention projections.

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
    ((16, 4, 4, 2, 4), 4)
    """
    cfg = getattr(model, "config", None)
    cfgd = cfg.to_dict() if hasattr(cfg, "to_dict") else {}
    out_in: dict[str, tuple[int, int]] = {}
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
        key = name.removeprefix("base_model.model.") + ".weight"
        factors[key] = ba
        out_in[key] = (ba[0].shape[0], ba[1].shape[1])
    if not factors:
        raise CPTensorError(f"model has no adapter {adapter!r} on any module")
    geo = _update_geometry(out_in, n_heads or _heads_from_config(cfgd), "model", cfgd)
    pairs = {}
    for (l, m), (key, _, sl) in geo.keys.items():
        b, a = factors[key]
        pairs[(l, MATRICES[m])] = (b if sl is None else b[sl[0] : sl[1]], a)
    return _lora_from_adapter_modules(geo.shape, pairs, [geo.describe()], {})


# -- analysis --------------------------------------------------------------------------------
DEFAULT_ENERGIES = (0.5, 0.8, 0.9, 0.95, 0.99)


@dataclass(frozen=True)
class DeltaReport:
    """Result of :func:`analyze_delta`.

    Attributes
    ----------
    shape : tuple of int
        ``(d, d_h, H, L, M)``.
    norm : float
        ``‖ΔW‖`` over all attention matrices.
    sweep : cptensor.analysis.RankSweep
        The CP rank sweep of the delta in the LoRTA layout.
    cp_rows : list of dict
        Per rank: ``rank``, ``parameters`` (``r·(d + d_h + H + L + M)``), ``fit``,
        ``energy`` (captured share of ``‖ΔW‖²``: ``1 − rel_error²``),
        ``svd_energy_same_parameters`` (what per-matrix truncated SVD, i.e. LoRA with the
        best rank per matrix, captures with the same number of parameters; 0 when that
        budget is less than one rank-1 term), ``core_consistency``.
    profile_rows : list of dict
        Per (layer, matrix): numerical, stable and effective rank, norm.
    lora_rows : list of dict
        Per uniform LoRA rank ``r`` (same r for every matrix): ``parameters``, ``energy``.
    energy_table : list of dict
        Per target energy: the fewest trainable parameters that capture it with LoRA at
        one rank for every matrix, with per-matrix truncated SVD at the best rank per
        matrix, and with the CP layout (smallest swept rank reaching it; None if none).
    notes : list of str
    seconds : float

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal((6, 2, 3, 2, 4))
    >>> report = analyze_delta(x, [1, 2], n_starts=1, max_iter=20)
    >>> report.shape, [row["rank"] for row in report.cp_rows]
    ((6, 2, 3, 2, 4), [1, 2])
    """

    shape: tuple[int, ...]
    norm: float
    sweep: Any = field(repr=False)
    cp_rows: list[dict[str, Any]] = field(repr=False)
    profile_rows: list[dict[str, Any]] = field(repr=False)
    lora_rows: list[dict[str, Any]] = field(repr=False)
    energy_table: list[dict[str, Any]] = field(repr=False)
    spectra: dict[str, list[float]] = field(repr=False)
    notes: list[str] = field(repr=False)
    seconds: float = 0.0
    title: str = "fine-tuned delta"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (NaN as None)."""
        return jsonable(
            {
                "title": self.title,
                "shape": list(self.shape),
                "norm": self.norm,
                "layout": "LoRTA (d, d_h, H, L, M), M = Q, K, V, O",
                "cp": self.cp_rows,
                "recommended_rank": self.sweep.recommended_rank,
                "sweep": json.loads(self.sweep.to_json()),
                "per_matrix": self.profile_rows,
                "lora_uniform_rank": self.lora_rows,
                "parameters_for_energy": self.energy_table,
                "spectra": self.spectra,
                "notes": self.notes,
                "seconds": self.seconds,
            }
        )

    def markdown(self) -> str:
        """The report as Markdown (what :meth:`save` writes to ``report.md``)."""
        lines = [
            f"# Tensor rank of the {self.title}",
            "",
            f"Delta arranged as the LoRTA tensor (d, d_h, H, L, M) = {self.shape} "
            f"({math.prod(self.shape):,} entries), ‖ΔW‖ = {self.norm:.4g}.",
            "",
        ]
        lines += [f"- {n}" for n in self.notes] + [""]
        lines += [
            "## CP (LoRTA layout) at each rank",
            "",
            "| rank | parameters | fit | energy captured | per-matrix SVD, same parameters "
            "| core consistency (%) |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for r in self.cp_rows:
            cc = r["core_consistency"]
            cc_s = "n/a" if cc is None or not math.isfinite(cc) else f"{cc:.1f}"
            lines.append(
                f"| {r['rank']} | {r['parameters']:,} | {r['fit']:.4f} | "
                f"{100 * r['energy']:.2f}% | {100 * r['svd_energy_same_parameters']:.2f}% "
                f"| {cc_s} |"
            )
        wins = [r["rank"] for r in self.cp_rows if r["energy"] > r["svd_energy_same_parameters"]]
        if not wins:
            reading = (
                "Reading: at every swept rank, per-matrix truncated SVD (LoRA with the best "
                "rank per matrix) captures more of this delta than a CP in the LoRTA layout "
                "with the same number of parameters: this delta is not low-rank as a tensor "
                "across layers, heads and matrices."
            )
        elif len(wins) == len(self.cp_rows):
            reading = (
                "Reading: at every swept rank, a CP in the LoRTA layout captures more of this "
                "delta than per-matrix truncated SVD with the same number of parameters: the "
                "delta shares structure across layers, heads and matrices."
            )
        else:
            reading = (
                f"Reading: a CP in the LoRTA layout captures more of this delta than "
                f"per-matrix truncated SVD with the same number of parameters at ranks {wins}, "
                "less at the others."
            )
        lines += [
            "",
            reading,
            "",
            f"Recommended CP rank (core consistency, stability and degeneracy rule of "
            f"`rank_sweep`): {self.sweep.recommended_rank}.",
            "",
        ]
        lines += [
            "## Trainable parameters needed to capture a share of the delta's energy",
            "",
            "| energy | LoRA, one rank for all matrices | LoRA, best rank per matrix "
            "(truncated SVD) | CP / LoRTA layout |",
            "|---:|---:|---:|---:|",
        ]
        for e in self.energy_table:

            def fmt(v: Any) -> str:
                return "not reached" if v is None else f"{v:,}"

            cp_rank = "" if e["cp_rank"] is None else f" (r={e['cp_rank']})"
            uni_rank = "" if e["lora_uniform_rank"] is None else f" (r={e['lora_uniform_rank']})"
            lines.append(
                f"| {100 * e['energy']:.0f}% | {fmt(e['lora_uniform_parameters'])}{uni_rank} | "
                f"{fmt(e['lora_svd_parameters'])} | {fmt(e['cp_parameters'])}{cp_rank} |"
            )
        lines += [
            "",
            'CP ranks are those swept; a share that no swept rank reaches says "not reached".',
            "",
            "## Per-matrix rank profile (what LoRA would need per matrix)",
            "",
            "| layer | matrix | numerical rank | stable rank | effective rank | norm |",
            "|---:|:---:|---:|---:|---:|---:|",
        ]
        for p in self.profile_rows:
            lines.append(
                f"| {p['layer']} | {p['matrix']} | {p['numerical']} | "
                f"{p['stable']:.2f} | {p['effective']:.2f} | {p['norm']:.4g} |"
            )
        lines += [
            "",
            "## Figures",
            "",
            "![rank sweep](rank_sweep.png)",
            "",
            "![parameters for energy](energy_vs_parameters.png)",
            "",
            "![rank profile](rank_profile.png)",
            "",
            f"Analysis took {self.seconds:.1f} s.",
            "",
        ]
        return "\n".join(lines)

    def figures(self) -> dict[str, Any]:
        """``{file name: matplotlib Figure}`` for the three PNGs."""
        from matplotlib.figure import Figure

        figs = {"rank_sweep.png": self.sweep.plot(title=f"CP rank sweep of the {self.title}")}
        fig = Figure(figsize=(6.5, 4.5), layout="constrained")
        ax = fig.subplots()
        lu = [(r["parameters"], 100 * r["energy"]) for r in self.lora_rows]
        ax.plot(*zip(*lu), "s-", label="LoRA (same rank r for every matrix)")
        svd = self.spectra.get("_greedy_curve")
        if svd:
            ax.plot(
                svd[0],
                [100 * e for e in svd[1]],
                "-",
                color="grey",
                lw=1,
                label="per-matrix truncated SVD (best ranks)",
            )
        cp = [(r["parameters"], 100 * r["energy"]) for r in self.cp_rows]
        ax.plot(*zip(*cp), "o-", color="C3", label="CP / LoRTA layout (rank r)")
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters")
        ax.set_ylabel("share of ‖ΔW‖² captured (%)")
        ax.set_title(f"Parameters needed to capture the {self.title}")
        ax.grid(alpha=0.3)
        ax.legend()
        figs["energy_vs_parameters.png"] = fig
        fig2 = Figure(figsize=(6.5, 3.8), layout="constrained")
        axs = fig2.subplots(1, 2)
        _, _, _, L, M = self.shape
        for ax2, key, label in (
            (axs[0], "stable", "stable rank"),
            (axs[1], "effective", "effective rank"),
        ):
            grid = np.full((L, M), np.nan)
            for p in self.profile_rows:
                grid[p["layer"], MATRICES.index(p["matrix"])] = p[key]
            im = ax2.imshow(grid, cmap="viridis", aspect="auto")
            ax2.set_xticks(range(M), MATRICES[:M])
            ax2.set_yticks(range(L))
            ax2.set_xlabel("matrix")
            ax2.set_ylabel("layer")
            ax2.set_title(label)
            lo, hi = np.nanmin(grid), np.nanmax(grid)
            for (i, j), v in np.ndenumerate(grid):
                if np.isfinite(v):
                    light = hi > lo and (v - lo) / (hi - lo) > 0.6  # yellow end of viridis
                    color = "k" if light else "w"
                    ax2.text(j, i, f"{v:.1f}", ha="center", va="center", color=color, fontsize=7)
            fig2.colorbar(im, ax=ax2)
        fig2.suptitle("Per-matrix rank of ΔW")
        figs["rank_profile.png"] = fig2
        return figs

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``report.md``, ``report.json`` and the PNG figures to ``directory``, as
        one atomic replacement of the directory (a crash leaves the previous report or
        this one, never a mix; other files in the directory are kept).

        Returns the directory (created if needed).
        """
        from cptensor.files import replaced_directory

        out = Path(directory)
        figures = self.figures()
        with replaced_directory(out) as tmp:
            (tmp / "report.json").write_text(json.dumps(self.to_dict(), indent=2))
            (tmp / "report.md").write_text(self.markdown())
            for name, fig in figures.items():
                fig.savefig(tmp / name, dpi=110)
        return out


def _check_ranks(ranks: Any) -> list[int]:
    try:
        out = sorted({int(r) for r in ranks})
        bad = [r for r in ranks if isinstance(r, bool) or int(r) != r or int(r) < 1]
    except (TypeError, ValueError):
        raise CPTensorTypeError(f"ranks must be positive integers; got {ranks!r}") from None
    if not out or bad:
        raise CPTensorError(
            f"ranks must be a non-empty collection of positive integers; got {ranks!r}"
        )
    return out


def _greedy_energy(greedy: np.ndarray, budget: int, cost: int) -> float:
    """Energy share of the best ``budget // cost`` singular triplets over all matrices."""
    k = min(budget // cost, len(greedy))
    return float(greedy[k - 1]) if k > 0 else 0.0


def analyze_delta(
    delta: Any,
    ranks: Sequence[int] | range = range(1, 9),
    *,
    n_starts: int = 2,
    seed: int = 0,
    max_iter: int = 100,
    tol: float = 1e-6,
    energies: Sequence[float] = DEFAULT_ENERGIES,
    progress: bool = False,
    title: str = "fine-tuned delta",
    callback: Callable[[str], None] | None = None,
) -> DeltaReport:
    """Analyse the tensor rank of a fine-tuned delta in the LoRTA layout.

    Parameters
    ----------
    delta : DeltaTensor, LowRankDelta or a dense array of shape (d, d_h, H, L, M)
        What :func:`extract_delta` or :func:`extract_lora_delta` returns.
    ranks : sequence of int
        CP ranks to sweep (positive).
    n_starts : int
        Fits per rank (see :func:`cptensor.analysis.rank_sweep`).
    seed : int
        Seed of the random starts.
    max_iter, tol : ALS settings of every fit.
    energies : sequence of float
        Shares of ``‖ΔW‖²`` (in (0, 1]) for the "parameters needed" table.
    progress : bool
        Progress bars for the sweep.
    title : str
        Used in the report's headings.
    callback : callable, optional
        Called with a line of text at each stage (the CLI prints them).

    Returns
    -------
    DeltaReport

    Raises
    ------
    ValueError
        Ranks that are not positive integers, or larger than the largest mode; a delta
        that is not 5-way; energies outside (0, 1].

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal((6, 2, 3, 2, 4))
    >>> rep = analyze_delta(x, [1, 2], n_starts=1, max_iter=20)
    >>> [r["rank"] for r in rep.cp_rows], rep.cp_rows[0]["parameters"]
    ([1, 2], 17)
    """
    from cptensor.analysis import matrix_rank_profile, rank_sweep

    t0 = time.perf_counter()
    say = callback or (lambda s: None)
    ranks = _check_ranks(ranks)
    shape = tuple(int(s) for s in delta.shape)
    if len(shape) != 5:
        raise CPTensorError(f"delta must be 5-way (d, d_h, H, L, M); got shape {shape}")
    if ranks[-1] > 4 * max(shape):
        raise CPTensorError(
            f"ranks up to {ranks[-1]} are out of range for shape {shape}; "
            f"expected ranks <= {4 * max(shape)}"
        )
    es = [float(e) for e in energies]
    if any(not 0 < e <= 1 for e in es):
        raise CPTensorError(f"energies must lie in (0, 1]; got {list(energies)}")
    d, dh, H, L, M = shape

    # per-matrix spectra (what LoRA would need)
    say("per-matrix singular values (what LoRA would need for each matrix)")
    if hasattr(delta, "matrices"):
        items = list(delta.matrices()) if isinstance(delta, LowRankDelta) else None
        mats = items if items is not None else delta.matrices()
    else:
        x = np.asarray(delta)
        mats = (
            (l, MATRICES[m] if M == 4 else str(m), _matrix_of(x[..., l, m], m))
            for l in range(L)
            for m in range(M)
        )
    profile_rows, spectra = [], {}
    for l, name, mat in mats:
        prof = matrix_rank_profile([mat])
        s = prof.spectra[0]
        spectra[f"{l}/{name}"] = [float(v) for v in s]
        profile_rows.append(
            {
                "layer": l,
                "matrix": name,
                "numerical": int(prof.numerical[0]),
                "stable": float(prof.stable[0]),
                "effective": float(prof.effective[0]),
                "norm": float(np.sqrt(np.sum(s**2))),
            }
        )
    total = sum(float(np.sum(np.square(v))) for v in spectra.values())
    if total <= 0:
        raise CPTensorError("the delta is zero: base and tuned weights are identical")
    cost = d + H * dh  # parameters of one rank-1 term of one matrix: out + in
    max_r = max(len(v) for v in spectra.values())
    lora_rows = []
    for r in range(1, max_r + 1):
        e = sum(float(np.sum(np.square(v[:r]))) for v in spectra.values()) / total
        lora_rows.append({"rank": r, "parameters": r * cost * len(spectra), "energy": e})
        if e > 0.999999:
            break
    allsq = np.sort(np.concatenate([np.square(np.asarray(v)) for v in spectra.values()]))[::-1]
    greedy = np.cumsum(allsq) / total
    n_pts = min(len(greedy), 4000)
    idx = np.unique(np.geomspace(1, len(greedy), n_pts).astype(int)) - 1
    spectra["_greedy_curve"] = [[int((i + 1) * cost) for i in idx], [float(greedy[i]) for i in idx]]

    say(f"CP rank sweep over ranks {ranks} ({n_starts} start(s) each) of a {shape} tensor")
    sweep = rank_sweep(
        delta,
        ranks,
        n_starts=n_starts,
        seed=seed,
        fit_kwargs={"max_iter": max_iter, "tol": tol},
        progress=progress,
    )
    per = d + dh + H + L + M
    cp_rows = []
    for row in sweep.rows:
        rel = 1.0 - float(row["best_fit"])
        cp_rows.append(
            {
                "rank": int(row["rank"]),
                "parameters": int(row["rank"]) * per,
                "fit": float(row["best_fit"]),
                "energy": max(0.0, 1.0 - rel * rel),
                "core_consistency": float(row["core_consistency"]),
                # per-matrix truncated SVD (best ranks) with the same parameter budget
                "svd_energy_same_parameters": _greedy_energy(greedy, int(row["rank"]) * per, cost),
            }
        )
    table = []
    for e in es:
        uni = next((r for r in lora_rows if r["energy"] >= e - 1e-12), None)
        k = int(np.searchsorted(greedy, e - 1e-12)) + 1
        cp = next((r for r in cp_rows if r["energy"] >= e - 1e-12), None)
        table.append(
            {
                "energy": e,
                "lora_uniform_rank": None if uni is None else uni["rank"],
                "lora_uniform_parameters": None if uni is None else uni["parameters"],
                "lora_svd_parameters": int(min(k, len(greedy)) * cost),
                "cp_rank": None if cp is None else cp["rank"],
                "cp_parameters": None if cp is None else cp["parameters"],
            }
        )
    notes = list(getattr(delta, "notes", ()))
    return DeltaReport(
        shape,
        math.sqrt(total),
        sweep,
        cp_rows,
        profile_rows,
        lora_rows,
        table,
        spectra,
        notes,
        time.perf_counter() - t0,
        title,
    )

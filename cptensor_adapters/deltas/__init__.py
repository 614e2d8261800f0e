"""Fine-tuned weight deltas as the CP tensors of an adapter, and their tensor-rank analysis.

A delta ``ΔW`` (``tuned − base``, or an adapter's ``B·A`` per weight) is laid out by the
adapters' own geometry: the :class:`~cptensor_adapters.grid.WeightGrid` of the updated
weights (built from tensor names, shapes and ``config.json``; no model is instantiated),
split into the CP tensors of a :class:`~cptensor_adapters.layout.Layout` by
:func:`~cptensor_adapters.layout.plan_groups`, each matrix placed in its tensor in the
orientation of the adapter's forward pass (:func:`~cptensor_adapters.layout.target_block`).
Under ``"lorta"`` a model with Q, K, V, O of one size gives the paper's tensor
``(d, d_h, H, L, 4)``: mode ``d`` the side the heads do not split, ``d_h × H`` the split
side (head ``h`` owning rows of Q, K, V, columns of O), then layer and matrix. A model
with grouped-query attention gives two tensors, Q with O over the ``H`` query heads and
K with V over the ``H_kv`` key/value heads, exactly as its LoRTA adapter holds them. A
rank-``r`` CP of every tensor is an adapter of rank ``r``; a per-matrix truncated SVD
is LoRA.

The package:

* :mod:`~cptensor_adapters.deltas.sources` — weights of models and checkpoint
  directories (through the validating safetensors reader), config and JSON files;
* :mod:`~cptensor_adapters.deltas.tensors` — :class:`Delta` and its two kinds,
  :class:`DeltaTensor` (read lazily from two sources) and :class:`LowRankDelta` (pairs
  ``B·A``, never formed);
* :mod:`~cptensor_adapters.deltas.extract` — :func:`extract_delta` of two models or
  checkpoints, :func:`lowrank_delta_from_weights`, :func:`lora_delta_from_model`;
* :mod:`~cptensor_adapters.deltas.adapters` — adapter directories,
  :func:`extract_adapter_delta` (PEFT LoRA or this library's) and
  :func:`extract_lora_delta`;
* :mod:`~cptensor_adapters.deltas.report` — :func:`analyze_delta`: rank sweep, per-matrix
  rank profile, "parameters needed to capture X % of the delta's energy" for LoRA and for
  the CP layout, core consistency; :meth:`DeltaReport.save` writes ``report.md``,
  ``report.json`` and PNG figures;
* :mod:`~cptensor_adapters.deltas.verdict` — the report's bottom line, :class:`Verdict`
  (is the delta low tensor rank, what to train), and the definitions of its columns.

Examples
--------
>>> import torch
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

from .adapters import extract_adapter_delta, extract_lora_delta
from .extract import extract_delta, lora_delta_from_model, lowrank_delta_from_weights
from .report import (
    DEFAULT_ENERGIES_PCT,
    CPRow,
    DeltaReport,
    EnergyRow,
    LoraRow,
    MatrixRow,
    analyze_delta,
)
from .sources import MAX_LAYERS
from .tensors import Delta, DeltaTensor, LowRankDelta
from .verdict import LOW_RANK_ENERGY_PCT, LOW_RANK_PARAMETER_RATIO, Verdict

__all__ = [
    "DEFAULT_ENERGIES_PCT",
    "LOW_RANK_ENERGY_PCT",
    "LOW_RANK_PARAMETER_RATIO",
    "MAX_LAYERS",
    "CPRow",
    "Delta",
    "DeltaReport",
    "DeltaTensor",
    "EnergyRow",
    "LoraRow",
    "LowRankDelta",
    "MatrixRow",
    "Verdict",
    "analyze_delta",
    "extract_adapter_delta",
    "extract_delta",
    "extract_lora_delta",
    "lora_delta_from_model",
    "lowrank_delta_from_weights",
]

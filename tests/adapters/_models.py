"""Tiny models built offline from configs (shared by the fixtures and the DDP workers)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

ARCHS = ("bert", "gpt2", "llama")
LAYOUTS = ("lorta", "lora", "layer_shared")
VOCAB = 100


def bert_config(**overrides: Any) -> Any:
    """The tiny BERT geometry (hidden 32, 2 layers, 4 heads) as a ``BertConfig``, with
    ``overrides`` (e.g. ``num_labels=3``, ``hidden_size=48``)."""
    import transformers

    sizes = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    return transformers.BertConfig(**(sizes | {"vocab_size": VOCAB} | overrides))


def gpt2_config(**overrides: Any) -> Any:
    """The tiny GPT-2 geometry (hidden 32, 2 layers, 4 heads) as a ``GPT2Config``."""
    import transformers

    sizes = dict(n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2Config(**(sizes | {"vocab_size": VOCAB} | overrides))


def llama_config(**overrides: Any) -> Any:
    """The tiny Llama geometry (hidden 32, 2 layers, 4 heads, 2 key/value heads: GQA) as a
    ``LlamaConfig``."""
    import transformers

    sizes = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    return transformers.LlamaConfig(**(sizes | {"vocab_size": VOCAB} | overrides))


def build_tiny(arch: str, seed: int = 0) -> nn.Module:
    """A tiny random model (2 layers, hidden 32, 4 heads; Llama with 2 KV heads), eval mode."""
    import transformers

    torch.manual_seed(seed)
    if arch == "bert":
        model = transformers.BertModel(
            bert_config(max_position_embeddings=64), add_pooling_layer=False
        )
    elif arch == "gpt2":
        model = transformers.GPT2Model(gpt2_config())
    elif arch == "llama":
        model = transformers.LlamaModel(llama_config())
    else:  # pragma: no cover
        raise ValueError(arch)
    return model.eval()

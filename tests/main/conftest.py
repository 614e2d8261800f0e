"""Fixtures for the main-job tests: tiny checkpoints built from configs, MiniLM adapters."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[2]

# What DeltaReport.save writes (the demo adds training_loss.png).
REPORT_FILES = (
    "report.md",
    "report.json",
    "rank_sweep.png",
    "energy_vs_parameters.png",
    "rank_profile.png",
)


def glue_dir() -> Path | None:
    """SST-2 from ``$CPTENSOR_GLUE_DIR`` or ``../shared/data/glue/SST-2`` beside the repo."""
    env = os.environ.get("CPTENSOR_GLUE_DIR")
    p = Path(env) if env else REPO.parent / "shared" / "data" / "glue" / "SST-2"
    return p if (p / "train.tsv").is_file() and (p / "dev.tsv").is_file() else None


needs_glue = pytest.mark.skipif(
    glue_dir() is None,
    reason="GLUE SST-2 not found: set CPTENSOR_GLUE_DIR or put it at ../shared/data/glue/SST-2",
)


def tiny_bert_config(layers: int = 2):
    from transformers import BertConfig

    return BertConfig(
        hidden_size=16,
        num_attention_heads=4,
        num_hidden_layers=layers,
        intermediate_size=32,
        vocab_size=60,
        max_position_embeddings=32,
    )


@pytest.fixture(scope="session")
def tiny_bert_pair(tmp_path_factory):
    """(base_dir, tuned_dir, base_model, tuned_model): a BertModel saved without prefix and
    a BertForSequenceClassification (keys under ``bert.``) with perturbed attention."""
    import torch
    from transformers import BertForSequenceClassification, BertModel

    torch.manual_seed(0)
    cfg = tiny_bert_config()
    base = BertModel(cfg, add_pooling_layer=True)
    tuned = BertForSequenceClassification(cfg)
    tuned.bert.load_state_dict(base.state_dict())
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in tuned.bert.encoder.layer:
            for lin in (
                layer.attention.self.query,
                layer.attention.self.key,
                layer.attention.self.value,
                layer.attention.output.dense,
            ):
                lin.weight.add_(0.1 * torch.randn(lin.weight.shape, generator=g))
    root = tmp_path_factory.mktemp("tiny_bert")
    base.save_pretrained(root / "base")
    tuned.save_pretrained(root / "tuned")
    return root / "base", root / "tuned", base, tuned


@pytest.fixture(scope="session")
def minilm_lora(tmp_path_factory):
    """A real MiniLM with a PEFT LoRA r=4 on Q,K,V,O (non-zero B), saved both as an adapter
    and merged as a full checkpoint: (adapter_dir, merged_dir, base_dir)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from cptensor_adapters.train import load_minilm, minilm_path

    model, _ = load_minilm(2, seed=0)
    torch.manual_seed(0)
    pm = get_peft_model(
        model,
        LoraConfig(
            r=4,
            lora_alpha=8,
            init_lora_weights=False,
            target_modules=["query", "key", "value", "attention.output.dense"],
        ),
    )
    root = tmp_path_factory.mktemp("minilm")
    pm.save_pretrained(root / "adapter")
    pm.merge_and_unload().save_pretrained(root / "merged")
    return root / "adapter", root / "merged", Path(minilm_path())

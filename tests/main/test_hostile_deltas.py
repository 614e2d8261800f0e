"""The delta readers trust nothing in their files: non-finite or non-floating weights,
garbage configs, crafted PEFT fields and declared sizes give a ValueError naming the file
and the field, before any large allocation."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from cptensor_adapters import AdapterConfig, attach, save_adapter
from cptensor_adapters.cli import main
from cptensor_adapters.deltas import extract_adapter_delta, extract_delta, extract_lora_delta

from .conftest import tiny_bert_config


def _rewrite(path, change):
    tensors = load_file(str(path))
    save_file({k: change(k, v) for k, v in tensors.items()}, str(path))


def test_a_checkpoint_with_inf_is_refused(tiny_bert_pair, tmp_path):
    base, tuned, *_ = tiny_bert_pair
    bad = tmp_path / "tuned"
    shutil.copytree(tuned, bad)
    (st,) = bad.glob("*.safetensors")
    _rewrite(st, lambda k, v: v.fill_(float("inf")) if k.endswith("self.query.weight") else v)
    delta = extract_delta(base, bad)
    with pytest.raises(ValueError, match=r"self\.query\.weight.*NaN or inf"):
        delta.to_dense()


@pytest.mark.parametrize(
    "config, match",
    [
        ("{oops", "config.json is not valid JSON"),
        ("[1, 2, 3]", "holds a JSON list"),
        (json.dumps({"num_attention_heads": "four"}), "num_attention_heads: expected an int"),
        (json.dumps({"num_attention_heads": -4}), "num_attention_heads: expected an int"),
    ],
)
def test_a_bad_checkpoint_config_names_the_file_and_field(tiny_bert_pair, tmp_path, config, match):
    base, tuned, *_ = tiny_bert_pair
    bad = tmp_path / "base"
    shutil.copytree(base, bad)
    (bad / "config.json").write_text(config)
    with pytest.raises(ValueError, match=match):
        extract_delta(bad, tuned)


@pytest.fixture
def peft_dir(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import BertModel

    torch.manual_seed(0)
    model = get_peft_model(
        BertModel(tiny_bert_config()), LoraConfig(r=2, target_modules=["query", "value"])
    )
    model.save_pretrained(tmp_path / "peft")
    return tmp_path / "peft"


def _edit(d, **fields):
    cfg = json.loads((d / "adapter_config.json").read_text())
    cfg.update(fields)
    (d / "adapter_config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"r": 0}, "r: expected an integer"),
        ({"r": "8"}, "r: expected an integer"),
        ({"lora_alpha": float("nan")}, "lora_alpha: expected a finite number"),
        ({"rank_pattern": "oops"}, "rank_pattern: expected an object"),
        ({"rank_pattern": {"query": 0}}, r"rank_pattern\['query'\]"),
    ],
)
def test_crafted_peft_fields(peft_dir, fields, match):
    _edit(peft_dir, **fields)
    with pytest.raises(ValueError, match=match):
        extract_lora_delta(peft_dir, tiny_bert_config())


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda k, v: v.flatten() if "lora_A" in k else v, "expected \\(r, in\\)"),
        (lambda k, v: v.fill_(float("nan")) if "lora_B" in k else v, "NaN or infinite"),
        (lambda k, v: v.to(torch.int32), "expected a floating type"),
    ],
)
def test_crafted_peft_tensors(peft_dir, change, match):
    _rewrite(peft_dir / "adapter_model.safetensors", change)
    with pytest.raises(ValueError, match=match):
        extract_lora_delta(peft_dir, tiny_bert_config())


def test_a_base_config_of_the_wrong_kind(peft_dir):
    with pytest.raises(ValueError, match="base_config: expected a config dict"):
        extract_lora_delta(peft_dir, [1, 2])
    (peft_dir / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"list\.json holds a JSON list"):
        extract_lora_delta(peft_dir, peft_dir / "list.json")


@pytest.fixture
def own_dir(tmp_path):
    from transformers import BertModel

    model = attach(BertModel(tiny_bert_config()), AdapterConfig(r=2, init="random"))
    return save_adapter(model, tmp_path / "own")


def test_a_declared_layer_of_ten_million_is_refused(own_dir):
    meta = json.loads((own_dir / "adapter_config.json").read_text())
    for t in meta["grid"]["targets"]:  # every target of layer 1 moves: the CP tensor's shape
        if t["layer"] == 1:  # stays what the file holds, only the declared index is huge
            t["layer"] = 10_000_000
    meta.pop("groups")
    (own_dir / "adapter_config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="layer 10000000; this reader accepts layers below"):
        extract_adapter_delta(own_dir)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda k, v: v.fill_(float("nan")) if k.endswith(".out") else v, "NaN or infinite"),
        (lambda k, v: v.to(torch.int64) if k.startswith("groups.") else v, "floating type"),
    ],
)
def test_bad_factors_of_our_own_format(own_dir, change, match):
    _rewrite(own_dir / "adapter_model.safetensors", change)
    with pytest.raises(ValueError, match=match):
        extract_adapter_delta(own_dir)


def test_heads_must_be_positive(tiny_bert_pair, tmp_path, capsys):
    base, tuned, *_ = tiny_bert_pair
    for heads in ("-4", "0"):
        argv = ["analyze", str(base), str(tuned), "--heads", heads, "--out", str(tmp_path)]
        assert main(argv) == 2
        assert "--heads must be a positive integer" in capsys.readouterr().err


def test_fifos_never_block_a_reader(tmp_path, own_dir, tiny_bert_pair, capsys):
    """Every file-reading entry point, given a FIFO, answers within a time bound."""
    import os
    import signal

    from cptensor import BlockTensor

    def expire(signum, frame):
        raise TimeoutError("a reader blocked on a FIFO")

    fifo = tmp_path / "x.safetensors"
    os.mkfifo(fifo)
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, 20)
    try:
        with pytest.raises(ValueError, match="not a regular file"):
            BlockTensor.from_safetensors(fifo, lambda k: "a", (2, 2), (0,))
        (own_dir / "adapter_config.json").unlink()
        os.mkfifo(own_dir / "adapter_config.json")
        with pytest.raises((ValueError, FileNotFoundError)):
            extract_adapter_delta(own_dir)
        ckpt = tmp_path / "ckpt"
        ckpt.mkdir()
        os.mkfifo(ckpt / "model.safetensors")
        with pytest.raises(ValueError, match="not a regular file"):
            extract_delta(ckpt, tiny_bert_pair[1])
        npy = tmp_path / "x.npy"
        os.mkfifo(npy)
        assert main(["fit", str(npy), "--rank", "1"]) == 2
        assert "not a regular file" in capsys.readouterr().err
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_non_finite_dense_updates_are_named():
    import numpy as np

    from cptensor_adapters.deltas import lowrank_delta_from_weights

    w = {
        f"encoder.layer.0.attention.{n}": np.full((16, 16), np.nan)
        for n in ("self.query", "self.key", "self.value", "output.dense")
    }
    with pytest.raises(ValueError, match="NaN or infinite"):  # was "SVD did not converge"
        lowrank_delta_from_weights(w, n_heads=4)

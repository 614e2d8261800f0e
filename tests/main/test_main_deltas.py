"""Delta extraction and analysis on tiny models built from configs and on a real MiniLM."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cptensor_adapters.deltas import (
    DeltaTensor,
    LowRankDelta,
    analyze_delta,
    extract_delta,
    extract_lora_delta,
    lowrank_delta_from_weights,
)

from .conftest import REPORT_FILES


def _dense_lorta(base, tuned, prefix_t=""):
    """The LoRTA tensor of tuned − base computed directly from state dicts (the oracle)."""
    sb, st = base.state_dict(), tuned.state_dict()
    cfg = base.config
    d, H = cfg.hidden_size, cfg.num_attention_heads
    dh = d // H
    L = cfg.num_hidden_layers
    x = np.zeros((d, dh, H, L, 4))
    names = [
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
    ]
    for l in range(L):
        for m, n in enumerate(names):
            k = f"encoder.layer.{l}.{n}.weight"
            dw = (st[prefix_t + k] - sb[k]).double().numpy()
            for h in range(H):
                for j in range(dh):
                    if m < 3:
                        x[:, j, h, l, m] = dw[h * dh + j, :]
                    else:
                        x[:, j, h, l, m] = dw[:, h * dh + j]
    return x


def test_checkpoint_dirs_with_prefix_difference(tiny_bert_pair):
    base_dir, tuned_dir, base, tuned = tiny_bert_pair
    delta = extract_delta(base_dir, tuned_dir)
    assert isinstance(delta, DeltaTensor)
    assert delta.shape == (16, 4, 4, 2, 4)
    assert delta.prefixes == {"base": "", "tuned": "bert."}
    assert any("prefixes differ" in n for n in delta.notes)
    assert delta.matched[0][2:] == (
        "encoder.layer.0.attention.self.query.weight",
        "bert.encoder.layer.0.attention.self.query.weight",
    )
    oracle = _dense_lorta(base, tuned, "bert.")
    np.testing.assert_allclose(delta.to_dense(), oracle, atol=1e-6)
    np.testing.assert_allclose(delta.norm(), np.linalg.norm(oracle), rtol=1e-6)


def test_models_and_dirs_agree(tiny_bert_pair):
    base_dir, tuned_dir, base, tuned = tiny_bert_pair
    a = extract_delta(base, tuned).to_dense()
    b = extract_delta(base_dir, tuned_dir).to_dense()
    np.testing.assert_allclose(a, b, atol=1e-7)


def test_matrices_iterator_inverts_layout(tiny_bert_pair):
    _, _, base, tuned = tiny_bert_pair
    delta = extract_delta(base, tuned)
    l, name, dw = next(iter(delta.matrices()))
    assert (l, name) == (0, "Q")
    q = "encoder.layer.0.attention.self.query.weight"
    want = (tuned.state_dict()["bert." + q] - base.state_dict()[q]).numpy()
    np.testing.assert_allclose(dw, want, atol=1e-7)


def test_different_architectures_refused(tmp_path, tiny_bert_pair):
    from transformers import BertModel

    from .conftest import tiny_bert_config

    base_dir = tiny_bert_pair[0]
    BertModel(tiny_bert_config(layers=3)).save_pretrained(tmp_path / "three")
    with pytest.raises(ValueError, match=r"different architectures.*num_layers: base 2, tuned 3"):
        extract_delta(base_dir, tmp_path / "three")


def test_bad_inputs(tmp_path, tiny_bert_pair):
    base_dir = tiny_bert_pair[0]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        extract_delta(base_dir, tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no \*\.safetensors"):
        extract_delta(base_dir, tmp_path / "empty")
    with pytest.raises(ValueError, match="unknown layout 'tucker'"):
        extract_delta(base_dir, base_dir, layout="tucker")
    with pytest.raises(TypeError, match="must be a model"):
        extract_delta(base_dir, 3.0)


def test_gpt2_fused_qkv():
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    cfg = GPT2Config(n_embd=16, n_head=4, n_layer=2, vocab_size=50, n_positions=16)
    base, tuned = GPT2Model(cfg), GPT2Model(cfg)
    tuned.load_state_dict(base.state_dict())
    with torch.no_grad():
        tuned.h[1].attn.c_attn.weight[:, 16:32].add_(1.0)  # K of layer 1 (Conv1D: in × out)
    delta = extract_delta(base, tuned)
    x = delta.to_dense()
    assert x.shape == (16, 4, 4, 2, 4)
    assert np.allclose(x[..., 1, 1], 1.0) and np.count_nonzero(x) == 16 * 16


def _gqa_oracle(base, tuned, matrices, heads):
    """The LoRTA tensor of ``tuned − base`` over ``matrices`` of a Llama model, by loops
    (``T[i, j, h] = ΔW[h·d_h + j, i]`` for q, k, v; ``ΔW[i, h·d_h + j]`` for o)."""
    sb, st = base.state_dict(), tuned.state_dict()
    cfg = base.config
    d, dh, L = cfg.hidden_size, cfg.hidden_size // cfg.num_attention_heads, cfg.num_hidden_layers
    x = np.zeros((d, dh, heads, L, len(matrices)))
    for l in range(L):
        for m, name in enumerate(matrices):
            k = f"layers.{l}.self_attn.{name}_proj.weight"
            dw = (st[k] - sb[k]).double().numpy()
            for h in range(heads):
                for j in range(dh):
                    if name == "o":
                        x[:, j, h, l, m] = dw[:, h * dh + j]
                    else:
                        x[:, j, h, l, m] = dw[h * dh + j, :]
    return x


def test_llama_mha_and_gqa():
    from transformers import LlamaConfig, LlamaModel

    kw = dict(
        hidden_size=16,
        num_attention_heads=4,
        num_hidden_layers=2,
        intermediate_size=32,
        vocab_size=50,
    )
    torch.manual_seed(0)
    m = LlamaModel(LlamaConfig(**kw, num_key_value_heads=4))
    t = LlamaModel(LlamaConfig(**kw, num_key_value_heads=4))
    d = extract_delta(m, t)
    assert d.shape == (16, 4, 4, 2, 4) and d.grid.architecture == "llama"
    np.testing.assert_allclose(d.to_dense(), _gqa_oracle(m, t, "qkvo", 4), rtol=1e-6, atol=1e-6)
    # grouped-query attention: Q with O over 4 heads, K with V over 2, as the adapter holds them
    g = LlamaModel(LlamaConfig(**kw, num_key_value_heads=2))
    g2 = LlamaModel(LlamaConfig(**kw, num_key_value_heads=2))
    d = extract_delta(g, g2)
    assert [tuple(p.shape) for p in d.plans] == [(16, 4, 4, 2, 2), (16, 4, 2, 2, 2)]
    assert "grouped-query attention" in " ".join(d.notes)
    for group, (mats, heads) in zip(d.groups, (("qo", 4), ("kv", 2))):
        np.testing.assert_allclose(
            group.to_dense(), _gqa_oracle(g, g2, mats, heads), rtol=1e-6, atol=1e-6
        )
    with pytest.raises(ValueError, match="this delta is 2 CP tensors"):
        _ = d.shape
    # the analysis sweeps both tensors; the rank-r fit is that of every tensor at rank r
    rep = analyze_delta(d, [1, 2], n_starts=1, max_iter=30)
    assert rep.groups == ("Q, O", "K, V") and len(rep.sweeps) == 2
    assert [r.parameters for r in rep.cp_rows] == [1 * 54, 2 * 54]  # (16+4+4+2+2)+(16+4+2+2+2)
    for row in rep.cp_rows:
        n = [np.linalg.norm(x.to_dense()) for x in d.groups]
        res = sum(((1 - f) * v) ** 2 for f, v in zip(row.group_fits, n))
        assert row.energy_captured_pct == pytest.approx(100 * (1 - res / sum(v * v for v in n)))


def test_real_minilm_lora_delta_matches_merged_checkpoint(minilm_lora):
    adapter_dir, merged_dir, base_dir = minilm_lora
    lr = extract_lora_delta(adapter_dir, base_dir)
    assert isinstance(lr, LowRankDelta)
    assert lr.shape == (384, 32, 12, 6, 4) and len(lr.matched) == 24
    dense = extract_delta(base_dir, merged_dir)
    assert dense.prefixes["tuned"] == "bert."
    np.testing.assert_allclose(lr.norm(), dense.norm(), rtol=1e-5)
    # compare one block and the MTTKRPs without densifying the whole tensor twice
    rng = np.random.default_rng(0)
    fs = [rng.standard_normal((n, 3)).astype(np.float32) for n in lr.shape]
    (x_lr,), (x_dense,) = lr.groups, dense.groups
    for mode in (0, 2, 4):
        np.testing.assert_allclose(
            x_lr.mttkrp(fs, mode), x_dense.mttkrp(fs, mode), rtol=2e-3, atol=1e-3
        )


def test_lora_adapter_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        extract_lora_delta(tmp_path / "nope")
    (tmp_path / "a").mkdir()
    with pytest.raises(FileNotFoundError, match=r"lacks adapter_config\.json"):
        extract_lora_delta(tmp_path / "a")


def test_lowrank_from_weights_is_exact():
    rng = np.random.default_rng(1)
    names = ["self.query", "self.key", "self.value", "output.dense"]
    w = {
        f"bert.encoder.layer.{l}.attention.{n}": rng.standard_normal((8, 3))
        @ rng.standard_normal((3, 8))
        for l in range(2)
        for n in names
    }
    lr = lowrank_delta_from_weights(w, n_heads=2)
    got = dict(((l, m), b @ a.T) for l, m, (b, a) in lr.matrices())
    for l in range(2):
        for m, n in zip("QKVO", names):
            np.testing.assert_allclose(
                got[(l, m)], w[f"bert.encoder.layer.{l}.attention.{n}"], atol=1e-5
            )


def test_analyze_delta_report(tmp_path, tiny_bert_pair):
    base_dir, tuned_dir, _, _ = tiny_bert_pair
    delta = extract_delta(base_dir, tuned_dir)
    rep = analyze_delta(delta, [1, 2, 3], n_starts=1, max_iter=30)
    fits = [r.fit for r in rep.cp_rows]
    assert fits == sorted(fits)  # a larger rank never fits worse
    assert [r.parameters for r in rep.cp_rows] == [30, 60, 90]  # r·(16+4+4+2+4)
    assert len(rep.profile_rows) == 8
    # uniform LoRA reaches 100% at full rank 16 of these random 16×16 deltas
    assert rep.lora_rows[-1].energy_captured_pct == pytest.approx(100.0)
    e = rep.energy_table[-1]
    assert e.lora_svd_parameters <= e.lora_uniform_parameters
    rep.save(tmp_path)
    for f in REPORT_FILES:
        assert (tmp_path / f).stat().st_size > 0
    doc = json.loads((tmp_path / "report.json").read_text())
    assert doc["shape"] == [16, 4, 4, 2, 4] and len(doc["cp"]) == 3
    assert "prefixes differ" in (tmp_path / "report.md").read_text()


def test_analyze_delta_bad_input():
    x = np.ones((4, 2, 2, 1, 4))
    with pytest.raises(ValueError, match="positive integers"):
        analyze_delta(x, [0, 1])
    with pytest.raises(ValueError, match="5-way"):
        analyze_delta(np.ones((3, 3)), [1])
    with pytest.raises(ValueError, match="out of range"):
        analyze_delta(x, [1000])
    with pytest.raises(ValueError, match=r"energies_pct must lie in \(0, 100\]"):
        analyze_delta(x, [1], energies_pct=[150])
    with pytest.raises(TypeError, match="energies_pct"):
        analyze_delta(x, [1], energies_pct=["most"])


def test_lora_delta_from_peft_model_matches_merge():
    from peft import LoraConfig, get_peft_model
    from transformers import BertModel

    from cptensor_adapters.deltas import lora_delta_from_model

    from .conftest import tiny_bert_config

    torch.manual_seed(0)
    base = BertModel(tiny_bert_config())
    ref = BertModel(tiny_bert_config())
    ref.load_state_dict(base.state_dict())
    pm = get_peft_model(
        base,
        LoraConfig(r=2, lora_alpha=4, init_lora_weights=False, target_modules=["query", "value"]),
    )
    lr = lora_delta_from_model(pm)
    assert lr.shape == (16, 4, 4, 2, 2) and len(lr.pairs) == 4  # the adapter's Q and V
    merged = pm.merge_and_unload()
    dense = extract_delta(ref, merged).to_dense()
    np.testing.assert_allclose(lr.to_dense(), dense[..., [0, 2]], atol=1e-6)
    assert np.count_nonzero(dense[..., [1, 3]]) == 0
    qv = extract_delta(ref, merged, targets=["q", "v"])
    np.testing.assert_allclose(lr.to_dense(), qv.to_dense(), atol=1e-6)


def test_grid_and_layout_objects_accepted(tiny_bert_pair):
    from cptensor_adapters import Layout, WeightGrid

    _, _, base, tuned = tiny_bert_pair
    d = extract_delta(base, tuned, grid=WeightGrid.from_model(base), layout=Layout.resolve("lorta"))
    assert d.shape == (16, 4, 4, 2, 4)
    # the "lora" layout: one matrix per CP tensor, each exactly tuned − base
    d = extract_delta(base, tuned, layout=Layout.resolve("lora"))
    assert len(d.groups) == 8 and all(tuple(p.shape) == (16, 16) for p in d.plans)
    sb, st = base.state_dict(), tuned.state_dict()
    keys = {(row[0], row[1]): row[2:] for row in d.matched}
    for plan, x in zip(d.plans, d.groups):
        (member,) = plan.members
        t = d.grid[member.target]
        kb, kt = keys[(t.layer, t.matrix.upper())]
        np.testing.assert_allclose(np.asarray(x), (st[kt] - sb[kb]).numpy(), atol=1e-6)

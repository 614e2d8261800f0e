"""Reading a saved adapter's delta (``extract_adapter_delta``) agrees with the dense truth."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import cptensor_adapters as cpa
from cptensor_adapters.deltas import LowRankDelta, extract_adapter_delta, extract_lora_delta

MATS = ("q", "k", "v", "o")


def lorta_oracle(model, shape, name: str = "default") -> np.ndarray:
    """``delta_weights`` arranged as the LoRTA delta tensor (d, d_h, H, L, 4), by loops:
    ``T[i, j, h] = ΔW[h·d_h + j, i]`` for Q, K, V and ``ΔW[i, h·d_h + j]`` for O."""
    dh, H = shape[1:3]
    x = np.zeros(shape)
    grid = model.cp_adapters.adapters[name].grid
    for tname, dw in cpa.delta_weights(model, name).items():
        t = grid[tname]
        if t.matrix not in MATS:
            continue
        w = dw.double().numpy()
        m = MATS.index(t.matrix)
        for h in range(H):
            for j in range(dh):
                x[:, j, h, t.layer, m] = w[h * dh + j, :] if m < 3 else w[:, h * dh + j]
    return x


def group_oracles(model, plans, name: str = "default") -> list[np.ndarray]:
    """``delta_weights`` placed in each CP tensor of ``plans`` by loops: a head-split
    target's block is ``T[i, j, h] = ΔW[h·d_h + j, i]`` when its heads split the output,
    ``ΔW[i, h·d_h + j]`` when they split the input; other modes index layer and matrix."""
    dws = cpa.delta_weights(model, name)
    out = []
    for plan in plans:
        x = np.zeros(plan.shape)
        for member in plan.members:
            w = dws[member.target].double().numpy()  # keyed by target: fused slices apart
            if member.split is None:
                block = w
            else:
                dh, heads = member.head_dim, member.heads
                block = np.zeros((w.size // (dh * heads), dh, heads))
                for h in range(heads):
                    for j in range(dh):
                        col = w[h * dh + j, :] if member.split == "out" else w[:, h * dh + j]
                        block[:, j, h] = col
            idx = tuple(
                slice(None) if mode in ("out", "in", "head") else member.index[mode]
                for mode in plan.modes
            )
            x[idx] = block
        out.append(x)
    return out


def _saved(model, path):
    cpa.save_adapter(model, path)
    return path


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_blocks_equal_delta_weights(tiny, arch, layout, tmp_path):
    """By default the delta is laid out as the adapter's own CP tensors, whatever the
    layout and architecture (GPT-2's fused c_attn included)."""
    cfg = cpa.AdapterConfig(r=3, alpha=6, layout=layout, init="random", seed=4)
    m = cpa.attach(tiny(arch), cfg)
    path = _saved(m, tmp_path)
    delta = extract_adapter_delta(path)
    assert isinstance(delta, LowRankDelta)
    own = m.cp_adapters.adapters["default"].plans
    assert [tuple(p.shape) for p in delta.plans] == [tuple(p.shape) for p in own]
    assert delta.max_block_rank <= 3  # each ΔW kept as its rank-r factors
    assert len(delta.matched) == 8 and delta.config["format"] == "cptensor_adapters"
    oracles = group_oracles(m, delta.plans)
    assert max(np.abs(x).max() for x in oracles) > 0.01  # a non-identity init
    for x, oracle in zip(delta.groups, oracles):
        np.testing.assert_allclose(x.to_dense(), oracle, rtol=1e-5, atol=1e-6)
    # the pairs themselves are the per-target updates, in Linear orientation
    dw = cpa.delta_weights(m)
    for layer, mat, target in delta.matched:
        b, a = delta.pairs[(layer, mat)]
        np.testing.assert_allclose(b @ a, dw[target].numpy(), rtol=1e-5, atol=1e-6)
    # laid out as "lorta" instead: the paper's tensor of the same updates
    lorta = extract_adapter_delta(path, layout="lorta")
    assert lorta.shape == (32, 8, 4, 2, 4)
    np.testing.assert_allclose(lorta.to_dense(), lorta_oracle(m, lorta.shape), rtol=1e-5, atol=1e-6)


def test_lorta_adapter_is_its_own_cp_tensor(tiny, tmp_path):
    from cptensor import reconstruct

    m = cpa.attach(tiny("bert"), cpa.AdapterConfig(r=2, alpha=4, init="random", seed=1))
    delta = extract_adapter_delta(_saved(m, tmp_path))
    np.testing.assert_allclose(
        delta.to_dense(), reconstruct(cpa.as_cp(m)).numpy(), rtol=1e-5, atol=1e-6
    )
    rep = cpa.analyze_delta(delta, [2], n_starts=1, max_iter=200)
    assert rep.cp_rows[0].energy_captured_pct > 99.9  # a rank-2 LoRTA adapter: CP rank <= 2
    assert all(p.numerical <= 2 for p in rep.profile_rows)


def test_head_split_subset_of_targets_and_layers(tiny, tmp_path):
    """Targets on some matrices and one layer, Q's heads on its input side, float64 factors:
    the delta is the adapter's own tensor (one layer, two matrices, Q split on its input)."""
    cfg = cpa.AdapterConfig(
        r=2,
        init="random",
        targets=r".*layer\.1\.attention\.(self\.query|output\.dense)",
        head_split={"q": "in"},
        factor_dtype="float64",
        seed=2,
    )
    m = cpa.attach(tiny("bert"), cfg)
    path = _saved(m, tmp_path)
    delta = extract_adapter_delta(path)
    assert delta.shape == (32, 8, 4, 1, 2)
    assert sorted(delta.pairs) == [(1, "O"), (1, "Q")]
    assert delta.pairs[(1, "Q")][0].dtype == np.float64
    (oracle,) = group_oracles(m, delta.plans)
    np.testing.assert_allclose(delta.to_dense(), oracle, rtol=1e-9, atol=1e-12)
    # a base config is checked against the adapter: more layers are fine, fewer are not
    base_cfg = tiny("bert").config.to_dict()
    assert extract_adapter_delta(path, base_cfg | {"num_hidden_layers": 4}).shape == delta.shape
    with pytest.raises(ValueError, match="1 layers, but the adapter targets layer 1"):
        extract_adapter_delta(path, base_cfg | {"num_hidden_layers": 1})
    with pytest.raises(ValueError, match="attention heads 8"):
        extract_adapter_delta(path, base_cfg | {"num_attention_heads": 8})


def test_mlp_targets_in_their_own_tensor_and_modules_to_save_left_out(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(
        BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    )
    cfg = cpa.AdapterConfig(
        r=2,
        init="random",
        targets=["q", "v", "intermediate.dense"],
        modules_to_save=["classifier"],
    )
    m = cpa.attach(model, cfg)
    delta = extract_adapter_delta(_saved(m, tmp_path))
    assert sorted(delta.pairs) == [
        (0, "Q"),
        (0, "V"),
        (0, "intermediate.dense"),
        (1, "Q"),
        (1, "V"),
        (1, "intermediate.dense"),
    ]
    assert [delta.group_label(i) for i in range(len(delta.groups))] == [
        "Q, V",
        "intermediate.dense",
    ]
    notes = " ".join(delta.notes)
    assert "other than Q, K, V, O" in notes and "modules_to_save" in notes
    for x, oracle in zip(delta.groups, group_oracles(m, delta.plans)):
        np.testing.assert_allclose(x.to_dense(), oracle, rtol=1e-5, atol=1e-6)


def test_grouped_query_attention(tiny, tmp_path):
    """GQA: the adapter's two tensors (Q with O over all heads, K with V over the key/value
    heads), each equal to the dense reference and of CP rank r."""
    m = cpa.attach(tiny("llama"), cpa.AdapterConfig(r=2, init="random", seed=5))
    delta = extract_adapter_delta(_saved(m, tmp_path))
    grid = m.cp_adapters.adapters["default"].grid
    H, H_kv = grid.num_heads, grid.num_kv_heads
    assert H_kv < H
    assert [p.shape[2] for p in delta.plans] == [H, H_kv]
    assert [delta.group_label(i) for i in range(2)] == ["Q, O", "K, V"]
    for x, oracle in zip(delta.groups, group_oracles(m, delta.plans)):
        assert np.abs(oracle).max() > 0.01
        np.testing.assert_allclose(x.to_dense(), oracle, rtol=1e-5, atol=1e-6)
    rep = cpa.analyze_delta(delta, [2], n_starts=2, max_iter=300)
    assert rep.cp_rows[0].energy_captured_pct > 99.9 and len(rep.sweeps) == 2


def test_peft_directory_still_read(tiny, tmp_path):
    from peft import LoraConfig, get_peft_model

    base = tiny("bert")
    pm = get_peft_model(
        copy.deepcopy(base), LoraConfig(r=2, target_modules=["query"], init_lora_weights=False)
    )
    pm.save_pretrained(tmp_path)
    delta = extract_adapter_delta(tmp_path, base.config)
    ref = extract_lora_delta(tmp_path, base.config)
    np.testing.assert_array_equal(delta.to_dense(), ref.to_dense())
    (tmp_path / "adapter_model.safetensors").write_bytes(b"\x00garbage")
    for read in (extract_adapter_delta, extract_lora_delta):
        with pytest.raises(ValueError, match="not a valid safetensors file"):
            read(tmp_path, base.config)


@pytest.fixture
def saved_bert(tiny, tmp_path):
    m = cpa.attach(tiny("bert"), cpa.AdapterConfig(r=2, init="random"))
    return _saved(m, tmp_path / "adapter")


def _edit_config(path, fn):
    f = path / "adapter_config.json"
    meta = json.loads(f.read_text())
    f.write_text(json.dumps(fn(meta)))


def test_bad_directories(saved_bert, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        extract_adapter_delta(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"lacks adapter_config\.json"):
        extract_adapter_delta(tmp_path / "empty")
    cfg = saved_bert / "adapter_config.json"
    good = cfg.read_text()
    for text, pattern in (
        ("{not json", "not valid JSON"),
        ("[1, 2]", "holds a JSON list"),
        ('{"r": 8}', "unknown adapter format"),
        ('{"format": "other_lib"}', "unknown adapter format.*'other_lib'"),
    ):
        cfg.write_text(text)
        with pytest.raises(ValueError, match=pattern):
            extract_adapter_delta(saved_bert)
    cfg.write_text(good)
    with pytest.raises(ValueError, match="read it with extract_adapter_delta"):
        extract_lora_delta(saved_bert)
    with pytest.raises(ValueError, match="base_config: attention heads 8"):
        extract_adapter_delta(saved_bert, {"num_attention_heads": 8})
    with pytest.raises(ValueError, match="base_config: 1 layers"):
        extract_adapter_delta(saved_bert, {"num_hidden_layers": 1})


def test_inconsistent_config(saved_bert):
    def version(meta):
        return meta | {"format_version": 99}

    def no_grid(meta):
        return {k: v for k, v in meta.items() if k != "grid"}

    def bad_field(meta):
        return meta | {"config": meta["config"] | {"r": 0}}

    def other_groups(meta):
        return meta | {"groups": meta["groups"] + meta["groups"]}

    original = (saved_bert / "adapter_config.json").read_text()
    for edit, pattern in (
        (version, "format_version 99"),
        (no_grid, "'grid' is missing"),
        (bad_field, "r: expected an integer"),
        (other_groups, "'groups' disagree"),
    ):
        (saved_bert / "adapter_config.json").write_text(original)
        _edit_config(saved_bert, edit)
        with pytest.raises(ValueError, match=pattern):
            extract_adapter_delta(saved_bert)


def test_corrupt_or_mismatched_weights(saved_bert):
    w = saved_bert / "adapter_model.safetensors"
    tensors = load_file(str(w))
    save_file({**tensors, "groups.0.layer": torch.zeros(3, 2)}, str(w))
    with pytest.raises(ValueError, match=r"'groups\.0\.layer' in .* has shape \(3, 2\).*\(2, 2\)"):
        extract_adapter_delta(saved_bert)
    save_file({k: v for k, v in tensors.items() if k != "groups.0.head"}, str(w))
    with pytest.raises(ValueError, match=r"'groups\.0\.head' is missing"):
        extract_adapter_delta(saved_bert)
    save_file({**tensors, "groups.1.out": torch.zeros(2, 2)}, str(w))
    with pytest.raises(ValueError, match="unexpected tensors"):
        extract_adapter_delta(saved_bert)
    w.write_bytes(b"definitely not safetensors")
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        extract_adapter_delta(saved_bert)
    w.unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks adapter_model\.safetensors"):
        extract_adapter_delta(saved_bert)

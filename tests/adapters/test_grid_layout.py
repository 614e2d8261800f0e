"""Weight grids (target discovery, geometry, storage) and layouts (grouping, counts)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cptensor_adapters as cpa
from cptensor_adapters import Layout, WeightGrid, plan_groups


def test_bert_grid(tiny):
    grid = WeightGrid.from_model(tiny("bert"))
    assert grid.architecture == "bert"
    assert (grid.num_layers, grid.num_heads, grid.num_kv_heads, grid.head_dim) == (2, 4, 4, 8)
    assert grid.matrices == ("q", "k", "v", "o")
    assert len(grid) == 8
    q, o = (
        grid["encoder.layer.1.attention.self.query"],
        grid["encoder.layer.1.attention.output.dense"],
    )
    assert (q.layer, q.matrix, q.head_side, q.storage) == (1, "q", "out", "linear")
    assert (o.matrix, o.head_side, o.heads) == ("o", "in", 4)


def test_gpt2_fused_conv1d_grid(tiny):
    model = tiny("gpt2")
    grid = WeightGrid.from_model(model)
    assert grid.architecture == "gpt2"
    names = [t.name for t in grid if t.layer == 0]
    assert names == [
        "h.0.attn.c_attn:q",
        "h.0.attn.c_attn:k",
        "h.0.attn.c_attn:v",
        "h.0.attn.c_proj",
    ]
    offsets = [t.out_offset for t in grid if t.module == "h.0.attn.c_attn"]
    assert offsets == [0, 32, 64]
    assert all(t.storage == "conv1d" for t in grid)
    # stored transposed: (in, out) = (32, 96)
    assert tuple(model.h[0].attn.c_attn.weight.shape) == (32, 96)
    assert grid["h.0.attn.c_attn:v"].out_features == 32
    only_q = WeightGrid.from_model(model, targets=["q"])
    assert [t.name for t in only_q] == ["h.0.attn.c_attn:q", "h.1.attn.c_attn:q"]


def test_llama_gqa_grid(tiny):
    grid = WeightGrid.from_model(tiny("llama"))
    assert (grid.num_heads, grid.num_kv_heads, grid.head_dim) == (4, 2, 8)
    k = grid["layers.0.self_attn.k_proj"]
    assert (k.out_features, k.heads, k.head_side) == (16, 2, "out")
    assert grid["layers.0.self_attn.q_proj"].heads == 4


def test_targets_by_list_regex_and_other_modules(tiny):
    model = tiny("llama")
    grid = WeightGrid.from_model(model, targets=["q", "v", "mlp.down_proj"])
    assert [t.matrix for t in grid if t.layer == 0] == ["q", "v", "mlp.down_proj"]
    down = grid["layers.0.mlp.down_proj"]
    assert (down.in_features, down.out_features, down.heads, down.head_side) == (64, 32, 0, None)
    rx = WeightGrid.from_model(model, targets=r"layers\.1\.self_attn\.(q|o)_proj")
    assert [t.name for t in rx] == ["layers.1.self_attn.q_proj", "layers.1.self_attn.o_proj"]
    assert rx.num_layers == 1


def test_differently_shaped_targets_go_to_separate_groups(tiny):
    grid = WeightGrid.from_model(
        tiny("llama"), targets=["q", "k", "v", "o", "up_proj", "down_proj"]
    )
    plans = plan_groups(grid, Layout.resolve("lorta"))
    shapes = sorted(p.shape for p in plans)
    assert shapes == sorted(
        [
            (32, 8, 4, 2, 2),  # Q and O: d × d_h × H × L × 2
            (32, 8, 2, 2, 2),  # K and V under GQA: H_kv = 2 heads
            (64, 32, 1, 2, 1),  # up_proj (no heads: one head spanning its input)
            (32, 64, 1, 2, 1),  # down_proj
        ]
    )
    members = {p.shape: sorted({grid[m.target].matrix for m in p.members}) for p in plans}
    assert members[(32, 8, 2, 2, 2)] == ["k", "v"]


def test_gqa_lorta_groups_and_counts(tiny):
    m = cpa.attach(tiny("llama"), cpa.AdapterConfig(r=3))
    groups = cpa.adapter_groups(m)
    assert [g.labels["matrix"] for g in groups] == [("q", "o"), ("k", "v")]
    rep = cpa.parameter_report(m)["default"]
    assert rep.factor_parameters == 3 * (32 + 8 + 4 + 2 + 2) + 3 * (32 + 8 + 2 + 2 + 2)
    assert rep.groups == 2


def test_custom_architecture_with_explicit_geometry():
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wq, self.wk, self.wv, self.wo = (nn.Linear(12, 12) for _ in range(4))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList(Block() for _ in range(3))

    net = Net()
    with pytest.raises(ValueError, match=r"found no attention projection.*'wq'"):
        WeightGrid.from_model(net)
    roles = {"wq": "q", "wk": "k", "wv": "v", "wo": "o"}
    with pytest.raises(ValueError, match="head geometry is unknown"):
        WeightGrid.from_model(net, targets=list(roles), roles=roles)
    grid = WeightGrid.from_model(net, targets=list(roles), roles=roles, num_heads=3)
    assert (grid.num_layers, grid.head_dim, grid.matrices) == (3, 4, ("q", "k", "v", "o"))
    m = cpa.attach(net, cpa.AdapterConfig(r=2, targets=list(roles), roles=roles, num_heads=3))
    assert cpa.parameter_report(m)["default"].factor_parameters == 2 * (12 + 4 + 3 + 3 + 4)
    # a generic target without roles: no heads, matrix named by its path in the layer
    plain = WeightGrid.from_model(Net(), targets=["wo"])
    assert [t.matrix for t in plain] == ["wo"] * 3 and plain.num_heads is None


def test_builtin_layouts_and_custom():
    assert Layout.resolve("lora").groups == ("layer", "matrix")
    assert Layout.resolve("layer_shared").modes == ("out", "in", "layer")
    custom = Layout(("out", "in", "layer", "matrix"))
    assert custom.shared == ("head",) and not custom.uses_heads
    assert Layout.resolve(custom.to_dict()) == custom


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"modes": ("out", "in", "heads")}, "unknown axis 'heads'"),
        ({"modes": ("out", "in"), "groups": ("layers",)}, "unknown axis 'layers'"),
        ({"modes": ("out", "layer")}, "lacks 'in'"),
        ({"modes": ("out", "in", "layer"), "groups": ("layer",)}, "more than once"),
        ({"modes": ("out", "in"), "groups": ("head",)}, "'head' cannot index"),
    ],
)
def test_bad_layouts(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Layout(**kwargs)


def test_custom_layout_attaches_and_matches_dense(tiny):
    from .conftest import dense_deltas_from_factors

    layout = {"modes": ["out", "in", "head", "layer"], "groups": ["matrix"]}
    m = cpa.attach(tiny("bert"), cpa.AdapterConfig(r=2, layout=layout, init="random"))
    assert len(cpa.adapter_groups(m)) == 4
    deltas, oracle = cpa.delta_weights(m), dense_deltas_from_factors(m)
    for k in deltas:
        torch.testing.assert_close(deltas[k], oracle[k])


def test_head_split_override(tiny):
    from .conftest import dense_deltas_from_factors

    m = cpa.attach(tiny("bert"), cpa.AdapterConfig(r=2, head_split="in", init="random"))
    assert {m_.split for g in cpa.adapter_groups(m) for m_ in g.members} == {"in"}
    deltas, oracle = cpa.delta_weights(m), dense_deltas_from_factors(m)
    for k in deltas:
        torch.testing.assert_close(deltas[k], oracle[k])
    # Llama's K split on its input: 4 heads of 8 along d_in, but its full side is 16 (not 32),
    # so it cannot share Q/O's tensor, nor V's (heads on V's output: 2)
    ml = cpa.attach(tiny("llama"), cpa.AdapterConfig(r=2, head_split={"k": "in"}))
    assert [g.labels["matrix"] for g in cpa.adapter_groups(ml)] == [("q", "o"), ("k",), ("v",)]
    assert [g.shape[:3] for g in cpa.adapter_groups(ml)] == [(32, 8, 4), (16, 8, 4), (32, 8, 2)]


def test_as_cp_is_the_tensor_of_updates(tiny):
    reconstruct = pytest.importorskip("cptensor").reconstruct
    m = cpa.attach(tiny("bert"), cpa.AdapterConfig(r=3, init="random", alpha=6))
    cp = cpa.as_cp(m)
    assert cp.shape == (32, 8, 4, 2, 4) and cp.rank == 3
    full = reconstruct(cp)
    deltas = cpa.delta_weights(m)
    # layer 1, matrix "o" (index 3): heads split the input, O enters as is
    o = full[:, :, :, 1, 3].permute(0, 2, 1).reshape(32, 32)
    torch.testing.assert_close(o, deltas["encoder.layer.1.attention.output.dense"])
    # layer 0, matrix "q": heads split the output, Q enters transposed
    q = full[:, :, :, 0, 0].permute(0, 2, 1).reshape(32, 32).t()
    torch.testing.assert_close(q, deltas["encoder.layer.0.attention.self.query"])
    with pytest.raises(ValueError, match="has 2 CP tensors; pass group="):
        cpa.as_cp(cpa.attach(tiny("llama"), cpa.AdapterConfig()))

"""Property: for random geometries (heads, grouped-query attention, head sizes, layers,
extra MLP targets), ranks and layouts (built-in and custom), the factored forward of every
wrapped module equals ``x @ (W + ΔW)ᵀ`` with ΔW rebuilt densely from the CP factors."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import cptensor_adapters as cpa
from cptensor_adapters.modules import iter_adapter_layers

from .conftest import dense_deltas_from_factors

ROLES = {"wq": "q", "wk": "k", "wv": "v", "wo": "o"}


class Block(nn.Module):
    def __init__(self, d: int, heads: int, kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.wq = nn.Linear(d, heads * head_dim)
        self.wk = nn.Linear(d, kv_heads * head_dim, bias=False)
        self.wv = nn.Linear(d, kv_heads * head_dim)
        self.wo = nn.Linear(heads * head_dim, d)
        self.up = nn.Linear(d, 2 * d + 1)


class Toy(nn.Module):
    def __init__(self, layers: int, *args: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(*args) for _ in range(layers))


@st.composite
def layouts(draw: st.DrawFn) -> object:
    builtin = st.sampled_from(["lorta", "lora", "layer_shared"])
    extra = draw(st.permutations(["head", "layer", "matrix"]))
    roles = [draw(st.sampled_from(["mode", "group", "shared"])) for _ in extra]
    modes = ["out", "in"] + [a for a, r in zip(extra, roles) if r == "mode"]
    groups = [a for a, r in zip(extra, roles) if r == "group" and a != "head"]
    custom = st.just({"modes": modes, "groups": groups})
    return draw(st.one_of(builtin, custom))


@settings(deadline=None)
@given(
    layers=st.integers(1, 3),
    heads=st.integers(1, 4),
    kv_div=st.integers(1, 4),
    head_dim=st.integers(1, 4),
    d_mult=st.integers(1, 3),
    r=st.integers(1, 5),
    layout=layouts(),
    head_split=st.sampled_from(["auto", "out", "in", {"o": "out", "q": "in"}]),
    with_mlp=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_factored_forward_equals_dense(
    layers, heads, kv_div, head_dim, d_mult, r, layout, head_split, with_mlp, seed
):
    kv_heads = heads // kv_div if heads % kv_div == 0 else heads
    d = head_dim * d_mult * heads  # every side divisible by head_dim
    torch.manual_seed(seed)
    model = Toy(layers, d, heads, kv_heads, head_dim).double()
    targets = list(ROLES) + (["up"] if with_mlp else [])
    cfg = cpa.AdapterConfig(
        r=r,
        alpha=2.0 * r,
        layout=layout,
        targets=targets,
        head_split=head_split,
        init="random",
        seed=seed,
        roles=ROLES,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
    )
    cpa.attach(model, cfg)
    assert all(p.dtype == torch.float64 for p in model.cp_adapters.parameters())
    rep = cpa.parameter_report(model)["default"]
    assert rep.factor_parameters == sum(r * sum(g.shape) for g in cpa.adapter_groups(model))
    oracle = dense_deltas_from_factors(model)
    deltas = cpa.delta_weights(model)
    assert set(deltas) == set(oracle) and len(deltas) == len(targets) * layers
    x = torch.randn(3, d, dtype=torch.float64)
    grid = model.cp_adapters.adapters["default"].grid
    for path, layer in iter_adapter_layers(model):
        (target,) = grid.targets_of(path)
        torch.testing.assert_close(deltas[target.name], oracle[target.name])
        xin = x if layer.in_features == d else torch.randn(3, layer.in_features, dtype=x.dtype)
        expected = F.linear(xin, layer.weight + oracle[target.name], layer.bias)
        torch.testing.assert_close(layer(xin), expected, atol=1e-10, rtol=1e-8)

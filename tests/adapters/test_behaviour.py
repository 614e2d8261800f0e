"""PEFT-style checks for every architecture (tiny BERT, GPT-2, Llama with GQA) × layout."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import cptensor_adapters as cpa
from cptensor_adapters.modules import iter_adapter_layers

from .conftest import dense_deltas_from_factors, hidden, perturb_

R = 4
ALPHA = 64.0  # scaling 16: random updates move the outputs by O(1)


def random_adapter(base, layout, seed=0, name="default", **kw):
    cfg = cpa.AdapterConfig(r=R, alpha=ALPHA, layout=layout, init="random", seed=seed, **kw)
    return cpa.attach(base, cfg, name=name)


def base_weights(model):
    return {
        n: p.detach().clone()
        for n, p in model.named_parameters()
        if not n.startswith("cp_adapters.")
    }


def test_output_unchanged_at_init(tiny, arch, layout, ids):
    base = tiny(arch)
    y0 = hidden(base, ids)
    m = cpa.attach(copy.deepcopy(base), cpa.AdapterConfig(r=R, layout=layout))
    assert torch.equal(hidden(m, ids), y0)
    # not vacuous: the adapter is in the graph and its zero factor gets a gradient
    hidden(m, ids).pow(2).sum().backward()
    grads = {n: p.grad for n, p in m.named_parameters() if p.requires_grad}
    assert grads and all(n.startswith("cp_adapters.") for n in grads)
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.endswith(".in"))
    assert any(p.abs().sum() > 0 for n, p in m.named_parameters() if n.endswith(".out"))


def test_merge_equals_unmerged_and_unmerge_restores(tiny, arch, layout, ids):
    base = tiny(arch)
    y0 = hidden(base, ids)
    m = random_adapter(copy.deepcopy(base), layout)
    w0 = base_weights(m)
    y = hidden(m, ids)
    assert (y - y0).abs().max() > 1e-2, "the random adapter must change the output"
    cpa.merge(m)
    assert cpa.merged_adapters(m) == ("default",)
    changed = [n for n, w in base_weights(m).items() if not torch.equal(w, w0[n])]
    assert changed, "merge must write into the base weights"
    torch.testing.assert_close(hidden(m, ids), y, atol=5e-5, rtol=1e-4)
    cpa.unmerge(m)
    assert cpa.merged_adapters(m) == ()
    for n, w in base_weights(m).items():
        torch.testing.assert_close(w, w0[n], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(hidden(m, ids), y, atol=5e-5, rtol=1e-4)


def test_disabled_equals_base(tiny, arch, layout, ids):
    base = tiny(arch)
    y0 = hidden(base, ids)
    m = random_adapter(copy.deepcopy(base), layout)
    y = hidden(m, ids)
    with cpa.disabled(m):
        assert torch.equal(hidden(m, ids), y0)
    torch.testing.assert_close(hidden(m, ids), y)
    cpa.merge(m)
    with cpa.disabled(m):  # merged adapters are taken out for the duration
        torch.testing.assert_close(hidden(m, ids), y0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hidden(m, ids), y, atol=5e-5, rtol=1e-4)


def test_save_load_round_trip(tiny, arch, layout, ids, tmp_path):
    base = tiny(arch)
    m = random_adapter(copy.deepcopy(base), layout, seed=3)
    perturb_(m)
    y = hidden(m, ids)
    assert (y - hidden(base, ids)).abs().max() > 1e-2
    cpa.save_adapter(m, tmp_path)
    loaded = cpa.load_adapter(copy.deepcopy(base), tmp_path)
    assert torch.equal(hidden(loaded, ids), y)
    assert not any(p.requires_grad for p in loaded.parameters())  # trainable=False
    again = cpa.load_adapter(copy.deepcopy(base), tmp_path, name="other", trainable=True)
    assert cpa.adapter_names(again) == ("other",)
    assert all(p.requires_grad for p in again.cp_adapters.parameters())


def test_only_adapter_parameters_change(tiny, arch, layout, ids):
    m = cpa.attach(tiny(arch), cpa.AdapterConfig(r=R, layout=layout, dropout=0.1))
    m.train()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        hidden(m, ids).pow(2).mean().backward()
        opt.step()
    after = dict(m.named_parameters())
    adapter = [n for n in before if n.startswith("cp_adapters.")]
    assert adapter
    for n, p in after.items():
        if n.startswith("cp_adapters."):
            assert not torch.equal(p, before[n]), f"adapter factor {n} did not train"
        else:
            assert torch.equal(p, before[n]), f"base parameter {n} changed"


def test_factored_forward_equals_dense(tiny, arch, layout):
    m = random_adapter(tiny(arch), layout, seed=5)
    perturb_(m, seed=1)
    deltas = cpa.delta_weights(m)
    oracle = dense_deltas_from_factors(m)
    assert deltas.keys() == oracle.keys()
    for k in deltas:
        torch.testing.assert_close(deltas[k], oracle[k], atol=1e-6, rtol=1e-5)
    g = torch.Generator().manual_seed(0)
    n_checked = 0
    for path, layer in iter_adapter_layers(m):
        targets = sorted(
            m.cp_adapters.adapters["default"].grid.targets_of(path), key=lambda t: t.out_offset
        )
        dw = torch.cat([deltas[t.name] for t in targets], 0)
        w = layer.weight.detach()
        w_lin = w.t() if layer.storage == "conv1d" else w
        assert dw.shape == w_lin.shape
        x = torch.randn(3, 5, layer.in_features, generator=g)
        expected = F.linear(x, w_lin + dw, layer.bias)
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
        assert dw.abs().max() > 1e-3, "non-trivial update"
        n_checked += 1
    assert n_checked == len({t.module for t in m.cp_adapters.adapters["default"].grid})


def test_peft_lora_export_reproduces_outputs(tiny, arch, layout, ids, tmp_path):
    peft = pytest.importorskip("peft")
    base = tiny(arch)
    m = random_adapter(copy.deepcopy(base), layout, seed=7)
    y = hidden(m, ids)
    cpa.save_as_peft_lora(m, tmp_path)
    pm = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    torch.testing.assert_close(hidden(pm, ids), y, atol=5e-5, rtol=1e-4)
    assert (y - hidden(base, ids)).abs().max() > 1e-2


def test_two_named_adapters_switch(tiny, arch, layout, ids):
    base = tiny(arch)
    ya = hidden(random_adapter(copy.deepcopy(base), layout, seed=1), ids)
    yb = hidden(random_adapter(copy.deepcopy(base), "lorta", seed=2), ids)
    m = random_adapter(copy.deepcopy(base), layout, seed=1, name="a")
    random_adapter(m, "lorta", seed=2, name="b")
    assert cpa.active_adapters(m) == ("a",)  # a later adapter stays inactive until chosen
    torch.testing.assert_close(hidden(m, ids), ya)
    cpa.set_active(m, "b")
    torch.testing.assert_close(hidden(m, ids), yb)
    trainable = {n.split(".")[2] for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == {"b"}
    # both active: the updates of a layer add up
    _, layer = next(iter_adapter_layers(m))
    x = torch.randn(4, layer.in_features, generator=torch.Generator().manual_seed(0))
    outs = {}
    for active in (["a"], ["b"], ["a", "b"], []):
        cpa.set_active(m, active)
        outs[tuple(active)] = layer(x)
    torch.testing.assert_close(
        outs[("a", "b")], outs[("a",)] + outs[("b",)] - outs[()], atol=1e-5, rtol=1e-5
    )
    assert not torch.allclose(outs[("a", "b")], outs[("a",)], atol=1e-3)
    y0 = hidden(base, ids)
    torch.testing.assert_close(hidden(m, ids), y0)
    cpa.set_active(m, "a")
    torch.testing.assert_close(hidden(m, ids), ya)
    cpa.remove_adapter(m, "a")
    assert cpa.adapter_names(m) == ("b",) and cpa.active_adapters(m) == ()
    torch.testing.assert_close(hidden(m, ids), y0)
    cpa.set_active(m, "b")
    torch.testing.assert_close(hidden(m, ids), yb)

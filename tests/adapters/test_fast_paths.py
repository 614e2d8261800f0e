"""The fast paths of the forward pass give the same values and gradients as the plain path:
the fused autograd node (base layer + update in one), the Q/K/V input sharing under
"lorta", and both under activation checkpointing."""

from __future__ import annotations

import copy

import pytest
import torch

import cptensor_adapters as cpa
from cptensor_adapters.modules import CPAdapterLayer, iter_adapter_layers

from .conftest import hidden


def _grads(model, ids, *extra):
    model.zero_grad(set_to_none=True)
    emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    out = model(inputs_embeds=emb).last_hidden_state
    (out * torch.linspace(-1, 1, out.shape[-1])).pow(2).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    grads["<input>"] = emb.grad.clone()
    return out.detach(), grads


def _force_plain_path(model):
    """A no-op forward hook on each base layer disables the fused node."""
    for _, layer in iter_adapter_layers(model):
        layer.base_layer.register_forward_hook(lambda *a: None)


def _assert_same(a, b):
    (ya, ga), (yb, gb) = a, b
    torch.testing.assert_close(ya, yb, atol=1e-5, rtol=1e-5)
    assert ga.keys() == gb.keys()
    for k in ga:
        scale = float(gb[k].abs().max())
        err = float((ga[k] - gb[k]).abs().max())
        assert err <= 1e-5 * max(scale, 1.0), f"{k}: max error {err:.3g} at scale {scale:.3g}"


@pytest.mark.parametrize("layout", ["lorta", "lora"])
def test_fused_and_shared_paths_match_the_plain_path(tiny, arch, layout, ids):
    base = tiny(arch)
    cfg = cpa.AdapterConfig(r=3, alpha=12, layout=layout, init="random", seed=2)
    fast = cpa.attach(copy.deepcopy(base), cfg)
    plain = copy.deepcopy(fast)
    plain.cp_adapters.share_inputs = False
    _force_plain_path(plain)
    no_share = copy.deepcopy(fast)
    no_share.cp_adapters.share_inputs = False
    ref = _grads(plain, ids)
    _assert_same(_grads(fast, ids), ref)
    _assert_same(_grads(no_share, ids), ref)
    assert all(g.abs().sum() > 0 for k, g in ref[1].items() if k.startswith("cp_adapters."))


def test_qkv_share_one_projection_under_lorta(tiny, ids):
    m = cpa.attach(tiny("bert"), cpa.AdapterConfig(r=3, init="random"))
    calls = []
    real_mm = torch.mm

    def counting_mm(a, b):
        if b.shape[-1] == 3 and a.shape[-1] == 32:  # x·Aᵀ, r = 3
            calls.append(a.shape)
        return real_mm(a, b)

    sa = m.encoder.layer[0].attention.self
    seen = {}
    sa.key.register_forward_pre_hook(lambda mod, args: seen.update(cache=dict(mod._scope.cache)))
    torch.mm = counting_mm
    try:
        sa(torch.randn(2, 5, 32))
    finally:
        torch.mm = real_mm
    assert len(calls) == 1, "Q, K, V must share x·A"
    assert len(seen["cache"]) == 1 and sa.query._scope is sa.key._scope
    assert sa.query._scope.cache is None  # closed after the attention call
    m.cp_adapters.share_inputs = False
    calls.clear()
    torch.mm = counting_mm
    try:
        sa(torch.randn(2, 5, 32))
    finally:
        torch.mm = real_mm
    assert len(calls) == 3


def test_gradient_checkpointing(tiny, ids):
    base = tiny("llama")
    m = cpa.attach(copy.deepcopy(base), cpa.AdapterConfig(r=3, init="random", alpha=12))
    ref = _grads(m, ids)
    ck = copy.deepcopy(m)
    ck.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ck.train()  # transformers checkpoints only in training mode
    for mod in ck.modules():
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0
    _assert_same(_grads(ck, ids), ref)


def test_unfrozen_base_weight_gets_its_gradient(tiny, ids):
    base = tiny("gpt2")
    fast = cpa.attach(copy.deepcopy(base), cpa.AdapterConfig(r=2, init="random"))
    fast.h[0].attn.c_attn.base_layer.weight.requires_grad_(True)
    fast.h[0].attn.c_attn.base_layer.bias.requires_grad_(True)
    plain = copy.deepcopy(fast)
    _force_plain_path(plain)
    a, b = _grads(fast, ids), _grads(plain, ids)
    _assert_same(a, b)
    assert "h.0.attn.c_attn.base_layer.weight" in a[1]


def test_deepcopy_keeps_hooks_consistent(tiny, ids):
    m = cpa.attach(tiny("bert"), cpa.AdapterConfig(r=2, init="random"))
    clone = copy.deepcopy(m)
    q = clone.encoder.layer[0].attention.self.query
    assert isinstance(q, CPAdapterLayer)
    assert q._scope is not m.encoder.layer[0].attention.self.query._scope
    torch.testing.assert_close(hidden(clone, ids), hidden(m, ids))
    plain = cpa.merge_and_unload(clone)
    assert not any(hooks for mod in plain.modules() for hooks in (mod._forward_pre_hooks,))


@pytest.mark.parametrize("layout", ["lorta", "lora"])
def test_inference_mode_matches_no_grad(tiny, arch, layout, ids):
    # Inference tensors keep no version counter: the shared-projection cache must not
    # consult it (it used to raise "Inference tensors do not track version counter").
    model = cpa.attach(
        copy.deepcopy(tiny(arch)), cpa.AdapterConfig(r=2, layout=layout, init="random", seed=1)
    ).eval()
    with torch.no_grad():
        expected = hidden(model, ids)
    with torch.inference_mode():
        got = hidden(model, ids)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)

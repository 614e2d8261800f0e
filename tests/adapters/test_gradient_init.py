"""Gradient-aligned initialisation: the model is unchanged at step 0, the first step
follows the measured gradient, and nothing else is touched."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cptensor_adapters import AdapterConfig, attach, delta_weights, merge
from cptensor_adapters.grad_align import gradient_init
from cptensor_adapters.layout import target_block
from cptensor_adapters.modules import target_factors

from ._models import ARCHS, LAYOUTS, VOCAB, build_tiny
from .conftest import hidden

_TINY: dict[str, torch.nn.Module] = {}


def _tiny(arch: str) -> torch.nn.Module:
    if arch not in _TINY:
        _TINY[arch] = build_tiny(arch)
    return copy.deepcopy(_TINY[arch])


def _loss(model, batch):
    h = model(input_ids=batch["input_ids"]).last_hidden_state
    return (h * batch["target"]).mean()


def _batches(seed: int, n: int = 2):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "input_ids": torch.randint(1, VOCAB, (3, 6), generator=g),
            "target": torch.randn(3, 6, 32, generator=g),
        }
        for _ in range(n)
    ]


def _measured_gradient(base: torch.nn.Module, grid, batches) -> dict[str, torch.Tensor]:
    """∂loss/∂W per target on a plain copy of the base model (``Linear`` orientation)."""
    model = copy.deepcopy(base)
    mods = dict(model.named_modules())
    weights = {t.module: mods[t.module].weight for t in grid.targets}
    for w in weights.values():
        w.requires_grad_(True)
    total = sum(_loss(model, b) for b in batches) / len(batches)
    grads = dict(zip(weights, torch.autograd.grad(total, list(weights.values()))))
    out = {}
    for t in grid.targets:
        g = grads[t.module]
        g = g.t() if t.storage == "conv1d" else g
        out[t.name] = g[t.out_offset : t.out_offset + t.out_features]
    return out


def _first_step_direction(model, batches) -> dict[str, torch.Tensor]:
    """ΔW after setting the zero factor to minus its gradient (ΔW is linear in it)."""
    adapter = model.cp_adapters.adapters["default"]
    zero = [g.factors["in"] for g in adapter.groups]
    total = sum(_loss(model, b) for b in batches) / len(batches)
    grads = torch.autograd.grad(total, zero)
    with torch.no_grad():
        for p, g in zip(zero, grads):
            p.copy_(-g)
    return delta_weights(model)


def _cosine(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    x = torch.cat([a[k].flatten() for k in sorted(a)]).double()
    y = torch.cat([b[k].flatten() for k in sorted(a)]).double()
    return float(x @ y / (x.norm() * y.norm()))


@settings(max_examples=12, deadline=None)
@given(
    arch=st.sampled_from(ARCHS),
    layout=st.sampled_from(LAYOUTS),
    init=st.sampled_from(["default", "reference", "scaled"]),
    r=st.integers(1, 4),
    seed=st.integers(0, 1000),
)
def test_unchanged_at_step_zero_and_aligned_with_the_gradient(arch, layout, init, r, seed):
    base = _tiny(arch)
    batches = _batches(seed)
    ids = batches[0]["input_ids"]
    before = hidden(base, ids)
    model = attach(copy.deepcopy(base), AdapterConfig(r=r, init=init, layout=layout, seed=seed))
    random_start = copy.deepcopy(model)
    grid = model.cp_adapters.adapters["default"].grid
    fits = gradient_init(model, batches, loss=_loss)
    assert len(fits) == len(model.cp_adapters.adapters["default"].groups)
    assert all(0.0 <= f.fit <= 1.0 for f in fits)
    # step 0: ΔW = 0 exactly, the outputs are the base model's
    assert all(float(d.abs().max()) == 0.0 for d in delta_weights(model).values())
    torch.testing.assert_close(hidden(model, ids), before, rtol=0, atol=0)
    # the first step descends along the measured gradient, much better than at random
    minus_g = {k: -v for k, v in _measured_gradient(base, grid, batches).items()}
    aligned = _cosine(_first_step_direction(model, batches), minus_g)
    at_random = _cosine(_first_step_direction(random_start, batches), minus_g)
    assert aligned > 0.0
    assert aligned > at_random + 0.1, (aligned, at_random)


@pytest.mark.parametrize("arch", ARCHS)
def test_scales_follow_the_configs_init(arch):
    model = attach(_tiny(arch), AdapterConfig(r=3, init="scaled"))
    gradient_init(model, _batches(0), loss=_loss)
    for g in model.cp_adapters.adapters["default"].groups:
        for mode in ("head", "layer", "matrix"):  # RMS 1 per column, as U(-√3, √3)
            cols = g.factors[mode].detach().pow(2).mean(0).sqrt()
            torch.testing.assert_close(cols, torch.ones_like(cols))
        out = g.factors["out"].detach()
        cols = out.pow(2).mean(0).sqrt()  # RMS of U(-1/√n, 1/√n): 1/√(3n)
        torch.testing.assert_close(cols, torch.full_like(cols, (3 * out.shape[0]) ** -0.5))


def test_touches_no_gradient_and_no_flag():
    model = attach(_tiny("bert"), AdapterConfig(r=2, modules_to_save=None))
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    gradient_init(model, _batches(1), loss=_loss)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())


def test_hf_loss_by_default():
    import transformers

    from ._models import bert_config

    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(bert_config()).eval()
    attach(model, AdapterConfig(r=2, init="scaled"))
    batch = {"input_ids": torch.randint(1, VOCAB, (4, 5)), "labels": torch.tensor([0, 1, 0, 1])}
    (fit,) = gradient_init(model, [batch])
    assert fit.fit > 0


@pytest.mark.parametrize(
    "setup, batches, match",
    [
        (lambda m: None, [], "at least one batch"),
        (lambda m: merge(m), None, "merged"),
    ],
)
def test_errors(setup, batches, match):
    model = attach(_tiny("gpt2"), AdapterConfig(r=2))
    setup(model)
    with pytest.raises(ValueError, match=match):
        gradient_init(model, _batches(0) if batches is None else batches, loss=_loss)


def test_needs_a_zero_factor():
    model = attach(_tiny("gpt2"), AdapterConfig(r=2, init="random"))
    with pytest.raises(ValueError, match="zero factor"):
        gradient_init(model, _batches(0), loss=_loss)


def test_non_finite_loss():
    model = attach(_tiny("gpt2"), AdapterConfig(r=2))
    with pytest.raises(ValueError, match="loss of batch 0"):
        gradient_init(model, _batches(0), loss=lambda m, b: _loss(m, b) * float("nan"))


def test_no_adapter():
    with pytest.raises(ValueError, match="no adapters"):
        gradient_init(_tiny("gpt2"), _batches(0), loss=_loss)


@settings(max_examples=40, deadline=None)
@given(
    split=st.sampled_from([None, "out", "in"]),
    heads=st.integers(1, 4),
    head_dim=st.integers(1, 4),
    other=st.integers(1, 5),
    r=st.integers(1, 4),
    seed=st.integers(0, 1000),
)
def test_target_block_inverts_target_factors(split, heads, head_dim, other, r, seed):
    g = torch.Generator().manual_seed(seed)
    if split is None:
        heads = 1
        f = {"out": torch.randn(other, r, generator=g), "in": torch.randn(head_dim, r, generator=g)}
        expected = torch.einsum("ik,jk->ij", f["out"], f["in"])
    else:
        f = {
            "out": torch.randn(other, r, generator=g, dtype=torch.float64),
            "in": torch.randn(head_dim, r, generator=g, dtype=torch.float64),
            "head": torch.randn(heads, r, generator=g, dtype=torch.float64),
        }
        expected = torch.einsum("ik,jk,hk->ijh", f["out"], f["in"], f["head"])
    A, B = target_factors(f, (), split, heads, head_dim, 1.0)
    torch.testing.assert_close(target_block(B @ A, split, heads, head_dim), expected.to(A.dtype))

"""Initialisations: every factor's distribution against its formula, ``"reference"`` against
the paper's ``kaiming_uniform_`` calls, and ``"scaled"`` growing like LoRA."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from cptensor_adapters import INITS, AdapterConfig, attach, delta_weights
from cptensor_adapters.inits import draw_factor, factor_bound
from cptensor_adapters.modules import _mode_seed

from ._models import ARCHS, LAYOUTS, VOCAB, bert_config, build_tiny
from .conftest import hidden

_TINY: dict[str, torch.nn.Module] = {}


def _tiny(arch: str) -> torch.nn.Module:
    if arch not in _TINY:
        _TINY[arch] = build_tiny(arch)
    return copy.deepcopy(_TINY[arch])


R = 64  # enough entries per factor for the distribution checks


def _factors(model):
    adapter = model.cp_adapters.adapters["default"]
    for g in adapter.groups:
        for mode, p in g.factors.items():
            yield g.plan.index, mode, p.detach()


@pytest.mark.parametrize("init", INITS)
def test_every_factor_follows_its_formula(init):
    import transformers

    model = attach(
        transformers.BertModel(bert_config(hidden_size=64), add_pooling_layer=False),
        AdapterConfig(r=R, init=init, seed=3),
    )
    seen = set()
    for _, mode, f in _factors(model):
        bound = factor_bound(init, mode, f.shape[0], R)
        seen.add(mode)
        if bound is None:
            assert torch.count_nonzero(f) == 0, (init, mode)
            continue
        x = f.double().flatten().numpy()
        assert np.abs(x).max() <= bound * (1 + 1e-6), (init, mode)
        # Kolmogorov–Smirnov against U(-bound, bound): fixed seeds, so deterministic
        ks = stats.kstest(x, stats.uniform(loc=-bound, scale=2 * bound).cdf)
        assert ks.pvalue > 1e-3, (init, mode, ks)
    assert seen == {"out", "in", "head", "layer", "matrix"}


def test_formulas_in_closed_form():
    r = 8
    for mode in ("head", "layer", "matrix"):
        assert factor_bound("reference", mode, 12, r) == pytest.approx(math.sqrt(6 / r))
        assert factor_bound("scaled", mode, 12, r) == pytest.approx(math.sqrt(3))
        assert factor_bound("default", mode, 12, r) == pytest.approx(1 / math.sqrt(r))
    assert factor_bound("reference", "out", 384, r) == pytest.approx(1 / math.sqrt(r))
    assert factor_bound("scaled", "out", 384, r) == pytest.approx(1 / math.sqrt(384))
    for init in ("default", "reference", "scaled"):
        assert factor_bound(init, "in", 32, r) is None
    assert factor_bound("zero_out", "out", 32, r) is None
    assert all(factor_bound("random", m, 5, r) is not None for m in ("out", "in", "head"))


def test_reference_repeats_the_papers_kaiming_calls():
    """The paper's code: ``kaiming_uniform_(a=√5)`` on A (d × r), ``kaiming_uniform_(a=0)`` on
    the (n × r) head/layer/matrix factors, B zero; with the same generator state the draws
    are identical."""
    import transformers

    r = 8
    model = attach(
        transformers.BertModel(bert_config(), add_pooling_layer=False),
        AdapterConfig(r=r, init="reference", seed=5),
    )
    for group, mode, f in _factors(model):
        expected = torch.zeros(f.shape)
        if mode != "in":
            gen = torch.Generator().manual_seed(_mode_seed(5, group, mode))
            a = math.sqrt(5) if mode == "out" else 0.0
            torch.nn.init.kaiming_uniform_(expected, a=a, generator=gen)
        assert torch.equal(f, expected), mode


@settings(max_examples=20, deadline=None)
@given(
    init=st.sampled_from([i for i in INITS if i != "random"]),
    arch=st.sampled_from(ARCHS),
    layout=st.sampled_from(LAYOUTS),
    r=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 1),
)
def test_zero_factor_leaves_the_model_unchanged(init, arch, layout, r, seed):
    model = _tiny(arch)
    ids = torch.randint(1, VOCAB, (2, 5), generator=torch.Generator().manual_seed(seed))
    before = hidden(model, ids)
    attach(model, AdapterConfig(r=r, init=init, layout=layout, seed=seed))
    assert all(float(d.abs().max()) == 0.0 for d in delta_weights(model).values())
    torch.testing.assert_close(hidden(model, ids), before, rtol=0, atol=0)


def test_draw_factor_is_seeded():
    a = draw_factor("scaled", "out", (10, 3), torch.Generator().manual_seed(1))
    b = draw_factor("scaled", "out", (10, 3), torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.dtype == torch.float32


@pytest.mark.parametrize(
    "args, match",
    [
        (("nope", "out", 3, 2), "init"),
        (("default", "rows", 3, 2), "mode"),
        (("default", "out", 0, 2), "size"),
    ],
)
def test_factor_bound_rejects_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        factor_bound(*args)


def _first_step_growth(model, params, lr: float, seed: int) -> float:
    """RMS of ΔW over the targets after one Adam step on a random linear loss ⟨G, W⟩."""
    g = torch.Generator().manual_seed(seed)
    targets = {}
    for name, mod in model.named_modules():
        if name.endswith(("attention.self.query", "attention.self.value")):
            targets[name] = mod
    x = torch.randn(64, 64, generator=g)
    gs = {n: torch.randn(64, 64, generator=g) for n in targets}
    opt = torch.optim.Adam(params, lr=lr)
    loss = sum((m(x) * (x @ gs[n])).sum() for n, m in targets.items())
    loss.backward()
    opt.step()
    with torch.no_grad():
        eye = torch.eye(64)
        deltas = []
        for m in targets.values():
            base = m.base_layer if hasattr(m, "base_layer") else m
            y = m(eye) - base(eye)  # rows: ΔW e_i (bias cancels)
            deltas.append(y)
        return float(torch.cat(deltas).pow(2).mean().sqrt())


@pytest.mark.parametrize("r", [4, 16])
def test_scaled_init_grows_like_lora(r):
    """One Adam step from the start: under ``"scaled"`` the update of Q and V has the size of
    PEFT LoRA's at the same rank, alpha and learning rate (within 2x, median over seeds);
    under ``"default"`` it is several times smaller, the more so the larger ``r`` — the
    slow start that ``"scaled"`` removes."""
    import transformers

    peft = pytest.importorskip("peft")
    lr, alpha = 1e-3, 2.0 * r
    ratios = {"scaled": [], "default": []}
    for seed in range(3):
        torch.manual_seed(seed)
        base = transformers.BertModel(
            bert_config(hidden_size=64, num_attention_heads=4, num_hidden_layers=2),
            add_pooling_layer=False,
        ).encoder
        lora = peft.get_peft_model(
            _Wrap(base),
            peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=["query", "value"]),
        )
        ref = _first_step_growth(lora, [p for p in lora.parameters() if p.requires_grad], lr, seed)
        for init in ratios:
            torch.manual_seed(seed)
            m = transformers.BertModel(
                bert_config(hidden_size=64, num_attention_heads=4, num_hidden_layers=2),
                add_pooling_layer=False,
            ).encoder
            attach(
                m, AdapterConfig(r=r, alpha=alpha, init=init, targets=["query", "value"], seed=seed)
            )
            got = _first_step_growth(m, [p for p in m.parameters() if p.requires_grad], lr, seed)
            ratios[init].append(got / ref)
    med = {k: float(np.median(v)) for k, v in ratios.items()}
    assert 0.5 <= med["scaled"] <= 2.0, med
    assert med["default"] < med["scaled"] / 4, med


class _Wrap(torch.nn.Module):
    """PEFT needs a module with a forward; the tests call the wrapped layers directly."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - not called
        return x

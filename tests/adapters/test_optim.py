"""Per-factor learning rates and the CP preconditioner (against a dense least-squares solve)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cptensor_adapters import AdapterConfig, attach
from cptensor_adapters.optim import CPPreconditioner, create_optimizer, factor_param_groups

from .test_properties import ROLES, Toy


def _model(r: int, layout: str = "lorta", seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = Toy(2, 8, 2, 1, 4).double()
    cfg = AdapterConfig(
        r=r,
        alpha=3.0,
        layout=layout,
        targets=list(ROLES),
        roles=ROLES,
        num_heads=2,
        num_kv_heads=1,
        head_dim=4,
        init="random",
        seed=seed,
        **kw,
    )
    return attach(model, cfg)


def _dense_preconditioned(factors, grads, scaling, reg):
    """``G_n (V_n + δI)⁻¹`` with ``V_n = (s·KR)ᵀ(s·KR)``, KR the explicit Khatri–Rao
    product of the other factors (no Hadamard-of-Grams identity used)."""
    fs = [f.detach().numpy() for f in factors]
    r = fs[0].shape[1]
    vs = []
    for n in range(len(fs)):
        others = [f for k, f in enumerate(fs) if k != n]
        kr = others[0]
        for f in others[1:]:
            kr = np.einsum("ir,jr->ijr", kr, f).reshape(-1, r)
        kr = scaling * kr
        vs.append(kr.T @ kr)
    delta = reg * max(np.trace(v) for v in vs) / r
    return [np.linalg.solve(v + delta * np.eye(r), g.numpy().T).T for v, g in zip(vs, grads)]


@settings(max_examples=25, deadline=None)
@given(
    r=st.integers(1, 6),
    layout=st.sampled_from(["lorta", "lora", "layer_shared"]),
    reg=st.sampled_from([1e-6, 1e-3, 1e-1]),
    seed=st.integers(0, 10_000),
)
def test_preconditioned_gradient_equals_dense_solve(r, layout, reg, seed):
    model = _model(r, layout, seed)
    adapter = model.cp_adapters.adapters["default"]
    g = torch.Generator().manual_seed(seed)
    expected = []
    for group in adapter.groups:
        fs = group.factor_list()
        for f in fs:
            f.grad = torch.randn(f.shape, generator=g, dtype=f.dtype)
        expected.append(
            _dense_preconditioned(fs, [f.grad.clone() for f in fs], adapter.config.scaling, reg)
        )
    CPPreconditioner(model, reg=reg).step()
    for group, exp in zip(adapter.groups, expected):
        for f, e in zip(group.factor_list(), exp):
            np.testing.assert_allclose(f.grad.numpy(), e, rtol=1e-6, atol=1e-9)


def test_preconditioner_skips_frozen_and_gradless_factors():
    model = _model(3)
    factors = model.cp_adapters.adapters["default"].groups[0].factor_list()
    factors[0].grad = torch.ones_like(factors[0])
    CPPreconditioner(model).step()  # the others have no grad: left as None
    assert all(f.grad is None for f in factors[1:])
    model.cp_adapters.adapters["default"].requires_grad_(False)
    before = factors[0].grad.clone()
    CPPreconditioner(model).step()  # frozen: untouched
    assert torch.equal(factors[0].grad, before)


def test_param_groups_cover_every_trainable_parameter_once():
    model = _model(2, modules_to_save=["blocks.0.up"])
    groups = factor_param_groups(model, 0.01, lr_ratios={"in": 16, "layer": 0.5})
    seen = [id(p) for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters() if p.requires_grad)
    assert len(seen) == len(set(seen))
    lrs = {g["mode"]: g["lr"] for g in groups}
    assert lrs == pytest.approx(
        {"out": 0.01, "in": 0.16, "head": 0.01, "layer": 0.005, "matrix": 0.01, None: 0.01}
    )


def test_optimizer_step_is_adamw_on_preconditioned_gradients():
    a, b = _model(3, seed=1), _model(3, seed=1)
    x = torch.randn(5, 8, dtype=torch.float64)

    def loss(m):
        return sum((blk.wq(x) ** 2).sum() + blk.wo(torch.tanh(x)).sum() for blk in m.blocks)

    opt = create_optimizer(a, 1e-2, precondition=True, reg=1e-3, weight_decay=0.1)
    loss(a).backward()
    opt.step()
    loss(b).backward()
    CPPreconditioner(b, reg=1e-3).step()
    torch.optim.AdamW(factor_param_groups(b, 1e-2), lr=1e-2, weight_decay=0.1).step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb)


def test_schedulers_keep_the_ratios():
    model = _model(2)
    opt = create_optimizer(model, 1.0, lr_ratios={"out": 0.25})
    torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)
    assert {g["mode"]: g["lr"] for g in opt.param_groups}["out"] == pytest.approx(0.125)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lr_ratios": {"heads": 2.0}}, "unknown mode"),
        ({"lr_ratios": {"in": 0}}, "positive"),
        ({"reg": 0.0, "precondition": True}, "reg"),
        ({"optimizer_cls": torch.optim.LBFGS}, "closure"),
        ({"optimizer_cls": dict}, "Optimizer subclass"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_optimizer(_model(2), 1e-3, **kwargs)


def test_model_without_adapters():
    with pytest.raises(ValueError, match="no adapters"):
        factor_param_groups(torch.nn.Linear(2, 2), 1e-3)


def test_preconditioned_step_refuses_a_closure():
    model = _model(2)
    opt = create_optimizer(model, 1e-3, precondition=True)
    with pytest.raises(ValueError, match="closure"):
        opt.step(lambda: 0.0)


def test_no_public_name_is_shadowed_by_a_submodule():
    """The package is imported lazily: a submodule named like a re-exported function would
    replace it once imported (as grad_align's function once was by its module)."""
    import importlib
    import pkgutil
    import types

    import cptensor_adapters

    for info in pkgutil.iter_modules(cptensor_adapters.__path__):
        if info.name != "__main__":
            importlib.import_module(f"cptensor_adapters.{info.name}")
    for name in cptensor_adapters.__all__:
        assert not isinstance(getattr(cptensor_adapters, name), types.ModuleType), name

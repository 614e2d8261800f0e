"""Merging keeps what it added: base weights come back exactly whatever happens to the
factors while merged, ``disabled()`` really computes the base model, and the merge API
treats unknown names and removed adapters consistently."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import cptensor_adapters as cpa

from ._models import ARCHS, VOCAB, build_tiny

_TINY: dict[str, torch.nn.Module] = {}


def _tiny(arch: str) -> torch.nn.Module:
    if arch not in _TINY:
        _TINY[arch] = build_tiny(arch)
    return copy.deepcopy(_TINY[arch])


def _base_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        n: p.detach().clone()
        for n, p in model.named_parameters()
        if "cp_adapters" not in n and "modules_to_save" not in n
    }


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


@settings(max_examples=15, deadline=None)
@given(
    arch=st.sampled_from(ARCHS),
    how=st.sampled_from(["in_place", "load_state_dict", "optimizer"]),
    seed=st.integers(0, 1000),
)
def test_unmerge_restores_the_base_whatever_the_factors_did(arch, how, seed):
    model = cpa.attach(_tiny(arch), cpa.AdapterConfig(r=2, init="random", alpha=32, seed=seed))
    base = _base_weights(model)
    cpa.merge(model)
    factors = list(model.cp_adapters.parameters())
    if how == "in_place":
        with torch.no_grad():
            for p in factors:
                p.mul_(3.0).add_(0.5)
    elif how == "load_state_dict":
        state = {k: v * -2.0 for k, v in model.cp_adapters.state_dict().items()}
        model.cp_adapters.load_state_dict(state)
    else:
        ids = torch.randint(1, VOCAB, (2, 5), generator=torch.Generator().manual_seed(seed))
        opt = torch.optim.SGD(factors, lr=1e-2)
        cpa.unmerge(model)  # train unmerged, then merge again and change them once more
        model(input_ids=ids).last_hidden_state.mean().backward()
        opt.step()
        cpa.merge(model)
        with torch.no_grad():
            factors[0].add_(1.0)
    cpa.unmerge(model)
    assert _same(_base_weights(model), base)


def test_disabled_computes_the_base_and_restores_the_same_merge():
    model = cpa.attach(_tiny("gpt2"), cpa.AdapterConfig(r=2, init="random", alpha=32))
    ids = torch.tensor([[1, 2, 3, 4]])
    plain = _tiny("gpt2")
    y_base = plain(input_ids=ids).last_hidden_state
    cpa.merge(model)
    y_merged = model(input_ids=ids).last_hidden_state
    with cpa.disabled(model):
        torch.testing.assert_close(model(input_ids=ids).last_hidden_state, y_base)
        with torch.no_grad():  # factors changed inside the block...
            next(model.cp_adapters.parameters()).add_(1.0)
        with pytest.raises(ValueError, match="cannot merge inside disabled"):
            cpa.merge(model)
    # ...the merge that comes back is the one that was taken out
    torch.testing.assert_close(model(input_ids=ids).last_hidden_state, y_merged)


def test_unmerge_of_an_unknown_name_raises_like_merge():
    model = cpa.attach(_tiny("bert"), cpa.AdapterConfig(r=1))
    for fn in (cpa.merge, cpa.unmerge):
        with pytest.raises(KeyError, match="no adapter 'nope'"):
            fn(model, "nope")


def test_remove_a_merged_adapter_inside_disabled():
    plain = _tiny("llama")
    base = _base_weights(plain)
    model = cpa.attach(plain, cpa.AdapterConfig(r=2, init="random", alpha=32))
    cpa.merge(model)
    with cpa.disabled(model):
        cpa.remove_adapter(model, "default")  # raised KeyError when the block exited
    assert not hasattr(model, "cp_adapters")
    assert _same(_base_weights(model), base)


def test_a_head_split_typo_is_named():
    with pytest.raises(ValueError, match=r"head_split: \['zz'\] name no matrix"):
        cpa.attach(_tiny("bert"), cpa.AdapterConfig(r=1, head_split={"zz": "in"}))


def test_tied_modules_to_save_are_refused():
    """``wte`` of GPT-2 is tied to ``lm_head``: saving one left the other behind."""
    import transformers

    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_layer=1, n_head=4))
    for keys in (["wte"], ["wte", "lm_head"]):
        with pytest.raises(ValueError, match=r"'transformer\.wte' shares its weights with"):
            cpa.attach(copy.deepcopy(model), cpa.AdapterConfig(r=1, modules_to_save=keys))


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda m: cpa.set_active(m, None), TypeError, "names: expected an adapter name"),
        (lambda m: cpa.set_active(m, 5), TypeError, "names: expected"),
        (lambda m: cpa.as_cp(m, group=1.5), ValueError, "group: expected 0..0, got 1.5"),
        (lambda m: cpa.attach("str"), TypeError, "model: expected a torch.nn.Module"),
        (lambda m: cpa.merge(["m"]), TypeError, "model: expected a torch.nn.Module"),
    ],
)
def test_bad_api_arguments_are_named(call, exc, match):
    model = cpa.attach(_tiny("bert"), cpa.AdapterConfig(r=1))
    with pytest.raises(exc, match=match):
        call(model)

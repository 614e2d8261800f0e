"""Saving and loading: file contents, atomic writes, no pickle, loading beside other adapters."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors import safe_open

import cptensor_adapters as cpa
import cptensor_adapters.io as cio

from .conftest import hidden


def test_files_hold_each_shared_factor_once(tiny, tmp_path):
    m = cpa.attach(tiny("gpt2"), cpa.AdapterConfig(r=3, init="random"))
    cpa.save_adapter(m, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert meta["format"] == "cptensor_adapters" and meta["name"] == "default"
    assert meta["config"]["r"] == 3 and meta["grid"]["architecture"] == "gpt2"
    assert meta["groups"][0]["shape"] == [32, 8, 4, 2, 4]
    with safe_open(str(tmp_path / "adapter_model.safetensors"), "pt") as fh:
        keys = sorted(fh.keys())
        assert keys == [f"groups.0.{m_}" for m_ in sorted(("out", "in", "head", "layer", "matrix"))]
        assert tuple(fh.get_tensor("groups.0.out").shape) == (32, 3)
    raw = (tmp_path / "adapter_model.safetensors").read_bytes()
    assert not raw.startswith(b"\x80") and b"torch._utils" not in raw  # no pickle


def test_failed_write_leaves_previous_files_intact(tiny, tmp_path, monkeypatch):
    m = cpa.attach(tiny("bert"), cpa.AdapterConfig(r=2, init="random"))
    cpa.save_adapter(m, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with torch.no_grad():
        next(m.cp_adapters.parameters()).add_(1.0)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(cio, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        cpa.save_adapter(m, tmp_path)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before  # old files untouched, no temporary file left behind


def test_load_beside_another_adapter_and_switch(tiny, ids, tmp_path):
    base = tiny("llama")
    a = cpa.attach(copy.deepcopy(base), cpa.AdapterConfig(r=2, init="random", alpha=16, seed=1))
    ya = hidden(a, ids)
    cpa.save_adapter(a, tmp_path)
    b = cpa.attach(copy.deepcopy(base), cpa.AdapterConfig(r=3, layout="lora", init="random"))
    yb = hidden(b, ids)
    cpa.load_adapter(b, tmp_path, name="loaded")
    assert cpa.adapter_names(b) == ("default", "loaded")
    torch.testing.assert_close(hidden(b, ids), yb)
    cpa.set_active(b, "loaded")
    torch.testing.assert_close(hidden(b, ids), ya)
    assert not any(p.requires_grad for p in b.parameters())  # loaded frozen, default inactive
    with pytest.raises(ValueError, match="already has an adapter 'loaded'"):
        cpa.load_adapter(b, tmp_path, name="loaded")


def test_set_active_unmerges_adapters_it_deactivates(tiny, ids):
    base = tiny("bert")
    m = cpa.attach(copy.deepcopy(base), cpa.AdapterConfig(init="random", alpha=32))
    cpa.attach(m, cpa.AdapterConfig(init="random", seed=3, alpha=32), name="b")
    y_b = hidden(cpa.set_active(copy.deepcopy(m), "b"), ids)
    cpa.merge(m)
    with pytest.warns(UserWarning, match="unmerging 'default'"):
        cpa.set_active(m, "b")
    assert cpa.merged_adapters(m) == ()
    torch.testing.assert_close(hidden(m, ids), y_b, atol=1e-5, rtol=1e-5)

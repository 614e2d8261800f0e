"""``cptensor analyze`` under torchrun: two gloo processes, each reading its share of
the blocks, give the report of one process, written once by rank 0."""

from __future__ import annotations

import json
import socket
import sys

import numpy as np
import pytest

from ._analyze_worker import run
from ._models import build_tiny

pytest.importorskip("transformers")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny Llama (grouped-query attention: two CP tensors) with a saved LoRTA r=2
    adapter, and a base/tuned checkpoint pair whose delta is dense."""
    import torch

    import cptensor_adapters as cpa

    root = tmp_path_factory.mktemp("analyze")
    model = cpa.attach(build_tiny("llama"), cpa.AdapterConfig(r=2, init="random", seed=3))
    adapter = cpa.save_adapter(model, root / "adapter")
    base, tuned = build_tiny("llama"), build_tiny("llama")
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    base.save_pretrained(root / "base")
    tuned.save_pretrained(root / "tuned")
    return root, adapter


def test_analyze_over_two_processes_matches_one(inputs, monkeypatch):
    torch = pytest.importorskip("torch")
    dist = pytest.importorskip("torch.distributed")
    if sys.platform == "win32" or not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo unavailable")
    root, adapter = inputs
    common = ["--ranks", "1-2", "--starts", "2", "--max-iter", "100", "--seed", "0", "--quiet"]
    jobs = {
        "adapter": ["analyze-adapter", str(adapter)],
        "dense": ["analyze", str(root / "base"), str(root / "tuned")],
    }
    argvs = {k: [*v, "--out", str(root / f"{k}-2"), *common] for k, v in jobs.items()}
    ports = [_free_port() for _ in argvs]
    torch.multiprocessing.spawn(run, args=(2, ports, list(argvs.values())), nprocs=2, join=True)

    from cptensor_adapters.cli import main

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    for kind, argv in jobs.items():
        assert main([*argv, "--out", str(root / f"{kind}-1"), *common]) == 0
        one = json.loads((root / f"{kind}-1" / "report.json").read_text())
        two = json.loads((root / f"{kind}-2" / "report.json").read_text())
        assert one["recommended_rank"] == two["recommended_rank"], kind
        assert one["norm"] == pytest.approx(two["norm"], rel=1e-6)
        fits = [[row["fit"] for row in rep["cp"]] for rep in (one, two)]
        # a dense delta: the same starts, sums in another order; a low-rank one: random
        # starts on the shards where one process also has an SVD start
        np.testing.assert_allclose(fits[0], fits[1], atol=1e-6 if kind == "dense" else 1e-4)
        assert one["verdict"]["low_tensor_rank"] == two["verdict"]["low_tensor_rank"]


def test_distributed_flag_needs_torchrun(inputs, tmp_path, monkeypatch, capsys):
    from cptensor_adapters.cli import main

    _, adapter = inputs
    for var in ("WORLD_SIZE", "MASTER_ADDR"):
        monkeypatch.delenv(var, raising=False)
    argv = ["analyze-adapter", str(adapter), "--out", str(tmp_path / "r"), "--distributed"]
    assert main([*argv, "--ranks", "1"]) == 2
    assert "run under torchrun" in capsys.readouterr().err

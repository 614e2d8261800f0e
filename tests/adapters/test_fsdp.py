"""FSDP2 (``fully_shard``) with two CPU processes (gloo): training gives one process's
factors; saving, exporting, ``as_cp``, ``delta_weights``, merging and loading work on the
sharded model and agree with the unsharded one."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import cptensor_adapters as cpa

from ._fsdp_worker import batch, build_tiny, config, output, run, train

ARCHS_FSDP = ["llama", "gpt2"]


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory):
    dist = pytest.importorskip("torch.distributed")
    if sys.platform == "win32" or not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo unavailable")
    pytest.importorskip("torch.distributed.fsdp")
    tmp = tmp_path_factory.mktemp("fsdp")
    torch.multiprocessing.spawn(run, args=(2, str(tmp), ARCHS_FSDP), nprocs=2, join=True)
    return tmp


@pytest.mark.parametrize("arch", ARCHS_FSDP)
def test_fsdp2_matches_one_process(sharded_run: Path, arch: str) -> None:
    ranks = [load_file(str(sharded_run / f"{arch}-rank{r}.safetensors")) for r in (0, 1)]
    # the same training on one process, on the whole batch
    single = cpa.attach(build_tiny(arch), config())
    train(single, batch())
    want = output(single)
    close = {"atol": 1e-5, "rtol": 1e-4}
    for r, got in enumerate(ranks):
        torch.testing.assert_close(got["output"], want, **close, msg=f"rank {r}: output")
        for i in range(len(cpa.adapter_groups(single))):
            for j, f in enumerate(cpa.as_cp(single, group=i).factors):
                torch.testing.assert_close(got[f"as_cp.{i}.{j}"], f, **close)
        for k, v in cpa.delta_weights(single).items():
            torch.testing.assert_close(got[f"delta.{k}"], v, **close)
        # merge and unmerge on the sharded model leave the outputs unchanged
        torch.testing.assert_close(got["merged"], want, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(got["unmerged"], want, **close)
        # a sharded model loaded with the saved weights computes the trained one
        assert not torch.allclose(got["other_before"], want, atol=1e-3)
        torch.testing.assert_close(got["other_loaded"], want, **close)
    # what rank 0 wrote loads in a plain process and reproduces the sharded outputs
    plain = cpa.load_adapter(build_tiny(arch), sharded_run / arch / "adapter")
    torch.testing.assert_close(output(plain), want, **close)
    peft_dir = sharded_run / arch / "peft"
    exported = load_file(str(peft_dir / "adapter_model.safetensors"))
    with torch.no_grad():
        for mpath, layer in cpa.modules.iter_adapter_layers(single):
            a, b = layer.effective_factors("default")
            torch.testing.assert_close(
                exported[f"base_model.model.{mpath}.lora_A.weight"], a, **close
            )
            torch.testing.assert_close(
                exported[f"base_model.model.{mpath}.lora_B.weight"], b, **close
            )

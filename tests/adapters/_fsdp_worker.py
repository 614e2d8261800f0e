"""Worker for the FSDP2 test: runs in processes started by ``torch.multiprocessing.spawn``."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from safetensors.torch import save_file

import cptensor_adapters as cpa

from ._models import VOCAB, build_tiny

STEPS = 3


def config(seed: int = 11) -> cpa.AdapterConfig:
    return cpa.AdapterConfig(r=3, alpha=12, init="random", seed=seed)


def batch() -> torch.Tensor:
    return torch.randint(1, VOCAB, (4, 7), generator=torch.Generator().manual_seed(5))


def probe() -> torch.Tensor:
    return torch.randint(1, VOCAB, (2, 5), generator=torch.Generator().manual_seed(9))


def layers(model: torch.nn.Module, arch: str) -> torch.nn.ModuleList:
    return {"bert": lambda: model.encoder.layer, "gpt2": lambda: model.h}.get(
        arch, lambda: model.layers
    )()


def train(model: torch.nn.Module, ids: torch.Tensor) -> None:
    """``STEPS`` AdamW steps on the mean squared output (a mean over the batch: under
    FSDP, the average of the ranks' halves is the loss of the whole batch)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(STEPS):
        model(input_ids=ids).last_hidden_state.pow(2).mean().backward()
        opt.step()
        opt.zero_grad()


def output(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=probe()).last_hidden_state.detach().clone()


def run(rank: int, world: int, directory: str, archs: list[str]) -> None:
    from torch.distributed.fsdp import fully_shard

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{directory}/rendezvous", rank=rank, world_size=world
    )
    try:
        for arch in archs:
            out = os.path.join(directory, arch)
            model = cpa.attach(build_tiny(arch), config())
            for layer in layers(model, arch):
                fully_shard(layer)
            fully_shard(model)
            store = model.cp_adapters.adapters["default"].groups[0].factor_list()
            assert all(cpa.sharding.is_sharded(f) for f in store), "the factors are not sharded"
            train(model, batch().chunk(world)[rank])
            got = {"output": output(model)}
            cpa.save_adapter(model, os.path.join(out, "adapter"))
            cpa.save_as_peft_lora(model, os.path.join(out, "peft"))
            for i in range(len(cpa.adapter_groups(model))):
                for j, f in enumerate(cpa.as_cp(model, group=i).factors):
                    got[f"as_cp.{i}.{j}"] = f
            got |= {f"delta.{k}": v for k, v in cpa.delta_weights(model).items()}
            cpa.merge(model)
            got["merged"] = output(model)
            cpa.unmerge(model)
            got["unmerged"] = output(model)
            # a fresh sharded model of another seed, loaded with the saved weights
            other = cpa.attach(build_tiny(arch), config(seed=99))
            for layer in layers(other, arch):
                fully_shard(layer)
            fully_shard(other)
            got["other_before"] = output(other)
            cpa.load_adapter_weights(other, os.path.join(out, "adapter"))
            got["other_loaded"] = output(other)
            for k, v in got.items():
                assert not hasattr(v, "placements"), f"{k} is still a DTensor"
            save_file(
                {k: v.contiguous() for k, v in got.items()},
                os.path.join(directory, f"{arch}-rank{rank}.safetensors"),
            )
    finally:
        dist.destroy_process_group()

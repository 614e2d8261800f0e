"""Worker for the DDP test: runs in processes started by ``torch.multiprocessing.spawn``."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from safetensors.torch import save_file

import cptensor_adapters as cpa

from ._models import VOCAB, build_tiny


def adapted(arch: str, layout: str) -> torch.nn.Module:
    model = build_tiny(arch)
    cfg = cpa.AdapterConfig(r=3, alpha=12, layout=layout, init="random", seed=11)
    return cpa.attach(model, cfg)


def batch() -> torch.Tensor:
    return torch.randint(1, VOCAB, (4, 7), generator=torch.Generator().manual_seed(5))


def factor_grads(model: torch.nn.Module, ids: torch.Tensor, ddp: bool) -> dict[str, torch.Tensor]:
    net = torch.nn.parallel.DistributedDataParallel(model) if ddp else model
    out = net(input_ids=ids).last_hidden_state
    out.pow(2).mean().backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def run(rank: int, world: int, directory: str, combos: list[tuple[str, str]]) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{directory}/rendezvous", rank=rank, world_size=world
    )
    try:
        for arch, layout in combos:
            ids = batch().chunk(world)[rank]
            grads = factor_grads(adapted(arch, layout), ids, ddp=True)
            save_file(grads, os.path.join(directory, f"{arch}-{layout}-rank{rank}.safetensors"))
    finally:
        dist.destroy_process_group()

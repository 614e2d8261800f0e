"""Worker for the distributed-analysis test: one process of ``cptensor analyze`` as
``torchrun --nproc_per_node 2`` would start it (the environment variables torchrun sets)."""

from __future__ import annotations

import os


def run(rank: int, world: int, ports: list[int], jobs: list[list[str]]) -> None:
    """Run the CLI on each job's arguments, in this process, as rank ``rank`` of
    ``world``; each job joins a process group of its own (on its own port)."""
    import torch

    from cptensor_adapters.cli import main

    torch.set_num_threads(1)
    os.environ.update(
        {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world)}
        | {"MASTER_ADDR": "127.0.0.1", "HF_HUB_OFFLINE": "1"}
    )
    for port, argv in zip(ports, jobs):
        os.environ["MASTER_PORT"] = str(port)
        status = main(argv)
        if status != 0:
            raise SystemExit(f"rank {rank}: {argv} exited with {status}")

"""Worker for the sharded-fit test: runs in processes started by ``torch.multiprocessing``."""

from __future__ import annotations

import numpy as np

SHAPE = (12, 4, 3, 5, 4)  # a small LoRTA-shaped tensor: d, d_h, H, L, M
BLOCK_MODES = (0, 1, 2)


def data() -> np.ndarray:
    """A rank-3 CP tensor plus noise, the same in every process."""
    rng = np.random.default_rng(7)
    fs = [rng.standard_normal((n, 3)) for n in SHAPE]
    x = np.einsum("ir,jr,kr,lr,mr->ijklm", *fs)
    return x + 0.05 * rng.standard_normal(SHAPE)


def whole():
    from cptensor.structured import BlockTensor

    x = data()
    return BlockTensor(SHAPE, BLOCK_MODES, lambda key: x[:, :, :, key[0], key[1]])


def fit_kwargs() -> dict:
    return {"seed": 0, "max_iter": 40, "tol": 0.0}


def run(rank: int, world: int, directory: str) -> None:
    import os

    import torch
    import torch.distributed as dist

    from cptensor import fit_als
    from cptensor.distributed import SumOverProcesses

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{directory}/rendezvous", rank=rank, world_size=world
    )
    try:
        part = whole().shard(rank, world)
        read = []
        inner = part._get
        part._get = lambda key: read.append(key) or inner(key)  # which blocks it reads
        res = fit_als(SumOverProcesses(part), 3, **fit_kwargs())
        out = {f"f{i}": f for i, f in enumerate(res.cp.factors)}
        out["weights"] = np.asarray(res.cp.weights)
        out["fit"] = np.asarray([res.fit])
        out["read"] = np.asarray(sorted(set(read)))
        np.savez(os.path.join(directory, f"rank{rank}.npz"), **out)
    finally:
        dist.destroy_process_group()

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


def pairs() -> dict:
    """Each (l, m) block of :func:`data` as a rank-4 pair ``(U, V)``, (0, 1) a zero block."""
    x = data()
    d = SHAPE[0]
    out: dict = {}
    for l in range(SHAPE[3]):
        for m in range(SHAPE[4]):
            u, s, vt = np.linalg.svd(x[:, :, :, l, m].reshape(d, -1), full_matrices=False)
            out[(l, m)] = (u[:, :4] * s[:4], vt[:4].T)
    out[(0, 1)] = None
    return out


def whole_lowrank(read: list | None = None):
    """The :func:`pairs` as a LowRankBlockTensor; each key read is appended to ``read``."""
    from cptensor.structured import LowRankBlockTensor

    table = pairs()

    def get(key):
        if read is not None:
            read.append(key)
        return table[key]

    return LowRankBlockTensor(SHAPE, (0,), (1, 2), get)


def fit_kwargs(kind: str = "block") -> dict:
    # A LowRankBlockTensor offers gram() (an SVD start); its shards and SumOverProcesses
    # do not, so the one-process reference starts from the same random factors.
    extra = {"init": "random"} if kind == "lowrank" else {}
    return {"seed": 0, "max_iter": 40, "tol": 0.0, **extra}


def run(rank: int, world: int, directory: str, kind: str = "block") -> None:
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
        read: list = []
        if kind == "lowrank":
            part = whole_lowrank(read).shard(rank, world)
        else:
            part = whole().shard(rank, world)
            inner = part._get
            part._get = lambda key: read.append(key) or inner(key)  # which blocks it reads
        res = fit_als(SumOverProcesses(part), 3, **fit_kwargs(kind))
        out = {f"f{i}": f for i, f in enumerate(res.cp.factors)}
        out["weights"] = np.asarray(res.cp.weights)
        out["fit"] = np.asarray([res.fit])
        out["read"] = np.asarray(sorted(set(read)))
        out["n_reads"] = np.asarray([len(read)])
        np.savez(os.path.join(directory, f"{kind}_rank{rank}.npz"), **out)
    finally:
        dist.destroy_process_group()

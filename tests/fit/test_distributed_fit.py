"""A CP fit of a BlockTensor spread over two processes (gloo) equals one process's fit,
and each process reads only its own blocks."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from _distributed_worker import SHAPE, fit_kwargs, run, whole

from cptensor import fit_als
from cptensor.distributed import SumOverProcesses


def test_sum_over_processes_refuses_a_dense_array():
    with pytest.raises(TypeError, match="tensor operator"):
        SumOverProcesses(np.ones((2, 2)), reduce=lambda v: v)


def test_shard_arguments_checked():
    bt = whole()
    with pytest.raises(ValueError, match="count"):
        bt.shard(0, 10**6)
    with pytest.raises(ValueError, match="index"):
        bt.shard(2, 2)


def test_two_processes_fit_like_one(tmp_path):
    torch = pytest.importorskip("torch")
    dist = pytest.importorskip("torch.distributed")
    if sys.platform == "win32" or not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo unavailable")
    torch.multiprocessing.spawn(run, args=(2, str(tmp_path)), nprocs=2, join=True)
    single = fit_als(whole(), 3, **fit_kwargs())
    got = [np.load(tmp_path / f"rank{r}.npz") for r in (0, 1)]
    n_blocks = SHAPE[3] * SHAPE[4]
    reads = [set(map(tuple, g["read"])) for g in got]
    assert not reads[0] & reads[1] and len(reads[0]) + len(reads[1]) == n_blocks
    assert 0.9 < single.fit < 1.0
    for g in got:
        assert abs(float(g["fit"][0]) - single.fit) < 1e-9
        for i, f in enumerate(single.cp.factors):
            np.testing.assert_allclose(g[f"f{i}"], f, rtol=1e-7, atol=1e-9)
    for i in range(len(SHAPE)):  # both processes hold the same factors
        np.testing.assert_array_equal(got[0][f"f{i}"], got[1][f"f{i}"])

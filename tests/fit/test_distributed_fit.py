"""A CP fit of a BlockTensor or a LowRankBlockTensor spread over two processes (gloo)
equals one process's fit, and each process reads only its own blocks."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from _distributed_worker import SHAPE, fit_kwargs, run, whole, whole_lowrank

from cptensor import CPTensor, fit_als, mttkrp
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


@pytest.mark.parametrize("kind", ["block", "lowrank"])
def test_two_processes_fit_like_one(tmp_path, kind):
    torch = pytest.importorskip("torch")
    dist = pytest.importorskip("torch.distributed")
    if sys.platform == "win32" or not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo unavailable")
    torch.multiprocessing.spawn(run, args=(2, str(tmp_path), kind), nprocs=2, join=True)
    one = whole() if kind == "block" else whole_lowrank()
    single = fit_als(one, 3, **fit_kwargs(kind))
    got = [np.load(tmp_path / f"{kind}_rank{r}.npz") for r in (0, 1)]
    n_blocks = SHAPE[3] * SHAPE[4]
    reads = [set(map(tuple, g["read"])) for g in got]
    assert not reads[0] & reads[1] and len(reads[0]) + len(reads[1]) == n_blocks
    if kind == "lowrank":  # every pair read once, by the process that owns its block
        assert [int(g["n_reads"][0]) for g in got] == [len(r) for r in reads]
    assert 0.8 < single.fit < 1.0  # lowrank: rank-4 blocks, one of them zero
    for g in got:
        assert abs(float(g["fit"][0]) - single.fit) < 1e-9
        for i, f in enumerate(single.cp.factors):
            np.testing.assert_allclose(g[f"f{i}"], f, rtol=1e-7, atol=1e-9)
    for i in range(len(SHAPE)):  # both processes hold the same factors
        np.testing.assert_array_equal(got[0][f"f{i}"], got[1][f"f{i}"])


def _cp(seed: int, rank: int = 3) -> CPTensor:
    rng = np.random.default_rng(seed)
    return CPTensor(rng.standard_normal(rank), [rng.standard_normal((n, rank)) for n in SHAPE])


@pytest.mark.parametrize("count", [1, 2, 3, 10])
@pytest.mark.parametrize("loaded", [False, True])
def test_lowrank_shards_add_up_to_the_whole(count, loaded):
    read: list = []
    lr = whole_lowrank(read)
    if loaded:
        lr.norm()  # read before sharding: the shards take their pairs from it
    parts = [lr.shard(i, count) for i in range(count)]
    x = whole_lowrank().to_dense()
    cp, fs = _cp(1), list(_cp(2).factors)
    mats = [np.random.default_rng(3).standard_normal((2, n)) for n in SHAPE]
    for n in range(len(SHAPE)):
        want = mttkrp(x, fs, n)
        np.testing.assert_allclose(sum(mttkrp(p, fs, n) for p in parts), want)
        np.testing.assert_allclose(sum(p.mttkrp_all(fs)[n] for p in parts), want)
    np.testing.assert_allclose(sum(p.norm() ** 2 for p in parts), np.sum(x**2))
    dense_cp = np.einsum("r,ir,jr,kr,lr,mr->ijklm", cp.weights, *cp.factors)
    np.testing.assert_allclose(
        sum(p.residual_norm(cp) ** 2 for p in parts), np.sum((x - dense_cp) ** 2)
    )
    np.testing.assert_allclose(sum(p.inner_cp(cp) for p in parts), np.sum(x * dense_cp))
    np.testing.assert_allclose(sum(p.to_dense() for p in parts), x)
    want = np.einsum("ijklm,ai,bj,ck,dl,em->abcde", x, *mats)
    np.testing.assert_allclose(sum(p.multi_mode_product(mats) for p in parts), want)
    for mode in (0, 1, 2):  # row and column modes: Gram sums over blocks
        u = np.moveaxis(x, mode, 0).reshape(SHAPE[mode], -1)
        np.testing.assert_allclose(sum(p.gram(mode) for p in parts), u @ u.T)
    # each block read exactly once over all shards (or once by the whole, before)
    assert sorted(read) == sorted(whole_lowrank().keys())


def test_lowrank_shard_refuses_a_grid_gram_and_an_all_zero_shard():
    part = whole_lowrank().shard(0, 2)
    with pytest.raises(ValueError, match=r"gram\(3\) of a shard"):
        part.gram(3)
    with pytest.raises(ValueError, match=r"gram\(4\) of a shard"):  # as BlockTensor
        whole_lowrank().shard(0, 1).gram(4)
    with pytest.raises(ValueError, match=r"shard\(1, 20\): all 1 blocks .* are None"):
        whole_lowrank().shard(1, 20).norm()  # block (0, 1) is the zero block
    with pytest.raises(ValueError, match="count"):
        whole_lowrank().shard(0, 21)
    with pytest.raises(TypeError, match="index must be an int"):
        whole_lowrank().shard(0.0, 2)
    assert "shard=(1, 2)" in repr(whole_lowrank().shard(1, 2))


def test_lowrank_fit_of_one_shard_of_one_matches_whole():
    op = SumOverProcesses(whole_lowrank().shard(0, 1), reduce=lambda v: v)
    a = fit_als(op, 3, **fit_kwargs("lowrank"))
    b = fit_als(whole_lowrank(), 3, **fit_kwargs("lowrank"))
    assert abs(a.fit - b.fit) < 1e-12

"""BlockTensor and LowRankBlockTensor agree with the dense tensor they represent."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cptensor import (
    CPTensor,
    inner,
    is_operator,
    mttkrp,
    mttkrp_all,
    multi_mode_product,
    norm,
    reconstruct,
    unfold,
)
from cptensor.analysis import core_consistency, explained_variance
from cptensor.structured import BlockTensor, LowRankBlockTensor


@st.composite
def lortas(draw):
    """A LoRTA-like (d_out, d_h, H, L, M) low-rank-block tensor and its three forms.

    Blocks are (d_out × d_in) with d_in split row-major into (d_h, H); some blocks are
    zero and block ranks differ. Also randomly the split of the *output* instead."""
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    d_out, d_h, heads = draw(st.integers(2, 5)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    n_l, n_m = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    split_out = draw(st.booleans())
    d_in = d_h * heads
    pairs = {}
    for l in range(n_l):
        for m in range(n_m):
            s = int(rng.integers(0, 3))
            if s == 0 and (l, m) != (0, 0):
                pairs[(l, m)] = None
            else:
                s = max(s, 1)
                pairs[(l, m)] = (rng.standard_normal((d_out, s)), rng.standard_normal((d_in, s)))
    if split_out:  # blocks (d_h·H) × d_out: U's rows are split, V's are not
        shape = (d_out, d_h, heads, n_l, n_m)
        lr = LowRankBlockTensor(
            shape, (1, 2), (0,), {k: None if v is None else (v[1], v[0]) for k, v in pairs.items()}
        )
    else:
        shape = (d_out, d_h, heads, n_l, n_m)
        lr = LowRankBlockTensor(shape, (0,), (1, 2), pairs)
    x = lr.to_dense()

    def read(key):
        l, m = key
        b = x[:, :, :, l, m]
        return b.reshape(d_out, d_in) if not split_out else b.reshape(d_out, d_in).T.copy()

    if split_out:
        # stored (d_in, d_out) = axes (d_h, H, d_out) -> block_modes (1, 2, 0)
        bt = BlockTensor(shape, (1, 2, 0), read, block_shape=(d_in, d_out))
    else:
        bt = BlockTensor(shape, (0, 1, 2), read, block_shape=(d_out, d_in))
    return x, bt, lr, rng


def _factors(rng, shape, rank):
    return [rng.standard_normal((n, rank)) for n in shape]


@settings(max_examples=30, deadline=None)
@given(case=lortas(), rank=st.integers(1, 4))
def test_mttkrp_norms_inner_agree(case, rank) -> None:
    x, bt, lr, rng = case
    fs = _factors(rng, x.shape, rank)
    cp = CPTensor(rng.standard_normal(rank), fs)
    for op in (bt, lr):
        assert is_operator(op)
        np.testing.assert_allclose(op.to_dense(), x, atol=1e-12)
        for n in range(x.ndim):
            np.testing.assert_allclose(mttkrp(op, cp, n), mttkrp(x, cp, n), rtol=1e-9, atol=1e-9)
        for a, b in zip(mttkrp_all(op, fs), mttkrp_all(x, fs)):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)
        assert float(norm(op)) == pytest.approx(np.linalg.norm(x), rel=1e-10)
        assert float(inner(cp, op)) == pytest.approx(
            np.sum(x * reconstruct(cp)), rel=1e-8, abs=1e-8
        )
        assert op.inner_cp(cp) == pytest.approx(np.sum(x * reconstruct(cp)), rel=1e-8, abs=1e-8)
        assert op.residual_norm(cp) == pytest.approx(
            np.linalg.norm(x - reconstruct(cp)), rel=1e-7, abs=1e-7
        )
        for n in range(x.ndim):
            u = unfold(x, n)
            np.testing.assert_allclose(op.unfolding_gram(n), u @ u.T, rtol=1e-9, atol=1e-9)


@settings(max_examples=20, deadline=None)
@given(case=lortas(), rank=st.integers(1, 3))
def test_diagnostics_agree(case, rank) -> None:
    x, bt, lr, rng = case
    cp = CPTensor(rng.uniform(0.5, 2, rank), _factors(rng, x.shape, rank))
    ms = [rng.standard_normal((int(rng.integers(1, 4)), n)) for n in x.shape]
    cc = core_consistency(x, cp)
    ev = explained_variance(x, cp)
    for op in (bt, lr):
        np.testing.assert_allclose(
            op.multi_mode_product(ms), multi_mode_product(x, ms), rtol=1e-9, atol=1e-9
        )
        assert core_consistency(op, cp) == pytest.approx(cc, rel=1e-6, abs=1e-6)
        e = explained_variance(op, cp)
        assert e.total == pytest.approx(ev.total, rel=1e-7, abs=1e-7)
        np.testing.assert_allclose(e.per_component, ev.per_component, rtol=1e-8, atol=1e-8)


@settings(max_examples=10, deadline=None)
@given(case=lortas(), rank=st.integers(1, 3))
def test_fit_als_same_on_all_three_forms(case, rank) -> None:
    fit_mod = pytest.importorskip("cptensor.fit")
    x, bt, lr, rng = case
    init = CPTensor(None, _factors(rng, x.shape, rank))
    kw = {"max_iter": 15, "tol": 0.0, "line_search": False}
    ref = fit_mod.fit_als(x, init, **kw)
    scale = np.linalg.norm(x)
    for op in (bt, lr):
        res = fit_mod.fit_als(op, init, **kw)
        assert res.fit == pytest.approx(ref.fit, abs=1e-6)
        diff = np.linalg.norm(reconstruct(res.cp) - reconstruct(ref.cp))
        assert diff <= 1e-5 * scale


def test_torch_blocks_and_dtype_conversion() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 5, 3)).astype(np.float32)
    bt = BlockTensor(
        x.shape, (0, 1), lambda k: torch.from_numpy(x[:, :, k[0]]).half(), dtype=torch.float32
    )
    assert bt.dtype == torch.float32
    fs = [torch.from_numpy(rng.standard_normal((n, 2)).astype(np.float32)) for n in x.shape]
    xh = torch.from_numpy(x).half().float()
    for n in range(3):
        torch.testing.assert_close(mttkrp(bt, fs, n), mttkrp(xh, fs, n), rtol=1e-4, atol=1e-4)
    # without dtype=, a float16 block against float32 factors is an explicit error
    bt16 = BlockTensor(x.shape, (0, 1), lambda k: torch.from_numpy(x[:, :, k[0]]).half())
    with pytest.raises(TypeError, match=r"block \(0,\).*dtype="):
        mttkrp(bt16, fs, 0)
    lr = LowRankBlockTensor(
        (4, 5, 3), (0,), (1,), lambda k: (torch.ones(4, 1), torch.ones(5, 1) * k[0])
    )
    assert lr.dtype == torch.float32
    assert lr.norm() == pytest.approx(np.sqrt(20 * (0 + 1 + 4)))


def test_safetensors_blocks(tmp_path) -> None:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 6, 2, 3)).astype(np.float32)
    names = {(l, m): f"layers.{l}.m{m}" for l in range(2) for m in range(3)}
    save_file(
        {n: x[:, :, l, m].astype(np.float16) for (l, m), n in names.items()},
        str(tmp_path / "w.safetensors"),
    )
    bt = BlockTensor.from_safetensors(
        tmp_path / "w.safetensors", names, x.shape, (0, 1), dtype=np.float32
    )
    np.testing.assert_allclose(bt.to_dense(), x.astype(np.float16).astype(np.float32))
    assert bt.dtype == np.float32


def test_inconsistent_block_named_when_read() -> None:
    x = np.ones((3, 4, 2))
    bt = BlockTensor(x.shape, (0, 1), lambda k: x[:, :, 0] if k == (0,) else np.ones((3, 5)))
    fs = [np.ones((n, 2)) for n in x.shape]
    with pytest.raises(ValueError, match=r"block \(1,\) has shape \(3, 5\), expected \(3, 4\)"):
        mttkrp(bt, fs, 0)
    with pytest.raises(ValueError, match=r"block \(1,\)"):
        bt.norm()
    with pytest.raises(TypeError, match=r"block \(0,\) is a list"):
        BlockTensor(x.shape, (0, 1), lambda k: [[1.0]]).norm()


def test_bad_construction() -> None:
    with pytest.raises(KeyError, match="missing 1 of 2 blocks"):
        BlockTensor((3, 4, 2), (0, 1), {(0,): np.ones((3, 4))})
    with pytest.raises(KeyError, match="does not index"):
        BlockTensor((3, 4, 2), (0, 1), {(0,): np.ones((3, 4)), (5,): np.ones((3, 4))})
    with pytest.raises(ValueError, match="block_shape"):
        BlockTensor((3, 4, 2), (0, 1), lambda k: None, block_shape=(5, 3))
    with pytest.raises(ValueError, match="block_modes"):
        BlockTensor((3, 4, 2), (0, 0), lambda k: None)
    # pairs are read (and checked) on first use, as BlockTensor reads its blocks
    with pytest.raises(ValueError, match=r"block \(1,\): U has shape \(3, 2\)"):
        LowRankBlockTensor(
            (3, 4, 2),
            (0,),
            (1,),
            {(0,): (np.ones((3, 2)), np.ones((4, 2))), (1,): (np.ones((3, 2)), np.ones((5, 2)))},
        ).norm()
    with pytest.raises(ValueError, match="must not share"):
        LowRankBlockTensor((3, 4, 2), (0,), (0,), lambda k: None)
    with pytest.raises(ValueError, match="all blocks are None"):
        LowRankBlockTensor((3, 4, 2), (0,), (1,), lambda k: None).norm()
    lr = LowRankBlockTensor((3, 4, 2), (0,), (1,), lambda k: (np.ones((3, 1)), np.ones((4, 1))))
    with pytest.raises(ValueError, match=r"factors\[1\] has shape \(5, 2\)"):
        lr.mttkrp([np.ones((3, 2)), np.ones((5, 2)), np.ones((2, 2))], 0)
    with pytest.raises(ValueError, match="cp has shape"):
        lr.residual_norm(CPTensor(None, [np.ones((3, 1)), np.ones((4, 1))]))
    with pytest.raises(ValueError, match=r"cp has shape .* but x has shape"):
        core_consistency(lr, CPTensor(None, [np.ones((3, 1)), np.ones((4, 1)), np.ones((3, 1))]))


@pytest.mark.parametrize("cache_bytes", [0, 2**30])
def test_block_cache_follows_factor_changes(cache_bytes) -> None:
    """ALS-like use: one factor changes between calls (also in place); always exact."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 4, 3, 2, 3))
    bt = BlockTensor(x.shape, (0, 1, 2), lambda k: x[:, :, :, k[0], k[1]], cache_bytes=cache_bytes)
    fs = _factors(rng, x.shape, 3)
    for sweep in range(2):
        for n in range(x.ndim):
            np.testing.assert_allclose(bt.mttkrp(fs, n), mttkrp(x, fs, n), rtol=1e-10, atol=1e-10)
            if sweep == 0:
                fs[n] = rng.standard_normal(fs[n].shape)  # a new array
            else:
                fs[n] *= 1.5  # mutated in place: the cache must notice
    for a, b in zip(bt.mttkrp_all(fs), mttkrp_all(x, fs)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
    # one block mode only (the other side of the split is empty)
    bt1 = BlockTensor(x.shape, (2,), lambda k: x[k[0], k[1], :, k[2], k[3]])
    for n in range(x.ndim):
        np.testing.assert_allclose(bt1.mttkrp(fs, n), mttkrp(x, fs, n), rtol=1e-10, atol=1e-10)


def test_safetensors_bfloat16_torch_and_unknown_name(tmp_path) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    x = torch.randn(4, 6, 2)
    save_file(
        {f"b{i}": x[:, :, i].contiguous().to(torch.bfloat16) for i in range(2)},
        str(tmp_path / "w.safetensors"),
    )
    bt = BlockTensor.from_safetensors(
        tmp_path / "w.safetensors",
        lambda k: f"b{k[0]}",
        x.shape,
        (0, 1),
        dtype=torch.float32,
        framework="pt",
    )
    torch.testing.assert_close(bt.to_dense(), x.to(torch.bfloat16).float())
    with pytest.raises(TypeError, match="bfloat16"):
        BlockTensor.from_safetensors(
            tmp_path / "w.safetensors", lambda k: f"b{k[0]}", x.shape, (0, 1)
        ).norm()
    bad = BlockTensor.from_safetensors(
        tmp_path / "w.safetensors",
        lambda k: "nope",
        x.shape,
        (0, 1),
        dtype=torch.float32,
        framework="pt",
    )
    with pytest.raises(KeyError, match="'nope' is not in"):
        bad.norm()


def test_lowrank_head_order_and_transposed_blocks() -> None:
    """col_modes (2, 1) reads d_in as (H, d_h); (A.T, B) gives the transposed block."""
    rng = np.random.default_rng(3)
    d, d_h, heads = 5, 3, 2
    b, a = rng.standard_normal((d, 2)), rng.standard_normal((2, d_h * heads))
    lr = LowRankBlockTensor((d, d_h, heads, 1), (0,), (2, 1), {(0,): (b, a.T)})
    expected = (b @ a).reshape(d, heads, d_h).transpose(0, 2, 1)
    np.testing.assert_allclose(lr.to_dense()[..., 0], expected)
    # heads split the output (Q, K, V): ΔW = B A is (d_h·H) × d; the tensor block is ΔWᵀ
    b_out, a_in = rng.standard_normal((d_h * heads, 2)), rng.standard_normal((2, d))
    lr_t = LowRankBlockTensor((d, d_h, heads, 1), (0,), (1, 2), {(0,): (a_in.T, b_out)})
    np.testing.assert_allclose(lr_t.to_dense()[..., 0], (b_out @ a_in).T.reshape(d, d_h, heads))

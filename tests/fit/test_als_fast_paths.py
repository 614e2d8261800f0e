"""The fast paths of ALS against the general ones they stand in for.

NumPy's normal-equation solve (LAPACK called directly) against the torch one; the CPU
path of torch data (small algebra and the dimension tree on NumPy views) against the
device path (all in torch, as on a GPU) and against NumPy; the shortcuts of the set-up
(norm, finiteness, rescaling) and the reused scratch memory.
"""

from __future__ import annotations

import numpy as np
import pytest
from fit_testutil import planted
from hypothesis import given, settings
from hypothesis import strategies as st

import cptensor as ct
from cptensor.fit import als
from cptensor.fit._common import (
    magnitude_scale,
    norm_within_scale,
    scratch,
    sum_squares64,
)
from cptensor.fit._solve import SolveLog, solve_normal

torch = pytest.importorskip("torch")


def _normal_equations(seed: int, rows: int, rank: int, deficient: int, complex_: bool):
    """``m`` (rows × rank) and a Gram-like V of rank ``rank - deficient``."""
    rng = np.random.default_rng(seed)

    def draw(*shape):
        a = rng.standard_normal(shape)
        return a + 1j * rng.standard_normal(shape) if complex_ else a

    b = draw(max(rank - deficient, 0) + 1, rank)
    if deficient:
        b[-1] = 0.0
        b = b[: rank - deficient] if rank > deficient else b[:0]
    v = b.T @ b.conj() if b.size else np.zeros((rank, rank), b.dtype)
    return draw(rows, rank), v


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    rows=st.integers(1, 12),
    rank=st.integers(1, 8),
    deficient=st.integers(0, 3),
    complex_=st.booleans(),
    ridge=st.sampled_from([0.0, 0.5]),
)
def test_numpy_solve_matches_the_torch_solve(seed, rows, rank, deficient, complex_, ridge):
    m, v = _normal_equations(seed, rows, rank, min(deficient, rank), complex_)
    log_np, log_t = SolveLog(), SolveLog()
    a_np = solve_normal(m, v, log_np, 0, ridge)
    a_t = solve_normal(torch.from_numpy(m), torch.from_numpy(v), log_t, 0, ridge)
    assert isinstance(a_np, np.ndarray) and np.all(np.isfinite(a_np))
    scale = max(1.0, float(np.max(np.abs(a_np), initial=0.0)))
    np.testing.assert_allclose(a_np, a_t.numpy(force=True), rtol=0, atol=1e-8 * scale)
    assert log_np == log_t  # same decisions: Cholesky, pseudo-inverse or zero


def test_numpy_solve_solves_and_reports_like_before():
    rng = np.random.default_rng(0)
    b = rng.standard_normal((20, 4))
    v = b.T @ b
    m = rng.standard_normal((6, 4))
    log = SolveLog()
    np.testing.assert_allclose(solve_normal(m, v, log, 0) @ v, m, atol=1e-10)
    assert log.notes() == []
    assert not solve_normal(m, np.zeros((4, 4)), log, 2).any()
    v_nan = v.copy()
    v_nan[1, 1] = np.inf
    assert not solve_normal(m, v_nan, log, 3).any()
    assert log.zero_solves == 2 and log.modes == {2, 3}


def _force_device_path(monkeypatch):
    """Make torch CPU tensors take the path of accelerator tensors (all in torch)."""
    from cptensor import products

    monkeypatch.setattr(als, "_on_host", lambda a: False)
    monkeypatch.setattr(products, "_host_empty", lambda shape, like: None)


@pytest.mark.parametrize(
    "shape, kwargs",
    [
        ((6, 7, 8), {}),
        ((5, 4, 3, 6), {"ridge": 0.1}),
        ((6, 5, 4, 3, 2), {"fixed_modes": (1,)}),
        ((6, 7, 5), {"nonnegative": (0,)}),
        ((6, 7, 5), {"l2_reg": 0.01}),
    ],
)
def test_torch_cpu_path_matches_device_path_and_numpy(monkeypatch, shape, kwargs):
    x, _ = planted(shape, 3, seed=5, noise=0.05)
    start = ct.init.random(shape, 3, seed=1)
    start_t = ct.CPTensor(
        torch.from_numpy(start.weights), [torch.from_numpy(f) for f in start.factors]
    )
    opts = dict(max_iter=15, tol=0, line_search=True, **kwargs)
    ref = ct.fit_als(x, start, **opts)
    cpu = ct.fit_als(torch.from_numpy(x), start_t, **opts)
    with monkeypatch.context() as mp:
        _force_device_path(mp)
        dev = ct.fit_als(torch.from_numpy(x), start_t, **opts)
    for res in (cpu, dev):
        assert res.n_iter == ref.n_iter
        np.testing.assert_allclose(res.history, ref.history, rtol=1e-10)
        np.testing.assert_allclose(res.cp.weights.numpy(), ref.cp.weights, rtol=1e-8)
        for f, g in zip(res.cp.factors, ref.cp.factors):
            assert isinstance(f, torch.Tensor) and f.dtype == torch.float64
            np.testing.assert_allclose(f.numpy(), g, atol=1e-8)


def test_torch_cpu_float32_and_complex_paths_match_the_device_path(monkeypatch):
    x, _ = planted((6, 7, 8), 2, seed=3, noise=0.01)
    rng = np.random.default_rng(2)
    xc = x + 0.5j * rng.standard_normal(x.shape)
    for data, dtype, tol in ((x, torch.float32, 1e-4), (xc, torch.complex128, 1e-8)):
        t = torch.from_numpy(data).to(dtype)
        start = ct.init.random(data.shape, 2, like=t, seed=0)
        opts = dict(max_iter=8, tol=0, line_search=False)
        cpu = ct.fit_als(t, start, **opts)
        with monkeypatch.context() as mp:
            _force_device_path(mp)
            dev = ct.fit_als(t, start, **opts)
        assert cpu.cp.factors[0].dtype == dtype
        np.testing.assert_allclose(cpu.history, dev.history, rtol=tol)
        assert ct.reconstruct(cpu.cp).numpy() == pytest.approx(
            ct.reconstruct(dev.cp).numpy(), abs=tol * float(np.abs(data).max())
        )


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64])
def test_residual_matches_direct_difference(dtype):
    rng = np.random.default_rng(4)
    shape = (7, 6, 5, 4)
    x = rng.standard_normal(shape).astype(dtype)
    fs = [rng.standard_normal((n, 3)).astype(dtype) for n in shape]
    lam = rng.random(3).astype(dtype) + 0.5
    exact = float(
        np.sum(np.abs(x.astype(np.complex128) - ct.reconstruct(ct.CPTensor(lam, fs))) ** 2)
    )
    for xb, fb, lb in (
        (x, fs, lam),
        (torch.from_numpy(x), [torch.from_numpy(f) for f in fs], torch.from_numpy(lam)),
    ):
        got = als._Dense(xb, shape).residual_sq(fb, lb)
        assert got == pytest.approx(exact, rel=1e-5 if dtype != np.float64 else 1e-12)


def test_torch_khatri_rao_in_numpy_memory_matches_numpy():
    from cptensor.products import _khatri_rao_t, _matmul

    rng = np.random.default_rng(6)
    fs = [rng.standard_normal((n, 4)) for n in (3, 5, 2)]
    ref = _khatri_rao_t(fs, None, fs[0])
    got = _khatri_rao_t([torch.from_numpy(f) for f in fs], None, torch.from_numpy(fs[0]))
    assert isinstance(got, torch.Tensor)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-14)
    a, b = rng.standard_normal((4, 30)), rng.standard_normal((30, 7))
    np.testing.assert_allclose(_matmul(torch.from_numpy(a), torch.from_numpy(b)).numpy(), a @ b)


@settings(max_examples=200, deadline=None)
@given(
    exponent=st.integers(-80, 80),
    size=st.integers(1, 50),
    seed=st.integers(0, 2**16),
    spike=st.booleans(),
)
def test_norm_within_scale_implies_no_rescaling(exponent, size, seed, spike):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(size) * 2.0**exponent
    if spike:  # one entry far above the others: max|a| near ‖a‖
        a[0] = 2.0 ** (exponent + 20)
    norm_sq = sum_squares64(np, a)
    if norm_within_scale(norm_sq, size):
        assert magnitude_scale(np, a) == 1.0


def test_norm_within_scale_at_the_edges():
    assert norm_within_scale(1.0, 10**6)
    assert not norm_within_scale(0.0, 1)  # zero data: magnitude_scale decides
    assert not norm_within_scale(float("inf"), 1)
    assert not norm_within_scale(2.0**60, 1)  # max|a| may be 2^30: rescaled
    assert not norm_within_scale(2.0**-62 * 100, 100)  # max|a| may be below 2^-31


def test_scratch_is_reused_per_name_and_grows():
    a = scratch("test-a", (4, 5), np.float64)
    b = scratch("test-b", (4, 5), np.float64)
    assert not np.shares_memory(a, b)
    a[:] = 1.0
    again = scratch("test-a", (2, 3), np.float32)
    assert again.shape == (2, 3) and again.dtype == np.float32 and np.shares_memory(a, again)
    big = scratch("test-a", (100, 100), np.complex128)
    assert big.shape == (100, 100) and big.flags.c_contiguous


def test_fit_of_data_with_nan_and_inf_still_checked():
    x, _ = planted((5, 6, 7), 2, seed=1)
    x[0, 0, 0] = np.inf
    with pytest.raises(ct.errors.CPTensorError, match="infinite"):
        ct.fit_als(x, 2, seed=0)
    x[0, 0, 0] = np.nan
    with pytest.warns(UserWarning, match="NaN"):
        res = ct.fit_als(x, 2, seed=0, max_iter=5)
    assert np.isfinite(res.rel_error)

"""ALS: exact errors, recovery, backends, options, robustness."""

from __future__ import annotations

import numpy as np
import pytest
from fit_testutil import planted, score, true_rel_error

import cptensor as ct
from cptensor.fit import CPFit, fit_als


def test_result_type_and_arrangement():
    x, _ = planted((8, 9, 10), 3, seed=0, noise=0.05)
    res = fit_als(x, 3, seed=0)
    assert isinstance(res, CPFit)
    w = res.cp.weights
    assert np.all(np.diff(w) <= 0)  # arranged
    for f in res.cp.factors:
        np.testing.assert_allclose(np.linalg.norm(f, axis=0), 1.0)
    assert res.fit == pytest.approx(1 - res.rel_error)
    assert len(res.history) == res.n_iter and res.seconds > 0
    assert res.converged and "tol" in res.stop_reason
    with pytest.raises(AttributeError):
        res.fit = 0.0  # frozen


@pytest.mark.parametrize("noise", [1e-2, 1e-4, 1e-6])
def test_reported_error_is_exact_float64(noise):
    x, _ = planted((10, 11, 12), 3, seed=1, noise=noise)
    res = fit_als(x, 3, seed=0, tol=1e-12)
    true = true_rel_error(x, res.cp)
    assert abs(res.rel_error - true) <= 1e-7 * true
    assert res.rel_error < 1.5 * noise


def test_exact_fit_float64_and_float32():
    x, _ = planted((10, 11, 12), 3, seed=2, collinearity=0.3)
    res = fit_als(x, 3, seed=0, tol=0, max_iter=300)
    assert res.rel_error < 1e-6 and res.converged and "exact" in res.stop_reason
    assert true_rel_error(x, res.cp) < 1e-6
    res32 = fit_als(x.astype(np.float32), 3, seed=0)
    assert res32.cp.dtype == np.float32
    # float32 round-off (~1e-6), not the ~1e-3 floor of the cheap formula
    assert res32.rel_error < 2e-5
    assert true_rel_error(x, res32.cp) < 2e-5
    assert res32.info["rel_error_method"] == "direct residual"


def test_recovery_from_svd_in_most_cases():
    good = 0
    cases = [((12, 13, 14), 3), ((10, 12, 9), 4), ((8, 9, 10, 6), 3)]
    total = 0
    for shape, rank in cases:
        for seed in range(3):
            x, truth = planted(shape, rank, seed=seed, collinearity=0.5, noise=1e-3)
            res = fit_als(x, rank, init="svd", seed=seed, tol=1e-10)
            total += 1
            good += score(res.cp, truth) >= 0.99
    assert good >= total - 1


def test_noiseless_recovery_is_exact():
    x, truth = planted((9, 10, 11, 5), 4, seed=3, collinearity=0.4)
    res = fit_als(x, 4, seed=0, tol=0, max_iter=400)
    assert res.rel_error < 1e-6
    assert score(res.cp, truth) > 0.9999


def test_same_seed_same_result():
    x, _ = planted((7, 8, 9), 3, seed=4, noise=0.1)
    a = fit_als(x, 3, init="random", seed=11, max_iter=30)
    b = fit_als(x, 3, init="random", seed=11, max_iter=30)
    for p, q in zip(a.cp.factors, b.cp.factors):
        np.testing.assert_array_equal(p, q)
    assert a.history == b.history


@pytest.mark.parametrize("init", ["svd", "random", "orthogonal"])
def test_inits_and_start_from_cptensor(init):
    x, _ = planted((6, 7, 8), 2, seed=5, noise=0.01)
    res = fit_als(x, 2, init=init, seed=0)
    assert res.rel_error < 0.02
    again = fit_als(x, res.cp, max_iter=5)  # rank given as a CPTensor start
    assert again.rel_error <= res.rel_error * (1 + 1e-9)
    assert fit_als(x, 2, init=res.cp, max_iter=2).info["init"] == "given CPTensor"


def test_torch_backends_agree_with_numpy():
    torch = pytest.importorskip("torch")
    x, _ = planted((7, 8, 9), 3, seed=6, noise=0.01)
    ref = fit_als(x, 3, seed=0, tol=1e-10)
    r64 = fit_als(torch.from_numpy(x), 3, seed=0, tol=1e-10)
    assert isinstance(r64.cp.factors[0], torch.Tensor) and r64.cp.dtype == torch.float64
    assert r64.rel_error == pytest.approx(ref.rel_error, rel=1e-8)
    for a, b in zip(r64.cp.factors, ref.cp.factors):
        np.testing.assert_allclose(a.numpy(), b, atol=1e-6)
    r32 = fit_als(torch.from_numpy(x).float(), 3, seed=0)
    assert r32.cp.dtype == torch.float32
    assert r32.rel_error == pytest.approx(ref.rel_error, rel=1e-3)
    np.testing.assert_allclose(r32.cp.weights.double().numpy(), ref.cp.weights, rtol=1e-3)


@pytest.mark.skipif(
    not __import__("importlib").util.find_spec("torch")
    or not __import__("torch").cuda.is_available(),
    reason="needs a CUDA GPU",
)
def test_cuda_fit_stays_on_gpu():
    import torch

    x, _ = planted((20, 21, 22), 3, seed=7, noise=0.01)
    xg = torch.from_numpy(x).cuda()
    res = fit_als(xg, 3, seed=0)
    assert res.cp.factors[0].device.type == "cuda"
    assert res.rel_error == pytest.approx(fit_als(x, 3, seed=0).rel_error, rel=1e-6)
    res32 = fit_als(xg.float(), 3, seed=0, init="random")
    assert res32.cp.weights.device.type == "cuda" and res32.rel_error < 0.02


def test_never_nan_rank_above_mode_sizes():
    x = np.random.default_rng(0).standard_normal((2, 3, 4))
    res = fit_als(x, 7, seed=0, max_iter=50)
    assert all(np.all(np.isfinite(f)) for f in res.cp.factors)
    assert np.all(np.isfinite(res.cp.weights)) and np.isfinite(res.rel_error)
    assert res.rel_error < 1e-3


def test_never_nan_duplicated_components():
    x, truth = planted((5, 6, 7), 2, seed=8)
    f = [np.concatenate([a, a], axis=1) for a in truth.factors]  # columns repeated
    start = ct.CPTensor(None, f)
    res = fit_als(x, start, max_iter=20, line_search=False)
    assert all(np.all(np.isfinite(a)) for a in res.cp.factors)
    assert "normal equations" in res.stop_reason
    assert res.info["solver"]


def test_zero_and_constant_tensors():
    res = fit_als(np.zeros((3, 4, 5)), 2, seed=0)
    assert res.rel_error == 0.0 and res.converged and "zero" in res.stop_reason
    assert np.all(res.cp.weights == 0) and all(np.all(np.isfinite(f)) for f in res.cp.factors)
    c = np.full((4, 5, 6), 3.0)
    res = fit_als(c, 3, seed=0)
    assert all(np.all(np.isfinite(f)) for f in res.cp.factors)
    assert res.rel_error < 1e-10
    assert "normal equations" in res.stop_reason  # rank 3 on a rank-1 tensor


def test_fixed_modes_are_not_updated():
    x, _ = planted((6, 7, 8), 2, seed=9, noise=0.05)
    start = ct.init.random(x.shape, 2, seed=1)
    res = fit_als(x, start, fixed_modes=(1,), max_iter=20, line_search=False)
    got = res.cp.factors[1]
    ref = start.factors[1] / np.linalg.norm(start.factors[1], axis=0)
    # same columns up to order and sign
    c = np.abs(got.T @ ref)
    np.testing.assert_allclose(np.sort(c.max(axis=1)), 1.0, atol=1e-12)
    free = fit_als(x, start, max_iter=20)
    assert free.rel_error < res.rel_error


def test_nonnegative_hals():
    rng = np.random.default_rng(10)
    truth = ct.CPTensor(None, [rng.random((n, 3)) for n in (8, 9, 10)])
    x = ct.reconstruct(truth)
    res = fit_als(x, 3, nonnegative=True, seed=0, max_iter=500, tol=1e-12)
    assert all(np.all(f >= 0) for f in res.cp.factors)
    assert res.rel_error < 1e-3
    assert np.all(np.diff(res.history) >= -1e-12)


def test_line_search_accepts_only_improvements():
    x, _ = planted((15, 16, 17), 4, seed=11, collinearity=0.85, noise=0.01)
    plain = fit_als(x, 4, init="random", seed=2, line_search=False, max_iter=150, tol=0)
    ls = fit_als(x, 4, init="random", seed=2, line_search=True, max_iter=150, tol=0)
    info = ls.info["line_search"]
    assert info["tried"] > 0 and 0 < info["accepted"] <= info["tried"]
    assert np.all(np.diff(ls.history) >= -1e-10)  # accepted steps never raise the loss
    assert ls.fit >= plain.fit - 1e-6


def test_callback_stops_and_sees_state():
    x, _ = planted((6, 7, 8), 2, seed=12, noise=0.1)
    seen = []

    def cb(state):
        seen.append((state.iteration, state.fit))
        assert isinstance(state.cp, ct.CPTensor)
        return state.iteration >= 3

    res = fit_als(x, 2, seed=0, callback=cb, tol=0)
    assert res.n_iter == 3 and "callback" in res.stop_reason and not res.converged
    assert [s[0] for s in seen] == [1, 2, 3]


def test_progress_bar(capsys):
    pytest.importorskip("tqdm")
    x, _ = planted((5, 6, 7), 2, seed=13, noise=0.1)
    fit_als(x, 2, seed=0, progress=True, max_iter=5, tol=0)
    assert "fit=" in capsys.readouterr().err


def test_max_iter_and_tol_zero():
    x, _ = planted((5, 6, 7), 2, seed=14, noise=0.1)
    res = fit_als(x, 2, seed=0, tol=0, max_iter=7)
    assert res.n_iter == 7 and not res.converged and "max_iter" in res.stop_reason
    zero = fit_als(x, 2, seed=0, max_iter=0)
    assert zero.n_iter == 0 and np.isfinite(zero.rel_error)


def test_ridge_is_applied():
    x, _ = planted((6, 7, 8), 2, seed=15, noise=0.01)
    plain = fit_als(x, 2, seed=0)
    ridged = fit_als(x, 2, seed=0, ridge=10.0)
    assert ridged.rel_error > plain.rel_error


def test_dimension_tree_makes_two_passes_per_sweep(monkeypatch):
    from cptensor.fit import als

    calls = {"left": 0, "right": 0}
    left, right = als._Dense.partial_left, als._Dense.partial_right

    def count_left(self, factors):
        calls["left"] += 1
        return left(self, factors)

    def count_right(self, factors):
        calls["right"] += 1
        return right(self, factors)

    monkeypatch.setattr(als._Dense, "partial_left", count_left)
    monkeypatch.setattr(als._Dense, "partial_right", count_right)
    x, _ = planted((6, 5, 4, 3, 2), 3, seed=16, noise=0.1)
    res = fit_als(x, 3, seed=0, max_iter=10, tol=0, line_search=False)
    assert res.n_iter == 10
    assert calls == {"left": 10, "right": 10}  # two GEMMs over x per sweep, whatever N
    ref = fit_als(x, 3, seed=0, max_iter=10, tol=0, line_search=False)
    assert ref.rel_error == pytest.approx(res.rel_error)


@pytest.mark.parametrize("shape", [(3, 4), (5, 4, 3), (4, 3, 5, 2), (3, 2, 4, 2, 3)])
def test_tree_mttkrps_match_reference(shape):
    from cptensor.fit.als import _Dense

    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    fs = [rng.standard_normal((n, 3)) for n in shape]
    d = _Dense(x, shape)
    p_left, p_right = d.partial_left(fs), d.partial_right(fs)
    for n in range(len(shape)):
        if n < d.k:
            got = d.finish_left(p_left, fs, n)
        else:
            got = d.finish_right(p_right, fs, n)
        ref = ct.unfold(x, n) @ ct.khatri_rao(fs, skip=n)
        np.testing.assert_allclose(got, ref, atol=1e-10)


@pytest.mark.parametrize("shape", [(5, 1, 4), (7, 5, 6, 4), (4, 3, 5, 2, 6), (2, 3, 1, 2, 2, 3)])
def test_sweeps_equal_textbook_als(shape):
    """The dimension tree updates every mode with the latest factors of all the others:
    six sweeps equal six sweeps of textbook ALS (one full MTTKRP per mode)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape)
    start = ct.init.random(shape, 2, seed=1)
    fs = [np.array(f) for f in start.factors]
    fs[0] = fs[0] * np.asarray(start.weights)
    for _ in range(6):
        for n in range(len(shape)):
            v = np.ones((2, 2))
            for k, f in enumerate(fs):
                if k != n:
                    v = v * (f.T @ f)
            fs[n] = ct.unfold(x, n) @ ct.khatri_rao(fs, skip=n) @ np.linalg.pinv(v)
    ref = ct.reconstruct(ct.CPTensor(np.ones(2), fs))
    res = fit_als(x, start, max_iter=6, tol=0, line_search=False)
    np.testing.assert_allclose(ct.reconstruct(res.cp), ref, atol=1e-10 * np.abs(ref).max())

"""Gradient-based CP (cp_opt / cp_wopt style) through torch autograd."""

from __future__ import annotations

import numpy as np
import pytest
from fit_testutil import DenseOperator, planted, score, true_rel_error

import cptensor as ct
from cptensor.fit import CPFit, fit_gradient

torch = pytest.importorskip("torch")


def test_lbfgs_numpy_in_numpy_out_exact():
    x, truth = planted((8, 9, 10), 3, seed=0, collinearity=0.2)
    res = fit_gradient(x, 3, seed=0, max_iter=300)
    assert isinstance(res, CPFit) and isinstance(res.cp.factors[0], np.ndarray)
    assert res.cp.dtype == np.float64
    assert res.rel_error < 1e-4 and res.converged
    assert res.rel_error == pytest.approx(true_rel_error(x, res.cp), rel=1e-7)
    assert score(res.cp, truth) > 0.99
    assert np.all(np.diff(res.cp.weights) <= 0)


def test_torch_float32_stays_torch_and_adam_runs():
    x, _ = planted((6, 7, 8), 2, seed=1, noise=0.01)
    xt = torch.from_numpy(x).float()
    res = fit_gradient(xt, 2, seed=0)
    assert isinstance(res.cp.weights, torch.Tensor) and res.cp.dtype == torch.float32
    assert res.rel_error < 0.02
    adam = fit_gradient(x, 2, optimizer="adam", lr=0.05, max_iter=400, seed=0)
    assert adam.rel_error < 0.1 and len(adam.history) == adam.n_iter


def test_mask_and_weights():
    x, _ = planted((7, 8, 9), 2, seed=2)
    mask = np.random.default_rng(0).random(x.shape) > 0.3
    res = fit_gradient(x, 2, mask=mask, seed=0, max_iter=500)
    assert res.rel_error < 1e-4
    assert true_rel_error(x, res.cp) < 1e-3  # missing entries filled in
    w = np.where(mask, 1.0, 0.0)
    same = fit_gradient(x, 2, weights=w, seed=0, max_iter=500)
    assert same.rel_error == pytest.approx(res.rel_error, rel=1e-3, abs=1e-6)
    y = x.copy()
    y[~mask] = np.nan
    with pytest.warns(UserWarning, match="NaN"):
        assert fit_gradient(y, 2, seed=0, max_iter=200).rel_error < 1e-3


def test_callback_and_reproducibility():
    x, _ = planted((5, 6, 7), 2, seed=3, noise=0.05)
    res = fit_gradient(x, 2, seed=0, callback=lambda s: s.iteration >= 4)
    assert "callback" in res.stop_reason
    a = fit_gradient(x, 2, init="random", seed=5, max_iter=50)
    b = fit_gradient(x, 2, init="random", seed=5, max_iter=50)
    np.testing.assert_array_equal(a.cp.factors[0], b.cp.factors[0])


def test_zero_tensor():
    res = fit_gradient(np.zeros((3, 4, 5)), 2, seed=0)
    assert res.rel_error == 0.0 and "zero" in res.stop_reason


def test_zero_tensor_with_start_as_rank():
    # rank= given as a CPTensor: the zero result still has that start's rank.
    start = ct.init.random((3, 4, 5), 2, seed=0)
    res = fit_gradient(np.zeros((3, 4, 5)), start)
    assert res.rel_error == 0.0 and "zero" in res.stop_reason
    assert res.cp.rank == 2 and not res.cp.weights.any()


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        (dict(rank=0), ValueError),
        (dict(rank=2, init="bogus"), ValueError),
        (dict(rank=2, loss="huber"), ValueError),
        (dict(rank=2, optimizer="sgd"), ValueError),
        (dict(rank=2, lr=0.0), ValueError),
        (dict(rank=2, weights=-np.ones((3, 4, 5))), ValueError),
        (dict(rank=2, weights=np.ones((3, 4))), ValueError),
        (dict(rank=2, mask=np.ones((3, 4))), ValueError),
    ],
)
def test_bad_input(kwargs, exc):
    x = np.random.default_rng(0).standard_normal((3, 4, 5))
    with pytest.raises(exc):
        fit_gradient(x, **kwargs)


def test_operator_rejected():
    with pytest.raises(TypeError, match="dense"):
        fit_gradient(DenseOperator(np.ones((3, 4, 5))), 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_device_for_numpy_input():
    x, _ = planted((8, 9, 10), 2, seed=4)
    res = fit_gradient(x, 2, device="cuda", seed=0)
    assert isinstance(res.cp.weights, np.ndarray) and res.info["device"].startswith("cuda")
    assert res.rel_error < 1e-4


def test_callback_states_are_snapshots_on_the_input_backend():
    """They were live torch views for NumPy input, changing after the callback returned."""
    import cptensor as ct
    from cptensor.fit import fit_gradient

    x = ct.reconstruct(ct.init.random((4, 5, 6), 2, seed=0))
    kept = []
    fit_gradient(
        x, 2, seed=0, max_iter=5, callback=lambda st: kept.append((st.cp, st.cp.factors[0].copy()))
    )
    assert len(kept) > 2
    for cp, first in kept:
        assert isinstance(cp.factors[0], np.ndarray)
        np.testing.assert_array_equal(cp.factors[0], first)  # unchanged since
    assert not np.array_equal(kept[0][1], kept[-1][1])

"""The TensorLy call patterns of docs/from-tensorly.md ("Translating ``parafac`` calls"),
run through both libraries on the same inputs and the same start: the same iterates where
the page says so (fits equal to round-off), comparable converged fits elsewhere."""

from __future__ import annotations

import numpy as np
import pytest
import tensorly as tl
from tensorly.decomposition import non_negative_parafac, non_negative_parafac_hals, parafac

import cptensor as ct
from cptensor.fit import fit_als


@pytest.fixture(autouse=True)
def _numpy_tensorly():
    with tl.backend_context("numpy"):
        yield


def data(seed=0, shape=(6, 7, 8), rank=3, noise=0.05, nonnegative=False, dtype=float, nn=()):
    """Planted data; ``nonnegative``: all factors and the data >= 0; ``nn``: factors >= 0
    in those modes only (signed in the others)."""
    rng = np.random.default_rng(seed)
    if nonnegative or nn:
        truth = ct.CPTensor(
            None,
            [
                rng.random((n, rank)) if nonnegative or k in nn else rng.standard_normal((n, rank))
                for k, n in enumerate(shape)
            ],
        )
    else:
        truth = ct.init.random(shape, rank, seed=seed, dtype=dtype)
    x = ct.reconstruct(truth)
    e = rng.standard_normal(shape)
    if np.iscomplexobj(x):
        e = e + 1j * rng.standard_normal(shape)
    x = x + noise * np.linalg.norm(x) / np.linalg.norm(e) * e
    return np.abs(x) if nonnegative else x


def tl_error(x, cp) -> float:
    return float(np.linalg.norm(x - tl.cp_to_tensor(cp)) / np.linalg.norm(x))


def tl_start(cp: ct.CPTensor):
    return (cp.weights.copy(), [f.copy() for f in cp.factors])


@pytest.mark.parametrize("iterations", [1, 25])
def test_parafac_fixed_sweeps(iterations):
    x = data()
    start = ct.init.random(x.shape, 3, seed=2)
    theirs = parafac(x, 3, init=tl_start(start), n_iter_max=iterations, tol=0)
    ours = fit_als(x, 3, init=start, max_iter=iterations, tol=0, line_search=False)
    assert abs(ours.rel_error - tl_error(x, theirs)) < 1e-10
    dense = tl.cp_to_tensor(theirs)
    np.testing.assert_allclose(ct.reconstruct(ours.cp), dense, atol=1e-9 * np.abs(dense).max())


def test_parafac_fixed_modes():
    x = data(seed=1, shape=(5, 6, 7, 4))
    start = ct.init.random(x.shape, 3, seed=3)
    theirs = parafac(x, 3, init=tl_start(start), n_iter_max=15, tol=0, fixed_modes=[0, 2])
    ours = fit_als(x, 3, init=start, max_iter=15, tol=0, line_search=False, fixed_modes=[0, 2])
    assert abs(ours.rel_error - tl_error(x, theirs)) < 1e-10


def test_parafac_l2_reg():
    x = data(seed=2)
    start = ct.init.random(x.shape, 3, seed=4)
    theirs = parafac(x, 3, init=tl_start(start), n_iter_max=20, tol=0, l2_reg=0.3)
    ours = fit_als(x, 3, init=start, max_iter=20, tol=0, line_search=False, l2_reg=0.3)
    assert abs(ours.rel_error - tl_error(x, theirs)) < 1e-10


def test_parafac_complex():
    x = data(seed=3, dtype=np.complex128)
    start = ct.init.random(x.shape, 3, seed=5, dtype=np.complex128)
    theirs = parafac(x, 3, init=tl_start(start), n_iter_max=20, tol=0)
    ours = fit_als(x, 3, init=start, max_iter=20, tol=0, line_search=False)
    assert abs(ours.rel_error - tl_error(x, theirs)) < 1e-10


def test_parafac_return_errors_is_history():
    x = data(seed=4)
    start = ct.init.random(x.shape, 3, seed=6)
    _, errors = parafac(x, 3, init=tl_start(start), n_iter_max=10, tol=0, return_errors=True)
    ours = fit_als(x, 3, init=start, max_iter=10, tol=0, line_search=False)
    # TensorLy's errors come from its cheap formula: equal to ours to about sqrt(eps)
    np.testing.assert_allclose([1 - f for f in ours.history], errors, atol=1e-7)


def test_parafac_defaults_reach_the_same_converged_fit():
    x = data(seed=5, noise=0.1)
    theirs = parafac(x, 3, n_iter_max=1000, tol=1e-12)
    ours = fit_als(x, 3, seed=0)
    assert abs(ours.fit - (1 - tl_error(x, theirs))) < 1e-5


@pytest.mark.parametrize("nn_modes", [[0, 2], [1]])
def test_non_negative_parafac_hals_nn_modes(nn_modes):
    """The same start for both, non-negative in the constrained modes only. (From other
    starts on other data, a HALS pass can zero a whole column of a constrained mode: that
    component then stays zero in fit_als, and TensorLy raises LinAlgError.)"""
    x = data(seed=7, nn=nn_modes)
    start = ct.init.random(x.shape, 3, seed=8)
    start = ct.CPTensor(
        None, [np.abs(f) if k in nn_modes else f for k, f in enumerate(start.factors)]
    )
    theirs = non_negative_parafac_hals(
        x, 3, init=tl_start(start), nn_modes=nn_modes, n_iter_max=300, tol=0
    )
    ours = fit_als(x, 3, init=start, nonnegative=tuple(nn_modes), max_iter=300, tol=0)
    assert abs(ours.fit - (1 - tl_error(x, theirs))) < 2e-3
    for k in nn_modes:
        assert float(ours.cp.factors[k].min()) >= 0.0


@pytest.mark.parametrize("tl_fn", [non_negative_parafac_hals, non_negative_parafac])
def test_non_negative_parafac_all_modes(tl_fn):
    x = data(seed=8, nonnegative=True)
    start = ct.init.random(x.shape, 3, seed=9)
    start = ct.CPTensor(None, [np.abs(f) for f in start.factors])
    theirs = tl_fn(x, 3, init=tl_start(start), n_iter_max=2000, tol=1e-12)
    ours = fit_als(x, 3, init=start, nonnegative=True, max_iter=2000, tol=1e-12)
    assert all(float(f.min()) >= 0.0 for f in ours.cp.factors)
    # multiplicative updates converge slowly: ours may be better, never clearly worse
    assert ours.fit >= (1 - tl_error(x, theirs)) - 2e-3

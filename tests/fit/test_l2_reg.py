"""``fit_als(l2_reg=...)`` is TensorLy's ``parafac(l2_reg=...)``: the same iterates from the
same start; ``ridge`` is a different penalty (on the factor being updated with the other
factors normalized), and the two are not combined."""

from __future__ import annotations

import numpy as np
import pytest
import tensorly as tl
from tensorly.decomposition import parafac

import cptensor as ct
from cptensor.fit import fit_als


@pytest.fixture(autouse=True)
def _numpy_tensorly():
    with tl.backend_context("numpy"):
        yield


def noisy(seed=0, shape=(6, 7, 8), rank=3):
    rng = np.random.default_rng(seed)
    x = ct.reconstruct(ct.init.random(shape, rank, seed=seed))
    return x + 0.2 * np.linalg.norm(x) / np.sqrt(x.size) * rng.standard_normal(shape)


@pytest.mark.parametrize("l2_reg", [0.5, 5.0])
@pytest.mark.parametrize("iterations", [1, 5, 30])
@pytest.mark.parametrize("weighted", [False, True])
def test_same_iterates_as_tensorly(l2_reg, iterations, weighted):
    x = noisy()
    start = ct.init.random(x.shape, 3, seed=1)
    if weighted:  # both fold the start's weights into the last factor
        start = start.with_(weights=np.array([2.0, 0.5, -1.5]))
    theirs = parafac(
        x,
        3,
        init=(start.weights.copy(), [f.copy() for f in start.factors]),
        n_iter_max=iterations,
        tol=0,
        l2_reg=l2_reg,
        linesearch=False,
    )
    ours = fit_als(x, 3, init=start, l2_reg=l2_reg, max_iter=iterations, tol=0, line_search=False)
    dense = tl.cp_to_tensor(theirs)
    np.testing.assert_allclose(ct.reconstruct(ours.cp), dense, atol=1e-9 * np.abs(dense).max())
    tl_err = np.linalg.norm(x - dense) / np.linalg.norm(x)
    assert abs(ours.rel_error - tl_err) <= 1e-10


def test_ridge_is_a_different_penalty():
    """Same start, same strength: ridge (updated factor, others normalized) and l2_reg
    (every unnormalized factor) give different models; both shrink the plain fit."""
    x = noisy(seed=2)
    start = ct.init.random(x.shape, 3, seed=1)
    kw = dict(init=start, max_iter=20, tol=0, line_search=False)
    plain = fit_als(x, 3, **kw)
    by_ridge = fit_als(x, 3, ridge=5.0, **kw)
    by_l2 = fit_als(x, 3, l2_reg=5.0, **kw)
    m_ridge, m_l2 = ct.reconstruct(by_ridge.cp), ct.reconstruct(by_l2.cp)
    assert np.linalg.norm(m_ridge - m_l2) > 1e-3 * np.linalg.norm(m_l2)
    assert by_ridge.fit < plain.fit and by_l2.fit < plain.fit
    # ridge's update of a mode is the ridge solution with the others at unit norm: the
    # last mode, updated last, satisfies B (V + ridge·I) = M with B = A_2·diag(λ)
    w, (a0, a1, a2) = by_ridge.cp
    v = (a0.T @ a0) * (a1.T @ a1)
    m = ct.mttkrp(x, [a0, a1, a2], 2)
    np.testing.assert_allclose((a2 * w) @ (v + 5.0 * np.eye(3)), m, atol=1e-10 * np.abs(m).max())


def test_l2_reg_zero_is_plain_als_and_both_refused():
    x = noisy(seed=3)
    start = ct.init.random(x.shape, 3, seed=1)
    a = fit_als(x, 3, init=start, max_iter=10, tol=0)
    b = fit_als(x, 3, init=start, max_iter=10, tol=0, l2_reg=0.0)
    for f, g in zip(a.cp.factors, b.cp.factors):
        np.testing.assert_array_equal(f, g)
    with pytest.raises(ValueError, match=r"give ridge= or l2_reg=, not both"):
        fit_als(x, 3, ridge=1.0, l2_reg=1.0)
    with pytest.raises(ValueError, match=r"l2_reg must be a finite number >= 0"):
        fit_als(x, 3, l2_reg=-1.0)

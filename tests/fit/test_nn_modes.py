"""Non-negativity on some modes only: ``fit_als(nonnegative=<modes>)`` (TensorLy's
``nn_modes``): validation, constraints held, monotone loss, and TensorLy's
``non_negative_parafac_hals(nn_modes=...)`` as an oracle on planted data."""

from __future__ import annotations

import numpy as np
import pytest
import tensorly as tl
from tensorly.decomposition import non_negative_parafac_hals

import cptensor as ct
from cptensor.fit import fit_als


@pytest.fixture(autouse=True)
def _numpy_tensorly():
    with tl.backend_context("numpy"):
        yield


def planted_mixed(shape=(9, 10, 11), rank=3, nn=(0, 2), noise=0.05, seed=0):
    """Factors >= 0 in the modes ``nn``, signed (about half negative) in the others."""
    rng = np.random.default_rng(seed)
    fs = [
        rng.random((n, rank)) if k in nn else rng.standard_normal((n, rank))
        for k, n in enumerate(shape)
    ]
    x = ct.reconstruct(ct.CPTensor(None, fs))
    e = rng.standard_normal(shape)
    return x + noise * np.linalg.norm(x) / np.linalg.norm(e) * e


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (1, TypeError, r"got the int 1; write nonnegative=\(1,\) for one mode"),
        ("all", TypeError, r"bool or a collection of mode indices"),
        (None, TypeError, r"bool or a collection of mode indices"),
        ((0, 3), ValueError, r"nonnegative mode=3 is out of range for a 3-way tensor"),
        ((0, 1.0), TypeError, r"nonnegative mode must be an int"),
        ((2, -1), ValueError, r"names a mode twice"),
        ([0, 0], ValueError, r"names a mode twice"),
    ],
)
def test_bad_nonnegative_is_refused(value, error, match):
    with pytest.raises(error, match=match):
        fit_als(np.ones((2, 3, 4)), 1, nonnegative=value)


def test_true_means_every_mode_and_empty_means_none():
    x = planted_mixed(nn=(0, 1, 2))
    every = fit_als(x, 3, seed=0, nonnegative=True, max_iter=30)
    listed = fit_als(x, 3, seed=0, nonnegative=[2, 0, 1], max_iter=30)
    for a, b in zip(every.cp.factors, listed.cp.factors):
        np.testing.assert_array_equal(a, b)
    free = fit_als(x, 3, seed=0, nonnegative=(), max_iter=30)
    plain = fit_als(x, 3, seed=0, max_iter=30)
    for a, b in zip(free.cp.factors, plain.cp.factors):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("line_search", [True, False])
@pytest.mark.parametrize("nn", [(0, 2), (1,), (-1,)])
def test_constrained_modes_nonnegative_free_modes_signed_loss_monotone(nn, line_search):
    resolved = tuple(m % 3 for m in nn)
    x = planted_mixed(nn=resolved)
    errors = []
    fit = fit_als(
        x,
        3,
        seed=0,
        nonnegative=nn,
        line_search=line_search,
        max_iter=200,
        callback=lambda s: errors.append(s.rel_error),
    )
    for k, f in enumerate(fit.cp.factors):
        if k in resolved:
            assert float(f.min()) >= 0.0
        else:
            assert float(f.min()) < -0.05  # the free modes really use negative values
    # the loss never increases (up to round-off of the error formula)
    assert np.all(np.diff(errors) <= 1e-9), np.diff(errors).max()
    assert fit.fit > 0.9  # 5% noise: near 0.95


@pytest.mark.parametrize("nn", [(0, 2), (1,)])
def test_comparable_to_tensorly_hals_with_nn_modes(nn):
    x = planted_mixed(nn=nn, seed=1)
    theirs = non_negative_parafac_hals(x, 3, nn_modes=set(nn), n_iter_max=300, tol=1e-10)
    tl_fit = 1 - np.linalg.norm(x - tl.cp_to_tensor(theirs)) / np.linalg.norm(x)
    for k in nn:
        assert float(theirs.factors[k].min()) >= 0.0
    ours = fit_als(x, 3, seed=0, nonnegative=nn, max_iter=300, tol=1e-10)
    assert ours.fit >= tl_fit - 5e-3, (ours.fit, tl_fit)
    assert abs(ours.fit - tl_fit) < 2e-2


def test_same_start_same_fit_as_tensorly():
    """From one (non-negative) start, both reach the same fit on planted data."""
    x = planted_mixed(nn=(0, 2), seed=2)
    start = ct.init.random(x.shape, 3, seed=3)
    start = ct.CPTensor(None, [np.abs(f) for f in start.factors])
    tl_start = (np.ones(3), [f.copy() for f in start.factors])
    theirs = non_negative_parafac_hals(x, 3, init=tl_start, nn_modes={0, 2}, n_iter_max=400, tol=0)
    tl_fit = 1 - np.linalg.norm(x - tl.cp_to_tensor(theirs)) / np.linalg.norm(x)
    ours = fit_als(x, 3, init=start, nonnegative=(0, 2), max_iter=400, tol=0)
    assert abs(ours.fit - tl_fit) < 1e-3, (ours.fit, tl_fit)


def test_fixed_and_nonnegative_modes_together():
    x = planted_mixed(nn=(0, 2), seed=4)
    start = ct.init.random(x.shape, 3, seed=0)
    fit = fit_als(x, 3, init=start, nonnegative=(2,), fixed_modes=(0,), max_iter=20)
    assert float(fit.cp.factors[2].min()) >= 0.0
    # the fixed mode keeps its start's columns (up to the scaling and order of arrange)
    score = ct.analysis.congruence_matrix(
        ct.CPTensor(None, [fit.cp.factors[0]]),
        ct.CPTensor(None, [start.factors[0]]),
        weight_penalty=False,
    )
    np.testing.assert_allclose(np.sort(score.max(axis=0)), 1.0, atol=1e-12)

"""Missing data (mask / NaN), TensorOperator inputs, and bad input errors."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
from fit_testutil import DenseOperator, planted, true_rel_error

import cptensor as ct
from cptensor.fit import fit_als


def _observed_error(x, cp, mask):
    m = ct.reconstruct(cp)
    return np.linalg.norm((x - m)[mask]) / np.linalg.norm(x[mask])


def test_mask_fits_observed_entries_and_recovers_missing():
    x, _ = planted((8, 9, 10), 3, seed=0, collinearity=0.2)
    mask = np.random.default_rng(0).random(x.shape) > 0.3
    res = fit_als(x, 3, mask=mask, seed=0, max_iter=500, tol=1e-12)
    assert res.rel_error == pytest.approx(_observed_error(x, res.cp, mask), rel=1e-7, abs=1e-12)
    assert res.rel_error < 1e-6
    assert true_rel_error(x, res.cp) < 1e-5  # missing entries recovered too
    assert np.all(np.diff(res.history) >= -1e-10)  # EM never increases the observed loss
    assert "EM" in res.info["missing"]


def test_nans_are_missing_with_a_warning():
    x, _ = planted((6, 7, 8), 2, seed=1)
    y = x.copy()
    y[0, 0, 0] = y[3, 2, 1] = np.nan
    with pytest.warns(UserWarning, match="NaN"):
        res = fit_als(y, 2, seed=0)
    assert np.isfinite(res.rel_error) and res.rel_error < 1e-6
    mask = ~np.isnan(y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        explicit = fit_als(y, 2, mask=mask, seed=0)
    assert explicit.rel_error == pytest.approx(res.rel_error, abs=1e-12)


def test_il2_error_on_observed_entries_decreases_with_rank():
    from cptensor.datasets import load

    x = load("il2")
    mask = ~np.isnan(x)
    assert int((~mask).sum()) == 192
    errors = [fit_als(x, r, mask=mask, seed=0, max_iter=120).rel_error for r in (1, 2, 3, 4)]
    assert all(np.isfinite(errors))
    assert all(b < a for a, b in itertools.pairwise(errors)), errors


def test_mask_torch():
    torch = pytest.importorskip("torch")
    x, _ = planted((6, 7, 8), 2, seed=2)
    mask = np.random.default_rng(1).random(x.shape) > 0.2
    ref = fit_als(x, 2, mask=mask, seed=0)
    res = fit_als(torch.from_numpy(x), 2, mask=torch.from_numpy(mask), seed=0)
    assert res.rel_error == pytest.approx(ref.rel_error, rel=1e-6, abs=1e-10)


@pytest.mark.parametrize("with_residual", [False, True])
def test_operator_matches_dense(with_residual):
    x, _ = planted((7, 8, 9), 3, seed=3, noise=0.01)
    op = DenseOperator(x, with_residual=with_residual)
    res = fit_als(op, 3, init="random", seed=4, tol=1e-10)
    ref = fit_als(x, 3, init="random", seed=4, tol=1e-10)
    assert res.rel_error == pytest.approx(ref.rel_error, rel=1e-6)
    assert res.rel_error == pytest.approx(true_rel_error(x, res.cp), rel=1e-6)
    assert op.calls > 0
    method = res.info["rel_error_method"]
    assert ("residual_norm" in method) if with_residual else ("cheap formula" in method)


def test_operator_svd_falls_back_and_mask_rejected():
    x, _ = planted((5, 6, 7), 2, seed=5)
    op = DenseOperator(x)
    res = fit_als(op, 2, seed=0)
    assert "random" in res.info["init"]
    with pytest.raises(TypeError, match="mask"):
        fit_als(op, 2, mask=np.ones(x.shape, bool))


def test_operator_with_gram_uses_svd():
    x, _ = planted((5, 6, 7), 2, seed=6)

    class GramOperator(DenseOperator):
        def gram(self, mode):
            u = ct.unfold(self._x, mode)
            return u @ u.T

    res = fit_als(GramOperator(x), 2, seed=0)
    assert res.info["init"].startswith("svd") and res.rel_error < 1e-6


X = np.random.default_rng(0).standard_normal((3, 4, 5))


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (dict(rank=0), ValueError, "rank must be >= 1"),
        (dict(rank=2.5), TypeError, "rank must be a positive int"),
        (dict(rank=True), TypeError, "rank"),
        (dict(rank=2, mask=np.ones((3, 4), bool)), ValueError, "mask has shape"),
        (dict(rank=2, mask=np.ones((3, 4, 5))), TypeError, "boolean"),
        (dict(rank=2, mask=np.zeros((3, 4, 5), bool)), ValueError, "no entry"),
        (dict(rank=2, fixed_modes=(0, 1, 2)), ValueError, "every mode"),
        (dict(rank=2, fixed_modes=(5,)), ValueError, "out of range"),
        (dict(rank=2, init="bogus"), ValueError, "init must be"),
        (dict(rank=2, max_iter=-1), ValueError, "max_iter"),
        (dict(rank=2, tol=-1.0), ValueError, "tol"),
        (dict(rank=2, ridge=float("nan")), ValueError, "ridge"),
        (dict(rank=2, callback=3), TypeError, "callback"),
        (dict(rank=2, line_search="yes"), TypeError, "line_search"),
        (dict(rank=ct.init.random((3, 4, 6), 2, seed=0)), ValueError, "shape"),
    ],
)
def test_bad_input(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fit_als(X, **kwargs)


def test_bad_values_and_types():
    y = X.copy()
    y[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="infinite"):
        fit_als(y, 2)
    mask = np.ones(X.shape, bool)
    y[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="observed"):
        fit_als(y, 2, mask=mask)
    mask[0, 0, 0] = False
    assert np.isfinite(fit_als(y, 2, mask=mask, max_iter=3).rel_error)  # masked out: fine
    with pytest.raises(TypeError, match="floating"):
        fit_als(np.ones((3, 4), dtype=np.int64), 1)
    with pytest.raises(ValueError, match="at least 2 modes"):
        fit_als(np.ones(5), 1)
    with pytest.raises(TypeError, match="x must be"):
        fit_als([[1.0, 2.0]], 1)


def test_mixed_backends_rejected():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError):
        fit_als(X, 2, mask=torch.ones(X.shape, dtype=torch.bool))
    with pytest.raises(TypeError):
        fit_als(torch.from_numpy(X).float(), ct.init.random(X.shape, 2, seed=0))

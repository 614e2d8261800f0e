"""Fits do not depend on the scale of the data: entries of 1e-170 (whose squares underflow
to zero in float64) or 1e200 are fitted as well as entries of 1, never reported as zero."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cptensor as ct
from cptensor.fit import fit_als, fit_gradient

X = ct.reconstruct(ct.init.random((5, 6, 7), 2, seed=0)) + 0.01 * np.random.default_rng(
    1
).standard_normal((5, 6, 7))


@settings(max_examples=25, deadline=None)
@given(exponent=st.integers(-300, 300))
def test_als_is_scale_invariant(exponent):
    scale = 10.0**exponent
    ref = fit_als(X, 2, seed=0)
    got = fit_als(X * scale, 2, seed=0)
    assert got.fit == pytest.approx(ref.fit, abs=1e-9)
    assert "zero" not in got.stop_reason
    np.testing.assert_allclose(got.cp.weights / scale, ref.cp.weights, rtol=1e-6)
    np.testing.assert_allclose(ct.reconstruct(got.cp), X * scale, rtol=0, atol=0.2 * scale)


@settings(max_examples=10, deadline=None)
@given(exponent=st.sampled_from([-250, -170, -40, 0, 40, 200]))
def test_gradient_fit_is_scale_invariant(exponent):
    scale = 10.0**exponent
    ref = fit_gradient(X, 2, seed=0, max_iter=60)
    got = fit_gradient(X * scale, 2, seed=0, max_iter=60)
    assert got.fit == pytest.approx(ref.fit, abs=1e-6)
    np.testing.assert_allclose(got.cp.weights / scale, ref.cp.weights, rtol=1e-4)


def test_float32_tiny_data_and_callback_states_on_the_data_scale():
    torch = pytest.importorskip("torch")
    x = torch.tensor(X * 1e-30, dtype=torch.float32)
    seen = []
    res = fit_als(x, 2, seed=0, callback=lambda st: seen.append(float(st.cp.weights.abs().max())))
    assert res.fit == pytest.approx(fit_als(X, 2, seed=0).fit, abs=1e-4)
    assert res.cp.weights.dtype == torch.float32
    assert max(seen) < 1e-25 and res.info["rescaled_by"] > 1e25


def test_zero_data_is_still_zero():
    res = fit_als(np.zeros((3, 4, 5)), 2, seed=0)
    assert res.fit == 1.0 and "all zeros" in res.stop_reason
    assert float(np.abs(res.cp.weights).max()) == 0.0


@pytest.mark.parametrize("fit", [fit_als, fit_gradient])
def test_a_non_finite_start_is_refused(fit):
    """An all-NaN start was 'converged' at fit 0.0."""
    start = ct.CPTensor(None, [np.full((n, 2), np.nan) for n in X.shape])
    with pytest.raises(ValueError, match="NaN or infinite"):
        fit(X, start)


@pytest.mark.parametrize("fit", [fit_als, fit_gradient])
def test_an_absurd_rank_is_refused_before_allocating(fit):
    with pytest.raises(ValueError, match="refused before allocating"):
        fit(X, 10**9)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_data_is_refused_with_advice(dtype):
    torch = pytest.importorskip("torch")
    x = torch.tensor(X, dtype=getattr(torch, dtype))
    for fit in (fit_als, fit_gradient):
        with pytest.raises(TypeError, match=r"float32 or float64.*\.float\(\)"):
            fit(x, 2)

"""The fast data checks and float64 reductions of the fits (``fit._common``, ``fit._solve``):
one-read shortcuts must give exactly the answers of the plain entry-wise versions."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from cptensor.errors import CPTensorError
from cptensor.fit import fit_als
from cptensor.fit._common import (
    REDUCE_ELEMENTS,
    all_finite,
    magnitude_scale,
    prepare_mask,
    sum_squares64,
)
from cptensor.fit._solve import _all_finite


def test_prepare_mask_accepts_finite_data_whose_sum_overflows():
    x = np.full((3, 4), 1e308)  # every entry finite, their sum is inf
    with np.errstate(over="ignore"):
        assert not np.isfinite(x.sum())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert prepare_mask(x, None) is None


@pytest.mark.parametrize("bad", [np.inf, -np.inf])
def test_prepare_mask_still_refuses_infinite_entries(bad):
    x = np.ones((3, 4))
    x[1, 2] = bad
    with pytest.raises(CPTensorError, match="infinite"):
        prepare_mask(x, None)


def test_prepare_mask_still_finds_nans():
    x = np.ones((3, 4), dtype=np.float32)
    x[0, 1] = np.nan
    with pytest.warns(UserWarning, match="1 NaN"):
        mask = prepare_mask(x, None)
    assert mask is not None and not mask[0, 1] and mask.sum() == 11


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([1.0, -(2.0**40)], 2.0**-41),  # the largest magnitude is negative
        ([2.0**-40, -(2.0**-45)], 2.0**39),
        ([3.0, -5.0], 1.0),  # within range: no rescaling
        ([0.0, 0.0], 1.0),
        ([1.0, np.nan], 1.0),
    ],
)
def test_magnitude_scale_uses_the_largest_magnitude(values, expected):
    a = np.array(values)
    assert magnitude_scale(np, a) == expected
    if np.all(np.isfinite(a)) and np.any(a):
        assert 0.5 <= np.max(np.abs(a * expected)) < 1.0 or expected == 1.0


_ANY_FLOATS = hnp.arrays(
    np.float64,
    hnp.array_shapes(min_dims=1, max_dims=3, max_side=5),
    # subnormal maxima are left out: the earlier version overflowed in ``ldexp`` on them
    elements=st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=False, width=64),
)


def _plain_magnitude_scale(a: np.ndarray) -> float:
    """The entry-wise reference (the earlier implementation): from ``max|a|``, the scale
    capped at 2^1000 (below ~1e-301 the data are only brought into the normal range)."""
    amax = float(np.max(np.abs(a)))
    if amax == 0.0 or not math.isfinite(amax):
        return 1.0
    exp = math.frexp(amax)[1]
    return 1.0 if -30 <= exp <= 30 else math.ldexp(1.0, min(-exp, 1000))


@settings(max_examples=200, deadline=None)
@given(a=_ANY_FLOATS)
@example(a=np.array([1.26375133e-307]))  # normal, but below the 2^-1000 the scale stops at
def test_one_read_shortcuts_match_the_entrywise_versions(a):
    """``magnitude_scale`` (max and min, no ``|a|``) and ``all_finite`` (one sum) give the
    answers of their plain entry-wise versions on any data, overflow, inf and NaN included."""
    with np.errstate(over="ignore", invalid="ignore"):
        assert magnitude_scale(np, a) == _plain_magnitude_scale(a)
    assert all_finite(np, a) == bool(np.all(np.isfinite(a)))


@settings(max_examples=100, deadline=None)
@given(tiny=st.floats(min_value=5e-324, max_value=2.2e-308), sign=st.sampled_from([1.0, -1.0]))
def test_magnitude_scale_of_subnormal_data_is_finite(tiny, sign):
    """A subnormal maximum used to overflow ``ldexp``; the scale stops at 2^1000, which
    still brings the data into the normal range."""
    a = np.array([sign * tiny, 0.0])
    s = magnitude_scale(np, a)
    assert math.isfinite(s) and s <= 2.0**1000
    assert np.max(np.abs(a * s)) >= np.finfo(np.float64).tiny


def test_a_fit_of_subnormal_data_runs():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 5, 6)) * 1e-310
    res = fit_als(x, 2, seed=0, max_iter=20)
    assert np.isfinite(res.rel_error)


def test_sum_squares64_over_many_chunks_matches_float64_sum():
    rng = np.random.default_rng(0)
    rows = 3 * REDUCE_ELEMENTS // 1000 + 7  # several chunks and a ragged last one
    a = rng.standard_normal((rows, 1000)).astype(np.float32) * 1e3
    exact = float(np.sum(a.astype(np.float64) ** 2))
    assert sum_squares64(np, a) == pytest.approx(exact, rel=1e-13)
    # float32 accumulation would be visibly off at this size; float64 is not
    assert abs(float(np.sum(a * a, dtype=np.float32)) - exact) > abs(sum_squares64(np, a) - exact)


def test_sum_squares64_complex_and_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    z = (rng.standard_normal((300, 900)) + 1j * rng.standard_normal((300, 900))).astype(
        np.complex64
    )
    exact = float(np.sum(np.abs(z.astype(np.complex128)) ** 2))
    assert sum_squares64(np, z) == pytest.approx(exact, rel=1e-13)
    t = torch.from_numpy(z.real.copy())
    exact_t = float(np.sum(z.real.astype(np.float64) ** 2))
    import cptensor._backend as backend

    assert sum_squares64(backend.namespace(t), t) == pytest.approx(exact_t, rel=1e-13)


def test_all_finite_shortcut_and_overflow_fallback():
    assert _all_finite(np, np.array([[1e308, 1e308]]))  # sum overflows, entries finite
    assert not _all_finite(np, np.array([[1.0, np.nan]]))
    assert not _all_finite(np, np.array([[np.inf, -np.inf]]))  # sum is nan


def test_shortcuts_raise_no_overflow_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _all_finite(np, np.array([1e308, 1e308]))
        assert all_finite(np, np.array([1e308, 1e308]))
        assert not all_finite(np, np.array([np.inf, -np.inf]))

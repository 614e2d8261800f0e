"""Hypothesis properties of ALS: monotone loss, finite results, exact reported errors."""

from __future__ import annotations

import numpy as np
from fit_testutil import true_rel_error
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cptensor.fit import fit_als

shapes = st.lists(st.integers(2, 6), min_size=2, max_size=4).map(tuple)


@st.composite
def problems(draw):
    shape = draw(shapes)
    rank = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["noise", "lowrank", "lowrank+noise", "constant"]))
    if kind == "noise":
        x = rng.standard_normal(shape)
    elif kind == "constant":
        x = np.full(shape, rng.standard_normal())
    else:
        r = draw(st.integers(1, 3))
        fs = [rng.standard_normal((n, r)) for n in shape]
        x = np.einsum(
            ",".join(f"{c}r" for c in "abcd"[: len(shape)]) + "->" + "abcd"[: len(shape)], *fs
        )
        if kind == "lowrank+noise":
            x = x + 0.1 * rng.standard_normal(shape)
    init = draw(st.sampled_from(["svd", "random"]))
    return x, rank, init, seed


def assert_loss_monotone(history) -> None:
    """The squared relative error ‖X − M‖²/‖X‖² never increases, to float64 round-off.

    The loss, not the fit 1 − ‖X − M‖/‖X‖, is what ALS decreases, and its round-off is
    about eps·‖X‖²: near an exact fit, a fixed tolerance on the fit (a square root) would
    flag noise of order √eps as an increase.
    """
    loss = (1.0 - np.asarray(history)) ** 2
    assert np.all(np.diff(loss) <= 1e3 * np.finfo(np.float64).eps), loss


_settings = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_settings
@given(problems())
def test_loss_never_increases_without_line_search(problem):
    x, rank, init, seed = problem
    res = fit_als(x, rank, init=init, seed=seed, line_search=False, max_iter=40, tol=0)
    assert_loss_monotone(res.history)
    assert all(np.all(np.isfinite(f)) for f in res.cp.factors)
    assert np.all(np.isfinite(res.cp.weights))


@_settings
@given(problems())
def test_line_search_keeps_loss_monotone_and_error_exact(problem):
    x, rank, init, seed = problem
    res = fit_als(x, rank, init=init, seed=seed, line_search=True, max_iter=40)
    assert_loss_monotone(res.history)
    true = true_rel_error(x, res.cp)
    assert abs(res.rel_error - true) <= 1e-7 * max(true, 1e-8)


@settings(max_examples=15, deadline=None)
@given(problems())
def test_nonnegative_hals_monotone_and_nonnegative(problem):
    x, rank, init, seed = problem
    res = fit_als(x, rank, init=init, seed=seed, nonnegative=True, max_iter=30, tol=0)
    assert_loss_monotone(res.history)
    assert all(np.all(f >= 0) for f in res.cp.factors)

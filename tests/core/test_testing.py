"""The helpers of ``cptensor.testing``: strategies draw what they say, assertions catch what
they should (and only that)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cptensor as ct
from cptensor._backend import to_numpy
from cptensor.testing import (
    LowRankTensor,
    assert_allclose,
    assert_cp_equivalent,
    cp_tensors,
    dense_tensors,
    low_rank_tensors,
    shapes,
)

FEW = settings(max_examples=10)


def draw_one(strategy):
    """One example of ``strategy``, drawn inside ``@given`` (not ``.example()``)."""
    out = []

    @settings(max_examples=1, database=None)
    @given(strategy)
    def run(value):
        out.append(value)

    run()
    return out[0]


def test_importing_testing_does_not_import_torch():
    code = "import sys, cptensor.testing; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@FEW
@given(shape=shapes(min_ndim=2, max_ndim=3, min_side=2, max_side=4, max_size=30))
def test_shapes_respect_bounds(shape):
    assert 2 <= len(shape) <= 3
    assert all(2 <= s <= 4 for s in shape)
    assert math.prod(shape) <= 30


@FEW
@given(data=st.data())
def test_strategies_give_the_requested_backend(backend, data):
    x = data.draw(dense_tensors((2, 3), **backend.kwargs, bound=0.5))
    cp = data.draw(cp_tensors((2, 3), 2, **backend.kwargs))
    for a in (x, *cp.factors, cp.weights):
        assert str(a.dtype).removeprefix("torch.") == backend.dtype
        if backend.name == "torch":
            assert a.device.type == backend.device
        else:
            assert isinstance(a, np.ndarray)
    assert tuple(x.shape) == (2, 3)
    assert float(np.max(np.abs(to_numpy(x)))) <= 0.5
    assert cp.shape == (2, 3) and cp.rank == 2


def test_strategies_reject_bad_arguments():
    with pytest.raises(ValueError, match="backend must be one of"):
        draw_one(dense_tensors((2,), backend="jax"))
    with pytest.raises(ValueError, match="dtype must be float32 or float64"):
        draw_one(cp_tensors((2,), 1, dtype="int64"))
    with pytest.raises(ValueError, match="collinearity must be in"):
        draw_one(low_rank_tensors((3, 3, 3), 2, collinearity=1.0))
    with pytest.raises(ValueError, match="need 1 <= min_ndim <= max_ndim"):
        shapes(min_ndim=3, max_ndim=2)


@FEW
@given(
    d=low_rank_tensors(
        shape=st.tuples(st.integers(4, 6), st.integers(4, 6), st.integers(4, 6)),
        rank=st.integers(1, 3),
        noise=st.sampled_from([0.0, 0.1]),
        collinearity=st.sampled_from([0.0, 0.5, 0.9]),
    )
)
def test_low_rank_tensors_plant_what_they_say(d):
    assert isinstance(d, LowRankTensor)
    clean = ct.reconstruct(d.cp)
    err = np.linalg.norm(d.tensor - clean) / np.linalg.norm(clean)
    assert err == pytest.approx(d.noise, abs=1e-12)
    for f in d.cp.factors:  # every mode has >= rank rows here: congruences are exact
        g = f.T @ f
        np.testing.assert_allclose(np.diag(g), 1.0, atol=1e-12)
        off = g[~np.eye(d.cp.rank, dtype=bool)]
        np.testing.assert_allclose(off, d.collinearity, atol=1e-12)
    assert np.all(to_numpy(d.cp.weights) >= 1.0)


def test_low_rank_tensors_torch():
    torch = pytest.importorskip("torch")
    d = draw_one(low_rank_tensors((3, 4, 5), 2, dtype="float32", backend="torch"))
    assert isinstance(d.tensor, torch.Tensor) and d.tensor.dtype == torch.float32
    assert_allclose(ct.reconstruct(d.cp), d.tensor)


@FEW
@given(data=st.data())
def test_assert_cp_equivalent_accepts_the_indeterminacies(backend, data):
    d = data.draw(low_rank_tensors(rank=st.integers(1, 3), **backend.kwargs))
    cp = d.cp
    perm = data.draw(st.permutations(range(cp.rank)))
    scales = [
        backend.asarray(
            data.draw(
                st.lists(
                    st.sampled_from([-2.0, -0.5, 0.5, 3.0]), min_size=cp.rank, max_size=cp.rank
                )
            )
        )
        for _ in range(cp.ndim)
    ]
    factors = [f * s for f, s in zip(cp.factors, scales)]
    total = scales[0]
    for s in scales[1:]:
        total = total * s
    other = ct.permute(ct.CPTensor(cp.weights / total, factors), perm)
    assert_cp_equivalent(other, cp)
    assert_cp_equivalent(cp, other)


@FEW
@given(d=low_rank_tensors(shape=(4, 5, 6), rank=2), which=st.integers(0, 2))
def test_assert_cp_equivalent_catches_differences(d, which):
    cp = d.cp
    bumped = [f.copy() for f in cp.factors]
    bumped[which][0, 0] += 1e-3
    with pytest.raises(AssertionError, match=r"columns differ|weights differ"):
        assert_cp_equivalent(ct.CPTensor(cp.weights, bumped), cp)
    with pytest.raises(AssertionError, match=r"weights differ"):
        assert_cp_equivalent(ct.CPTensor(cp.weights * 1.01, list(cp.factors)), cp)
    # a looser tolerance lets small differences through
    assert_cp_equivalent(ct.CPTensor(cp.weights * (1 + 1e-6), list(cp.factors)), cp, rtol=1e-4)


def test_assert_cp_equivalent_structure_and_backends():
    rng = np.random.default_rng(0)
    a = ct.CPTensor(None, [rng.standard_normal((n, 2)) for n in (3, 4)])
    with pytest.raises(AssertionError, match=r"ranks differ: actual rank 2 vs desired rank 1"):
        assert_cp_equivalent(a, ct.CPTensor(None, [f[:, :1] for f in a.factors]))
    with pytest.raises(AssertionError, match=r"shapes differ"):
        assert_cp_equivalent(a, ct.CPTensor(None, [f[:2] for f in a.factors]))
    with pytest.raises(TypeError, match=r"desired must be a cptensor.CPTensor, .*pair"):
        assert_cp_equivalent(a, 3)
    assert_cp_equivalent(a, (np.ones(2), list(a.factors)))  # TensorLy-style pair
    torch = pytest.importorskip("torch")
    t = ct.CPTensor(None, [torch.asarray(f) for f in a.factors])
    assert_cp_equivalent(a, t)  # mixed backends compare by value
    # zero components: their directions are arbitrary
    z1 = ct.CPTensor(np.array([1.0, 0.0]), [rng.standard_normal((n, 2)) for n in (3, 4)])
    z2 = ct.CPTensor(np.array([0.0, 1.0]), [f[:, ::-1].copy() for f in z1.factors])
    z2.factors[0][:, 0] = 5.0
    assert_cp_equivalent(z1, z2)


def test_assert_allclose_backends_and_messages():
    a = np.array([1.0, 2.0])
    assert_allclose(a, a + 1e-12)
    assert_allclose(np.float32(1.0), 1.0 + 1e-6)  # float32 side: rtol 1e-4
    with pytest.raises(AssertionError, match=r"shapes differ: actual \(2,\).*desired \(3,\)"):
        assert_allclose(a, np.ones(3))
    with pytest.raises(AssertionError, match=r"Mismatched elements"):
        assert_allclose(a, a + 1e-6)
    torch = pytest.importorskip("torch")
    assert_allclose(torch.asarray(a), a)  # mixed backends compare by value
    with pytest.raises(
        AssertionError, match=r"actual: torch \(torch.float64, cpu\); desired: numpy"
    ):
        assert_allclose(torch.asarray(a), a + 1)
    with pytest.raises(
        AssertionError, match=r"backends differ: actual is torch .* desired is numpy"
    ):
        assert_allclose(torch.asarray(a), a, check_backend=True)
    # CP tensors compare through their dense values
    cp = ct.CPTensor(None, [np.ones((2, 1)), np.ones((3, 1))])
    assert_allclose(cp, np.ones((2, 3)))


def test_assert_cp_equivalent_fails_on_nan_as_an_assertion():
    """It raised numpy's ValueError from the assignment solver instead."""
    import numpy as np

    import cptensor as ct
    from cptensor.testing import assert_cp_equivalent

    a = ct.init.random((4, 5, 6), 2, seed=0)
    with pytest.raises(AssertionError, match="desired holds NaN"):
        assert_cp_equivalent(a, ct.CPTensor(a.weights * np.nan, a.factors))

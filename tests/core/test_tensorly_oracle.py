"""TensorLy as an independent oracle (NumPy, float64): the operations both libraries have
agree to round-off on random shapes and ranks."""

from __future__ import annotations

import numpy as np
import pytest
import tensorly as tl
from hypothesis import given, settings
from hypothesis import strategies as st
from tensorly.cp_tensor import unfolding_dot_khatri_rao
from tensorly.tenalg import khatri_rao, kronecker, mode_dot, multi_mode_dot

import cptensor as ct
from cptensor.testing import assert_allclose, cp_tensors, dense_tensors, shapes

ORACLE = settings(max_examples=25)
RTOL = 1e-11


@pytest.fixture(autouse=True)
def _numpy_tensorly():
    """TensorLy's backend is global state: pin it to NumPy for these tests."""
    with tl.backend_context("numpy"):
        yield


def tl_cp(cp: ct.CPTensor):
    return (cp.weights, list(cp.factors))


def tl_mttkrp(x, cp: ct.CPTensor, mode: int):
    """TensorLy's MTTKRP, weights applied afterwards: TensorLy ignores them when only one
    factor remains after skipping ``mode`` (2-way tensors)."""
    ones = np.ones_like(cp.weights)
    return unfolding_dot_khatri_rao(x, (ones, list(cp.factors)), mode) * cp.weights


@ORACLE
@given(cp=cp_tensors(shapes(min_ndim=2, max_ndim=5, max_size=400), st.integers(1, 5)))
def test_reconstruct_and_norm(cp):
    assert_allclose(ct.reconstruct(cp), tl.cp_to_tensor(tl_cp(cp)), rtol=RTOL)
    assert_allclose(ct.norm(cp), tl.cp_norm(tl_cp(cp)), rtol=1e-9)
    for n in range(cp.ndim):
        assert_allclose(ct.reconstruct_unfolded(cp, n), tl.cp_to_unfolded(tl_cp(cp), n), rtol=RTOL)


@ORACLE
@given(x=dense_tensors(shapes(min_ndim=1, max_ndim=5)), data=st.data())
def test_unfold_fold(x, data):
    mode = data.draw(st.integers(0, x.ndim - 1))
    np.testing.assert_array_equal(ct.unfold(x, mode), tl.unfold(x, mode))
    m = tl.unfold(x, mode)
    np.testing.assert_array_equal(ct.fold(m, mode, x.shape), tl.fold(m, mode, x.shape))


@ORACLE
@given(cp=cp_tensors(shapes(min_ndim=1, max_ndim=4), st.integers(1, 4)), data=st.data())
def test_khatri_rao(cp, data):
    fs = list(cp.factors)
    assert_allclose(ct.khatri_rao(fs), khatri_rao(fs), rtol=RTOL)
    if len(fs) > 1:  # TensorLy ignores the weights of a single matrix (returns it as is)
        assert_allclose(
            ct.khatri_rao(fs, weights=cp.weights), khatri_rao(fs, weights=cp.weights), rtol=RTOL
        )
    else:
        assert_allclose(ct.khatri_rao(fs, weights=cp.weights), fs[0] * cp.weights, rtol=RTOL)
    if len(fs) > 1:
        skip = data.draw(st.integers(0, len(fs) - 1))
        assert_allclose(ct.khatri_rao(fs, skip=skip), khatri_rao(fs, skip_matrix=skip), rtol=RTOL)


@ORACLE
@given(data=st.data())
def test_kronecker(data):
    k = data.draw(st.integers(1, 3))
    mats = [
        data.draw(dense_tensors((data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4)))))
        for _ in range(k)
    ]
    assert_allclose(ct.kronecker(mats), kronecker(mats), rtol=RTOL)


@ORACLE
@given(x=dense_tensors(shapes(min_ndim=1, max_ndim=5, max_size=400)), data=st.data())
def test_mode_product(x, data):
    mode = data.draw(st.integers(0, x.ndim - 1))
    m = data.draw(dense_tensors((data.draw(st.integers(1, 4)), x.shape[mode])))
    assert_allclose(ct.mode_product(x, m, mode), mode_dot(x, m, mode), rtol=RTOL)
    assert_allclose(
        ct.mode_product(x, m.T, mode, transpose=True),
        mode_dot(x, m.T, mode, transpose=True),
        rtol=RTOL,
    )
    assert_allclose(ct.mode_product(x, m[0], mode), mode_dot(x, m[0], mode), rtol=RTOL)


@ORACLE
@given(x=dense_tensors(shapes(min_ndim=1, max_ndim=4)), data=st.data())
def test_multi_mode_product(x, data):
    mats = [data.draw(dense_tensors((data.draw(st.integers(1, 3)), s))) for s in x.shape]
    assert_allclose(ct.multi_mode_product(x, mats), multi_mode_dot(x, mats), rtol=RTOL)
    skip = data.draw(st.integers(0, x.ndim - 1))
    assert_allclose(
        ct.multi_mode_product(x, mats, skip=skip), multi_mode_dot(x, mats, skip=skip), rtol=RTOL
    )
    tmats = [m.T for m in mats]
    assert_allclose(
        ct.multi_mode_product(x, tmats, transpose=True),
        multi_mode_dot(x, tmats, transpose=True),
        rtol=RTOL,
    )
    modes = data.draw(st.permutations(range(x.ndim)))
    sub = [mats[m] for m in modes]
    assert_allclose(
        ct.multi_mode_product(x, sub, modes=modes),
        multi_mode_dot(x, sub, modes=modes),
        rtol=RTOL,
    )
    # skip indexes the list of matrices (TensorLy's documented meaning; its code applies
    # it after sorting by mode, so compare on ascending modes only)
    k = data.draw(st.integers(0, x.ndim - 1))
    asc = sorted(modes)
    by_mode = [mats[m] for m in asc]
    assert_allclose(
        ct.multi_mode_product(x, by_mode, modes=asc, skip=k),
        multi_mode_dot(x, by_mode, modes=asc, skip=k),
        rtol=RTOL,
    )
    kept = [i for i in range(len(sub)) if i != k]
    assert_allclose(
        ct.multi_mode_product(x, sub, modes=modes, skip=k),
        ct.multi_mode_product(x, [sub[i] for i in kept], modes=[modes[i] for i in kept]),
        rtol=RTOL,
    )
    # vectors contract their modes away (TensorLy needs ascending modes for this)
    vecs = [m[0] for m in mats]
    assert_allclose(ct.multi_mode_product(x, vecs), multi_mode_dot(x, vecs), rtol=RTOL)
    mixed = [v if i % 2 else m for i, (m, v) in enumerate(zip(mats, vecs))]
    assert_allclose(ct.multi_mode_product(x, mixed), multi_mode_dot(x, mixed), rtol=RTOL)


@ORACLE
@given(data=st.data())
def test_mttkrp(data):
    shape = data.draw(shapes(min_ndim=2, max_ndim=5, max_size=600, max_side=8))
    cp = data.draw(cp_tensors(shape, st.integers(1, 5)))
    x = data.draw(dense_tensors(shape))
    outs = ct.mttkrp_all(x, cp)
    for n in range(x.ndim):
        expected = tl_mttkrp(x, cp, n)
        assert_allclose(ct.mttkrp(x, cp, n), expected, rtol=RTOL)
        assert_allclose(outs[n], expected, rtol=RTOL)


@pytest.mark.parametrize(
    "shape, rank",
    [((7, 9, 11), 4), ((13, 2, 3, 17), 3), ((6, 5, 4, 3, 2), 5), ((40, 3, 30), 6), ((2, 50), 3)],
)
def test_mttkrp_larger_shapes(shape, rank):
    """The split choices of the fast paths (both orientations) on less tiny tensors."""
    rng = np.random.default_rng(sum(shape) + rank)
    x = rng.standard_normal(shape)
    cp = ct.CPTensor(rng.standard_normal(rank), [rng.standard_normal((n, rank)) for n in shape])
    outs = ct.mttkrp_all(x, cp)
    for n in range(len(shape)):
        expected = tl_mttkrp(x, cp, n)
        assert_allclose(ct.mttkrp(x, cp, n), expected, rtol=RTOL)
        assert_allclose(outs[n], expected, rtol=RTOL)
    assert_allclose(ct.reconstruct(cp), tl.cp_to_tensor(tl_cp(cp)), rtol=RTOL)
    for n in range(len(shape)):
        m = rng.standard_normal((3, shape[n]))
        assert_allclose(ct.mode_product(x, m, n), mode_dot(x, m, n), rtol=RTOL)

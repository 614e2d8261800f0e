"""Hypothesis properties of the CP core on every backend (NumPy, torch CPU/CUDA; float32/64)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cptensor as ct
from cptensor._backend import to_numpy
from cptensor.testing import assert_allclose, cp_tensors, dense_tensors, shapes

EXAMPLES = settings(max_examples=15)


def same_kind(result, like, backend) -> None:
    """The result keeps the backend, dtype and device of the input."""
    if backend.name == "numpy":  # NumPy gives scalars for 0-d results
        assert isinstance(result, (np.ndarray, np.generic)), type(result)
    else:
        assert type(result) is type(like), (type(result), type(like))
    assert str(result.dtype).removeprefix("torch.") == backend.dtype
    if backend.name == "torch":
        assert result.device.type == like.device.type


def tol(backend) -> dict[str, float]:
    return {"rtol": backend.rtol}


@st.composite
def tensor_and_factors(draw, backend, min_ndim=1, max_ndim=5):
    shape = draw(shapes(min_ndim=min_ndim, max_ndim=max_ndim, max_side=4, max_size=200))
    rank = draw(st.integers(1, 3))
    x = draw(dense_tensors(shape, **backend.kwargs))
    cp = draw(cp_tensors(shape, rank, **backend.kwargs))
    return x, cp


# --- unfold / fold ------------------------------------------------------------------------
@EXAMPLES
@given(data=st.data())
def test_fold_unfold_roundtrip(backend, data):
    x = data.draw(dense_tensors(shapes(min_ndim=1, max_ndim=5), **backend.kwargs))
    mode = data.draw(st.integers(-x.ndim, x.ndim - 1))
    m = ct.unfold(x, mode)
    assert tuple(m.shape) == (x.shape[mode], math.prod(x.shape) // x.shape[mode])
    same_kind(m, x, backend)
    back = ct.fold(m, mode, tuple(x.shape))
    same_kind(back, x, backend)
    assert_allclose(back, x, rtol=0, atol=0)
    # the stated convention: moveaxis(x, mode, 0) in row-major order
    expected = np.moveaxis(to_numpy(x), mode, 0).reshape(x.shape[mode], -1)
    assert_allclose(m, expected, rtol=0, atol=0)


# --- Khatri–Rao / Kronecker ---------------------------------------------------------------
@EXAMPLES
@given(data=st.data())
def test_khatri_rao_columns_are_kronecker_products(backend, data):
    cp = data.draw(cp_tensors(shapes(min_ndim=1, max_ndim=4), **backend.kwargs))
    kr = ct.khatri_rao(list(cp.factors), weights=cp.weights)
    same_kind(kr, cp.factors[0], backend)
    fs = [to_numpy(f).astype(np.float64) for f in cp.factors]
    w = to_numpy(cp.weights).astype(np.float64)
    for r in range(cp.rank):
        col = np.array([w[r]])
        for f in fs:
            col = np.kron(col, f[:, r])
        assert_allclose(kr[:, r], col, **tol(backend))


@EXAMPLES
@given(data=st.data())
def test_khatri_rao_skip(backend, data):
    cp = data.draw(cp_tensors(shapes(min_ndim=2, max_ndim=4), **backend.kwargs))
    skip = data.draw(st.integers(0, cp.ndim - 1))
    kept = [f for n, f in enumerate(cp.factors) if n != skip]
    assert_allclose(ct.khatri_rao(list(cp.factors), skip=skip), ct.khatri_rao(kept), rtol=0, atol=0)


@EXAMPLES
@given(data=st.data())
def test_kronecker_mixed_product(backend, data):
    """(A ⊗ B)(C ⊗ D) = (AC) ⊗ (BD)."""
    p, q, r, s, t, u = (data.draw(st.integers(1, 4)) for _ in range(6))
    a, b = (data.draw(dense_tensors(sh, **backend.kwargs)) for sh in [(p, q), (r, s)])
    c, d = (data.draw(dense_tensors(sh, **backend.kwargs)) for sh in [(q, t), (s, u)])
    left = ct.kronecker([a, b]) @ ct.kronecker([c, d])
    right = ct.kronecker([a @ c, b @ d])
    same_kind(left, a, backend)
    assert_allclose(left, right, **tol(backend))
    assert_allclose(ct.kronecker([a, b]), np.kron(to_numpy(a), to_numpy(b)), rtol=0, atol=0)


# --- mode products ------------------------------------------------------------------------
@EXAMPLES
@given(data=st.data())
def test_mode_product_unfolding_identity(backend, data):
    x = data.draw(dense_tensors(shapes(min_ndim=1, max_ndim=4), **backend.kwargs))
    mode = data.draw(st.integers(0, x.ndim - 1))
    j = data.draw(st.integers(1, 4))
    m = data.draw(dense_tensors((j, x.shape[mode]), **backend.kwargs))
    y = ct.mode_product(x, m, mode)
    same_kind(y, x, backend)
    assert tuple(y.shape) == (*x.shape[:mode], j, *x.shape[mode + 1 :])
    assert_allclose(ct.unfold(y, mode), m @ ct.unfold(x, mode), **tol(backend))
    # transpose=True multiplies by the transpose
    assert_allclose(ct.mode_product(x, m.T, mode, transpose=True), y, **tol(backend))
    # a vector contracts the mode away
    v = m[0]
    expected = np.tensordot(
        to_numpy(x).astype(np.float64), to_numpy(v).astype(np.float64), axes=(mode, 0)
    )
    assert_allclose(ct.mode_product(x, v, mode), expected, **tol(backend))


@EXAMPLES
@given(data=st.data())
def test_mode_products_compose(backend, data):
    """Distinct modes commute; the same mode composes: x ×_n A ×_n B = x ×_n (BA)."""
    x = data.draw(dense_tensors(shapes(min_ndim=2, max_ndim=4), **backend.kwargs))
    n1, n2 = data.draw(st.lists(st.integers(0, x.ndim - 1), min_size=2, max_size=2, unique=True))
    a = data.draw(dense_tensors((data.draw(st.integers(1, 3)), x.shape[n1]), **backend.kwargs))
    b = data.draw(dense_tensors((data.draw(st.integers(1, 3)), x.shape[n2]), **backend.kwargs))
    ab = ct.mode_product(ct.mode_product(x, a, n1), b, n2)
    ba = ct.mode_product(ct.mode_product(x, b, n2), a, n1)
    assert_allclose(ab, ba, **tol(backend))
    c = data.draw(dense_tensors((2, a.shape[0]), **backend.kwargs))
    assert_allclose(
        ct.mode_product(ct.mode_product(x, a, n1), c, n1),
        ct.mode_product(x, c @ a, n1),
        **tol(backend),
    )
    # multi_mode_product is the sequence of mode products
    assert_allclose(ct.multi_mode_product(x, [a, b], modes=[n1, n2]), ab, **tol(backend))
    assert_allclose(
        ct.multi_mode_product(x, [a, b], modes=[n1, n2], skip=1),
        ct.mode_product(x, a, n1),
        **tol(backend),
    )


@EXAMPLES
@given(data=st.data())
def test_cp_mode_product_matches_dense(backend, data):
    cp = data.draw(cp_tensors(shapes(min_ndim=2, max_ndim=4), **backend.kwargs))
    mode = data.draw(st.integers(0, cp.ndim - 1))
    m = data.draw(dense_tensors((3, cp.shape[mode]), **backend.kwargs))
    assert_allclose(
        ct.reconstruct(ct.cp_mode_product(cp, m, mode)),
        ct.mode_product(ct.reconstruct(cp), m, mode),
        **tol(backend),
    )


# --- MTTKRP ---------------------------------------------------------------------------------
@EXAMPLES
@given(data=st.data())
def test_mttkrp_equals_unfolding_times_khatri_rao(backend, data):
    x, cp = data.draw(tensor_and_factors(backend))
    factors = list(cp.factors)
    outs = ct.mttkrp_all(x, factors)
    assert len(outs) == x.ndim
    for n in range(x.ndim):
        expected = ct.unfold(x, n) @ ct.khatri_rao(factors, skip=n)
        got = ct.mttkrp(x, factors, n)
        same_kind(got, x, backend)
        assert tuple(got.shape) == (x.shape[n], cp.rank)
        assert_allclose(got, expected, **tol(backend))
        assert_allclose(outs[n], got, **tol(backend))
        # a CPTensor applies its weights column-wise
        assert_allclose(ct.mttkrp(x, cp, n), got * cp.weights, **tol(backend))
    for n, o in enumerate(ct.mttkrp_all(x, cp)):
        assert_allclose(o, outs[n] * cp.weights, **tol(backend))


# --- reconstruction -----------------------------------------------------------------------
@EXAMPLES
@given(data=st.data())
def test_reconstruct_unfolded_and_entries(backend, data):
    cp = data.draw(cp_tensors(shapes(min_ndim=1, max_ndim=5), **backend.kwargs))
    full = ct.reconstruct(cp)
    same_kind(full, cp.factors[0], backend)
    assert tuple(full.shape) == cp.shape
    # the definition, in float64 on the host
    fs = [to_numpy(f).astype(np.float64) for f in cp.factors]
    ref = np.einsum(
        ",".join(f"{chr(97 + n)}z" for n in range(cp.ndim))
        + ",z->"
        + "".join(chr(97 + n) for n in range(cp.ndim)),
        *fs,
        to_numpy(cp.weights).astype(np.float64),
    )
    assert_allclose(full, ref, **tol(backend))
    for n in range(cp.ndim):
        assert_allclose(ct.reconstruct_unfolded(cp, n), ct.unfold(full, n), **tol(backend))
    npts = data.draw(st.integers(0, 6))
    idx = tuple(
        np.asarray(
            data.draw(st.lists(st.integers(0, s - 1), min_size=npts, max_size=npts)), dtype=np.int64
        )
        for s in cp.shape
    )
    vals = ct.entries(cp, idx)
    same_kind(vals, cp.factors[0], backend)
    assert_allclose(vals, to_numpy(full)[idx], **tol(backend))
    # the (n_points, N) array form
    assert_allclose(ct.entries(cp, np.stack(idx, axis=1)), vals, rtol=0, atol=0)


@EXAMPLES
@given(data=st.data())
def test_fix_modes_matches_slicing(backend, data):
    cp = data.draw(cp_tensors(shapes(min_ndim=2, max_ndim=5), **backend.kwargs))
    modes = data.draw(
        st.lists(st.integers(0, cp.ndim - 1), min_size=1, max_size=cp.ndim - 1, unique=True)
    )
    fixed = {m: data.draw(st.integers(-cp.shape[m], cp.shape[m] - 1)) for m in modes}
    sub = ct.fix_modes(cp, fixed)
    assert sub.ndim == cp.ndim - len(modes)
    index = tuple(fixed.get(n, slice(None)) for n in range(cp.ndim))
    assert_allclose(ct.reconstruct(sub), to_numpy(ct.reconstruct(cp))[index], **tol(backend))


# --- norms and inner products ---------------------------------------------------------------
@EXAMPLES
@given(data=st.data())
def test_norm_and_inner_match_dense(backend, data):
    shape = data.draw(shapes(min_ndim=1, max_ndim=4))
    a = data.draw(cp_tensors(shape, **backend.kwargs))
    b = data.draw(cp_tensors(shape, **backend.kwargs))
    x = data.draw(dense_tensors(shape, **backend.kwargs))
    da, db = ct.reconstruct(a), ct.reconstruct(b)
    xp = a.xp
    scale = float(np.linalg.norm(to_numpy(da).astype(np.float64))) + 1.0
    atol = backend.rtol * scale * (scale + float(np.linalg.norm(to_numpy(x))) + 1.0) * 10
    n = ct.norm(a)
    same_kind(n, a.factors[0], backend)
    assert_allclose(n, xp.linalg.vector_norm(xp.reshape(da, (-1,))), rtol=backend.rtol, atol=atol)
    assert_allclose(ct.norm(x), np.linalg.norm(to_numpy(x)), rtol=backend.rtol, atol=atol)
    dense_ab = xp.sum(da * db)
    assert_allclose(ct.inner(a, b), dense_ab, rtol=backend.rtol, atol=atol)
    assert_allclose(ct.inner(a, x), xp.sum(da * x), rtol=backend.rtol, atol=atol)
    assert_allclose(ct.inner(x, a), xp.sum(da * x), rtol=backend.rtol, atol=atol)
    assert_allclose(ct.inner(x, db), xp.sum(x * db), rtol=backend.rtol, atol=atol)


# --- indeterminacies ----------------------------------------------------------------------
@EXAMPLES
@given(data=st.data())
def test_normalize_arrange_fix_signs_permute_keep_the_tensor(backend, data):
    cp = data.draw(cp_tensors(shapes(min_ndim=1, max_ndim=4), **backend.kwargs))
    full = ct.reconstruct(cp)
    atol = backend.rtol * (float(np.max(np.abs(to_numpy(full)), initial=0.0)) + 1.0) * 10
    normed = ct.normalize(cp)
    for f in normed.factors:
        norms = np.linalg.norm(to_numpy(f).astype(np.float64), axis=0)
        assert np.all((np.abs(norms - 1) < 1e-3) | (norms == 0))
    arranged = ct.arrange(cp)
    w = to_numpy(arranged.weights)
    assert np.all(np.diff(w) <= 0)
    perm = data.draw(st.permutations(range(cp.rank)))
    permuted = ct.permute(cp, perm)
    assert_allclose(permuted.weights, to_numpy(cp.weights)[list(perm)], rtol=0, atol=0)
    signed = ct.fix_signs(cp)
    ref = data.draw(cp_tensors(cp.shape, cp.rank, **backend.kwargs))
    aligned = ct.fix_signs(cp, reference=ref)
    for out in (normed, arranged, permuted, signed, aligned, ct.arrange(cp, order=perm)):
        assert_allclose(ct.reconstruct(out), full, rtol=backend.rtol, atol=atol)
    # fix_signs: in every mode but at most one per component, the largest entry is >= 0
    fs = [to_numpy(f) for f in signed.factors]
    for r in range(cp.rank):
        neg = sum(float(f[np.argmax(np.abs(f[:, r])), r]) < 0 for f in fs)
        assert neg <= 1


# --- inputs are never mutated ----------------------------------------------------------------
def _snapshot(arrays):
    return [to_numpy(a).copy() for a in arrays]


@settings(max_examples=10)
@given(data=st.data())
def test_inputs_are_never_mutated(backend, data):
    x, cp = data.draw(tensor_and_factors(backend, min_ndim=2, max_ndim=4))
    other = data.draw(cp_tensors(cp.shape, cp.rank, **backend.kwargs))
    m = data.draw(dense_tensors((2, x.shape[0]), **backend.kwargs))
    inputs = [x, m, cp.weights, *cp.factors, other.weights, *other.factors]
    before = _snapshot(inputs)
    factors = list(cp.factors)
    calls = [
        lambda: ct.unfold(x, 1),
        lambda: ct.fold(ct.unfold(x, 0), 0, tuple(x.shape)),
        lambda: ct.khatri_rao(factors, weights=cp.weights),
        lambda: ct.kronecker(factors),
        lambda: ct.mode_product(x, m, 0),
        lambda: ct.multi_mode_product(x, [m], modes=[0]),
        lambda: ct.mttkrp(x, cp, 1),
        lambda: ct.mttkrp_all(x, cp),
        lambda: ct.reconstruct(cp),
        lambda: ct.reconstruct_unfolded(cp, 1),
        lambda: ct.entries(cp, (np.array([0]),) * cp.ndim),
        lambda: ct.fix_modes(cp, {0: 0}),
        lambda: ct.norm(cp),
        lambda: ct.inner(cp, other),
        lambda: ct.inner(cp, x),
        lambda: ct.normalize(cp),
        lambda: ct.arrange(cp),
        lambda: ct.fix_signs(cp),
        lambda: ct.fix_signs(cp, reference=other),
        lambda: ct.permute(cp, list(range(cp.rank))[::-1]),
        lambda: ct.cp_mode_product(cp, m, 0),
    ]
    for call in calls:
        call()
        after = _snapshot(inputs)
        for b, a in zip(before, after):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "shape",
    [
        (60, 60, 2),
        (2, 60, 60),
        (30, 2, 30),
        (5, 6, 7),
        (2, 30, 3, 30),
        (30, 3, 30, 2),
        (4, 3, 2, 5, 6),
    ],
)
def test_mttkrp_plans_on_every_backend(backend, shape):
    """Shapes that steer MTTKRP to each of its plans (GEMM or batched GEMM first, either
    end, every pair of intermediates of the 3-way sweep)."""
    rng = np.random.default_rng(len(shape))
    rank = 7
    x = backend.asarray(rng.standard_normal(shape))
    factors = [backend.asarray(rng.standard_normal((n, rank))) for n in shape]
    outs = ct.mttkrp_all(x, factors)
    for n in range(len(shape)):
        expected = ct.unfold(x, n) @ ct.khatri_rao(factors, skip=n)
        assert_allclose(ct.mttkrp(x, factors, n), expected, **tol(backend))
        assert_allclose(outs[n], expected, **tol(backend))


@pytest.mark.parametrize(
    "spec, sa, sb",
    [
        ("iar,ar->ir", (3, 4, 5), (4, 5)),
        ("irb,rb->ir", (3, 5, 6), (5, 6)),
        ("rbk,rb->kr", (5, 4, 3), (5, 4)),
        ("ark,ar->kr", (2, 5, 3), (2, 5)),
        ("rab,br->ra", (5, 3, 4), (4, 5)),
        ("rjk,kr->jr", (5, 3, 4), (4, 5)),
    ],
)
def test_einsum_fallback_for_other_array_libraries(spec, sa, sb):
    """The broadcast-and-sum contraction used for array-API libraries without einsum."""
    from cptensor.products import _einsum_broadcast

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(sa), rng.standard_normal(sb)
    assert_allclose(_einsum_broadcast(spec, a, b), np.einsum(spec, a, b))


def test_arrange_orders_signed_weights_by_magnitude():
    """Tensor Toolbox / pyttb: weights made non-negative (signs into the first factor),
    then sorted: (-5, 1) -> (5, 1), and the tensor is unchanged."""
    rng = np.random.default_rng(3)
    fs = [rng.standard_normal((n, 2)) for n in (4, 3, 2)]
    fs = [f / np.linalg.norm(f, axis=0) for f in fs]
    cp = ct.CPTensor(np.array([1.0, -5.0]), fs)
    out = ct.arrange(cp)
    np.testing.assert_allclose(out.weights, [5.0, 1.0])
    np.testing.assert_allclose(ct.reconstruct(out), ct.reconstruct(cp), atol=1e-12)


@given(
    cp=cp_tensors(rank=st.integers(1, 4)),
    signs=st.lists(st.sampled_from([-1.0, 1.0]), min_size=4, max_size=4),
)
@settings(max_examples=40, deadline=None)
def test_arrange_signed_weights_property(cp, signs):
    """For any CP tensor with weights of any signs: arrange gives non-negative weights in
    decreasing order and the same tensor."""
    signed = ct.CPTensor(cp.weights * np.asarray(signs[: cp.rank]), cp.factors)
    out = ct.arrange(signed)
    w = to_numpy(out.weights)
    assert (w >= 0).all() and (np.diff(w) <= 1e-12 * max(1.0, w.max())).all()
    assert_allclose(ct.reconstruct(out), ct.reconstruct(signed), atol=1e-10)


def test_fit_als_tol_zero_runs_max_iter():
    x = np.random.default_rng(0).standard_normal((6, 5, 4))
    res = ct.fit_als(x, 3, tol=0, max_iter=200, seed=0)
    assert res.n_iter == 200 and not res.converged

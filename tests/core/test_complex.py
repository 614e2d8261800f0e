"""Complex-valued CP (complex64/complex128, NumPy and torch): products against dense
``einsum`` oracles, the conjugation identities of ``norm``/``inner``, initialisation, the
conjugation of the ALS normal equations against a dense least-squares solve, recovery of
exact low-rank tensors, TensorLy's complex ``parafac`` as an oracle, and clear refusals
where complex data is not supported."""

from __future__ import annotations

import numpy as np
import pytest
import tensorly as tl
from hypothesis import given, settings
from hypothesis import strategies as st
from tensorly.decomposition import parafac

import cptensor as ct
from cptensor._backend import to_numpy
from cptensor.fit import fit_als, fit_gradient
from cptensor.testing import cp_tensors, dense_tensors, shapes

torch = pytest.importorskip("torch")

BACKENDS = ["numpy", "torch"]
DTYPES = {"complex128": 1e-10, "complex64": 2e-4}


@pytest.fixture(autouse=True)
def _numpy_tensorly():
    """TensorLy's backend is global state: pin it to NumPy for these tests."""
    with tl.backend_context("numpy"):
        yield


def crandn(rng, shape):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) / np.sqrt(2)


def on(backend, a, dtype="complex128"):
    a = np.asarray(a).astype(dtype)
    return torch.from_numpy(a) if backend == "torch" else a


def close(actual, desired, rtol):
    desired = np.asarray(to_numpy(desired))
    scale = float(np.max(np.abs(desired), initial=0.0)) + 1e-30
    np.testing.assert_allclose(to_numpy(actual), desired, rtol=rtol, atol=rtol * scale)


def complex_cp(rng, shape, rank, backend="numpy", dtype="complex128", weights=True):
    w = rng.uniform(0.5, 2.0, rank) * np.exp(1j * rng.uniform(0, 2 * np.pi, rank))
    fs = [crandn(rng, (n, rank)) for n in shape]
    return ct.CPTensor(
        on(backend, w if weights else np.ones(rank), dtype), [on(backend, f, dtype) for f in fs]
    )


def einsum_dense(cp):
    """The dense tensor of a CP (NumPy, complex128) by one einsum: the oracle."""
    letters = "abcdef"[: cp.ndim]
    spec = ",".join(f"{c}r" for c in letters) + ",r->" + letters
    fs = [to_numpy(f).astype(np.complex128) for f in cp.factors]
    return np.einsum(spec, *fs, to_numpy(cp.weights).astype(np.complex128))


# --- products against dense einsum oracles -----------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("shape", [(3, 4), (3, 4, 5), (2, 3, 4, 5), (2, 3, 2, 3, 2)])
def test_products_match_einsum(backend, dtype, shape):
    rtol = DTYPES[dtype]
    rng = np.random.default_rng(len(shape))
    cp = complex_cp(rng, shape, 3, backend, dtype)
    x_np = crandn(rng, shape)
    x = on(backend, x_np, dtype)
    fs = [to_numpy(f).astype(np.complex128) for f in cp.factors]
    w = to_numpy(cp.weights).astype(np.complex128)
    letters = "abcdef"[: len(shape)]
    close(ct.reconstruct(cp), einsum_dense(cp), rtol)
    for n in range(len(shape)):
        # MTTKRP is multilinear (no conjugation): Σ x · Π_{k≠n} A_k, times the weights
        spec = letters + "," + ",".join(f"{c}r" for k, c in enumerate(letters) if k != n)
        expect = np.einsum(
            spec + f"->{letters[n]}r", x_np, *[f for k, f in enumerate(fs) if k != n]
        )
        close(ct.mttkrp(x, cp, n), expect * w, rtol)
        close(ct.mttkrp_all(x, cp)[n], expect * w, rtol)
        close(ct.reconstruct_unfolded(cp, n), ct.unfold(einsum_dense(cp), n), rtol)
        m_np = crandn(rng, (2, shape[n]))
        out = letters.replace(letters[n], "z")
        expect = np.einsum(f"z{letters[n]},{letters}->{out}", m_np, x_np)
        close(ct.mode_product(x, on(backend, m_np, dtype), n), expect, rtol)
    kr = np.einsum(",".join(f"{c}r" for c in letters) + "->" + letters + "r", *fs)
    close(ct.khatri_rao(list(cp.factors)), kr.reshape(-1, 3), rtol)
    mats = [crandn(rng, (2, s)) for s in shape]
    spec = ",".join(f"{c.upper()}{c}" for c in letters) + "," + letters + "->" + letters.upper()
    close(
        ct.multi_mode_product(x, [on(backend, m, dtype) for m in mats]),
        np.einsum(spec, *mats, x_np),
        rtol,
    )


# --- norm and inner: conjugation identities (Hypothesis) ---------------------------------
@st.composite
def complex_cps(draw, shape, rank):
    re = draw(cp_tensors(shape, rank))
    im = draw(cp_tensors(shape, rank))
    fs = [a + 1j * b for a, b in zip(re.factors, im.factors)]
    return ct.CPTensor(re.weights + 1j * im.weights, fs)


@st.composite
def complex_dense(draw, shape):
    return draw(dense_tensors(shape)) + 1j * draw(dense_tensors(shape))


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_norm_and_inner_conjugation(data):
    shape = data.draw(shapes(min_ndim=2, max_ndim=4, max_side=4, max_size=100))
    a = data.draw(complex_cps(shape, data.draw(st.integers(1, 3))))
    b = data.draw(complex_cps(shape, data.draw(st.integers(1, 3))))
    x = data.draw(complex_dense(shape))
    da, db = einsum_dense(a), einsum_dense(b)
    scale = 1.0 + float(np.linalg.norm(da)) * (1.0 + float(np.linalg.norm(db) + np.linalg.norm(x)))
    atol = 1e-10 * scale
    # ‖a‖² = ⟨a, a⟩, real, equal to the dense norm
    n = ct.norm(a)
    assert not np.iscomplexobj(n)
    aa = complex(ct.inner(a, a))
    assert abs(aa.imag) <= atol
    assert abs(float(n) ** 2 - aa.real) <= atol
    assert abs(float(n) - np.linalg.norm(da)) <= 1e-10 * (1 + np.linalg.norm(da))
    # ⟨a, b⟩ = Σ conj(a)·b = conj(⟨b, a⟩), in every mix of CP and dense
    for left, right, dl, dr in ((a, b, da, db), (a, x, da, x), (x, a, x, da), (da, x, da, x)):
        expect = np.vdot(dl, dr)
        got = complex(ct.inner(left, right))
        assert abs(got - expect) <= atol, (got, expect)
        assert abs(got - np.conj(complex(ct.inner(right, left)))) <= atol
    assert abs(float(ct.norm(x)) - np.linalg.norm(x)) <= 1e-12 * (1 + np.linalg.norm(x))


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_norm_inner_torch(dtype):
    rng = np.random.default_rng(3)
    a = complex_cp(rng, (3, 4, 5), 2, "torch", dtype)
    b = complex_cp(rng, (3, 4, 5), 3, "torch", dtype)
    da, db = einsum_dense(a), einsum_dense(b)
    rtol = DTYPES[dtype] * 10
    n = ct.norm(a)
    assert isinstance(n, torch.Tensor) and not n.dtype.is_complex
    assert abs(float(n) - np.linalg.norm(da)) <= rtol * np.linalg.norm(da)
    got = complex(ct.inner(a, b).item())
    assert abs(got - np.vdot(da, db)) <= rtol * np.linalg.norm(da) * np.linalg.norm(db)


# --- the CP type and its indeterminacies ---------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_normalize_arrange_fix_signs_keep_the_tensor(backend):
    rng = np.random.default_rng(4)
    cp = complex_cp(rng, (3, 4, 5), 3, backend)
    dense = einsum_dense(cp)
    for norm in (1, 2):
        normed = ct.normalize(cp, norm=norm)
        close(ct.reconstruct(normed), dense, 1e-12)
        for f in normed.factors:
            got = np.linalg.norm(to_numpy(f), ord=norm, axis=0)
            np.testing.assert_allclose(got, 1.0, rtol=1e-12)
    arranged = ct.arrange(cp)
    w = to_numpy(arranged.weights)
    assert np.all(w.imag == 0) and np.all(w.real >= 0) and np.all(np.diff(w.real) <= 0)
    close(ct.reconstruct(arranged), dense, 1e-12)
    fixed = ct.fix_signs(arranged)
    close(ct.reconstruct(fixed), dense, 1e-12)
    # every column's largest entry is real and positive, but in the last mode, which
    # takes the product of the other phases back
    for f in fixed.factors[:-1]:
        f = to_numpy(f)
        top = f[np.argmax(np.abs(f), axis=0), np.arange(f.shape[1])]
        assert np.all(top.real > 0)
        np.testing.assert_allclose(top.imag, 0, atol=1e-12)
    # aligning a phase-rotated copy with the original restores it
    phases = [np.exp(1j * rng.uniform(0, 2 * np.pi, 3)) for _ in range(2)]
    rotated = ct.CPTensor(
        arranged.weights,
        [
            arranged.factors[0] * on(backend, phases[0]),
            arranged.factors[1] * on(backend, phases[1]),
            arranged.factors[2] * on(backend, 1 / (phases[0] * phases[1])),
        ],
    )
    back = ct.fix_signs(rotated, reference=arranged)
    for f, g in zip(back.factors, arranged.factors):
        close(f, to_numpy(g), 1e-12)


# --- initialisation -------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_init_complex(backend, dtype):
    like = on(backend, np.zeros(1), dtype)
    r = ct.init.random((4, 5, 6), 3, like=like, seed=0)
    assert r.dtype == like.dtype
    f = to_numpy(r.factors[0])
    assert np.abs(f.imag).max() > 0.1  # genuinely complex, not real numbers cast
    o = ct.init.orthogonal((4, 5, 6), 3, like=like, seed=0)
    for f in o.factors:
        f = to_numpy(f).astype(np.complex128)
        np.testing.assert_allclose(f.conj().T @ f, np.eye(3), atol=1e-5)
    rng = np.random.default_rng(0)
    x_np = crandn(rng, (4, 5, 6))
    s = ct.init.svd(on(backend, x_np, dtype), 3)
    assert s.dtype == like.dtype
    for n, f in enumerate(s.factors):
        u = np.linalg.svd(ct.unfold(x_np, n), full_matrices=False)[0][:, :3]
        # the same subspace, column by column (up to a phase)
        overlap = np.abs(np.diag(u.conj().T @ to_numpy(f).astype(np.complex128)))
        np.testing.assert_allclose(overlap, 1.0, atol=1e-4)
        top = to_numpy(f)[np.argmax(np.abs(to_numpy(f)), axis=0), np.arange(3)]
        assert np.all(np.abs(top.imag) <= 1e-6 * np.abs(top)) and np.all(top.real > 0)


def test_init_randomized_svd_complex():
    """Both sides of the unfolding over 512: the randomized range finder, on complex data."""
    rng = np.random.default_rng(1)
    cp = complex_cp(rng, (600, 600, 2), 2, weights=False)
    x = ct.reconstruct(cp)
    s = ct.init.svd(x, 2, seed=0)
    for n in (0, 1):
        u = np.linalg.svd(ct.unfold(x, n), full_matrices=False)[0][:, :2]
        overlap = np.linalg.svd(u.conj().T @ s.factors[n], compute_uv=False)
        np.testing.assert_allclose(overlap, 1.0, atol=1e-8)


# --- ALS: the conjugation of the normal equations --------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_als_update_is_the_dense_least_squares_solution(backend):
    """One ALS update of mode 0 (modes 1, 2 fixed) equals the dense least-squares solution
    ``argmin_A ‖X_(0) − A KRᵀ‖``; the normal equations are ``A conj(V) = X_(0) conj(KR)``
    with ``V = ⊛ A_kᴴA_k``."""
    rng = np.random.default_rng(5)
    shape, rank = (4, 5, 6), 3
    x_np = crandn(rng, shape)
    start = complex_cp(rng, shape, rank, weights=False)
    kr = ct.khatri_rao(list(start.factors), skip=0)
    a_ls = np.linalg.lstsq(kr, ct.unfold(x_np, 0).T, rcond=None)[0].T
    expect = ct.reconstruct(ct.CPTensor(None, [a_ls, *start.factors[1:]]))
    start_b = ct.CPTensor(on(backend, start.weights), [on(backend, f) for f in start.factors])
    fit = fit_als(
        on(backend, x_np), start_b, max_iter=1, tol=0, line_search=False, fixed_modes=(1, 2)
    )
    close(ct.reconstruct(fit.cp), expect, 1e-10)
    # the wrong conjugation (plain V instead of conj(V)) is measurably different
    v = np.ones((rank, rank), dtype=complex)
    for f in start.factors[1:]:
        v = v * (f.conj().T @ f)
    wrong = ct.mttkrp(x_np, [f.conj() for f in start.factors], 0) @ np.linalg.inv(v)
    wrong_dense = ct.reconstruct(ct.CPTensor(None, [wrong, *start.factors[1:]]))
    assert np.linalg.norm(wrong_dense - expect) > 1e-3 * np.linalg.norm(expect)


# --- ALS: recovery and TensorLy's complex parafac as an oracle -------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("shape", [(8, 9, 10), (5, 6, 4, 7)])
def test_exact_complex_low_rank_is_recovered(backend, dtype, shape):
    rng = np.random.default_rng(7)
    truth = complex_cp(rng, shape, 3, weights=False)
    x = on(backend, ct.reconstruct(truth), dtype)
    fit = fit_als(x, 3, seed=0)
    assert fit.fit > 0.9999, fit.stop_reason
    assert fit.cp.dtype == x.dtype and type(fit.cp.factors[0]) is type(x)
    rec = ct.reconstruct(fit.cp)
    err = np.linalg.norm(to_numpy(rec) - to_numpy(x)) / np.linalg.norm(to_numpy(x))
    assert abs(err - fit.rel_error) <= 1e-3 * fit.rel_error + 1e-6  # the reported error is exact
    w = to_numpy(fit.cp.weights)
    assert np.all(w.imag == 0) and np.all(np.diff(w.real) <= 0)  # arranged: real, sorted


@pytest.mark.parametrize("init", ["svd", "random", "orthogonal"])
def test_complex_inits_and_mask(init):
    rng = np.random.default_rng(8)
    x = ct.reconstruct(complex_cp(rng, (6, 7, 8), 2))
    assert fit_als(x, 2, init=init, seed=1).fit > 0.9999
    mask = rng.random(x.shape) > 0.2
    masked = fit_als(x, 2, init=init, seed=1, mask=mask)
    assert masked.fit > 0.999, masked.stop_reason


@pytest.mark.parametrize("iterations", [1, 4, 15])
def test_same_iterates_as_tensorly_parafac(iterations):
    """TensorLy's complex parafac and fit_als do the same ALS updates from the same start
    (line search off): the models agree to round-off after every number of sweeps."""
    rng = np.random.default_rng(9)
    shape, rank = (6, 7, 8), 3
    x = ct.reconstruct(complex_cp(rng, shape, rank))
    x = x + 0.1 * np.linalg.norm(x) / np.sqrt(x.size) * crandn(rng, shape)
    start = ct.init.random(shape, rank, dtype=np.complex128, seed=5)
    tl_init = (np.ones(rank, dtype=complex), [f.copy() for f in start.factors])
    theirs = parafac(x, rank, init=tl_init, n_iter_max=iterations, tol=0, linesearch=False)
    ours = fit_als(x, rank, init=start, max_iter=iterations, tol=0, line_search=False)
    dense = tl.cp_to_tensor(theirs)
    tl_err = np.linalg.norm(x - dense) / np.linalg.norm(x)
    assert abs(ours.rel_error - tl_err) <= 1e-10
    np.testing.assert_allclose(ct.reconstruct(ours.cp), dense, atol=1e-10 * np.abs(dense).max())


def test_converged_fit_matches_tensorly():
    """Each library run to convergence from its own defaults reaches the same fit."""
    rng = np.random.default_rng(10)
    shape = (7, 8, 9)
    x = ct.reconstruct(complex_cp(rng, shape, 2))
    x = x + 0.05 * np.linalg.norm(x) / np.sqrt(x.size) * crandn(rng, shape)
    theirs = parafac(x, 2, init="svd", n_iter_max=500, tol=1e-12)
    tl_fit = 1 - np.linalg.norm(x - tl.cp_to_tensor(theirs)) / np.linalg.norm(x)
    ours = fit_als(x, 2, seed=0, tol=1e-12)
    assert abs(ours.fit - tl_fit) <= 1e-6


# --- where complex data is refused ------------------------------------------------------------
def test_refusals():
    rng = np.random.default_rng(11)
    x = ct.reconstruct(complex_cp(rng, (3, 4, 5), 2))
    with pytest.raises(TypeError, match=r"nonnegative=True is not defined for complex data"):
        fit_als(x, 2, nonnegative=True)
    with pytest.raises(TypeError, match=r"nonnegative=\(0,\) is not defined for complex"):
        fit_als(x, 2, nonnegative=(0,))
    with pytest.raises(TypeError, match=r"complex dtype complex128: this fit supports real"):
        fit_gradient(x, 2)
    with pytest.raises(TypeError, match=r"init.factors\[0\]|dtype"):
        fit_als(x, 2, init=ct.init.random(x.shape, 2, seed=0))  # a real start for complex x

    class ComplexOperator:
        __cptensor_operator__ = True
        shape = x.shape
        dtype = x.dtype

    with pytest.raises(TypeError, match=r"complex TensorOperator"):
        fit_als(ComplexOperator(), 2)


# --- diagnostics and score -------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_diagnostics_and_score_on_complex_models(backend):
    from cptensor.analysis import core_consistency, degeneracy, explained_variance, score

    rng = np.random.default_rng(12)
    cp = complex_cp(rng, (5, 6, 7), 3, backend)
    dense = einsum_dense(cp)
    x = on(backend, dense)
    assert core_consistency(x, cp) == pytest.approx(100.0, abs=1e-8)
    ev = explained_variance(x, cp)
    assert ev.total == pytest.approx(1.0, abs=1e-12)
    w = to_numpy(cp.weights)
    fs = [to_numpy(f) for f in cp.factors]
    for r in range(3):  # 1 − ‖X − M_r‖²/‖X‖², densely
        m_r = einsum_dense(ct.CPTensor(w[r : r + 1], [f[:, r : r + 1] for f in fs]))
        expect = 1 - np.linalg.norm(dense - m_r) ** 2 / np.linalg.norm(dense) ** 2
        assert ev.per_component[r] == pytest.approx(expect, abs=1e-10)
    mask = on(backend, rng.random(dense.shape) > 0.3, bool)
    assert explained_variance(x, cp, mask=mask).total == pytest.approx(1.0, abs=1e-12)
    # degeneracy: the real part of the cosine between the rank-one components
    comps = [
        einsum_dense(ct.CPTensor(np.ones(1, complex), [f[:, r : r + 1] for f in fs])).ravel()
        for r in range(3)
    ]
    cos = [
        (np.vdot(comps[i], comps[j]) / np.linalg.norm(comps[i]) / np.linalg.norm(comps[j])).real
        for i in range(3)
        for j in range(3)
        if i != j
    ]
    assert degeneracy(cp) == pytest.approx(min(cos), abs=1e-12)
    noisy = dense + 0.01 * np.abs(dense).max() * crandn(rng, dense.shape)
    fit = fit_als(on(backend, noisy), 3, seed=0)
    assert score(fit.cp, cp).value > 0.99
    # phases do not count against the match: a rotated copy scores 1
    rot = np.exp(1j * np.array([0.3, 1.0, -2.0]))
    turned = ct.CPTensor(cp.weights, [cp.factors[0] * on(backend, rot), *cp.factors[1:]])
    assert score(turned, cp, weight_penalty=False).value == pytest.approx(1.0, abs=1e-12)

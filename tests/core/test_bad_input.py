"""Bad input: every public core function names the offending argument, what it received
and what it expected (mode out of range, mismatched shapes and ranks, mixed backends,
devices and dtypes, wrong ndim)."""

from __future__ import annotations

import numpy as np
import pytest

import cptensor as ct

torch = pytest.importorskip("torch")

rng = np.random.default_rng(0)
X = rng.standard_normal((3, 4, 5))
F = [rng.standard_normal((n, 2)) for n in X.shape]
CP = ct.CPTensor(np.ones(2), F)
M = rng.standard_normal((2, 4))  # multiplies mode 1
TX = torch.asarray(X)
TF = [torch.asarray(f) for f in F]
TCP = ct.CPTensor(torch.ones(2, dtype=torch.float64), TF)
META = [f.to("meta") for f in TF]  # a second device that needs no GPU


# --- mode out of range ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: ct.unfold(X, 3), r"mode=3 is out of range for a 3-way tensor \(expected -3"),
        (lambda: ct.unfold(X, -4), r"mode=-4 is out of range"),
        (lambda: ct.fold(ct.unfold(X, 0), 5, X.shape), r"mode=5 is out of range"),
        (lambda: ct.mode_product(X, M, 7), r"mode=7 is out of range"),
        (lambda: ct.mttkrp(X, F, 3), r"mode=3 is out of range"),
        (lambda: ct.reconstruct_unfolded(CP, 3), r"mode=3 is out of range"),
        (lambda: ct.cp_mode_product(CP, M, 3), r"mode=3 is out of range"),
        (lambda: ct.multi_mode_product(X, [M], modes=[4]), r"modes=4 is out of range"),
        (lambda: ct.khatri_rao(F, skip=3), r"skip=3 is out of range"),
        (lambda: ct.fix_modes(CP, {5: 0}), r"fixed mode=5 is out of range"),
    ],
)
def test_mode_out_of_range(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: ct.unfold(X, 1.0), r"mode must be an int, got float"),
        (lambda: ct.mttkrp(X, F, "0"), r"mode must be an int, got str"),
        (lambda: ct.unfold(X, True), r"mode must be an int, got bool"),
    ],
)
def test_mode_of_wrong_type(call, match):
    with pytest.raises(TypeError, match=match):
        call()


def test_fixed_index_out_of_range():
    with pytest.raises(IndexError, match=r"index 4 is out of range for mode 0 of size 3"):
        ct.fix_modes(CP, {0: 4})
    with pytest.raises(ValueError, match=r"fixed names every mode"):
        ct.fix_modes(CP, {0: 0, 1: 0, 2: 0})
    with pytest.raises(IndexError, match=r"indices for mode 1 are out of range for size 4"):
        ct.entries(CP, (np.array([0]), np.array([4]), np.array([0])))


# --- factor shapes that do not match the tensor ----------------------------------------------
@pytest.mark.parametrize("fn", [ct.mttkrp, lambda x, f, n: ct.mttkrp_all(x, f)])
def test_factor_rows_do_not_match_tensor(fn):
    bad = [F[0], rng.standard_normal((7, 2)), F[2]]
    with pytest.raises(ValueError, match=r"factors\[1\] has 7 rows, expected 4 \(mode 1 of x"):
        fn(X, bad, 0)
    with pytest.raises(ValueError, match=r"factors has 2 factor matrices, expected 3"):
        fn(X, F[:2], 0)


def test_shapes_that_do_not_match():
    with pytest.raises(ValueError, match=r"matrix has shape \(2, 4\), expected \(J, 3\)"):
        ct.mode_product(X, M, 0)
    with pytest.raises(ValueError, match=r"matrix has shape \(2, 4\), expected \(4, J\)"):
        ct.mode_product(X, M, 1, transpose=True)
    with pytest.raises(ValueError, match=r"matrix is a vector of length 4, expected 3"):
        ct.mode_product(X, M[0], 0)
    with pytest.raises(ValueError, match=r"matrix has shape \(3, 20\), expected \(3, 21\)"):
        ct.fold(np.ones((3, 20)), 0, (3, 3, 7))
    with pytest.raises(ValueError, match=r"matrix has shape \(2, 4\), expected \(J, 3\)"):
        ct.cp_mode_product(CP, M, 0)
    with pytest.raises(ValueError, match=r"got 1 matrices for a 3-way x"):
        ct.multi_mode_product(X, [M])
    with pytest.raises(ValueError, match=r"modes has 2 entries but matrices has 1"):
        ct.multi_mode_product(X, [M], modes=[1, 2])
    with pytest.raises(ValueError, match=r"skip=2 is out of range: it indexes matrices, which"):
        ct.multi_mode_product(X, [M], modes=[1], skip=2)
    with pytest.raises(ValueError, match=r"matrices\[1\] \(mode 2\): matrix has shape \(2, 4\)"):
        ct.multi_mode_product(X, [M, M], modes=[1, 2])
    with pytest.raises(ValueError, match=r"modes must be distinct"):
        ct.multi_mode_product(X, [M, M], modes=[1, 1])
    with pytest.raises(
        ValueError,
        match=r"shapes differ: a has shape \(3, 4, 5\) but b has shape \(3, 4\)",
    ):
        ct.inner(CP, X[:, :, 0])
    with pytest.raises(ValueError, match=r"weights must have shape \(2,\), got \(3,\)"):
        ct.khatri_rao(F, weights=np.ones(3))
    other = ct.CPTensor(None, [f[:2] for f in F])
    with pytest.raises(ValueError, match=r"a has shape \(3, 4, 5\) but b has shape \(2, 2, 2\)"):
        ct.inner(CP, other)
    with pytest.raises(ValueError, match=r"reference has shape \(2, 2, 2\) and rank 2"):
        ct.fix_signs(CP, reference=other)
    with pytest.raises(ValueError, match=r"indices must hold one index array per mode \(3\)"):
        ct.entries(CP, (np.array([0]), np.array([0])))
    with pytest.raises(ValueError, match=r"indices as an array must have shape \(n_points, 3\)"):
        ct.entries(CP, np.zeros((2, 2), dtype=np.int64))


# --- ranks that disagree --------------------------------------------------------------------
def test_ranks_disagree():
    bad = [F[0], rng.standard_normal((4, 3)), F[2]]
    with pytest.raises(ValueError, match=r"factors\[1\] has 3 columns but factors\[0\] has 2"):
        ct.CPTensor(None, bad)
    with pytest.raises(ValueError, match=r"factors\[1\] has 3 columns but factors\[0\] has 2"):
        ct.mttkrp(X, bad, 0)
    with pytest.raises(ValueError, match=r"matrices\[1\] has 3 columns, expected 2"):
        ct.khatri_rao(bad)
    with pytest.raises(ValueError, match=r"weights must be 1-D of length rank=2, got shape \(3,\)"):
        ct.CPTensor(np.ones(3), F)
    with pytest.raises(ValueError, match=r"reference has shape \(3, 4, 5\) and rank 3"):
        ct.fix_signs(
            CP, reference=ct.CPTensor(None, [rng.standard_normal((n, 3)) for n in X.shape])
        )
    with pytest.raises(ValueError, match=r"perm must be a permutation of range\(2\), got \[0, 0\]"):
        ct.permute(CP, [0, 0])
    with pytest.raises(ValueError, match=r"perm must be a permutation of range\(2\)"):
        ct.arrange(CP, order=[2, 0])


# --- mixed backends -------------------------------------------------------------------------
MIXED = (
    r"arrays from different backends cannot be mixed \(.*{a}: numpy.ndarray.*{b}: torch.Tensor"
    r"|arrays from different backends cannot be mixed \(.*{b}: torch.Tensor.*{a}: numpy.ndarray"
)


def mixed(a: str, b: str) -> str:
    return MIXED.format(a=a, b=b)


@pytest.mark.parametrize(
    "call, a, b",
    [
        (lambda: ct.CPTensor(None, [F[0], TF[1], TF[2]]), r"factors\[0\]", r"factors\[1\]"),
        (lambda: ct.CPTensor(np.ones(2), TF), "weights", r"factors\[0\]"),
        (lambda: ct.mttkrp(X, TF, 0), "x", r"factors\[0\]"),
        (lambda: ct.mttkrp_all(X, TCP), "x", r"factors\[0\]"),
        (lambda: ct.mode_product(X, torch.asarray(M), 1), "x", "matrix"),
        (lambda: ct.khatri_rao([F[0], TF[1]]), r"matrices\[0\]", r"matrices\[1\]"),
        (lambda: ct.kronecker([F[0], TF[1]]), r"matrices\[0\]", r"matrices\[1\]"),
        (
            lambda: ct.khatri_rao(F, weights=torch.ones(2, dtype=torch.float64)),
            r"matrices\[0\]",
            "weights",
        ),
        (lambda: ct.inner(CP, TCP), "a", "b"),
        (lambda: ct.inner(X, TX), "a", "b"),
        (lambda: ct.inner(CP, TX), r"a.factors\[0\]", "b"),
        (lambda: ct.inner(TX, CP), r"b.factors\[0\]", "a"),
        (lambda: ct.cp_mode_product(CP, torch.asarray(M), 1), "cp", "matrix"),
        (lambda: ct.fix_signs(CP, reference=TCP), "cp", "reference"),
        (lambda: ct.multi_mode_product(X, [torch.asarray(M)], modes=[1]), "x", "matrix"),
    ],
)
def test_mixed_backends(call, a, b):
    with pytest.raises(TypeError, match=mixed(a, b)):
        call()


# --- mixed dtypes ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda: ct.CPTensor(None, [F[0], F[1].astype(np.float32), F[2]]),
            r"factors\[1\] has dtype float32 but factors\[0\] has dtype float64",
        ),
        (
            lambda: ct.CPTensor(np.ones(2, np.float32), F),
            r"weights has dtype float32 but factors\[0\] has dtype float64",
        ),
        (
            lambda: ct.mttkrp(X.astype(np.float32), F, 0),
            r"factors\[0\] has dtype float64 but x has dtype float32",
        ),
        (
            lambda: ct.mode_product(X, M.astype(np.float32), 1),
            r"matrix has dtype float32 but x has dtype float64",
        ),
        (
            lambda: ct.khatri_rao([F[0], F[1].astype(np.float32)]),
            r"matrices\[1\] has dtype float32",
        ),
        (lambda: ct.inner(X, X.astype(np.float32)), r"b has dtype float32 but a has dtype float64"),
        (
            lambda: ct.inner(CP, ct.CPTensor(None, [f.astype(np.float32) for f in F])),
            r"b has dtype float32 but a has dtype float64",
        ),
        (lambda: ct.cp_mode_product(CP, M.astype(np.float32), 1), r"matrix has dtype float32"),
        (
            lambda: ct.mttkrp(TX.float(), TF, 0),
            r"factors\[0\] has dtype torch.float64 but x has dtype torch.float32",
        ),
    ],
)
def test_mixed_dtypes(call, match):
    with pytest.raises(TypeError, match=match):
        call()


# --- mixed devices (torch's meta device stands in for a GPU) ---------------------------------
@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda: ct.CPTensor(None, [TF[0], META[1], TF[2]]),
            r"factors\[1\] is on device .*meta.* but factors\[0\] is on .*cpu",
        ),
        (
            lambda: ct.CPTensor(torch.ones(2, dtype=torch.float64, device="meta"), TF),
            r"weights is on device .*meta",
        ),
        (lambda: ct.mttkrp(TX, META, 0), r"factors\[0\] is on device .*meta.* but x is on .*cpu"),
        (
            lambda: ct.mode_product(TX, torch.asarray(M).to("meta"), 1),
            r"matrix is on device .*meta",
        ),
        (lambda: ct.khatri_rao([TF[0], META[1]]), r"matrices\[1\] is on device .*meta"),
        (lambda: ct.inner(TCP, ct.CPTensor(None, META)), r"b is on device .*meta"),
    ],
)
def test_mixed_devices(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --- wrong ndim and wrong types ---------------------------------------------------------------
@pytest.mark.parametrize(
    "call, exc, match",
    [
        (
            lambda: ct.CPTensor(None, [F[0], np.ones(4), F[2]]),
            ValueError,
            r"factors\[1\] must be 2-D of shape \(I_n, rank\), got shape \(4,\)",
        ),
        (
            lambda: ct.CPTensor(np.ones((2, 1)), F),
            ValueError,
            r"weights must be 1-D of length rank=2, got shape \(2, 1\)",
        ),
        (lambda: ct.CPTensor(None, np.ones((3, 2))), TypeError, r"factors must be a sequence"),
        (
            lambda: ct.CPTensor(None, []),
            ValueError,
            r"factors must hold at least one factor matrix",
        ),
        (
            lambda: ct.CPTensor(None, [F[0], "a"]),
            TypeError,
            r"factors\[1\] must be an array, got str",
        ),
        (
            lambda: ct.CPTensor([1.0, 1.0], F),
            TypeError,
            r"weights must be an array or None, got list",
        ),
        (
            lambda: ct.khatri_rao([F[0], np.ones((2, 2, 2))]),
            ValueError,
            r"matrices\[1\] must be 2-D, got shape \(2, 2, 2\)",
        ),
        (
            lambda: ct.kronecker([np.ones(3)]),
            ValueError,
            r"matrices\[0\] must be 2-D, got shape \(3,\)",
        ),
        (lambda: ct.khatri_rao([]), ValueError, r"matrices must not be empty"),
        (lambda: ct.khatri_rao(F[0]), TypeError, r"matrices must be a sequence of 2-D arrays"),
        (
            lambda: ct.mttkrp(X, [F[0], np.ones(4), F[2]], 0),
            ValueError,
            r"factors\[1\] must be 2-D",
        ),
        (
            lambda: ct.mode_product(X, np.ones((1, 4, 1)), 1),
            ValueError,
            r"matrix must be 1-D or 2-D, got shape \(1, 4, 1\)",
        ),
        (
            lambda: ct.fold(np.ones(12), 0, (3, 4)),
            ValueError,
            r"matrix has shape \(12,\), expected \(3, 4\)",
        ),
        (
            lambda: ct.cp_mode_product(CP, np.ones(4), 1),
            ValueError,
            r"matrix has shape \(4,\), expected \(J, 4\)",
        ),
        (lambda: ct.unfold([[1.0]], 0), TypeError, r"x: expected an array .*got list"),
        (lambda: ct.mttkrp([[1.0]], F[:2], 0), TypeError, r"x: expected an array .*got list"),
        (lambda: ct.reconstruct(F), TypeError, r"cp must be a cptensor.CPTensor, .*got list"),
        (
            lambda: ct.norm("x"),
            TypeError,
            r"x must be an array, a TensorOperator or a CP model .*got str",
        ),
        (lambda: ct.normalize(X), TypeError, r"cp must be a cptensor.CPTensor, .*got ndarray"),
        (lambda: ct.fix_modes(CP, [0]), TypeError, r"fixed must be a mapping"),
        (
            lambda: ct.entries(CP, (np.array([0.5]),) * 3),
            TypeError,
            r"indices for mode 0 must be integers",
        ),
        (
            lambda: ct.inner(CP, "x"),
            TypeError,
            r"expected an array, CPTensor or TensorOperator, got str",
        ),
        (
            lambda: ct.CPTensor.from_tensorly(3),
            TypeError,
            r"cp must be a TensorLy CPTensor or a \(weights, factors\) pair",
        ),
    ],
)
def test_wrong_ndim_and_types(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_fix_signs_reference_dtype_and_device():
    with pytest.raises(TypeError, match=r"reference has dtype float32 but cp has dtype float64"):
        ct.fix_signs(CP, reference=ct.CPTensor(None, [f.astype(np.float32) for f in F]))
    with pytest.raises(ValueError, match=r"reference is on device .*meta"):
        ct.fix_signs(TCP, reference=ct.CPTensor(None, META))


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("kind", ["int64", "uint8", "bool"])
def test_cp_tensors_hold_real_floats_only(backend, kind):
    """Integer factors overflowed silently (norm 0 for entries 2³¹), uint8 gave float16,
    bool gave 1.0: refused, naming the factor and its dtype. (Complex factors are
    supported: tests/core/test_complex.py.)"""
    arr = np.full((3, 2), 2**31 if kind == "int64" else 1).astype(kind)
    if backend == "torch":
        torch = pytest.importorskip("torch")
        arr = torch.from_numpy(arr)
    with pytest.raises(TypeError, match=r"factors\[0\] has dtype .*real floating"):
        ct.CPTensor(None, [arr, arr])

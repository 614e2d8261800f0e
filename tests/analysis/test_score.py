"""score / congruence against pyttb's ktensor.score (Tensor Toolbox semantics)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cptensor import CPTensor, permute
from cptensor.analysis import congruence, congruence_matrix, score

pyttb = pytest.importorskip("pyttb")


def _random_cp(rng: np.random.Generator, shape: tuple[int, ...], rank: int) -> CPTensor:
    return CPTensor(
        rng.uniform(0.2, 3.0, rank) * rng.choice([-1.0, 1.0], rank),
        [rng.standard_normal((n, rank)) for n in shape],
    )


def _ttb(cp: CPTensor):
    return pyttb.ktensor([f.copy() for f in cp.factors], cp.weights.copy())


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    ndim=st.integers(2, 4),
    rb=st.integers(1, 4),
    extra=st.integers(0, 2),
    penalty=st.booleans(),
)
def test_greedy_matches_pyttb(seed: int, ndim: int, rb: int, extra: int, penalty: bool) -> None:
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in rng.integers(2, 6, ndim))
    a = _random_cp(rng, shape, rb + extra)
    b = _random_cp(rng, shape, rb)
    ours = score(a, b, weight_penalty=penalty, greedy=True)
    val, _, _, perm = _ttb(a).score(_ttb(b), weight_penalty=penalty)
    assert ours.value == pytest.approx(val, rel=1e-12, abs=1e-14)
    assert ours.permutation.tolist() == np.asarray(perm).tolist()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), rb=st.integers(1, 4), extra=st.integers(0, 2))
def test_optimal_never_below_greedy(seed: int, rb: int, extra: int) -> None:
    rng = np.random.default_rng(seed)
    a = _random_cp(rng, (3, 4, 5), rb + extra)
    b = _random_cp(rng, (3, 4, 5), rb)
    opt, gr = score(a, b), score(a, b, greedy=True)
    assert opt.value >= gr.value - 1e-12
    # the permutation is a permutation of a's components, matched ones first
    assert sorted(opt.permutation.tolist()) == list(range(rb + extra))
    c = congruence_matrix(a, b)
    assert opt.value == pytest.approx(np.mean(c[opt.permutation[:rb], np.arange(rb)]))


def test_well_separated_matches_pyttb_both_ways() -> None:
    rng = np.random.default_rng(3)
    b = _random_cp(rng, (6, 7, 8), 4)
    a = permute(
        b.with_(factors=[f + 0.05 * rng.standard_normal(f.shape) for f in b.factors]), [3, 1, 0, 2]
    )
    val = _ttb(a).score(_ttb(b))[0]
    assert score(a, b).value == pytest.approx(val, rel=1e-12)
    assert score(a, b).permutation[:4].tolist() == [2, 1, 3, 0]


def test_invariances_scaling_sign_permutation() -> None:
    rng = np.random.default_rng(0)
    b = _random_cp(rng, (4, 5, 6), 3)
    f = [x.copy() for x in b.factors]
    f[0] = f[0] * np.array([2.0, -1.0, 0.5])
    f[1] = f[1] * np.array([0.5, -1.0, 2.0])
    a = permute(CPTensor(b.weights, f), [1, 2, 0])
    s = score(a, b)
    assert s.value == pytest.approx(1.0)
    np.testing.assert_allclose(s.congruences, 1.0)


def test_weight_penalty_counts() -> None:
    f = [np.eye(3)[:, :2], np.eye(3)[:, :2]]
    a = CPTensor(np.array([1.0, 4.0]), f)
    b = CPTensor(np.array([1.0, 1.0]), f)
    assert score(a, b).value == pytest.approx((1.0 + 0.25) / 2)
    assert score(a, b, weight_penalty=False).value == pytest.approx(1.0)
    np.testing.assert_allclose(congruence(a, b), [1.0, 0.25])


def test_torch_input() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    a, b = _random_cp(rng, (3, 4, 5), 3), _random_cp(rng, (3, 4, 5), 2)
    at = CPTensor(torch.from_numpy(a.weights), [torch.from_numpy(x) for x in a.factors])
    bt = CPTensor(torch.from_numpy(b.weights), [torch.from_numpy(x) for x in b.factors])
    assert score(at, bt).value == pytest.approx(score(a, b).value)


def test_bad_input() -> None:
    rng = np.random.default_rng(0)
    a, b = _random_cp(rng, (3, 4, 5), 2), _random_cp(rng, (3, 4, 5), 3)
    with pytest.raises(ValueError, match="at least as many components"):
        score(a, b)
    with pytest.raises(ValueError, match="shape"):
        score(_random_cp(rng, (3, 4, 6), 3), b)
    with pytest.raises(TypeError, match="CPTensor"):
        score(np.ones((3, 4, 5)), b)

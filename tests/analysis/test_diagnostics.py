"""core_consistency / degeneracy against tlviz; explained_variance against its definition."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cptensor as ct
from cptensor import CPTensor, reconstruct
from cptensor.analysis import (
    DEGENERACY_THRESHOLD,
    core_consistency,
    degeneracy,
    explained_variance,
)

from ._planted import planted

tlviz_me = pytest.importorskip("tlviz.model_evaluation")
tlviz_ft = pytest.importorskip("tlviz.factor_tools")


def _random_cp(rng, shape, rank):
    return CPTensor(rng.uniform(0.5, 2.0, rank), [rng.standard_normal((n, rank)) for n in shape])


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    ndim=st.integers(3, 4),
    rank=st.integers(1, 4),
    normalised=st.booleans(),
)
def test_core_consistency_matches_tlviz_random(seed, ndim, rank, normalised) -> None:
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in rng.integers(rank, rank + 5, ndim))
    x = rng.standard_normal(shape)
    cp = _random_cp(rng, shape, rank)
    ours = core_consistency(x, cp, normalised=normalised)
    ref = tlviz_me.core_consistency((cp.weights, list(cp.factors)), x, normalised=normalised)
    assert ours == pytest.approx(ref, rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_core_consistency_matches_tlviz_planted(seed) -> None:
    x, true = planted(seed, (9, 10, 11), 3)
    for cp in (true, _random_cp(np.random.default_rng(seed), x.shape, 4)):
        ours = core_consistency(x, cp)
        ref = tlviz_me.core_consistency((cp.weights, list(cp.factors)), x)
        assert ours == pytest.approx(ref, rel=1e-6, abs=1e-6)
    assert core_consistency(x, true) > 95


def test_core_consistency_exact_model_is_100_and_torch() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    cp = _random_cp(rng, (5, 6, 7, 3), 3)
    x = reconstruct(cp)
    assert core_consistency(x, cp) == pytest.approx(100.0, abs=1e-8)
    cpt = CPTensor(torch.from_numpy(cp.weights), [torch.from_numpy(f) for f in cp.factors])
    assert core_consistency(torch.from_numpy(x), cpt) == pytest.approx(100.0, abs=1e-8)


def test_core_consistency_missing_values_imputed() -> None:
    rng = np.random.default_rng(1)
    cp = _random_cp(rng, (6, 7, 8), 2)
    x = reconstruct(cp)
    x_nan = x.copy()
    x_nan[rng.random(x.shape) < 0.2] = np.nan
    before = x_nan.copy()
    assert core_consistency(x_nan, cp) == pytest.approx(100.0, abs=1e-8)
    np.testing.assert_array_equal(np.isnan(x_nan), np.isnan(before))  # not mutated


def test_core_consistency_bad_input() -> None:
    rng = np.random.default_rng(0)
    cp = _random_cp(rng, (3, 4, 5), 2)
    with pytest.raises(ValueError, match=r"cp has shape \(3, 4, 5\) but x has shape"):
        core_consistency(np.ones((3, 4, 6)), cp)
    with pytest.raises(TypeError, match="CPTensor"):
        core_consistency(np.ones((3, 4, 5)), np.ones(3))
    with pytest.raises(ValueError, match="max_core_entries"):
        core_consistency(np.ones((3, 4, 5)), cp, max_core_entries=4)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), rank=st.integers(1, 5), ndim=st.integers(2, 4))
def test_degeneracy_matches_tlviz(seed, rank, ndim) -> None:
    rng = np.random.default_rng(seed)
    cp = _random_cp(rng, tuple(int(s) for s in rng.integers(2, 6, ndim)), rank)
    ref = tlviz_ft.degeneracy_score((cp.weights, list(cp.factors)))
    assert degeneracy(cp) == pytest.approx(ref, abs=1e-12)


def test_degeneracy_flags_cancelling_pair() -> None:
    rng = np.random.default_rng(0)
    f = [rng.standard_normal((n, 3)) for n in (4, 5, 6)]
    for m in f:
        m[:, 1] = -m[:, 0] + 1e-3 * rng.standard_normal(m.shape[0])
    d = degeneracy(CPTensor(None, f))
    assert d < DEGENERACY_THRESHOLD
    assert d == pytest.approx(tlviz_ft.degeneracy_score((None, f)), abs=1e-12)
    assert degeneracy(CPTensor(None, [np.ones((3, 1))] * 3)) == 1.0


def _ev_reference(x, cp, mask=None):
    w = np.ones(x.shape, bool) if mask is None else mask
    xs = np.where(w, x, 0.0)
    tot = np.sum(xs**2)
    total = 1 - np.sum(np.where(w, x - reconstruct(cp), 0.0) ** 2) / tot
    per = []
    for r in range(cp.rank):
        m = reconstruct(CPTensor(cp.weights[r : r + 1], [f[:, r : r + 1] for f in cp.factors]))
        per.append(1 - np.sum(np.where(w, x - m, 0.0) ** 2) / tot)
    return total, np.array(per)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), rank=st.integers(1, 4), masked=st.booleans())
def test_explained_variance_definition(seed, rank, masked) -> None:
    rng = np.random.default_rng(seed)
    shape = (4, 5, 6)
    x = rng.standard_normal(shape)
    cp = _random_cp(rng, shape, rank)
    mask = rng.random(shape) > 0.3 if masked else None
    ev = explained_variance(x, cp, mask=mask)
    total, per = _ev_reference(x, cp, mask)
    assert ev.total == pytest.approx(total, rel=1e-10, abs=1e-12)
    np.testing.assert_allclose(ev.per_component, per, rtol=1e-10, atol=1e-12)


def test_explained_variance_orthogonal_components_add_up() -> None:
    q = [np.linalg.qr(np.random.default_rng(n).standard_normal((6, 3)))[0] for n in range(3)]
    cp = CPTensor(np.array([3.0, 2.0, 1.0]), q)
    ev = explained_variance(reconstruct(cp), cp)
    assert ev.total == pytest.approx(1.0)
    assert ev.per_component.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(ev.per_component, np.array([9, 4, 1]) / 14)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_core_consistency_refuses_non_finite_input(backend):
    """An all-NaN tensor scored 100.0 (every entry imputed from the model); inf gave NaN."""
    cp = ct.init.random((4, 5, 6), 2, seed=0)
    x = ct.reconstruct(cp)
    if backend == "torch":
        torch = pytest.importorskip("torch")
        cp = ct.CPTensor(torch.from_numpy(cp.weights), [torch.from_numpy(f) for f in cp.factors])
        x = torch.from_numpy(x)
    xp = cp.xp
    with pytest.raises(ValueError, match="no observed entries"):
        core_consistency(x * float("nan"), cp)
    with pytest.raises(ValueError, match="infinite"):
        core_consistency(xp.where(x > 0, float("inf"), x), cp)
    bad = ct.CPTensor(cp.weights * float("nan"), cp.factors)
    with pytest.raises(ValueError, match="cp holds NaN"):
        core_consistency(x, bad)

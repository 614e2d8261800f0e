"""multilinear_rank and matrix_rank_profile."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cptensor import CPTensor, reconstruct, unfold
from cptensor.analysis import matrix_rank_profile, multilinear_rank
from cptensor.structured import LowRankBlockTensor


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), rank=st.integers(1, 3))
def test_multilinear_rank_of_cp(seed, rank) -> None:
    rng = np.random.default_rng(seed)
    cp = CPTensor(None, [rng.standard_normal((n, rank)) for n in (5, 6, 7)])
    res = multilinear_rank(reconstruct(cp))
    assert res.ranks == (rank, rank, rank)
    for n, s in enumerate(res.spectra):
        np.testing.assert_allclose(s, np.linalg.svd(unfold(reconstruct(cp), n), compute_uv=False))


def test_multilinear_rank_tucker_and_operator() -> None:
    rng = np.random.default_rng(0)
    core = rng.standard_normal((2, 3, 1, 2))
    mats = [rng.standard_normal((n, r)) for n, r in zip((5, 6, 4, 3), core.shape)]
    x = np.einsum("abcd,ia,jb,kc,ld->ijkl", core, *mats)
    assert multilinear_rank(x).ranks == (2, 3, 1, 2)
    # operator route: LowRank blocks of the same tensor (rows: mode 0, cols: modes 1, 2)
    pairs = {(l,): (x[:, :, :, l].reshape(5, 24), np.eye(24)) for l in range(3)}
    op = LowRankBlockTensor(x.shape, (0,), (1, 2), pairs)
    assert multilinear_rank(op).ranks == (2, 3, 1, 2)
    with pytest.raises(ValueError, match="rtol"):
        multilinear_rank(x, rtol=2.0)


def test_matrix_rank_profile_kinds_agree() -> None:
    rng = np.random.default_rng(0)
    us = [rng.standard_normal((30, r)) for r in (1, 3, 5)]
    vs = [rng.standard_normal((20, r)) for r in (1, 3, 5)]
    dense = [u @ v.T for u, v in zip(us, vs)]
    p_dense = matrix_rank_profile(dense)
    p_pairs = matrix_rank_profile(list(zip(us, vs)))
    p_stack = matrix_rank_profile(np.stack(dense))
    assert p_dense.numerical.tolist() == [1, 3, 5]
    for p in (p_pairs, p_stack):
        np.testing.assert_array_equal(p.numerical, p_dense.numerical)
        np.testing.assert_allclose(p.stable, p_dense.stable, rtol=1e-10)
        np.testing.assert_allclose(p.effective, p_dense.effective, rtol=1e-10)
    assert p_dense.stable[0] == pytest.approx(1.0)
    assert p_dense.effective[0] == pytest.approx(1.0)
    assert all(1 <= s <= n + 1e-9 for s, n in zip(p_dense.stable, p_dense.numerical))
    assert len(p_dense.rows()) == 3


def test_matrix_rank_profile_torch_pairs_and_zero() -> None:
    torch = pytest.importorskip("torch")
    b, a = torch.randn(40, 4, dtype=torch.float64), torch.randn(4, 30, dtype=torch.float64)
    p = matrix_rank_profile([(b, a.T), torch.zeros(3, 3)])
    assert p.numerical.tolist() == [4, 0]
    assert p.effective[1] == 0.0


def test_matrix_rank_profile_bad_input() -> None:
    with pytest.raises(ValueError, match="3-D"):
        matrix_rank_profile(np.ones((3, 3)))
    with pytest.raises(ValueError, match="at least one"):
        matrix_rank_profile([])
    with pytest.raises(ValueError, match=r"matrices\[0\]"):
        matrix_rank_profile([(np.ones((3, 2)), np.ones((4, 3)))])
    with pytest.raises(TypeError, match="matrices"):
        matrix_rank_profile("abc")

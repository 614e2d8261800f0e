"""Initialisation: random, orthogonal and SVD-based starts."""

from __future__ import annotations

import numpy as np
import pytest

import cptensor as ct
from cptensor import init


def _subspace_match(u, v):
    """Singular values of uᵀv: all one when the column spaces agree."""
    return np.linalg.svd(u.T @ v, compute_uv=False)


def test_random_shapes_dtype_and_seed():
    cp = init.random((3, 4, 5), 2, seed=0)
    assert cp.shape == (3, 4, 5) and cp.rank == 2 and cp.dtype == np.float64
    again = init.random((3, 4, 5), 2, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(cp.factors, again.factors))
    other = init.random((3, 4, 5), 2, seed=1)
    assert not np.array_equal(cp.factors[0], other.factors[0])
    assert init.random((3, 4), 2, dtype=np.float32, seed=0).dtype == np.float32
    gen = np.random.default_rng(5)
    assert init.random((3, 4), 2, seed=gen).rank == 2


def test_random_like_torch_same_numbers_as_numpy():
    torch = pytest.importorskip("torch")
    like = torch.zeros(1, dtype=torch.float32)
    cp = init.random((3, 4, 5), 2, like=like, seed=3)
    assert isinstance(cp.factors[0], torch.Tensor) and cp.dtype == torch.float32
    ref = init.random((3, 4, 5), 2, seed=3)
    np.testing.assert_allclose(cp.factors[1].numpy(), ref.factors[1], rtol=1e-6)


def test_orthogonal_columns_and_excess_rank():
    cp = init.orthogonal((5, 6, 3), 4, seed=0)
    for f in cp.factors[:2]:
        np.testing.assert_allclose(f.T @ f, np.eye(4), atol=1e-12)
    f = cp.factors[2]  # rank 4 > size 3: a basis then unit columns
    np.testing.assert_allclose(f[:, :3].T @ f[:, :3], np.eye(3), atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(f, axis=0), 1.0)


@pytest.mark.parametrize(
    ("bad", "exc"),
    [
        (dict(shape=(3, 4), rank=0), ValueError),
        (dict(shape=(3, 4), rank=1.5), TypeError),
        (dict(shape=(3, 0), rank=2), ValueError),
        (dict(shape=(3, 4), rank=2, seed="x"), TypeError),
        (dict(shape=(3, 4), rank=2, device="cuda"), ValueError),
        (dict(shape=(3, 4), rank=2, dtype=np.int64), TypeError),
        (dict(shape=(3, 4), rank=2, like=[1.0]), TypeError),
    ],
)
def test_random_bad_input(bad, exc):
    with pytest.raises(exc):
        init.random(**bad)


@pytest.mark.parametrize("shape", [(6, 7, 8), (3, 4, 20), (2, 50)])
def test_svd_matches_leading_singular_vectors(shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    rank = 2
    cp = init.svd(x, rank)
    for mode, f in enumerate(cp.factors):
        u = np.linalg.svd(ct.unfold(x, mode), full_matrices=False)[0][:, :rank]
        np.testing.assert_allclose(_subspace_match(f, u), 1.0, atol=1e-8)
        assert np.all(np.abs(f).max(axis=0) == f.max(axis=0))  # signs fixed


def test_svd_streams_chunks_and_randomized(monkeypatch):
    import cptensor.init as init_mod

    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 6, 7, 3))
    ref = init.svd(x, 3)
    monkeypatch.setattr(init_mod, "_CHUNK_ELEMENTS", 10)  # many column blocks
    chunked = init.svd(x, 3)
    for a, b in zip(ref.factors, chunked.factors):
        np.testing.assert_allclose(a, b, atol=1e-10)
    # Both sides large: randomized SVD on a tensor with a clear low-rank structure.
    truth = init.random((600, 30, 30), 3, seed=2)
    y = ct.reconstruct(truth) + 1e-6 * rng.standard_normal((600, 30, 30))
    f = init.svd(y, 3, seed=0).factors[0]
    u = np.linalg.qr(truth.factors[0])[0]
    np.testing.assert_allclose(_subspace_match(f, u), 1.0, atol=1e-6)


def test_svd_rank_above_mode_size_and_zero_tensor():
    x = np.random.default_rng(0).standard_normal((2, 3, 8))
    cp = init.svd(x, 5, seed=0)
    for f in cp.factors:
        assert f.shape[1] == 5 and np.all(np.isfinite(f))
        np.testing.assert_allclose(np.linalg.norm(f, axis=0), 1.0)
    z = init.svd(np.zeros((3, 4, 5)), 2)
    assert all(np.all(np.isfinite(f)) for f in z.factors)
    a = init.svd(x, 5, seed=7)
    b = init.svd(x, 5, seed=7)
    assert all(np.array_equal(p, q) for p, q in zip(a.factors, b.factors))


def test_svd_torch_matches_numpy():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal((5, 6, 7))
    ref = init.svd(x, 3)
    for dt, tol in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        cp = init.svd(torch.from_numpy(x).to(dt), 3)
        assert cp.dtype == dt and isinstance(cp.factors[0], torch.Tensor)
        for a, b in zip(cp.factors, ref.factors):
            np.testing.assert_allclose(a.double().numpy(), b, atol=tol)


def test_svd_bad_input():
    with pytest.raises(TypeError, match="floating"):
        init.svd(np.ones((3, 4), dtype=np.int64), 2)
    with pytest.raises(TypeError, match="x must be"):
        init.svd([[1.0]], 1)
    with pytest.raises(ValueError, match="rank"):
        init.svd(np.ones((3, 4)), 0)

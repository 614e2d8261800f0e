"""The CPTensor type: construction, properties, immutability, unpacking, TensorLy interop."""

from __future__ import annotations

import numpy as np
import pytest
import tensorly as tl

import cptensor as ct
from cptensor.testing import assert_allclose


def test_properties_on_every_backend(backend):
    factors = [backend.asarray(np.arange(n * 2).reshape(n, 2)) for n in (4, 3, 2)]
    cp = ct.CPTensor(None, factors)
    assert cp.shape == (4, 3, 2)
    assert cp.rank == 2
    assert cp.ndim == 3
    assert str(cp.dtype).removeprefix("torch.") == backend.dtype
    if backend.name == "torch":
        assert cp.device.type == backend.device
        assert "backend=torch" in repr(cp)
    else:
        assert cp.device == "cpu"
    # weights default to ones of the factors' backend, dtype and device
    assert type(cp.weights) is type(factors[0])
    assert cp.weights.dtype == factors[0].dtype
    assert_allclose(cp.weights, np.ones(2), rtol=0, atol=0)


def test_unpacking_like_tensorly():
    w, fs = np.array([1.0, 2.0]), [np.ones((3, 2)), np.ones((4, 2))]
    cp = ct.CPTensor(w, fs)
    weights, factors = cp
    assert weights is w
    assert factors[0] is fs[0] and factors[1] is fs[1]
    assert isinstance(factors, tuple)
    assert len(cp) == 2
    assert cp[0] is w and cp[1] is cp.factors and cp[-1] is cp.factors
    with pytest.raises(IndexError, match=r"unpacks as \(weights, factors\); index 2"):
        cp[2]


def test_immutable_and_with_():
    fs = [np.ones((3, 2)), np.ones((4, 2))]
    cp = ct.CPTensor(None, fs)
    fs.append(np.ones((5, 2)))  # the caller's list is not shared
    assert cp.ndim == 2
    with pytest.raises(AttributeError):
        cp.weights = np.zeros(2)
    with pytest.raises(AttributeError):
        cp.extra = 1
    new = cp.with_(weights=np.array([3.0, 4.0]))
    assert new is not cp
    assert_allclose(cp.weights, np.ones(2), rtol=0, atol=0)
    assert_allclose(new.weights, [3.0, 4.0], rtol=0, atol=0)
    assert all(a is b for a, b in zip(new.factors, cp.factors))
    assert cp.with_(factors=[np.zeros((2, 2))]).shape == (2,)
    with pytest.raises(ValueError, match=r"weights must be 1-D of length rank=2"):
        cp.with_(weights=np.ones(3))


def test_equality_is_identity():
    cp = ct.CPTensor(None, [np.ones((2, 1))])
    assert cp == cp
    assert cp != ct.CPTensor(None, [np.ones((2, 1))])
    assert len({cp, cp}) == 1


def test_from_and_to_tensorly_roundtrip():
    rng = np.random.default_rng(1)
    w = rng.standard_normal(3)
    fs = [rng.standard_normal((n, 3)) for n in (4, 5, 6)]
    tl_cp = tl.cp_tensor.CPTensor((w, fs))
    cp = ct.CPTensor.from_tensorly(tl_cp)
    assert cp.shape == (4, 5, 6) and cp.rank == 3
    with tl.backend_context("numpy"):
        assert_allclose(ct.reconstruct(cp), tl.cp_to_tensor(tl_cp), rtol=1e-12)
        back = cp.to_tensorly()
        assert isinstance(back, tl.cp_tensor.CPTensor)
        assert_allclose(tl.cp_to_tensor(back), ct.reconstruct(cp), rtol=1e-12)
    # a plain (weights, factors) pair works too, and None weights are ones
    pair = ct.CPTensor.from_tensorly((None, fs))
    assert_allclose(pair.weights, np.ones(3), rtol=0, atol=0)


def test_from_tensorly_torch():
    torch = pytest.importorskip("torch")
    fs = [torch.ones((3, 2), dtype=torch.float32), torch.ones((2, 2), dtype=torch.float32)]
    cp = ct.CPTensor.from_tensorly((torch.ones(2), fs))
    assert cp.dtype == torch.float32
    assert cp.device.type == "cpu"


def test_one_way_and_rank_one_edge_cases():
    cp = ct.CPTensor(np.array([2.0]), [np.array([[1.0], [3.0]])])
    assert cp.shape == (2,) and cp.rank == 1 and cp.ndim == 1
    assert_allclose(ct.reconstruct(cp), [2.0, 6.0], rtol=0, atol=0)
    assert_allclose(ct.norm(cp), np.sqrt(40.0))

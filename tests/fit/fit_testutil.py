"""Helpers for the fitting tests: planted CP tensors and operators wrapping dense arrays."""

from __future__ import annotations

import numpy as np

import cptensor as ct
from cptensor.analysis import score as _score


def planted(shape, rank, *, seed=0, collinearity=0.0, noise=0.0, dtype=np.float64):
    """A rank-``rank`` tensor with factor columns of congruence about ``collinearity`` and
    relative Gaussian noise ``noise``; returns ``(x, truth)``."""
    rng = np.random.default_rng(seed)
    factors = []
    for n in shape:
        base = rng.standard_normal((n, 1))
        cols = rng.standard_normal((n, rank))
        c = np.sqrt(collinearity)
        f = c * base + np.sqrt(1 - collinearity) * cols
        factors.append(f / np.linalg.norm(f, axis=0))
    weights = np.linspace(2.0, 1.0, rank) * np.sqrt(np.prod(shape))
    truth = ct.CPTensor(weights, factors)
    x = ct.reconstruct(truth)
    if noise:
        e = rng.standard_normal(x.shape)
        x = x + noise * np.linalg.norm(x) / np.linalg.norm(e) * e
    return x.astype(dtype), truth


def score(a, b) -> float:
    """Factor match score of fit ``a`` against truth ``b`` (weights considered)."""
    return float(_score(ct.CPTensor(*_np(a)), ct.CPTensor(*_np(b))).value)


def _np(cp):
    w = np.asarray(cp.weights.cpu() if hasattr(cp.weights, "cpu") else cp.weights, float)
    fs = [np.asarray(f.cpu() if hasattr(f, "cpu") else f, float) for f in cp.factors]
    return w, fs


def true_rel_error(x, cp) -> float:
    """``‖X − M‖/‖X‖`` computed independently in float64 NumPy."""
    w, fs = _np(cp)
    m = ct.reconstruct(ct.CPTensor(w, fs))
    x64 = np.asarray(x.cpu() if hasattr(x, "cpu") else x, dtype=np.float64)
    return float(np.linalg.norm(x64 - m) / np.linalg.norm(x64))


class DenseOperator:
    """A minimal TensorOperator wrapping a dense NumPy array (for tests)."""

    __cptensor_operator__ = True

    def __init__(self, x, with_residual=False):
        self._x = x
        self.calls = 0
        if with_residual:
            self.residual_norm = self._residual_norm

    @property
    def shape(self):
        return tuple(self._x.shape)

    @property
    def dtype(self):
        return self._x.dtype

    def mttkrp(self, factors, mode):
        self.calls += 1
        return ct.mttkrp(self._x, list(factors), mode)

    def mttkrp_all(self, factors):
        return ct.mttkrp_all(self._x, list(factors))

    def norm(self):
        return float(np.linalg.norm(self._x))

    def to_dense(self):
        return self._x

    def _residual_norm(self, cp):
        return float(np.linalg.norm(self._x - ct.reconstruct(cp)))

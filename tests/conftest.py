"""Shared test configuration: Hypothesis profiles and the ``backend`` fixture.

Profiles: ``default`` (no deadline: these machines are shared and noisy) and ``ci`` (fewer
examples), chosen by ``HYPOTHESIS_PROFILE`` or, failing that, by whether ``CI`` is set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("default", deadline=None)
settings.register_profile(
    "ci", deadline=None, max_examples=20, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "default")
)


@dataclass(frozen=True)
class Backend:
    """One backend/dtype/device combination to run a test on."""

    name: str  # "numpy" or "torch"
    dtype: str  # "float32" or "float64"
    device: str | None = None  # torch device; None for NumPy

    @property
    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the ``cptensor.testing`` strategies."""
        return {"backend": self.name, "dtype": self.dtype, "device": self.device}

    @property
    def rtol(self) -> float:
        """A relative tolerance suited to the dtype (for results of short sums)."""
        return 1e-4 if self.dtype == "float32" else 1e-10

    def asarray(self, a: Any) -> Any:
        """``a`` (NumPy or nested lists) as an array of this backend, dtype and device."""
        a = np.asarray(a, dtype=self.dtype)
        if self.name == "numpy":
            return a
        import torch

        return torch.asarray(a, device=self.device)


BACKENDS = [
    Backend("numpy", "float32"),
    Backend("numpy", "float64"),
    Backend("torch", "float32", "cpu"),
    Backend("torch", "float64", "cpu"),
    Backend("torch", "float32", "cuda"),
    Backend("torch", "float64", "cuda"),
]


@pytest.fixture(
    scope="session",
    params=BACKENDS,
    ids=lambda b: f"{b.name}-{b.device}-{b.dtype}" if b.device else f"{b.name}-{b.dtype}",
)
def backend(request: pytest.FixtureRequest) -> Backend:
    """Every supported backend: NumPy and torch (CPU; CUDA when available), float32/64."""
    b: Backend = request.param
    if b.name == "torch":
        torch = pytest.importorskip("torch")
        if b.device == "cuda" and not torch.cuda.is_available():
            pytest.skip("CUDA is not available")
    return b

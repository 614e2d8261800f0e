"""Shared set-up for the fitting tests: one BLAS / torch thread per test (the suite runs
on shared 2-core machines with ``pytest -n 2``, where oversubscribed BLAS threads make
small GEMMs orders of magnitude slower)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    from threadpoolctl import threadpool_limits

    try:
        import torch
    except ImportError:  # pragma: no cover
        torch = None
    old = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    if torch is not None:
        torch.set_num_threads(old)

"""MTTKRP never forms the Khatri–Rao product of all other modes, nor copies ``x``: its peak
memory (NumPy reports allocations to ``tracemalloc``) stays far below that product's size
on shapes where the product dwarfs the tensor."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

import cptensor as ct


def peak_bytes(fn) -> int:
    fn()  # warm up (first-call allocations of NumPy itself)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    "shape, rank",
    [
        ((2, 30, 30, 30), 20),
        ((30, 30, 30, 2), 20),
        ((2, 60, 60), 30),
        ((60, 60, 2), 30),
        ((2, 40, 3, 40, 2), 16),
    ],
)
def test_mttkrp_peak_memory_is_far_below_the_full_khatri_rao(shape, rank):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    factors = [rng.standard_normal((n, rank)) for n in shape]
    full_kr = [8 * rank * math.prod(shape) // s for s in shape]
    for mode in range(len(shape)):
        peak = peak_bytes(lambda mode=mode: ct.mttkrp(x, factors, mode))
        if full_kr[mode] >= 8 * x.nbytes:
            assert peak < full_kr[mode] / 4, (mode, peak, full_kr[mode])
        assert peak < x.nbytes + full_kr[mode], (mode, peak)  # x is never copied
    worst = max(full_kr)
    peak = peak_bytes(lambda: ct.mttkrp_all(x, factors))
    assert peak < worst / 4, (peak, worst)

"""Core suite: reconstruction and the MTTKRP sweep against TensorLy, float64 NumPy.

``python -m benchmarks core`` (or ``python -m benchmarks.bench_core``; set
``CPTENSOR_BENCH_THREADS=1`` to limit NumPy's BLAS threads, ``CPTENSOR_BENCH_REPEATS`` for
the number of timed rounds). For each shape it
prints medians over several runs, with the contenders' runs interleaved (so that load
from other processes hits both alike), and the ratios measured in the same run:

- ``reconstruct`` vs TensorLy's ``cp_to_tensor``, and vs one GEMM of the same output size
  (``(∏ leading modes, R) @ (R, ∏ trailing modes)``, split where the operands are smallest);
- one full MTTKRP sweep, ``mttkrp_all``, vs TensorLy's ``unfolding_dot_khatri_rao`` for
  every mode (and, for reference, ``cptensor.mttkrp`` mode by mode).

Targets (issue 2): sweep ≥ 2× TensorLy on 3-way shapes and ≥ 4× on 4-/5-way shapes;
``reconstruct`` no slower than TensorLy and within 1.3× of the GEMM.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks._timing import print_table

CASES: list[tuple[tuple[int, ...], int]] = [
    ((100, 100, 100), 10),
    ((200, 200, 200), 20),
    ((40, 40, 40, 40), 10),
    ((384, 32, 12, 6, 4), 16),
    ((145, 145, 200), 10),
]


def paired_medians(
    fns: dict[str, Callable[[], Any]], *, repeats: int = 9, warmup: int = 2
) -> dict[str, float]:
    """Median seconds of each function, their runs interleaved round by round."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def blas_info() -> str:
    """Which BLAS NumPy uses and with how many threads (threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn/scipy
        return "threadpoolctl not installed"
    parts = [
        f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture')}), "
        f"{i.get('num_threads')} threads"
        for i in threadpool_info()
        if i.get("user_api") == "blas"
    ]
    return "; ".join(parts) or "no BLAS found"


def bench_case(
    shape: tuple[int, ...], rank: int, rng: np.random.Generator, repeats: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One shape: (sweep row, reconstruct row)."""
    import tensorly as tl
    from tensorly.cp_tensor import unfolding_dot_khatri_rao

    import cptensor as ct
    from cptensor.products import _best_split

    label = "×".join(map(str, shape)) + f" r{rank}"
    x = rng.standard_normal(shape)
    factors = [rng.standard_normal((n, rank)) for n in shape]
    weights = np.ones(rank)
    cp = ct.CPTensor(weights, factors)
    tl_cp = (weights, factors)
    n = len(shape)

    t = paired_medians(
        {
            "cptensor": lambda: ct.mttkrp_all(x, factors),
            "tensorly": lambda: [unfolding_dot_khatri_rao(x, tl_cp, m) for m in range(n)],
            "per_mode": lambda: [ct.mttkrp(x, factors, m) for m in range(n)],
        },
        repeats=repeats,
    )
    target = 2.0 if n == 3 else 4.0
    ratio = t["tensorly"] / t["cptensor"]
    sweep = {
        "shape": label,
        "mttkrp_all ms": 1e3 * t["cptensor"],
        "per-mode mttkrp ms": 1e3 * t["per_mode"],
        "TensorLy ms": 1e3 * t["tensorly"],
        "TensorLy/cptensor": ratio,
        "target": f"≥{target:g}×",
        "met": "yes" if ratio >= target else "NO",
    }

    k = _best_split(shape)
    left = rng.standard_normal((math.prod(shape[:k]), rank))
    right = rng.standard_normal((rank, math.prod(shape[k:])))
    t = paired_medians(
        {
            "cptensor": lambda: ct.reconstruct(cp),
            "tensorly": lambda: tl.cp_to_tensor(tl_cp),
            "gemm": lambda: left @ right,
        },
        repeats=repeats,
    )
    vs_tl = t["tensorly"] / t["cptensor"]
    vs_gemm = t["cptensor"] / t["gemm"]
    rec = {
        "shape": label,
        "reconstruct ms": 1e3 * t["cptensor"],
        "cp_to_tensor ms": 1e3 * t["tensorly"],
        "GEMM ms": 1e3 * t["gemm"],
        "TensorLy/cptensor": vs_tl,
        "cptensor/GEMM": vs_gemm,
        "met (≥1, ≤1.3)": "yes" if vs_tl >= 1.0 and vs_gemm <= 1.3 else "NO",
    }
    return sweep, rec


def main(repeats: int | None = None, threads: int | None = None) -> None:
    """Run the suite. ``repeats`` (env ``CPTENSOR_BENCH_REPEATS``, default 9) timed rounds;
    ``threads`` (env ``CPTENSOR_BENCH_THREADS``) limits the BLAS threads through
    threadpoolctl (default: leave NumPy's BLAS as configured)."""
    env_threads = os.environ.get("CPTENSOR_BENCH_THREADS")
    threads = threads or (int(env_threads) if env_threads else None)
    if threads is not None:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=threads, user_api="blas"):
            _run(repeats)
    else:
        _run(repeats)


def _run(repeats: int | None) -> None:
    import tensorly as tl

    repeats = repeats or int(os.environ.get("CPTENSOR_BENCH_REPEATS", "9"))
    print(f"NumPy {np.__version__}, TensorLy {tl.__version__}; BLAS: {blas_info()}")
    print(
        f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}; "
        f"CPUs: {os.cpu_count()}; medians of {repeats} interleaved runs",
        flush=True,
    )
    rng = np.random.default_rng(0)
    sweep_rows, rec_rows = [], []
    with tl.backend_context("numpy"):
        for shape, rank in CASES:
            sweep, rec = bench_case(shape, rank, rng, repeats)
            sweep_rows.append(sweep)
            rec_rows.append(rec)
    print_table(sweep_rows, "MTTKRP sweep (all modes), float64 NumPy")
    print_table(rec_rows, "reconstruct, float64 NumPy")


if __name__ == "__main__":
    main()

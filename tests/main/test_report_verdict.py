"""Delta reports that explain themselves: the verdict first, defined columns, readable
numbers, one energy unit, and the two command mix-ups named."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cptensor.errors import CPTensorError
from cptensor_adapters.cli import main
from cptensor_adapters.deltas import (
    LOW_RANK_ENERGY_PCT,
    analyze_delta,
    extract_adapter_delta,
    extract_delta,
)
from cptensor_adapters.deltas.verdict import (
    COLUMNS,
    fmt_converged,
    fmt_core_consistency,
    fmt_pct,
    fmt_stability,
    join_words,
)

from .conftest import tiny_bert_config


@pytest.fixture(scope="module")
def lorta_r3(tmp_path_factory):
    """A tiny BERT with a LoRTA adapter of rank 3 (random factors) saved by save_adapter."""
    import torch
    from transformers import BertModel

    import cptensor_adapters as cpa

    torch.manual_seed(0)
    model = cpa.attach(BertModel(tiny_bert_config()), cpa.AdapterConfig(r=3, init="random"))
    return cpa.save_adapter(model, tmp_path_factory.mktemp("lorta3") / "adapter")


@pytest.fixture(scope="module")
def random_report():
    """A full-rank random delta of the LoRTA shape, swept at ranks 1-3."""
    x = np.random.default_rng(0).standard_normal((16, 4, 4, 2, 4))
    return analyze_delta(x, [1, 2, 3], n_starts=2, max_iter=50)


def _energy_keys_outside_pct(obj, path=""):
    """Keys of energy numbers that do not say their unit (``_pct``)."""
    bad = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            numeric = isinstance(v, (int, float)) and not isinstance(v, bool)
            if "energy" in k and numeric and not k.endswith("_pct"):
                bad.append(f"{path}/{k}")
            bad += _energy_keys_outside_pct(v, f"{path}/{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            bad += _energy_keys_outside_pct(v, f"{path}/{i}")
    return bad


def test_exact_lorta_adapter_is_low_tensor_rank(lorta_r3, tmp_path, capsys):
    """analyze-adapter on a saved rank-3 LoRTA adapter: the verdict says low tensor rank at
    rank 3 (the rank rule agrees), first in the text, the Markdown and the JSON."""
    out = tmp_path / "r"
    argv = ["analyze-adapter", str(lorta_r3), "--out", str(out), "--ranks", "1-5"]
    assert main([*argv, "--starts", "2", "--max-iter", "300"]) == 0
    text = capsys.readouterr().out
    first, second = text.splitlines()[:2]
    assert first.startswith("Verdict: This delta is low tensor rank: a LoRTA adapter of rank 3 ")
    assert second == (
        "Next step: Train a LoRTA adapter of rank 3: "
        "`cptensor_adapters.attach(model, AdapterConfig(r=3))`."
    )
    doc = json.loads((out / "report.json").read_text())
    assert list(doc)[:2] == ["title", "verdict"]
    v = doc["verdict"]
    assert v["low_tensor_rank"] is True and v["rank"] == 3 and v["recommended_rank"] == 3
    assert v["energy_captured_pct"] > 99.9 and v["parameters"] == 3 * (16 + 4 + 4 + 2 + 4)
    # LoRA: rank 3 on each of the 8 matrices of 16 × 16 reproduces the adapter exactly
    assert v["lora_uniform_rank"] == 3 and v["lora_uniform_parameters"] == 3 * 32 * 8
    assert v["lora_parameters"] >= 2 * v["parameters"]
    assert f"{v['lora_parameters']:,} parameters for the same energy" in v["text"]
    md = (out / "report.md").read_text()
    lines = [line for line in md.splitlines() if line]
    assert lines[0] == "# Tensor rank of the LoRTA adapter's delta"
    assert lines[1] == f"**Verdict.** {v['text']}"
    assert lines[2] == f"**Next step.** {v['next_step']}"
    assert "The rank rule of `rank_sweep` recommends rank 3." in md


def test_random_delta_is_not_low_tensor_rank(random_report):
    v = random_report.verdict
    assert v.low_tensor_rank is False
    assert v.text.startswith("This delta is not low tensor rank at the swept ranks: ")
    assert v.energy_captured_pct < LOW_RANK_ENERGY_PCT
    # the next step is LoRA at the uniform rank that reaches 90 %, as a call that exists
    uni = next(r for r in random_report.lora_rows if r.energy_captured_pct >= 90)
    assert f"AdapterConfig(r={uni.rank}, layout='lora')" in v.next_step
    import cptensor_adapters as cpa

    assert cpa.AdapterConfig(r=uni.rank, layout="lora").r == uni.rank
    assert random_report.markdown().count("This delta is not low tensor rank") == 1


def test_sweep_further_when_short_of_energy_but_cheaper():
    """A rank-4 tensor swept at rank 1 only: CP is far cheaper than LoRA but short of 90 %,
    so the next step is the command with larger ranks appended."""
    rng = np.random.default_rng(3)
    fs = [rng.standard_normal((n, 4)) for n in (16, 4, 4, 2, 4)]
    x = np.einsum("ar,br,cr,dr,er->abcde", *fs)
    rep = analyze_delta(x, [1], n_starts=1, max_iter=200, rerun="cptensor analyze B T --out o")
    v = rep.verdict
    assert not v.low_tensor_rank and v.energy_captured_pct < 90
    assert v.lora_parameters >= 2 * v.parameters
    assert "`cptensor analyze B T --out o --ranks 2-4`" in v.next_step
    # without a command, the Python call
    rep = analyze_delta(x, [1], n_starts=1, max_iter=200)
    assert "`analyze_delta(delta, range(2, 5))`" in rep.verdict.next_step


def test_numbers_are_readable():
    assert fmt_core_consistency(-2355178265.0) == "< -100"
    assert fmt_core_consistency(-99.94) == "-99.9"
    assert fmt_core_consistency(math.nan, "core too large for core consistency") == (
        "n/a (core too large)"
    )
    assert fmt_stability(math.nan) == "n/a (one start near best)"
    assert fmt_pct(99.999) == "> 99.99" and fmt_pct(3.9012) == "3.90" and fmt_pct(None) == "n/a"
    assert fmt_pct(99.949) == "99.9"  # three significant digits, never rounded up to 100
    assert join_words([1]) == "1" and join_words([2, 3, 4]) == "2, 3 and 4"
    assert fmt_converged((True, False), (12, 100)) == "yes (12), no (100)"
    assert fmt_converged((), ()) == "n/a"


@given(st.floats(min_value=0.0, max_value=100.0, exclude_max=True))
def test_a_share_below_100_never_reads_100(value):
    shown = fmt_pct(value)
    assert shown != "100.00"
    number = float(shown.removeprefix("> "))
    assert number < 100 and abs(number - value) <= max(0.05, 0.06 * value)


@given(st.lists(st.integers(0, 99), max_size=6))
def test_join_words_names_every_item_once(items):
    text = join_words(items)
    assert text.replace(" and ", ", ").split(", ") == ([str(i) for i in items] or [""])


def test_markdown_renders_huge_core_consistency_and_prose(random_report):
    rows = list(random_report.cp_rows)
    rows[1] = dataclasses.replace(rows[1], core_consistency=-2355178265.0)
    # rank 1 ahead of per-matrix SVD, ranks 2 and 3 behind: the reading names them in prose
    rows[0] = dataclasses.replace(rows[0], svd_energy_captured_pct=0.0)
    for i in (1, 2):
        rows[i] = dataclasses.replace(rows[i], svd_energy_captured_pct=100.0)
    rep = dataclasses.replace(random_report, cp_rows=rows)
    md = rep.markdown()
    assert "< -100" in md and "2355178265" not in md and "e+09" not in md
    assert rep.reading.endswith("at rank 1, and less at ranks 2 and 3.")
    assert "[" not in rep.reading
    # the JSON keeps the value itself
    assert rep.to_dict()["cp"][1]["core_consistency"] == -2355178265.0


def test_json_has_convergence_and_one_energy_unit(random_report):
    doc = random_report.to_dict()
    assert doc["energy_unit"] == "percent"
    assert _energy_keys_outside_pct(doc) == []
    for row, sweep_row in zip(doc["cp"], random_report.sweeps[0].rows):
        assert row["converged"] == [sweep_row["converged"]]
        assert row["n_iter"] == [sweep_row["n_iter"]]
        assert 0 <= row["energy_captured_pct"] <= 100
    assert doc["parameters_for_energy"][0]["energy_pct"] == 50.0
    assert max(doc["spectra"]["_greedy_curve"][1]) == pytest.approx(100.0)
    json.dumps(doc)  # serialisable


def test_every_column_is_defined(random_report):
    md = random_report.markdown()
    defined = {name for table in COLUMNS.values() for name in table}
    headers = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    cp_header, _, profile_header = (h for h in headers if not h[2].isdigit())
    for header in (cp_header, profile_header):
        for name in (c.strip() for c in header.strip("|").split("|")):
            if name not in ("layer", "matrix"):
                assert name in defined, name
    assert "## Columns" in md
    for table in COLUMNS.values():
        for name, text in table.items():
            assert f"- **{name}**: {text}" in md
    assert random_report.to_dict()["columns"] == COLUMNS


def test_converged_column_in_markdown_and_cli(random_report, tiny_bert_pair, tmp_path, capsys):
    md = random_report.markdown()
    row = random_report.cp_rows[0]
    cell = f"{'yes' if row.converged[0] else 'no'} ({row.n_iter[0]})"
    assert f"| {cell} |" in md
    base, tuned = tiny_bert_pair[:2]
    argv = ["analyze", str(base), str(tuned), "--out", str(tmp_path / "r"), "--ranks", "1-2"]
    assert main([*argv, "--starts", "1", "--max-iter", "5"]) == 0
    out = capsys.readouterr().out
    assert "converged (ALS sweeps)" in out
    assert out.splitlines()[0].startswith("Verdict: This delta is not low tensor rank")
    # five sweeps cannot converge: the table and the verdict say so
    assert "no (5)" in out and "--max-iter" in out.splitlines()[0]


def test_energy_figure_has_few_markers(random_report):
    fig = random_report.figures()["energy_vs_parameters.png"]
    (ax,) = fig.axes
    lora = next(ln for ln in ax.lines if ln.get_label().startswith("LoRA, one rank"))
    assert len(lora.get_xdata()) == len(random_report.lora_rows)  # every rank on the line
    marked = lora.get_markevery()
    assert marked is not None and len(marked) <= 1 + math.log2(len(random_report.lora_rows))


def test_analyze_on_an_adapter_directory_names_analyze_adapter(lorta_r3, tiny_bert_pair, capsys):
    from .test_main_cli import _bad

    base = tiny_bert_pair[0]
    argv = ["analyze", str(base), str(lorta_r3), "--out", str(lorta_r3.parent / "o")]
    _bad(capsys, argv, "is an adapter directory (adapter_config.json, no model weights)")
    _bad(capsys, argv, f"`cptensor analyze-adapter {lorta_r3}`")
    with pytest.raises(CPTensorError, match="extract_adapter_delta"):
        extract_delta(base, lorta_r3)


def test_analyze_adapter_on_a_checkpoint_names_analyze(tiny_bert_pair, tmp_path, capsys):
    from .test_main_cli import _bad

    tuned = tiny_bert_pair[1]
    argv = ["analyze-adapter", str(tuned), "--out", str(tmp_path / "o")]
    _bad(capsys, argv, "is a model checkpoint")
    _bad(capsys, argv, f"`cptensor analyze BASE {tuned}`")
    with pytest.raises(CPTensorError, match=r"extract_delta\(base, tuned\)"):
        extract_adapter_delta(tuned)
    assert not (tmp_path / "o").exists()


def test_docs_define_every_column():
    """The reference page's "Columns of a report" tables name every column of COLUMNS."""
    from pathlib import Path

    page = Path(__file__).resolve().parents[2] / "docs" / "reference" / "deltas.md"
    text = page.read_text()
    section = text[text.index("## Columns of a report") : text.index("## API")]
    rows = {line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| ")}
    for table in COLUMNS.values():
        for name in table:
            assert name in rows, name

"""The SST-2 benchmark's bookkeeping: verdict, summary table and the docs' Markdown.

The benchmark itself trains for an hour; these tests check the logic that turns its runs
into the reported conclusion, on made-up runs whose answer is known.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: benchmarks/

import json

from hypothesis import given
from hypothesis import strategies as st

from benchmarks.bench_sst2 import (
    BASELINE,
    METHODS,
    Run,
    _summary,
    _verdict,
    export,
    loss_curve,
    markdown_report,
    steps_to_reach,
    sweep_steps,
)


def _run(method: str, acc: float, params: int, seed: int = 0, losses=()) -> Run:
    return Run(method, seed, 1e-3, acc, params, 770, 0.3, 500, 1, 16.0, tuple(losses))


def test_verdict_states_the_figures():
    runs = [
        _run(BASELINE, 0.880, 73728),
        _run(BASELINE, 0.890, 73728, seed=1),  # mean 88.5
        _run("LoRTA r=8", 0.870, 3504),  # -1.5
        _run("LoRTA r=8 tuned", 0.881, 3504),  # -0.4: within 0.5
        _run("LoRTA r=16 tuned", 0.886, 7008),  # above, 10.5x fewer
        _run("LoRTA r=64", 0.890, 28032),  # above, 2.6x fewer only
        _run("head only", 0.7, 0),  # no adapter: not compared
    ]
    v = _verdict(runs)
    assert v.startswith("baseline PEFT LoRA r=8 (Q,V): 88.50% (sd 0.71 over 2 seeds)")
    assert "LoRTA r=8: 87.00% (-1.50 points, 1 seed), 3,504 parameters (21.0x fewer)" in v
    assert "within 0.5 points of the baseline: LoRTA r=8 tuned, LoRTA r=16 tuned, LoRTA r=64" in v
    assert ">= 10x fewer adapter parameters and at or above the baseline: LoRTA r=16 tuned" in v
    assert "head only" not in v


def test_verdict_says_when_nothing_is_close():
    v = _verdict([_run(BASELINE, 0.9, 73728), _run("LoRTA r=8", 0.8, 3504)])
    assert "within 0.5 points of the baseline: none" in v
    assert v.endswith("at or above the baseline: none")
    assert _verdict([_run("LoRTA r=8", 0.8, 3504)]) == "no baseline run"


def test_flat_start_is_measured_against_the_baseline_curve():
    fast = [1.0 - 0.005 * i for i in range(200)]  # the baseline: 0.5 at step 101
    slow = [1.0 - 0.003 * i for i in range(200)]  # reaches the same loss ~60 steps later
    runs = [_run(BASELINE, 0.9, 73728, losses=fast), _run("LoRTA r=8", 0.9, 3504, losses=slow)]
    rows = {r["method"]: r for r in _summary(runs)}
    reach = rows["LoRTA r=8"]["steps to baseline's step-100 loss"]
    assert rows[BASELINE]["steps to baseline's step-100 loss"] == 100
    assert 160 <= reach <= 175
    assert _verdict(runs).endswith("by step 120: none")
    runs.append(_run("LoRTA r=8 tuned", 0.9, 3504, losses=fast))
    assert _verdict(runs).endswith("by step 120: LoRTA r=8 tuned (100)")


@given(st.lists(st.floats(0, 5, allow_nan=False), min_size=1, max_size=60), st.integers(1, 30))
def test_loss_curve_is_a_trailing_mean(values, window):
    runs = [_run("m", 0.5, 1, losses=values), _run("m", 0.5, 1, seed=1, losses=values)]
    curve = loss_curve(runs, window)
    assert len(curve) == len(values)
    for i, v in enumerate(curve):
        part = values[max(0, i - window + 1) : i + 1]
        assert abs(v - sum(part) / len(part)) < 1e-9
    target = curve[len(curve) // 2]
    step = steps_to_reach(curve, target)
    assert step is not None and curve[step - 1] <= target
    assert all(c > target for c in curve[: step - 1])


def test_sweeps_run_forty_percent_of_the_budget():
    assert sweep_steps(500) == 200 and sweep_steps(1500) == 600 and sweep_steps(1) == 1
    assert BASELINE in METHODS and all(m.lrs and m.alphas and m.seeds for m in METHODS.values())


def test_export_has_one_row_per_method_and_budget():
    docs = []
    for steps in (500, 1500):
        runs = [
            _run(BASELINE, 0.88, 73728, losses=[0.7] * 10),
            _run(BASELINE, 0.90, 73728, seed=1, losses=[0.5] * 10),
            _run("LoRTA r=8", 0.87, 3504, losses=[0.6] * 10),
        ]
        docs.append({"steps": steps, "runs": [r.__dict__ for r in runs], "verdict": "v"})
    out = json.loads(json.dumps(export(docs)))
    assert [(r["method"], r["steps"]) for r in out["rows"]] == [
        (BASELINE, 500),
        ("LoRTA r=8", 500),
        (BASELINE, 1500),
        ("LoRTA r=8", 1500),
    ]
    row = out["rows"][0]
    assert row["mean_accuracy"] == 89.0 and row["sd"] == 1.414 and row["seeds"] == 2
    assert row["adapter_params"] == 73728 and out["rows"][1]["sd"] is None
    assert out["curves"][0]["loss"] == [0.6, 0.6] and out["curves"][0]["step"] == [1, 6]
    assert out["verdicts"] == {"500": "v", "1500": "v"} and len(out["runs"]) == 2


def test_summary_reports_mean_spread_and_settings():
    rows = _summary([_run(BASELINE, 0.88, 73728), _run(BASELINE, 0.90, 73728, seed=1)])
    (row,) = rows
    assert row["seeds"] == 2 and row["alpha"] == "16"
    assert row["dev acc % (mean ± sd)"] == "89.00 ± 1.41"
    assert row["min–max"] == "88.00–90.00"


@pytest.mark.parametrize("complete", [True, False])
def test_markdown_report_states_protocol_and_completeness(complete):
    runs = [_run(BASELINE, 0.88, 73728), _run("LoRTA r=8", 0.875, 3504)]
    doc = {
        "command": "python -m benchmarks.bench_sst2 --jobs 2",
        "complete": complete,
        "quick": False,
        "steps": 500,
        "batch": 32,
        "max_length": 64,
        "group_by_length": True,
        "train_subset": 20000,
        "dev": 872,
        "sweep_steps": 200,
        "sweep": [{"method": BASELINE, "lr": 1e-3, "alpha": 16.0, "holdout acc %": 86.0}],
        "table": _summary(runs),
        "verdict": _verdict(runs),
        "wall_seconds": 3600.0,
        "jobs": 2,
        "threads": 1,
    }
    md = markdown_report(doc, note="Recorded on a test machine.")
    assert md.startswith("Recorded on a test machine.")
    assert ("Incomplete run" in md) is (not complete)
    assert "the full dev set (872 sentences)" in md and "500 steps of batch 32" in md
    assert "| LoRTA r=8" in md and "(21.0x fewer)" in md
    assert "### The sweep (200 steps)" in md


def test_help_prints(capsys) -> None:
    """argparse %-formats every help string: a bare percent sign breaks ``--help``."""
    from benchmarks.bench_sst2 import main

    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    assert "sweeps run 40% of it" in " ".join(capsys.readouterr().out.split())


def test_records_are_the_recorded_sweeps_choices() -> None:
    """METHODS' lr and alpha (used with --no-sweep, and by --resume for methods it does not
    run) are what the committed 500-step sweep chose for each method."""
    doc = json.loads(
        (Path(__file__).resolve().parents[2] / "docs/bench-results/sst2.json").read_text()
    )
    rows = {r["method"]: r for r in doc["rows"] if r["steps"] == 500}
    for method, spec in METHODS.items():
        if method in rows:
            assert (spec.lr, spec.alpha) == (rows[method]["lr"], rows[method]["alpha"]), method


def test_resume_keeps_the_files_record(tmp_path, monkeypatch) -> None:
    """A resumed run adds to its file: the first command, the other methods' settings and
    earlier additions stay; this call is appended to ``additions``."""
    import benchmarks.bench_sst2 as bench

    glue = tmp_path / "glue"
    glue.mkdir()
    rows = "".join(f"phrase number {i}\t{i % 2}\n" for i in range(400))
    for name in ("train.tsv", "dev.tsv"):
        (glue / name).write_text("sentence\tlabel\n" + rows)

    def fake_tasks(tasks, train, test, jobs, threads, done) -> None:
        for m, seed, lr, alpha, steps in tasks:
            done((m, seed, lr, alpha, steps), Run(m, seed, lr, 0.5, 0, 770, 0.1, steps))

    monkeypatch.setattr(bench, "_run_tasks", fake_tasks)
    out = tmp_path / "results.json"
    other = "LoRTA r=8"
    out.write_text(
        json.dumps(
            {
                "command": "python -m benchmarks.bench_sst2 --quick (first)",
                "steps": 4,
                "quick": True,
                "group_by_length": bench.GROUP_BY_LENGTH,
                "learning_rates": {other: 0.02},
                "alphas": {other: 32.0},
                "methods": {other: {"kind": "cptensor"}},
                "additions": [{"methods": ["x"], "started": "earlier"}],
                "sweep": [],
                "runs": [],
            }
        )
    )
    doc = bench.run(glue, quick=True, methods=["head only"], resume=True, out=out)
    saved = json.loads(out.read_text())
    assert saved["runs"] == json.loads(json.dumps(doc["runs"]))
    assert saved["command"] == "python -m benchmarks.bench_sst2 --quick (first)"
    assert saved["learning_rates"][other] == 0.02 and saved["alphas"][other] == 32.0
    assert set(saved["methods"]) == {other, "head only"}
    assert [a["methods"] for a in saved["additions"]] == [["x"], ["head only"]]
    assert {r["method"] for r in saved["runs"]} == {"head only"}

"""The SST-2 benchmark's bookkeeping: verdict, summary table and the docs' Markdown.

The benchmark itself trains for an hour; these tests check the logic that turns its runs
into the reported conclusion, on made-up runs whose answer is known.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: benchmarks/

from benchmarks.bench_sst2 import BASELINE, Run, _summary, _verdict, markdown_report


def _run(method: str, acc: float, params: int, seed: int = 0) -> Run:
    return Run(method, seed, 1e-3, acc, params, 770, 0.3, 500, 1, 16.0)


def test_verdict_picks_the_smallest_rank_within_one_point():
    runs = [
        _run(BASELINE, 0.880, 73728),
        _run(BASELINE, 0.890, 73728, seed=1),  # mean 88.5
        _run("LoRTA r=8", 0.870, 3504),  # -1.5: not within
        _run("LoRTA r=32", 0.876, 14016),  # -0.9: within
        _run("LoRTA r=64", 0.890, 28032),
    ]
    v = _verdict(runs)
    assert "smallest LoRTA rank within 1 point of the baseline: r=32, 5.3x fewer" in v
    assert "LoRTA r=8: 87.00% (-1.50 points)" in v


def test_verdict_says_when_no_rank_is_close():
    v = _verdict([_run(BASELINE, 0.9, 73728), _run("LoRTA r=8", 0.8, 3504)])
    assert v.endswith("no LoRTA rank tried came within 1 point of the baseline")
    assert _verdict([_run("LoRTA r=8", 0.8, 3504)]) == "no baseline run"


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
    assert "| LoRTA r=8" in md and "r=8, 21.0x fewer" in md
    assert "### The sweep" in md

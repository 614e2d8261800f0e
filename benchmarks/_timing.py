"""Shared timing and table helpers for the benchmark suites.

Every suite reports medians over several runs and ratios measured in the same process,
never absolute thresholds: these machines are noisy.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any


def median_seconds(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def format_table(rows: Sequence[dict[str, Any]], title: str | None = None) -> str:
    """Format rows of dicts (same keys) as a Markdown table."""
    if not rows:
        return ""
    headers = list(rows[0].keys())

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            if v == 0 or 1e-3 <= abs(v) < 1e5:
                return f"{v:.4g}"
            return f"{v:.3e}"
        return str(v)

    cells = [[fmt(r.get(h, "")) for h in headers] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    lines = []
    if title:
        lines.append(f"\n### {title}\n")
    lines.append("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |")
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for c in cells:
        lines.append("| " + " | ".join(x.ljust(w) for x, w in zip(c, widths)) + " |")
    return "\n".join(lines)


def print_table(rows: Sequence[dict[str, Any]], title: str | None = None) -> None:
    """Print rows as a Markdown table (flushes, so progress shows under ``make bench``)."""
    print(format_table(rows, title), flush=True)

"""Run benchmark suites: ``python -m benchmarks`` runs all, ``python -m benchmarks core fit``
runs the named ones. Each suite is a module ``benchmarks/bench_<name>.py`` with ``main()``."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def available() -> list[str]:
    here = Path(__file__).parent
    return sorted(
        m.name.removeprefix("bench_")
        for m in pkgutil.iter_modules([str(here)])
        if m.name.startswith("bench_")
    )


def main(argv: list[str]) -> int:
    suites = argv or available()
    unknown = [s for s in suites if s not in available()]
    if unknown:
        print(f"unknown suite(s) {unknown}; available: {available()}", file=sys.stderr)
        return 2
    for name in suites:
        print(f"\n## benchmark suite: {name}", flush=True)
        importlib.import_module(f"benchmarks.bench_{name}").main()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

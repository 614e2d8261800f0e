"""Run benchmark suites: ``python -m benchmarks`` runs all, ``python -m benchmarks core fit``
runs the named ones. Each suite is a module ``benchmarks/bench_<name>.py`` with ``main()``;
``suite:section`` runs one section of a suite that lists them in ``SECTIONS`` (e.g.
``python -m benchmarks analysis:sharded adapters:fsdp``)."""

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
    requests = [item.partition(":")[::2] for item in argv] or [(s, "") for s in available()]
    unknown = [s for s, _ in requests if s not in available()]
    if unknown:
        print(f"unknown suite(s) {unknown}; available: {available()}", file=sys.stderr)
        return 2
    runs = []
    for name, section in requests:
        module = importlib.import_module(f"benchmarks.bench_{name}")
        sections = getattr(module, "SECTIONS", {})
        if section and section not in sections:
            print(
                f"suite {name!r} has no section {section!r}; sections: {sorted(sections)}",
                file=sys.stderr,
            )
            return 2
        runs.append((f"{name}:{section}" if section else name, sections.get(section, module.main)))
    for label, run in runs:
        print(f"\n## benchmark suite: {label}", flush=True)
        run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

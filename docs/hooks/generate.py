"""MkDocs hook: regenerate the docs' figures and result tables from real data at build time.

The generators live in ``docs/scripts/generate.py`` (runnable on its own too). The hook runs
them before the build, caches their output under ``build/docs-generated/<hash>/`` keyed by a
hash of the generator scripts, the recorded benchmark results and the library sources (so
an unchanged tree does not recompute), adds the PNG figures to the site as
``figures/<name>.png`` and replaces markers ``<!-- gen:NAME -->`` in the pages with the
generated Markdown snippet ``NAME``.

A marker without a snippet is a warning, which ``mkdocs build --strict`` turns into an
error: a page never silently loses its table. For local editing, ``CPTENSOR_DOCS_REUSE=1``
reuses the latest generated output instead of recomputing (also a warning, so a strict
build with it fails: it is never used for a real build).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.generate")

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "docs" / "scripts"
CACHE_ROOT = ROOT / "build" / "docs-generated"
MARKER = re.compile(r"<!--\s*gen:([A-Za-z0-9_\-]+)\s*-->")

_out_dir: Path | None = None


def _source_hash() -> str:
    h = hashlib.sha256()
    paths = sorted(SCRIPTS.glob("*.py")) + sorted((ROOT / "docs" / "bench-results").glob("*.[mj]*"))
    for pkg in ("cptensor", "cptensor_adapters"):
        paths += sorted((ROOT / pkg).rglob("*.py"))
    for p in paths:
        h.update(str(p.relative_to(ROOT)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _load_generator() -> Any:
    spec = importlib.util.spec_from_file_location("cptensor_docs_generate", SCRIPTS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _latest_complete() -> Path | None:
    done = sorted(CACHE_ROOT.glob("*/.complete"), key=lambda p: p.stat().st_mtime)
    return done[-1].parent if done else None


def on_pre_build(config: Any) -> None:
    global _out_dir
    # CPTENSOR_DOCS_REUSE=1 (local editing only): reuse the latest generated output even if
    # the sources changed since, instead of recomputing every figure.
    if os.environ.get("CPTENSOR_DOCS_REUSE") == "1" and (latest := _latest_complete()):
        log.warning("CPTENSOR_DOCS_REUSE=1: reusing generated output %s (may be stale)", latest)
        _out_dir = latest
        return
    out = CACHE_ROOT / _source_hash()
    done = out / ".complete"
    if not done.exists():
        if out.exists():
            shutil.rmtree(out)
        start = time.perf_counter()
        gen = _load_generator()
        gen.generate_all(out, log=log)
        done.write_text("ok\n")
        log.info("generated docs figures and tables in %.1f s", time.perf_counter() - start)
        for old in CACHE_ROOT.iterdir():  # keep only the current tree's output
            if old.is_dir() and old != out:
                shutil.rmtree(old, ignore_errors=True)
    _out_dir = out


def on_files(files: Files, config: Any) -> Files:
    assert _out_dir is not None
    for png in sorted((_out_dir / "figures").glob("*.png")):
        files.append(File.generated(config, f"figures/{png.name}", abs_src_path=str(png)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    assert _out_dir is not None

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        snippet = _out_dir / "snippets" / f"{name}.md"
        if not snippet.exists():
            log.warning(
                "%s: no generated snippet %r for marker %s", page.file.src_uri, name, match.group(0)
            )
            return match.group(0)
        return snippet.read_text()

    return MARKER.sub(replace, markdown)

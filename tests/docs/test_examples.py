"""Every ```python block of the documentation runs.

Blocks are extracted from ``docs/**/*.md`` and executed page by page, in order, in one
namespace per page (so a later block may use what an earlier one defined), inside a
temporary working directory. A block preceded (on the line just before its fence, blank
lines allowed) by ``<!-- skip-test -->`` is not run: used sparingly, for blocks that train
a model or need files a reader has but the test machine does not.
"""

from __future__ import annotations

import os
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
SKIP = "<!-- skip-test -->"
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^\n`]*)$")


@dataclass(frozen=True)
class Block:
    page: str
    line: int  # 1-based line of the opening fence
    code: str
    skipped: bool


def extract_blocks(text: str, page: str = "<page>") -> list[Block]:
    """The fenced code blocks whose info string starts with ``python`` or ``py``."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = m.group("indent"), m.group("fence"), m.group("info").strip()
        lang = info.split()[0].lstrip(".{").rstrip("}") if info else ""
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            close = lines[j].strip()
            if close.startswith(fence[0] * len(fence)) and set(close) <= {fence[0]}:
                break
            body.append(lines[j])
            j += 1
        if lang in ("python", "py"):
            k = i - 1
            while k >= 0 and not lines[k].strip():
                k -= 1
            skipped = k >= 0 and lines[k].strip() == SKIP
            code = textwrap.dedent("\n".join(body))
            if indent:
                code = textwrap.dedent(code)
            blocks.append(Block(page, i + 1, code, skipped))
        i = j + 1
    return blocks


PAGES = sorted(p for p in DOCS.rglob("*.md"))
PAGE_BLOCKS = {
    str(p.relative_to(DOCS)): extract_blocks(p.read_text(), str(p.relative_to(DOCS))) for p in PAGES
}
RUNNABLE = {page: bl for page, bl in PAGE_BLOCKS.items() if any(not b.skipped for b in bl)}


def test_extractor_finds_blocks_and_skip_markers() -> None:
    text = textwrap.dedent(
        """\
        Intro.

        ```python
        a = 1
        ```

        <!-- skip-test -->

        ```python
        raise RuntimeError("not run")
        ```

        ```bash
        make test
        ```

        !!! note
            ```python
            b = a + 1
            ```
        """
    )
    blocks = extract_blocks(text)
    assert [b.code.strip() for b in blocks] == [
        "a = 1",
        'raise RuntimeError("not run")',
        "b = a + 1",
    ]
    assert [b.skipped for b in blocks] == [False, True, False]
    assert blocks[0].line == 3


def test_docs_have_examples() -> None:
    # Guard against an extractor that silently finds nothing.
    total = sum(len(b) for b in PAGE_BLOCKS.values())
    skipped = sum(b.skipped for bl in PAGE_BLOCKS.values() for b in bl)
    assert total >= 10, f"only {total} python blocks found under {DOCS}"
    assert skipped <= total // 4, f"{skipped} of {total} blocks are skipped: too many"


@pytest.mark.parametrize("page", sorted(RUNNABLE))
def test_page_examples_run(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib").use("Agg")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace: dict[str, object] = {"__name__": f"docs_{page}"}
    for block in PAGE_BLOCKS[page]:
        if block.skipped:
            continue
        code = compile(block.code, f"docs/{page}:{block.line}", "exec")
        try:
            exec(code, namespace)
        except Exception as exc:
            pytest.fail(
                f"docs/{page}, block at line {block.line} raised "
                f"{type(exc).__name__}: {exc}\n--- block ---\n{block.code}",
                pytrace=True,
            )
    assert os.getcwd() == str(tmp_path)

"""One docstring style across both packages: NumPy style, never Google style.

Every module, class and function docstring of ``cptensor/`` and ``cptensor_adapters/`` is
checked for a Google-style section header: a line that is, after stripping, ``Args:``,
``Returns:``, ``Raises:``, ``Examples:`` and the like. NumPy style writes the section name
alone, underlined with dashes (``Parameters`` / ``----------``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("cptensor", "cptensor_adapters")

GOOGLE_HEADERS = frozenset(
    {
        "Args:",
        "Arguments:",
        "Returns:",
        "Yields:",
        "Raises:",
        "Example:",
        "Examples:",
        "Attributes:",
        "Note:",
        "Notes:",
        "Parameters:",
    }
)

_DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _source_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _docstrings(tree: ast.Module) -> list[tuple[int, str]]:
    """``(line of the opening quotes, raw text)`` of every module, class and function
    docstring in ``tree``."""
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, _DOCUMENTED) or not node.body:
            continue
        first = node.body[0]
        if (
            isinstance(first, ast.Expr)
            and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)
        ):
            out.append((first.lineno, first.value.value))
    return out


def google_headers(source: str) -> list[tuple[int, str]]:
    """``(line, header)`` of every Google-style section header in the docstrings of
    ``source``."""
    found = []
    for lineno, text in _docstrings(ast.parse(source)):
        for offset, line in enumerate(text.splitlines()):
            if line.strip() in GOOGLE_HEADERS:
                found.append((lineno + offset, line.strip()))
    return sorted(found)


def test_google_headers_are_detected() -> None:
    source = '''
def f(x):
    """Summary.

    Args:
        x: a value.

    Returns
    -------
    int
        The value.
    """
'''
    assert google_headers(source) == [(5, "Args:")]


def test_docstrings_use_numpy_style() -> None:
    problems = []
    for path in _source_files():
        rel = path.relative_to(ROOT).as_posix()
        for lineno, header in google_headers(path.read_text(encoding="utf-8")):
            problems.append(f"{rel}:{lineno}: {header}")
    if problems:
        pytest.fail(
            "Google-style docstring section headers (write NumPy style: the section name "
            "alone, underlined with dashes):\n" + "\n".join(problems)
        )

"""The docs' own tooling: the docstring rewriting extension and the figure generators'
helpers (fast; the generators themselves run in the strict site build of ``make test``)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


ext = _load(ROOT / "docs" / "hooks" / "griffe_docstrings.py", "cptensor_docs_griffe")
gen = _load(ROOT / "docs" / "scripts" / "generate.py", "cptensor_docs_generate_test")


def test_bare_doctests_are_fenced() -> None:
    text = "Summary.\n\n>>> a = 1\n>>> a\n1\n\nMore text."
    assert ext.rewrite(text) == "Summary.\n\n```pycon\n>>> a = 1\n>>> a\n1\n```\n\nMore text."


def test_examples_sections_are_left_to_griffe() -> None:
    numpy_style = "Summary.\n\nExamples\n--------\n>>> a = 1\n"
    google_style = "Summary.\n\nExamples:\n    >>> a = 1\n"
    assert ext.rewrite(numpy_style) == numpy_style.rstrip("\n")
    assert ext.rewrite(google_style) == google_style.rstrip("\n")


def test_google_example_admonition_is_fenced_at_its_indent() -> None:
    text = "Summary.\n\nExample:\n    >>> f(1)\n    2"
    assert ext.rewrite(text) == "Summary.\n\nExample:\n    ```pycon\n    >>> f(1)\n    2\n    ```"


def test_roles_become_code_spans() -> None:
    text = "See :func:`~cptensor.fit.fit_als` and :class:`cptensor.CPTensor`, :mod:`x <a.b>`."
    assert ext.rewrite(text) == "See `fit_als` and `cptensor.CPTensor`, `x`."


def test_literal_block_marker_and_leading_gt() -> None:
    assert ext.rewrite("as follows::\n\n    code") == "as follows:\n\n    code"
    assert ext.rewrite("stability\n>= 0.9") == "stability\n\\>= 0.9"


def test_markdown_table_and_resolve() -> None:
    table = gen.markdown_table([{"a": 1, "b": 0.5}, {"a": 2, "b": 1.5e-7}])
    assert table.splitlines() == ["| a | b |", "| --- | --- |", "| 1 | 0.5 |", "| 2 | 1.50e-07 |"]
    import cptensor

    assert gen.resolve("cptensor.reconstruct") is cptensor.reconstruct
    assert not gen.ALLOW_MISSING, "every name of the TensorLy map must exist (set it False)"


def test_tensorly_map_names_exist() -> None:
    for tl_name, ct_name, _ in gen.TENSORLY_MAP:
        assert tl_name or ct_name
        if tl_name:
            gen.resolve(tl_name)
        if ct_name:
            gen.resolve(ct_name)

"""Griffe extension: make the project's docstrings render as intended in Markdown.

The docstrings are written for ``help()``, doctest and Sphinx-minded readers. Two of their
habits do not survive Markdown, so this extension rewrites the docstring text (only what
the site renders; the source is untouched) before mkdocstrings parses it:

- doctest lines (``>>> …`` and their output) outside an ``Examples`` section would render
  as nested block quotes: each run of them becomes a fenced ``pycon`` code block;
- reST roles such as ``:func:`~cptensor.fit.fit_als``` would render literally: they become
  code spans (```fit_als```; the ``~`` form keeps the last component, as Sphinx shows it);
- a line starting with ``>`` (not ``>>>``), such as a wrapped ``>= 0.9``, is escaped;
- a paragraph ending in ``::`` (a reST literal block follows) ends in ``:`` instead;
- every docstring is parsed with the NumPy parser.

``Examples`` sections (NumPy ``Examples`` + underline, Google ``Examples:``) are left alone:
griffe already turns their doctest lines into code blocks.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|obj|exc|const|term):`(~?)([^`]+)`")
_NUMPY_HEADER = re.compile(r"^\s*-{3,}\s*$")


def _role(match: re.Match[str]) -> str:
    tilde, target = match.group(1), match.group(2).strip()
    if "<" in target and target.endswith(">"):  # :func:`title <target>`
        target = target.split("<", 1)[0].strip()
    elif tilde:
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def rewrite(text: str) -> str:
    """The docstring ``text`` with doctest runs fenced and reST roles turned into code."""
    lines = text.splitlines()
    out: list[str] = []
    in_numpy_examples = False
    google_examples_indent: int | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        # NumPy section headers: a title line underlined with dashes.
        if stripped and _NUMPY_HEADER.match(nxt) and not _NUMPY_HEADER.match(line):
            in_numpy_examples = stripped.lower() in ("examples", "example")
            out += [line, nxt]
            i += 2
            continue
        # Google sections: "Examples:" opens one; a dedent to its level closes it.
        if (
            google_examples_indent is not None
            and stripped
            and _indent(line) <= google_examples_indent
        ):
            google_examples_indent = None
        if stripped.lower() == "examples:":
            google_examples_indent = _indent(line)
            out.append(line)
            i += 1
            continue
        in_examples = in_numpy_examples or google_examples_indent is not None
        if stripped.startswith(">>>") and not in_examples:
            pad = " " * _indent(line)
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i])
                i += 1
            out.append(f"{pad}```pycon")
            out += block
            out.append(f"{pad}```")
            continue
        if stripped.endswith("::") and not stripped.startswith(">>>") and len(stripped) > 2:
            line = line[: line.rstrip().rfind("::")] + ":"
        if stripped.startswith(">") and not stripped.startswith(">>>"):
            line = line.replace(">", "\\>", 1)  # e.g. a wrapped ">= 0.9", not a block quote
        out.append(_ROLE.sub(_role, line))
        i += 1
    return "\n".join(out)


class ProjectDocstrings(griffe.Extension):
    """Parse every docstring as NumPy style (the one style of both packages, enforced by
    ``tests/docs/test_docstring_style.py``; griffe's own guess would fall back to Google
    for a docstring whose only section is ``Examples``) and apply :func:`rewrite` to it."""

    def _apply(self, obj: Any) -> None:
        doc = getattr(obj, "docstring", None)
        if doc is None or getattr(doc, "_cptensor_rewritten", False):
            return
        doc.parser = griffe.Parser.numpy
        doc.parser_options = {}
        doc.value = rewrite(doc.value)
        doc._cptensor_rewritten = True

    def on_instance(self, *, obj: Any, **kwargs: Any) -> None:
        self._apply(obj)

    def on_object(self, *, obj: Any, **kwargs: Any) -> None:
        self._apply(obj)

    def on_module(self, *, mod: Any, **kwargs: Any) -> None:
        self._apply(mod)

    def on_package(self, *, pkg: Any, **kwargs: Any) -> None:
        self._apply(pkg)

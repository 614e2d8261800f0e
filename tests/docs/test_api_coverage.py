"""Every public name is documented with an example and appears in the API reference.

Public names are those in a module's ``__all__``. Each function or class among them needs a
docstring containing an example (``>>>``; the examples run as doctests in ``make test``),
and each must be rendered by a mkdocstrings directive in ``docs/reference/*.md``: either
``::: module.name`` (or any other path to the same object, e.g. a re-export), or
``::: module`` rendering the whole module (not restricted by a ``members:`` list that
leaves the name out, and only if mkdocstrings really renders it: checked through griffe,
so a name shadowed by a submodule or without a docstring does not count). Constants,
which cannot carry a docstring, may instead be named in backticks in the page text.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "reference"

MODULES = [
    "cptensor",
    "cptensor.errors",
    "cptensor.files",
    "cptensor.cli",
    "cptensor.datasets",
    "cptensor.testing",
    "cptensor.fit",
    "cptensor.init",
    "cptensor.analysis",
    "cptensor.structured",
    "cptensor.distributed",
    "cptensor_adapters",
    "cptensor_adapters.deltas",
    "cptensor_adapters.cli",
    "cptensor_adapters.inits",
    "cptensor_adapters.optim",
    "cptensor_adapters.grad_align",
    "cptensor_adapters.sharding",
    "cptensor_adapters.trainer",
    "cptensor_adapters.trl_trainers",
]

DIRECTIVE = re.compile(r"^:::\s+(?P<ident>[\w.]+)\s*$")


def _import(name: str) -> ModuleType | None:
    """The module, or None when it (not one of its own imports) does not exist yet."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            return None
        raise


def _resolve(ident: str) -> Any:
    parts = ident.split(".")
    for cut in range(len(parts), 0, -1):
        module = _import(".".join(parts[:cut]))
        if module is None:
            continue
        obj: Any = module
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise LookupError(f"cannot resolve {ident!r}")


def _directives() -> list[tuple[str, str, dict[str, Any]]]:
    """(page, identifier, options) of every ``:::`` directive of the reference pages."""
    import yaml

    out = []
    for page in sorted(REFERENCE.glob("*.md")):
        lines = page.read_text().splitlines()
        for i, line in enumerate(lines):
            m = DIRECTIVE.match(line)
            if not m:
                continue
            block = []
            for follow in lines[i + 1 :]:
                if follow.startswith("    ") or not follow.strip():
                    block.append(follow[4:])
                    if not follow.strip() and block and not any(b.strip() for b in block):
                        break
                else:
                    break
            text = "\n".join(block).strip()
            options = (yaml.safe_load(text) or {}).get("options", {}) if text else {}
            out.append((page.name, m.group("ident"), options))
    return out


@functools.cache
def _griffe_module(module_name: str) -> Any:
    import griffe

    return griffe.load(module_name, search_paths=[str(REFERENCE.parents[1])])


def _rendered_by_module(module_name: str, names: list[str]) -> list[str]:
    """The names a ``::: module`` directive actually renders, as mkdocstrings sees them
    (through griffe): not shadowed by a submodule of the same name, and with a docstring
    (the site is built with ``show_if_no_docstring: false``)."""
    import griffe

    loaded = _griffe_module(module_name)
    out = []
    for n in names:
        try:
            obj = loaded[n]
            if not obj.is_module and obj.docstring is not None:
                out.append(n)
        except (KeyError, griffe.AliasResolutionError):
            continue
    return out


@functools.cache
def _documented_objects() -> frozenset[int]:
    """ids of the objects the reference pages render."""
    ids: set[int] = set()
    for page, ident, options in _directives():
        try:
            obj = _resolve(ident)
        except (LookupError, AttributeError) as exc:
            raise AssertionError(f"{page}: directive ::: {ident} does not resolve: {exc}") from exc
        ids.add(id(obj))
        if inspect.ismodule(obj):
            members = options.get("members", True)
            if members is True or members is None:
                names = list(getattr(obj, "__all__", []))
            elif members is False:
                names = []
            else:
                names = list(members)
            rendered = _rendered_by_module(obj.__name__, names)
            ids.update(id(getattr(obj, n)) for n in rendered if hasattr(obj, n))
    return frozenset(ids)


def _reference_text() -> str:
    return "\n".join(p.read_text() for p in sorted(REFERENCE.glob("*.md")))


def _public(module: ModuleType) -> list[str]:
    names = getattr(module, "__all__", None)
    assert names is not None, f"{module.__name__} defines no __all__"
    return [n for n in names if not (n.startswith("__") and n.endswith("__"))]


def _needs_example(obj: Any) -> bool:
    return inspect.isclass(obj) or inspect.isroutine(obj) or callable(obj)


@pytest.mark.parametrize("module_name", MODULES)
def test_public_names_have_examples(module_name: str) -> None:
    module = _import(module_name)
    if module is None:
        pytest.skip(f"{module_name} does not exist yet")
    missing = []
    for name in _public(module):
        obj = getattr(module, name)
        if not _needs_example(obj):
            continue
        doc = inspect.getdoc(obj) or ""
        if ">>>" not in doc:
            missing.append(name)
    assert not missing, (
        f"public names of {module_name} without a docstring example (>>>): {missing}"
    )


@pytest.mark.parametrize("module_name", MODULES)
def test_public_names_in_reference(module_name: str) -> None:
    module = _import(module_name)
    if module is None:
        pytest.skip(f"{module_name} does not exist yet")
    documented = _documented_objects()
    text = _reference_text()
    missing = []
    for n in _public(module):
        obj = getattr(module, n)
        if id(obj) in documented:
            continue
        if not _needs_example(obj) and f"`{n}`" in text:
            continue  # a constant cannot carry a docstring: named in the page text instead
        missing.append(n)
    assert not missing, (
        f"public names of {module_name} missing from docs/reference/*.md "
        f"(add '::: {module_name}.NAME' or a '::: {module_name}' directive): {missing}"
    )


def test_directives_resolve() -> None:
    directives = _directives()
    assert len(directives) >= 20, f"only {len(directives)} ::: directives found"
    for _page, ident, _ in directives:
        _resolve(ident)  # raises with the identifier when it does not exist


def test_reference_pages_are_in_nav() -> None:
    import yaml

    class _Loader(yaml.SafeLoader):
        pass

    # mkdocs.yml may use !!python/name tags (e.g. in extensions); ignore them here.
    _Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda *a: None)
    config = yaml.load((REFERENCE.parents[1] / "mkdocs.yml").read_text(), Loader=_Loader)

    def walk(node: Any) -> list[str]:
        if isinstance(node, str):
            return [node]
        if isinstance(node, list):
            return [p for item in node for p in walk(item)]
        if isinstance(node, dict):
            return [p for v in node.values() for p in walk(v)]
        return []

    in_nav = set(walk(config["nav"]))
    pages = {f"reference/{p.name}" for p in REFERENCE.glob("*.md")}
    assert pages <= in_nav, f"reference pages missing from the nav: {sorted(pages - in_nav)}"

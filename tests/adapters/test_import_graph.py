"""The packages' module-level imports form no circle, and data flows one way.

Imports inside functions (deferred on purpose: torch-only paths, heavy optional
dependencies) are not edges; ``if TYPE_CHECKING:`` blocks are not either.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _top_level_imports(path: Path, package: str) -> set[str]:
    """Modules of ``package`` that ``path`` imports at module level."""
    tree = ast.parse(path.read_text())
    me = _module_name(path)
    base = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and not _is_type_checking(node):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
            elif isinstance(node, ast.Import):
                out.update(a.name for a in node.names if a.name.split(".")[0] == package)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = base.split(".")
                    anchor = anchor[: len(anchor) - node.level + 1]
                    mod = ".".join(anchor + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                if mod.split(".")[0] != package:
                    continue
                out.add(mod)
                for a in node.names:  # `from . import x` may name a submodule
                    if (ROOT / Path(*f"{mod}.{a.name}".split("."))).with_suffix(".py").exists():
                        out.add(f"{mod}.{a.name}")

    visit(tree.body)
    out.discard(me)
    return out


def _graph(package: str) -> dict[str, set[str]]:
    files = sorted((ROOT / package).rglob("*.py"))
    return {_module_name(f): _top_level_imports(f, package) for f in files}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state:
                found = dfs(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = dfs(node)
            if found:
                return found
    return None


@pytest.mark.parametrize("package", ["cptensor", "cptensor_adapters"])
def test_no_import_circle(package: str) -> None:
    graph = _graph(package)
    # a package's __init__ re-exporting its modules is not an edge back into it
    for name in graph:
        graph[name] = {m for m in graph[name] if not (name.startswith(m + ".") or m == name)}
    cycle = _cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_data_flows_one_way() -> None:
    """The geometry never imports what is built on it: grid imports neither the wrapper
    modules, the layouts nor the adapters; the core imports nothing of the adapters."""
    adapters = _graph("cptensor_adapters")
    assert not adapters["cptensor_adapters.grid"] & {
        "cptensor_adapters.modules",
        "cptensor_adapters.layout",
        "cptensor_adapters.model",
        "cptensor_adapters.config",
    }
    assert "cptensor_adapters.modules" not in adapters["cptensor_adapters.layout"]
    for f in sorted((ROOT / "cptensor").rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):  # function-level imports too
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not any(n.split(".")[0] == "cptensor_adapters" for n in names), f


def test_no_private_name_crosses_a_module_of_the_adapters() -> None:
    """A name another module needs is public in the module that owns it."""
    crossing = []
    for f in sorted((ROOT / "cptensor_adapters").rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and (
                node.level or (node.module or "").startswith("cptensor")
            ):
                crossing += [
                    f"{f.relative_to(ROOT)}: {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    assert not crossing, crossing

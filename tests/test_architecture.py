"""The package structure: no import cycles among apcsim's packages.

A unit is a subpackage of apcsim (`apcsim.core`, `apcsim.outputs`, ...) or a top-level module
(`apcsim.loop`, `apcsim.run`, ...); a package's `__main__` (its command line, which may use
`apcsim.cli`'s plumbing) is a unit of its own, above its package. Every import counts, a function-level (lazy) one too: laziness
hides a cycle from the interpreter, not from a reader. Imports under `if TYPE_CHECKING:` are left
out: they never run. `policies` and `engine` are units of their own, so apcsim's layering towards
them is checked too (apcsim may use policies; nothing in apcsim imports the engine).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("apcsim", "policies", "engine")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _unit(module: str) -> str | None:
    """The unit a dotted module belongs to, or None outside the project."""
    parts = module.split(".")
    if parts[0] not in PACKAGES:
        return None
    if parts[-1] == "__main__" and len(parts) > 2:
        return module
    if parts[0] != "apcsim" or len(parts) == 1:
        return parts[0]
    head = ROOT / "apcsim" / parts[1]
    return f"apcsim.{parts[1]}" if head.is_dir() or (head.with_suffix(".py")).is_file() else "apcsim"


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
        (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module: str, is_package: bool):
    """Dotted names of what a module imports (absolute; relative ones resolved), at run time."""
    stack = [tree]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                stack += child.orelse
                continue
            if isinstance(child, ast.Import):
                yield from (a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = module.split(".")
                    base = base[: len(base) - child.level + (1 if is_package else 0)]
                    name = ".".join(base + ([child.module] if child.module else []))
                else:
                    name = child.module or ""
                yield name
                yield from (f"{name}.{a.name}" for a in child.names)  # `from pkg import module`
            stack.append(child)


def unit_graph() -> dict[str, dict[str, str]]:
    """unit -> {imported unit: one importing module, for the message}."""
    graph: dict[str, dict[str, str]] = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            module = _module_name(path)
            src = _unit(module)
            graph.setdefault(src, {})
            tree = ast.parse(path.read_text(), str(path))
            for name in _imports(tree, module, path.name == "__init__.py"):
                dst = _unit(name)
                if dst is not None and dst != src:
                    graph[src].setdefault(dst, module)
    return graph


def find_cycle(graph: dict[str, dict[str, str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(u: str) -> list[str] | None:
        state[u] = 1
        path.append(u)
        for v in sorted(graph.get(u, {})):
            if state.get(v) == 1:
                return path[path.index(v):] + [v]
            if v not in state and (c := visit(v)):
                return c
        state[u] = 2
        path.pop()
        return None

    for u in sorted(graph):
        if u not in state and (c := visit(u)):
            return c
    return None


def test_no_import_cycles_among_packages():
    graph = unit_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + ", ".join(
        f"{a} imports {b} (in {graph[a][b]})" for a, b in zip(cycle, cycle[1:]))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b": "a.x"}, "b": {"c": "b.y"}, "c": {"a": "c.z"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": "a.x"}, "b": {}}) is None


def test_apcsim_never_imports_the_engine_and_the_pipeline_never_imports_the_cli():
    graph = unit_graph()
    assert not [u for u in graph if u.startswith("apcsim") and "engine" in graph[u]]
    pipeline = ("apcsim.core", "apcsim.sim", "apcsim.outputs", "apcsim.loop", "apcsim.run", "apcsim.workloads",
                "apcsim.calibration", "apcsim.config", "policies")
    assert not [(u, graph[u]["apcsim.cli"]) for u in pipeline if "apcsim.cli" in graph.get(u, {})]

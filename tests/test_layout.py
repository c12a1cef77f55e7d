"""The package's import graph, read from the source: no import loop, and no import upward (the library
never imports the application verbs in commands/ or the command line; no module imports the package that
holds it)."""

import ast
from pathlib import Path

import diffprior

SRC = Path(diffprior.__file__).parent
TOP = {"diffprior", "diffprior.__main__", "diffprior.cli"}  # the public API and the command line


def module_name(path: Path) -> str:
    parts = ("diffprior", *path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the diffprior modules it imports (at the top or inside functions)."""
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name.split(".")[0] == "diffprior"}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[:len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                if base.split(".")[0] != "diffprior":
                    continue
                for a in node.names:  # `from pkg import module` imports the module, else a name of pkg
                    edges.add(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base)
        graph[name] = {e for e in edges if e in modules and e != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import loops: strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def upward(graph: dict[str, set[str]]) -> list[str]:
    def layer(m: str) -> int:
        return 2 if m in TOP else 1 if m.startswith("diffprior.commands") else 0
    bad = []
    for a, edges in graph.items():
        for b in edges:
            if layer(b) > layer(a) or a.startswith(b + "."):  # a higher layer, or the package holding a
                bad.append(f"{a} -> {b}")
    return sorted(bad)


def test_no_import_loop():
    assert cycles(import_graph()) == []


def test_no_upward_import():
    assert upward(import_graph()) == []


def test_the_checks_see_loops_and_upward_imports():
    graph = {"diffprior.a": {"diffprior.b"}, "diffprior.b": {"diffprior.a"}, "diffprior.c": {"diffprior.cli"},
             "diffprior.cli": set(), "diffprior.x.y": {"diffprior.x"}, "diffprior.x": set()}
    assert cycles(graph) == [["diffprior.a", "diffprior.b"]]
    assert upward(graph) == ["diffprior.c -> diffprior.cli", "diffprior.x.y -> diffprior.x"]
    assert len(import_graph()) > 40 and "diffprior.solvers.spec" in import_graph()["diffprior.solvers.dps"]



def test_the_package_shows_only_its_api():  # what `dir` and a notebook's completion list: no stray imports
    extra = {name for name in dir(diffprior) if not name.startswith("_") and name not in diffprior.__all__}
    assert all(getattr(diffprior, name).__name__ == f"diffprior.{name}" for name in extra), extra  # submodules

"""The package's shape (docs/architecture.md, "Layers"): no import cycle between modules (imports inside
functions count), a device runtime that stands on nothing above it, and files and functions short
enough to read.

The import graph is read with `ast`, not by importing: `from edgekd.x import y` is an edge to
`edgekd.x.y` when that is a module (a submodule import), else to `edgekd.x`; relative imports are
resolved against the importing module; a module that calls `importlib.import_module` has an edge to
every edgekd module whose name it spells out. An `import` of a package also runs its `__init__`, so
an edge to `edgekd.x.y` is an edge to `edgekd.x` too unless the importer lives inside `edgekd.x`.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "edgekd"
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80
SHORT_FUNCTION_PACKAGES = ("train", "export", "bench")
RUNTIME_FORBIDDEN = ("edgekd.export", "edgekd.bench", "edgekd.train", "edgekd.cli", "torch")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def imported_names(name: str, tree: ast.AST) -> Iterator[tuple[str, int]]:
    """Every module name an edgekd module imports (anywhere in the file), with its line."""
    package = name if is_package(name) else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from .x import y / from .. import z
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield (sub if sub in MODULES else target), node.lineno
    # a module that imports by name at run time (importlib.import_module) imports every edgekd module
    # whose name it spells out: a registry of module names is an import all the same
    calls = {n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", "")
             for n in ast.walk(tree) if isinstance(n, ast.Call)}
    if calls & {"import_module", "__import__"}:
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in MODULES:
                yield node.value, node.lineno


def edgekd_target(imported: str) -> str | None:
    """The edgekd module an import name lands on (the longest known prefix), or None outside edgekd."""
    parts = imported.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in MODULES:
            return candidate
        parts.pop()
    return None


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported edgekd module: first line}, parents' __init__ included (they run on import)."""
    graph: dict[str, dict[str, int]] = {}
    for name, path in MODULES.items():
        edges: dict[str, int] = {}
        for imported, line in imported_names(name, ast.parse(path.read_text(), str(path))):
            target = edgekd_target(imported)
            if target is None:
                continue
            # importing edgekd.a.b runs edgekd/__init__ and edgekd/a/__init__ first: those are edges as well,
            # except for the packages the importer itself lives in (already imported before it runs)
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                node = ".".join(parts[:i])
                if node != name and not (name + ".").startswith(node + ".") and node != "edgekd":
                    edges.setdefault(node, line)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def describe_cycle(graph: dict[str, dict[str, int]], comp: list[str]) -> str:
    """The shortest cycle through the component's first module, as `a -(line)-> b -(line)-> ... -> a`."""
    members, start = set(comp), comp[0]
    parent: dict[str, str] = {}
    queue = [start]
    while queue and start not in parent:  # breadth-first, back to `start`
        v = queue.pop(0)
        for w in sorted(graph[v]):
            if w in members and w not in parent:
                parent[w] = v
                queue.append(w)
    path = [start]
    while path[-1] != start or len(path) == 1:
        path.append(parent[path[-1]])
    path.reverse()  # parent links run backwards
    return "".join(f"{a} -({graph[a][b]})-> " for a, b in zip(path, path[1:])) + path[-1]


def test_graph_reader_resolves_submodules_relative_and_function_imports():
    """The reader itself: a `from package import submodule` and an import inside a function are edges."""
    tree = ast.parse("from edgekd import errors\n"
                     "def f():\n    from edgekd.runtime import manifest\n    import edgekd.names\n"
                     "from . import deps\n")
    got = {t for t, _ in imported_names("edgekd.io", tree)}
    assert {"edgekd.errors", "edgekd.runtime.manifest", "edgekd.names", "edgekd.deps"} <= got
    dynamic = ast.parse("import importlib\nMODS = ('edgekd.config',)\n"
                        "def f(m):\n    return importlib.import_module(m)\n")
    assert "edgekd.config" in {t for t, _ in imported_names("edgekd.io", dynamic)}
    graph = {"a": {"b": 1, "d": 5}, "b": {"c": 2}, "c": {"a": 3}, "d": {"e": 6}, "e": {"d": 7, "c": 8}}
    assert find_cycles(graph) == [["a", "b", "c", "d", "e"]]
    assert describe_cycle(graph, ["a", "b", "c", "d", "e"]) == "a -(1)-> b -(2)-> c -(3)-> a"


def test_no_import_cycles():
    graph = import_graph()
    cycles = find_cycles(graph)
    assert not cycles, "import cycles (module -(line)-> module):\n" + "\n".join(
        describe_cycle(graph, c) + f"   [component: {', '.join(c)}]" for c in cycles)


def test_runtime_stands_on_nothing_above_it():
    """edgekd/runtime (the device copy) imports neither export, bench, train nor torch, even lazily."""
    bad = []
    for name, path in MODULES.items():
        if not name.startswith("edgekd.runtime"):
            continue
        for imported, line in imported_names(name, ast.parse(path.read_text(), str(path))):
            if any(imported == f or imported.startswith(f + ".") for f in RUNTIME_FORBIDDEN):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {imported}")
    assert not bad, "\n".join(bad)


def test_no_file_over_500_lines():
    long = {str(p.relative_to(ROOT)): n for p in MODULES.values()
            if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES}
    assert not long, f"files over {MAX_FILE_LINES} lines: {long}"


def test_no_function_over_80_lines_in_train_export_bench():
    long = {}
    for name, path in MODULES.items():
        if name.split(".")[1:2] not in [[p] for p in SHORT_FUNCTION_PACKAGES]:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"] = n
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"

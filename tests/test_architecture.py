"""The import graph of the project's own packages, from their source: the live package stands alone, and no
modules import each other in a circle.

Every import statement counts, at module level or inside a function (a lazy import is still a dependency):
``import x``, ``from x import y`` (``y`` a submodule counts as importing it), relative imports resolved
against the importing module's package, and ``importlib.import_module("literal")`` / ``__import__("literal")``.
``realtime/__init__.py`` exports names lazily from a table (``_EXPORTS``: name -> module); each module of
that table is an edge too. Any other dynamic import (a name computed at run time) is refused, since the
walker could not see where it goes.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("realtime", "offline")

@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int

    def where(self) -> str:
        return f"{self.source.replace('.', '/')}.py:{self.line}"


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules_under(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """Every module of ``packages`` (folders of ``root``): dotted name -> file."""
    return {_module_name(p, root): p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))}


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _resolve(name: str, level: int, package: str) -> str:
    """``from <level dots><name> import ...`` inside ``package`` -> the absolute module name."""
    if level == 0:
        return name
    base = package.split(".")
    if level > len(base):
        raise ValueError(f"relative import beyond the top-level package: {'.' * level}{name} in {package}")
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _literal_import_call(node: ast.Call) -> tuple[bool, str | None, bool]:
    """(is an import call, its literal module or None, relative allowed)."""
    f = node.func
    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
    if name not in ("import_module", "__import__"):
        return False, None, False
    if isinstance(f, ast.Attribute) and not (isinstance(f.value, ast.Name) and f.value.id == "importlib"):
        return False, None, False
    arg = node.args[0] if node.args else None
    literal = arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else None
    return True, literal, name == "import_module"


def _exports_table(tree: ast.Module) -> dict[str, str] | None:
    """The ``_EXPORTS = {"name": "module", ...}`` table of a lazily exporting package, if there is one."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets):
            return ast.literal_eval(node.value)
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == "_EXPORTS":
            return ast.literal_eval(node.value)
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path], root: Path = REPO) -> tuple[list[Edge], list[str]]:
    """Every import of ``module`` (absolute names), and the dynamic imports the walker cannot follow."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _package_of(module, path)
    edges: list[Edge] = []
    unresolved: list[str] = []
    table = _exports_table(tree)
    exports_node = None
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            edges += [Edge(module, a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            # `from pkg import submodule` imports the submodule; the package itself counts only for names it
            # defines (as a parent it is loaded anyway)
            target = _resolve(node.module or "", node.level, package)
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules]
            if len(subs) < len(node.names):
                edges.append(Edge(module, target, node.lineno))
            edges += [Edge(module, s, node.lineno) for s in subs]
        elif isinstance(node, ast.Call):
            is_import, literal, relative_ok = _literal_import_call(node)
            if not is_import:
                continue
            if literal is not None:
                level = len(literal) - len(literal.lstrip(".")) if relative_ok else 0
                edges.append(Edge(module, _resolve(literal.lstrip("."), level, package), node.lineno))
            elif table is not None and exports_node is None:
                exports_node = node  # the lazy loader of the _EXPORTS table: its edges are added below
                edges += [Edge(module, _resolve(m, 1, package), node.lineno) for m in sorted(set(table.values()))]
            else:
                unresolved.append(f"{path.relative_to(root)}:{node.lineno}: {ast.unparse(node)}")
    return edges, unresolved


def import_graph(root: Path = REPO, packages=PACKAGES) -> tuple[dict[str, list[Edge]], list[str]]:
    """module -> its imports (every target, project or not); and every dynamic import that could not be read."""
    modules = modules_under(root, packages)
    graph, unresolved = {}, []
    for name, path in modules.items():
        graph[name], bad = imports_of(name, path, modules, root)
        unresolved += bad
    return graph, unresolved


def _internal(graph: dict[str, list[Edge]]) -> dict[str, list[Edge]]:
    """Only the edges between project modules (an import of a package's module also names that module)."""
    return {m: [e for e in edges if e.target in graph and e.target != m] for m, edges in graph.items()}


def find_cycles(graph: dict[str, list[Edge]], ignore: set[tuple[str, str]] = frozenset()) -> list[list[Edge]]:
    """One circle (as its edges) per strongly connected group of modules (Tarjan)."""
    adj = {m: [e for e in edges if (e.source, e.target) not in ignore] for m, edges in _internal(graph).items()}
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for e in adj[v]:
            if e.target not in index:
                visit(e.target)
                low[v] = min(low[v], low[e.target])
            elif e.target in on_stack:
                low[v] = min(low[v], index[e.target])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for m in sorted(adj):
        if m not in index:
            visit(m)
    return [_cycle_in(sorted(g)[0], g, adj) for g in groups]


def _cycle_in(start: str, group: set[str], adj: dict[str, list[Edge]]) -> list[Edge]:
    """A shortest path from ``start`` back to itself inside ``group`` (breadth-first)."""
    prev: dict[str, Edge] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for e in adj[v]:
                if e.target not in group:
                    continue
                if e.target == start:
                    path = [e]
                    while path[0].source != start:
                        path.insert(0, prev[path[0].source])
                    return path
                if e.target not in prev:
                    prev[e.target] = e
                    nxt.append(e.target)
        frontier = nxt
    raise AssertionError(f"no circle through {start}")


def _chain(graph: dict[str, list[Edge]], start: str, bad: set[str]) -> list[Edge] | None:
    """A path of realtime imports from ``start`` to an import of offline, or None."""
    internal = _internal(graph)
    prev: dict[str, Edge | None] = {start: None}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for e in graph[v]:
                if e.target in bad:
                    path = [e]
                    while prev[path[0].source] is not None:
                        path.insert(0, prev[path[0].source])
                    return path
            for e in internal[v]:
                if e.target.startswith("realtime") and e.target not in prev:
                    prev[e.target] = e
                    nxt.append(e.target)
        frontier = nxt
    return None


def _show(path: list[Edge]) -> str:
    return " -> ".join([path[0].source] + [f"{e.target} ({e.where()})" for e in path])


def _is_offline(name: str) -> bool:
    return name == "offline" or name.startswith("offline.")


# --- the rules ------------------------------------------------------------------------------------------

def test_every_dynamic_import_is_visible_to_the_walker():
    _, unresolved = import_graph()
    assert not unresolved, "dynamic imports the import-graph test cannot follow:\n  " + "\n  ".join(unresolved)


def test_the_live_package_imports_nothing_from_offline():
    graph, _ = import_graph()
    bad = {e.target for edges in graph.values() for e in edges if _is_offline(e.target)}
    chains = [_chain(graph, m, bad) for m in sorted(graph) if m.split(".")[0] == "realtime"]
    found = [_show(c) for c in chains if c]
    assert not found, "realtime/ must not import offline/, at any depth:\n  " + "\n  ".join(found)


def test_no_import_circles():
    graph, _ = import_graph()
    cycles = find_cycles(graph)
    assert not cycles, "modules that import each other in a circle:\n  " + "\n  ".join(map(_show, cycles))


# --- the walker itself, on small made-up packages -----------------------------------------------------------

def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def test_walker_sees_lazy_relative_and_dynamic_imports(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "_EXPORTS = {'A': 'a', 'B': 'b'}\n"
                           "def __getattr__(n):\n    import importlib\n"
                           "    return importlib.import_module(f'.{_EXPORTS[n]}', __name__)\n",
        "pkg/a.py": "def f():\n    from . import b\n    from .sub.c import x\n",
        "pkg/b.py": "import importlib\nm = importlib.import_module('pkg.sub.c')\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/c.py": "from .. import a\nfrom ..b import thing\nimport offline.train\n",
    })
    g, unresolved = import_graph(tmp_path, ("pkg",))
    assert unresolved == []
    targets = {m: {e.target for e in edges} for m, edges in g.items()}
    assert targets["pkg"] == {"importlib", "pkg.a", "pkg.b"}
    assert targets["pkg.a"] == {"pkg.b", "pkg.sub.c"}
    assert targets["pkg.b"] == {"importlib", "pkg.sub.c"}
    assert targets["pkg.sub.c"] == {"pkg.a", "pkg.b", "offline.train"}
    cycles = find_cycles(g)
    assert len(cycles) == 1 and {e.source for e in cycles[0]} <= {"pkg.a", "pkg.b", "pkg.sub.c"}
    assert cycles[0][0].source == cycles[0][-1].target  # a closed path
    assert find_cycles(g, ignore={("pkg.a", "pkg.sub.c"), ("pkg.b", "pkg.sub.c")}) == []


def test_walker_refuses_a_computed_import(tmp_path):
    _write(tmp_path, {"pkg/__init__.py": "", "pkg/m.py": "import importlib\nname = 'x'\nimportlib.import_module(name)\n"})
    _, unresolved = import_graph(tmp_path, ("pkg",))
    assert unresolved == ["pkg/m.py:3: importlib.import_module(name)"]


def test_every_package_is_in_the_install():
    """`pip install .` (not editable) installs only the packages pyproject.toml lists: each folder of the
    project's packages that holds Python modules must be listed (realtime.server once was not, and a
    non-editable install could not import the CLI)."""
    import pytest

    tomllib = pytest.importorskip("tomllib")
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {_module_name(p.parent / "__init__.py", REPO) for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    assert found <= listed, f"packages missing from pyproject.toml [tool.setuptools] packages: {sorted(found - listed)}"

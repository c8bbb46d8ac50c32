"""No import cycle in the package, counting every import: module level, inside functions and
under `if TYPE_CHECKING:` (a type-only cycle still ties two layers together, and a lazy one
is a cycle waiting for someone to move the import up).

The graph: an AST walk over every module of pipeline/, one edge per Import/ImportFrom to a
module of the package (relative imports resolved; `from pkg import name` is an edge to pkg
and, when `name` is a submodule, to pkg.name), plus the imports the AST cannot see (the
registry's walk of the built-in models: test_dvc_deps.DYNAMIC). Its strongly connected
components (Tarjan) must all be single modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

from test_dvc_deps import DYNAMIC

ROOT = Path(__file__).resolve().parents[1]


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Every module of `package` under `root`: dotted name -> file (a package is its
    __init__.py)."""
    names = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of `known` that module `name` (at `path`) imports, at any level."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: `.` is this module's package, `..` its parent
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return (found & known) - {name}


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    modules = module_names(root, package)
    return {name: imports_of(name, path, set(modules)) for name, path in modules.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of `graph` with more than one node (iterative:
    a deep package must not hit Python's recursion limit), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        work = [(start, iter(sorted(graph[start])))]
        while work:
            node, successors = work[-1]
            for nxt in successors:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:  # every successor done: `node` closes its component if it is the root
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def describe(component: list[str], graph: dict[str, set[str]]) -> str:
    inside = set(component)
    edges = [f"{a} -> {b}" for a in component for b in sorted(graph[a] & inside)]
    return f"{component}: {'; '.join(edges)}"


def test_the_package_has_no_import_cycle_at_any_level():
    graph = import_graph(ROOT, "pipeline")
    for importer, package in DYNAMIC.items():
        graph[importer] |= {n for n in graph if n.startswith(package + ".")}
    assert len(graph) > 100  # the walk saw the package
    cycles = strongly_connected(graph)
    assert not cycles, "import cycles:\n" + "\n".join(describe(c, graph) for c in cycles)


def test_the_config_schema_sits_below_the_plugins_and_validation_above_them():
    """config.study (the study's shape) imports no plugin; the plugins import config.study,
    never the pipeline.config package (whose `validate` hands them the registry)."""
    graph = import_graph(ROOT, "pipeline")
    assert not {
        m for m in graph["pipeline.config.study"] if m.startswith("pipeline.models.plugins")
    }
    plugins = [n for n in graph if n.startswith("pipeline.models.plugins")]
    assert not [f"{n} -> pipeline.config" for n in plugins if "pipeline.config" in graph[n]]
    assert "pipeline.models.plugins.registry" in graph["pipeline.config.semantics"]
    assert not [m for m in graph["pipeline.config.semantics"] if m.startswith("pipeline.data")]


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_check_sees_type_only_lazy_and_relative_cycles(tmp_path):
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/low/__init__.py": "from pkg.low.schema import Shape\n",
            "pkg/low/schema.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from pkg.high import plugin\n"
            ),
            "pkg/high/__init__.py": "",
            "pkg/high/plugin.py": "def f():\n    from ..low import schema\n",
            "pkg/a.py": "from pkg import b\n",
            "pkg/b.py": "from . import c\n",
            "pkg/c.py": "import pkg.a\n",
            "pkg/leaf.py": "from pkg.a import thing\nimport os\n",
        },
    )
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.high.plugin"] == {"pkg.low", "pkg.low.schema"}  # `..low` resolved
    assert graph["pkg.b"] == {"pkg", "pkg.c"}
    assert sorted(strongly_connected(graph)) == [
        ["pkg.a", "pkg.b", "pkg.c"],
        ["pkg.high.plugin", "pkg.low", "pkg.low.schema"],  # through the package's __init__
    ]
    _write(tmp_path, {"pkg/low/schema.py": "", "pkg/c.py": ""})
    assert strongly_connected(import_graph(tmp_path, "pkg")) == []

"""The layering of docs/ARCHITECTURE.md holds: no import cycles, and the pure core imports no
upper layer (module-level imports; function-level ones are deliberate lazy imports)."""

from __future__ import annotations

from pathlib import Path

from test_dvc_deps import ROOT, _imports, module_file

PACKAGE = ROOT / "pipeline"


def _module_names() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _module_level_graph() -> dict[str, set[str]]:
    return {n: _imports(n, module_file(n), shallow=True) - {n} for n in _module_names()}


def test_no_import_cycles_at_module_level():
    graph = _module_level_graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_the_pure_core_imports_no_upper_layer():
    allowed = {
        "pipeline.models": ("pipeline.models", "pipeline.errors", "pipeline.schema", "pipeline.io"),
        "pipeline.data": (
            "pipeline.data",
            "pipeline.config",
            "pipeline.errors",
            "pipeline.schema",
            "pipeline.io",
        ),
    }
    bad = []
    for name, imports in _module_level_graph().items():
        for layer, ok in allowed.items():
            if name.startswith(layer + ".") or name == layer:
                bad += [
                    f"{name} -> {m}" for m in imports if not m.startswith(ok) and m != "pipeline"
                ]
    assert not bad, bad


DASK_LAYER = PACKAGE / "runtime" / "execute" / "dask"  # the Dask layer (principle 5)


def test_only_the_dask_layer_imports_dask_distributed():
    """dask.distributed is imported by runtime/execute/dask/ alone, and there only by the
    modules that start a cluster or stream tasks to it (its settings and task watch need none:
    they read and test without it)."""

    def imports_distributed(path: Path) -> bool:
        return any(
            line.strip().startswith(
                (
                    "import distributed",
                    "from distributed",
                    "from dask.distributed",
                    "import dask.distributed",
                )
            )
            for line in path.read_text().splitlines()
        )

    importers = [p for p in sorted(PACKAGE.rglob("*.py")) if imports_distributed(p)]
    outside = [str(p.relative_to(ROOT)) for p in importers if DASK_LAYER not in p.parents]
    # check.py only asks whether the dashboard's bokeh import works; it starts nothing
    assert outside == [str(Path("pipeline/runtime/ui/check.py"))]
    assert sorted(p.name for p in importers if DASK_LAYER in p.parents) == [
        "cluster.py",
        "task_stream.py",
    ]


# pipeline.models: public estimators (top of models/), private solvers, the plugin layer
PLUGIN_LAYER = "pipeline.models.plugins"  # the only part that knows the study's config
SOLVERS = "pipeline.models.solvers"
ESTIMATORS = ("pipeline.models.estimators", "pipeline.models.estimator_nn")


def _all_imports(name: str) -> set[str]:
    """Every pipeline.* import of `name`, at any level (function-level, TYPE_CHECKING too)."""
    return _imports(name, module_file(name)) - {name}


def test_estimators_and_solvers_know_nothing_of_the_config_or_the_plugins():
    """Public estimators and private solvers take plain parameters (issue 20, item 4)."""
    bad = []
    for name in _module_names():
        if name.startswith("pipeline.models.") and not name.startswith(PLUGIN_LAYER):
            bad += [
                f"{name} -> {m}"
                for m in _all_imports(name)
                if m.startswith(("pipeline.config", PLUGIN_LAYER))
            ]
    assert not bad, bad


def test_models_folders_show_public_private_and_plugins():
    """models/ holds the public estimators at its top, the private solvers in solvers/ and the
    plugin layer in plugins/; the solvers import nothing of the other two (the estimators wrap
    the solvers, the plugins drive them), and the reference loop is test code."""
    top = sorted(p.name for p in (PACKAGE / "models").iterdir() if p.name != "__pycache__")
    assert top == ["__init__.py", "estimator_nn.py", "estimators.py", "plugins", "solvers"]
    bad = [
        f"{name} -> {m}"
        for name in _module_names()
        if name.startswith(SOLVERS + ".")
        for m in _all_imports(name)
        if m.startswith("pipeline.models") and not m.startswith(SOLVERS)
    ]
    assert not bad, bad


def test_evaluation_imports_nothing_of_the_runtime():
    """Evaluation is computed from tables and files; the runtime's own records (timings, the
    progress store) are read by the entry points and passed in (issue 20, item 4)."""
    bad = [
        f"{name} -> {m}"
        for name in _module_names()
        if name.startswith("pipeline.evaluation.")
        for m in _all_imports(name)
        if m.startswith(("pipeline.runtime", "pipeline.stages", "pipeline.runner"))
    ]
    assert not bad, bad


def test_only_the_public_estimators_load_scikit_learn():
    """The runtime and its workers import the kernels, never the estimator modules (whose
    scikit-learn import costs seconds per process)."""
    importers = [n for n in _module_names() if set(ESTIMATORS) & _all_imports(n)]
    assert set(importers) <= {"pipeline", *ESTIMATORS}, importers
    sklearn = [
        n
        for n in _module_names()
        if any(
            line.strip().startswith(("import sklearn", "from sklearn"))
            for line in module_file(n).read_text(encoding="utf-8").splitlines()
        )
    ]
    assert set(sklearn) <= {*ESTIMATORS, "pipeline.runtime.ui.check"}, sklearn


RUNTIME_ORDER = ("fits", "sizing", "store", "ui", "execute")  # docs/ARCHITECTURE.md


def test_runtime_folders_import_only_the_folders_before_them():
    """runtime/ has one folder per job; the fit plan knows nothing of sizing, storage,
    the user interface or execution, and so on down the list (issue 18, item 8)."""
    bad = []
    for name in _module_names():
        parts = name.split(".")
        if len(parts) < 4 or parts[1] != "runtime" or parts[2] not in RUNTIME_ORDER:
            continue
        allowed = RUNTIME_ORDER[: RUNTIME_ORDER.index(parts[2]) + 1]
        for m in _all_imports(name):
            target = m.split(".")
            if len(target) >= 3 and target[1] == "runtime" and target[2] not in allowed:
                bad.append(f"{name} -> {m}")
    assert not bad, bad
    flat = [p.name for p in (PACKAGE / "runtime").glob("*.py") if p.name != "__init__.py"]
    assert not flat, f"runtime modules outside a job folder: {flat}"

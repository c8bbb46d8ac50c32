"""dvc.yaml's code dependencies cannot go stale: each stage depends on its whole import closure.

The closure is computed from the source (an AST walk from the stage's entry modules through
every `pipeline.*` import, function-level imports included, plus each imported module's parent
packages); a file of it that no `deps` entry of the stage covers (the file itself or a folder
above it) fails the test, naming the stage and the file to add.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pipeline"
# `python -m pipeline stage NAME` runs pipeline.cli, which imports NAME's module in _cmd_stage
STAGE_MODULES = {
    "prepare": "pipeline.stages.prepare",
    "probe": "pipeline.stages.probe",
    "train": "pipeline.stages.train",
    "assemble": "pipeline.stages.study",
}
# cli's function-level imports belong to its other commands: only its module level counts
# (the stage's own module is the second entry, above); the package's public names load on
# attribute access (its __getattr__), which no stage makes
SHALLOW = {"pipeline.cli", "pipeline"}
# imports the AST cannot see: the registry walks pipeline.models.plugins.builtin with pkgutil
DYNAMIC = {"pipeline.models.plugins.registry": "pipeline.models.plugins.builtin"}
DOTTED = re.compile(r"^pipeline(\.\w+)*$")


def module_file(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(name: str, path: Path, shallow: bool = False) -> set[str]:
    """pipeline.* modules `name` imports (module level only when shallow or in SHALLOW)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if shallow or name in SHALLOW else list(ast.walk(tree))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                parts = name.split(".")[: len(name.split(".")) - node.level + int(is_package)]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # submodules
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and DOTTED.match(node.value)  # "-m pipeline.stages.probe", importlib strings
        ):
            found.add(node.value)
    if name in DYNAMIC:
        package = DYNAMIC[name]
        found |= {f"{package}.{p.stem}" for p in module_file(package).parent.glob("*.py")}
    return {m for m in found if m.split(".")[0] == "pipeline" and module_file(m) is not None}


def import_closure(entries: list[str]) -> set[Path]:
    """Every file of the package that importing `entries` can execute."""
    seen: set[str] = set()
    todo = list(entries)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run first
        path = module_file(name)
        assert path is not None, name
        todo += sorted(_imports(name, path) - seen)
    return {module_file(m).relative_to(ROOT) for m in seen}


def stage_entries(cmd: str) -> list[str]:
    words = cmd.split()
    module = words[words.index("-m") + 1]
    if module == "pipeline":  # `python -m pipeline stage NAME`
        return ["pipeline.__main__", STAGE_MODULES[words[words.index("stage") + 1]]]
    return [module]


def covered(path: Path, deps: list[str]) -> bool:
    return any(path == Path(d) or Path(d) in path.parents for d in deps)


def dvc_stages() -> dict[str, dict]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in stages.items()}


def test_every_stage_depends_on_its_whole_import_closure():
    missing = {}
    for name, stage in dvc_stages().items():
        closure = import_closure(stage_entries(stage["cmd"]))
        deps = [str(d) if isinstance(d, str) else next(iter(d)) for d in stage["deps"]]
        lacking = sorted(str(p) for p in closure if not covered(p, deps))
        if lacking:
            missing[name] = lacking
    assert not missing, f"dvc.yaml deps miss files their stage imports: {missing}"


def test_the_closure_walk_sees_function_level_relative_and_dynamic_imports():
    closure = import_closure(stage_entries("python -m pipeline stage train --model x"))
    for expected in (
        "pipeline/__init__.py",  # a parent package
        "pipeline/data/prepared.py",  # imported inside run_train
        "pipeline/models/plugins/builtin/lqr.py",  # found by the registry's package walk
        "pipeline/models/solvers/lqr.py",  # imported inside the lqr adapter's fit_batch
        "pipeline/runtime/execute/worker.py",
    ):
        assert Path(expected) in closure, expected
    # cli's other commands are not train's dependencies
    assert Path("pipeline/sweep.py") not in closure
    assert Path("pipeline/evaluation/results.py") not in closure
    assert not covered(Path("pipeline/sweep.py"), ["pipeline/stages", "pipeline/cli.py"])


def test_the_stage_table_matches_the_cli():
    from pipeline.cli_parser import command_parser

    stage = command_parser()._subparsers._group_actions[0].choices["stage"]
    (name_action,) = [a for a in stage._actions if a.dest == "name"]
    assert set(name_action.choices) == set(STAGE_MODULES)

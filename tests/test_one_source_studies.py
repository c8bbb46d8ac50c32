"""The studies of tests and benchmarks name the models they keep and build their settings from
the validated default config: a new built-in model (enabled by default) or a new option with a
default then needs no edit in them, and each test here fails when a copy appears or drifts
(docs/ARCHITECTURE.md, "How to change the product")."""

from __future__ import annotations

import ast
import importlib
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.config.compose import compose_config
from pipeline.models.plugins import registry

ROOT = Path(__file__).resolve().parents[1]
# override strings that switch a model off, as lists of them spell each out
SWITCHED_OFF = re.compile(r"models\.(\w+)\.enabled=false")


def _constant(node: ast.AST | None) -> object:
    return node.value if isinstance(node, ast.Constant) else None


def _switched_off(node: ast.AST, names: set[str]) -> list[str]:
    """The built-in models that one literal switches off by name: `models.<m>.enabled=false`
    strings among a list's, tuple's or call's items, `<m>: {"enabled": False}` entries of a
    dict, or the names a comprehension that sets `enabled` runs over."""
    if isinstance(node, ast.List | ast.Tuple | ast.Set | ast.Call):
        items = node.args if isinstance(node, ast.Call) else node.elts
        found = [SWITCHED_OFF.fullmatch(v) for i in items if isinstance(v := _constant(i), str)]
        return [m[1] for m in found if m is not None and m[1] in names]
    if isinstance(node, ast.Dict):
        return [
            key
            for k, v in zip(node.keys, node.values, strict=True)
            if (key := _constant(k)) in names
            and isinstance(v, ast.Dict)
            and any(
                _constant(a) == "enabled" and _constant(b) is False
                for a, b in zip(v.keys, v.values, strict=True)
            )
        ]
    if isinstance(node, ast.DictComp | ast.ListComp | ast.GeneratorExp) and "'enabled'" in (
        ast.dump(node)
    ):
        return [
            name
            for generator in node.generators
            if isinstance(generator.iter, ast.List | ast.Tuple)
            for name in map(_constant, generator.iter.elts)
            if name in names
        ]
    return []


def lists_of_models_switched_off(root: Path) -> Iterator[str]:
    """`path:line [models]` of each literal under `root`'s tests/ and benchmarks/ that switches
    off two or more built-in models by name: a study that names what it drops, which a new
    built-in model would join unseen (registry.only, study_overrides.only name what it keeps)."""
    names = set(registry.builtin_names())
    for path in sorted([*root.glob("tests/**/*.py"), *root.glob("benchmarks/*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            off = _switched_off(node, names)
            if len(off) >= 2:
                yield f"{path.relative_to(root)}:{node.lineno} {off}"


def synthetic_configs_built_by_hand(root: Path) -> Iterator[str]:
    """`path:line` of each `SyntheticConfig(...)` under `root`'s tests/ but builders.py's."""
    for path in sorted(root.glob("tests/**/*.py")):
        if path.name == "builders.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
                if name == "SyntheticConfig":
                    yield f"{path.relative_to(root)}:{node.lineno}"


def test_no_study_of_tests_or_benchmarks_lists_the_models_it_switches_off():
    found = list(lists_of_models_switched_off(ROOT))
    assert not found, f"name the models kept (registry.only, study_overrides.only): {found}"


def test_tests_build_synthetic_settings_from_the_default_config():
    found = list(synthetic_configs_built_by_hand(ROOT))
    assert not found, f"use builders.synthetic_settings(...), not SyntheticConfig(...): {found}"


@pytest.fixture
def benchmarks() -> Iterator[None]:
    """benchmarks/ on sys.path, as `python benchmarks/<script>.py` has it (the scripts import
    their siblings by name), and those modules forgotten afterwards."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        yield
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
        for name in ("study_overrides", "bench_scale"):
            sys.modules.pop(name, None)


@pytest.mark.usefixtures("benchmarks")
def test_the_benchmarks_know_every_built_in_model():
    # the benchmarks import no pipeline code, so study_overrides spells the built-in models out
    overrides = importlib.import_module("study_overrides")
    assert registry.builtin_names() == overrides.BUILTIN_MODELS, (
        "add the new built-in model to benchmarks/study_overrides.py's BUILTIN_MODELS"
    )
    for names in (("rw",), ("ar_qr",), ("ar_qr", "rw")):
        assert overrides.only(*names) == registry.only(*names)
    with pytest.raises(ValueError, match="not built-in models"):
        overrides.only("nope")


@pytest.mark.usefixtures("benchmarks")
def test_the_scale_studys_rw_runs_rw_alone():
    bench_scale = importlib.import_module("bench_scale")
    config = compose_config(bench_scale.RW_ONLY)
    assert config.models.enabled() == ("rw",)
    assert not config.evaluation.combo.enabled

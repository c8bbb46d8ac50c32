"""One source for each fact a newcomer changes: model names, defaults, column names, the metric
tables. Each test fails when a second copy drifts from the first (docs/ARCHITECTURE.md, "How
to change the product")."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import SMALL_STUDY, TINY_STUDY, make_config

from pipeline import schema
from pipeline.config import ConfigError
from pipeline.config.compose import compose_config
from pipeline.evaluation import metrics as evaluate
from pipeline.evaluation.report import REPORT_TABLES
from pipeline.models.plugins import registry

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pipeline"


def _code_constants(path: Path) -> list[tuple[int, object]]:
    """(line, value) of every constant in a module's code, docstrings left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        first = body[0] if isinstance(body, list) and body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
            docstrings.add(id(first.value))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and id(node) not in docstrings
    ]


def test_a_study_of_some_models_names_the_ones_it_keeps():
    # TINY_STUDY enables ar_qr and lqr by `registry.only`: a new built-in model (enabled by
    # default) stays out of it, where a list of the models switched off would let it in
    assert compose_config(list(TINY_STUDY)).models.enabled() == ("ar_qr", "lqr")
    assert make_config(SMALL_STUDY).models.enabled() == ("ar_qr", "rw", "climatology")
    assert registry.only_entries("rw", "ar_qr") == {
        n: {"enabled": n in ("rw", "ar_qr")} for n in registry.builtin_names()
    }
    overrides = registry.only("rw")
    assert overrides == [
        f"models.{n}.enabled={'true' if n == 'rw' else 'false'}" for n in registry.builtin_names()
    ]
    assert compose_config(overrides).models.enabled() == ("rw",)
    with pytest.raises(ConfigError, match="built-in models"):
        registry.only("nope")


def test_the_benchmarks_ar_qr_study_is_ar_qr_alone():
    # benchmarks/study_overrides.py spells the built-in names out (the scripts run the pipeline
    # in child processes only and import none of it): a new built-in model must be added to its
    # BUILTIN_MODELS (tests/test_one_source_studies.py)
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "study_overrides", ROOT / "benchmarks/study_overrides.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = compose_config(module.AR_QR_ONLY)
    assert config.models.enabled() == ("ar_qr",), "add the new model to BUILTIN_MODELS"
    assert not config.evaluation.combo.enabled


def test_the_evaluation_names_no_model_but_through_its_one_default():
    # evaluation.benchmark's library default is forecast_table.BENCHMARK, equal to conf/'s
    conf = yaml.safe_load((PACKAGE / "conf/evaluation/default.yaml").read_text())
    assert conf["benchmark"] == evaluate.BENCHMARK
    names = set(registry.builtin_names())
    found = {
        str(path.relative_to(ROOT)): lines
        for folder in ("evaluation", "stages")
        for path in sorted((PACKAGE / folder).glob("*.py"))
        if (lines := [n for n, v in _code_constants(path) if v in names])
    }
    allowed = {"pipeline/evaluation/forecast_table.py": [_line_of(PACKAGE / "evaluation/forecast_table.py", "BENCHMARK = ")]}  # fmt: skip
    assert found == allowed, f"a model's name outside the registry and BENCHMARK: {found}"


def _line_of(path: Path, text: str) -> int:
    return next(
        i for i, line in enumerate(path.read_text().splitlines(), 1) if line.startswith(text)
    )


def test_forecast_column_names_are_bound_only_in_schema():
    # `MODEL = "MODEL"` in a second module is a second source of the column's name
    columns = set(schema.FORECAST_COLUMNS)
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "schema.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name | ast.Tuple):
                values = node.value.elts if isinstance(node.value, ast.Tuple) else [node.value]
                targets = node.targets[0]
                names = targets.elts if isinstance(targets, ast.Tuple) else [targets]
                for target, value in zip(names, values, strict=False):
                    if (
                        isinstance(target, ast.Name)
                        and isinstance(value, ast.Constant)
                        and value.value in columns
                        and target.id == value.value
                    ):
                        found.setdefault(str(path.relative_to(ROOT)), []).append(node.lineno)
    assert not found, f"forecast column names bound outside pipeline/schema.py: {found}"
    assert tuple(getattr(schema, c) for c in schema.FORECAST_COLUMNS) == schema.FORECAST_COLUMNS


def test_metric_tables_are_listed_once():
    rng = np.random.default_rng(0)
    rows = [
        (model, country, h, q, origin)
        for model in ("ar_qr", "rw")
        for country in ("A", "B")
        for h in (1, 3)
        for q in (0.1, 0.5, 0.9)
        for origin in pd.date_range("2019-01-01", periods=6, freq="MS")
    ]
    frame = pd.DataFrame(rows, columns=["MODEL", "COUNTRY", "HORIZON", "QUANTILE", "WINDOW_END"])
    frame["TIME"] = frame["WINDOW_END"] + pd.to_timedelta(frame["HORIZON"] * 31, unit="D")
    frame["TIME"] = frame["TIME"].dt.to_period("M").dt.to_timestamp()
    frame["FORECAST"] = frame["QUANTILE"] + rng.normal(size=len(frame))
    frame["ACTUAL"] = rng.normal(size=len(frame)) + 0.5
    tables = evaluate.metric_tables(frame)
    assert tuple(tables) == evaluate.METRIC_TABLES
    assert set(REPORT_TABLES) <= set(evaluate.METRIC_TABLES)


def test_the_synthetic_columns_are_named_once():
    from pipeline.config.compose import compose_dict
    from pipeline.data.synthetic import FEATURE_COLUMNS, TARGET_COLUMN, generate_panel

    config = compose_config(["data.synthetic.n_countries=3"])
    frame = generate_panel(config.data.synthetic).frame
    assert list(frame.columns) == [schema.TIME, schema.COUNTRY, TARGET_COLUMN, *FEATURE_COLUMNS]
    conf_text = (PACKAGE / "conf/data/synthetic.yaml").read_text()
    assert yaml.safe_load(conf_text)["target"] == TARGET_COLUMN
    assert compose_dict([])["data"]["target"] == TARGET_COLUMN
    listed = re.search(r"^features:.*\(synthetic has: ([^)]*)\)", conf_text, re.M)
    assert listed is not None and tuple(listed[1].split(", ")) == FEATURE_COLUMNS


@pytest.mark.parametrize(("group", "base"), [("data", "synthetic"), ("calibration", "none")])
def test_a_group_option_repeats_no_default_of_its_base(group: str, base: str):
    # conf/<group>/<option>.yaml extends the group's base option (its defaults list): it sets
    # only what differs, or a key whose comment says something the base's does not
    from pipeline.config.commented import read_comments

    conf = PACKAGE / "conf" / group
    defaults = yaml.safe_load((conf / f"{base}.yaml").read_text())
    base_comments = read_comments(conf / f"{base}.yaml", (group,))
    for path in sorted(conf.glob("*.yaml")):
        if path.stem == base:
            continue
        option = yaml.safe_load(path.read_text())
        assert option.pop("defaults", None) == [base, "_self_"], path.name
        assert set(option) <= set(defaults), path.name
        comments = read_comments(path, (group,))
        repeated = [
            key
            for key, value in option.items()
            if value == defaults[key]
            and _eol(comments, (group, key)) == _eol(base_comments, (group, key))
        ]
        assert not repeated, f"{path.name} repeats {group}/{base}.yaml's {repeated}"


def _eol(comments: dict, key: tuple[str, ...]) -> str | None:
    comment = comments.get(key)
    return None if comment is None else comment.eol


def test_the_evaluations_library_defaults_are_conf_s():
    # the defaults of the evaluation's own signatures, for direct callers, equal a study's
    import dataclasses
    import inspect

    from pipeline.evaluation import mcs
    from pipeline.evaluation.calibration import CalibrationSettings
    from pipeline.evaluation.derived import DerivedSettings

    conf = compose_config([]).to_dict()
    evaluation = conf["evaluation"]
    for function in (mcs.mcs_table, mcs.model_confidence_set):
        parameters = inspect.signature(function).parameters
        assert parameters["size"].default == evaluation["mcs_size"], function.__name__
        assert parameters["reps"].default == evaluation["mcs_reps"], function.__name__
    assert DerivedSettings().combo_method == evaluation["combo"]["method"]
    conformal = yaml.safe_load((PACKAGE / "conf/calibration/none.yaml").read_text())
    for field in dataclasses.fields(CalibrationSettings):
        if field.default is not dataclasses.MISSING:
            assert field.default == conformal[field.name], field.name

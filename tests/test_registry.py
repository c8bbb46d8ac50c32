"""The model registry is the one source of model names and per-model facts."""

from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError
from pipeline.config.compose import compose_config, compose_dict
from pipeline.models.plugins import registry

ROOT = Path(__file__).resolve().parents[1]


def test_every_builtin_ships_its_conf_yaml_with_exactly_its_config_keys():
    names = registry.builtin_names()
    # table order: the one list of the built-in models' names in the tests (every other test
    # asks the registry), so adding a built-in model adds it here
    assert names == ("ar_qr", "lqr", "ensemble_nn", "rw", "climatology")
    assert sorted(
        p.name for p in (ROOT / "pipeline/conf/models").iterdir() if p.is_dir()
    ) == sorted(names)
    for name, config_type in registry.builtin_config_types().items():
        defaults = yaml.safe_load((ROOT / f"pipeline/conf/models/{name}/default.yaml").read_text())
        assert set(defaults) == {f.name for f in dataclasses.fields(config_type)}, name
        # no second source of a default
        assert all(
            f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            for f in dataclasses.fields(config_type)
        ), name


def test_conf_defaults_list_names_every_builtin():
    # Hydra composes only what config.yaml's defaults list names: a module without its line
    # would silently lack defaults, so this names the line to add
    defaults = yaml.safe_load((ROOT / "pipeline/conf/config.yaml").read_text())["defaults"]
    listed = [next(iter(d)).split("/", 1)[1] for d in defaults
              if isinstance(d, dict) and next(iter(d)).startswith("models/")]  # fmt: skip
    missing = [f"- models/{n}: default" for n in registry.builtin_names() if n not in listed]
    assert not missing, f"add to conf/config.yaml's defaults: {missing}"
    # the table order is each adapter's `rank`; the defaults list (hence params.yaml's models
    # and the DVC train stages) follows it
    order = list(registry.builtin_names())
    assert listed == order, f"list conf/config.yaml's models in table order (Adapter.rank): {order}"


def _name_lists(path: Path, names: set[str]) -> list[int]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.List | ast.Tuple | ast.Set | ast.Dict):
            items = node.keys if isinstance(node, ast.Dict) else node.elts
            consts = {i.value for i in items if isinstance(i, ast.Constant)}
            if len(consts & names) >= 2:
                lines.append(node.lineno)
    return lines


def test_no_other_list_of_model_names_in_the_package_or_dvc_yaml():
    names = set(registry.builtin_names())
    found = {
        str(p.relative_to(ROOT)): lines
        for p in sorted((ROOT / "pipeline").rglob("*.py"))
        if (lines := _name_lists(p, names))
    }
    assert not found, f"lists of model names outside the registry: {found}"
    # dvc.yaml iterates over params.yaml's models; prepare's one params key on ar_qr's p (the
    # lags its panel holds) is a dependency, not a list
    dvc = (ROOT / "dvc.yaml").read_text()
    code = "\n".join(line.split("#")[0] for line in dvc.splitlines())
    assert [n for n in names if n in code] == ["ar_qr"]
    assert {line.strip() for line in code.splitlines() if "ar_qr" in line} == {
        "- models.ar_qr.enabled",
        "- models.ar_qr.p",
    }


def test_models_config_reads_the_registry_and_user_entries():
    config = compose_config(["+models.mine._target_=mypkg.mod.Model", "+models.mine.depth=3"])
    assert config.models.names() == (*registry.builtin_names(), "mine")
    assert config.model_names == (*registry.builtin_names(), "mine")
    assert config.models.mine.params == {"depth": 3} and config.models.mine.version == 1
    assert config.models.ar_qr.p == compose_dict([])["models"]["ar_qr"]["p"]
    with pytest.raises(ConfigError, match=r"models\.mine\._target_"):
        compose_config(["+models.mine._target_=nodots"])
    with pytest.raises(ConfigError, match="model_names"):
        compose_config(["model_names=[ar_qr]"])


def test_a_range_is_declared_once_and_checked_on_config_and_kernel():
    from pipeline.models.estimators import ARQR
    from pipeline.models.solvers.parameters import P

    with pytest.raises(ConfigError) as on_config:
        compose_config(["models.ar_qr.p=0"])
    with pytest.raises(ConfigError) as on_kernel:
        ARQR(p=0, quantiles=(0.5,)).fit([[1.0]] * 5, [1.0] * 5)
    assert on_config.value.allowed == on_kernel.value.allowed == P.allowed
    assert on_config.value.key == "models.ar_qr.p" and on_kernel.value.key == "p"


def test_the_estimators_defaults_are_the_studys():
    """`pipeline.LQR()` and a study with conf/'s defaults fit the same model: the library's
    defaults (solvers/parameters.py, read by kernels and estimators) equal conf/models/."""
    from pipeline import ARQR, LQR, Climatology, EnsembleNN, RandomWalk
    from pipeline.models.solvers.ensemble_nn import fit_predict_ensemble_windows
    from pipeline.models.solvers.lqr import fit_predict_lqr_batch

    conf = compose_dict(["experiment=seed"])  # the models' default.yaml, unchanged
    study = {name: dict(conf["models"][name]) for name in ("ar_qr", "lqr", "ensemble_nn")}
    study["lqr"]["rff_bandwidth"] = {"auto": "median"}.get(study["lqr"]["rff_bandwidth"])
    library = {"ar_qr": ARQR(), "lqr": LQR(), "ensemble_nn": EnsembleNN()}
    for name, estimator in library.items():
        params = estimator.get_params()
        assert list(params["quantiles"]) == conf["data"]["quantiles"], name
        for key, value in study[name].items():
            if key in params:  # enabled, block_origins: the runner's, not the model's
                expected = list(value) if isinstance(value, list) else value
                got = list(params[key]) if isinstance(params[key], tuple) else params[key]
                assert got == expected, (name, key)
    for name in ("lqr", "ensemble_nn"):
        assert set(study[name]) - {"enabled", "block_origins"} <= set(library[name].get_params())
    for benchmark in (RandomWalk(), Climatology()):
        assert list(benchmark.quantiles) == conf["data"]["quantiles"]
    # the kernels' keyword defaults are the estimators' (the same objects)
    for kernel, estimator in (
        (fit_predict_lqr_batch, LQR()),
        (fit_predict_ensemble_windows, EnsembleNN()),
    ):
        defaults = {
            k: p.default
            for k, p in inspect.signature(kernel).parameters.items()
            if p.default is not inspect.Parameter.empty and k in estimator.get_params()
        }
        assert defaults and all(v is estimator.get_params()[k] for k, v in defaults.items())

"""docs/MODELS.md and docs/API.md's estimator paragraph, taken at their word.

A user's own model exactly as MODELS.md writes it (its YAML entry verbatim, `mypkg/mymodule.py`
at a project root, `python_path: .`), run by the `qpipe` command (which does not put the working
directory on sys.path), switched off without `+`, broken (the documented error line) and from
Python (`pipeline.backtest` in a script, docs/API.md). The batched contract, `dvc repro` and
sweeps of a user model: tests/test_user_models.py. Plus every public estimator through
`save`/`load`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT
from test_user_models import USER_MODULE

import pipeline

BIN = Path(sys.executable).parent
DOC = (ROOT / "docs/MODELS.md").read_text()

# MODELS.md's estimator contract (__init__(quantiles, **params), fit, predict, to_arrays,
# from_arrays(arrays, quantiles, **params)) as tests/test_user_models.py implements it, under
# the name and with the parameter (`alpha`) of MODELS.md's entry
MODULE = (
    USER_MODULE
    + """

class MyQuantileModel(Persistence):
    def __init__(self, quantiles, **params):
        super().__init__(quantiles, shrink=params["alpha"])


class MyWrongShape(MyQuantileModel, WrongShape):
    pass
"""
)

SCRIPT = """
import pipeline

result = pipeline.backtest(["experiment=mine", "runtime.output_dir=from_python"])
print(sorted(result.forecasts["MODEL"].unique()))
"""


def _doc_yaml_entry() -> str:
    """The `models:` block of MODELS.md's first YAML example, as written."""
    block = re.search(r"```yaml\n(.*?)```", DOC, re.S).group(1)
    assert block.startswith("models:\n  mymodel:\n"), block
    return block


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project root: conf/ with a small preset holding the doc's entry, mypkg/ beside it."""
    from pipeline.models.plugins.registry import builtin_names

    root = tmp_path_factory.mktemp("project")
    shutil.copytree(ROOT / "pipeline/conf", root / "conf")
    (root / "mypkg").mkdir()
    (root / "mypkg/__init__.py").write_text("")
    (root / "mypkg/mymodule.py").write_text(MODULE)
    off = "".join(f"  {n}: {{enabled: false}}\n" for n in builtin_names() if n != "rw")
    (root / "conf/experiment/mine.yaml").write_text(
        "# @package _global_\nname: mine\n"
        "data:\n  synthetic: {n_countries: 3}\n  horizons: [1, 3]\n"
        'rolling_window: {size: 36, start_date: "2022-07-01", end_date: "2022-12-01"}\n'
        "evaluation: {combo: {enabled: false}}\n"
        "runtime: {max_workers: 1, dashboard_port: 0, progress_bar: false}\n"
        + _doc_yaml_entry()
        + off
    )
    return root


def _env() -> dict[str, str]:
    # this checkout on the path, as an installed package would be; never the project root
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def qpipe(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "qpipe"), "run", "experiment=mine", *args], cwd=project,
                          env=_env(), capture_output=True, text=True, timeout=300)  # fmt: skip


def _forecasts(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path).sort_values(["COUNTRY", "HORIZON", "WINDOW_END", "QUANTILE"])


@pytest.mark.slow
def test_the_documented_user_model_runs_from_qpipe_and_from_python(project: Path) -> None:
    run = qpipe(project, "runtime.output_dir=cli")
    assert run.returncode == 0, run.stderr
    cli = _forecasts(project / "cli/train/mymodel.parquet")
    assert len(cli) == 3 * 6 * 2 * 3 and cli["FORECAST"].notna().all()

    # from Python, a script at the project root (docs/API.md)
    (project / "study.py").write_text(SCRIPT)
    run = subprocess.run([sys.executable, "study.py"], cwd=project, env=_env(),
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "['mymodel', 'rw']"
    python = _forecasts(project / "from_python/train/mymodel.parquet")
    np.testing.assert_array_equal(python["FORECAST"], cli["FORECAST"])


@pytest.mark.slow
def test_the_documented_switches_and_errors(project: Path) -> None:
    # off like a built-in, no `+`
    run = qpipe(project, "runtime.output_dir=off", "models.mymodel.enabled=false")
    assert run.returncode == 0, run.stderr
    assert not (project / "off/train/mymodel.parquet").exists()
    assert (project / "off/train/rw.parquet").exists()

    # MODELS.md's error line, to the letter (up to the log file's name)
    documented = re.search(r"^(error: config error at 'models\.mymodel'.*?) \(details: ", DOC, re.M)
    run = qpipe(project, "runtime.output_dir=broken",
                "models.mymodel._target_=mypkg.mymodule.MyWrongShape")  # fmt: skip
    assert run.returncode == 2
    (line,) = [x for x in run.stderr.splitlines() if x.startswith("error:")]
    assert line.startswith(documented.group(1) + " (details: "), line

    # without python_path the qpipe command does not find a module of the project
    run = qpipe(project, "runtime.output_dir=nopath", "models.mymodel.python_path=null")
    assert run.returncode == 2
    assert "No module named 'mypkg'" in run.stderr


def test_every_estimator_round_trips_through_its_file(tmp_path: Path) -> None:
    """docs/API.md: each estimator has to_arrays/from_arrays and save/load, and a loaded one
    predicts exactly what it did."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    y = 0.5 * X[:, 0] + rng.normal(size=60)
    small_nn = dict(units_per_layer=(4,), epochs=3, patience=2, parallel_models=2, device="cpu")
    estimators = [
        pipeline.ARQR(p=2),
        pipeline.LQR(rff_features=10, alphas=(1.0, 5.0)),
        pipeline.EnsembleNN(**small_nn),
        pipeline.RandomWalk(),
        pipeline.Climatology(),
    ]
    for i, model in enumerate(estimators):
        model.fit(X, y)
        path = tmp_path / f"{i}.{'pt' if isinstance(model, pipeline.EnsembleNN) else 'npz'}"
        model.save(path)
        again = type(model).load(path)
        np.testing.assert_array_equal(again.predict(X), model.predict(X))
        np.testing.assert_array_equal(
            type(model).from_arrays(model.to_arrays()).predict(X), model.predict(X)
        )

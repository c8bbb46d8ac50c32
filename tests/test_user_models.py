"""User models by configuration, from a module outside the package, through every path a
built-in takes: `python -m pipeline run`, a killed-and-resumed run (equal to an uninterrupted
one), `dvc repro` in a temporary git repo (its own train@<name> stage) and a two-job multirun.
Both contracts (estimator class, batched function) run end to end; the paths after `run` take
the batched function only (they see the same adapter arrays either way). Plus the exit-2 checks.
"""

from __future__ import annotations

import copy
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, SMALL_STUDY, make_config
from test_dvc_pipeline import BIN, Repo, dvc_env, make_clone, ran
from test_runtime import done_rows, reap, stop_tree, wait_for

from pipeline.config import ConfigError
from pipeline.config.compose import compose_config
from pipeline.models.solvers.common import crossing_rate
from pipeline.runtime.sizing.plan import ModelPlan, Plan
from pipeline.runtime.store.fit_cache import FitCache
from pipeline.stages.train import run_train

# y_t plus the empirical quantiles of the errors y - shrink * y_t: exact, seeded by nothing.
# UM_SLEEP (seconds per fit) slows it down without entering its fit key.
USER_MODULE = """
import os, time
import numpy as np


def _offsets(X, y, quantiles, shrink):
    time.sleep(float(os.environ.get("UM_SLEEP", "0")))
    return np.quantile(y - shrink * X[:, 0], quantiles)


class Persistence:
    def __init__(self, quantiles, shrink=1.0):
        self.quantiles, self.shrink = list(quantiles), float(shrink)

    def fit(self, X, y):
        self.offsets_ = _offsets(X, y, self.quantiles, self.shrink)
        return self

    def predict(self, X):
        return self.shrink * X[:, [0]] + self.offsets_[None, :]

    def to_arrays(self):
        return {"offsets": self.offsets_}

    @classmethod
    def from_arrays(cls, arrays, quantiles, **params):
        model = cls(quantiles, **params)
        model.offsets_ = np.asarray(arrays["offsets"])
        return model


def persistence_batch(X, y, w, X_new, quantiles, shrink=1.0):
    out = np.empty((X.shape[0], X_new.shape[1], len(quantiles)))
    for b in range(X.shape[0]):
        live = w[b] > 0
        out[b] = shrink * X_new[b][:, [0]] + _offsets(X[b][live], y[b][live], quantiles, shrink)
    return out


class WrongShape(Persistence):
    def predict(self, X):
        return np.zeros((len(X), len(self.quantiles) + 1))


class NotFinite(Persistence):
    def predict(self, X):
        return np.full((len(X), len(self.quantiles)), np.inf)
"""
TARGETS = {"estimator": "Persistence", "batched": "persistence_batch"}
PLAN = Plan(n_workers=1, memory_limit_mb=2048, models={"um": ModelPlan(0, 2, 0)})
DRIVER = """
from pipeline.config.compose import compose_config
from pipeline.runtime.store.fit_cache import FitCache
from pipeline.runtime.sizing.plan import ModelPlan, Plan
from pipeline.stages.train import run_train

if __name__ == "__main__":
    config = compose_config(["experiment=um", "runtime.output_dir=cut"])
    run_train(config, "um", Plan(n_workers=1, memory_limit_mb=2048, models={"um": ModelPlan(0, 2, 0)}))
"""


def write_module(directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.py").write_text(USER_MODULE)
    return directory


def preset(module: str, target: str, python_path: Path) -> str:
    """3 countries x 6 origins x 2 horizons; only the user model is enabled."""
    from pipeline.models.plugins.registry import builtin_names

    builtins_off = "\n".join(f"  {n}: {{enabled: false}}" for n in builtin_names())
    return f"""\
# @package _global_
name: um
data:
  synthetic: {{n_countries: 3}}
  horizons: [1, 3]
rolling_window: {{size: 36, start_date: "2022-07-01", end_date: "2022-12-01"}}
evaluation: {{combo: {{enabled: false}}}}
models:
{builtins_off}
  um: {{_target_: {module}.{target}, python_path: {python_path}, version: 1, shrink: 0.9}}
runtime: {{task_seconds: 0.2, max_workers: 1, dashboard_port: 0, progress_bar: false}}
"""


def cli(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
@pytest.mark.parametrize("form", sorted(TARGETS))
def test_user_model_runs_resumes_repros_and_sweeps(tmp_path, monkeypatch, form):
    """Both contracts through `run`; the paths after it (a killed run resumed, `dvc repro`, a
    multirun) see only the adapter's arrays, the same for either contract, so the batched
    function takes them once and the estimator class is checked through `run` alone."""
    from pipeline.sweep import launch

    module = f"um_{form}"  # one module name per form: each test imports its own
    code = write_module(tmp_path / "outside", module)
    text = preset(module, TARGETS[form], code)
    project = tmp_path / "project"  # conf/ with the preset: the CLI reads ./conf
    shutil.copytree(ROOT / "pipeline/conf", project / "conf")
    (project / "conf/experiment/um.yaml").write_text(text)

    # 1. python -m pipeline run
    proc = cli(project, "run", "experiment=um", "runtime.output_dir=full")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    full = pd.read_parquet(project / "full/train/um.parquet")
    assert len(full) == 3 * 6 * 2 * 3 and full["FORECAST"].notna().all()
    wide = full.pivot_table("FORECAST", ["COUNTRY", "HORIZON", "WINDOW_END"], "QUANTILE")
    assert crossing_rate(wide.to_numpy()) == 0.0  # rearranged
    assert set(pd.read_parquet(project / "full/forecasts/all.parquet")["MODEL"]) == {"um"}
    entries = FitCache(project / "full/models", "um").verify().entries
    assert len(entries) == 36
    # to_arrays: the estimator's fitted state is cached beside its forecasts
    states = {name for entry in entries.values() for name in entry if name.startswith("state_")}
    assert states == (
        {"state_offsets", "state_crossing"} if form == "estimator" else {"state_crossing"}
    )

    if form == "estimator":
        return

    # 2. killed midway (SIGKILL), then resumed: equal to the uninterrupted run
    shutil.copytree(project / "full/data", project / "cut/data")  # the prepared panel
    (project / "driver.py").write_text(DRIVER)
    proc = subprocess.Popen([sys.executable, "driver.py"], cwd=project, text=True,
                            env={**os.environ, "UM_SLEEP": "0.3"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    config = make_config({"runtime": {"output_dir": str(project / "cut")}})
    wait_for(lambda: done_rows(config) >= 3 * 2 * 4, 120, "a few fits")
    children = stop_tree(proc, signal.SIGKILL)
    proc.wait(timeout=30)
    reap(children)
    stopped = len(FitCache(project / "cut/models", "um").keys())
    assert 8 <= stopped < 36, stopped
    monkeypatch.chdir(project)
    config = compose_config(["experiment=um", "runtime.output_dir=cut"])
    summary = run_train(config, "um", PLAN)
    assert (summary.loaded, summary.trained, summary.failed) == (stopped, 36 - stopped, 0)
    pd.testing.assert_frame_equal(pd.read_parquet(summary.path), full)

    # 3. dvc repro in a temporary git repo: the model gets its own train@um stage
    repo = Repo(make_clone(tmp_path / "dvc", text.replace("name: um", "name: tiny")),
                dvc_env(tmp_path / "dvc"))  # fmt: skip
    repo.git("init", "-q", "-b", "main")
    repo.compose()
    output = repo.dvc("repro")
    assert "train@um" in ran(output)
    pd.testing.assert_frame_equal(pd.read_parquet(repo.path / "train/um.parquet"), full)
    assert "train@um" in repo.run(str(BIN / "dvc"), "stage", "list").stdout

    # 4. a two-job multirun over one of its parameters, sharing the first run's fit cache:
    # shrink 0.9 is that run's value (every fit loaded), 0.5 trains all of its own
    monkeypatch.chdir(tmp_path)  # the sweep dir is absolute; nothing lands here
    sweep = tmp_path / "sweep"
    cache = f"runtime.model_cache_dir={project / 'full/models'}"
    results = launch(
        ["experiment=um", "models.um.shrink=0.5,0.9", cache, f"hydra.sweep.dir={sweep}"],
        conf_dir=project / "conf",
    )
    assert [r.status for r in results] == [0, 0]
    assert [(r.trained, r.loaded) for r in results] == [(36, 0), (0, 36)]
    pinball = [r.metrics["pinball:um"] for r in results]
    assert pinball[0] != pinball[1]
    pd.testing.assert_frame_equal(pd.read_parquet(sweep / "1/train/um.parquet"), full)


def _user_study(tmp_path: Path, target: str) -> dict:
    d = copy.deepcopy(SMALL_STUDY)
    d["runtime"]["output_dir"] = str(tmp_path / "out")
    d["models"]["bad"] = {"_target_": target, "python_path": str(tmp_path / "outside")}
    return d


@pytest.mark.parametrize(
    ("target", "fragment"),
    [
        ("um_bad.WrongShape", "shape (1, 4), expected (1, 3)"),
        ("um_bad.NotFinite", "finite forecasts"),
        ("um_bad.Missing", "AttributeError"),
    ],
)
def test_a_broken_user_model_stops_before_any_cluster_naming_it(tmp_path, target, fragment):
    from pipeline.runner import run_study

    write_module(tmp_path / "outside", "um_bad")
    config = make_config(_user_study(tmp_path, target))
    with pytest.raises(ConfigError) as info:
        run_study(config)
    assert info.value.key.startswith("models.bad") and fragment in str(info.value)
    assert not (config.output_dir / "train").exists()  # no fit ran, no cluster started
    assert not (config.output_dir / "progress").exists()


def test_an_unimportable_user_model_exits_2_with_one_line(tmp_path):
    d = _user_study(tmp_path, "no_such_module.Model")
    proc = cli(
        ROOT,
        "run",
        f"runtime.output_dir={d['runtime']['output_dir']}",
        "+models.bad._target_=no_such_module.Model",
        "data.synthetic.n_countries=2",
    )
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert "models.bad._target_" in line and "No module named 'no_such_module'" in line
    assert "dashboard" not in err.lower()

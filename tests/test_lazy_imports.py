"""Lazy imports (issue 18, item 6): the command line loads a heavy library only where a command
uses it, so `qpipe --help`, `monitor` and a no-op `run` start fast.

Each command runs in a fresh interpreter (a subprocess, like the `qpipe` script), which then
reports which heavy modules it imported: behaviour, not timing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
from conftest import ROOT, make_config, tiny_study

from pipeline.cli import main
from pipeline.models.plugins import registry
from pipeline.schema import forecast_arrow_schema

HEAVY = (
    "pandas",
    "numpy",
    "pyarrow",
    "hydra",
    "omegaconf",
    "torch",
    "dask",
    "distributed",
    "matplotlib",
    "scipy",
    "sklearn",
    "arch",
    "statsmodels",
)

# runs `qpipe ARGV` in this interpreter, then prints the heavy modules it imported
REPORT = """
import json, sys
from pipeline.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as stop:  # --help
    code = stop.code
heavy = json.loads({heavy!r})
print(json.dumps({{"code": code, "imported": [m for m in heavy if m in sys.modules]}}))
"""


def imported_by(*argv: str, cwd: Path = ROOT, watch: tuple[str, ...] = HEAVY) -> set[str]:
    """The `watch` modules (default: HEAVY) `qpipe *argv` imported (it must exit 0)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = REPORT.format(heavy=json.dumps(watch))
    done = subprocess.run(
        [sys.executable, "-c", script, *argv], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["code"] in (0, None), done.stderr[-3000:]
    return set(report["imported"])


def test_help_imports_no_heavy_library() -> None:
    assert imported_by("--help") == set()
    assert imported_by("run", "--help") == set()


def test_monitor_and_a_noop_run_import_neither_pandas_nor_dask_nor_plotting(
    tmp_path: Path,
) -> None:
    """A no-op `run` (every stage skipped) decides from the stage records, the progress store's
    counts and the data file's state: no pandas, pyarrow, Dask, torch or plotting (0.3 CPU-s
    of pandas alone; issue 18 item 6). Its data is a CSV file, so the data path's check runs."""
    from pipeline.data.synthetic import generate_panel

    panel = tmp_path / "panel.csv"
    frame = generate_panel(make_config({}).data.synthetic).frame.head(3 * 144)
    frame.assign(TIME=frame.TIME.dt.strftime("%Y-%m")).to_csv(panel, index=False)
    overrides = tiny_study(
        *registry.only("rw"),
        "data.source=panel",
        f"data.path={panel}",
        "data.target=inflation",
        f"runtime.output_dir={tmp_path / 'out'}",
    )
    first = imported_by("run", *overrides)
    assert {"pandas", "matplotlib", "scipy"} <= first  # prepare and assemble ran
    # a panel of three series and small train shards are built and read without dask
    assert not first & {"dask", "distributed", "torch"}
    # the store's counts are numpy arrays; its per-row view (pandas) is not needed
    watched = imported_by("monitor", "--output-dir", str(tmp_path / "out"))
    assert watched <= {"numpy"}
    # nothing changed: every stage is skipped, and what they would have imported is not;
    # numpy reads the store's counts, Hydra composes the config
    rerun = imported_by("run", *overrides)
    assert rerun <= {"numpy", "hydra", "omegaconf"}, rerun
    assert {"hydra", "omegaconf"} <= rerun  # (the config was composed: a real run's start)


def test_each_dvc_stage_process_imports_only_what_it_uses(tmp_path: Path) -> None:
    """`python -m pipeline stage NAME` (one process per DVC stage): params.yaml is read
    without Hydra, and no stage before assemble loads plotting, scipy, Dask (a small panel, fits
    in the driver's child) or torch (ar_qr's LP is numpy). Probe and train read the panel and
    write their tables with pyarrow and numpy alone: no pandas (0.22 CPU-s a process), also
    for a disabled model's empty table. Each of these was 0.1-0.6 CPU-s per process."""
    out = tmp_path / "out"
    params = tmp_path / "params.yaml"
    overrides = tiny_study(
        *registry.only("ar_qr", "rw"),  # a second model: the plan, the store and the table again
        "data.horizons=[1,3]",
        f"runtime.output_dir={out}",
    )
    assert main(["compose", *overrides, "--output", str(params)]) == 0
    unused = set(HEAVY) - {"pandas", "numpy", "pyarrow"}
    imported = imported_by("stage", "prepare", "--params", str(params))
    assert {"pandas", "numpy"} <= imported and not imported & unused, imported  # builds frames
    for stage in (
        ["probe"],
        ["train", "--model", "ar_qr"],
        ["train", "--model", "rw"],
        ["train", "--model", "lqr"],
        ["train", "--model", "ar_qr"],  # again: every fit from the cache and the store
    ):
        imported = imported_by("stage", *stage, "--params", str(params))
        assert imported == {"numpy", "pyarrow"}, (stage, imported)
    assert (out / "train" / "lqr.parquet").is_file()  # the disabled model's empty table
    assert pq.read_table(out / "train" / "lqr.parquet").schema == forecast_arrow_schema()
    assert pq.read_table(out / "train" / "rw.parquet").num_rows > 0
    # probe and train read the prepared panel (pipeline.data.prepared) without importing what
    # builds it: prepare's module, the raw readers and the feature builders
    builders = ("pipeline.stages.prepare", "pipeline.data.features", "pipeline.data.tidy")
    watch = ("pipeline.data.prepared", *builders)
    for stage in (["probe"], ["train", "--model", "ar_qr"]):
        for sub in ("models", "progress", "train"):  # train from an empty cache again
            shutil.rmtree(out / sub, ignore_errors=True)
        imported = imported_by("stage", *stage, "--params", str(params), watch=watch)
        assert imported == {"pipeline.data.prepared"}, (stage, imported)


def test_the_early_child_imports_what_the_models_tasks_import() -> None:
    """runner starts the driver's child ahead of train with each model's solver imported:
    torch for lqr, nothing of it for rw or ar_qr (its LP solver is numpy: a small ar_qr study
    pays no torch import)."""
    from conftest import SMALL_STUDY, make_config

    from pipeline.runtime.execute.task_imports import task_imports

    config = make_config(SMALL_STUDY)
    check = "import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]; " + (
        "print('torch' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for model, torch in (("rw", "False"), ("ar_qr", "False"), ("lqr", "True")):
        modules = task_imports(config, [model])
        assert "pipeline.runtime.execute.worker" in modules
        done = subprocess.run(
            [sys.executable, "-c", check, *modules], env=env, capture_output=True, text=True
        )
        assert done.stdout.strip() == torch, (model, modules, done.stderr[-2000:])


# the coverage tests and the MCS of a forecast table with MODELS, in a fresh interpreter
MCS_SCRIPT = """
import sys
import numpy as np, pandas as pd
from pipeline.evaluation import coverage_tests, mcs
rng = np.random.default_rng(0)
models = sys.argv[1:]
n = 40
frame = pd.DataFrame({
    "MODEL": np.repeat(models, n), "COUNTRY": "DE", "HORIZON": 1, "QUANTILE": 0.5,
    "WINDOW_END": np.tile(pd.date_range("2010-01-01", periods=n, freq="MS"), len(models)),
    "FORECAST": rng.normal(size=n * len(models)), "ACTUAL": np.tile(rng.normal(size=n), len(models)),
})
coverage_tests.coverage_tests(frame, by=["MODEL", "HORIZON", "QUANTILE"])
table = mcs.mcs_table(frame, reps=50)
print(len(table), "arch" in sys.modules, "scipy.stats" in sys.modules)
"""


def test_a_one_model_study_imports_neither_arch_nor_scipy_stats() -> None:
    """p-values come from scipy.special, and arch (1.1 CPU-s with scipy.stats and statsmodels)
    is imported only where a model confidence set of two or more models is computed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for models, expected in ((["ar_qr"], "1 False False"), (["ar_qr", "rw"], "2 True True")):
        done = subprocess.run(
            [sys.executable, "-c", MCS_SCRIPT, *models], env=env, capture_output=True, text=True
        )
        assert done.stdout.strip() == expected, done.stderr[-3000:]


# after an ar_qr run in this interpreter, the heavy modules its driver's child (kept until
# exit; the run's environment keyed it) had imported: what the child's tasks cost it
CHILD_SCRIPT = """
import json, sys
from pipeline.cli import main
from pipeline.runtime.execute import child
import child_report
code = main(sys.argv[1:])
(kept,) = child._SHARED.values()
print(json.dumps({"code": code, "child": kept.run(child_report.heavy, None, 60)}))
"""


def test_an_ar_qr_task_child_imports_neither_pandas_nor_pyarrow_nor_torch(tmp_path: Path) -> None:
    """A small study's fits run in the driver's child; its tasks need numpy and the solver
    only, so its import chain (the child module, the task function, fit windows, the schema's
    names) leaves pandas and pyarrow to the driver (0.3 CPU-s a run; issue 18)."""
    (tmp_path / "child_report.py").write_text(
        "import sys\n\n\ndef heavy(names):\n"
        f"    return [m for m in {list(HEAVY)!r} if m in sys.modules]\n"
    )
    overrides = tiny_study(*registry.only("ar_qr"), f"runtime.output_dir={tmp_path / 'out'}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    done = subprocess.run(
        [sys.executable, "-c", CHILD_SCRIPT, "run", *overrides],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["code"] == 0
    logs = "".join(p.read_text() for p in (tmp_path / "out" / "logs").glob("*.log"))
    assert "in the driver, no cluster" in logs  # the fits ran in that child
    assert set(report["child"]) == {"numpy"}

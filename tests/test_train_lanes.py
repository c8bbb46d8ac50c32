"""Models trained side by side on one real cluster (issue 19 item 3): their tasks share the
workers, the results equal training them one after another, and a stop saves every model in
flight. Test-only models from tests/fake_models.py (PIPELINE_EXTRA_ADAPTERS); real LocalCluster
on 127.0.0.1, real SQLite and parquet."""

from __future__ import annotations

import copy
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import psutil
import pytest
from conftest import FAKE_MODELS, ROOT, SMALL_STUDY, make_config

from pipeline.config import StudyConfig
from pipeline.models.plugins.registry import extra_names
from pipeline.runtime.execute.shared_cluster import SharedCluster
from pipeline.runtime.sizing.plan import ModelPlan, Plan, side_by_side
from pipeline.runtime.store.progress import ProgressStore, db_path, read_table
from pipeline.stages.prepare import prepare
from pipeline.stages.train import TrainInterrupted, run_train, train_path
from pipeline.stages.train_lanes import LaneEnd, train_side_by_side

MODELS = ["fake_hang", "fake_quantile"]
SLOW_ORIGIN = str(2018 * 12 + 2)  # 2018-03: fake_hang's one slow fit (country C02)
# fake_hang's tasks are planned longer than fake_quantile's (they start first when queued);
# fake_fail (no failure asked for: fake_quantile's forecasts) is small enough for the driver's
# child at runtime.in_process_below_s = 1
PLAN = Plan(
    n_workers=2,
    memory_limit_mb=2048,
    models={
        "fake_hang": ModelPlan(48, 6, 8, 0.05),
        "fake_quantile": ModelPlan(48, 3, 16, 0.03),
        "fake_fail": ModelPlan(48, 6, 8, 0.001),
    },
)

DRIVER = """
import json, sys
from pipeline.config import validate
from pipeline.config.defaults import with_defaults
from pipeline.models.plugins.registry import extra_names
from pipeline.runtime.execute.shared_cluster import SharedCluster
from pipeline.runtime.sizing.plan import ModelPlan, Plan, side_by_side
from pipeline.stages.train_lanes import train_side_by_side

if __name__ == "__main__":
    config = validate(with_defaults(json.load(open(sys.argv[1]))))
    extra_names()  # the test models, loaded before the lanes start
    # tasks of equal priority: both models progress at once
    models = {"fake_hang": ModelPlan(48, 2, 24, 0.01), "fake_quantile": ModelPlan(48, 2, 24, 0.01)}
    with SharedCluster() as cluster:
        train_side_by_side(config, list(models), Plan(2, 2048, models=models), cluster, print)
"""


def study(root: Path, in_process_below_s: float = 0) -> StudyConfig:
    """SMALL_STUDY at one horizon (48 fits a model), on the cluster unless told otherwise."""
    d = copy.deepcopy(SMALL_STUDY)
    d["data"]["horizons"] = [1]
    d["runtime"].update({"output_dir": str(root), "in_process_below_s": in_process_below_s})
    config = make_config(d)
    prepare(config, ROOT)
    return config


def task_times(config: StudyConfig) -> pd.DataFrame:
    with sqlite3.connect(db_path(config.output_dir)) as conn:
        return pd.read_sql_query(
            "SELECT model, worker, started, finished FROM tasks WHERE finished IS NOT NULL", conn
        )


def sequential(root: Path, models: list[str]) -> dict[str, pd.DataFrame]:
    """The models trained one after another (in the driver's child, which gives the cluster's
    bits and starts faster): the forecasts to equal."""
    config = study(root, in_process_below_s=1000)
    for model in models:
        assert run_train(config, model, PLAN).failed == 0
    return {m: pd.read_parquet(train_path(config, m)) for m in models}


@pytest.fixture
def fake_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setenv("PIPELINE_EXTRA_ADAPTERS", FAKE_MODELS)
    monkeypatch.setenv("FAKE_HANG_COUNTRIES", "C02")
    monkeypatch.setenv("FAKE_HANG_ORIGIN", SLOW_ORIGIN)
    monkeypatch.setenv("FAKE_HANG_S", "0")
    extra_names()  # loaded here, not by two lanes at once (the test registry is not thread-safe)
    return monkeypatch


def test_a_short_models_tasks_run_beside_a_long_task_and_give_the_same_forecasts(
    tmp_path: Path, fake_env: pytest.MonkeyPatch
) -> None:
    models = [*MODELS, "fake_fail"]
    reference = sequential(tmp_path / "sequential", models)
    # now fake_hang's task holding (C02, 2018-03) takes 3 s; fake_quantile's take 0.1 s each
    fake_env.setenv("FAKE_HANG_S", "3")
    fake_env.setenv("FAKE_SLEEP", "0.03")
    # fake_fail in the driver's child; fake_quantile's tasks may run 2 s, fake_hang's the default
    # (each stream times its own tasks: fake_hang's 3-s task is not fake_quantile's to stop)
    config = study(tmp_path / "side", in_process_below_s=1)
    timeouts = {"fake_quantile": 2.0}  # (set here: config validation knows no test model)
    config = replace(config, runtime=replace(config.runtime, task_timeout_s_by_model=timeouts))
    ends: list[LaneEnd] = []
    with SharedCluster() as cluster:
        train_side_by_side(config, models, PLAN, cluster, ends.append)
    assert sorted(e.model for e in ends) == sorted(models)
    assert all(e.error is None and e.summary and e.summary.failed == 0 for e in ends)
    assert all(e.summary and e.summary.trained == 48 for e in ends)
    tasks = task_times(config)
    slow = tasks[(tasks["model"] == "fake_hang") & (tasks["finished"] - tasks["started"] > 2.5)]
    assert len(slow) == 1, tasks
    start, end = float(slow["started"].iloc[0]), float(slow["finished"].iloc[0])
    # the other model's tasks ran on the other worker while the long task ran
    beside = tasks[
        (tasks["model"] == "fake_quantile")
        & (tasks["started"] >= start)
        & (tasks["finished"] <= end)
    ]
    assert len(beside) >= 3, tasks
    assert set(beside["worker"]).isdisjoint(slow["worker"])
    for model in models:  # one key, one result: the same forecasts as one after another
        pd.testing.assert_frame_equal(pd.read_parquet(train_path(config, model)), reference[model])
    runs = read_table(db_path(config.output_dir), "runs")
    assert sorted(runs["model"]) == sorted(models) and set(runs["state"]) == {"finished"}
    assert runs.set_index("model").loc["fake_fail", "n_workers"] == 1  # the child's lane
    # each model's train log holds its own lines, not the other's
    logs = {e.model: e.summary.log_path.read_text() for e in ends if e.summary}
    assert "train fake_hang: 48 fits" in logs["fake_hang"]
    assert "train fake_hang" not in logs["fake_quantile"]
    assert "train fake_quantile: 48 fits" in logs["fake_quantile"]


def test_a_failing_model_stops_the_others_with_their_progress_saved(
    tmp_path: Path, fake_env: pytest.MonkeyPatch
) -> None:
    fake_env.setenv("FAKE_SLEEP", "0.05")
    config = study(tmp_path / "out")
    (config.output_dir / "train").mkdir()
    (config.output_dir / "train" / "fake_hang.parquet").mkdir()  # its table cannot be written
    ends: list[LaneEnd] = []
    with SharedCluster() as cluster, pytest.raises(IsADirectoryError):
        train_side_by_side(config, MODELS, PLAN, cluster, ends.append)
    assert {e.model: type(e.error) for e in ends}["fake_hang"] is IsADirectoryError
    runs = read_table(db_path(config.output_dir), "runs").set_index("model")["state"]
    # fake_quantile ran beside it: either it finished first or it stopped with progress saved
    other = next(e for e in ends if e.model == "fake_quantile")
    if other.error is not None:
        assert isinstance(other.error, TrainInterrupted) and runs["fake_quantile"] == "interrupted"
    else:
        assert runs["fake_quantile"] == "finished"


@pytest.mark.slow
def test_ctrl_c_with_two_models_in_flight_saves_both_and_a_rerun_completes_them(
    tmp_path: Path, fake_env: pytest.MonkeyPatch
) -> None:
    reference = sequential(tmp_path / "sequential", MODELS)
    config = study(tmp_path / "out")
    (tmp_path / "driver.py").write_text(DRIVER)
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    env = {**os.environ, "FAKE_SLEEP": "0.25"}  # 24 tasks of 0.5 s per model on 2 workers
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "driver.py"), str(tmp_path / "config.json")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )

    def done(model: str) -> int:
        try:
            table = read_table(db_path(config.output_dir), "progress")
        except Exception:  # not created yet
            return 0
        return int(((table["model"] == model) & (table["status"] == "done")).sum())

    t0 = time.monotonic()
    while not all(done(m) >= 2 for m in MODELS):
        assert time.monotonic() - t0 < 120 and proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    _, alive = psutil.wait_procs(children, timeout=20)
    for child in alive:
        child.kill()
    runs = read_table(db_path(config.output_dir), "runs")
    assert sorted(runs["model"]) == MODELS and set(runs["state"]) == {"interrupted"}, runs
    progress = read_table(db_path(config.output_dir), "progress")  # derived on read
    assert not (progress["status"] == "training").any()
    for model in MODELS:  # both stopped midway, their done fits kept
        status = progress.loc[progress["model"] == model, "status"]
        assert (status == "done").any() and (status == "pending").any(), model
    # a rerun loads what each trained and trains the rest: the same forecasts
    ends: list[LaneEnd] = []
    with SharedCluster() as cluster:
        train_side_by_side(config, MODELS, PLAN, cluster, ends.append)
    for end in ends:
        assert end.summary is not None and end.summary.loaded > 0
        assert end.summary.loaded + end.summary.trained == 48
    for model in MODELS:
        pd.testing.assert_frame_equal(pd.read_parquet(train_path(config, model)), reference[model])


def test_a_store_opened_by_lanes_while_another_writes_is_one_healthy_store(
    tmp_path: Path,
) -> None:
    path = db_path(tmp_path)
    start, writing = threading.Barrier(6), threading.Event()
    moved: list[Path | None] = []
    errors: list[BaseException] = []

    def write() -> None:  # a lane recording its tasks while the others open the store
        with ProgressStore(path) as store:
            start.wait()
            while not writing.is_set():
                store.start_run("r", "m", os.getpid(), "log")

    def open_store() -> None:
        start.wait()
        try:
            with ProgressStore(path) as store:
                moved.append(store.rebuilt_from)
        except BaseException as error:
            errors.append(error)

    writer = threading.Thread(target=write)
    writer.start()
    threads = [threading.Thread(target=open_store) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writing.set()
    writer.join()
    assert not errors and len(moved) == 5
    # none was taken for a damaged store and moved aside while the others used it
    assert moved == [None] * 5 and not (path.parent / "damaged").exists()


def test_models_side_by_side_get_a_worker_limit_for_two_task_peaks() -> None:
    # the seed study's probe: baseline 241 MiB; ensemble_nn, lqr, ar_qr peaks 480, 430, 322
    config = make_config(copy.deepcopy(SMALL_STUDY))  # mem_probe_fudge_mb 256, max_workers 2
    peaks = {"ensemble_nn": 480.0, "lqr": 430.0, "ar_qr": 322.0}
    models = {m: ModelPlan(10, 1, 10, 0.1, peak) for m, peak in peaks.items()}
    plan = Plan(2, 768, models=models, baseline_mb=241.0, ram_budget_mb=8192.0)
    # 241 + (480 - 241) + (430 - 241) + 256 = 925, rounded up to 1024
    assert side_by_side(config, plan, list(peaks)).memory_limit_mb == 1024
    assert side_by_side(config, plan, ["ensemble_nn"]) == plan  # one model: the probe's limit
    # where the RAM budget holds two workers of 768 MiB but not of 1024, the models train
    # one after another on the probe's plan (two workers beat the overlap)
    small = Plan(2, 768, models=models, baseline_mb=241.0, ram_budget_mb=1600.0)
    assert side_by_side(config, small, list(peaks)) is None

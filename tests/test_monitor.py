"""The monitor: during a live train (driver in the background) and after it, and with no run."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import FAKE_MODELS, ROOT, SMALL_STUDY, make_config
from test_progress import QS, group

from pipeline.runtime.store.progress import ProgressStore, db_path
from pipeline.runtime.ui.monitor import read_snapshot
from pipeline.stages.prepare import prepare

DRIVER = """
import json, sys
from pipeline.config import validate
from pipeline.config.defaults import with_defaults
from pipeline.runtime.sizing.plan import ModelPlan, Plan
from pipeline.stages.train import run_train

if __name__ == "__main__":
    config = validate(with_defaults(json.load(open(sys.argv[1]))))
    plan = Plan(n_workers=2, memory_limit_mb=2048, models={"slow_ar_qr": ModelPlan(0, 4, 0)})
    run_train(config, "slow_ar_qr", plan)
"""
ENV = {**os.environ, "COLUMNS": "200", "PIPELINE_EXTRA_ADAPTERS": FAKE_MODELS, "FAKE_SLEEP": "0.15"}


def monitor(out: Path, *extra: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "pipeline", "monitor", "--output-dir", str(out), *extra]
    return subprocess.run(
        command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout
    )


def test_no_run_says_so_and_exits_non_zero(tmp_path):
    result = monitor(tmp_path)
    assert result.returncode == 1
    assert "no run found" in result.stdout


@pytest.mark.slow
def test_monitor_during_and_after_a_live_run(tmp_path):
    d = copy.deepcopy(SMALL_STUDY)
    d["runtime"]["output_dir"] = str(tmp_path / "out")
    config = make_config(d)
    prepare(config, ROOT)
    (tmp_path / "driver.py").write_text(DRIVER)
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    driver = subprocess.Popen(
        [sys.executable, str(tmp_path / "driver.py"), str(tmp_path / "config.json")],
        cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:  # wait until some fits are done but the run is still going
            snap = read_snapshot(config.output_dir)
            state = snap.models[0] if snap and snap.models else None
            if state and state.counts.get("done", 0) >= 24 and state.run_state == "running":
                break
            assert time.monotonic() < deadline and driver.poll() is None, (
                "run ended before the monitor saw it"
            )
            time.sleep(0.2)
        live = monitor(config.output_dir)
        assert live.returncode == 0, live.stderr
        assert "slow_ar_qr" in live.stdout and "running" in live.stdout
        assert "dashboard" in live.stdout and "http://127.0.0.1:" in live.stdout
        watch = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "monitor", "--output-dir", str(config.output_dir), "--watch", "--interval", "0.5"],
            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(3)
        watch.send_signal(signal.SIGINT)
        watched, _ = watch.communicate(timeout=30)
        assert watch.returncode == 0 and "slow_ar_qr" in watched
        assert driver.wait(timeout=120) == 0
    finally:
        if driver.poll() is None:
            driver.kill()
    after = monitor(config.output_dir)
    assert after.returncode == 0
    assert "finished" in after.stdout and "100.0" in after.stdout
    assert "dashboard" not in after.stdout  # only shown while a run is live
    snapshot = read_snapshot(config.output_dir)
    # fits, as train counts them; the per-row view on request
    assert snapshot.models[0].counts["done"] == 96 and snapshot.models[0].rate > 0
    assert read_snapshot(config.output_dir, rows=True).models[0].counts["done"] == 96 * 3
    rows = monitor(config.output_dir, "--rows")
    assert rows.returncode == 0 and "rows/s" in rows.stdout and "288" in rows.stdout


def _store_with_a_task_in_flight(out: Path, pid: int) -> None:
    with ProgressStore(db_path(out)) as store:
        store.start_run("r1", "m", pid, "logs/r1.log")
        store.sync("m", [group({("AA", 2018 * 12): "k1", ("BB", 2018 * 12): "k2"})], QS, "r1")
        store.start_task("m", 0, np.array([0, 1]), "r1")


def test_training_counts_only_fits_in_flight_of_a_live_run(tmp_path):
    _store_with_a_task_in_flight(tmp_path / "live", os.getpid())
    live = read_snapshot(tmp_path / "live").models[0]
    assert live.run_state == "running" and live.counts["training"] == 2
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a driver killed mid-task: its fits are no longer in flight
    _store_with_a_task_in_flight(tmp_path / "dead", dead.pid)
    state = read_snapshot(tmp_path / "dead").models[0]
    assert state.run_state == "killed" and state.counts["training"] == 0
    assert state.counts["pending"] == 2


def test_watch_started_before_the_run_waits_for_its_first_progress(tmp_path):
    watch = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "monitor", "--output-dir", str(tmp_path), "--watch", "--interval", "0.2"],
        cwd=ROOT, env={**ENV, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        first = watch.stdout.readline()  # blocks until the monitor has looked once
        assert "waiting for a run" in first and watch.poll() is None
        _store_with_a_task_in_flight(tmp_path, os.getpid())
        time.sleep(1.5)
        watch.send_signal(signal.SIGINT)
        out, err = watch.communicate(timeout=30)
    finally:
        if watch.poll() is None:
            watch.kill()
    assert watch.returncode == 0, err
    assert "no run found" not in out
    assert "training" in out and "running" in out  # the run, once it appeared

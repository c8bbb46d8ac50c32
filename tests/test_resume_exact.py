"""SIGKILL of the driver mid-train, then a rerun: forecasts and metrics byte-identical to an
uninterrupted run, ensemble_nn included (its blocks train whole on resume)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
from conftest import tiny_study

from pipeline.runtime.ui.monitor import read_snapshot

# ensemble_nn on (its blocks are what a resume must retrain whole) and the combo of the three
TINY = tiny_study(
    "models.ensemble_nn.enabled=true",
    "models.ensemble_nn.units_per_layer=[8]",
    "models.ensemble_nn.epochs=120",
    "models.ensemble_nn.patience=120",
    "models.ensemble_nn.parallel_models=2",
    "models.ensemble_nn.learning_rate=1e-3",
    "models.ensemble_nn.device=cpu",
    "evaluation.combo.enabled=true",
)


def start(out: Path, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", *TINY, f"runtime.output_dir={out}"],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def training(out: Path, model: str) -> bool:
    try:
        snapshot = read_snapshot(out)
    except sqlite3.Error:
        return False
    states = {s.model: s for s in snapshot.models} if snapshot else {}
    return model in states and states[model].counts.get("training", 0) > 0


@pytest.mark.slow
def test_sigkill_mid_train_then_rerun_is_byte_identical(tmp_path: Path) -> None:
    # the uninterrupted run goes on beside the killed one (wall time: 2 cores); the killed run
    # starts once the clean one has probed, so both reuse the one measurement (the same plan)
    clean = start(tmp_path / "clean", tmp_path)
    t0 = time.monotonic()
    while not (tmp_path / "clean/probe.json").exists():
        assert clean.poll() is None, clean.communicate()
        assert time.monotonic() - t0 < 300, "the clean run never finished its probe"
        time.sleep(0.05)
    out = tmp_path / "killed"
    proc = start(out, tmp_path)
    t0 = time.monotonic()
    while not training(out, "ensemble_nn"):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < 300, "ensemble_nn never started training"
        time.sleep(0.02)
    children = psutil.Process(proc.pid).children(recursive=True)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    _, alive = psutil.wait_procs(children, timeout=20)
    for child in alive:
        child.kill()
    assert not (out / "forecasts/all.parquet").exists()  # killed before assemble
    _, err = clean.communicate(timeout=600)
    assert clean.returncode == 0, err
    again = start(out, tmp_path)
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    for name in ("forecasts/all.parquet", "metrics.json", "train/ensemble_nn.parquet"):
        assert (out / name).read_bytes() == (tmp_path / "clean" / name).read_bytes(), name
    frame = pd.read_parquet(out / "forecasts/all.parquet")
    # the trained models and the combination built from them (tiny_study: no benchmarks)
    assert set(frame["MODEL"]) == {"ar_qr", "lqr", "ensemble_nn", "combo"}

"""Quiet by default: Dask's INFO lines go to the run's log file, never to the terminal."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import ROOT


def test_dask_info_goes_to_the_log_file_only(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "run",
            "data.synthetic.n_countries=2",
            "data.horizons=[1]",
            "data.lags=[1]",
            "rolling_window.size=24",
            "rolling_window.start_date=2024-01-01",
            "rolling_window.end_date=2024-02-01",
            "models.ar_qr.p=2",
            "models.lqr.enabled=false",
            "models.ensemble_nn.enabled=false",
            "runtime.max_workers=1",
            "runtime.dashboard_port=0",
            "runtime.in_process_below_s=0",  # a real cluster, whose INFO lines are checked
            "runtime.progress_bar=false",
            f"runtime.output_dir={out}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    terminal = done.stdout + done.stderr
    assert "train ar_qr:" in done.stderr  # the stage summaries stay on the terminal
    assert not re.search(r"INFO\s.*distributed\.", terminal), terminal
    (log,) = (out / "logs").glob("train-ar_qr-*.log")
    assert re.search(r"INFO distributed\.(scheduler|nanny|core)", log.read_text())

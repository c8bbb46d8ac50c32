"""pipeline.backtest called at the top level of a script, as a notebook cell would be.

Python's `spawn` runs the parent's `__main__` script again in every child process it starts,
so a script without `if __name__ == "__main__":` used to start the study again in the
driver's child and in each Dask worker: one OutputDirBusy traceback per child, minutes lost
and no forecasts. The script here has no guard and counts its own runs in a file; the tiny
study trains in the driver's spawned child, or with runtime.in_process_below_s=0 on a Dask
cluster (spawned nannies and workers).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_study

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

SCRIPT = """\
import pipeline

with open("runs.txt", "a") as f:  # every execution of this script, in any process
    f.write("ran\\n")
result = pipeline.backtest({overrides!r})
print("rows", len(result.forecasts))
"""


@pytest.mark.parametrize("where", ["child", "cluster"])
def test_a_script_without_a_main_guard_runs_once(tmp_path, where):
    changes = ["runtime.output_dir=out"]
    if where == "cluster":
        changes.append("runtime.in_process_below_s=0")  # every model on a Dask cluster
    proc = _run_script(tmp_path, SCRIPT.format(overrides=tiny_study(*changes)))
    assert "Traceback" not in proc.stderr, proc.stderr
    assert (tmp_path / "runs.txt").read_text() == "ran\n"  # the parent only
    assert "rows " in proc.stdout and (tmp_path / "out" / "forecasts" / "all.parquet").is_file()


GUARDED = """\
import numpy as np

import pipeline


class Median:
    \"\"\"A model defined in the script itself: the children import it from __main__.\"\"\"

    def __init__(self, quantiles):
        self.quantiles = quantiles

    def fit(self, X, y):
        self.level = np.quantile(y, self.quantiles)
        return self

    def predict(self, X):
        return np.tile(self.level, (len(X), 1))


if __name__ == "__main__":
    result = pipeline.backtest({overrides!r})
    print("rows", len(result.forecasts[result.forecasts.MODEL == "mine"]))
"""


def test_a_guarded_script_may_define_its_own_model(tmp_path):
    """A script with the guard keeps spawn's import of it, so `_target_: __main__.X` works in
    the spawned children too."""
    changes = ["runtime.output_dir=out", "+models.mine._target_=__main__.Median"]
    proc = _run_script(tmp_path, GUARDED.format(overrides=tiny_study(*changes)))
    rows = [line for line in proc.stdout.splitlines() if line.startswith("rows ")]
    assert rows and int(rows[0].split()[1]) > 0, proc.stdout


def _run_script(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    """`python study.py` with `text` in `tmp_path`, against this checkout; it must succeed."""
    (tmp_path / "study.py").write_text(text)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "study.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc

"""Issue 22, items 1 and 6: a task that hangs or outgrows its memory is stopped, labelled, and
the rest of the study completes; on a real LocalCluster and in the driver's child process."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, SMALL_STUDY, make_config

from pipeline.config import StudyConfig
from pipeline.runtime.plan import ModelPlan, Plan
from pipeline.runtime.progress import db_path, read_table
from pipeline.stages.prepare import prepare
from pipeline.stages.train import run_train

HANG_ORIGIN = str(2018 * 12 + 2)  # 2018-03


def study(root: Path, **runtime: Any) -> StudyConfig:
    d = copy.deepcopy(SMALL_STUDY)
    d["runtime"].update({"output_dir": str(root), **runtime})
    config = make_config(d)
    prepare(config, ROOT)
    return config


def plan(model: str, fits_per_task: int, seconds_per_fit: float | None = None) -> Plan:
    return Plan(
        n_workers=2,
        memory_limit_mb=2048,
        models={model: ModelPlan(0, fits_per_task, 0, seconds_per_fit=seconds_per_fit)},
    )


@pytest.mark.parametrize("where", ["cluster", "driver"])
def test_a_hanging_fit_is_stopped_labelled_timeout_and_the_study_completes(
    tmp_path: Path, fake_adapters: str, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Two fits (one country, one origin, two horizons) never return: their tasks are
    stopped after runtime.task_timeout_s, retried once alone (runtime.retries), then failed as
    `timeout`; every other fit is trained (before issue 22 the run never ended)."""
    monkeypatch.setenv("FAKE_HANG_COUNTRIES", "C02")
    monkeypatch.setenv("FAKE_HANG_ORIGIN", HANG_ORIGIN)
    below = 0.0 if where == "cluster" else 60.0
    config = study(tmp_path / "out", retries=1, task_timeout_s=2.0, in_process_below_s=below)
    summary = run_train(config, "fake_hang", plan("fake_hang", 8, seconds_per_fit=0.001))
    assert (summary.dashboard is None) == (where == "driver")
    assert summary.failed == 2 and summary.trained == summary.fits - 2 == 94
    table = read_table(db_path(config.output_dir), "progress")
    failed = table[table["status"] == "failed"]
    assert set(failed["country"]) == {"C02"} and set(failed["origin"]) == {"2018-03-01"}
    assert (failed["error_type"] == "timeout").all() and (failed["attempts"] == 2).all()
    assert (table.loc[table["status"] != "failed", "status"] == "done").all()
    assert "task_timeout_s" in Path(summary.log_path).read_text()

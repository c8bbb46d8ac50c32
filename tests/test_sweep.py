"""Hydra multirun (`python -m pipeline run -m ...`): Hydra's sweep syntax, one folder per job,
one shared model cache, and a comparison table at the end."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import tiny_study

import pipeline.runner as runner
from pipeline.config import ConfigError, StudyConfig
from pipeline.io import write_json
from pipeline.models.plugins import registry
from pipeline.runtime.store.fit_cache import FitCache
from pipeline.sweep import JobResult, format_table, launch, run_multirun, summary_rows

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake_study(monkeypatch: pytest.MonkeyPatch) -> list[StudyConfig]:
    """Replace the study with a recorder that writes a metrics.json like assemble's."""
    seen: list[StudyConfig] = []

    def study(config: StudyConfig, dry_run: bool = False) -> int:
        seen.append(config)
        pinball = {
            "ar_qr": {"mean": 0.5},
            "lqr": {"mean": 0.1 * config.models.ar_qr.p + config.seed},
        }
        write_json(config.output_dir / "metrics.json", {"all": {"pinball": pinball}})
        return 0

    monkeypatch.setattr(runner, "run_study", study)
    return seen


def test_sweep_syntax_expands_to_every_combination_each_in_its_own_folder(
    tmp_path, monkeypatch, fake_study
):
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory but the sweep dir
    sweep = tmp_path / "sweep"
    results = launch(["models.ar_qr.p=range(2,4)", "seed=0,1", f"hydra.sweep.dir={sweep}"])
    assert [r.number for r in results] == [0, 1, 2, 3]
    got = sorted((c.models.ar_qr.p, c.seed) for c in fake_study)
    assert got == [(2, 0), (2, 1), (3, 0), (3, 1)]
    # each job its own output dir, one model cache shared by all of them
    assert sorted(c.output_dir.resolve() for c in fake_study) == [sweep / str(n) for n in range(4)]
    assert {c.model_cache_dir.resolve() for c in fake_study} == {sweep / "models"}
    assert all((sweep / str(n) / ".hydra" / "overrides.yaml").is_file() for n in range(4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"]
    assert [r.metrics["pinball:lqr"] for r in results] == pytest.approx([0.2, 1.2, 0.3, 1.3])


def test_glob_sweep_over_a_config_group_and_explicit_cache_dir(tmp_path, monkeypatch, fake_study):
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "shared-cache"
    launch(
        [
            "experiment=glob(q*)",
            f"runtime.model_cache_dir={cache}",
            f"hydra.sweep.dir={tmp_path / 's'}",
        ]
    )
    assert [c.name for c in fake_study] == ["quick"]
    assert fake_study[0].model_cache_dir == cache


def test_bad_override_is_a_config_error(tmp_path, monkeypatch, fake_study):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="multirun overrides"):
        launch(["models.lqr.colour=1,2", f"hydra.sweep.dir={tmp_path / 's'}"])
    # a value the schema rejects fails that job only (exit 2 in its row), not the sweep
    results = launch(["models.ar_qr.p=0,3", f"hydra.sweep.dir={tmp_path / 's'}"])
    assert [r.status for r in results] == [2, 0]
    assert "models.ar_qr.p" in (results[0].error or "")


def test_table_has_one_row_per_job_and_stars_the_best():
    results = [
        JobResult(
            0,
            ("a=1",),
            "s/0",
            0,
            trained=10,
            loaded=0,
            metrics={"pinball:lqr": 0.2, "pinball:ar_qr": 0.3},
        ),
        JobResult(
            1,
            ("a=2",),
            "s/1",
            0,
            trained=4,
            loaded=6,
            metrics={"pinball:lqr": 0.1, "pinball:ar_qr": 0.3},
        ),
        JobResult(2, ("a=3",), "s/2", 1, error="ValueError: boom"),
    ]
    rows = summary_rows(results)
    assert list(rows[0])[:6] == [
        "job",
        "overrides",
        "status",
        "trained",
        "loaded",
        "failed",
    ]
    assert list(rows[0])[6:] == ["pinball:ar_qr", "pinball:lqr"]
    assert math.isnan(rows[2]["pinball:lqr"]) and rows[2]["status"] == "ValueError: boom"
    lines = format_table(rows).splitlines()
    assert len(lines) == 2 + 3 + 1
    assert "0.1*" in lines[3] and "0.2*" not in lines[2]


def _runs(job: Path) -> pd.DataFrame:
    with sqlite3.connect(f"file:{job / 'progress/progress.sqlite'}?mode=ro", uri=True) as conn:
        return pd.read_sql_query("SELECT model, trained, loaded, failed FROM runs", conn).set_index(
            "model"
        )


@pytest.mark.slow
def test_two_job_multirun_second_job_refits_only_what_differs(tmp_path):
    # job 0: horizon 1; job 1: horizons 1 and 3 -> its horizon-1 fits come from job 0's cache
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "pipeline", "run", "-m",
           *tiny_study(*registry.only("ar_qr"), "data.horizons=[1],[1,3]"),
           f"hydra.sweep.dir={sweep}"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    n = 3 * 6  # countries x origins per horizon
    assert _runs(sweep / "0").loc["ar_qr"].tolist() == [n, 0, 0]
    assert _runs(sweep / "1").loc["ar_qr"].tolist() == [n, n, 0]  # (trained, loaded, failed)
    assert len(FitCache(sweep / "models", "ar_qr").keys()) == 2 * n
    # reused fits give the very same forecasts
    h1 = [
        pd.read_parquet(sweep / str(j) / "train/ar_qr.parquet").query("HORIZON == 1")
        for j in (0, 1)
    ]
    pd.testing.assert_frame_equal(h1[0].reset_index(drop=True), h1[1].reset_index(drop=True))
    for job, horizons in ((0, ["h1"]), (1, ["h1", "h3"])):
        metrics = json.loads((sweep / str(job) / "metrics.json").read_text())
        assert sorted(metrics["all"]["pinball"]["ar_qr"]) == [*horizons, "mean"]
    # the comparison table: one row per job with fit counts and metrics, also saved as CSV
    assert "data.horizons=[1]" in proc.stdout and "data.horizons=[1,3]" in proc.stdout
    summary = pd.read_csv(sweep / "summary.csv")
    assert summary[["job", "trained", "loaded", "failed"]].values.tolist() == [
        [0, n, 0, 0],
        [1, n, n, 0],
    ]
    assert summary["pinball:ar_qr"].notna().all() and summary["status"].tolist() == ["ok", "ok"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"]  # no .hydra/ or outputs here


def test_run_multirun_returns_nonzero_when_a_job_fails(tmp_path, monkeypatch, fake_study, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_multirun(["models.ar_qr.p=0,3", f"hydra.sweep.dir={tmp_path / 's'}"]) == 1
    out = capsys.readouterr().out
    assert "config error at 'models.ar_qr.p'" in out and (tmp_path / "s/summary.csv").is_file()

"""The DVC pipeline end to end: real `dvc` and real `git` in a temporary clone of the project.

One clone (module fixture) on a tiny synthetic config, committed after a full `dvc repro`; then,
in order: a no-op repro runs no stage and `dvc status` says the pipeline is up to date; a
`models.lqr.alphas` change through `dvc exp run -S` (DVC's Hydra composition, byte-identical to
ours) reruns exactly probe, train@lqr and assemble and fits only lqr; going back to the old
alphas refits nothing (the persisted fit cache survived DVC's reruns); execution knobs (worker
counts, RAM limits: the plan is derived at train time) rerun no stage.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.models.plugins import registry
from pipeline.runtime.store.fit_cache import FitCache

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow

# A study that runs end to end in seconds: 3 countries, one horizon, 6 origins, small models.
# ensemble_nn is disabled here (its own tests cover it): its train stage must be a clean no-op.
TINY_PRESET = """\
# @package _global_
name: tiny
data:
  synthetic: {n_countries: 3}
  horizons: [1]
rolling_window: {size: 36, start_date: "2022-07-01", end_date: "2022-12-01"}
models:
  ar_qr: {p: 3}
  lqr: {alphas: [7.5, 15], rff_features: 16}
  ensemble_nn: {enabled: false}
runtime: {task_seconds: 0.2, max_workers: 1, dashboard_port: 0, progress_bar: false}
"""
# a train stage per built-in model (dvc.yaml iterates over params.yaml's models), in table order
ALL_STAGES = ["prepare", "probe", *(f"train@{n}" for n in registry.builtin_names()), "assemble"]
TRAINED = {n for n in registry.builtin_names() if n != "ensemble_nn"}  # PARAMS switches it off
SCORED = {*TRAINED, "combo"}  # combo derived


def project_files(root: Path) -> list[str]:
    """What a commit of the working tree would hold: tracked plus untracked, not ignored."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=root, check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    return sorted(p for p in set(out.splitlines()) if (root / p).is_file())


def make_clone(dest: Path, preset: str = TINY_PRESET) -> Path:
    """Copy the working tree into a fresh git repo whose default experiment is `preset`."""
    repo = dest / "repo"
    for rel in project_files(ROOT):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, repo / rel)
    (repo / "pipeline/conf/experiment/tiny.yaml").write_text(preset)
    config = repo / "pipeline/conf/config.yaml"
    text = config.read_text()
    assert "  - experiment: quick\n" in text
    config.write_text(text.replace("  - experiment: quick\n", "  - experiment: tiny\n"))
    return repo


def dvc_env(dest: Path) -> dict[str, str]:
    """DVC and git isolated from the machine: own site cache and config dirs, no analytics."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "GIT_"))}
    for name in ("DVC_SITE_CACHE_DIR", "DVC_GLOBAL_CONFIG_DIR", "DVC_SYSTEM_CONFIG_DIR"):
        env[name] = str(dest / name.lower())
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", DVC_NO_ANALYTICS="1",
               GIT_CONFIG_NOSYSTEM="1", PYTHONUNBUFFERED="1")  # fmt: skip
    return env


class Repo:
    def __init__(self, path: Path, env: dict[str, str]) -> None:
        self.path, self.env = path, env

    def run(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            list(args), cwd=self.path, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def dvc(self, *args: str) -> str:
        proc = self.run(str(BIN / "dvc"), *args)
        return proc.stdout + proc.stderr

    def compose(self, *overrides: str, output: str = "params.yaml") -> bytes:
        self.run(str(BIN / "python"), "-m", "pipeline", "compose", *overrides, "--output", output)
        return (self.path / output).read_bytes()

    def git(self, *args: str) -> str:
        return self.run("git", *args).stdout

    def status(self) -> dict[str, object]:
        return json.loads(self.run(str(BIN / "dvc"), "status", "--json").stdout or "{}")

    def latest_runs(self) -> dict[str, dict[str, int]]:
        """Per model, (trained, loaded, failed) of its most recent train run (progress store)."""
        with sqlite3.connect(
            f"file:{self.path / 'progress/progress.sqlite'}?mode=ro", uri=True
        ) as conn:
            runs = pd.read_sql_query("SELECT * FROM runs ORDER BY started", conn)
        last = runs.groupby("model").tail(1).set_index("model")
        return {
            m: {c: int(last.loc[m, c]) for c in ("trained", "loaded", "failed")} for m in last.index
        }

    def to_baseline(self) -> None:
        """Back to the committed config and outputs (a no-op when already there)."""
        self.git("checkout", "--", "params.yaml")
        self.dvc("repro")


def ran(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    dest = tmp_path_factory.mktemp("dvc")
    repo = Repo(make_clone(dest), dvc_env(dest))
    repo.git("init", "-q", "-b", "main")
    repo.git("config", "user.email", "test@example.com")
    repo.git("config", "user.name", "test")
    repo.compose()
    repo.git("add", "-A")
    repo.git("commit", "-qm", "project")
    repo.full_output = repo.dvc("repro")  # type: ignore[attr-defined]
    repo.git("add", "-A")
    repo.git("commit", "-qm", "first repro")
    return repo


def test_full_repro_runs_every_stage_in_order_and_writes_the_outputs(repo: Repo) -> None:
    out = repo.full_output  # type: ignore[attr-defined]
    assert ran(out) == ALL_STAGES, out
    p = repo.path
    assert (p / "data/prepared/panel.parquet").is_file() and (
        p / "data/prepared/meta.json"
    ).is_file()
    plan = json.loads((p / "probe.json").read_text())
    assert set(plan["models"]) == TRAINED and plan["memory_limit_mb"] % 256 == 0
    assert "n_workers" not in plan  # the machine's size is no stage's output
    # every fit in its content-addressed file; the disabled model wrote an empty table
    runs = repo.latest_runs()
    assert runs["ar_qr"]["trained"] == 3 * 6 and runs["lqr"]["trained"] == 3 * 6
    assert len(FitCache(p / "models", "ar_qr").keys()) == 3 * 6
    assert (
        len(pd.read_parquet(p / "train/lqr.parquet")) == 3 * 6 * 3
    )  # countries x origins x quantiles
    assert pd.read_parquet(p / "train/ensemble_nn.parquet").empty
    assert (p / "models/ensemble_nn").is_dir() and not any((p / "models/ensemble_nn").iterdir())
    metrics = json.loads((p / "metrics.json").read_text())
    assert set(metrics["all"]["pinball"]) == SCORED
    assert set(json.loads((p / "metrics_summary.json").read_text())["all"]) == SCORED
    headline = json.loads((p / "metrics_headline.json").read_text())
    assert list(headline) == ["pinball", "coverage", "coverage_nominal"]
    assert set(headline["pinball"]) == set(headline["coverage"]) == SCORED
    assert all(v > 0 for v in headline["pinball"].values())
    assert all(0 <= v <= 1 for v in headline["coverage"].values())
    assert sorted(x.name for x in (p / "forecasts").glob("*_h1.parquet")) == sorted(
        f"{m}_q{q}_h1.parquet" for m in SCORED for q in ("0.1", "0.5", "0.9")
    )
    assert (p / "reports/index.html").is_file() and list((p / "reports").glob("*.png"))
    # `dvc plots show` finds the charts (the CSV line plots need every model's column)
    shown = json.loads(repo.run(str(BIN / "dvc"), "plots", "show", "--json").stdout)["data"]
    for chart in (
        "reports/pinball_by_horizon.png",
        "reports/coverage.png",
        "reports/fan/C01_h1.png",
    ):
        assert [x["type"] for x in shown[chart]] == ["image"], shown.keys()
    # DVC tracks what it should: cached outputs are ignored by git, metrics are committed
    lock = yaml.safe_load((p / "dvc.lock").read_text())["stages"]
    outs = {stage: {o["path"] for o in lock[stage]["outs"]} for stage in ALL_STAGES}
    assert outs["train@lqr"] == {"models/lqr", "train/lqr.parquet"}
    assert outs["probe"] == {"probe.json", "probe_measurements.json"}
    assert outs["assemble"] == {
        "forecasts", "reports", "metrics.json", "metrics_summary.json", "metrics_headline.json"
    }  # fmt: skip
    tracked = set(repo.git("ls-files").split())
    assert {
        "dvc.lock",
        "probe.json",
        "metrics.json",
        "metrics_summary.json",
        "metrics_headline.json",
    } <= tracked
    outputs = ("models/", "train/", "forecasts/", "reports/", "data/prepared/")
    assert not [t for t in tracked if t.startswith(outputs) and not t.endswith(".gitignore")]


def test_second_repro_runs_no_stage_and_status_says_up_to_date(repo: Repo) -> None:
    repo.to_baseline()
    for _ in range(2):  # speed is a benchmark's business; here: nothing runs, twice
        out = repo.dvc("repro")
        assert ran(out) == [], out
        assert "Data and pipelines are up to date." in out, out
    assert repo.status() == {}
    assert "Data and pipelines are up to date." in repo.dvc("status")
    assert repo.git("status", "--porcelain") == ""  # byte-identical outputs, unchanged dvc.lock


def test_alphas_change_via_exp_run_reruns_only_lqr_and_composes_params(repo: Repo) -> None:
    repo.to_baseline()
    # what DVC sees: lqr's params changed, read by probe, train@lqr and assemble (which lists
    # the fits the config expects) but not by the other models' train stages
    repo.compose("models.lqr.alphas=[10,20]")
    assert set(repo.status()) == {"probe", "train@lqr", "assemble"}, repo.status()
    repo.git("checkout", "--", "params.yaml")
    # calibration and evaluation settings are assemble's alone: no refit, no re-probe
    repo.compose("calibration=tracker", "evaluation.benchmark=rw")
    assert set(repo.status()) == {"assemble"}, repo.status()
    repo.git("checkout", "--", "params.yaml")
    before = (repo.path / "probe.json").read_bytes()
    out = repo.dvc("exp", "run", "-S", "models.lqr.alphas=[10,20]")
    # probe measures lqr's new settings; the other train stages stay skipped unless the rounded
    # plan itself moved (then they rerun too, loading every fit from the cache)
    plan_moved = (repo.path / "probe.json").read_bytes() != before
    expected = ["probe", *ALL_STAGES[2:]]
    if not plan_moved:
        expected = ["probe", "train@lqr", "assemble"]
    assert ran(out) == expected, out
    runs = repo.latest_runs()
    assert runs["lqr"] == {"trained": 3 * 6, "loaded": 0, "failed": 0}  # every lqr key changed
    if plan_moved:
        assert runs["ar_qr"]["trained"] == 0
    else:
        assert "Stage 'train@ar_qr' didn't change, skipping" in out
    # DVC did not delete the persisted fit cache before rerunning: old and new fits are there
    assert len(FitCache(repo.path / "models", "lqr").keys()) == 2 * 3 * 6
    # DVC composed params.yaml from conf/ exactly as `python -m pipeline compose` does
    composed = repo.compose("models.lqr.alphas=[10,20]", output="composed.yaml")
    assert (repo.path / "params.yaml").read_bytes() == composed
    assert yaml.safe_load(composed)["models"]["lqr"]["alphas"] == [10, 20]
    (repo.path / "composed.yaml").unlink()
    shown = json.loads(repo.run(str(BIN / "dvc"), "exp", "show", "--json").stdout)
    exps = [e for rev in shown for e in (rev.get("experiments") or [])]
    assert len(exps) == 1, shown
    data = exps[0]["revs"][0]["data"]
    assert data["params"]["params.yaml"]["data"]["models"]["lqr"]["alphas"] == [10, 20]
    # experiments compare the headline alone: pinball and coverage per model, not the probe's
    # needs (memory, fits) nor the hundreds of numbers of metrics.json
    assert list(data["metrics"]) == ["metrics_headline.json"], list(data["metrics"])
    headline = data["metrics"]["metrics_headline.json"]["data"]
    assert set(headline["pinball"]) == set(headline["coverage"]) == SCORED
    baseline = json.loads(repo.git("show", "HEAD:metrics_headline.json"))
    assert headline["pinball"]["lqr"] != baseline["pinball"]["lqr"]  # the change shows in it
    assert headline["pinball"]["ar_qr"] == baseline["pinball"]["ar_qr"]
    # `dvc metrics show`: one short row, the headline file's
    shown = repo.dvc("metrics", "show")
    assert "probe.json" not in shown and "metrics_summary.json" not in shown, shown


def test_back_to_old_alphas_refits_nothing_thanks_to_the_persisted_fit_cache(repo: Repo) -> None:
    repo.compose("models.lqr.alphas=[10,20]")
    repo.dvc("repro")  # (already done by the previous test; trains whatever is missing)
    repo.compose()  # the committed alphas again
    assert set(repo.status()) == {"probe", "train@lqr", "assemble"}
    out = repo.dvc("repro")
    assert {"probe", "train@lqr", "assemble"} <= set(ran(out)) <= set(ALL_STAGES) - {"prepare"}
    assert repo.latest_runs()["lqr"] == {"trained": 0, "loaded": 3 * 6, "failed": 0}
    # the committed forecasts and metrics come back byte for byte
    assert (
        repo.git(
            "status",
            "--porcelain",
            "--",
            "metrics.json",
            "metrics_summary.json",
            "metrics_headline.json",
            "params.yaml",
        )
        == ""
    )


def test_execution_knobs_and_another_machine_rerun_no_stage(repo: Repo) -> None:
    repo.to_baseline()
    # worker counts and RAM limits size the cluster at train time; no stage reads them
    repo.compose("runtime.max_workers=2", "runtime.max_ram_gb=8", "runtime.max_cores=2")
    assert repo.status() == {}, repo.status()
    out = repo.dvc("repro")
    assert ran(out) == [] and "Data and pipelines are up to date." in out, out
    # no stage's dependency describes the machine: nothing is always changed, no machine file
    stages = yaml.safe_load((repo.path / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        body = stage.get("do", stage)
        assert not body.get("always_changed"), name
        assert not [d for d in body.get("deps", []) if "machine" in str(d)], name
    repo.git("checkout", "--", "params.yaml")

"""Small fixed costs (issue 13, item 5): the per-user probe cache and train in the driver.

Real probe children, real files, a real LocalCluster on 127.0.0.1 for the comparison.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from builders import keeping
from conftest import ROOT, SMALL_STUDY, make_config

import pipeline.stages.probe as probe_stage
import pipeline.stages.probe_process as probe_process
from pipeline.config import StudyConfig
from pipeline.models.plugins import registry
from pipeline.models.plugins.registry import adapter_for
from pipeline.runtime.execute.inprocess import runs_in_process
from pipeline.runtime.execute.probe_child import jobs_at_once
from pipeline.runtime.fits.fit_groups import build_groups
from pipeline.runtime.fits.tasks import make_tasks
from pipeline.runtime.sizing.plan import ModelPlan, Plan
from pipeline.runtime.sizing.resources import OtherCpuMeter
from pipeline.runtime.store.fit_cache import FitCache
from pipeline.runtime.store.progress import db_path, read_table
from pipeline.stages.prepare import prepare
from pipeline.stages.train import run_train

# fan charts of one country: the chart tests are about which charts render again, and the
# other three countries' fans only multiplied each render (8 fans to 2)
ONE_FAN = {"fan_countries": ["C01"]}


def study(
    out: Path,
    keep: tuple[str, ...] = ("ar_qr",),
    start: str | None = None,
    evaluation: dict[str, Any] | None = None,
    **runtime: Any,
) -> StudyConfig:
    d = copy.deepcopy(SMALL_STUDY)
    if start is not None:
        d["rolling_window"]["start_date"] = start
    if evaluation is not None:
        d["evaluation"] = evaluation
    d["runtime"].update({"output_dir": str(out), **runtime})
    d["models"] = keeping(d["models"], *keep)  # `keep` alone, with SMALL_STUDY's settings
    config = make_config(d)
    prepare(config, ROOT)
    return config


@pytest.fixture
def child_runs(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The probe's real child processes, counted, with the models each measured (each call
    still measures, and always measures the worker baseline too)."""
    calls: list[list[str]] = []
    real = probe_stage.measure_child

    def counting(config: StudyConfig, jobs: list[Any], child: Any) -> tuple[float, dict[str, Any]]:
        calls.append([job.name for job in jobs])
        return real(config, jobs, child)

    monkeypatch.setattr(probe_stage, "measure_child", counting)
    return calls


def test_a_probe_is_reused_across_output_dirs_unless_damaged_or_reprobe(
    tmp_path: Path,
    probe_cache: Path,
    child_runs: list[list[str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="pipeline.probe")
    first = study(tmp_path / "a")
    probe_stage.run_probe(first)
    assert child_runs == [["ar_qr"]]  # one child: the worker baseline and one ar_qr task
    entries = sorted(probe_cache.glob("*.json"))
    assert len(entries) == 2 and not list(probe_cache.glob(".*.tmp"))
    assert "reused measurement" not in caplog.text

    # another output dir, same settings and task shape: nothing is measured, same DVC outputs
    second = study(tmp_path / "b")
    probe_stage.run_probe(second)
    assert len(child_runs) == 1
    assert caplog.text.count("probe: reused measurement from") == 2
    for name in ("probe.json", "probe_measurements.json"):
        assert (first.output_dir / name).read_bytes() == (second.output_dir / name).read_bytes()

    # a damaged entry is ignored with a warning and measured again (then valid again)
    model_entry = next(p for p in entries if json.loads(p.read_text())["inputs"]["kind"] == "model")
    body = json.loads(model_entry.read_text())
    body["result"]["seconds_per_fit"] *= 1000  # edited: the checksum no longer matches
    model_entry.write_text(json.dumps(body))
    baseline_entry = next(p for p in entries if p != model_entry)
    baseline_entry.write_text('{"key": "trunc')  # torn
    caplog.clear()
    third = study(tmp_path / "c")
    probe_stage.run_probe(third)
    assert child_runs[1:] == [["ar_qr"]]
    assert caplog.text.count("ignoring damaged cache entry") == 2
    fixed = json.loads(model_entry.read_text())
    assert fixed["result"]["seconds_per_fit"] < body["result"]["seconds_per_fit"] / 10

    # other task settings are another key: measured, the old entries stay
    probe_stage.run_probe(study(tmp_path / "d", task_seconds=0.25))
    assert child_runs[2:] == [["ar_qr"]]  # the baseline is reused, the ar_qr task is not
    assert len(list(probe_cache.glob("*.json"))) == 3

    # runtime.reprobe=true measures even with a valid entry, and replaces it
    caplog.clear()
    probe_stage.run_probe(study(tmp_path / "e", reprobe=True))
    assert child_runs[3:] == [["ar_qr"]] and "reused measurement" not in caplog.text
    assert len(list(probe_cache.glob("*.json"))) == 3


def test_the_probe_cache_keys_on_the_model_code() -> None:
    """A changed solver is measured again: the fingerprint hashes every file of models/ (it
    once hashed a path that did not exist, so no code change ever re-probed)."""
    import hashlib

    import pipeline.models
    from pipeline.runtime.sizing.probe_cache import code_fingerprint

    root = Path(pipeline.models.__file__).parent
    digest = hashlib.sha256()
    files = sorted(root.rglob("*.py"))
    for path in files:
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    assert root / "solvers" / "lqr.py" in files and code_fingerprint() == digest.hexdigest()


def test_an_unwritable_probe_cache_only_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache dir would be")
    monkeypatch.setenv("QPIPE_PROBE_CACHE", str(blocker / "probe"))
    config = study(tmp_path / "out")
    plan = probe_stage.run_probe(config)
    assert plan.models["ar_qr"].seconds_per_fit and (config.output_dir / "probe.json").exists()
    assert "could not cache the measurement" in caplog.text


def test_tiny_work_is_decided_from_the_probe_estimate() -> None:
    measured = ModelPlan(100, seconds_per_fit=0.01)
    assert runs_in_process(measured, 100, 5.0, None)  # 1 s of work
    assert not runs_in_process(measured, 1000, 5.0, None)  # 10 s
    assert not runs_in_process(measured, 100, 0.0, None)  # 0: off
    assert not runs_in_process(measured, 100, 5.0, "tcp://127.0.0.1:8786")  # a cluster given
    assert not runs_in_process(ModelPlan(100), 100, 5.0, None)  # not measured


def _plan(model: str, seconds_per_fit: float) -> Plan:
    return Plan(
        n_workers=2,
        memory_limit_mb=2048,
        models={model: ModelPlan(0, 8, 0, seconds_per_fit=seconds_per_fit)},
    )


def _outputs(config: StudyConfig, model: str) -> tuple[bytes, pd.DataFrame, dict[str, Any]]:
    progress = read_table(db_path(config.output_dir), "progress")
    progress = progress.sort_values(["key", "country", "horizon", "quantile"])
    cols = ["key", "country", "horizon", "quantile", "status", "forecast", "attempts"]
    entries = FitCache(config.model_cache_dir, model).verify().entries
    return (
        (config.output_dir / "train" / f"{model}.parquet").read_bytes(),
        progress[cols].reset_index(drop=True),
        entries,
    )


def test_in_process_train_equals_the_cluster_bit_for_bit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pipeline.train")
    here = study(tmp_path / "here", in_process_below_s=60.0)
    summary = run_train(here, "ar_qr", _plan("ar_qr", 0.001))  # 96 fits: 0.1 s of work
    assert summary.trained == 96 and summary.dashboard is None
    assert "in the driver, no cluster" in caplog.text
    there = study(tmp_path / "there", in_process_below_s=0.0)
    remote = run_train(there, "ar_qr", _plan("ar_qr", 0.001))
    assert remote.trained == 96 and remote.dashboard is not None  # a real LocalCluster
    a, b = _outputs(here, "ar_qr"), _outputs(there, "ar_qr")
    assert a[0] == b[0]  # train/ar_qr.parquet, byte for byte
    pd.testing.assert_frame_equal(a[1], b[1], check_exact=True)
    assert a[2].keys() == b[2].keys()
    for key, entry in a[2].items():
        for name, value in entry.items():
            np.testing.assert_array_equal(value, b[2][key][name], err_msg=f"{key} {name}")
    # resume: nothing left, nothing trained, no cluster either
    again = run_train(here, "ar_qr", _plan("ar_qr", 0.001))
    assert again.trained == 0 and again.loaded == 96 and again.n_workers == 0


def test_in_process_failures_are_isolated_recorded_and_retried_like_on_a_cluster(
    tmp_path: Path, fake_adapters: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_FAIL_COUNTRIES", "C02")
    config = study(tmp_path / "out", retries=1, in_process_below_s=60.0)
    first = run_train(config, "fake_fail", _plan("fake_fail", 0.001))
    assert first.failed == 24 and first.trained == 72 and first.dashboard is None
    table = read_table(db_path(config.output_dir), "progress")
    bad = table[table["country"] == "C02"]
    assert (bad["status"] == "failed").all() and (bad["attempts"] == 2).all()
    assert (bad["error_type"] == "ValueError").all()
    assert (table.loc[table["country"] != "C02", "status"] == "done").all()
    errors = pd.read_parquet(config.output_dir / "progress" / "errors.parquet")
    assert len(errors) == 48
    monkeypatch.delenv("FAKE_FAIL_COUNTRIES")
    second = run_train(config, "fake_fail", _plan("fake_fail", 0.001))
    assert second.trained == 24 and second.loaded == 72 and second.failed == 0


def test_ensemble_tasks_hold_one_block_each_so_every_worker_gets_one(tmp_path: Path) -> None:
    """Item 3: blocks of study origins are the key's business; tasks are one block each,
    whatever the time-based size, so >= 2 blocks keep 2 workers busy."""
    config = study(
        tmp_path / "out",
        keep=("ensemble_nn",),
        start="2015-01-01",  # 48 origins: two blocks of the adapter's default size
    )
    from pipeline.data.prepared import load_panel

    adapter = adapter_for(config, "ensemble_nn")
    groups = build_groups(load_panel(config.output_dir), config, adapter)
    assert len(groups) == 1 and groups[0].block is not None
    n_blocks = len(np.unique(groups[0].block))
    assert n_blocks >= 2
    todo = [np.arange(len(groups[0]))]
    for fits_per_task in (1, 4, 10_000):
        tasks = make_tasks(groups, todo, fits_per_task)
        assert len(tasks) == n_blocks
        assert all(len(np.unique(groups[0].block[t.index])) == 1 for t in tasks)


def test_assemble_renders_only_the_charts_whose_inputs_changed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from pipeline.stages.study import assemble_study

    caplog.set_level(logging.INFO, logger="pipeline.stages.assemble")
    config = study(tmp_path / "out", evaluation=ONE_FAN, in_process_below_s=60.0)
    run_train(config, "ar_qr", _plan("ar_qr", 0.001))
    first = assemble_study(config)
    pngs = {p: p.read_bytes() for p in first.images}
    assert len(pngs) >= 4 and "0 unchanged" in caplog.text
    caplog.clear()
    again = assemble_study(config)  # nothing changed: nothing rendered, the same bytes
    assert f"0 charts rendered, {len(pngs)} unchanged" in caplog.text
    assert {p: p.read_bytes() for p in again.images} == pngs
    # a removed or altered PNG is rendered again, byte-identical to the first render
    victim, other = sorted(pngs)[-1], sorted(pngs)[-2]
    victim.unlink()
    other.write_bytes(b"not a png")
    caplog.clear()
    assemble_study(config)
    assert f"2 charts rendered, {len(pngs) - 2} unchanged" in caplog.text
    assert victim.read_bytes() == pngs[victim] and other.read_bytes() == pngs[other]


def test_charts_of_another_png_encoding_are_rendered_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """charts.json keys on the encoder's settings: PNGs of another compression level (an
    older qpipe's, say) are not taken as current; the same level again renders nothing."""
    from pipeline.evaluation import plot_style
    from pipeline.stages.study import assemble_study

    caplog.set_level(logging.INFO, logger="pipeline.stages.assemble")
    config = study(tmp_path / "out", evaluation=ONE_FAN, in_process_below_s=60.0)
    run_train(config, "ar_qr", _plan("ar_qr", 0.001))
    monkeypatch.setattr(plot_style, "PNG_COMPRESS_LEVEL", 9)
    old = {p: p.read_bytes() for p in assemble_study(config).images}
    monkeypatch.setattr(plot_style, "PNG_COMPRESS_LEVEL", 1)
    caplog.clear()
    new = {p: p.read_bytes() for p in assemble_study(config).images}
    assert f"{len(old)} charts rendered, 0 unchanged" in caplog.text
    assert all(new[p] != old[p] for p in old)  # re-encoded, not kept
    caplog.clear()
    assemble_study(config)
    assert f"0 charts rendered, {len(old)} unchanged" in caplog.text


def test_models_are_probed_side_by_side_only_on_idle_cores() -> None:
    # (usable cores, CPUs the other processes left idle; this run's own do not count)
    assert jobs_at_once(2, 1.9) == 2  # nobody else on the machine
    assert jobs_at_once(2, 1.6) == 1  # another process holds part of a core
    assert jobs_at_once(2, 1.3) == 1
    assert jobs_at_once(2, -14.0) == 1  # a busy machine: one at a time
    assert jobs_at_once(16, 11.0) == 11
    assert jobs_at_once(8, 34.0) == 8  # a container's 8 cores on a host with 34 idle CPUs
    assert jobs_at_once(1, 2.0) == 1
    assert jobs_at_once(2, None) == 1  # unknown (no /proc/stat): one at a time


def test_the_probe_counts_only_other_processes_as_load() -> None:
    """A process's own CPU (and its reaped children's) is not load from others: the probe's
    child and its driver keep both cores busy while they import and plan."""
    import subprocess
    import sys

    mine, anyone = OtherCpuMeter([os.getpid()]), OtherCpuMeter([])
    child = subprocess.run([sys.executable, "-c", "sum(range(30_000_000))"], check=True)
    assert child.returncode == 0
    ours, all_of_it = mine.other_cpus(), anyone.other_cpus()
    assert ours is not None and all_of_it is not None and ours < all_of_it


def test_models_probed_side_by_side_give_the_same_plan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Two models measured at once or one after the other (each in its own fork, each run
    with an empty probe cache): the same probe.json (memory limit, fits per model)."""
    caplog.set_level(logging.INFO, logger="pipeline.probe")
    plans = {}
    for parallel in (1, 2):
        monkeypatch.setenv("QPIPE_PROBE_CACHE", str(tmp_path / f"cache{parallel}"))
        monkeypatch.setattr(probe_stage.ProbeChild, "parallel", parallel)
        config = study(tmp_path / f"out{parallel}", keep=("ar_qr", "lqr"))
        caplog.clear()
        plan = probe_stage.run_probe(config)
        assert f"probe: {parallel} job(s) at a time" in caplog.text
        assert sorted(plan.models) == ["ar_qr", "lqr"]
        for got in plan.models.values():
            assert got.seconds_per_fit and got.peak_mb and got.peak_mb > (plan.baseline_mb or 0)
        plans[parallel] = (config.output_dir / "probe.json").read_bytes()
    assert plans[1] == plans[2]


def test_the_probe_times_a_task_by_its_cpu_not_the_wall_clock(
    tmp_path: Path, fake_adapters: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A busy machine stretches a task's wall time, not its work, so the probe sizes tasks by
    the task's CPU seconds. The sleep stands in for the waiting a loaded machine imposes (both
    are wall time in which the model does not run): timed by wall, 50 ms of it per fit gave
    tasks of 100 fits where the work asks for thousands, and the probe cache kept that."""
    monkeypatch.setenv("QPIPE_PROBE_CACHE", str(tmp_path / "probe-cache"))
    config = study(tmp_path / "out")
    monkeypatch.setenv("FAKE_SLEEP", "0.05")
    measured = probe_stage.run_probe(config, ["fake_quantile"]).models["fake_quantile"]
    assert measured.seconds_per_fit and measured.seconds_per_fit < 0.01  # wall: >= 0.05


def test_a_probe_child_that_will_measure_starts_before_prepare_and_ends_with_the_run(
    tmp_path: Path,
    probe_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`run` with new data and no worker baseline in this machine's probe cache starts the
    probe's child before prepare (its imports overlap prepare) and the probe measures in it,
    not in a second one; with the baseline cached, a child starts only at the probe, when a
    model turns out to need measuring; a run that ends before its probe stops the early child."""
    import pipeline.stages.prepare as prepare_stage
    from pipeline.data.errors import DataError
    from pipeline.runner import run_study

    events: list[str] = []
    children: list[Any] = []
    pids: list[int] = []
    real_start, real_prepare = probe_stage.ProbeChild.start, prepare_stage.prepare

    def start(self: Any) -> None:
        if self.proc is None:
            events.append("child")
            children.append(self)
        real_start(self)
        pids.append(self.proc.pid)

    def prepare_logged(*args: Any, **kwargs: Any) -> Any:
        events.append("prepare")
        return real_prepare(*args, **kwargs)

    monkeypatch.setattr(probe_stage.ProbeChild, "start", start)
    monkeypatch.setattr(prepare_stage, "prepare", prepare_logged)

    def rw(out: Path, **runtime: Any) -> StudyConfig:
        d = copy.deepcopy(SMALL_STUDY)
        d["runtime"].update({"output_dir": str(out), "in_process_below_s": 1e9, **runtime})
        d["models"] = registry.only_entries("rw")
        d["evaluation"] = {"combo": {"enabled": False}, "mcs_reps": 20}
        return make_config(d)

    assert run_study(rw(tmp_path / "a")) == 0
    assert events == ["child", "prepare"] and probe_process._early is None
    assert children[0].proc is None  # measured in, then closed by the probe

    events.clear()  # the baseline is cached; this task shape's measurement is not
    caplog.set_level(logging.INFO, logger="pipeline.probe")
    assert run_study(rw(tmp_path / "b", task_seconds=0.25)) == 0
    assert events == ["prepare", "child"]
    assert caplog.text.count("probe: reused measurement from") == 1  # looked up early unlogged

    def bad_data(*args: Any, **kwargs: Any) -> Any:
        events.append("prepare")
        raise DataError("data.path: no usable rows (test)")

    monkeypatch.setattr(prepare_stage, "prepare", bad_data)
    monkeypatch.setenv("QPIPE_PROBE_CACHE", str(tmp_path / "empty-cache"))
    events.clear()
    with pytest.raises(DataError):
        run_study(rw(tmp_path / "c"))
    assert events == ["child", "prepare"]
    early = children[-1]
    assert early.proc is None and early._tmp is None and probe_process._early is None
    assert not Path(f"/proc/{pids[-1]}").exists()  # killed and reaped


def test_only_tasks_without_torch_start_the_probe_child_early() -> None:
    from pipeline.runtime.execute.task_imports import TASK_MODULE, imports_torch

    assert not imports_torch((TASK_MODULE, "pipeline.models.solvers.ar_qr"))
    assert imports_torch((TASK_MODULE, "pipeline.models.solvers.lqr"))
    assert imports_torch((TASK_MODULE, "pipeline.models.solvers.ensemble_nn"))
    assert imports_torch(("no_such_module_qpipe",))  # unreadable: assumed heavy


def test_the_first_run_on_a_machine_starts_the_probe_child_before_composing_its_config(
    tmp_path: Path, probe_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`run` with an empty probe cache starts the probe's child before the config is composed,
    not knowing the models yet; the probe then measures in that child (one child, with the
    models' imports). It is stopped when the config is bad (exit 2) or the tasks import torch,
    and none starts early once the cache holds a measurement."""
    from conftest import tiny_study

    import pipeline.config.compose as compose
    from pipeline.cli import main
    from pipeline.runtime.execute.task_imports import task_imports

    events: list[str] = []
    children: list[Any] = []
    real_start, real_compose = probe_stage.ProbeChild.start, compose.compose_dict

    def start(self: Any) -> None:
        if self.proc is None:
            events.append("child" if self.imports is None else "child with imports")
            children.append(self)
        real_start(self)

    def composing(*args: Any, **kwargs: Any) -> Any:
        events.append("compose")
        return real_compose(*args, **kwargs)

    monkeypatch.setattr(probe_stage.ProbeChild, "start", start)
    monkeypatch.setattr(compose, "compose_dict", composing)
    ar_qr = tiny_study(*registry.only("ar_qr"))
    assert main(["run", *ar_qr, f"runtime.output_dir={tmp_path / 'a'}"]) == 0
    assert events == ["child", "compose"] and probe_process._early is None
    assert children[0].imports and children[0].proc is None  # given its imports, measured in
    baseline = json.loads((tmp_path / "a/probe_measurements.json").read_text())
    assert baseline["baseline_mb"] > 0

    events.clear()  # the cache now holds this machine's baseline
    assert main(["run", *ar_qr, f"runtime.output_dir={tmp_path / 'b'}"]) == 0
    assert events == ["compose"]

    monkeypatch.setenv("QPIPE_PROBE_CACHE", str(tmp_path / "empty-cache"))
    events.clear()
    assert main(["run", *ar_qr, "rolling_window.size=-1", f"runtime.output_dir={tmp_path}/c"]) == 2
    assert events == ["child", "compose"] and probe_process._early is None
    assert children[-1].proc is None and children[-1]._tmp is None  # killed, its dir removed

    probe_process.start_speculative()  # then a study whose tasks import torch
    speculative = probe_process._early
    assert speculative is not None and speculative.proc is not None
    lqr = study(tmp_path / "d", keep=("lqr",))
    assert "pipeline.models.solvers.lqr" in task_imports(lqr, ["lqr"])
    probe_process.start_early(lqr, ["lqr"])
    assert probe_process._early is None and speculative.proc is None

    # a user model's python_path, put on sys.path while the config is validated, is not on
    # the speculative child's: a fresh child is started with it instead
    probe_process.start_speculative()
    speculative = probe_process._early
    assert speculative is not None
    monkeypatch.syspath_prepend(str(tmp_path / "user_models"))
    probe_process.start_early(study(tmp_path / "e"), ["ar_qr"])
    fresh = probe_process._early
    try:
        assert speculative.proc is None and fresh is not speculative
        assert fresh is not None and fresh.imports and fresh.proc is not None
    finally:
        probe_process.discard_early()

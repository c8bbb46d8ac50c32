"""The runtime end to end on real Dask (127.0.0.1), real SQLite and real parquet.

Test-only models come from tests/fake_models.py through PIPELINE_EXTRA_ADAPTERS; slow_ar_qr is
the real ar_qr slowed down by FAKE_SLEEP so a run can be stopped midway.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import psutil
import pytest
from conftest import FAKE_MODELS, NO_DASHBOARD, ROOT, SMALL_STUDY, make_config, stop_processes

from pipeline.config import StudyConfig
from pipeline.runtime.sizing.plan import (
    ROUND_MB,
    ModelPlan,
    Plan,
    ProbeError,
    load_plan,
    size_cluster,
)
from pipeline.runtime.store.fit_cache import FitCache
from pipeline.runtime.store.progress import db_path, read_table
from pipeline.stages.dry_run import dry_run
from pipeline.stages.prepare import prepare
from pipeline.stages.probe import run_probe
from pipeline.stages.train import run_train

DRIVER = """
import json, sys
from pipeline.config import validate
from pipeline.config.defaults import with_defaults
from pipeline.runtime.sizing.plan import ModelPlan, Plan
from pipeline.stages.train import run_train

if __name__ == "__main__":
    config = validate(with_defaults(json.load(open(sys.argv[1]))))
    model, fits_per_task = sys.argv[2], int(sys.argv[3])
    plan = Plan(n_workers=2, memory_limit_mb=2048, models={model: ModelPlan(0, fits_per_task, 0)})
    summary = run_train(config, model, plan)
    print(json.dumps({"trained": summary.trained, "loaded": summary.loaded, "failed": summary.failed}))
"""


def plan_for(model: str, fits_per_task: int, memory_limit_mb: int = 2048) -> Plan:
    return Plan(
        n_workers=2, memory_limit_mb=memory_limit_mb, models={model: ModelPlan(0, fits_per_task, 0)}
    )


def study(root: Path, **runtime: Any) -> StudyConfig:
    d = copy.deepcopy(SMALL_STUDY)
    d["runtime"].update({"output_dir": str(root), **runtime})
    config = make_config(d)
    prepare(config, ROOT)
    return config


def start_driver(
    tmp: Path, config: StudyConfig, model: str, fits_per_task: int, env: dict[str, str]
) -> subprocess.Popen[str]:
    (tmp / "driver.py").write_text(DRIVER)
    (tmp / "config.json").write_text(json.dumps(config.to_dict()))
    return subprocess.Popen(
        [
            sys.executable,
            str(tmp / "driver.py"),
            str(tmp / "config.json"),
            model,
            str(fits_per_task),
        ],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def done_rows(config: StudyConfig) -> int:
    path = db_path(config.output_dir)
    if not path.exists():
        return 0
    try:
        table = read_table(path, "progress")
    except Exception:  # the store is being created
        return 0
    return int((table["status"] == "done").sum())


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


def stop_tree(proc: subprocess.Popen[str], sig: int) -> list[psutil.Process]:
    """Signal the driver; return its (former) children so the caller can reap them by pid."""
    children = psutil.Process(proc.pid).children(recursive=True)
    os.kill(proc.pid, sig)
    return children


def reap(children: list[psutil.Process], timeout: float = 20.0) -> None:
    """Wait for orphaned workers (they exit once their scheduler is gone); kill any left, by pid."""
    _, alive = psutil.wait_procs(children, timeout=timeout)
    for child in alive:
        child.kill()
    psutil.wait_procs(alive, timeout=5)


def page_title(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        html = response.read().decode("utf-8", "replace")
    match = re.search(r"<title>(.*?)</title>", html, re.S)
    return match.group(1).strip() if match else ""


@pytest.fixture(scope="module")
def reference(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[StudyConfig, pd.DataFrame]]:
    """An uninterrupted slow_ar_qr run (no sleep): the forecasts every other run must equal.
    The fake adapters stay on the environment for this module's tests only (set directly, they
    leaked into every test file after this one)."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PIPELINE_EXTRA_ADAPTERS", FAKE_MODELS)
        config = study(tmp_path_factory.mktemp("reference"))
        summary = run_train(config, "slow_ar_qr", plan_for("slow_ar_qr", 4))
        assert summary.trained == summary.fits == 96 and summary.failed == 0
        yield config, pd.read_parquet(summary.path)


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(
    tmp_path: Path, reference: tuple[StudyConfig, pd.DataFrame]
) -> None:
    config = study(tmp_path / "out")
    proc = start_driver(
        tmp_path,
        config,
        "slow_ar_qr",
        4,
        {"FAKE_SLEEP": "0.25", "PIPELINE_EXTRA_ADAPTERS": FAKE_MODELS},
    )
    wait_for(lambda: done_rows(config) >= 60, 120, "a third of the fits")
    # while it runs, the dashboard answers on 127.0.0.1 with the real UI
    runs = read_table(db_path(config.output_dir), "runs")
    link = runs.loc[runs["state"] == "running", "dashboard"].iloc[0]
    assert link.startswith("http://127.0.0.1:")
    assert page_title(link) == "Dask Diagnostic UI"
    children = stop_tree(proc, signal.SIGKILL)
    proc.wait(timeout=30)
    reap(children)
    before = len(FitCache(config.model_cache_dir, "slow_ar_qr").keys())
    assert 20 <= before < 96, before  # stopped midway
    summary = run_train(config, "slow_ar_qr", plan_for("slow_ar_qr", 4))
    assert summary.loaded == before and summary.trained == 96 - before and summary.failed == 0
    runs = read_table(db_path(config.output_dir), "runs").set_index("run_id")
    assert runs.loc[summary.run_id, "trained"] == 96 - before
    assert sorted(runs["state"]) == ["finished", "killed"]
    table = read_table(db_path(config.output_dir), "progress")
    assert (table["status"] == "done").all() and len(table) == 96 * 3
    frame = pd.read_parquet(summary.path)
    assert not frame.duplicated(["COUNTRY", "HORIZON", "QUANTILE", "WINDOW_END"]).any()
    pd.testing.assert_frame_equal(frame, reference[1], check_exact=True)  # bit for bit
    assert (
        summary.path.read_bytes()
        == reference[0].output_dir.joinpath("train/slow_ar_qr.parquet").read_bytes()
    )
    # a no-op rerun trains nothing, starts no cluster and writes the same bytes
    again = run_train(config, "slow_ar_qr", plan_for("slow_ar_qr", 4))
    assert again.trained == 0 and again.loaded == 96 and again.n_workers == 0
    pd.testing.assert_frame_equal(pd.read_parquet(again.path), reference[1], check_exact=True)


def test_a_fit_failed_through_bisection_then_retried_alone_gives_the_same_bits(
    tmp_path: Path, reference: tuple[StudyConfig, pd.DataFrame], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_FAIL_ONCE_ORIGIN", str(2018 * 12 + 4))  # 2018-05
    monkeypatch.setenv("FAKE_FAIL_ONCE_MARKER", str(tmp_path / "failed-once"))
    config = study(tmp_path / "out")
    summary = run_train(config, "slow_ar_qr", plan_for("slow_ar_qr", 8))
    assert (tmp_path / "failed-once").exists() and summary.failed == 0
    errors = read_table(db_path(config.output_dir), "errors")
    assert len(set(errors["key"])) >= 1 and "injected failure" in errors["message"].iloc[0]
    pd.testing.assert_frame_equal(pd.read_parquet(summary.path), reference[1], check_exact=True)


@pytest.mark.slow
@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="mount namespaces need root and util-linux unshare (CI runs as root)",
)
def test_workers_without_the_drivers_disk_give_identical_forecasts_and_a_full_cache(
    tmp_path: Path, reference: tuple[StudyConfig, pd.DataFrame]
) -> None:
    """Two `dask worker`s, each in its own mount namespace with an empty tmpfs over the output
    dir (a cloud cluster's view): the driver alone writes the cache, so a rerun trains nothing."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    env = {
        **os.environ,
        "PIPELINE_EXTRA_ADAPTERS": FAKE_MODELS,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    dask = str(Path(sys.executable).with_name("dask"))
    config = study(tmp_path / "out", scheduler_address=address)
    out = shlex.quote(str(config.output_dir.resolve()))
    worker = (
        f'mount -t tmpfs tmpfs {out} && test -z "$(ls -A {out})" && exec {shlex.quote(dask)} '
        f"worker {address} --nthreads 1 --memory-limit 2GiB --no-dashboard --host 127.0.0.1"
    )
    scheduler = subprocess.Popen(
        [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), *NO_DASHBOARD],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    workers = [
        subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "bash", "-c", worker],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(2)
    ]
    try:
        from distributed import Client

        with Client(address, timeout=60) as client:  # both workers up before the run
            client.wait_for_workers(2, timeout=60)
        summary = run_train(config, "slow_ar_qr", plan_for("slow_ar_qr", 4))
        assert summary.trained == 96 and summary.n_workers == 2
        assert all(w.poll() is None for w in workers)  # both still up: none fell back
        pd.testing.assert_frame_equal(pd.read_parquet(summary.path), reference[1], check_exact=True)
        cache = FitCache(config.model_cache_dir, "slow_ar_qr")
        report = cache.verify()
        assert len(report.entries) == 96 and not report.damaged_keys
        again = run_train(config, "slow_ar_qr", plan_for("slow_ar_qr", 4))
        assert again.trained == 0 and again.loaded == 96 and again.n_workers == 0
        pd.testing.assert_frame_equal(pd.read_parquet(again.path), reference[1], check_exact=True)
    finally:
        stop_processes([*workers, scheduler])


def test_a_block_that_failed_once_is_retried_whole_and_gives_the_same_bits(
    tmp_path: Path, fake_adapters: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pooled model trained in fixed blocks (like ensemble_nn): the failing block is not
    bisected, its fits are retried as one block task, and the forecasts equal a clean run's."""
    clean = run_train(study(tmp_path / "clean"), "fake_block", plan_for("fake_block", 1))
    monkeypatch.setenv("FAKE_FAIL_ONCE_ORIGIN", str(2018 * 12 + 4))  # 2018-05
    monkeypatch.setenv("FAKE_FAIL_ONCE_MARKER", str(tmp_path / "failed-once"))
    config = study(tmp_path / "out", retries=1)
    summary = run_train(config, "fake_block", plan_for("fake_block", 1))
    assert (tmp_path / "failed-once").exists() and summary.failed == 0
    errors = read_table(db_path(config.output_dir), "errors")
    assert len(errors) == 4 and errors["message"].str.startswith("in its block of 4 fits").all()
    table = read_table(db_path(config.output_dir), "progress")
    # one block of the 12 fits (4 of them) took a second attempt, the rest one
    assert set(table["attempts"]) == {1, 2} and 3 * (table["attempts"] == 2).sum() == len(table)
    pd.testing.assert_frame_equal(
        pd.read_parquet(summary.path), pd.read_parquet(clean.path), check_exact=True
    )


def test_injected_failures_are_recorded_and_retried_on_the_next_run(
    tmp_path: Path, fake_adapters: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_FAIL_COUNTRIES", "C02")
    config = study(tmp_path / "out", retries=1)
    first = run_train(config, "fake_fail", plan_for("fake_fail", 8))
    assert first.failed == 24 and first.trained == 72
    table = read_table(db_path(config.output_dir), "progress")
    bad = table[table["country"] == "C02"]
    assert (bad["status"] == "failed").all() and (
        bad["attempts"] == 2
    ).all()  # one retry in the run
    assert (bad["error_type"] == "ValueError").all()
    assert (table.loc[table["country"] != "C02", "status"] == "done").all()
    errors = pd.read_parquet(config.output_dir / "progress" / "errors.parquet")
    assert (
        len(errors) == 48
        and errors["traceback"].str.contains("injected failure for \\['C02'\\]").all()
    )
    frame = pd.read_parquet(first.path)
    assert set(frame["COUNTRY"]) == {"C01", "C03", "C04"}
    monkeypatch.delenv("FAKE_FAIL_COUNTRIES")
    second = run_train(config, "fake_fail", plan_for("fake_fail", 8))
    assert second.trained == 24 and second.loaded == 72 and second.failed == 0
    table = read_table(db_path(config.output_dir), "progress")
    assert (table["status"] == "done").all()
    assert (table.loc[table["country"] == "C02", "attempts"] == 3).all()
    assert "injected" in Path(first.log_path).read_text()  # worker messages reach the run log


@pytest.mark.slow
def test_a_task_past_the_memory_limit_fails_as_memory_and_the_rest_finish(
    tmp_path: Path, fake_adapters: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_HOG_COUNTRIES", "C03")
    monkeypatch.setenv("FAKE_HOG_ORIGIN", str(2018 * 12))  # 2018-01
    monkeypatch.setenv("FAKE_HOG_MB", "1536")
    d = copy.deepcopy(SMALL_STUDY)
    d["data"]["horizons"] = [1]
    d["runtime"].update({"output_dir": str(tmp_path / "out"), "retries": 0})
    config = make_config(d)
    prepare(config, ROOT)
    summary = run_train(config, "fake_hog", plan_for("fake_hog", 2, memory_limit_mb=1024))
    assert summary.failed == 1 and summary.trained == summary.fits - 1
    table = read_table(db_path(config.output_dir), "progress")
    failed = table[table["status"] == "failed"]
    assert set(failed["country"]) == {"C03"} and set(failed["origin"]) == {"2018-01-01"}
    assert (failed["error_type"] == "memory").all()
    assert (table.loc[table["status"] != "failed", "status"] == "done").all()
    assert "memory" in Path(summary.log_path).read_text()


@pytest.mark.slow
def test_a_worker_lost_without_a_memory_event_is_labelled_worker_lost(
    tmp_path: Path, fake_adapters: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_HOG_COUNTRIES", "C03")
    monkeypatch.setenv("FAKE_HOG_ORIGIN", str(2018 * 12))
    monkeypatch.setenv("FAKE_HOG_SIGKILL", "1")
    d = copy.deepcopy(SMALL_STUDY)
    d["data"]["horizons"] = [1]
    d["runtime"].update({"output_dir": str(tmp_path / "out"), "retries": 0})
    config = make_config(d)
    prepare(config, ROOT)
    summary = run_train(config, "fake_hog", plan_for("fake_hog", 2))
    assert summary.failed == 1 and summary.trained == summary.fits - 1
    table = read_table(db_path(config.output_dir), "progress")
    failed = table[table["status"] == "failed"]
    assert set(failed["country"]) == {"C03"} and (failed["error_type"] == "worker-lost").all()


@pytest.mark.slow
def test_sigterm_stops_cleanly_and_saves_progress(tmp_path: Path) -> None:
    config = study(tmp_path / "out")
    proc = start_driver(
        tmp_path,
        config,
        "slow_ar_qr",
        2,
        {"FAKE_SLEEP": "0.2", "PIPELINE_EXTRA_ADAPTERS": FAKE_MODELS},
    )
    wait_for(lambda: done_rows(config) >= 12, 120, "some fits")
    children = stop_tree(proc, signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    reap(children)
    runs = read_table(db_path(config.output_dir), "runs")
    assert list(runs["state"]) == ["interrupted"]
    progress = read_table(db_path(config.output_dir), "progress")  # derived on read
    assert not (progress["status"] == "training").any() and (progress["status"] == "done").any()
    assert (config.output_dir / "progress" / "errors.parquet").exists()


@pytest.mark.slow
def test_probe_plans_a_memory_limit_that_holds_on_real_workers(
    tmp_path: Path, probe_cache: Path
) -> None:
    # on real workers even though the work is tiny (in_process_below_s=0)
    config = study(tmp_path / "out", max_workers=None, task_seconds=0.5, in_process_below_s=0)
    plan = run_probe(config)
    text = (config.output_dir / "probe.json").read_text()
    # the benchmarks are probed too (cheap, batched: one task holds all their fits)
    assert json.loads(text)["models"] == {
        "ar_qr": {"n_fits": 96},
        "rw": {"n_fits": 96},
        "climatology": {"n_fits": 96},
    }
    # probe.json + measurements, sized again for this machine: the same plan
    again = load_plan(config.output_dir / "probe.json", config)
    assert (again.n_workers, again.memory_limit_mb, again.baseline_mb) == (
        plan.n_workers,
        plan.memory_limit_mb,
        plan.baseline_mb,
    )
    assert again.models["ar_qr"].seconds_per_fit == plan.models["ar_qr"].seconds_per_fit
    assert again.models["ar_qr"].fits_per_task == plan.models["ar_qr"].fits_per_task
    assert "n_workers" not in json.loads(text)  # nothing about the machine's size
    assert plan.memory_limit_mb % 256 == 0
    assert plan.memory_limit_mb >= plan.baseline_mb + config.runtime.mem_probe_fudge_mb
    summary = run_train(config, "ar_qr", plan)
    assert summary.trained == 96 and summary.n_workers == plan.n_workers
    peak = read_table(db_path(config.output_dir), "progress")["peak_mb"].max()
    # the estimate, before the configured headroom, covers the real peak without wasting RAM
    # (a baseline with torch imported for models that never use it was ~170 MiB too much)
    # (limits are rounded up to ROUND_MB: a 70 MiB worker, numpy-only tasks, gets 256 + fudge)
    estimate = plan.memory_limit_mb - config.runtime.mem_probe_fudge_mb
    print(f"probe estimate {estimate} MiB / worker peak {peak:.0f} MiB = {estimate / peak:.2f}")
    assert peak < estimate <= max(3.0 * peak, ROUND_MB), (plan.memory_limit_mb, peak)
    # an unchanged rounded plan writes the same bytes (DVC does not rerun train)
    run_probe(config)
    assert (config.output_dir / "probe.json").read_text() == text
    report = dry_run(config, plan)
    assert re.search(r"ar_qr\s+96\s+96\s+0\s+0", report), report


def test_a_machine_too_small_for_one_worker_says_what_it_needs() -> None:
    config = make_config({**copy.deepcopy(SMALL_STUDY), "runtime": {"max_ram_gb": 0.5}})
    with pytest.raises(ProbeError, match=r"a worker needs 1024 MiB .* RAM budget is 512 MiB"):
        size_cluster(config, 1024, 512.0)
    assert size_cluster(config, 256, 10_000.0) == min(2, len(os.sched_getaffinity(0)))

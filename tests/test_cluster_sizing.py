"""Tasks sized for the cluster they run on (issue 18 item 7): on an existing Dask cluster
(`runtime.scheduler_address`) train sizes its tasks for the threads its scheduler reports
when those are more than the plan's workers, and forecasts do not depend on the task size
(a local run's and a resumed run's tables are byte-identical)."""

from __future__ import annotations

import copy
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import FAKE_MODELS, NO_DASHBOARD, ROOT, SMALL_STUDY, make_config, stop_processes

from pipeline.config import StudyConfig
from pipeline.data.prepared import load_panel
from pipeline.models.plugins.registry import adapter_for
from pipeline.runtime.fits.shared_plan import fit_groups
from pipeline.runtime.sizing.plan import ModelPlan, Plan, n_tasks, sizing_workers, task_size
from pipeline.runtime.store.progress import db_path, read_table
from pipeline.stages.dry_run import dry_run
from pipeline.stages.prepare import prepare
from pipeline.stages.train import run_train

THREADS = 3  # single-thread workers of the test's cluster
WORKER_ARGS = ("--nthreads", "1", "--memory-limit", "2GiB", "--no-dashboard", "--host", "127.0.0.1")


def one_worker_plan(model: str) -> Plan:
    """What a probe on a 1-core driver would give: tasks sized by time and for 1 worker."""
    return Plan(n_workers=1, memory_limit_mb=2048, models={model: ModelPlan(0)})


def study(root: Path, **runtime: Any) -> StudyConfig:
    d = copy.deepcopy(SMALL_STUDY)
    # 5 s of work per task at the default 0.05 s per fit: tasks sized by balance, not time
    d["runtime"].update(
        {"output_dir": str(root), "max_workers": None, "task_seconds": 5.0, **runtime}
    )
    config = make_config(d)
    prepare(config, ROOT)
    return config


def expected_tasks(config: StudyConfig, model: str, workers: int) -> int:
    groups = fit_groups(load_panel(config.output_dir), config, adapter_for(config, model))
    n_fits = sum(len(g) for g in groups)
    fpt = task_size(ModelPlan(0), config, n_fits, workers, adapter_for(config, model).batch_fits)
    return n_tasks(groups, fpt)


def tasks_run(config: StudyConfig, model: str) -> int:
    tasks = read_table(db_path(config.output_dir), "tasks")
    return int((tasks["model"] == model).sum())


def cluster_env() -> dict[str, str]:
    env = {
        **os.environ,
        "PIPELINE_EXTRA_ADAPTERS": FAKE_MODELS,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    env.pop("FAKE_FAIL_COUNTRIES", None)
    return env


def start(*args: str) -> subprocess.Popen[bytes]:
    """`dask <args>` on 127.0.0.1, its output dropped."""
    dask = str(Path(sys.executable).with_name("dask"))
    return subprocess.Popen(
        [dask, *args],
        env=cluster_env(),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def address() -> Iterator[str]:
    """A `dask scheduler` and THREADS single-thread `dask worker`s on 127.0.0.1, all up."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    procs = [start("scheduler", "--host", "127.0.0.1", "--port", str(port), *NO_DASHBOARD)]
    try:
        procs.extend(start("worker", address, *WORKER_ARGS) for _ in range(THREADS))
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(THREADS, timeout=90)
        yield address
    finally:
        stop_processes(procs[1:])
        stop_processes(procs[:1])


def test_the_sizing_rule() -> None:
    config = make_config(copy.deepcopy(SMALL_STUDY))  # runtime.max_workers = 2
    plan = Plan(n_workers=2, memory_limit_mb=1024)
    assert sizing_workers(config, plan) == 2  # the study's own cluster: the plan's
    assert sizing_workers(config, plan, 1) == 2  # a cluster scaling up: at least max_workers
    assert sizing_workers(config, plan, 64) == 64  # more threads connected: theirs
    d = copy.deepcopy(SMALL_STUDY)
    d["runtime"]["max_workers"] = None
    config = make_config(d)
    assert sizing_workers(config, Plan(n_workers=4, memory_limit_mb=1024), 3) == 4
    assert sizing_workers(config, Plan(n_workers=1, memory_limit_mb=1024), 3) == 3


@pytest.mark.slow
def test_an_existing_clusters_threads_size_the_tasks_and_the_forecasts_do_not_change(
    tmp_path: Path, address: str, fake_adapters: str
) -> None:
    model = "slow_ar_qr"
    local = study(tmp_path / "local")
    for_one, for_three = (expected_tasks(local, model, n) for n in (1, THREADS))
    assert for_three > for_one  # the test means something: the two sizings differ
    reference = run_train(local, model, one_worker_plan(model))
    assert reference.trained == reference.fits and tasks_run(local, model) == for_one

    remote = study(tmp_path / "remote", scheduler_address=address)
    summary = run_train(remote, model, one_worker_plan(model))
    assert summary.trained == summary.fits and summary.n_workers == THREADS
    assert tasks_run(remote, model) == for_three
    log = Path(summary.log_path).read_text()
    assert re.search(
        rf"train {model}: sized {for_three} tasks of <= \d+ fits for {THREADS} worker threads",
        log,
    )
    assert summary.path.read_bytes() == reference.path.read_bytes()  # byte for byte


@pytest.mark.slow
def test_a_resumed_run_on_an_existing_cluster_in_other_tasks_gives_the_same_bytes(
    tmp_path: Path, address: str, fake_adapters: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first run (the driver's own cluster, tasks for 1 worker) fails one country's fits;
    the second trains them on the existing cluster in tasks sized for its 3 threads; the table
    equals an uninterrupted local run's byte for byte."""
    model = "fake_fail"
    clean = run_train(study(tmp_path / "clean"), model, one_worker_plan(model))
    assert clean.failed == 0

    config = study(tmp_path / "out", retries=0)
    monkeypatch.setenv("FAKE_FAIL_COUNTRIES", "C02")  # the driver's own workers only
    first = run_train(config, model, one_worker_plan(model))
    assert first.failed == 24 and first.trained == first.fits - 24
    before = tasks_run(config, model)

    monkeypatch.delenv("FAKE_FAIL_COUNTRIES")
    resumed = replace(config, runtime=replace(config.runtime, scheduler_address=address))
    second = run_train(resumed, model, one_worker_plan(model))
    assert second.trained == 24 and second.loaded == first.fits - 24 and second.failed == 0
    log = Path(second.log_path).read_text()
    match = re.search(rf"train {model}: sized (\d+) tasks of <= (\d+) fits for {THREADS} ", log)
    assert match and tasks_run(config, model) - before == int(match[1])
    assert second.path.read_bytes() == clean.path.read_bytes()
    pd.testing.assert_frame_equal(
        pd.read_parquet(second.path), pd.read_parquet(clean.path), check_exact=True
    )


def test_a_dry_run_does_not_contact_an_existing_cluster_and_says_who_decides(
    tmp_path: Path,
) -> None:
    with socket.socket() as sock:  # a port nothing listens on: connecting would fail or hang
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = study(tmp_path / "out", scheduler_address=f"tcp://127.0.0.1:{port}")
    text = dry_run(config, one_worker_plan("ar_qr"), models=["ar_qr"])
    line = text.splitlines()[0]
    assert f"existing cluster at tcp://127.0.0.1:{port} (not contacted by a dry run)" in line
    assert "tasks below sized for 1 worker threads" in line
    assert "cluster's connected threads decide" in line
    fits_per_task = int(re.search(r"^ar_qr\s+\d+\s+\d+\s+\d+\s+\d+\s+(\d+)", text, re.M)[1])
    groups = fit_groups(load_panel(config.output_dir), config, adapter_for(config, "ar_qr"))
    n_fits = sum(len(g) for g in groups)
    batch_fits = adapter_for(config, "ar_qr").batch_fits
    assert fits_per_task == task_size(ModelPlan(0), config, n_fits, 1, batch_fits)


@pytest.mark.slow
def test_a_shared_cluster_sizes_each_model_for_the_threads_it_has_by_then(
    tmp_path: Path, address: str, fake_adapters: str
) -> None:
    """`python -m pipeline run`'s one cluster for every model: a worker that joins after the
    first model's train (a cluster scaling up) counts for the next model's tasks."""
    from distributed import Client

    from pipeline.runtime.execute.shared_cluster import SharedCluster

    config = study(tmp_path / "out", scheduler_address=address)
    with SharedCluster() as cluster:
        first = run_train(config, "slow_ar_qr", one_worker_plan("slow_ar_qr"), cluster)
        extra = start("worker", address, *WORKER_ARGS)
        try:
            with Client(address, timeout=60) as client:
                client.wait_for_workers(THREADS + 1, timeout=90)
            second = run_train(config, "fake_fail", one_worker_plan("fake_fail"), cluster)
        finally:
            stop_processes([extra])
    assert first.trained == first.fits and second.trained == second.fits
    for summary, model, threads in ((first, "slow_ar_qr", THREADS), (second, "fake_fail", 4)):
        log = Path(summary.log_path).read_text()
        tasks = expected_tasks(config, model, threads)
        assert f"train {model}: sized {tasks} tasks of" in log
        assert f"for {threads} worker threads" in log
        assert tasks_run(config, model) == tasks
    assert expected_tasks(config, "fake_fail", 4) > expected_tasks(config, "fake_fail", THREADS)

"""Issue 19: what a LocalCluster's workers run beside the study's tasks. Dask's statistical
profiler is off on them unless `runtime.worker_profiler` is true; the config reaches the worker
processes themselves (a nanny hands its worker the config it was started with). Issue 18: their
event-loop tick and system monitor run at coarser periods than Dask's defaults."""

from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import NO_PORT_8787, SMALL_STUDY, make_config

from pipeline.runtime.execute.dask.cluster import make_client


def _on_worker(dask_worker: Any) -> dict[str, Any]:
    import dask

    return {
        "profile": dask.config.get("distributed.worker.profile.enabled"),
        "profiling": "profile" in dask_worker.periodic_callbacks,
        "omp": os.environ.get("OMP_NUM_THREADS"),
        # the observers' periods (ms): the event loop's health tick, the system monitor
        "tick": dask_worker.periodic_callbacks["tick"].callback_time,
        "monitor": dask_worker.periodic_callbacks["monitor"].callback_time,
        "pid": os.getpid(),
    }


@pytest.mark.parametrize("profiler", [False, True])
def test_the_workers_profiler_follows_runtime_worker_profiler(
    tmp_path: Path, profiler: bool
) -> None:
    d = copy.deepcopy(SMALL_STUDY)
    d["runtime"].update(
        {"output_dir": str(tmp_path), "dashboard_port": 0, "worker_profiler": profiler}
    )
    with make_client(1, 1024, make_config(d).runtime) as handle:
        (got,) = handle.client.run(_on_worker).values()
    assert got["pid"] != os.getpid()  # a worker process of its own
    assert got["profile"] is profiler and got["profiling"] is profiler
    assert got["omp"] == "1"  # the rest of the workers' setup still holds
    # issue 18: an idle worker ticks every second, not every 20 ms (Dask's default), and its
    # system monitor samples every 2 s, not 0.5
    assert (got["tick"], got["monitor"]) == (1000, 2000)


def _result(payload: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    return {"pred": np.arange(payload["n"], dtype=np.float64)}


@pytest.mark.parametrize("existing", [False, True])
def test_results_come_from_own_workers_and_through_an_existing_clusters_scheduler(
    tmp_path: Path, existing: bool
) -> None:
    """Issue 18 item 7: the scheduler relayed every task's result (megabytes of forecasts) to
    the client, its largest CPU cost in train. The study's own LocalCluster gathers straight
    from its workers; on an existing cluster Dask's own setting decides (by default the
    scheduler relays: a driver may reach the scheduler and not the workers)."""
    import numpy as np
    from distributed import LocalCluster

    from pipeline.runtime.execute.dask.task_stream import TaskStream

    d = copy.deepcopy(SMALL_STUDY)
    d["runtime"].update({"output_dir": str(tmp_path), "dashboard_port": 0})
    relayed: list[Any] = []
    with contextlib.ExitStack() as stack:
        if existing:
            other = stack.enter_context(
                LocalCluster(
                    n_workers=1,
                    threads_per_worker=1,
                    host="127.0.0.1",
                    dashboard_address=None,
                    scheduler_kwargs=NO_PORT_8787,
                    processes=True,
                )
            )
            d["runtime"]["scheduler_address"] = other.scheduler_address
        handle = stack.enter_context(make_client(1, 1024, make_config(d).runtime))
        scheduler = (other if existing else handle.client.cluster).scheduler  # in-process
        relay = scheduler.handlers["gather"]

        def counted(*args: Any, **kwargs: Any) -> Any:
            relayed.append(kwargs.get("keys"))
            return relay(*args, **kwargs)

        scheduler.handlers["gather"] = counted
        stream = TaskStream(handle.client, _result)
        for i in range(3):
            stream.submit(f"t{i}", {"n": 1000 * (i + 1)})
        got = {name: result for name, result, error in stream if error is None}
        stream.close()
    assert {k: v["pred"].size for k, v in got.items()} == {"t0": 1000, "t1": 2000, "t2": 3000}
    np.testing.assert_array_equal(got["t2"]["pred"], np.arange(3000.0))
    assert len(relayed) == (3 if existing else 0)

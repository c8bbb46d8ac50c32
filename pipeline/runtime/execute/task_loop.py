"""The task loop of one model's train: size its tasks, open a cluster (or run them in the
driver), submit them with a bounded number in flight (longest first on a shared cluster) and
hand each result to the run's state (a ResultSink: train_loop.RunState) as it arrives."""

from __future__ import annotations

import logging
from collections import deque
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from pipeline.models.plugins.registry import adapter_for
from pipeline.runtime.execute.inprocess import InProcessStream, in_process_handle, runs_in_process
from pipeline.runtime.execute.stop import StopFlag
from pipeline.runtime.execute.worker import run_task
from pipeline.runtime.fits.tasks import CountryText, Task, make_tasks, task_payload
from pipeline.runtime.sizing.plan import DEFAULT_SECONDS_PER_FIT, Plan, sizing_workers, task_size
from pipeline.runtime.sizing.timeouts import task_timeout
from pipeline.runtime.store.progress import ProgressStore
from pipeline.runtime.ui.progress_bar import ProgressReporter

if TYPE_CHECKING:  # only for the types: a cluster starts only where needed
    from pipeline.config import StudyConfig
    from pipeline.runtime.execute.shared_cluster import SharedCluster
    from pipeline.runtime.fits.fit_groups import FitGroup

log = logging.getLogger("pipeline.train")


class ResultSink(Protocol):
    """The train run that takes each task's outcome (train_loop.RunState is one): this module
    is imported by that one, not the other way round."""

    config: StudyConfig
    model: str
    run_id: str
    groups: list[FitGroup]
    trained: int
    shard_block: int  # entries per checksum of the cache shards the tasks encode

    def record_result(
        self,
        task: Task,
        row: int,
        result: dict[str, Any] | None,
        error: dict[str, Any] | None,
        queue: deque[Task],
    ) -> dict[str, Any] | None: ...

    def failed_now(self) -> list[str]: ...


def run_tasks(
    state: ResultSink,
    plan: Plan,
    todo: list[np.ndarray],
    store: ProgressStore,
    cluster: SharedCluster | None = None,
    stop: StopFlag | None = None,
) -> tuple[str | None, int]:
    """Run `state`'s fits `todo` (positions per group) as tasks, on `cluster` (None: a
    cluster of this call's own) or in the driver; `stop`: a driver thread's stop request
    (pipeline/runtime/execute/stop.py), checked while it waits. Each result goes to
    `state.record_result` as it arrives. Returns the dashboard's address and the workers."""
    config, model, groups = state.config, state.model, state.groups
    rt = config.runtime
    n_todo = int(sum(t.size for t in todo))
    adapter = adapter_for(config, model)
    params = adapter.params(config)
    tasks: dict[str, Task] = {}
    rows: dict[str, int] = {}  # task name -> its row in the store's tasks table
    model_plan = plan.models.get(model)
    in_process = runs_in_process(model_plan, n_todo, rt.in_process_below_s, rt.scheduler_address)
    # the study's own cluster and the driver's child: tasks sized for the plan's workers;
    # an existing cluster: for its threads too, known only once connected (below)
    n_workers = sizing_workers(config, plan)

    def sized(workers: int) -> tuple[int, deque[Task]]:
        fpt = task_size(model_plan, config, n_todo, workers, adapter.batch_fits)
        return fpt, deque(make_tasks(groups, todo, fpt))

    opened: AbstractContextManager[Any]
    if in_process:  # the same tasks as on a cluster (sized for it), run here one by one
        fpt, queue = sized(n_workers)
        log.info(
            "train %s: %d tasks of <= %d fits in the driver, no cluster (about %.1f s of "
            "work, below runtime.in_process_below_s = %g s)",
            model,
            len(queue),
            fpt,
            n_todo * (model_plan.seconds_per_fit or 0.0) if model_plan else 0.0,
            rt.in_process_below_s,
        )
        opened = in_process_handle(stop)
    else:
        from pipeline.runtime.execute.dask.cluster import make_client

        if not rt.scheduler_address:
            fpt, queue = sized(n_workers)
            log.info(
                "train %s: %d tasks of <= %d fits on %d workers (memory limit %d MiB)",
                model,
                len(queue),
                fpt,
                n_workers,
                plan.memory_limit_mb,
            )
        opened = (
            cluster.client(n_workers, plan.memory_limit_mb, rt, stop)
            if cluster is not None
            else make_client(n_workers, plan.memory_limit_mb, rt)
        )
    with opened as handle, ProgressReporter(model, n_todo, rt.progress_bar) as bar:
        if handle.dashboard and cluster is None:  # a shared cluster says it once per run
            log.info("dashboard: %s", handle.dashboard)
        if rt.scheduler_address:  # its workers, their threads and memory limits are its own
            threads = handle.threads()
            n_workers = sizing_workers(config, plan, threads)
            fpt, queue = sized(n_workers)
            log.info(
                "train %s: sized %d tasks of <= %d fits for %d worker threads (the most "
                "of the %d threads connected to the cluster at %s, runtime.max_workers = "
                "%s and the %d workers this machine's plan would run)",
                model,
                len(queue),
                fpt,
                n_workers,
                threads,
                rt.scheduler_address,
                rt.max_workers,
                plan.n_workers,
            )
        store.update_run(state.run_id, dashboard=handle.dashboard, n_workers=handle.n_workers)
        timeout = task_timeout(rt, model, model_plan.seconds_per_fit if model_plan else None, fpt)
        stream: Any = (
            InProcessStream(run_task, timeout, plan.memory_limit_mb, stop)
            if in_process
            else _task_stream(handle, timeout, stop)
        )
        # a cluster: enough in flight for the threads its tasks were sized for (one still
        # scaling up gets them as its workers come); the driver's child runs one at a time
        limit = rt.max_in_flight or 4 * max(handle.n_workers, 1 if in_process else n_workers)
        # a task's expected seconds: on a cluster that other models share, the longest
        # tasks start first and the short ones fill the cores around them
        spf = (model_plan.seconds_per_fit if model_plan else None) or DEFAULT_SECONDS_PER_FIT

        countries: dict[int, CountryText] = {}  # per group, made at its first task

        def submit_more() -> None:
            while queue and stream.in_flight < limit:
                task = queue.popleft()
                g = groups[task.group]
                if task.group not in countries:
                    countries[task.group] = CountryText(g)
                rows[task.task_id] = store.start_task(model, task.group, task.wanted, state.run_id)
                payload = task_payload(
                    g,
                    task.index,
                    params=params,
                    quantiles=config.data.quantiles,
                    seed=config.seed,
                    extra=adapter.payload,
                    compact=True,
                    countries=countries[task.group],
                    keys=False,  # the driver binds its keys to the shard's checksums
                )
                # the worker encodes the task's cache shard; the driver writes its bytes
                payload["shard_block"] = state.shard_block
                tasks[task.task_id] = task
                stream.submit(task.task_id, payload, priority=round(1e3 * spf * task.index.size))

        submit_more()
        try:
            for name, result, error in stream:
                task, row = tasks.pop(name), rows.pop(name)
                result = state.record_result(task, row, result, error, queue)
                bar.update(
                    len(result["index"]) if result else 0,
                    state.trained,
                    len(state.failed_now()),
                    busy_s=result.get("seconds") if result else None,
                )
                submit_more()
        except BaseException:
            stream.cancel()
            raise
        finally:
            stream.close()
    return handle.dashboard, handle.n_workers


def _task_stream(handle: Any, timeout_s: float | None, stop: StopFlag | None) -> Any:
    from pipeline.runtime.execute.dask.task_stream import TaskStream

    return TaskStream(handle.client, run_task, timeout_s, stop)

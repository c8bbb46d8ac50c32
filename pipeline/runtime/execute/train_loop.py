"""The state of one `run_train` call: forecasts known so far, the task loop on the cluster,
failure bookkeeping and retries, and the forecast table at the end (split out of train.py)."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import replace
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.config import StudyConfig
from pipeline.models.plugins.registry import adapter_for
from pipeline.runtime.execute.inprocess import InProcessStream, in_process_handle, runs_in_process
from pipeline.runtime.execute.stop import StopFlag
from pipeline.runtime.execute.worker import run_task
from pipeline.runtime.fits.fit_groups import FitGroup
from pipeline.runtime.fits.forecast_rows import forecast_chunks
from pipeline.runtime.fits.tasks import Task, block_task, make_tasks, task_payload
from pipeline.runtime.sizing.plan import DEFAULT_SECONDS_PER_FIT, Plan, sizing_workers, task_size
from pipeline.runtime.sizing.timeouts import task_timeout
from pipeline.runtime.store.fit_cache import Entry, FitCache, Found
from pipeline.runtime.store.progress import ProgressStore
from pipeline.runtime.ui.progress_bar import ProgressReporter

if TYPE_CHECKING:  # only for the types: a cluster starts only where needed
    from pipeline.runtime.execute.shared_cluster import SharedCluster
    from pipeline.runtime.fits.fit_windows import Panel

log = logging.getLogger("pipeline.train")


class RunState:
    """Forecasts of every fit known so far (loaded or trained) plus the counters of this run."""

    def __init__(
        self,
        config: StudyConfig,
        model: str,
        run_id: str,
        store: ProgressStore,
        groups: list[FitGroup],
    ) -> None:
        self.config, self.model, self.run_id, self.store, self.groups = (
            config,
            model,
            run_id,
            store,
            groups,
        )
        self.n_fits = sum(len(g) for g in groups)
        Q = len(config.data.quantiles)
        # forecasts known so far, per group: pred (F, C, H, Q), alpha (F, Q), have (F,)
        self.pred = [np.full((len(g), g.rows.shape[1], len(g.horizons), Q), np.nan) for g in groups]
        self.alpha = [np.full((len(g), Q), np.nan) for g in groups]
        self.have = [np.zeros(len(g), dtype=bool) for g in groups]
        self.failed: dict[str, str] = {}
        self.trained = 0
        self.loaded = 0
        self.tries: dict[str, int] = {}
        # worker losses per task as first made (its halves and retries count against it)
        self.losses: dict[str, int] = {}
        self.root: dict[str, str] = {}
        self.cache = FitCache(config.model_cache_dir, model)

    @cached_property
    def where(self) -> dict[str, tuple[int, int]]:
        """key -> (group, position) of every fit: built on a failure's first need (a dict per
        fit costs about 150 bytes; a task's results map their keys within the task)."""
        return {str(k): (gi, i) for gi, g in enumerate(self.groups) for i, k in enumerate(g.keys)}

    # --- cache ------------------------------------------------------------------------------

    def load_cached(self, found: Found | None) -> list[np.ndarray]:
        """Take forecasts of cached fits from the cache's lookup over every group's keys in
        order (`found.index`: positions in that concatenation), columnar; record in the store
        those it does not already hold as done (a new output dir, a rebuilt store). Returns
        per group which fits came from the cache."""
        cached = [np.zeros(len(g), dtype=bool) for g in self.groups]
        if found is None or not found.index.size:
            return cached
        order = np.argsort(found.index, kind="stable")
        at = found.index[order]
        ends = np.cumsum([len(g) for g in self.groups])
        cuts = np.searchsorted(at, ends)
        known = self.store.done_mask(self.model)
        for gi, (lo, hi) in enumerate(zip(np.r_[0, cuts[:-1]], cuts, strict=True)):
            if lo == hi:
                continue
            pick = order[lo:hi]
            idx = at[lo:hi] - (ends[gi] - len(self.groups[gi]))
            self.pred[gi][idx] = found.arrays["pred"][pick]
            self.alpha[gi][idx] = found.arrays["alpha"][pick]
            self.have[gi][idx] = True
            cached[gi][idx] = True
            newly = idx[~known[gi][idx]]
            if newly.size:
                self.store.mark_loaded(
                    self.model, self.run_id, gi, newly, self.pred[gi][newly], self.alpha[gi][newly]
                )
            self.loaded += int(idx.size)
        return cached

    def known(self, key: str) -> bool:
        gi, i = self.where[key]
        return bool(self.have[gi][i])

    def failed_count(self) -> int:
        return len(self.failed_now())

    # --- training ---------------------------------------------------------------------------

    def train(
        self,
        plan: Plan,
        todo: list[np.ndarray],
        store: ProgressStore,
        cluster: SharedCluster | None = None,
        stop: StopFlag | None = None,
    ) -> tuple[str | None, int]:
        """Run the fits `todo` (positions per group) as tasks; `stop`: a driver thread's stop
        request (pipeline/runtime/execute/stop.py), checked while it waits."""
        rt = self.config.runtime
        n_todo = int(sum(t.size for t in todo))
        adapter = adapter_for(self.config, self.model)
        params = adapter.params(self.config)
        tasks: dict[str, Task] = {}
        rows: dict[str, int] = {}  # task name -> its row in the store's tasks table
        model_plan = plan.models.get(self.model)
        in_process = runs_in_process(
            model_plan, n_todo, rt.in_process_below_s, rt.scheduler_address
        )
        # the study's own cluster and the driver's child: tasks sized for the plan's workers;
        # an existing cluster: for its threads too, known only once connected (below)
        n_workers = sizing_workers(self.config, plan)

        def sized(workers: int) -> tuple[int, deque[Task]]:
            fpt = task_size(model_plan, self.config, n_todo, workers, adapter.batch_fits)
            return fpt, deque(make_tasks(self.groups, todo, fpt))

        opened: AbstractContextManager[Any]
        if in_process:  # the same tasks as on a cluster (sized for it), run here one by one
            fpt, queue = sized(n_workers)
            log.info(
                "train %s: %d tasks of <= %d fits in the driver, no cluster (about %.1f s of "
                "work, below runtime.in_process_below_s = %g s)",
                self.model,
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
                    self.model,
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
        with opened as handle, ProgressReporter(self.model, n_todo, rt.progress_bar) as bar:
            if handle.dashboard and cluster is None:  # a shared cluster says it once per run
                log.info("dashboard: %s", handle.dashboard)
            if rt.scheduler_address:  # its workers, their threads and memory limits are its own
                threads = handle.threads()
                n_workers = sizing_workers(self.config, plan, threads)
                fpt, queue = sized(n_workers)
                log.info(
                    "train %s: sized %d tasks of <= %d fits for %d worker threads (the most "
                    "of the %d threads connected to the cluster at %s, runtime.max_workers = "
                    "%s and the %d workers this machine's plan would run)",
                    self.model,
                    len(queue),
                    fpt,
                    n_workers,
                    threads,
                    rt.scheduler_address,
                    rt.max_workers,
                    plan.n_workers,
                )
            store.update_run(self.run_id, dashboard=handle.dashboard, n_workers=handle.n_workers)
            timeout = task_timeout(
                rt, self.model, model_plan.seconds_per_fit if model_plan else None, fpt
            )
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

            def submit_more() -> None:
                while queue and stream.in_flight < limit:
                    task = queue.popleft()
                    g = self.groups[task.group]
                    rows[task.task_id] = store.start_task(
                        self.model, task.group, task.wanted, self.run_id
                    )
                    payload = task_payload(
                        g,
                        task.index,
                        params=params,
                        quantiles=self.config.data.quantiles,
                        seed=self.config.seed,
                        extra=adapter.payload,
                        compact=True,
                    )
                    tasks[task.task_id] = task
                    stream.submit(
                        task.task_id, payload, priority=round(1e3 * spf * task.index.size)
                    )

            submit_more()
            try:
                for name, result, error in stream:
                    task, row = tasks.pop(name), rows.pop(name)
                    g = self.groups[task.group]
                    if result is not None and task.want is not None:
                        result = _only(result, task)  # a whole block ran for a part
                    if error is not None:
                        log.warning(
                            "task %s (%d fits) failed: %s: %s",
                            name,
                            task.wanted.size,
                            error["error_type"],
                            error["message"],
                        )
                        failures = [{"key": str(k), **error} for k in g.keys[task.wanted]]
                        # a lost worker took the whole task down: find the culprit in halves
                        lost = error["error_type"] in ("memory", "worker-lost")
                        self._failed(failures, None, task, row, queue, split=lost)
                    else:
                        self._done(result, task, row)
                        if result["failed"]:
                            self._failed(result["failed"], result, task, row, queue, split=False)
                    bar.update(
                        len(result["index"]) if result else 0,
                        self.trained,
                        len(self.failed_now()),
                        busy_s=result.get("seconds") if result else None,
                    )
                    submit_more()
            except BaseException:
                stream.cancel()
                raise
            finally:
                stream.close()
        return handle.dashboard, handle.n_workers

    def failed_now(self) -> list[str]:
        return [k for k in self.failed if not self.known(k)]

    def _done(self, result: dict[str, Any], task: Task, row: int) -> None:
        """Write the task's fits as one cache shard (the driver is the only writer), then
        record them in the progress store: a kill between the two leaves a cached fit that
        the next run loads, never a store row without its cache entry."""
        g, gi = self.groups[task.group], task.group
        # the results name the task's fits by position in its payload (task.index)
        idx = np.asarray(task.index, dtype=np.int64)[np.asarray(result["index"], dtype=np.int64)]
        pred, alpha = np.asarray(result["pred"]), np.asarray(result["alpha"])
        arrays = {
            "pred": pred,
            "alpha": alpha,
            "countries": g.countries[idx].astype(str),
            "rows": np.asarray(g.rows[idx], dtype=bool),
        }
        label = f"{self.run_id}-{task.task_id}"
        states = result["state"] if "state" in result else _stacked_states(result["states"])
        if states is not None:
            self.cache.write_stacked(g.key_bytes()[idx], {**arrays, **states}, label)
        else:  # ragged fitted states: one entry each
            entries: dict[str, Entry] = {
                str(key): {**{n: v[j] for n, v in arrays.items()}, **state}
                for j, (key, state) in enumerate(zip(g.keys[idx], result["states"], strict=True))
            }
            self.cache.write_shard(entries, label)
        if idx.size:
            self.pred[gi][idx] = pred
            self.alpha[gi][idx] = alpha
            self.have[gi][idx] = True
        if self.failed:
            for key in g.keys[idx].tolist():
                self.failed.pop(key, None)
        self.trained += int(idx.size)
        self.store.record_done(
            self.model,
            self.run_id,
            gi,
            idx,
            pred,
            alpha,
            row,
            result,
            max(int(idx.size) + len(result["failed"]), 1),
        )

    def _failed(
        self,
        failures: list[dict[str, Any]],
        result: dict[str, Any] | None,
        task: Task,
        row: int,
        queue: deque[Task],
        split: bool,
    ) -> None:
        """Record failures; queue retries: a multi-fit task lost for memory is split in halves
        (not an attempt of its fits yet), single fits are retried up to runtime.retries times.
        A task as first made may lose runtime.allowed_failures workers (halves and retries
        included); at the next loss its fits still lost or queued fail without another try."""
        root = self.root.get(task.task_id, task.task_id)
        give_up = False
        if split:  # each loss cost a worker restart: runtime.allowed_failures per root task
            self.losses[root] = self.losses.get(root, 0) + 1
            give_up = self.losses[root] > self.config.runtime.allowed_failures
            if give_up:  # its parts still queued would cost a restart each: they fail too
                for part in [t for t in queue if self.root.get(t.task_id) == root]:
                    queue.remove(part)
                    keys = self.groups[part.group].keys[part.wanted]
                    failures = failures + [{**failures[0], "key": str(k)} for k in keys]
                log.info(
                    "task %s: %d workers lost on its fits (runtime.allowed_failures = %d): "
                    "its %d fits fail without another try",
                    root,
                    self.losses[root],
                    self.config.runtime.allowed_failures,
                    len(failures),
                )
        # a blocked group's fits train in whole blocks only, so such a task is not split
        if split and not give_up and task.index.size > 1 and self.groups[task.group].block is None:
            for n, part in enumerate(np.array_split(task.index, 2)):
                tid = f"{task.task_id}-s{n}"
                self.root[tid] = root
                queue.append(Task(task.model, task.horizon, task.group, part, tid))
            log.info(
                "task %s lost with its worker: retrying its %d fits in halves",
                task.task_id,
                task.index.size,
            )
            return
        fits = np.array([self.where[f["key"]][1] for f in failures], dtype=np.int64)
        self.store.record_failed(self.model, self.run_id, task.group, fits, failures, row, result)
        retry: list[str] = []
        for f in failures:
            key = f["key"]
            self.failed[key] = f["error_type"]
            self.tries[key] = self.tries.get(key, 0) + 1
            if self.tries[key] <= self.config.runtime.retries and not give_up:
                retry.append(key)
        blocks: dict[tuple[int, int], Task] = {}  # a block's retried fits share one task
        for key in retry:
            gi, i = self.where[key]
            tid = f"{task.task_id}-r{self.tries[key]}-{key[:12]}"
            self.root[tid] = root
            block = self.groups[gi].block
            if block is None:
                queue.append(block_task(self.groups, task, gi, i, tid))
                continue
            mate = blocks.get((gi, int(block[i])))
            blocks[(gi, int(block[i]))] = (
                block_task(self.groups, task, gi, i, tid)
                if mate is None
                else replace(mate, want=np.append(mate.wanted, i))
            )
        queue.extend(blocks.values())
        if retry:
            log.info("retrying %d failed fits of task %s one by one", len(retry), task.task_id)

    # --- output -----------------------------------------------------------------------------

    def forecast_chunks(self, panel: Panel) -> Iterator[Any]:
        """The forecast table of every fit known (schema order, deterministic sort), as Arrow
        tables of at most a million rows (runtime/fits/forecast_rows.py)."""
        return forecast_chunks(
            self.groups, self.pred, self.alpha, self.have, self.config, self.model, panel
        )


def _stacked_states(states: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray] | None:
    """The fits' fitted states stacked per name; None when they do not stack (names, dtypes
    or shapes differ between fits)."""
    if not any(states):  # no model state (rw, climatology): nothing to check per fit
        return {}
    names = sorted(states[0])
    if any(len(s) != len(names) for s in states):
        return None
    out = {}
    for name in names:
        values = [s.get(name) for s in states]
        if any(v is None for v in values):
            return None
        if len({(np.asarray(v).dtype.str, np.asarray(v).shape) for v in values}) != 1:
            return None
        out[name] = np.stack([np.asarray(v) for v in values])
    return out


def _task_stream(handle: Any, timeout_s: float | None, stop: StopFlag | None) -> Any:
    from pipeline.runtime.execute.dask.task_stream import TaskStream

    return TaskStream(handle.client, run_task, timeout_s, stop)


def _only(result: dict[str, Any], task: Task) -> dict[str, Any]:
    """The part of a task's result about its wanted fits (the rest of its block is known)."""
    index = np.asarray(result["index"], dtype=np.int64)
    pick = np.nonzero(np.isin(task.index[index], task.wanted))[0]
    part = {
        **result,
        "index": index[pick],
        "pred": result["pred"][pick],
        "alpha": result["alpha"][pick],
        "failed": [f for f in result["failed"] if task.index[f["index"]] in task.wanted],
    }
    if "state" in result:
        part["state"] = {n: v[pick] for n, v in result["state"].items()}
    else:
        part["states"] = [result["states"][j] for j in pick.tolist()]
    return part

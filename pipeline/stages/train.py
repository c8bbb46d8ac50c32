"""`train`: run every fit of one model on a Dask cluster; resumable, failure-isolated, logged.

Flow: build the model's fits and content keys from the prepared panel -> sync the progress
store -> load every fit already in the model cache -> stream the rest as batched tasks to the
cluster (bounded in flight, completion order) -> record results as they arrive (workers wrote
the cache files atomically before returning) -> write `train/{model}.parquet` from the cache
and the store -> export the progress parquet files.

A fit that raises is failed with its traceback and retried up to `runtime.retries` times
(alone); a task whose worker was killed for memory is failed as "memory" and retried in
halves. Ctrl-C / SIGTERM stop cleanly: in-flight fits go back to pending, progress is
exported, and `TrainInterrupted` (a SystemExit with code 130/143) is raised.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.adapters import cache_path, get_adapter, run_task
from pipeline.config import StudyConfig
from pipeline.io import read_npz, write_parquet
from pipeline.logs import ProgressReporter, RunLog, new_run_id
from pipeline.progress import ProgressStore, db_path
from pipeline.stages.probe import DEFAULT_SECONDS_PER_FIT, PROBE_FILE, Plan, default_plan, load_plan
from pipeline.tasks import (
    FitGroup,
    Task,
    batched_fits_per_task,
    build_groups,
    choose_fits_per_task,
    forecast_table,
    make_tasks,
    task_payload,
)
from pipeline.windows import month_start

log = logging.getLogger("pipeline.train")
TRAIN_DIR = Path("train")


class TrainInterrupted(SystemExit):
    """Raised after a clean stop on SIGINT (code 130) or SIGTERM (code 143)."""


@dataclass(frozen=True)
class TrainSummary:
    model: str
    run_id: str
    fits: int  # fits in this study
    trained: int  # fits trained successfully in this run
    loaded: int  # fits reused from the model cache
    failed: int  # fits failed after all retries
    seconds: float
    path: Path  # train/{model}.parquet
    log_path: Path
    dashboard: str | None
    n_workers: int  # 0 when nothing had to be trained


def train_path(config: StudyConfig, model: str) -> Path:
    return config.output_dir / TRAIN_DIR / f"{model}.parquet"


def resolve_plan(config: StudyConfig, groups: dict[str, list[FitGroup]], plan: Plan | None) -> Plan:
    if plan is not None:
        return plan
    probe = config.output_dir / PROBE_FILE
    return load_plan(probe) if probe.exists() else default_plan(config, groups)


def cached_mask(config: StudyConfig, groups: list[FitGroup]) -> list[np.ndarray]:
    """Per group: which fits have a file in the model cache."""
    cache = config.model_cache_dir
    return [
        np.array([cache_path(cache, g.model, k).exists() for k in g.keys], dtype=bool)
        for g in groups
    ]


def run_train(config: StudyConfig, model: str, plan: Plan | None = None) -> TrainSummary:
    """Train (or reload) every fit of `model`; write train/{model}.parquet; return a summary."""
    from pipeline.stages.prepare import load_panel

    t0 = time.perf_counter()
    adapter = get_adapter(model)
    run_id = new_run_id(f"train-{model}")
    out = config.output_dir
    with RunLog(out, run_id) as run_log, ProgressStore(db_path(out)) as store:
        store.start_run(run_id, model, os.getpid(), str(run_log.path))
        panel = load_panel(out)
        groups = build_groups(panel, config, adapter)
        store.sync_rows(model, _progress_rows(groups, config.data.quantiles), run_id)
        store.reset_training(model, run_id)
        rt = config.runtime
        reuse = rt.allow_reload and not rt.retrain_if_exists
        cached = cached_mask(config, groups) if reuse else [np.zeros(len(g), bool) for g in groups]
        state = _RunState(config, model, run_id, store, groups)
        state.load_cached(cached)
        todo = [np.nonzero(~c)[0] for c in cached]
        n_todo = int(sum(t.size for t in todo))
        log.info(
            "train %s: %d fits, %d in cache, %d to train", model, state.n_fits, state.loaded, n_todo
        )
        dashboard, n_workers, status = None, 0, "finished"
        try:
            with _stop_on_signals():
                if n_todo:
                    plan = resolve_plan(config, {model: groups}, plan)
                    dashboard, n_workers = state.train(plan, todo, store)
        except _Stop as stop:
            status = "interrupted"
            log.warning("train %s interrupted (%s): progress saved", model, stop.name)
            store.reset_training(model, run_id)
            _finish(store, run_id, out, status, state)
            raise TrainInterrupted(stop.code) from None
        except BaseException:
            store.reset_training(model, run_id)
            _finish(store, run_id, out, "failed", state)
            raise
        frame = state.forecast_frame(panel)
        write_parquet(train_path(config, model), frame)
        _finish(store, run_id, out, status, state)
        seconds = time.perf_counter() - t0
        log.info(
            "train %s: %d trained, %d loaded, %d failed in %.1f s",
            model,
            state.trained,
            state.loaded,
            state.failed_count(),
            seconds,
        )
        return TrainSummary(
            model,
            run_id,
            state.n_fits,
            state.trained,
            state.loaded,
            state.failed_count(),
            seconds,
            train_path(config, model),
            run_log.path,
            dashboard,
            n_workers,
        )


def _finish(store: ProgressStore, run_id: str, out: Path, status: str, state: _RunState) -> None:
    store.update_run(
        run_id,
        finished=time.time(),
        state=status,
        fits=state.n_fits,
        trained=state.trained,
        loaded=state.loaded,
        failed=state.failed_count(),
    )
    store.export(out)


def _progress_rows(
    groups: list[FitGroup], quantiles: tuple[float, ...]
) -> list[tuple[str, float, int, str, str]]:
    rows = []
    for g in groups:
        for i, key in enumerate(g.keys):
            origin = month_start(int(g.origin[i])).strftime("%Y-%m-%d")
            for country in g.countries[i][g.rows[i]]:
                for h in g.horizons:
                    rows.extend(
                        (str(country), float(q), int(h), origin, str(key)) for q in quantiles
                    )
    return rows


class _RunState:
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
        self.where = {str(k): (gi, i) for gi, g in enumerate(groups) for i, k in enumerate(g.keys)}
        self.n_fits = len(self.where)
        self.pred: dict[
            str, tuple[np.ndarray, np.ndarray]
        ] = {}  # key -> (pred (C,H,Q), alpha (Q,))
        self.failed: dict[str, str] = {}
        self.trained = 0
        self.loaded = 0
        self.tries: dict[str, int] = {}

    # --- cache ------------------------------------------------------------------------------

    def load_cached(self, cached: list[np.ndarray]) -> None:
        """Take forecasts of cached fits from the store (fast path) or the npz file."""
        known = self.store.done_forecasts(self.model)
        Q = len(self.config.data.quantiles)
        qpos = {float(q): j for j, q in enumerate(self.config.data.quantiles)}
        newly: list[tuple[str, str, int, float, float, float | None]] = []
        for gi, g in enumerate(self.groups):
            hpos = {int(h): j for j, h in enumerate(g.horizons)}
            for i in np.nonzero(cached[gi])[0]:
                key = str(g.keys[i])
                countries = g.countries[i]
                rows = known.get(key)
                if rows is not None and len(rows) == int(g.rows[i].sum()) * len(g.horizons) * Q:
                    pred = np.full((len(countries), len(g.horizons), Q), np.nan)
                    alpha = np.full(Q, np.nan)
                    cpos = {str(c): j for j, c in enumerate(countries)}
                    for country, h, q, f, a in rows:
                        pred[cpos[country], hpos[int(h)], qpos[float(q)]] = f
                        alpha[qpos[float(q)]] = np.nan if a is None else a
                    self.pred[key] = (pred, alpha)
                else:
                    arrays = read_npz(cache_path(self.config.model_cache_dir, self.model, key))
                    self.pred[key] = (arrays["pred"], arrays["alpha"])
                    newly.extend(self._rows(key, *self.pred[key]))
                self.loaded += 1
        if newly:
            self.store.mark_loaded(self.model, self.run_id, newly)

    def _rows(
        self, key: str, pred: np.ndarray, alpha: np.ndarray
    ) -> list[tuple[str, str, int, float, float, float | None]]:
        """Progress rows (key, country, horizon, quantile, forecast, alpha) of one fit."""
        gi, i = self.where[key]
        g = self.groups[gi]
        out = []
        for j in np.nonzero(g.rows[i])[0]:
            for hi, h in enumerate(g.horizons):
                for qi, q in enumerate(self.config.data.quantiles):
                    a = float(alpha[qi])
                    out.append(
                        (
                            key,
                            str(g.countries[i][j]),
                            int(h),
                            float(q),
                            float(pred[j, hi, qi]),
                            None if np.isnan(a) else a,
                        )
                    )
        return out

    def failed_count(self) -> int:
        return len([k for k in self.failed if k not in self.pred])

    # --- training ---------------------------------------------------------------------------

    def train(
        self, plan: Plan, todo: list[np.ndarray], store: ProgressStore
    ) -> tuple[str | None, int]:
        from pipeline.cluster import TaskStream, make_client

        rt = self.config.runtime
        n_workers = rt.max_workers or plan.n_workers
        n_todo = int(sum(t.size for t in todo))
        mplan = plan.models.get(self.model)
        # the plan sizes tasks by time; a small remainder (a resumed run) is split evenly enough
        # that every worker gets a few tasks
        spf = mplan.seconds_per_fit if mplan is not None and mplan.seconds_per_fit else None
        fpt = choose_fits_per_task(
            spf or DEFAULT_SECONDS_PER_FIT, rt.task_seconds, n_todo, n_workers
        )
        if mplan is not None and mplan.fits_per_task:
            fpt = min(fpt, mplan.fits_per_task)
        fpt = batched_fits_per_task(fpt, n_todo, n_workers, get_adapter(self.model).batch_fits)
        queue: deque[Task] = deque(make_tasks(self.groups, todo, fpt))
        params = get_adapter(self.model).params(self.config)
        cache_dir = str(self.config.model_cache_dir.resolve())
        log.info(
            "train %s: %d tasks of <= %d fits on %d workers (memory limit %d MiB)",
            self.model,
            len(queue),
            fpt,
            n_workers,
            plan.memory_limit_mb,
        )
        tasks: dict[str, Task] = {}
        with (
            make_client(n_workers, plan.memory_limit_mb, rt) as handle,
            ProgressReporter(self.model, n_todo, rt.progress_bar) as bar,
        ):
            if handle.dashboard:
                log.info("dashboard: %s", handle.dashboard)
                print(f"Dask dashboard: {handle.dashboard}", file=sys.stderr, flush=True)
            store.update_run(self.run_id, dashboard=handle.dashboard, n_workers=handle.n_workers)
            stream = TaskStream(handle.client, run_task)
            limit = rt.max_in_flight or 4 * max(handle.n_workers, 1)

            def submit_more() -> None:
                while queue and stream.in_flight < limit:
                    task = queue.popleft()
                    g = self.groups[task.group]
                    keys = [str(k) for k in g.keys[task.index]]
                    store.set_status(self.model, keys, "training", self.run_id, started=time.time())
                    payload = task_payload(
                        g,
                        task.index,
                        params=params,
                        quantiles=self.config.data.quantiles,
                        seed=self.config.seed,
                        cache_dir=cache_dir,
                    )
                    tasks[task.task_id] = task
                    stream.submit(task.task_id, payload)

            submit_more()
            try:
                for name, result, error in stream:
                    task = tasks.pop(name)
                    g = self.groups[task.group]
                    keys = [str(k) for k in g.keys[task.index]]
                    if error is not None:
                        log.warning(
                            "task %s (%d fits) failed: %s: %s",
                            name,
                            len(keys),
                            error["error_type"],
                            error["message"],
                        )
                        failures = [{"key": k, **error} for k in keys]
                        self._failed(
                            failures, None, task, queue, split=error["error_type"] == "memory"
                        )
                    else:
                        self._done(result)
                        if result["failed"]:
                            self._failed(result["failed"], result, task, queue, split=False)
                    bar.update(
                        len(result["keys"]) if result else 0, self.trained, len(self.failed_now())
                    )
                    submit_more()
            except BaseException:
                stream.cancel()
                raise
        return handle.dashboard, handle.n_workers

    def failed_now(self) -> list[str]:
        return [k for k in self.failed if k not in self.pred]

    def _done(self, result: dict[str, Any]) -> None:
        rows = []
        for j, key in enumerate(result["keys"]):
            self.pred[key] = (result["pred"][j], result["alpha"][j])
            self.failed.pop(key, None)
            rows.extend(self._rows(key, *self.pred[key]))
        self.trained += len(result["keys"])
        self.store.record_done(
            self.model,
            self.run_id,
            rows,
            result,
            max(len(result["keys"]) + len(result["failed"]), 1),
        )

    def _failed(
        self,
        failures: list[dict[str, Any]],
        result: dict[str, Any] | None,
        task: Task,
        queue: deque[Task],
        split: bool,
    ) -> None:
        """Record failures; queue retries: a multi-fit task lost for memory is split in halves
        (not an attempt of its fits yet), single fits are retried up to runtime.retries times."""
        if split and task.index.size > 1:
            for n, part in enumerate(np.array_split(task.index, 2)):
                queue.append(
                    Task(task.model, task.horizon, task.group, part, f"{task.task_id}-s{n}")
                )
            log.info(
                "task %s lost for memory: retrying its %d fits in halves",
                task.task_id,
                task.index.size,
            )
            return
        self.store.record_failed(self.model, self.run_id, failures, result)
        retry: list[str] = []
        for f in failures:
            key = f["key"]
            self.failed[key] = f["error_type"]
            self.tries[key] = self.tries.get(key, 0) + 1
            if self.tries[key] <= self.config.runtime.retries:
                retry.append(key)
        for key in retry:
            gi, i = self.where[key]
            queue.append(
                Task(
                    task.model,
                    task.horizon,
                    gi,
                    np.array([i]),
                    f"{task.task_id}-r{self.tries[key]}-{key[:12]}",
                )
            )
        if retry:
            log.info("retrying %d failed fits of task %s one by one", len(retry), task.task_id)

    # --- output -----------------------------------------------------------------------------

    def forecast_frame(self, panel: pd.DataFrame) -> pd.DataFrame:
        """The forecast table of every fit known (schema order, deterministic sort)."""
        return forecast_table(self.groups, self.where, self.pred, self.config, self.model, panel)


# --- signals and the progress bar -------------------------------------------------------------


class _Stop(BaseException):
    def __init__(self, name: str, code: int) -> None:
        super().__init__(name)
        self.name, self.code = name, code


class _stop_on_signals:
    """Turn SIGINT/SIGTERM into _Stop in the main thread (elsewhere: leave handlers alone)."""

    def __enter__(self) -> None:
        self.saved: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
            self.saved[sig] = signal.signal(sig, lambda s, f, c=code: _raise_stop(s, c))

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)


def _raise_stop(sig: int, code: int) -> None:
    raise _Stop(signal.Signals(sig).name, code)

"""`train`: run every fit of one model on a Dask cluster; resumable, failure-isolated, logged.

Flow: build the model's fits and content keys from the prepared panel -> sync the progress
store (its fits as arrays, one event per task) -> load every fit already in the model cache -> stream the rest as batched tasks to the
cluster (bounded in flight, completion order) -> record results as they arrive (each task's fits
as one checksummed cache shard, pipeline/runtime/store/fit_cache.py: encoded by the worker that ran
the task, written by the driver) -> write `train/{model}.parquet` from the cache
and the store -> export the progress store's errors (progress/errors.parquet).

A fit that raises is failed with its traceback and retried up to `runtime.retries` times
(alone); a task whose worker was killed for memory is failed as "memory" and retried in
halves. Ctrl-C / SIGTERM stop cleanly: in-flight fits go back to pending, progress is
exported, and `TrainInterrupted` (a SystemExit with code 130/143) is raised. A train run in a
driver thread of its own (`python -m pipeline run`: pipeline/stages/train_lanes.py) stops the
same way when its `stop` flag is set.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.config import StudyConfig
from pipeline.io import write_parquet_tables
from pipeline.models.plugins.registry import adapter_for
from pipeline.runtime.execute.stop import StopFlag, Stopped, on_stop_signals
from pipeline.runtime.fits.fit_groups import FitGroup, plan_columns
from pipeline.runtime.fits.forecast_rows import TABLE_OPTIONS, written_schema
from pipeline.runtime.fits.keys import hex_keys
from pipeline.runtime.fits.shared_plan import fit_groups
from pipeline.runtime.sizing.plan import Plan, resolve_plan
from pipeline.runtime.sizing.resources import release_free_memory
from pipeline.runtime.store.fit_cache import FitCache
from pipeline.runtime.store.progress import ProgressStore, db_path
from pipeline.runtime.ui.logs import RunLog, new_run_id
from pipeline.schema import Y_RAW

if TYPE_CHECKING:  # only for the types: a cluster starts only where needed
    from pipeline.runtime.execute.shared_cluster import SharedCluster
    from pipeline.runtime.execute.train_loop import RunState


log = logging.getLogger("pipeline.train")
TRAIN_DIR = Path("train")
# models training side by side export the one progress store's errors in turn
_EXPORTING = threading.Lock()


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


def cached_mask(config: StudyConfig, groups: list[FitGroup]) -> list[np.ndarray]:
    """Per group: which fits the model cache's shard indexes list (checksums not read)."""
    known: dict[str, set[str]] = {}
    for g in groups:
        if g.model not in known:
            known[g.model] = FitCache(config.model_cache_dir, g.model).keys()
    return [np.array([k in known[g.model] for k in g.keys], dtype=bool) for g in groups]


def run_train(
    config: StudyConfig,
    model: str,
    plan: Plan | None = None,
    cluster: SharedCluster | None = None,
    stop: StopFlag | None = None,
) -> TrainSummary:
    """Train (or reload) every fit of `model`; write train/{model}.parquet; return a summary.

    `cluster`: a pipeline.runtime.execute.shared_cluster.SharedCluster to run on (kept open for the next model);
    None starts a cluster for this call alone (only when there are fits to train).
    `stop`: set by the main thread when this call runs in a driver thread of its own (signals
    reach only the main thread); it stops this train as SIGINT/SIGTERM would.
    """
    from pipeline.data.prepared import load_panel_columns
    from pipeline.runtime.execute.train_loop import RunState  # train_path's callers need none

    t0 = time.perf_counter()
    adapter = adapter_for(config, model)
    run_id = new_run_id(f"train-{model}")
    out = config.output_dir
    with RunLog(out, run_id) as run_log, ProgressStore(db_path(out)) as store:
        store.start_run(run_id, model, os.getpid(), str(run_log.path))
        # what the plan and the table's actuals read of it, not the other models' columns
        panel = load_panel_columns(out, [*plan_columns(config, adapter), Y_RAW])
        groups = fit_groups(panel, config, adapter)
        if model in config.models.user_models():  # before any cluster starts
            from pipeline.runtime.execute.model_check import check_user_model

            check_user_model(config, model, groups)
        store.sync(model, groups, config.data.quantiles, run_id)
        rt = config.runtime
        reuse = rt.allow_reload and not rt.retrain_if_exists
        state = RunState(config, model, run_id, store, groups)
        state.cache.remove_orphans()
        found = None
        if reuse and state.cache.has_shards():  # a fresh cache: no key to look up
            wanted = np.concatenate([g.key_bytes() for g in groups] or [np.zeros(0, "S32")])
            found = state.cache.lookup(wanted, keep=("pred", "alpha"))
            if found.damaged.size:
                log.warning(
                    "train %s: %d damaged cache entries will be refit: %s",
                    model,
                    found.damaged.size,
                    ", ".join(k[:12] for k in hex_keys(wanted[found.damaged[:20]])),
                )
        cached = state.load_cached(found)
        todo = [np.nonzero(~c)[0] for c in cached]
        n_todo = int(sum(t.size for t in todo))
        log.info(
            "train %s: %d fits, %d in cache, %d to train", model, state.n_fits, state.loaded, n_todo
        )
        dashboard, n_workers, status = None, 0, "finished"
        try:
            with on_stop_signals(_raise_stopped):
                if stop is not None:
                    stop.check()
                if n_todo:
                    plan = resolve_plan(config, {model: groups}, plan)
                    # the groups' and the sync's temporaries: the task loop's results arrive in
                    # the Dask comms threads' own arenas, which would not reuse them
                    release_free_memory()
                    dashboard, n_workers = state.train(plan, todo, store, cluster, stop)
        except Stopped as stopped:
            status = "interrupted"
            log.warning("train %s interrupted (%s): progress saved", model, stopped.name)
            _finish(store, run_id, out, status, state)
            raise TrainInterrupted(stopped.code) from None
        except BaseException:
            _finish(store, run_id, out, "failed", state)
            raise
        # what the task loop freed (results and payloads, much of it in the Dask comms
        # threads' own malloc arenas, which the table's build on this thread would not reuse)
        release_free_memory()
        # an unchanged table keeps its file and mtime: assemble, which reads it, stays skipped
        write_parquet_tables(
            train_path(config, model),
            written_schema(),
            state.forecast_chunks(panel, encoded=True),
            keep_same=True,
            options=TABLE_OPTIONS,
        )
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


def _finish(store: ProgressStore, run_id: str, out: Path, status: str, state: RunState) -> None:
    """Record the run's end and export its errors (the per-row view is derived on read). A
    stopped or failed run folds its events into the store's snapshot now (its fits still
    'training' go back to pending); a finished run has none training and leaves its events
    (one per task, read as the snapshot's changes) to the next run's `sync`, which folds
    them anyway: compacting here rewrote every forecast of the run once more."""
    if status != "finished":
        store.compact(state.model)
    store.update_run(
        run_id,
        finished=time.time(),
        state=status,
        fits=state.n_fits,
        trained=state.trained,
        loaded=state.loaded,
        failed=state.failed_count(),
    )
    with _EXPORTING:
        store.export_errors(out)


# --- signals and the progress bar -------------------------------------------------------------


def _raise_stopped(name: str, code: int) -> None:
    raise Stopped(name, code)

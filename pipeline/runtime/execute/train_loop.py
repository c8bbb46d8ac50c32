"""The state of one `run_train` call: forecasts known so far (loaded from the cache or trained),
each task's result recorded as it arrives (a cache shard, then the progress store), and the
forecast table at the end. The task loop is task_loop.py; failures and retries, retries.py."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.config import StudyConfig
from pipeline.runtime.execute.retries import Retries
from pipeline.runtime.execute.stop import StopFlag
from pipeline.runtime.execute.task_loop import run_tasks
from pipeline.runtime.execute.worker import shard_arrays
from pipeline.runtime.fits.fit_groups import FitGroup
from pipeline.runtime.fits.forecast_rows import table_chunks
from pipeline.runtime.fits.kept_forecasts import KeptForecasts
from pipeline.runtime.fits.tasks import Task
from pipeline.runtime.sizing.plan import Plan
from pipeline.runtime.store.fit_cache import Entry, FitCache, Found
from pipeline.runtime.store.progress import ProgressStore

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
        # forecasts known so far: each result's and the cache lookup's arrays as they came,
        # not copied into arrays of every fit (kept.have: per group, which fits are known)
        self.kept = KeptForecasts(
            [(len(g), g.rows.shape[1], len(g.horizons)) for g in groups],
            len(config.data.quantiles),
        )
        self.retries = Retries()
        self.trained = 0
        self.loaded = 0
        self.cache = FitCache(config.model_cache_dir, model)
        self.shard_block = self.cache.block  # entries per checksum of the shards workers encode

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
            # the lookup's arrays themselves, each fit at its row there
            pred, alpha = found.arrays["pred"], found.arrays["alpha"]
            self.kept.add(gi, idx, pred, alpha, rows=pick)
            cached[gi][idx] = True
            new = ~known[gi][idx]
            if new.any():
                newly = pick[new]
                self.store.mark_loaded(
                    self.model, self.run_id, gi, idx[new], pred[newly], alpha[newly]
                )
            self.loaded += int(idx.size)
        return cached

    def known(self, key: str) -> bool:
        gi, i = self.where[key]
        return bool(self.kept.have[gi][i])

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
        """Run the fits `todo` (positions per group) as tasks (task_loop.run_tasks); `stop`: a
        driver thread's stop request (pipeline/runtime/execute/stop.py), checked while it
        waits. Returns the dashboard's address and the workers."""
        return run_tasks(self, plan, todo, store, cluster, stop)

    # --- results ----------------------------------------------------------------------------

    def record_result(
        self,
        task: Task,
        row: int,
        result: dict[str, Any] | None,
        error: dict[str, Any] | None,
        queue: deque[Task],
    ) -> dict[str, Any] | None:
        """Record one task's outcome: its fits into the cache and the store, its failures
        (retries queued on `queue`). Returns the result about the task's wanted fits."""
        g = self.groups[task.group]
        if result is not None:
            result = shard_arrays(result)  # pred and alpha from a worker's shard
            result = _keyed_failures(result, g, task)
        if result is not None and task.want is not None:
            result = _only(result, task)  # a whole block ran for a part
        if error is not None:
            log.warning(
                "task %s (%d fits) failed: %s: %s",
                task.task_id,
                task.wanted.size,
                error["error_type"],
                error["message"],
            )
            failures = [{"key": str(k), **error} for k in g.keys[task.wanted]]
            # a lost worker took the whole task down: find the culprit in halves
            lost = error["error_type"] in ("memory", "worker-lost")
            self.retries.record(self, failures, None, task, row, queue, split=lost)
        else:
            assert result is not None  # a stream gives a result or an error
            self._done(result, task, row)
            if result["failed"]:
                self.retries.record(self, result["failed"], result, task, row, queue, split=False)
        return result

    @property
    def failed(self) -> dict[str, str]:
        """key -> error type of every fit failed so far (a later success removes it)."""
        return self.retries.failed

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
        label = f"{self.run_id}-{task.task_id}"
        shard = result.get("shard")
        if shard is not None:  # encoded by the worker (worker.shard_bytes): written here
            self.cache.write_encoded(g.key_bytes()[idx], shard, label)
        else:
            self._write_shard(g, idx, result, label)
        self.kept.add(gi, idx, pred, alpha)  # kept as they came: no copy
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

    def _write_shard(
        self, g: FitGroup, idx: np.ndarray, result: dict[str, Any], label: str
    ) -> None:
        """The task's fits as one cache shard, encoded here (a result without a worker's)."""
        arrays = {
            "pred": np.asarray(result["pred"]),
            "alpha": np.asarray(result["alpha"]),
            "countries": g.countries[idx].astype(str),
            "rows": np.asarray(g.rows[idx], dtype=bool),
        }
        states = result["state"] if "state" in result else _stacked_states(result["states"])
        if states is not None:
            self.cache.write_stacked(g.key_bytes()[idx], {**arrays, **states}, label)
        else:  # ragged fitted states: one entry each
            entries: dict[str, Entry] = {
                str(key): {**{n: v[j] for n, v in arrays.items()}, **state}
                for j, (key, state) in enumerate(zip(g.keys[idx], result["states"], strict=True))
            }
            self.cache.write_shard(entries, label)

    # --- output -----------------------------------------------------------------------------

    def forecast_chunks(self, panel: Panel, encoded: bool = False) -> Iterator[Any]:
        """The forecast table of every fit known (schema order, deterministic sort), as Arrow
        tables of 65,536 rows (runtime/fits/forecast_rows.py; `encoded`: of written_schema,
        as train writes them)."""
        return table_chunks(self.groups, self.kept, self.config, self.model, panel, encoded=encoded)


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


def _keyed_failures(result: dict[str, Any], g: FitGroup, task: Task) -> dict[str, Any]:
    """The result with each failure's key (hex), which a payload without keys could not give
    (tasks.task_payload's `keys`): the key of the fit at its position in the task."""
    if all("key" in f for f in result["failed"]):
        return result
    at = [f["index"] for f in result["failed"]]
    keys = g.keys[np.asarray(task.index, dtype=np.int64)[at]].tolist()
    failed = [
        {"index": f["index"], "key": str(k), **f}
        for f, k in zip(result["failed"], keys, strict=True)
    ]
    return {**result, "failed": failed}


def _only(result: dict[str, Any], task: Task) -> dict[str, Any]:
    """The part of a task's result about its wanted fits (the rest of its block is known)."""
    index = np.asarray(result["index"], dtype=np.int64)
    pick = np.nonzero(np.isin(task.index[index], task.wanted))[0]
    part = {
        **{k: v for k, v in result.items() if k != "shard"},  # the shard is the whole block's
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

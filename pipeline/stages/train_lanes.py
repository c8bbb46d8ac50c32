"""Train several models side by side on one cluster (`python -m pipeline run`, issue 19 item 3).

One driver thread (a "lane") per model runs that model's `run_train`, as the models ran one
after another before: its own progress-store connection, train log, summary line, stage
record and resume. Their tasks share the cluster, the longest first (each task's priority is
its expected seconds, pipeline/runtime/execute/task_loop.py), so the next models' tasks fill
a core while a model's last tasks run instead of waiting for them. Models small enough for
the driver's child take it in turn (pipeline/runtime/execute/inprocess.py).

Signals reach only the main thread, which waits here: SIGINT/SIGTERM set the lanes' stop flag,
every lane stops as an interrupted train does (its in-flight fits back to pending, progress
saved) and `TrainInterrupted` is raised once all have; while the cluster is still starting,
the command line's own run ends at once instead (stop.end_now: its processes killed, exit
143/130). A lane that fails stops the others the same way; its error is raised once every
lane has ended.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.config import StudyConfig
from pipeline.runtime.execute.shared_cluster import SharedCluster
from pipeline.runtime.execute.stop import (
    POLL_S,
    StopFlag,
    end_now,
    end_now_allowed,
    on_stop_signals,
)
from pipeline.runtime.sizing.plan import Plan
from pipeline.runtime.ui.logs import LANE_THREAD
from pipeline.stages.train import TrainSummary, run_train


@dataclass(frozen=True)
class LaneEnd:
    """How one model's train ended: its summary, or the error it raised (then summary None)."""

    model: str
    summary: TrainSummary | None
    error: BaseException | None
    seconds: float


STARTING_GRACE_S = 0.5  # a cluster whose start ends this soon after a signal is closed as usual


def train_side_by_side(
    config: StudyConfig,
    models: list[str],
    plan: Plan | None,
    cluster: SharedCluster,
    on_end: Callable[[LaneEnd], None],
) -> None:
    """Train `models` at once on `cluster`; `on_end` gets each model's end, in the main thread,
    as it comes. Raises the first lane's error (TrainInterrupted on a signal) once all ended."""
    stop = StopFlag()
    ended: queue.Queue[LaneEnd] = queue.Queue()

    def lane(model: str) -> None:
        t0 = time.perf_counter()
        try:
            summary = run_train(config, model, plan, cluster, stop)
        except BaseException as error:  # handed to the main thread, which raises it
            ended.put(LaneEnd(model, None, error, time.perf_counter() - t0))
        else:
            ended.put(LaneEnd(model, summary, None, time.perf_counter() - t0))

    threads = [
        threading.Thread(target=lane, args=(m,), name=f"{LANE_THREAD}{m}", daemon=True)
        for m in _longest_first(models, plan)
    ]
    first: BaseException | None = None
    with on_stop_signals(stop.set):
        try:
            for thread in threads:
                thread.start()
            for _ in threads:
                end = _next_end(ended, stop, cluster)
                if end.error is not None:
                    first = first or end.error
                    stop.set(f"train {end.model} failed", 1)
                on_end(end)
        except BaseException:
            stop.set("the run failed", 1)
            raise
        finally:
            for thread in threads:
                thread.join()
    if first is not None:
        raise first


def _longest_first(models: list[str], plan: Plan | None) -> list[str]:
    """The lanes in the order of their expected work, longest first: the first tasks to reach
    idle workers are then the long ones (later ones queue by priority)."""
    if plan is None:
        return list(models)

    def work(model: str) -> float:
        mp = plan.models.get(model)
        return (mp.seconds_per_fit or 0.0) * mp.n_fits if mp is not None else 0.0

    return sorted(models, key=work, reverse=True)


def _next_end(ended: queue.Queue[LaneEnd], stop: StopFlag, cluster: SharedCluster) -> LaneEnd:
    """The next lane's end; polled, so the main thread's signal handlers run meanwhile. A
    signal while the cluster is still starting (8-11 s under load, which Dask's LocalCluster
    gives no way to cut short) ends the run at once after STARTING_GRACE_S (`end_now`), where
    the command line allows it."""
    while True:
        try:
            return ended.get(timeout=POLL_S * 4)
        except queue.Empty:
            signalled = stop.is_set() and stop.name.startswith("SIG") and end_now_allowed()
            if signalled and cluster.starting and time.monotonic() - stop.at > STARTING_GRACE_S:
                end_now(
                    stop.code,
                    f"train interrupted ({stop.name}) while the cluster was starting: stopped "
                    "at once; run the same command again to resume",
                )

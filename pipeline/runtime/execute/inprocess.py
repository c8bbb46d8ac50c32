"""Tasks run without a cluster: work too small to pay for one (issue 13, item 5).

`InProcessStream` has `dask.task_stream.TaskStream`'s interface (submit, iterate in completion order,
in_flight, cancel, close) and runs each task through the same task function workers run
(pipeline.runtime.execute.worker.run_task), one at a time, so the train loop's result handling (the
driver writes the cache shards and the progress rows, retries, bisection) is the same code.
The tasks run in the driver's worker-like child process, kept between models (pipeline.runtime.execute.child: one
BLAS/OpenMP/torch thread, so results are bit-identical to the cluster's), held to the probe's
memory limit per worker and to the task timeout like a worker: a task past either is killed
and its fits fail as `memory` / `timeout` (issue 22), never the driver. No Dask here.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pipeline.runtime.execute.child import ChildError, ChildKilled, shared_child
from pipeline.runtime.execute.stop import StopFlag, holding
from pipeline.runtime.sizing.plan import ModelPlan

# one model at a time in the driver's one child (a run trains its models side by side)
_CHILD_IN_USE = threading.Lock()


@dataclass
class InProcessHandle:
    """What the train loop reads of a cluster handle, for the driver itself."""

    client: None = None
    dashboard: str | None = None
    n_workers: int = 1
    local: bool = True


@contextmanager
def in_process_handle(stop: StopFlag | None = None) -> Iterator[InProcessHandle]:
    """The driver's child for one model's tasks, once no other model's are in it."""
    with holding(_CHILD_IN_USE, stop):
        yield InProcessHandle()


def runs_in_process(
    model_plan: ModelPlan | None, n_todo: int, below_s: float, scheduler_address: str | None
) -> bool:
    """True when the probe measured this model and its `n_todo` fits are less than `below_s`
    seconds of work (0 disables), and no external scheduler was asked for."""
    if not below_s or scheduler_address or model_plan is None:
        return False
    spf = model_plan.seconds_per_fit
    return spf is not None and n_todo * spf < below_s


class InProcessStream:
    """Run submitted tasks one by one in a worker-like child; yields (name, result, error) like
    `dask.task_stream.TaskStream` (`error`: {"error_type", "message", "traceback"} when the task raised,
    error_type "timeout" / "memory" / "worker-lost" when its child was killed or died).

    The next task is sent before a result is yielded (AHEAD), so the child computes it while
    the driver writes the last one's shard and progress: the child never waits on the driver.
    A task's timeout counts from when the driver starts waiting for it (at most the driver's
    handling of the task before it later than the child starts it). With `stop`, a stop
    asked for raises `Stopped` before the next result is waited for (tasks here are short)."""

    AHEAD = 2  # tasks in the child at once: one running, one queued behind it

    def __init__(
        self,
        fn: Callable[[dict[str, Any]], dict[str, Any]],
        timeout_s: float | None = None,
        memory_limit_mb: float | None = None,
        stop: StopFlag | None = None,
    ) -> None:
        self.fn, self.timeout_s, self.stop = fn, timeout_s, stop
        self.pending: deque[tuple[str, dict[str, Any]]] = deque()
        self.sent: deque[tuple[str, dict[str, Any]]] = deque()  # in the child, in order
        self.memory_limit_mb = memory_limit_mb
        self.child = shared_child()  # kept for the run's next model

    @property
    def in_flight(self) -> int:
        return len(self.pending) + len(self.sent)

    def submit(self, name: str, payload: dict[str, Any], priority: int = 0) -> None:
        self.pending.append((name, payload))  # one model here: its order is the priority

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any] | None, dict[str, str] | None]]:
        while self.pending or self.sent:
            if self.stop is not None:
                self.stop.check()
            while self.pending and len(self.sent) < self.AHEAD:
                name, payload = self.pending.popleft()
                self.child.send(self.fn, payload)
                self.sent.append((name, payload))
            name, _ = self.sent.popleft()
            try:
                result = self.child.receive(self.timeout_s, self.memory_limit_mb)
            except ChildKilled as exc:
                # the tasks queued behind this one never started: a fresh child runs them
                self.pending.extendleft(reversed(self.sent))
                self.sent.clear()
                error = {"error_type": exc.reason, "message": str(exc), "traceback": ""}
                yield name, None, error
            except ChildError as exc:
                error_type = "memory" if exc.error_type == "MemoryError" else exc.error_type
                error = {
                    "error_type": error_type,
                    "message": str(exc)[:2000],
                    "traceback": exc.trace,
                }
                yield name, None, error
            else:
                yield name, result, None

    def cancel(self) -> None:
        self.pending.clear()
        self.sent.clear()
        self.child.close()

    def close(self) -> None:
        self.pending.clear()
        if self.sent:  # abandoned with tasks in the child: their results must not reach the
            self.cancel()  # next stream, so that child goes (a fresh one serves the next)
        # else the child stays: it is idle and serves the next stream

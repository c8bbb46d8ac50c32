"""Tasks run in the driver process: work too small to pay for a cluster (issue 13, item 5).

`InProcessStream` has `cluster.TaskStream`'s interface (submit, iterate in completion order,
in_flight, cancel, close) and runs each task through the same task function workers run
(pipeline.runtime.worker.run_task), one at a time, so the train loop's result handling (the
driver writes the cache shards and the progress rows, retries, bisection) is the same code.
Each task runs like on a worker: one BLAS/OpenMP/torch thread (`worker_threads`), so its
results are bit-identical to the cluster's. No Dask here.
"""

from __future__ import annotations

import os
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pipeline.runtime.plan import THREAD_ENV, ModelPlan


@dataclass
class InProcessHandle:
    """What the train loop reads of a cluster handle, for the driver itself."""

    client: None = None
    dashboard: str | None = None
    n_workers: int = 1
    local: bool = True


@contextmanager
def in_process_handle() -> Iterator[InProcessHandle]:
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


@contextmanager
def worker_threads() -> Iterator[None]:
    """One thread per math library for the duration, like a worker's environment (THREAD_ENV);
    the driver's settings are restored afterwards."""
    import torch  # every built-in model's kernels import it anyway (pipeline.models.common)
    from threadpoolctl import threadpool_limits

    saved_env = {k: os.environ.get(k) for k in THREAD_ENV}
    os.environ.update(THREAD_ENV)  # a library first loaded inside reads these
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        torch.set_num_threads(torch_threads)


class InProcessStream:
    """Run submitted tasks one by one in this process; yields (name, result, error) like
    `cluster.TaskStream` (`error`: {"error_type", "message", "traceback"} when the task raised)."""

    def __init__(self, fn: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.fn = fn
        self.pending: deque[tuple[str, dict[str, Any]]] = deque()

    @property
    def in_flight(self) -> int:
        return len(self.pending)

    def submit(self, name: str, payload: dict[str, Any]) -> None:
        self.pending.append((name, payload))

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any] | None, dict[str, str] | None]]:
        while self.pending:
            name, payload = self.pending.popleft()
            try:
                with worker_threads():
                    result = self.fn(payload)
            except Exception as exc:
                error_type = "memory" if isinstance(exc, MemoryError) else type(exc).__name__
                yield (
                    name,
                    None,
                    {
                        "error_type": error_type,
                        "message": str(exc)[:2000],
                        "traceback": traceback.format_exc(),
                    },
                )
            else:
                yield name, result, None

    def cancel(self) -> None:
        self.pending.clear()

    def close(self) -> None:
        self.pending.clear()

"""What the task stream learns about its tasks besides their results: which workers a nanny
killed for memory (its log records), which tasks run now and for how long (a function run on
the scheduler), and each task's name from its Dask key. No dask.distributed import here: these
read Dask's log records and scheduler state by duck typing."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any


class MemoryEvents(logging.Handler):
    """Addresses of workers a nanny of this process restarted for memory (LocalCluster's
    nannies run in the driver; a remote cluster's do not, so its losses read `worker-lost`).
    Attached to the `distributed.nanny.memory` logger while a stream runs."""

    _ADDRESS = re.compile(r"Worker (\S+) \(pid=\d+\) exceeded")

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.addresses: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        match = self._ADDRESS.search(record.getMessage())
        if match:
            self.addresses.add(match.group(1))


def lost_worker_label(exc: Any, memory_events: set[str]) -> str:
    """'memory' when the worker lost under a task (`exc`: Dask's KilledWorker) was killed by
    its nanny for memory, else 'worker-lost'."""
    last = exc.last_worker
    address = getattr(last, "address", None) or str(last)
    return "memory" if any(a in address for a in memory_events) else "worker-lost"


def task_name(key: Any) -> str:
    """A task's name from its Dask key ((settings.TASK_GROUP, name))."""
    return str(key[1]) if isinstance(key, tuple) else str(key)


def executing() -> Callable[[Any], dict[Any, tuple[str, float]]]:
    """A function for `run_on_scheduler`: each task a worker executes, with how long it has
    run: as long as it had at that worker's last heartbeat, plus the time since that
    heartbeat. The task stream asks first only when a task could be past its timeout, so a
    worker whose heartbeats stopped before then (a task stuck holding the GIL) must not
    restart its task's clock. Made here, so it travels by value (a scheduler elsewhere need
    not import qpipe)."""

    def executing(dask_scheduler: Any) -> dict[Any, tuple[str, float]]:
        import time  # the scheduler's clock, which its `last_seen` reads

        now = time.time()
        return {
            getattr(ts, "key", ts): (
                str(address),
                float(seconds) + max(now - float(getattr(ws, "last_seen", now)), 0.0),
            )
            for address, ws in dask_scheduler.workers.items()
            for ts, seconds in ws.executing.items()
        }

    return executing


def quiet_polls(record: logging.LogRecord) -> bool:
    """A filter for the `distributed.worker` logger (where Dask logs them): not the scheduler's
    INFO line for each poll of `executing` (up to twice a second a stream, once one of its
    tasks could be past its timeout)."""
    args = record.args
    ours = isinstance(args, tuple) and args and args[-1] == "executing"
    return not (ours and "out-of-band" in str(record.msg))

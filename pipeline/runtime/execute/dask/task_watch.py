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


# a worker that has sent no heartbeat for this many of its heartbeat intervals is silent: its
# event loop has not run (a task holding the GIL), so a task it started since its last
# heartbeat was never reported (Dask's worker-ttl waits 10 intervals at least, 5 min by default)
SILENT_HEARTBEATS = 4


def executing(
    heartbeat_interval: Callable[[int], float],
) -> Callable[[Any], dict[Any, tuple[str, float, str]]]:
    """A function for `run_on_scheduler`: each task a worker runs now, as key -> (worker, seconds
    it has run, how it is known). `heartbeat_interval(n_workers)` is the interval Dask asks of
    each of n workers (distributed.scheduler.heartbeat_interval; passed in: no Dask import here).

    - "reported": a task its worker's last heartbeat listed as executing, and still processing
      there (one finished since is not): its age at that heartbeat plus the time since. The
      stream asks first only when a task could be past its timeout, so a worker whose
      heartbeats stopped since (a task stuck holding the GIL) must not restart its clock.
    - "silent": a worker silent for SILENT_HEARTBEATS intervals has not run its event loop since
      its last heartbeat, so a task it started since was never listed (one that holds the GIL
      from its start). When it holds no more tasks than it has threads (the study's cluster:
      one thread, one task per thread), each task it did not report counts from that heartbeat
      (up to one interval early).
    - "suspect": a silent worker holding more tasks than threads (an existing cluster whose
      worker-saturation lets tasks wait on a worker). Which one hangs it cannot be told: a task
      whose end the worker could not report before its next one took the GIL stays
      "processing" beside the hung one, and tasks wait behind it. Each counts from the last
      heartbeat, listed in the order the worker runs them (by priority); the stream decides.

    Made here, so it travels by value (a scheduler elsewhere need not import qpipe)."""
    silent_heartbeats = SILENT_HEARTBEATS  # a local: the function travels without this module

    def executing(dask_scheduler: Any) -> dict[Any, tuple[str, float, str]]:
        import time  # the scheduler's clock, which its `last_seen` reads

        now = time.time()
        silent_after = silent_heartbeats * heartbeat_interval(len(dask_scheduler.workers))
        running: dict[Any, tuple[str, float, str]] = {}
        for address, ws in dask_scheduler.workers.items():
            silent = max(now - float(getattr(ws, "last_seen", now)), 0.0)
            processing = ws.processing
            reported = {ts: float(s) for ts, s in ws.executing.items() if ts in processing}
            if silent <= silent_after:
                for ts, seconds in reported.items():
                    running[getattr(ts, "key", ts)] = (str(address), seconds + silent, "reported")
                continue
            seceded = getattr(ws, "long_running", ())  # they hold no thread
            held = sorted(
                (ts for ts in processing if ts not in seceded), key=lambda ts: ts.priority or ()
            )
            if len(held) > int(getattr(ws, "nthreads", 1)):
                for ts in held:
                    running[getattr(ts, "key", ts)] = (str(address), silent, "suspect")
                continue
            for ts in held:
                if ts in reported:
                    running[getattr(ts, "key", ts)] = (
                        str(address),
                        reported[ts] + silent,
                        "reported",
                    )
                else:
                    running[getattr(ts, "key", ts)] = (str(address), silent, "silent")
        return running

    return executing


def quiet_polls(record: logging.LogRecord) -> bool:
    """A filter for the `distributed.worker` logger (where Dask logs them): not the scheduler's
    INFO line for each poll of `executing` (up to twice a second a stream, once one of its
    tasks could be past its timeout)."""
    args = record.args
    ours = isinstance(args, tuple) and args and args[-1] == "executing"
    return not (ours and "out-of-band" in str(record.msg))

"""The only module that imports dask.distributed: start or join a cluster and stream tasks to it.

`make_client(plan, runtime)` starts a `LocalCluster` sized by the probe's plan (one thread per
worker, the plan's memory limit, scheduler and dashboard on 127.0.0.1) or, when
`runtime.scheduler_address` is set, connects to that existing cluster through the same code path
(waiting for its first worker; `ClusterHandle.threads` reads its threads again whenever train sizes
a model's tasks). The LocalCluster speaks TLS with temporary credentials (`Security.temporary()`,
made for this run and held only by its client, scheduler and workers): another local process, even
of the same user, cannot submit code to it (issue 22). An existing cluster is reached with
runtime.tls_* files when given (else Dask's own `distributed.comm.tls` settings). BLAS/OpenMP/torch
threads are pinned to one per worker through Dask's pre-spawn environment, set before any worker
process starts; Dask's default MALLOC_TRIM_THRESHOLD_ is dropped from it (see `worker_environ`).
`TaskStream` submits a bounded number of tasks at a time and yields results as they complete,
turning a worker lost to its memory limit (`KilledWorker` after `allowed-failures` restarts) into a
plain "memory" failure (or "worker-lost" when no nanny reported a memory kill), and stopping a task
that runs past its timeout by restarting its worker (its fits fail as "timeout").
"""

from __future__ import annotations

import functools
import logging
import os
import re
import socket
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dask
from distributed import Client, LocalCluster, as_completed
from distributed.scheduler import KilledWorker
from distributed.security import Security

from pipeline.config import ConfigError, RuntimeConfig
from pipeline.runtime.execute.stop import POLL_S, StopFlag
from pipeline.runtime.sizing.plan import worker_environment
from pipeline.runtime.ui.logs import third_party_to_run_log

log = logging.getLogger("pipeline.runtime.execute.cluster")

# A task is failed (KilledWorker) the first time its worker dies: the driver retries its fits
# itself, in halves, so a restart is not wasted on rerunning a task that will die again.
ALLOWED_FAILURES = 0
# how often the stream asks the scheduler which tasks run where (to time them): every
# TIMEOUT_POLL_S, or a hundredth of the timeout when that is longer (each ask is a round trip
# to the scheduler, and several models' streams ask at once)
TIMEOUT_POLL_S = 0.5
# Every task's Dask key is (TASK_GROUP, name): one task group for every model's tasks, which
# the scheduler holds in its queue and hands to a worker when it is free, the highest priority
# first (see `queue_every_task`).
TASK_GROUP = "qpipe"
# every Dask process's event-loop health tick (20 ms) and the system monitor behind the
# dashboard's graphs (psutil's CPU, memory, disk and network counters every 0.5 s) cost an
# idle 2-worker cluster ~0.07 CPU-s per second of train, 0.03 at these intervals; an idle
# scheduler 0.016 CPU-s per second, 0.007 (benchmarks/README.md, issue 18). Both only observe:
# the memory limit is the nanny's own monitor (distributed.worker.memory.monitor-interval,
# still 100 ms). The study's LocalCluster runs with them; an existing cluster keeps its own
# settings (docs/SCALE.md advises these).
OBSERVER_INTERVALS = {
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
}


@dataclass
class ClusterHandle:
    client: Client
    dashboard: str | None
    n_workers: int
    local: bool

    def threads(self) -> int:
        """Worker threads now: the study's own cluster's (one per worker), or those an existing
        cluster's scheduler reports (a cluster may scale while a run trains model after model)."""
        return self.n_workers if self.local else worker_threads(self.client)


def worker_threads(client: Client) -> int:
    """Threads of the workers connected to the client's scheduler now."""
    workers = client.scheduler_info(n_workers=-1).get("workers", {}).values()
    return sum(int(w.get("nthreads", 1)) for w in workers)


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port (so the dashboard can take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


@contextmanager
def make_client(
    n_workers: int, memory_limit_mb: int, runtime: RuntimeConfig
) -> Iterator[ClusterHandle]:
    """A client on a fresh LocalCluster (or on runtime.scheduler_address); closed on exit."""
    config = {
        "distributed.nanny.pre-spawn-environ": worker_environ(),
        "distributed.scheduler.allowed-failures": ALLOWED_FAILURES,
        # one task per worker thread at a time: a worker killed for memory then takes down only
        # the task that outgrew it, not innocent tasks queued behind it
        "distributed.scheduler.worker-saturation": 1.0,
        # LocalCluster closes a nanny whose worker has not reconnected within this time after
        # a loss; a worker killed twice in a row for memory would otherwise lose its nanny
        "distributed.deploy.lost-worker-timeout": "1 day",
        # Dask's statistical profiler walks the running task's stack every 10 ms from the
        # worker's event loop, taking the GIL from the task: ~1 % of a core per worker beside
        # a long torch task (benchmarks/README.md, issue 19). Off unless the user wants the
        # dashboard's Profile page; an existing cluster keeps its workers' own setting.
        "distributed.worker.profile.enabled": runtime.worker_profiler,
        **OBSERVER_INTERVALS,
    }
    # Dask's and bokeh's own stderr handlers are detached until the cluster is closed: their
    # warnings (and the workers', forwarded below) go to the run log only
    with dask.config.set(config), third_party_to_run_log() as detach:
        if runtime.scheduler_address:
            # results relayed by the scheduler unless Dask's own config says otherwise
            # (`distributed.client.direct-to-workers`): a driver may reach the scheduler only
            client = Client(runtime.scheduler_address, timeout="30s", security=_security(runtime))
            cluster = None
            client.wait_for_workers(1, timeout=120)
            workers = len(client.scheduler_info(n_workers=-1).get("workers", {}))
            log.info(
                "connected to scheduler %s with %d workers, %d threads (allowed-failures is "
                "the scheduler's own setting)",
                runtime.scheduler_address,
                workers,
                worker_threads(client),
            )
        else:
            host, port = runtime.dashboard_host, runtime.dashboard_port
            if port and not port_is_free(host, port):
                log.info("dashboard port %d is taken; using a free one", port)
                port = 0
            security = Security.temporary()  # this run's own CA and certificate, in memory
            cluster = LocalCluster(
                n_workers=n_workers,
                threads_per_worker=1,
                processes=True,
                memory_limit=int(memory_limit_mb) * 2**20,
                host="127.0.0.1",
                scheduler_port=0,
                protocol="tls://",
                security=security,
                dashboard_address=f"{host}:{port}",
                silence_logs=logging.CRITICAL,  # workers' stderr: their warnings are forwarded
            )
            # results gathered straight from these workers (127.0.0.1): relaying every
            # task's forecasts (megabytes) was the scheduler's largest CPU cost in train
            client = Client(cluster, security=security, direct_to_workers=True)
            workers = n_workers
            detach()  # the dashboard's bokeh, imported just now
        try:
            client.forward_logging("pipeline", level=logging.INFO)
            client.forward_logging("distributed", level=logging.WARNING)
            dashboard = _dashboard_link(client)
            # an existing cluster still scaling up to runtime.max_workers: queue for that many
            expected = max(workers, runtime.max_workers or 0) if cluster is None else workers
            held = queue_every_task(client, expected)  # noqa: F841 (held while the cluster is)
            yield ClusterHandle(client, dashboard, workers, cluster is not None)
        finally:
            client.close(timeout=10)
            if cluster is not None:
                cluster.close(timeout=20)


def queue_every_task(client: Client, n_workers: int) -> list[Any]:
    """No-op tasks of TASK_GROUP for the caller to hold: Dask queues a task on the scheduler
    only once its group has had more than twice as many tasks as the cluster has threads
    (the group lives while any of its tasks is held); before that it sends each task to a
    worker at once, where it waits behind that worker's task whatever its priority (a short
    task of one model behind a long one of another, its timeout clock running)."""
    threads = max(worker_threads(client), n_workers)
    return [
        client.submit(int, 0, key=(TASK_GROUP, f"queue-{i}"), pure=False)
        for i in range(2 * threads + 1)
    ]


def _security(runtime: RuntimeConfig) -> Security | None:
    """TLS for an existing cluster from runtime.tls_* (None: Dask's own configuration)."""
    files = {
        "tls_ca_file": runtime.tls_ca_file,
        "tls_client_cert": runtime.tls_cert_file,
        "tls_client_key": runtime.tls_key_file,
    }
    if not any(files.values()):
        return None
    for key, path in zip(
        ("tls_ca_file", "tls_cert_file", "tls_key_file"), files.values(), strict=True
    ):
        if path is not None and not os.path.isfile(path):
            raise ConfigError(f"runtime.{key}", "a readable PEM file", path)
    return Security(require_encryption=True, **{k: v for k, v in files.items() if v})


def worker_environ() -> dict[str, Any]:
    """Dask's pre-spawn environment with one thread per library and glibc's malloc defaults."""
    return worker_environment(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})


def _dashboard_link(client: Client) -> str | None:
    try:
        if "dashboard" not in client.scheduler_info().get("services", {}):
            return None
        link = client.dashboard_link
    except Exception:  # no dashboard (bokeh missing or disabled)
        return None
    return link or None


class _MemoryEvents(logging.Handler):
    """Addresses of workers a nanny of this process restarted for memory (LocalCluster's
    nannies run in the driver; a remote cluster's do not, so its losses read `worker-lost`)."""

    _ADDRESS = re.compile(r"Worker (\S+) \(pid=\d+\) exceeded")

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.addresses: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        match = self._ADDRESS.search(record.getMessage())
        if match:
            self.addresses.add(match.group(1))


def lost_worker_label(exc: KilledWorker, memory_events: set[str]) -> str:
    """'memory' when the lost worker's nanny killed it for memory, else 'worker-lost'."""
    last = exc.last_worker
    address = getattr(last, "address", None) or str(last)
    return "memory" if any(a in address for a in memory_events) else "worker-lost"


class TaskStream:
    """Bounded submission + completion order. Yields (name, result, error) per finished task.

    `error` is None on success, else {"error_type", "message", "traceback"}; error_type is
    "memory" when the task's worker was killed by its nanny's memory limit, "worker-lost"
    when its worker died otherwise (SIGKILL, segfault, a node lost), "timeout" when it ran
    longer than `timeout_s` (from when its worker started it) and its worker was
    restarted to stop it (a thread cannot be stopped; the process can). With `stop`, waiting
    raises `Stopped` once the flag is set (a driver thread of a run training models side by
    side: signals reach only the main thread).
    """

    def __init__(
        self,
        client: Client,
        fn: Callable[[dict[str, Any]], dict[str, Any]],
        timeout_s: float | None = None,
        stop: StopFlag | None = None,
    ) -> None:
        self.client, self.fn, self.timeout_s, self.stop = client, fn, timeout_s, stop
        self.pending = as_completed()
        self.in_flight = 0
        self._memory = _MemoryEvents()
        logging.getLogger("distributed.nanny.memory").addHandler(self._memory)
        self._started: dict[str, float] = {}  # key -> when first seen running on a worker
        self._timed_out: set[str] = set()
        self._polled = 0.0
        self._by_heartbeat = True
        # this stream's tasks in flight: the cluster may run other models' streams too, each
        # timing its own tasks by its own timeout
        self._mine: set[str] = set()

    def close(self) -> None:
        logging.getLogger("distributed.nanny.memory").removeHandler(self._memory)

    def submit(self, name: str, payload: dict[str, Any], priority: int = 0) -> None:
        """Queue a task; among tasks waiting for a worker, the highest `priority` starts first
        (models sharing the cluster: their longest tasks first, the short ones fill around)."""
        # the payload rides inside the callable: Dask walks a task's arguments element by
        # element looking for futures (~10 us per fit for a task's list of keys), not its function
        future = self.client.submit(
            functools.partial(self.fn, payload),
            key=(TASK_GROUP, name),
            pure=False,
            retries=0,
            priority=priority,
        )
        self.pending.add(future)
        self.in_flight += 1
        self._mine.add(name)

    def _next(self) -> Any:
        """The next finished future; meanwhile, stop tasks past their timeout (and raise
        `Stopped` when a stop was asked for)."""
        if self.timeout_s is None and self.stop is None:
            return next(self.pending)
        while not self.pending.has_ready():
            if self.pending.is_empty():
                raise StopIteration
            if self.stop is not None:
                self.stop.check()
            if self.timeout_s is not None:
                self._stop_overdue()
            time.sleep(POLL_S)
        return next(self.pending)

    def _stop_overdue(self) -> None:
        now = time.monotonic()
        if now - self._polled < max(TIMEOUT_POLL_S, float(self.timeout_s or 0) / 100):
            return
        self._polled = now
        running = self._running()
        for key in list(self._started):
            if key not in running:
                del self._started[key]
        for key, (worker, ran) in running.items():
            # the earliest start seen: a task whose worker stopped sending heartbeats (stuck
            # holding the GIL) still times out
            started = self._started.setdefault(key, now - ran)
            if key in self._timed_out or now - started <= float(self.timeout_s or 0):
                continue
            self._timed_out.add(key)
            log.warning(
                "task %s ran past runtime.task_timeout_s = %g s: restarting worker %s",
                key,
                self.timeout_s,
                worker,
            )
            try:  # the task then fails with KilledWorker (allowed-failures is 0)
                outcome = self.client.restart_workers([worker], timeout=60, raise_for_error=False)
            except Exception as exc:  # e.g. a worker without a nanny: it cannot be restarted
                outcome = {worker: str(exc)}
            if outcome.get(worker, "OK") not in ("OK", "removed"):  # e.g. timed out when loaded
                log.warning("could not restart worker %s (%s): trying again", worker, outcome)
                self._timed_out.discard(key)  # the next poll tries again

    def _running(self) -> dict[str, tuple[str, float]]:
        """Tasks that run now: name -> (worker, seconds since their worker started them), as
        the workers' heartbeats tell the scheduler (a task queued on a worker behind another
        has not started: its clock has not either). A scheduler that runs no function of
        ours: the tasks it gave a worker, from now on."""
        if self._by_heartbeat:
            try:
                running = self.client.run_on_scheduler(_executing())
                return {
                    _name(k): (w, ran) for k, (w, ran) in running.items() if _name(k) in self._mine
                }
            except Exception as exc:  # e.g. a scheduler that refuses pickled functions
                self._by_heartbeat = False
                log.info("task timeouts count from assignment (%s)", exc)
        processing = self.client.processing()
        running = {_name(k): (w, 0.0) for w, keys in processing.items() for k in keys}
        return {name: at for name, at in running.items() if name in self._mine}

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any] | None, dict[str, str] | None]]:
        while True:
            try:
                future = self._next()
            except StopIteration:
                return
            self.in_flight -= 1
            name = _name(future.key)
            self._mine.discard(name)
            try:
                result = future.result()
            except KilledWorker as exc:
                if name in self._timed_out:
                    label = "timeout"
                    message = (
                        f"still running after runtime.task_timeout_s = {self.timeout_s:g} s: "
                        "its worker was restarted to stop it"
                    )
                else:
                    label = lost_worker_label(exc, self._memory.addresses)
                    message = (
                        f"worker {'killed for memory' if label == 'memory' else 'lost'} "
                        f"while running the task: {exc}"
                    )
                yield (
                    name,
                    None,
                    {"error_type": label, "message": message, "traceback": traceback.format_exc()},
                )
            except Exception as exc:
                yield (
                    name,
                    None,
                    {
                        "error_type": type(exc).__name__,
                        "message": str(exc)[:2000],
                        "traceback": traceback.format_exc(),
                    },
                )
            else:
                yield name, result, None
            finally:
                self._timed_out.discard(name)
                self._started.pop(name, None)
                future.release()

    def cancel(self) -> None:
        """Drop everything still queued or running (on interrupt)."""
        futures = list(self.pending.futures)
        self.pending.clear()
        if futures:
            self.client.cancel(futures, force=True)


def _quiet_polls(record: logging.LogRecord) -> bool:
    """Not the scheduler's INFO line for each poll of `_executing` (twice a second a stream)."""
    args = record.args
    ours = isinstance(args, tuple) and args and args[-1] == "executing"
    return not (ours and "out-of-band" in str(record.msg))


logging.getLogger("distributed.worker").addFilter(_quiet_polls)  # where Dask logs the polls


def _name(key: Any) -> str:
    """A task's name from its Dask key ((TASK_GROUP, name))."""
    return str(key[1]) if isinstance(key, tuple) else str(key)


def _executing() -> Callable[[Any], dict[Any, tuple[str, float]]]:
    """A function for `run_on_scheduler`: each task a worker executes, with how long it had
    run at that worker's last heartbeat. Made here, so it travels by value (a scheduler
    elsewhere need not import qpipe)."""

    def executing(dask_scheduler: Any) -> dict[Any, tuple[str, float]]:
        return {
            getattr(ts, "key", ts): (str(address), float(seconds))
            for address, ws in dask_scheduler.workers.items()
            for ts, seconds in ws.executing.items()
        }

    return executing

"""What the study's Dask cluster runs with, and the checks made before one starts: the Dask
config, the workers' environment, the TLS files of an existing cluster, the dashboard's port.
No dask.distributed import here (cluster.py applies these)."""

from __future__ import annotations

import os
import socket
from typing import Any

from pipeline.config import ConfigError, RuntimeConfig
from pipeline.runtime.sizing.plan import worker_environment

# A task is failed (KilledWorker) the first time its worker dies: the driver retries its fits
# itself, in halves, so a restart is not wasted on rerunning a task that will die again.
ALLOWED_FAILURES = 0
# Every task's Dask key is (TASK_GROUP, name): one task group for every model's tasks, which
# the scheduler holds in its queue and hands to a worker when it is free, the highest priority
# first (see `cluster.queue_every_task`).
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


def dask_config(runtime: RuntimeConfig) -> dict[str, Any]:
    """The Dask config set while a run holds its cluster (for an existing cluster, only what
    the client and this process's nannies read: its scheduler and workers keep their own)."""
    return {
        "distributed.nanny.pre-spawn-environ": worker_environ(),
        "distributed.scheduler.allowed-failures": ALLOWED_FAILURES,
        # one task per worker thread at a time: a worker killed for memory then takes down only
        # the task that outgrew it, not innocent tasks queued behind it
        "distributed.scheduler.worker-saturation": 1.0,
        # LocalCluster closes a nanny whose worker has not reconnected within this time after
        # a loss; a worker killed twice in a row for memory would otherwise lose its nanny
        "distributed.deploy.lost-worker-timeout": "1 day",
        # a worker silent while it holds a task (one holding the GIL) is stopped by the task
        # stream at that task's runtime.task_timeout_s and the task fails as `timeout`: Dask's
        # worker-ttl (5 min) would drop it first wherever a model's timeout is longer, failing
        # the task as `worker-lost` before its time. A silent worker holding no task delays
        # nothing (one given a task is then stopped by the stream too).
        "distributed.scheduler.worker-ttl": None,
        # Dask's statistical profiler walks the running task's stack every 10 ms from the
        # worker's event loop, taking the GIL from the task: ~1 % of a core per worker beside
        # a long torch task (benchmarks/README.md, issue 19). Off unless the user wants the
        # dashboard's Profile page; an existing cluster keeps its workers' own setting.
        "distributed.worker.profile.enabled": runtime.worker_profiler,
        **OBSERVER_INTERVALS,
    }


def worker_environ() -> dict[str, Any]:
    """Dask's pre-spawn environment with one thread per library and glibc's malloc defaults
    (Dask's own MALLOC_TRIM_THRESHOLD_ dropped: sizing.plan.worker_environment says why)."""
    import dask

    return worker_environment(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port (so the dashboard can take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def tls_files(runtime: RuntimeConfig) -> dict[str, str] | None:
    """An existing cluster's TLS files from runtime.tls_* as `distributed.security.Security`
    arguments (None when none is set: Dask's own `distributed.comm.tls` settings apply);
    a named file that does not exist is a ConfigError (exit 2)."""
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
    return {k: v for k, v in files.items() if v}

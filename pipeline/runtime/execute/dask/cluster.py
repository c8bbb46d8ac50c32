"""Start or join the study's Dask cluster (imports dask.distributed; its settings are
settings.py's, the tasks streamed to it task_stream.py's).

`make_client(n_workers, memory_limit_mb, runtime)` starts a `LocalCluster` sized by the probe's
plan (one thread per worker, the plan's memory limit, scheduler and dashboard on 127.0.0.1) or,
when `runtime.scheduler_address` is set, connects to that existing cluster through the same
code path (waiting for its first worker; `ClusterHandle.threads` reads its threads again
whenever train sizes a model's tasks). The LocalCluster speaks TLS with temporary credentials
(`Security.temporary()`, made for this run and held only by its client, scheduler and
workers): another local process, even of the same user, cannot submit code to it (issue 22).
An existing cluster is reached with runtime.tls_* files when given (else Dask's own
`distributed.comm.tls` settings). BLAS/OpenMP/torch threads are pinned to one per worker
through Dask's pre-spawn environment, set before any worker process starts; Dask's default
MALLOC_TRIM_THRESHOLD_ is dropped from it (see `settings.worker_environ`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import dask
from distributed import Client, LocalCluster
from distributed.security import Security

from pipeline.config import RuntimeConfig
from pipeline.runtime.execute.dask.settings import TASK_GROUP, dask_config, port_is_free, tls_files
from pipeline.runtime.execute.stop import quieted_by_end_now
from pipeline.runtime.ui.logs import third_party_to_run_log

log = logging.getLogger("pipeline.runtime.execute.dask.cluster")


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


# Dask's warning when the dashboard's port is taken at bind time (distributed/node.py)
_PORT_TAKEN = r"Port \d+ is already in use"


class _LoopParking:
    """The study's LocalCluster's event loop, parked by stop.end_now: a callback blocks it (for
    good: the process exits next), so that no nanny makes a queue (three named semaphores) or
    asks for a worker process while end_now kills the children and unlinks the semaphores.
    The loop is known from the cluster's start on, the moment its nannies begin."""

    WAIT_S = 1.0  # a loop busy longer than this is left running (end_now goes on regardless)

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None

    def park(self) -> None:
        loop = self.loop
        if loop is None or loop.is_closed() or not loop.is_running():
            return
        parked = threading.Event()

        def block() -> None:
            parked.set()
            threading.Event().wait()

        loop.call_soon_threadsafe(block)
        parked.wait(self.WAIT_S)


class _StudyCluster(LocalCluster):
    """A LocalCluster that tells `parking` its event loop as its start begins."""

    def __init__(self, *args: Any, parking: _LoopParking, **kwargs: Any) -> None:
        self._parking = parking
        super().__init__(*args, **kwargs)

    async def _start(self) -> None:
        self._parking.loop = asyncio.get_running_loop()
        await super()._start()


def _local_cluster(
    n_workers: int,
    memory_limit_mb: int,
    host: str,
    port: int,
    security: Security,
    parking: _LoopParking,
) -> LocalCluster:
    # the dashboard's modules (bokeh: 0.5-1 s under load) imported here rather than by the
    # scheduler's start on the cluster's event loop, which a stop then had to wait for to park
    with suppress(ImportError):
        import distributed.dashboard.scheduler  # noqa: F401
    return _StudyCluster(
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
        parking=parking,
    )


def worker_threads(client: Client) -> int:
    """Threads of the workers connected to the client's scheduler now."""
    workers = client.scheduler_info(n_workers=-1).get("workers", {}).values()
    return sum(int(w.get("nthreads", 1)) for w in workers)


@contextmanager
def make_client(
    n_workers: int, memory_limit_mb: int, runtime: RuntimeConfig
) -> Iterator[ClusterHandle]:
    """A client on a fresh LocalCluster (or on runtime.scheduler_address); closed on exit."""
    # Dask's and bokeh's own stderr handlers are detached until the cluster is closed: their
    # warnings (and the workers', forwarded below) go to the run log only
    parking = _LoopParking()
    with (
        dask.config.set(dask_config(runtime)),
        third_party_to_run_log() as detach,
        quieted_by_end_now(parking.park),
    ):
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
            with warnings.catch_warnings():
                # the port found free above can be taken before the scheduler binds it (another
                # study starting at the same moment): Dask then takes a free one, as the check
                # does, and the dashboard line names it; its warning would only repeat that
                warnings.filterwarnings("ignore", _PORT_TAKEN, UserWarning)
                cluster = _local_cluster(n_workers, memory_limit_mb, host, port, security, parking)
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
    files = tls_files(runtime)
    return None if files is None else Security(require_encryption=True, **files)


def _dashboard_link(client: Client) -> str | None:
    try:
        if "dashboard" not in client.scheduler_info().get("services", {}):
            return None
        link = client.dashboard_link
    except Exception:  # no dashboard (bokeh missing or disabled)
        return None
    return link or None

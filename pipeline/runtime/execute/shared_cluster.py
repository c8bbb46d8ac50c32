"""One cluster for every model of a `python -m pipeline run`, started only when needed.

Kept apart from the Dask layer (pipeline.runtime.execute.dask), which it imports only when a
model has fits to train on a cluster: a run whose work is all cached or small enough to train
in the driver's child (pipeline.runtime.execute.inprocess) never imports dask.distributed.
"""

from __future__ import annotations

import logging
import threading
from contextlib import AbstractContextManager, ExitStack, nullcontext
from typing import TYPE_CHECKING

from pipeline.config import RuntimeConfig
from pipeline.runtime.execute.stop import StopFlag, holding

if TYPE_CHECKING:
    from pipeline.runtime.execute.dask.cluster import ClusterHandle


class SharedCluster:
    """One cluster for several `run_train` calls (`python -m pipeline run` trains every model on
    it): started by the first model that has fits to train, so a run with everything cached
    starts none; closed by `close()` or on leaving `with`. Sized by the first caller's plan
    (every model of a run shares one probe plan); on an existing cluster each model's train
    sizes its tasks for the threads the cluster has when it starts (`ClusterHandle.threads`:
    workers that joined since count). Models training side by side (one driver
    thread each) ask for it at once: the first starts it, the others wait for it."""

    def __init__(self) -> None:
        self._stack = ExitStack()
        self.handle: ClusterHandle | None = None
        self._starting = threading.Lock()
        self.starting = False  # inside make_client's start: a stop cannot interrupt it

    def client(
        self,
        n_workers: int,
        memory_limit_mb: int,
        runtime: RuntimeConfig,
        stop: StopFlag | None = None,
    ) -> AbstractContextManager[ClusterHandle]:
        """The shared handle (started on first call); leaving the context does not close it."""
        with holding(self._starting, stop):
            if self.handle is None:
                from pipeline.runtime.execute.dask.cluster import make_client

                self.starting = True
                try:
                    self.handle = self._stack.enter_context(
                        make_client(n_workers, memory_limit_mb, runtime)
                    )
                finally:
                    self.starting = False
                if self.handle.dashboard:  # once per run, whichever model starts the cluster
                    log = logging.getLogger("pipeline.train")
                    log.info("dashboard: %s", self.handle.dashboard)
        return nullcontext(self.handle)

    def close(self) -> None:
        self.handle = None
        self._stack.close()

    def __enter__(self) -> SharedCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

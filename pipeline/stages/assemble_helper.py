"""assemble's helper process: the second core renders charts and computes the coverage tests
while this process computes the metric tables (issues 18 item 5 and 19 item 4).

One spawned process (a `ProcessPoolExecutor` of one: it imports the package afresh, so the
caller's `__main__` needs the `if __name__ == "__main__":` guard, as for the Dask cluster).
It reads the forecast table assemble has just written (`forecasts/all.parquet`, the very rows
of assemble's frame: its size, mtime and row count are checked) once, and sends back results
(PNG bytes, small tables); it writes no file: this process owns the outputs.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.runtime.sizing.resources import OtherCpuMeter

log = logging.getLogger(__name__)

# Forecast rows from which the coverage tests and MCS (about 8 CPU-s at 3M rows, while this
# process computes the metric tables and the decomposition) go to the helper; below, the
# helper's start (~1.2 CPU-s) would cost about what they do (under 1 CPU-s at 342k rows).
HELPER_MIN_ROWS = 1_000_000

# Idle CPUs (averaged since assemble began: over its read and reconcile at scale, where the
# helper starts before the tables are written; also over that write for charts) below which
# no helper starts: on a machine whose cores are busy (a loaded shared machine;
# Linux's autogroup scheduler then splits this session's share between the two processes)
# the helper only adds its start and a second read of the table (benchmarks/README.md).
MIN_IDLE_CPUS = 0.5

Identity = tuple[str, int, int, int]  # path, size, mtime_ns, rows


class Helper:
    """One helper process for one assemble; `close` when done (also after a failure).

    Made with the table it reads, or started early (`Helper()`: its Python starts on the
    second core while assemble reads and writes) and given the table by `serve`."""

    def __init__(self, table: Path | None = None, n_rows: int = 0) -> None:
        self.identity: Identity | None = None
        context = multiprocessing.get_context("spawn")
        self._pool: ProcessPoolExecutor | None = ProcessPoolExecutor(
            1, mp_context=context, initializer=_exit_with, initargs=(os.getpid(),)
        )
        if table is None:  # start it now (a pool starts its process at the first task)
            self._pool.submit(_warm)
        else:
            self.serve(table, n_rows)

    def serve(self, table: Path, n_rows: int) -> None:
        """The table (n_rows rows, just written) that the tasks submitted next read."""
        stat = table.stat()
        self.identity = (str(table), stat.st_size, stat.st_mtime_ns, n_rows)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """`fn(frame, *args)` in the helper, `frame` the table (FORECAST_DTYPES); `fn` must
        be a module-level function (it is sent by name). A dead helper's future raises
        BrokenProcessPool: the callers then do the work themselves."""
        if self._pool is None:
            raise RuntimeError("the helper process is closed")
        if self.identity is None:
            raise RuntimeError("the helper has no table to read: call serve first")
        try:
            return self._pool.submit(_call, self.identity, fn, args)
        except BrokenProcessPool as exc:  # it died: the caller sees it where it waits
            failed: Future[Any] = Future()
            failed.set_exception(exc)
            return failed

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def start(idle: IdleMeter) -> Helper | None:
    """A helper process (started now, its table given later by `serve`), when a second core
    was idle since `idle` was made."""
    if cpus() < 2:
        return None
    free = idle.idle_cpus()
    helper = Helper() if free >= MIN_IDLE_CPUS else None
    log.info("assemble: %s helper process (%.1f CPUs idle)", "a" if helper else "no", free)
    return helper


class IdleMeter:
    """The machine's idle CPUs since it was made (every process's CPU counts as busy)."""

    def __init__(self) -> None:
        self._busy = OtherCpuMeter([])

    def idle_cpus(self) -> float:
        """Average idle CPUs since the start; with no /proc/stat (not Linux), cpus() - 1."""
        busy = self._busy.other_cpus()
        return float(cpus() - 1) if busy is None else (os.cpu_count() or 1) - busy


def cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# --- in the helper ---------------------------------------------------------------------------
_FRAME: dict[Identity, pd.DataFrame] = {}


def _exit_with(parent: int) -> None:
    """Exit when assemble's process dies (a SIGKILL, say): a pool's worker would otherwise
    wait for work forever, holding the forecast table."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _warm() -> None:
    """What every task needs, imported before the first one arrives."""
    import pipeline.schema
    import pipeline.stages.assemble_tables  # noqa: F401


def _call(identity: Identity, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    if identity not in _FRAME:
        from pipeline.schema import FORECAST_DTYPES

        path, size, mtime_ns, n_rows = identity
        frame = pd.read_parquet(path)
        stat = os.stat(path)
        # the very file assemble wrote for its frame (not one written since)
        if (stat.st_size, stat.st_mtime_ns, len(frame)) != (size, mtime_ns, n_rows):
            raise RuntimeError(f"the forecast table {path} changed while assemble ran")
        dtypes = {c: t for c, t in FORECAST_DTYPES.items() if c in frame.columns}
        _FRAME.clear()
        _FRAME[identity] = frame.astype(dtypes)
    return fn(_FRAME[identity], *args)

"""assemble's helper process: the second core renders charts and computes the coverage tests
and the decomposition while this process writes the forecast tables and computes the metric
tables (issues 18 item 5 and 19 item 4).

One spawned process (a `ProcessPoolExecutor` of one: it imports the package afresh, so the
caller's `__main__` needs the `if __name__ == "__main__":` guard, as for the Dask cluster).
It is handed assemble's rows as soon as they are reconciled, before the forecast tables are
written (`serve`): an uncompressed Arrow IPC file (in /dev/shm where it has room, else the temp
dir), which it memory-maps once
(no parse, no decompression; its size, mtime and row count are checked) and then removes from
the temp dir, and it sends back results (PNG bytes, small tables). It writes no output: this
process owns them.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from pipeline.runtime.sizing.resources import OtherCpuMeter

if TYPE_CHECKING:
    import pyarrow as pa

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

# Where the hand-off file goes when it has room for it twice over: a RAM disk (a new 300 MB file
# took 0.1 CPU-s there against 0.7-1.0 on this machine's disk, for the 1M-fit study); else, or
# where there is none (not Linux, a small container /dev/shm), the temp dir (TMPDIR).
RAM_DIR: str | None = "/dev/shm"
HANDOFF_PREFIX = "qpipe-assemble-rows-"  # then the writer's PID: orphans are found by it


class Helper:
    """One helper process for one assemble; `close` when done (also after a failure).

    Made with the rows it reads, or started early (`Helper()`: its Python starts on the
    second core while assemble reads) and given the rows by `serve`."""

    def __init__(self, table: pa.Table | None = None) -> None:
        self.identity: Identity | None = None
        self._handoff: Path | None = None
        context = multiprocessing.get_context("spawn")
        self._pool: ProcessPoolExecutor | None = ProcessPoolExecutor(
            1, mp_context=context, initializer=_exit_with, initargs=(os.getpid(),)
        )
        if table is None:  # start it now (a pool starts its process at the first task)
            self._pool.submit(_warm)
        else:
            self.serve(table)

    def serve(self, table: pa.Table) -> None:
        """The rows (assemble's frame as Arrow) that the tasks submitted next read: written
        once, uncompressed, to a temp file that the helper memory-maps."""
        import pyarrow as pa

        if self._handoff is not None:
            raise RuntimeError("the helper has its rows already")
        where = _ram_dir(table.nbytes)
        _remove_orphans(Path(where or tempfile.gettempdir()))
        fd, name = tempfile.mkstemp(
            prefix=f"{HANDOFF_PREFIX}{os.getpid()}-", suffix=".arrow", dir=where
        )
        os.close(fd)
        self._handoff = Path(name)
        with pa.OSFile(name, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        stat = self._handoff.stat()
        self.identity = (name, stat.st_size, stat.st_mtime_ns, table.num_rows)

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
        if self._handoff is not None:
            self._handoff.unlink(missing_ok=True)
            self._handoff = None


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


def _remove_orphans(folder: Path) -> None:
    """Remove hand-off files whose assemble died (SIGKILL between the write and the helper's
    map): in /dev/shm they would hold RAM until the next boot. The writer's PID is in the name;
    a live process's file (another assemble now) is left alone."""
    try:
        found = list(folder.glob(f"{HANDOFF_PREFIX}*-*.arrow"))
    except OSError:  # no such folder: serve's write says so
        return
    for path in found:
        pid = path.name[len(HANDOFF_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _ram_dir(nbytes: int) -> str | None:
    """RAM_DIR where it is a writable folder with room for 2 x nbytes, else None (the temp
    dir)."""
    if RAM_DIR is None:
        return None
    try:
        stat = os.statvfs(RAM_DIR)
    except (OSError, AttributeError):  # none there, or not a POSIX system
        return None
    room = stat.f_bavail * stat.f_frsize
    return RAM_DIR if room > 2 * nbytes and os.access(RAM_DIR, os.W_OK) else None


def cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# --- in the helper ---------------------------------------------------------------------------
_FRAME: dict[Identity, pd.DataFrame] = {}  # the frame (its strings still in the mapped file)


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
        import pyarrow as pa

        from pipeline.schema import FORECAST_DTYPES

        path, size, mtime_ns, n_rows = identity
        # mapped, not read: the numbers are copied into the frame, the strings stay in the
        # map (which lives as long as the frame's buffers do)
        table = pa.ipc.open_file(pa.memory_map(path)).read_all()
        stat = os.stat(path)
        # the very file assemble wrote for its rows (not one written since)
        if (stat.st_size, stat.st_mtime_ns, table.num_rows) != (size, mtime_ns, n_rows):
            raise RuntimeError(f"the rows {path} changed while assemble ran")
        # gone from the temp dir once mapped (the map keeps it), so an assemble killed now
        # leaves no file of hundreds of MB behind; else `Helper.close` removes it
        with contextlib.suppress(OSError):  # e.g. a system that cannot remove a mapped file
            os.unlink(path)
        frame = table.to_pandas()
        del table
        dtypes = {c: t for c, t in FORECAST_DTYPES.items() if c in frame.columns}
        _FRAME.clear()
        _FRAME[identity] = frame.astype(dtypes)
    return fn(_FRAME[identity], *args)

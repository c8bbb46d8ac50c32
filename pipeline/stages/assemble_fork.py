"""A fork of assemble's process that works on the second core while this process writes the
forecast tables and computes the metric tables (issue 18 item 5, issue 19 item 4): at scale
the coverage tests, the MCS and the pinball decomposition, then (at any size) some of the
charts.

A fork costs a few milliseconds and already holds everything: the frame (shared copy-on-write:
only the pages either process writes are copied), pandas, matplotlib, the fonts. The spawned
helper it replaces was a fresh Python (~1.2 CPU-s to start) that got the rows through an Arrow
file in /dev/shm and parsed them again, so it could start its tests only ~3 s into a 1M-fit
assemble (benchmarks/README.md, seventh pass). Where no fork is possible (not Linux) or no core
is idle, this process does all the work itself: the same bytes.

Linux only (a fork of a process with threads is safe there for what the child does: numpy,
pandas, pyarrow (whose thread pools are re-made after a fork) and a pipe; it takes no lock
another thread may hold: no logging handler of ours, no SQLite, no Dask: the cluster is gone
before assemble), and it ends by `os._exit` (nothing of this process's state is flushed or
closed twice).

Protocol, one request at a time (`submit` blocks; `submit_async` waits in a thread): the
parent writes a length-prefixed JSON request (a module-level function by name and its JSON
arguments), the child answers with a status byte and length-prefixed bytes (the result, or
the error's text). The child exits at EOF of the requests (the parent closed them, or died)
and is killed with the parent (PR_SET_PDEATHSIG): a SIGKILLed run leaves no process holding
its output dir's lock. A child that dies or does not answer in time is killed, and the caller
does the work itself (BrokenProcessPool).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import logging
import os
import select
import signal
import struct
import sys
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import pandas as pd

from pipeline.runtime.sizing.resources import OtherCpuMeter

log = logging.getLogger("pipeline.stages.assemble")
_HEADER = struct.Struct("<BQ")  # status (0 ok, 1 error), payload length
_LENGTH = struct.Struct("<Q")
# A chart the child has not answered in this long is taken back (the child killed, the chart
# rendered here): the largest (a seed fan chart of six panels) takes under a second, so only a
# stuck child waits this long (a machine 50x slower than this idle one still answers).
REPLY_TIMEOUT_S = 60.0
# Idle CPUs (averaged since assemble began) below which no fork is made: on a machine whose
# cores are busy (a loaded shared machine; Linux's autogroup scheduler then splits this
# session's share between the two processes) a second process only adds its cost.
MIN_IDLE_CPUS = 0.5


def can_fork() -> bool:
    """Whether this platform forks safely for this work (Linux)."""
    return sys.platform.startswith("linux") and hasattr(os, "fork")


def start(frame: pd.DataFrame, idle: IdleMeter, what: str) -> Fork | None:
    """A fork holding `frame`, when this platform forks, the process may use two CPUs and a
    second one was idle since `idle` was made; else None (`what`: for the log line)."""
    if not can_fork() or cpus() < 2:
        return None
    free = idle.idle_cpus()
    if free < MIN_IDLE_CPUS:
        log.info("assemble: no process for %s (%.1f CPUs idle)", what, free)
        return None
    try:
        fork = Fork(frame)
    except OSError as exc:  # no memory or no process left for a fork: all done here
        log.info("assemble: no process for %s (%s)", what, exc)
        return None
    log.info("assemble: a process for %s (%.1f CPUs idle)", what, free)
    return fork


class Fork:
    """A forked child with `frame` in its memory; `submit(fn, *args)` runs `fn(frame, *args)`
    there (fn module-level, args JSON values, result bytes); `close` ends it."""

    def __init__(self, frame: pd.DataFrame) -> None:
        requests_r, requests_w = os.pipe()
        replies_r, replies_w = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: never returns into the caller's code
            code = 1
            try:
                os.close(requests_w)
                os.close(replies_r)
                _serve(frame, requests_r, replies_w, parent)
                code = 0
            finally:
                os._exit(code)
        os.close(requests_r)
        os.close(replies_w)
        self._pid: int | None = pid
        self._requests, self._replies = requests_w, replies_r
        self._lock = threading.Lock()

    def submit(
        self, fn: Callable[..., bytes], *args: Any, timeout_s: float = REPLY_TIMEOUT_S
    ) -> Future[bytes]:
        """`fn(frame, *args)` in the child, done when this returns. A child that died or did
        not answer in `timeout_s` is killed and its future raises BrokenProcessPool: the
        caller does the work itself."""
        future: Future[bytes] = Future()
        request = json.dumps({"fn": [fn.__module__, fn.__qualname__], "args": args}).encode()
        with self._lock:
            if self._pid is None:
                future.set_exception(BrokenProcessPool("the forked process is closed"))
                return future
            try:
                _write(self._requests, _LENGTH.pack(len(request)) + request)
                status, payload = self._reply(timeout_s)
            except (OSError, EOFError, TimeoutError) as exc:
                self._kill()
                future.set_exception(BrokenProcessPool(f"the forked process died: {exc!r}"))
                return future
        if status:
            future.set_exception(RuntimeError(f"forked process: {payload.decode()}"))
        else:
            future.set_result(payload)
        return future

    def submit_async(
        self, fn: Callable[..., bytes], *args: Any, timeout_s: float = REPLY_TIMEOUT_S
    ) -> Future[bytes]:
        """`submit`, waited for in a thread: this process goes on meanwhile (requests made
        later, the charts, wait for this one's answer)."""
        future: Future[bytes] = Future()

        def wait() -> None:
            try:
                future.set_result(self.submit(fn, *args, timeout_s=timeout_s).result())
            except BaseException as exc:  # the caller sees it where it waits
                future.set_exception(exc)

        threading.Thread(target=wait, daemon=True).start()
        return future

    def _reply(self, timeout_s: float) -> tuple[int, bytes]:
        ready, _, _ = select.select([self._replies], [], [], timeout_s)
        if not ready:
            raise TimeoutError(f"no answer in {timeout_s:.0f} s")
        status, size = _HEADER.unpack(_read(self._replies, _HEADER.size))
        return status, _read(self._replies, size)

    def close(self) -> None:
        """End the child (after the request it works on, if any) and reap it."""
        with self._lock:
            if self._pid is None:
                return
            os.close(self._requests)  # EOF: the child exits
            os.close(self._replies)
            os.waitpid(self._pid, 0)
            self._pid = None

    def abort(self) -> None:
        """Kill the child now (assemble failed: nothing it computes is wanted) and reap it; a
        thread waiting on its answer gets BrokenProcessPool."""
        pid = self._pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.close()

    def _kill(self) -> None:
        if self._pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
            os.close(self._requests)
            os.close(self._replies)
            os.waitpid(self._pid, 0)
            self._pid = None


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


# --- in the child ------------------------------------------------------------------------------
def _serve(frame: pd.DataFrame, requests: int, replies: int, parent: int) -> None:
    """The child's loop: answer requests until EOF."""
    gc.freeze()  # the collector then leaves the parent's objects alone: no copy of their pages
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent(parent)
    while True:
        try:
            (size,) = _LENGTH.unpack(_read(requests, _LENGTH.size))
        except EOFError:
            return
        try:
            request = json.loads(_read(requests, size))
            module, name = request["fn"]
            fn = getattr(importlib.import_module(module), name)
            status, payload = 0, bytes(fn(frame, *request["args"]))
        except Exception:
            status, payload = 1, traceback.format_exc().encode()
        _write(replies, _HEADER.pack(status, len(payload)) + payload)


def _die_with_parent(parent: int) -> None:
    """SIGKILL this process when the parent dies (Linux's PR_SET_PDEATHSIG)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before the prctl
        os._exit(1)


def _read(fd: int, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError("the other end closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]

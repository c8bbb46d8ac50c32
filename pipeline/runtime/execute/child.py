"""A killable child process that runs top-level functions for the driver (no Dask).

Used where work would otherwise run inside the driver itself: tasks too small for a cluster
(pipeline.runtime.execute.inprocess) and the user-model check
(pipeline.runtime.execute.model_check). The child is started like a worker (spawned,
`worker_environment`: one thread per math library, glibc's malloc defaults), dies with the
driver (PR_SET_PDEATHSIG), and is kept for the next call. `shared_child` keeps one such child
for the driver's whole process, so the models of a run (and the user-model check) pay for one
spawn and one import of the solvers, not one each. `Child.run` waits for the result (the
child's `pipeline.*` log records are logged by the driver meanwhile) while watching the clock
and the child's RSS, as a Dask nanny watches its worker: past the timeout or the memory limit
the child is killed (SIGKILL, so a fit stuck in C code stops too) and `ChildKilled` says why;
a fresh child serves the next call.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

POLL_S = 0.05  # how often the clock and the child's RSS are checked while it works
PR_SET_PDEATHSIG = 1
# starts every child (Child._start); its one thread waits for work until the driver exits
_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qpipe-child-spawner")


class ChildKilled(Exception):
    """The child was stopped: `reason` is 'timeout', 'memory' or 'worker-lost' (it died)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ChildError(Exception):
    """The function raised in the child: its type name, message and traceback, as text
    (exception objects are not sent back: a user's may not survive the trip)."""

    def __init__(self, error_type: str, message: str, trace: str) -> None:
        super().__init__(message)
        self.error_type, self.trace = error_type, trace


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask Linux to send `sig` to this process when its parent dies (no-op elsewhere)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the driver's own cleanup still applies
        pass


class Child:
    """One worker-like child process, started on first use; `close()` ends it."""

    def __init__(self, memory_limit_mb: float | None = None) -> None:
        self.memory_limit_mb = memory_limit_mb
        self.proc: Any = None
        self.conn: Connection | None = None
        self.outstanding = 0  # requests sent whose result has not been received

    def start(self, preload: tuple[str, ...] = ()) -> None:
        """Start the child now (if it is not running), importing `preload` before it serves:
        the spawn and the imports then overlap with the driver's own work (prepare, the
        probe) instead of delaying the first call."""
        if self.proc is None or not self.proc.is_alive():
            self.close()
            self._start(preload)

    def _start(self, preload: tuple[str, ...] = ()) -> None:
        # here, not at module level: the spawned child imports this module to unpickle
        # `_serve`, and the sizing plan's chain (config, fit groups) is the driver's alone
        from pipeline.runtime.sizing.plan import worker_environment

        ctx = multiprocessing.get_context("spawn")  # no fork of a driver holding threads
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_serve, args=(child, os.getpid(), preload), daemon=True)

        def spawn() -> None:
            saved = dict(os.environ)
            os.environ.clear()
            os.environ.update(worker_environment(saved))  # what the spawned child starts with
            try:
                proc.start()
            finally:
                os.environ.clear()
                os.environ.update(saved)

        # Linux sends PR_SET_PDEATHSIG when the *thread* that started the child ends, not the
        # process: a child started by one model's lane thread was killed with that lane while
        # another model's task ran in it. So every child is started by one thread that lives
        # as long as the driver.
        _SPAWNER.submit(spawn).result()
        child.close()
        self.proc, self.conn = proc, parent

    def run(
        self,
        fn: Callable[[Any], Any],
        arg: Any,
        timeout_s: float | None,
        memory_limit_mb: float | None = None,
    ) -> Any:
        """fn(arg) in the child; ChildError when it raised, ChildKilled when it was stopped
        (`memory_limit_mb`, when given, replaces the child's own limit for this call)."""
        self.send(fn, arg)
        return self.receive(timeout_s, memory_limit_mb)

    def send(self, fn: Callable[[Any], Any], arg: Any) -> None:
        """Queue fn(arg) in the child (started if need be) without waiting: the child runs its
        requests in order, so one sent while another runs starts as soon as that one ends, and
        `receive` returns their results in the same order."""
        if self.outstanding == 0 and (self.proc is None or not self.proc.is_alive()):
            self.close()
            self._start()
        assert self.conn is not None
        # a child that died with requests in it loses this one too, and `receive` of the
        # first says so (no fresh child here: its results would be read back as theirs)
        with contextlib.suppress(OSError):
            self.conn.send((fn, arg))
        self.outstanding += 1

    def receive(self, timeout_s: float | None, memory_limit_mb: float | None = None) -> Any:
        """The result of the oldest request sent, as `run` returns it; `timeout_s` counts from
        this call (the request started when the one before it returned, or was sent). When the
        child is killed, the requests sent after this one are lost with it (`outstanding` 0)."""
        limit_mb = memory_limit_mb or self.memory_limit_mb
        assert self.conn is not None and self.outstanding > 0, "send() first"
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            ready = self.conn.poll(POLL_S)
            if ready:
                try:
                    status, value = self.conn.recv()
                except (EOFError, OSError):
                    raise self._lost() from None
                if status == "log":  # the child's pipeline.* records, as forward_logging does
                    record = logging.makeLogRecord(value)
                    logging.getLogger(record.name).handle(record)
                    continue
                self.outstanding -= 1
                if status == "ok":
                    return value
                raise ChildError(*value)
            if not self.proc.is_alive() and not self.conn.poll(0):
                raise self._lost()
            rss_mb = _rss_mb(self.proc.pid)
            if limit_mb and rss_mb > limit_mb:
                self.close()
                raise ChildKilled(
                    "memory",
                    f"child process killed at {rss_mb:.0f} MiB, over the memory limit of "
                    f"{limit_mb:.0f} MiB",
                )
            if deadline is not None and time.monotonic() > deadline:
                self.close()
                raise ChildKilled(
                    "timeout",
                    f"still running after runtime.task_timeout_s = {timeout_s:g} s: stopped",
                )

    def _lost(self) -> ChildKilled:
        self.proc.join(5)
        code = self.proc.exitcode
        self.close()
        if code == -signal.SIGKILL or code == -signal.SIGSEGV or code is None:
            what = f"signal {-code}" if code is not None else "unknown cause"
        else:
            what = f"exit code {code}"
        return ChildKilled("worker-lost", f"child process died ({what})")

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.is_alive():
                self.proc.kill()
            self.proc.join(10)
            self.proc.close()
        if self.conn is not None:
            self.conn.close()
        self.proc, self.conn, self.outstanding = None, None, 0

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_SHARED: dict[int, Child] = {}  # at most one: the child of the current environment


def shared_child() -> Child:
    """The driver's child, kept (alive between calls) until the process exits; a call that
    kills it (timeout, memory) leaves a fresh one to start on next use. Each call passes its
    own memory limit to `run`. A child sees the environment and sys.path it was spawned with,
    so a change to either (a sweep job's, a test's) gets a fresh child."""
    started_with = hash((tuple(sorted(os.environ.items())), tuple(sys.path)))
    if started_with not in _SHARED:
        close_shared_child()
        _SHARED[started_with] = Child()
    return _SHARED[started_with]


def close_shared_child() -> None:
    for child in _SHARED.values():
        child.close()
    _SHARED.clear()


atexit.register(close_shared_child)


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, IndexError, ValueError):
        return 0.0


def _serve(conn: Connection, parent: int, preload: tuple[str, ...] = ()) -> None:
    """The child's loop: run each (fn, arg) received, send back ("ok", result) or ("error", …)."""
    import importlib

    die_with_parent()
    if os.getppid() != parent:  # the driver died before the request above took effect
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    for module in preload:
        # on failure it is imported again where it is used, which then reports the error
        with contextlib.suppress(Exception):
            importlib.import_module(module)
    forward = _Forward(conn)
    logging.getLogger("pipeline").addHandler(forward)
    logging.getLogger("pipeline").setLevel(logging.INFO)
    # requests are read as they come, so the driver's send of the next one never waits for
    # this one to end (both ends blocked on a full pipe would deadlock)
    requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
    threading.Thread(
        target=_read, args=(conn, requests), name="qpipe-requests", daemon=True
    ).start()
    while True:
        request = requests.get()
        if request is None:
            return
        fn, arg = request
        try:
            reply: tuple[str, Any] = ("ok", fn(arg))
        except Exception as error:
            reply = ("error", (type(error).__name__, str(error), traceback.format_exc()))
        conn.send(reply)


def _read(conn: Connection, requests: queue.SimpleQueue[Any]) -> None:
    """Queue each (fn, arg) the driver sends; None when it is gone, or when a request cannot
    be read (its function's module fails to import): the child then ends after the requests
    before it, and the driver reports that one's task as lost."""
    try:
        while True:
            requests.put(conn.recv())
    except (EOFError, OSError):
        pass
    except Exception:
        traceback.print_exc()
    requests.put(None)


class _Forward(logging.Handler):
    """Send the child's log records to the driver, which logs them (its run log included)."""

    def __init__(self, conn: Connection) -> None:
        super().__init__(logging.INFO)
        self.conn = conn

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = {k: v for k, v in vars(record).items() if k not in ("args", "exc_info")}
            fields["msg"], fields["args"] = record.getMessage(), None
            self.conn.send(("log", fields))
        except Exception:  # a record that cannot be sent is not worth failing a task
            self.handleError(record)

"""A stop request shared by the driver threads that train several models at once.

Signals reach only the main thread, and a run that trains its models side by side
(pipeline/stages/train_lanes.py) waits there while one driver thread per model runs its task
loop. The main thread's SIGINT/SIGTERM handler sets the flag; each loop checks it while it
waits (the task streams poll it) and raises `Stopped`, which unwinds that model's train as
an interrupt does in the main thread (in-flight fits back to pending, progress exported).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, NoReturn

POLL_S = 0.05  # how often a waiting loop looks at the flag


class Stopped(BaseException):
    """A stop was asked for: `name` says why (a signal's name), `code` the exit status."""

    def __init__(self, name: str, code: int) -> None:
        super().__init__(name)
        self.name, self.code = name, code


class StopFlag:
    """Set once (the first reason wins); `check()` raises `Stopped` once it is set. A wait on
    something else (a task stream's results) registers a `waking` call, so that a stop ends it
    at once rather than at its next poll."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.name, self.code = "", 0
        self.at = 0.0  # time.monotonic() when it was set
        self._wakers: list[Callable[[], None]] = []

    def set(self, name: str, code: int) -> None:
        if not self._event.is_set():
            self.name, self.code, self.at = name, code, time.monotonic()
            self._event.set()
            for wake in list(self._wakers):  # a copy: a waiter may leave meanwhile
                wake()

    @contextmanager
    def waking(self, wake: Callable[[], None]) -> Iterator[None]:
        """While inside, `set` calls `wake()` in the thread that sets the flag (a signal
        handler in the main thread included: `wake` must take no lock that thread may hold
        other than re-entrantly)."""
        self._wakers.append(wake)
        try:
            yield
        finally:
            self._wakers.remove(wake)

    def is_set(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Stopped(self.name, self.code)


@contextmanager
def holding(lock: threading.Lock, stop: StopFlag | None) -> Iterator[None]:
    """Hold `lock`; while waiting for it, a stop request raises `Stopped`."""
    while not lock.acquire(timeout=POLL_S):
        if stop is not None:
            stop.check()
    try:
        yield
    finally:
        lock.release()


@contextmanager
def on_stop_signals(act: Callable[[str, int], None]) -> Iterator[None]:
    """While inside, SIGINT/SIGTERM call `act(signal name, exit code 130/143)`; in the main
    thread only (elsewhere Python cannot install handlers: they are left alone). A signal the
    process was started ignoring stays ignored: a shell starts a background job (`qpipe run &`
    in a script) and nohup a command with SIGINT ignored, and taking it over here would make
    Ctrl-C stop a run or not depending on whether it came before or after this point."""
    saved: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
            if signal.getsignal(sig) is signal.SIG_IGN:
                continue
            saved[sig] = signal.signal(sig, lambda s, f, c=code: act(signal.Signals(s).name, c))
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


# set by the command line (`run`, `stage`): only there may a stop end the process at once; a
# library caller's process (pipeline.backtest in a notebook) is never ended
_END_NOW_ALLOWED = threading.Event()


@contextmanager
def ending_now_allowed() -> Iterator[None]:
    """While inside (the command's own run), a stop may end the process at once."""
    _END_NOW_ALLOWED.set()
    try:
        yield
    finally:
        _END_NOW_ALLOWED.clear()


def end_now_allowed() -> bool:
    return _END_NOW_ALLOWED.is_set()


# calls that quiet a thread which could make child processes or named semaphores while
# end_now works (the study's LocalCluster's event loop, where each nanny makes its queues):
# registered by the Dask layer, which this module does not import
_QUIETERS: list[Callable[[], None]] = []


@contextmanager
def quieted_by_end_now(quiet: Callable[[], None]) -> Iterator[None]:
    """While inside, `end_now` calls `quiet()` before its kills: it must return within about a
    second, leaving the thread it quiets blocked until the process exits."""
    _QUIETERS.append(quiet)
    try:
        yield
    finally:
        _QUIETERS.remove(quiet)


def end_now(code: int, line: str | None = None) -> NoReturn:
    """Exit with `code` at once: one line, every descendant process SIGKILLed (workers being
    spawned by a cluster that is still starting), then os._exit without unwinding. For a stop
    that would otherwise wait seconds for code that cannot be interrupted (LocalCluster's
    start): what is on disk is exactly what a SIGKILL leaves, which a resume handles (every
    write is atomic, the progress store is SQLite WAL, the output manifest is saved ahead)."""
    try:
        import psutil

        if line:
            logging.getLogger("pipeline.train").warning(line)
        logging.shutdown()  # flush the terminal and the run log
        # first the cluster's event loop: a nanny starting meanwhile made a queue (three
        # semaphores) after the unlink below, which the resource tracker then reported as
        # leaked on the terminal once this process had gone (1 stop in 40 under load)
        for quiet in list(_QUIETERS):
            with suppress(Exception):
                quiet()
        me = psutil.Process()
        # until a round finds no child: a nanny's thread may still spawn a worker it was asked
        # for before the loop stopped; left, that child failed to rebuild the semaphores just
        # unlinked and printed a traceback on the terminal after this process had gone. The
        # last kill takes one spawned in the last moment.
        for _ in range(3):
            found = _kill_descendants(me)
            _unlink_semaphores()
            if not found:
                break
        _kill_descendants(me)
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _kill_descendants(me: Any) -> bool:
    """SIGKILL every descendant process of `me` (a psutil.Process) and wait for them, but
    multiprocessing's resource tracker (left to end on its own when this process does:
    killed, it is relaunched with a warning). Whether there was any."""
    import psutil

    found = False
    for _ in range(5):  # a nanny may spawn its worker between a listing and the kills
        children = [p for p in me.children(recursive=True) if not _is_resource_tracker(p)]
        if not children:
            break
        found = True
        for child in children:
            with suppress(psutil.NoSuchProcess):
                child.kill()
        psutil.wait_procs(children, timeout=1.0)
    return found


def _unlink_semaphores() -> None:
    """Unlink the named semaphores this process made for the children it spawned (a Dask
    nanny's queues), as multiprocessing's exit finalizers do at a normal exit and os._exit
    skips; left, the resource tracker unlinks them once this process is gone and prints
    "There appear to be N leaked semaphore objects to clean up at shutdown" on the terminal.
    Their users, the children, are killed by now."""
    synchronize = sys.modules.get("multiprocessing.synchronize")
    if synchronize is None:  # never imported: no semaphore was made
        return
    from multiprocessing import util

    # (multiprocessing's own exit finalizers and the semaphores' one: private, looked up softly)
    cleanup = getattr(synchronize.SemLock, "_cleanup", None)
    for finalizer in list(getattr(util, "_finalizer_registry", {}).values()):
        if cleanup is not None and getattr(finalizer, "_callback", None) is cleanup:
            with suppress(Exception):  # unlinked meanwhile (its queue closed on a thread)
                finalizer()
    # a thread closing a queue may be between its semaphore's unlink and the tracker's
    # unregister (its finalizer already out of the registry, so not listed above): os._exit
    # there leaves the tracker a name it then reports as leaked. A moment's GIL lets it finish.
    time.sleep(0.05)


def _is_resource_tracker(process: Any) -> bool:
    try:
        return any("resource_tracker" in part for part in process.cmdline())
    except Exception:  # gone meanwhile, or not ours to read
        return False

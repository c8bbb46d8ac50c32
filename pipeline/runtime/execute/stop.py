"""A stop request shared by the driver threads that train several models at once.

Signals reach only the main thread, and a run that trains its models side by side
(pipeline/stages/train_lanes.py) waits there while one driver thread per model runs its task
loop. The main thread's SIGINT/SIGTERM handler sets the flag; each loop checks it while it
waits (the task streams poll it) and raises `Stopped`, which unwinds that model's train as
an interrupt does in the main thread (in-flight fits back to pending, progress exported).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

POLL_S = 0.05  # how often a waiting loop looks at the flag


class Stopped(BaseException):
    """A stop was asked for: `name` says why (a signal's name), `code` the exit status."""

    def __init__(self, name: str, code: int) -> None:
        super().__init__(name)
        self.name, self.code = name, code


class StopFlag:
    """Set once (the first reason wins); `check()` raises `Stopped` once it is set."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.name, self.code = "", 0

    def set(self, name: str, code: int) -> None:
        if not self._event.is_set():
            self.name, self.code = name, code
            self._event.set()

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

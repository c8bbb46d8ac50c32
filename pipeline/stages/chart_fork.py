"""A fork of assemble's process that renders some of the charts on the second core while this
process computes the metric tables (issue 18: the small ar_qr study).

assemble's spawned helper (stages/assemble_helper.py) is a fresh Python that imports pandas and
matplotlib and reads the forecast table again (~1.2 CPU-s): more than it saves for a small
study's 16 chart panels, and it renders nothing for its first second. A fork costs a few
milliseconds and already holds all of that: the frame, matplotlib, the fonts; the helper
renders charts now only where it runs anyway (`charts.ChartRun.wants_helper`).

Linux only (a fork of a process with threads is safe there for what the child does: the chart
code and a pipe; it takes no lock another thread may hold: no logging handler of ours, no
SQLite, no Dask), and it ends by `os._exit` (nothing of this process's state is flushed or
closed twice).

Protocol, one request at a time (`submit` blocks: the caller is `ChartRun`'s feeder thread):
the parent writes a length-prefixed JSON request (a module-level function by name and its
JSON arguments), the child answers with a status byte and length-prefixed bytes (the PNG, or
the error's text). The child exits at EOF of the requests (the parent closed them, or died)
and is killed with the parent (PR_SET_PDEATHSIG): a SIGKILLed run leaves no process holding
its output dir's lock.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
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

_HEADER = struct.Struct("<BQ")  # status (0 ok, 1 error), payload length
_LENGTH = struct.Struct("<Q")
# A chart the child has not answered in this long is taken back (the child killed, the chart
# rendered here): the largest (a seed fan chart of six panels) takes under a second, so only a
# stuck child waits this long (a machine 50x slower than this idle one still answers).
REPLY_TIMEOUT_S = 60.0


def can_fork() -> bool:
    """Whether this platform forks safely for the chart code (Linux)."""
    return sys.platform.startswith("linux") and hasattr(os, "fork")


class ForkedRenderer:
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

    def submit(self, fn: Callable[..., bytes], *args: Any) -> Future[bytes]:
        """`fn(frame, *args)` in the child, done when this returns. A dead or stuck child's
        future raises BrokenProcessPool (as assemble_helper.Helper's): the caller renders it."""
        future: Future[bytes] = Future()
        request = json.dumps({"fn": [fn.__module__, fn.__qualname__], "args": args}).encode()
        with self._lock:
            try:
                if self._pid is None:
                    raise BrokenProcessPool("the chart process is closed")
                _write(self._requests, _LENGTH.pack(len(request)) + request)
                status, payload = self._reply()
            except (OSError, EOFError, TimeoutError) as exc:
                self._kill()
                future.set_exception(BrokenProcessPool(f"the chart process died: {exc!r}"))
                return future
        if status:
            future.set_exception(RuntimeError(f"chart process: {payload.decode()}"))
        else:
            future.set_result(payload)
        return future

    def _reply(self) -> tuple[int, bytes]:
        ready, _, _ = select.select([self._replies], [], [], REPLY_TIMEOUT_S)
        if not ready:
            raise TimeoutError(f"no answer in {REPLY_TIMEOUT_S:.0f} s")
        status, size = _HEADER.unpack(_read(self._replies, _HEADER.size))
        return status, _read(self._replies, size)

    def close(self) -> None:
        """End the child (after the chart it renders, if any) and reap it."""
        with self._lock:
            if self._pid is None:
                return
            os.close(self._requests)  # EOF: the child exits
            os.close(self._replies)
            os.waitpid(self._pid, 0)
            self._pid = None

    def _kill(self) -> None:
        if self._pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
            os.close(self._requests)
            os.close(self._replies)
            os.waitpid(self._pid, 0)
            self._pid = None


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

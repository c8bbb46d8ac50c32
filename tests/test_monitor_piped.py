"""`qpipe monitor --watch` into a pipe (`| cat`, a log file): each refresh is printed as plain
text under a time stamp and flushed, while the run goes on.

Before this fix rich's Live display printed nothing to a pipe until the monitor stopped (and
the `waiting for a run` line sat in the block buffer), so `| tee log` showed nothing."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import ROOT
from test_monitor import _store_with_a_task_in_flight

# no PYTHONUNBUFFERED: the monitor itself must flush what it prints to a pipe
ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONUNBUFFERED", "FORCE_COLOR")}


def _lines(stream: object, into: queue.Queue[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        into.put(line)


def test_watch_into_a_pipe_prints_plain_flushed_refreshes(tmp_path: Path) -> None:
    _store_with_a_task_in_flight(tmp_path, os.getpid())
    watch = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "monitor", "--output-dir", str(tmp_path), "--watch",
         "--interval", "0.2"],
        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=_lines, args=(watch.stdout, lines), daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 20
        while sum(line.startswith("--- ") for line in seen) < 3 and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                seen.append(lines.get(timeout=1))
        running = watch.poll() is None  # the refreshes came while the monitor still runs
        watch.send_signal(signal.SIGINT)
        watch.wait(timeout=30)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
        reader.join(10)  # at the pipe's end once the monitor exited
        watch.stdout.close()
        watch.stderr.close()
    text = "".join(seen)
    assert running and sum(line.startswith("--- ") for line in seen) >= 3, text
    assert "training" in text and "running" in text
    assert "\x1b" not in text  # no colour, no cursor movement
    assert watch.returncode == 0

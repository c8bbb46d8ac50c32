"""The Dask scheduler of an existing cluster dies mid-train (restarted by its admin, its
machine lost): the run stops at once with one line naming the scheduler (exit 1, progress
saved), not a retry of every fit one by one that then waited forever for workers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import NO_DASHBOARD, ROOT, stop_processes

from pipeline.errors import SchedulerLost

DASK = str(Path(sys.executable).with_name("dask"))


def _slow(payload: dict[str, Any]) -> dict[str, Any]:
    time.sleep(payload["s"])
    return payload


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_a_lost_scheduler_stops_the_task_stream_with_one_line() -> None:
    from distributed import Client

    from pipeline.runtime.execute.dask.task_stream import TaskStream

    address = f"tcp://127.0.0.1:{_free_port()}"
    port = address.rsplit(":", 1)[1]
    # the scheduler and worker import this module to unpickle its task (their own path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    quiet = {"cwd": ROOT, "env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    scheduler = subprocess.Popen(
        [DASK, "scheduler", "--host", "127.0.0.1", "--port", port, *NO_DASHBOARD], **quiet
    )
    worker = subprocess.Popen(
        [DASK, "worker", address, "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"],
        **quiet,
    )
    try:
        with Client(address, timeout=60) as client:
            client.wait_for_workers(1, timeout=120)
            stream = TaskStream(client, _slow)
            stream.submit("quick", {"s": 0})
            stream.submit("slow", {"s": 60})
            results = iter(stream)
            assert next(results)[0] == "quick"
            scheduler.kill()
            t0 = time.monotonic()
            with pytest.raises(SchedulerLost) as lost:
                list(results)
            assert time.monotonic() - t0 < 30
            stream.close()
        message = str(lost.value)
        assert address in message and "rerun the same command to resume" in message
    finally:
        stop_processes([worker, scheduler])

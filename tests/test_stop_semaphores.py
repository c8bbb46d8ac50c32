"""A stop that ends the run at once (stop.end_now: SIGTERM/SIGINT while the Dask cluster
starts) leaves no named semaphore behind and prints nothing of multiprocessing's: a nanny's
queues are made with the spawn start method, whose semaphores are named so that its worker
can open them; os._exit skipped the finalizers that unlink them at a normal exit, and the
resource tracker then unlinked them itself, printing "There appear to be N leaked semaphore
objects to clean up at shutdown" on the user's terminal after the run had ended."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

# what a Dask nanny makes before it spawns its worker (two such queues per nanny), then the stop
SCRIPT = """
import multiprocessing
from pipeline.runtime.execute.stop import end_now

queue = multiprocessing.get_context("spawn").Queue()
print(queue._rlock._semlock.name, queue._sem._semlock.name, flush=True)
end_now(143, "stopped")
"""


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="named semaphores live in /dev/shm")
def test_end_now_unlinks_the_spawn_semaphores_and_the_tracker_says_nothing() -> None:
    # communicate() waits for the resource tracker too: it holds the child's stderr open
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 143, done.stderr
    assert "leaked semaphore" not in done.stderr and "resource_tracker" not in done.stderr, (
        done.stderr
    )
    names = done.stdout.split()
    assert len(names) == 2, done.stdout
    # a semaphore named "/mp-abc" is the file /dev/shm/sem.mp-abc while it is linked
    assert [n for n in names if Path(f"/dev/shm/sem.{n.lstrip('/')}").exists()] == []

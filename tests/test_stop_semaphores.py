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


# a cluster's event loop starting nannies while the stop runs: each makes a queue (three named
# semaphores) every few milliseconds, before, during and after end_now's unlink
STARTING_LOOP = """
import asyncio, multiprocessing, threading, time
from pipeline.runtime.execute.dask.cluster import _LoopParking
from pipeline.runtime.execute.stop import end_now, quieted_by_end_now

queues = []

async def nannies_starting():
    while True:
        queues.append(multiprocessing.get_context("spawn").Queue())
        await asyncio.sleep(0.002)

parking = _LoopParking()

def run():
    loop = asyncio.new_event_loop()
    parking.loop = loop
    loop.run_until_complete(nannies_starting())

threading.Thread(target=run, daemon=True).start()
while len(queues) < 5:
    time.sleep(0.01)
with quieted_by_end_now(parking.park if PARK else lambda: None):
    end_now(143, "stopped")
"""


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="named semaphores live in /dev/shm")
@pytest.mark.parametrize("park", [True, False])
def test_end_now_parks_the_cluster_loop_before_it_unlinks(park: bool) -> None:
    done = subprocess.run(
        [sys.executable, "-c", f"PARK = {park}\n{STARTING_LOOP}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 143, done.stderr
    # parked, the loop made no queue after the unlink; left running (as before), it made some
    # in the unlink's moment of GIL and the tracker reported them on the terminal
    assert ("leaked semaphore" in done.stderr) is not park, done.stderr

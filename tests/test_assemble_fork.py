"""assemble's fork (stages/assemble_fork.py): it runs functions on the frame it was forked
with, says when it died, failed or hung (then it is killed), and does not outlive a killed
assemble (SIGKILL, as the resume tests do), so the output dir's lock goes with the run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pandas as pd
import pytest
from conftest import process_alive

from pipeline.stages import assemble_fork
from pipeline.stages.assemble_fork import Fork

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not assemble_fork.can_fork(), reason="forks on Linux only")


def describe(frame: pd.DataFrame, column: str, times: int) -> bytes:
    """What the tests ask the child for: its pid and a column of the frame it holds."""
    return f"{os.getpid()}:{','.join(frame[column].astype(str)) * times}".encode()


def fail(frame: pd.DataFrame) -> bytes:
    raise ValueError(f"no chart for {len(frame)} rows")


def stall(frame: pd.DataFrame, seconds: float) -> bytes:
    time.sleep(seconds)
    return str(os.getpid()).encode()


def test_the_child_answers_from_the_frame_it_was_forked_with():
    frame = pd.DataFrame({"MODEL": ["ar_qr", "rw"]})
    renderer = Fork(frame)
    try:
        frame.loc[0, "MODEL"] = "changed here"  # the child has its own copy
        first = renderer.submit(describe, "MODEL", 1).result().decode()
        pid, models = first.split(":")
        assert int(pid) != os.getpid() and models == "ar_qr,rw"
        big = renderer.submit(describe, "MODEL", 200_000).result()  # several pipe buffers
        assert big == f"{pid}:{'ar_qr,rw' * 200_000}".encode()
        with pytest.raises(RuntimeError, match="ValueError: no chart for 2 rows"):
            renderer.submit(fail).result()
        assert renderer.submit(describe, "MODEL", 1).result().decode() == first  # still serves
    finally:
        renderer.close()
    assert not process_alive(int(pid))
    with pytest.raises(BrokenProcessPool):
        renderer.submit(describe, "MODEL", 1).result()


def test_a_dead_child_is_reported_not_waited_for():
    renderer = Fork(pd.DataFrame({"MODEL": ["ar_qr"]}))
    try:
        pid = int(renderer.submit(describe, "MODEL", 1).result().decode().split(":")[0])
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(BrokenProcessPool, match="died"):
            renderer.submit(describe, "MODEL", 1).result()
    finally:
        renderer.close()


def test_a_child_that_hangs_is_killed():
    renderer = Fork(pd.DataFrame({"MODEL": ["ar_qr"]}))
    pid = renderer._pid
    try:
        with pytest.raises(BrokenProcessPool, match="no answer in"):
            renderer.submit(stall, 60, timeout_s=0.3).result()
        assert not process_alive(pid)
        with pytest.raises(BrokenProcessPool, match="closed"):  # later requests: done here
            renderer.submit(describe, "MODEL", 1).result()
    finally:
        renderer.close()


def test_an_async_request_is_answered_and_abort_kills_the_child():
    renderer = Fork(pd.DataFrame({"MODEL": ["ar_qr"]}))
    try:
        slow = renderer.submit_async(stall, 0.2)  # answered while this thread goes on
        pid = int(slow.result(timeout=30))
        assert pid != os.getpid() and renderer.submit(stall, 0).result() == str(pid).encode()
        stuck = renderer.submit_async(stall, 60)
        renderer.abort()  # does not wait the minute
        with pytest.raises(BrokenProcessPool):
            stuck.result(timeout=30)
        assert not process_alive(pid)
    finally:
        renderer.close()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_the_child_dies_with_a_killed_assemble(tmp_path):
    script = tmp_path / "killed.py"
    script.write_text(
        textwrap.dedent(
            """
            import time
            import pandas as pd
            from pipeline.stages.assemble_fork import Fork

            def pid(frame):
                import os
                return str(os.getpid()).encode()

            if __name__ == "__main__":
                renderer = Fork(pd.DataFrame({"MODEL": ["a"]}))
                print(renderer.submit(pid).result().decode(), flush=True)
                time.sleep(60)
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path
    )
    try:
        child = int(proc.stdout.readline())
        assert process_alive(child)
        proc.kill()  # SIGKILL: no cleanup code runs in the parent
        proc.wait()
        deadline = time.monotonic() + 30
        while process_alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not process_alive(child)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()

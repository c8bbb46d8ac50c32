"""The driver's child outlives the thread that started it.

Linux's PR_SET_PDEATHSIG (the child dies with the driver) fires when the *thread* that started
the child ends. `python -m pipeline run` trains each model in its own lane thread, and a lane
that (re)started the shared child took it down when its model finished, with another model's
task inside: `worker-lost: child process died (signal 9)` and a retry, in an ordinary small
study that also ran one model on a cluster (README's Ctrl-C and resume walk-through).
"""

from __future__ import annotations

import threading

from pipeline.runtime.execute.child import Child


def test_a_child_started_by_a_thread_that_ended_still_serves():
    child = Child()
    try:
        results: list[int] = []
        lane = threading.Thread(target=lambda: results.append(child.run(abs, -3, timeout_s=60)))
        lane.start()
        lane.join()
        assert results == [3]
        pid = child.proc.pid
        # the next model's task, sent after the first lane ended, runs in the same child
        assert child.run(abs, -4, timeout_s=60) == 4
        assert child.proc.pid == pid and child.proc.exitcode is None
    finally:
        child.close()

"""Issue 18 item 7: the driver sleeps while its tasks run. The task stream waits on its
completions' condition (not a 50 ms poll of the stop flag), a stop wakes it at once from a
thread or a signal handler, and the scheduler is first asked which tasks run only when one
could be past its timeout; a task past it is still stopped and failed as `timeout`. On a
real LocalCluster of 2 single-thread workers with nannies; each test's task names are its own
(a cancelled task's key, reused, would come back cancelled)."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pipeline.runtime.execute.stop import StopFlag, Stopped


class CountingStop(StopFlag):
    """A StopFlag that counts how often it is read (each read is a wake-up of the driver)."""

    def __init__(self) -> None:
        super().__init__()
        self.checks = 0

    def check(self) -> None:
        self.checks += 1
        super().check()


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    import dask
    from distributed import Client, LocalCluster

    from pipeline.runtime.execute.dask.settings import ALLOWED_FAILURES

    # as the study's cluster: a task whose worker is stopped fails, it is not run again
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES}),
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(2, timeout=120)
        yield client
        # a cancelled task still sleeps in its worker's thread: closed under it, the worker
        # logs "ended with CancelledError" on the suite's terminal, so let it end first
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(client.run(_executing).values()):
            time.sleep(0.1)


def _executing(dask_worker: Any) -> int:
    return len(dask_worker.state.executing)


def _stream(client: Any, timeout_s: float | None, stop: StopFlag | None) -> Any:
    from pipeline.runtime.execute.dask.task_stream import TaskStream

    # the task is time.sleep(payload): found by name on the workers, nothing of ours to import
    return TaskStream(client, time.sleep, timeout_s, stop)  # type: ignore[arg-type]


def _counting_polls(stream: Any) -> list[float]:
    """Wrap the stream's ask of the scheduler; the moments it asked (monotonic)."""
    asked: list[float] = []
    running = stream._running

    def counted() -> dict[str, tuple[str, float]]:
        asked.append(time.monotonic())
        return running()

    stream._running = counted
    return asked


def test_a_task_past_its_timeout_is_stopped_as_timeout_and_not_polled_for_before(
    client: Any,
) -> None:
    stream = _stream(client, 2.0, StopFlag())
    asked = _counting_polls(stream)
    t0 = time.monotonic()
    stream.submit("quick", 0.2)  # type: ignore[arg-type]
    stream.submit("hung", 600.0)  # type: ignore[arg-type]
    results = {name: (error, time.monotonic() - t0) for name, _, error in stream}
    stream.close()
    assert results["quick"][0] is None
    error, at = results["hung"]
    assert error is not None and error["error_type"] == "timeout"
    assert "task_timeout_s = 2 s" in error["message"]
    assert 2.0 <= at < 30.0
    # not asked before a task could be past its timeout (before: every 0.5 s from the start)
    assert asked and asked[0] - t0 >= 2.0


def test_no_ask_of_the_scheduler_while_tasks_are_far_from_their_timeout(client: Any) -> None:
    stop = CountingStop()
    stream = _stream(client, 120.0, stop)
    asked = _counting_polls(stream)
    stream.submit("a", 2.5)  # type: ignore[arg-type]
    stream.submit("b", 2.5)  # type: ignore[arg-type]
    assert sorted(name for name, _, error in stream if error is None) == ["a", "b"]
    stream.close()
    assert asked == []  # before: every 1.2 s (a hundredth of the timeout)
    # a read of the flag per result and per RECHECK_S, not every 50 ms (before: ~50)
    assert stop.checks <= 10


def test_a_stop_from_another_thread_ends_the_wait_at_once(client: Any) -> None:
    stop = CountingStop()
    stream = _stream(client, 120.0, stop)
    stream.submit("by-thread", 3.0)  # type: ignore[arg-type]
    timer = threading.Timer(1.5, stop.set, ("SIGINT", 130))
    timer.start()
    with pytest.raises(Stopped):
        list(stream)
    reacted = time.monotonic() - stop.at
    stream.cancel()
    stream.close()
    timer.join()
    assert reacted < 0.25  # before: up to the 50 ms poll; now at once
    assert stop.checks <= 5  # before: ~30 reads of the flag in 1.5 s


def test_a_stop_from_a_signal_handler_in_the_waiting_thread_ends_the_wait_at_once(
    client: Any,
) -> None:
    """The train's SIGINT/SIGTERM handler runs in the main thread, the one that waits."""
    stop = StopFlag()
    stream = _stream(client, 120.0, stop)
    stream.submit("by-signal", 3.0)  # type: ignore[arg-type]
    saved = signal.signal(signal.SIGALRM, lambda s, f: stop.set("SIGALRM", 142))
    try:
        signal.setitimer(signal.ITIMER_REAL, 1.5)
        with pytest.raises(Stopped):
            list(stream)
        reacted = time.monotonic() - stop.at
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, saved)
    stream.cancel()
    stream.close()
    assert reacted < 0.25

"""Issue 18 (robustness): a task that holds the GIL from its very start (one long C call)
stops its worker's heartbeats before any of them reports it running. It is still stopped after
its timeout and failed as `timeout`; the tasks its worker held but did not run go back to the
scheduler and succeed, and the stream finishes. Before, `executing` never listed such a task:
it ran until it ended or Dask's worker-ttl (5 min) dropped its worker.

Real LocalClusters of single-thread workers with nannies (the heartbeats every 0.5 s: Dask's
interval for up to 10 workers). The task is `sum(range(HOLDS_GIL))`: builtin `sum` over a
range is one C loop that never releases the GIL (hours of it); the others sum a short range."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pipeline.runtime.execute.stop import StopFlag, Stopped

HOLDS_GIL = range(10**13)
QUICK = range(1000)
TIMEOUT_S = 2.0
# a bound on the hung task's failure: its timeout, the silence that shows its worker is hung
# (past the timeout too), the polls, the kill and a loaded machine; main never failed it
BOUND_S = 15.0


def _cluster(n_workers: int, saturation: float) -> Iterator[Any]:
    import dask
    from distributed import Client, LocalCluster

    from pipeline.runtime.execute.dask.cluster import queue_every_task
    from pipeline.runtime.execute.dask.settings import ALLOWED_FAILURES

    config = {
        # as the study's cluster: a task whose worker is stopped fails, it is not run again
        "distributed.scheduler.allowed-failures": ALLOWED_FAILURES,
        "distributed.scheduler.worker-saturation": saturation,
    }
    with dask.config.set(config):
        cluster = LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0"
        )
        try:
            with Client(cluster) as client:
                client.wait_for_workers(n_workers, timeout=120)
                held = queue_every_task(client, n_workers)  # as the study: every task queued  # noqa: F841
                yield client
        finally:
            try:
                cluster.close(timeout=60)
            except Exception:
                # a worker a failed test left in the GIL-holding task answers nobody, and its
                # nanny's close may wait for it for good: bounded, then killed and closed
                # again (not killed first: a nanny restarting a killed worker as the close
                # begins fails the close with "can only join a started process")
                for nanny in list(cluster.workers.values()):
                    _kill_worker_process(nanny)
                with contextlib.suppress(Exception):
                    cluster.close(timeout=30)
                raise


def _kill_worker_process(nanny: Any) -> None:
    """SIGKILL the worker process of a nanny of this process's LocalCluster, if it has one."""
    process = getattr(getattr(nanny, "process", None), "process", None)
    pid = getattr(process, "pid", None)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def study_cluster() -> Iterator[Any]:
    """The study's own settings (one task per worker thread), on one worker: a result it holds
    is asked for after it started the hung task."""
    yield from _cluster(1, 1.0)


@pytest.fixture
def queueing_cluster() -> Iterator[Any]:
    """One worker given every task at once (an existing cluster whose worker-saturation lets
    tasks wait on a worker, as Dask's default of 1.1 does for two per thread)."""
    yield from _cluster(1, float("inf"))


def _run(
    client: Any, tasks: dict[str, range], more: dict[str, range] | None = None, idle_s: float = 0
) -> Any:
    """Stream `tasks` (then `more`, once the hung one failed), looking at the results only
    `idle_s` after submitting them; name -> (result, error, seconds from the start). A
    watchdog stops the stream after 3 x BOUND_S (main: never failed)."""
    from pipeline.runtime.execute.dask.task_stream import TaskStream

    stop = StopFlag()
    stream = TaskStream(client, sum, TIMEOUT_S, stop)  # type: ignore[arg-type]
    watchdog = threading.Timer(3 * BOUND_S, stop.set, ("watchdog", 1))
    watchdog.start()
    t0 = time.monotonic()
    for i, (name, payload) in enumerate(tasks.items()):
        stream.submit(name, payload, priority=len(tasks) - i)  # type: ignore[arg-type]
    time.sleep(idle_s)
    seen: dict[str, Any] = {}
    try:
        for name, result, error in stream:
            seen[name] = (result, error, time.monotonic() - t0)
            if error is not None and more:
                for extra, payload in more.items():
                    stream.submit(extra, payload)  # type: ignore[arg-type]
                more = None
    except Stopped:
        stream.cancel()
        pytest.fail(f"the GIL-holding task was never stopped; finished: {sorted(seen)}")
    finally:
        watchdog.cancel()
        stream.close()
    return seen


def _check_timed_out(seen: dict[str, Any], twice: bool = False) -> None:
    """`gil` failed as `timeout` within the bound (twice the bound: it hung two workers)."""
    result, error, at = seen["gil"]
    assert result is None and error is not None, seen["gil"]
    assert error["error_type"] == "timeout", error
    assert f"task_timeout_s = {TIMEOUT_S:g} s" in error["message"]
    assert (2 if twice else 1) * TIMEOUT_S <= at < (2 if twice else 1) * BOUND_S


def test_a_task_holding_the_gil_from_its_start_times_out_and_the_others_succeed(
    study_cluster: Any,
) -> None:
    study_cluster.wait_for_workers(1, timeout=60)
    tasks = {"gil": HOLDS_GIL, **{f"quick-{i}": QUICK for i in range(4)}}
    # submitted once the hung worker was stopped: they run on the fresh one too
    more = {f"after-{i}": QUICK for i in range(4)}
    seen = _run(study_cluster, tasks, more)
    _check_timed_out(seen)
    quick = {name: v for name, v in seen.items() if name != "gil"}
    assert sorted(quick) == sorted([*tasks, *more][1:])
    assert all(error is None and result == sum(QUICK) for result, error, _ in quick.values())


def test_tasks_waiting_on_the_hung_worker_go_back_to_the_scheduler_unharmed(
    queueing_cluster: Any,
) -> None:
    """The one worker holds all four tasks, runs the first by priority (the hung one) and keeps
    the others waiting: which one hangs it cannot be told, so the worker is restarted and all
    four go back to the scheduler (not failed with it, which would read as `worker-lost`);
    the hung one hangs the fresh worker, is known for it (held by both) and fails alone."""
    tasks = {"gil": HOLDS_GIL, **{f"waiting-{i}": QUICK for i in range(3)}}
    seen = _run(queueing_cluster, tasks)
    _check_timed_out(seen, twice=True)
    for name in ("waiting-0", "waiting-1", "waiting-2"):
        result, error, at = seen[name]
        assert error is None and result == sum(QUICK), (name, error)
        assert at > seen["gil"][2] - 1.0  # they waited behind it


@pytest.mark.timeout(90)  # main: the wait for `first`'s result never ended
def test_a_result_held_by_the_worker_hung_since_is_computed_again(study_cluster: Any) -> None:
    """`first` ends on the one worker, which then starts the hung task: by the time the driver
    asks for `first`'s result (straight from that worker), the worker answers nobody. The wait
    keeps the timeout watch going: the worker is stopped at the hung task's timeout and Dask
    computes `first` again on its fresh process."""
    study_cluster.wait_for_workers(1, timeout=60)
    seen = _run(study_cluster, {"first": QUICK, "gil": HOLDS_GIL}, idle_s=1.0)
    _check_timed_out(seen)
    result, error, _ = seen["first"]
    assert error is None and result == sum(QUICK)


@pytest.fixture
def fresh_cluster() -> Iterator[Any]:
    """One worker of its own (its nanny is tampered with below)."""
    yield from _cluster(1, 1.0)


@pytest.mark.timeout(120)  # before: the stop of the hung worker never returned
def test_a_hung_worker_whose_nanny_kill_never_returns_is_killed_all_the_same(
    fresh_cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dask's nanny kill waits for good for a worker that has not yet told its nanny it started,
    which a task holding the GIL from the worker's first moments keeps it from ever doing (seen
    in a fresh clone's suite: the stream, then the cluster's close, hung). Here the nanny's
    kill never returns: past KILL_BOUND_S the worker process is SIGKILLed from the nanny, the
    hung task fails as `timeout`, the others succeed on the fresh worker."""
    from pipeline.runtime.execute.dask import worker_stop

    monkeypatch.setattr(worker_stop, "KILL_BOUND_S", 2.0)
    (nanny,) = fresh_cluster.cluster.workers.values()

    async def never_returns(**kwargs: Any) -> None:
        await asyncio.Event().wait()

    nanny.process.kill = never_returns  # the WorkerProcess the nanny keeps across restarts
    try:
        tasks = {"gil": HOLDS_GIL, **{f"quick-{i}": QUICK for i in range(2)}}
        more = {f"after-{i}": QUICK for i in range(2)}
        seen = _run(fresh_cluster, tasks, more)
    finally:
        del nanny.process.kill
    _, error, at = seen["gil"]
    assert error is not None and error["error_type"] == "timeout", seen["gil"]
    assert TIMEOUT_S + 2.0 <= at < BOUND_S + 2.0, at  # the kill's bound waited out
    quick = {name: v for name, v in seen.items() if name != "gil"}
    assert sorted(quick) == sorted([*tasks, *more][1:])
    assert all(error is None and result == sum(QUICK) for result, error, _ in quick.values())


def _worker(
    processing: list[Any],
    executing: dict[Any, float],
    silent_s: float,
    now: float,
    nthreads: int = 1,
) -> Any:
    return SimpleNamespace(
        processing=set(processing),
        executing=executing,
        long_running=set(),
        last_seen=now - silent_s,
        nthreads=nthreads,
    )


@dataclass(frozen=True)
class _Task:
    """A scheduler's TaskState as the rule reads it (hashable: workers hold sets of them)."""

    key: tuple[str, str]
    priority: tuple[int, ...]


def _task(name: str, priority: int) -> _Task:
    return _Task(("qpipe", name), (priority,))


def test_which_tasks_a_silent_worker_runs_as_the_scheduler_knows_them() -> None:
    """The scheduler-side rule, on duck-typed scheduler state: a task its worker reported
    executing (and still processes) counts from its start; a silent worker's tasks count from
    its last heartbeat, as "silent" when it holds no more than its threads, else as
    "suspect" (in the order it runs them); a worker heard from recently runs what it said."""
    from pipeline.runtime.execute.dask.task_watch import SILENT_HEARTBEATS, executing

    now = time.time()
    done, a, b, c, d, e = (_task(name, p) for p, name in enumerate(["done", *"abcde"]))
    workers = {
        # reported `a` 3 s into it, 1 s ago; `done` finished since (no longer processing)
        "w1": _worker([a], {a: 3.0, done: 5.0}, 1.0, now),
        # silent for 20 s since it last reported nothing: it runs `b`, its one task
        "w2": _worker([b], {}, 20.0, now),
        # reported nothing 0.1 s ago: `d` waits or has just started, not timed yet
        "w3": _worker([d], {}, 0.1, now),
        # silent since it reported `e` (its one thread busy): `e` counts from its start
        "w4": _worker([e], {e: 1.0}, 20.0, now),
    }
    scheduler = SimpleNamespace(workers=workers)
    interval = 0.5
    report = executing(lambda n: interval)(scheduler)
    assert set(report) == {a.key, b.key, e.key}
    assert report[a.key][0] == "w1" and report[a.key][1] == pytest.approx(4.0, abs=0.5)
    assert report[a.key][2] == "reported"
    assert report[b.key][0] == "w2" and report[b.key][1] == pytest.approx(20.0, abs=0.5)
    assert report[b.key][2] == "silent"
    assert report[e.key][1] == pytest.approx(21.0, abs=0.5) and report[e.key][2] == "reported"
    # silent for just over SILENT_HEARTBEATS intervals: counted; just under: not
    for silent, counted in ((SILENT_HEARTBEATS * interval + 0.3, True), (interval, False)):
        scheduler.workers = {"w": _worker([c], {}, silent, time.time())}
        assert (c.key in executing(lambda n: interval)(scheduler)) is counted
    # more tasks than threads, one reported: all suspects, by priority, from the heartbeat
    scheduler.workers = {"w": _worker([e, c, d], {e: 1.0}, 20.0, time.time())}
    report = executing(lambda n: interval)(scheduler)
    assert list(report) == [c.key, d.key, e.key]
    assert {how for _, _, how in report.values()} == {"suspect"}
    assert report[e.key][1] == pytest.approx(20.0, abs=0.5)
    # two threads, two tasks: each could run
    scheduler.workers = {"w": _worker([e, c], {e: 1.0}, 20.0, time.time(), nthreads=2)}
    report = executing(lambda n: interval)(scheduler)
    assert report[c.key][2] == "silent" and report[e.key][2] == "reported"


@pytest.mark.slow
@pytest.mark.timeout(
    120
)  # main: never stopped (its driver waited on a result from the hung worker)
def test_a_fit_holding_the_gil_is_stopped_labelled_timeout_and_the_study_completes(
    tmp_path: Path, fake_adapters: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """test_task_limits' hanging fit, holding the GIL: its task and its retry alone are stopped
    after runtime.task_timeout_s, its two fits fail as `timeout`, every other fit trains."""
    from test_runtime import study
    from test_task_limits import HANG_ORIGIN, plan

    from pipeline.runtime.store.progress import db_path, read_table
    from pipeline.stages.train import run_train

    monkeypatch.setenv("FAKE_HANG_COUNTRIES", "C02")
    monkeypatch.setenv("FAKE_HANG_ORIGIN", HANG_ORIGIN)
    monkeypatch.setenv("FAKE_HANG_GIL", "1")
    config = study(tmp_path / "out", retries=1, task_timeout_s=2.0, in_process_below_s=0.0)
    summary = run_train(config, "fake_hang", plan("fake_hang", 8, seconds_per_fit=0.001))
    assert summary.failed == 2 and summary.trained == summary.fits - 2 == 94
    table = read_table(db_path(config.output_dir), "progress")
    failed = table[table["status"] == "failed"]
    assert set(failed["country"]) == {"C02"} and set(failed["origin"]) == {"2018-03-01"}
    assert (failed["error_type"] == "timeout").all() and (failed["attempts"] == 2).all()
    assert "has sent no heartbeat" in Path(summary.log_path).read_text()

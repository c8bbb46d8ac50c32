"""Stream one model's tasks to the cluster (imports dask.distributed): a bounded number in
flight, results yielded as they complete.

`TaskStream` turns a worker lost to its memory limit (`KilledWorker` after `allowed-failures`
restarts, settings.ALLOWED_FAILURES) into a plain "memory" failure (or "worker-lost" when no
nanny reported a memory kill), and stops a task that runs past its timeout by restarting its
worker (its fits fail as "timeout"; the worker's other tasks go back to the scheduler), a task
that holds the GIL from its start included (task_watch.executing says how it is seen); what it
learns about running tasks is task_watch.py's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from distributed import Client, as_completed
from distributed.protocol.pickle import dumps
from distributed.scheduler import KilledWorker, heartbeat_interval

from pipeline.errors import SchedulerLost
from pipeline.runtime.execute.dask.settings import TASK_GROUP
from pipeline.runtime.execute.dask.task_watch import (
    MemoryEvents,
    executing,
    lost_worker_label,
    quiet_polls,
    task_name,
)
from pipeline.runtime.execute.dask.worker_stop import (
    KILL_REASON,
    KILL_S,
    kill_worker_process,
    stop_worker,
)
from pipeline.runtime.execute.stop import StopFlag

log = logging.getLogger("pipeline.runtime.execute.dask.task_stream")
__all__ = ["KILL_REASON", "TaskStream"]  # KILL_REASON: the nanny's log names it (tests)

# how often the stream asks the scheduler which tasks run where (to time them): every
# TIMEOUT_POLL_S, or a hundredth of the timeout when that is longer (each ask is a round trip
# to the scheduler, and several models' streams ask at once)
TIMEOUT_POLL_S = 0.5
# the longest a wait for results sleeps without looking at the stop flag and the completions
# itself: each is also woken when either changes, so this only bounds a missed wake-up
RECHECK_S = 1.0
# the scheduler logs each of those asks at INFO on its `distributed.worker` logger
logging.getLogger("distributed.worker").addFilter(quiet_polls)


class TaskStream:
    """Bounded submission + completion order. Yields (name, result, error) per finished task.

    `error` is None on success, else {"error_type", "message", "traceback"}; error_type is
    "memory" when the task's worker was killed by its nanny's memory limit, "worker-lost"
    when its worker died otherwise (SIGKILL, segfault, a node lost), "timeout" when it ran
    longer than `timeout_s` (from when its worker started it, or for a task holding the GIL
    that its silent worker never reported, from that worker's last heartbeat) and its worker
    was restarted to stop it (a thread cannot be stopped; the process can). With `stop`, waiting
    raises `Stopped` once the flag is set (a driver thread of a run training models side by
    side: signals reach only the main thread).
    """

    def __init__(
        self,
        client: Client,
        fn: Callable[[dict[str, Any]], dict[str, Any]],
        timeout_s: float | None = None,
        stop: StopFlag | None = None,
    ) -> None:
        self.client, self.fn, self.timeout_s, self.stop = client, fn, timeout_s, stop
        # on the client's own loop: by default the latest client's, and a future whose result
        # was lost and is computed again is then waited for on two loops (asyncio refuses)
        self.pending = as_completed(loop=client.loop)
        self.in_flight = 0
        self._memory = MemoryEvents()
        logging.getLogger("distributed.nanny.memory").addHandler(self._memory)
        self._started: dict[str, float] = {}  # key -> when first seen running on a worker
        self._timed_out: set[str] = set()
        self._restarts = 0  # workers this stream stopped (a fetch from one starts again)
        self._suspects: set[str] = set()  # held by a silent worker stopped before (_judge_suspects)
        self._condition = self.pending.thread_condition  # notified as each future finishes
        self._submitted: dict[str, float] = {}  # key -> when submitted (monotonic)
        self._polled = 0.0
        self._by_heartbeat = True
        # this stream's tasks in flight: the cluster may run other models' streams too, each
        # timing its own tasks by its own timeout
        self._mine: set[str] = set()

    def close(self) -> None:
        logging.getLogger("distributed.nanny.memory").removeHandler(self._memory)

    def submit(self, name: str, payload: dict[str, Any], priority: int = 0) -> None:
        """Queue a task; among tasks waiting for a worker, the highest `priority` starts first
        (models sharing the cluster: their longest tasks first, the short ones fill around)."""
        # the payload rides inside the callable: Dask walks a task's arguments element by
        # element looking for futures (~10 us per fit for a task's list of keys), not its function
        future = self.client.submit(
            functools.partial(self.fn, payload),
            key=(TASK_GROUP, name),
            pure=False,
            retries=0,
            priority=priority,
        )
        self.pending.add(future)
        self.in_flight += 1
        self._mine.add(name)
        self._submitted[name] = time.monotonic()

    def _next(self) -> Any:
        """The next finished future; meanwhile, stop tasks past their timeout (and raise
        `Stopped` when a stop was asked for). Waits on the completions' condition: it wakes
        when a task ends, a stop is asked for, or a task could next be past its timeout."""
        while True:
            if self.stop is not None:
                # checked before any wait too: while results are ready at every call (fast
                # tasks, a busy driver) no wait happens, and Ctrl-C went unheeded to the end
                self.stop.check()
            if self.pending.has_ready():
                return next(self.pending)
            if self.pending.is_empty():
                raise StopIteration
            wait_s = RECHECK_S
            if self.timeout_s is not None:
                wait_s = min(wait_s, self._stop_overdue())
            if self.stop is None:
                self._wait(wait_s)
            else:
                with self.stop.waking(self._wake):
                    self._wait(wait_s)

    def _wait(self, seconds: float) -> None:
        """Until a result is ready, a stop is asked for, or `seconds` passed. Dask's
        `as_completed` notifies its condition after queueing each finished future (its own
        `next` waits on it 100 ms at a time), so nothing ready here is missed. Only this
        condition is held: the IO loop takes the completions' lock then it, never the
        reverse."""
        with self._condition:
            if self.pending.has_ready() or (self.stop is not None and self.stop.is_set()):
                return
            self._condition.wait(seconds)

    def _wake(self) -> None:
        # from StopFlag.set, maybe a signal handler in the thread that waits: the condition's
        # lock is re-entrant. A stop set there between `_wait`'s check and its wait is seen
        # at the next RECHECK_S at the latest.
        with self._condition:
            self._condition.notify_all()

    def _stop_overdue(self) -> float:
        """Stop the tasks past their timeout; the seconds until one could next be."""
        now = time.monotonic()
        due = self._poll_due()
        if now < due:
            return due - now
        self._polled = now
        running = self._running()
        for key in list(self._started):
            if key not in running:
                del self._started[key]
        overdue: dict[str, list[str]] = {}  # worker -> its tasks past their timeout
        hung: dict[str, list[str]] = {}  # worker -> its suspects, in the order it runs them
        for key, (worker, ran, how) in running.items():
            if self._by_heartbeat:  # the scheduler's account, up to now (task_watch.executing)
                # not before its submission: a silent worker's last heartbeat may be older
                started = self._started[key] = max(now - ran, self._submitted.get(key, 0.0))
            else:  # from the first time it was seen on its worker
                started = self._started.setdefault(key, now - ran)
            if key in self._timed_out or now - started <= float(self.timeout_s or 0):
                continue
            if how == "suspect":
                hung.setdefault(worker, []).append(key)
                continue
            overdue.setdefault(worker, []).append(key)
            self._log_overdue(key, worker, how, ran)
        for worker, keys in hung.items():
            self._judge_suspects(
                worker, keys, overdue.setdefault(worker, []), now - self._started[keys[0]]
            )
        for worker, keys in overdue.items():
            self._timed_out.update(keys)
            outcome = self._restart(worker, keys)  # these fail with KilledWorker, others go back
            if outcome not in ("OK", "removed"):  # e.g. timed out when loaded
                log.warning("could not restart worker %s (%s): trying again", worker, outcome)
                self._timed_out.difference_update(keys)  # the next poll tries again
            else:
                self._suspects.update(hung.get(worker, ()))
                self._restarts += 1
        return max(self._poll_due() - time.monotonic(), 0.0)

    def _log_overdue(self, key: str, worker: str, how: str, ran: float) -> None:
        log.warning(
            "task %s ran past runtime.task_timeout_s = %g s%s: restarting worker %s",
            key,
            self.timeout_s,
            "" if how == "reported" else f" (its worker has sent no heartbeat for {ran:.0f} s)",
            worker,
        )

    def _judge_suspects(
        self, worker: str, keys: list[str], failing: list[str], silent: float
    ) -> None:
        """A worker silent past the timeout that holds more of this stream's tasks than it has
        threads (task_watch.executing's "suspect"): which one hangs it cannot be told. A task
        that was a suspect on a worker stopped before is the one (the first, in the order the
        worker runs them, when several were): it fails as `timeout`. Otherwise none fails
        yet: the worker is restarted and every task goes back to the scheduler, to be caught
        on the next worker it hangs (one timeout later; alone there, or a suspect again)."""
        again = [k for k in keys if k in self._suspects]
        if again:
            failing.append(again[0])
            self._log_overdue(again[0], worker, "suspect", silent)
            return
        log.warning(
            "worker %s has sent no heartbeat for %.0f s, past runtime.task_timeout_s = %g s, "
            "holding %d tasks, more than its threads: restarting it; they go back to the "
            "scheduler (the one that hangs it fails as timeout on the next worker it hangs)",
            worker,
            silent,
            self.timeout_s,
            len(keys),
        )

    def _poll_due(self) -> float:
        """When the scheduler is next asked which tasks run: every TIMEOUT_POLL_S (or a
        hundredth of the timeout) at most, and not before the first moment a task of this
        stream could be past its timeout. A task cannot have started before it was submitted
        (or, once seen running, before its worker says it started), so with timeouts far
        above the tasks' durations the scheduler is never asked at all. Without the workers'
        heartbeats a task's clock starts when a poll first sees it: polled at every
        interval, as before."""
        timeout = float(self.timeout_s or 0)
        due = self._polled + max(TIMEOUT_POLL_S, timeout / 100)
        if not self._by_heartbeat:
            return due
        if not self._mine:
            return max(due, time.monotonic() + timeout)
        started, submitted = self._started, self._submitted
        first = min(started.get(k) or submitted.get(k, 0.0) for k in self._mine)
        return max(due, first + timeout)

    def _restart(self, worker: str, names: list[str]) -> str:
        """Stop `worker`'s process through its nanny, which starts a fresh one, failing the
        tasks `names`: promptly (`stop_worker`, KILL_S; the worker's other tasks go back to
        the scheduler), else as Dask's `restart_workers` does (a scheduler that runs no
        function of ours, or a kill that failed: e.g. slower than KILL_S to join the killed
        process on a loaded machine; the worker's other tasks then fail with it, as lost
        workers). "OK" or "removed" when it stopped."""
        if self._by_heartbeat:
            try:
                failing = [(TASK_GROUP, name) for name in names]
                stopped = self.client.run_on_scheduler(
                    stop_worker(),
                    address=worker,
                    kill_s=KILL_S,
                    failing=failing,
                    kill_process=dumps(kill_worker_process()),
                )
                return str(stopped)
            except Exception as exc:
                log.info("prompt stop of worker %s failed (%r): restarting it", worker, exc)
        try:
            outcome = self.client.restart_workers([worker], timeout=60, raise_for_error=False)
        except Exception as exc:  # e.g. a worker without a nanny: it cannot be restarted
            return str(exc)
        return str(outcome.get(worker, "OK"))

    def _running(self) -> dict[str, tuple[str, float, str]]:
        """Tasks that run now: name -> (worker, seconds since their worker started them, how
        it is known), as the workers' heartbeats tell the scheduler (a task queued on a worker
        behind another has not started: its clock has not either), or a silent worker's
        silence does (task_watch.executing). A scheduler that runs no function of ours: the
        tasks it gave a worker, from now on."""
        if self._by_heartbeat:
            try:
                running = self.client.run_on_scheduler(executing(heartbeat_interval))
                return {
                    task_name(k): (w, ran, how)
                    for k, (w, ran, how) in running.items()
                    if task_name(k) in self._mine
                }
            except Exception as exc:  # e.g. a scheduler that refuses pickled functions
                self._by_heartbeat = False
                log.info("task timeouts count from assignment (%s)", exc)
        processing = self.client.processing()
        running = {
            task_name(k): (w, 0.0, "reported") for w, keys in processing.items() for k in keys
        }
        return {name: at for name, at in running.items() if name in self._mine}

    def _result(self, future: Any) -> Any:
        """`future.result()`, the timeout watch and the stop flag kept meanwhile. A result comes
        straight from the worker that holds it, and that worker may have started a task since
        that holds the GIL: it then answers nobody, and a plain wait for the result hung for
        good with no watch left to stop that task. The fetch runs on the client's loop while
        this thread looks at it every RECHECK_S (not cut short: a large result may take longer
        to arrive); once the watch has stopped a worker meanwhile, the fetch starts again
        (one begun on the hung worker waited out its connect timeout, 30 s) and Dask computes
        a result lost with that worker again elsewhere. A result at hand returns at once, and
        the watch asks the scheduler nothing unless a task could be past its timeout."""
        fetch, restarts = self._fetch(future), self._restarts
        try:
            while True:
                wait_s = RECHECK_S
                if self.timeout_s is not None:
                    wait_s = min(wait_s, max(self._stop_overdue(), 0.01))
                try:
                    return fetch.result(timeout=wait_s)
                except TimeoutError:
                    if fetch.done():  # the task's own TimeoutError
                        raise
                if self.stop is not None:
                    self.stop.check()
                if self._restarts != restarts:
                    fetch.cancel()
                    fetch, restarts = self._fetch(future), self._restarts
        finally:
            fetch.cancel()  # on a stop; nothing once done

    def _fetch(self, future: Any) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(
            self.client.gather(future, asynchronous=True), self.client.loop.asyncio_loop
        )

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any] | None, dict[str, str] | None]]:
        while True:
            try:
                future = self._next()
            except StopIteration:
                return
            self.in_flight -= 1
            name = task_name(future.key)
            self._mine.discard(name)
            try:
                result = self._result(future)
            except KilledWorker as exc:
                if name in self._timed_out:
                    label = "timeout"
                    message = (
                        f"still running after runtime.task_timeout_s = {self.timeout_s:g} s: "
                        "its worker was restarted to stop it"
                    )
                else:
                    label = lost_worker_label(exc, self._memory.addresses)
                    message = (
                        f"worker {'killed for memory' if label == 'memory' else 'lost'} "
                        f"while running the task: {exc}"
                    )
                yield (
                    name,
                    None,
                    {"error_type": label, "message": message, "traceback": traceback.format_exc()},
                )
            except Exception as exc:
                self._raise_if_scheduler_lost(exc)
                yield (
                    name,
                    None,
                    {
                        "error_type": type(exc).__name__,
                        "message": str(exc)[:2000],
                        "traceback": traceback.format_exc(),
                    },
                )
            else:
                yield name, result, None
            finally:
                self._timed_out.discard(name)
                self._started.pop(name, None)
                self._submitted.pop(name, None)
                future.release()

    def _raise_if_scheduler_lost(self, exc: Exception) -> None:
        """A task cancelled because the client lost its scheduler is no fit's failure: every
        task in flight went with it, the workers may have too, and the retries one fit at a
        time waited for workers that never came (the run hung). Stop the run instead."""
        if "scheduler-connection-lost" not in str(exc) and self.client.status == "running":
            return
        address = getattr(self.client.scheduler, "address", "the scheduler")
        raise SchedulerLost(
            f"lost the connection to the Dask scheduler {address} during train; progress "
            "is saved: start the scheduler and its workers again, then rerun the same command "
            "to resume"
        ) from exc

    def cancel(self) -> None:
        """Drop everything still queued or running (on interrupt)."""
        futures = list(self.pending.futures)
        self.pending.clear()
        if futures:
            self.client.cancel(futures, force=True)

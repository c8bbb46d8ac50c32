"""Stop a worker through its nanny, from the scheduler (a function for `run_on_scheduler`): the
task stream's way to end a task past its timeout. No dask.distributed import here: the function
travels by value and reads the scheduler by duck typing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

# a timed-out task's worker is given this long to close before its nanny kills it (SIGKILL) and
# as long again to be joined: its one thread is stuck in the task, so it never closes on its
# own (Dask's restart_workers leaves the nanny's default of 5 s: 4 s of waiting per timeout)
KILL_S = 0.5
# why the nanny closes the worker (its log says "Nanny asking worker to close. Reason: ...")
KILL_REASON = "qpipe-task-timeout"
# the nanny's kill given this long before its worker process is SIGKILLed from the nanny
# directly: a task that took the GIL in the worker's first moments (it runs tasks before it has
# told its nanny it started) kept the worker from ever telling it, and Dask's kill waits for
# that message for good (the stream, then the cluster's close, hung)
KILL_BOUND_S = 5.0


def kill_worker_process() -> Callable[[Any], str]:
    """A function for a nanny's `run` (pickled by value: it travels without this module):
    SIGKILL the nanny's worker process, whose exit the nanny then handles as any (the worker
    unregistered, a fresh one started). "killed", or "gone" for one that ended meanwhile."""

    def kill(dask_worker: Any) -> str:  # `dask_worker` is the nanny here
        import os
        import signal

        process = getattr(getattr(dask_worker, "process", None), "process", None)
        pid = getattr(process, "pid", None)
        if pid is None:  # stopped meanwhile
            return "gone"
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return "gone"
        return "killed"

    return kill


def stop_worker() -> Callable[..., Awaitable[str]]:
    """A function for `run_on_scheduler(fn, address=..., kill_s=..., failing=[keys],
    kill_process=...)`: the worker's nanny kills its process, giving it `kill_s` * 0.8 s to
    close before SIGKILL (Nanny.kill), and starts a fresh one. The tasks `failing` (those past
    their timeout) are lost with it: they fail with KilledWorker (allowed-failures is 0). Its
    other tasks (queued on it behind them, where an existing cluster's worker-saturation lets
    tasks wait on a worker, or on its other threads) are first released back to the
    scheduler, with the worker paused so that none lands there again: they run elsewhere,
    unharmed (killed with it, they would fail as lost workers). Returns "OK", or "removed" for a worker already gone.

    A nanny whose kill does not return within KILL_BOUND_S has its worker process SIGKILLed
    from the nanny directly (Nanny.run of `kill_process`, `kill_worker_process()` pickled by
    the caller: this module imports nothing of dask.distributed): Dask's kill waits for good
    for a worker that has not yet told its nanny it started, and a task holding the GIL from
    the worker's first moments keeps it from ever doing so.

    Scheduler.restart_workers does the same but with the nanny's default of 5 s: a worker
    whose only thread is stuck in a fit never finishes closing, so each timed-out task cost
    4 s of waiting, then the wait for its worker to come back (the nanny restarts it anyway,
    and the stream goes on meanwhile)."""

    # locals: the function travels without this module's globals
    reason, bound_s = KILL_REASON, KILL_BOUND_S

    async def stop_worker(
        dask_scheduler: Any, address: str, kill_s: float, failing: list[Any], kill_process: bytes
    ) -> str:
        import asyncio
        import time

        ws = dask_scheduler.workers.get(address)
        if ws is None:
            return "removed"
        if not ws.nanny:  # nothing would start it again: Dask's own restart says so
            raise ValueError(f"worker {address} has no nanny")
        stimulus_id = f"{reason}-{time.time()}"
        dask_scheduler.handle_worker_status_change("paused", ws, stimulus_id)
        keep = set(failing)
        others = {ts.key: "released" for ts in ws.processing if ts.key not in keep}
        # as Scheduler._reschedule: processing -> released -> waiting (their futures are held)
        dask_scheduler.transitions(others, stimulus_id)
        nanny = dask_scheduler.rpc(ws.nanny)  # the scheduler's own connections (its TLS)
        try:
            try:
                await asyncio.wait_for(nanny.kill(timeout=kill_s, reason=reason), bound_s)
            except TimeoutError:
                await asyncio.wait_for(nanny.run(function=kill_process), bound_s)
        except BaseException:
            if address in dask_scheduler.workers:  # still there: let it take tasks again
                dask_scheduler.handle_worker_status_change("running", ws, stimulus_id)
            raise
        return "OK"

    return stop_worker

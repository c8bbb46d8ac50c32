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


def stop_worker() -> Callable[..., Awaitable[str]]:
    """A function for `run_on_scheduler(fn, address=..., kill_s=..., failing=[keys])`: the
    worker's nanny kills its process, giving it `kill_s` * 0.8 s to close before SIGKILL
    (Nanny.kill), and starts a fresh one. The tasks `failing` (those past their timeout) are
    lost with it: they fail with KilledWorker (allowed-failures is 0). Its other tasks (queued
    on it behind them, where an existing cluster's worker-saturation lets tasks wait on a
    worker, or on its other threads) are first released back to the scheduler, with the
    worker paused so that none lands there again: they run elsewhere, unharmed (killed with
    it, they would fail as lost workers). Returns "OK", or "removed" for a worker already gone.

    Scheduler.restart_workers does the same but with the nanny's default of 5 s: a worker
    whose only thread is stuck in a fit never finishes closing, so each timed-out task cost
    4 s of waiting, then the wait for its worker to come back (the nanny restarts it anyway,
    and the stream goes on meanwhile)."""

    reason = KILL_REASON  # a local: the function travels without this module's globals

    async def stop_worker(
        dask_scheduler: Any, address: str, kill_s: float, failing: list[Any]
    ) -> str:
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
        try:
            # the scheduler's own pool of connections (its TLS settings)
            await dask_scheduler.rpc(ws.nanny).kill(timeout=kill_s, reason=reason)
        except BaseException:
            if address in dask_scheduler.workers:  # still there: let it take tasks again
                dask_scheduler.handle_worker_status_change("running", ws, stimulus_id)
            raise
        return "OK"

    return stop_worker

"""Ctrl-C (SIGINT), SIGTERM and SIGKILL to `python -m pipeline run` in each stage: the run
ends promptly, leaves no process behind (workers, nannies, the probe's child, assemble's
fork), no stale lock, and a resume writes the uninterrupted run's bytes. The moments are
seeded: a delay after the stage began, drawn once per case."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path
from typing import Any

import chaos_study
import pytest
from chaos_study import CleanRun, command, differing, interrupt, run

from pipeline.runtime.execute.stop import StopFlag, Stopped

clean_run = chaos_study.clean_run  # the session's uninterrupted run (a fixture)

# a real cluster (LocalCluster: scheduler, nannies, workers) even for this small study
CLUSTER = "runtime.in_process_below_s=0"
RNG = random.Random(18)
# (stage, signal, the most seconds after the stage began, the driver's exit code); SIGTERM
# outside train ends the run as in train: one line and exit 143 (pipeline.cli's handler; the
# probe's child and assemble's fork end with the run, and writes are atomic)
# (the probe's child on each signal: tests/test_task_limits.py; here by hand, in
# benchmarks/README.md's "failures at scale")
CASES = [
    ("train", signal.SIGINT, 1.0, 130),
    ("train", signal.SIGKILL, 1.0, -9),
    ("assemble", signal.SIGTERM, 0.5, 143),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stage", "sig", "delay_s", "code"),
    [(stage, sig, round(RNG.uniform(0, most), 2), code) for stage, sig, most, code in CASES],
    ids=[f"{stage}-{sig.name}" for stage, sig, _, _ in CASES],
)
def test_a_signal_in_any_stage_ends_the_run_promptly_without_orphans_and_a_resume_equals(
    tmp_path: Path, clean_run: CleanRun, stage: str, sig: int, delay_s: float, code: int
) -> None:
    out = tmp_path / "out"
    # train on a cluster (its workers and nannies are what could be left behind); elsewhere
    # the driver alone, as it is cheaper
    extra = (CLUSTER,) if stage == "train" else ()
    got = interrupt(command(out, *extra), stage, delay_s, sig)
    assert got.stage == stage, got.output  # the signal met the stage it was meant for
    assert got.exit_code == code, got.output
    assert "Traceback" not in got.output, got.output
    if code > 0:  # a stop, not a kill: one line names the signal
        assert f"interrupted ({signal.Signals(sig).name})" in got.output, got.output
    # a cluster's start-up can delay a train's stop by its own seconds (LocalCluster is not
    # interrupted); the rest is at most a second or two
    assert got.stop_s < 30, got
    assert got.orphans == [], got
    code, err = run(out)  # no stale lock refuses it (and a driver-only resume is cheaper)
    assert code == 0, err
    assert differing(out, clean_run) == []


def _identity(payload: dict[str, Any]) -> dict[str, Any]:
    return payload


def test_a_stop_is_heeded_while_results_are_ready_at_every_call() -> None:
    """Ctrl-C during a train whose tasks are quick (rw): each `next` found a result ready, so
    the stop flag, read only while waiting, was never read: the run trained to its end."""
    from distributed import Client, LocalCluster, wait

    from pipeline.runtime.execute.dask.task_stream import TaskStream

    with (
        LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as c,
        Client(c) as client,
    ):
        stop = StopFlag()
        stream = TaskStream(client, _identity, None, stop)
        for i in range(3):
            stream.submit(f"t{i}", {"i": i})
        wait(list(stream.pending.futures), timeout=60)
        t0 = time.monotonic()
        while len(stream.pending.queue.queue) < 3:  # every result ready before the stop
            assert time.monotonic() - t0 < 60
            time.sleep(0.01)
        stop.set("SIGINT", 130)
        with pytest.raises(Stopped):
            next(iter(stream))
        stream.close()

"""The driver's and the scheduler's CPU while the driver waits on 4 running tasks (issue 18).

Holds a cluster of a `dask scheduler` and 4 `dask worker --nthreads 1` processes on 127.0.0.1
(the qpipe observer intervals, direct-to-workers), then runs REPS drivers one after another,
each a fresh child process: it connects, opens a TaskStream (task timeout TIMEOUT s, a
StopFlag, as train does), submits 4 tasks that sleep SECONDS each and waits for their results.
Each driver prints its own CPU seconds over the wait (process_time: every thread) and the
scheduler's (psutil) over the same span. With --baseline TREE the drivers alternate between
this tree's pipeline and TREE's (another checkout), on the same held cluster.

Usage: python benchmarks/bench_driver_wait.py [--reps 5] [--seconds 15] [--timeout 120]
       [--baseline /tmp/base]
(issue 18 item 7, "The driver's wake-ups while it waits")
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ENV = {
    "DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL": "1s",
    "DASK_DISTRIBUTED__ADMIN__SYSTEM_MONITOR__INTERVAL": "2s",
    "DASK_DISTRIBUTED__CLIENT__DIRECT_TO_WORKERS": "True",
    "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False",
}


def _sleep(payload: dict[str, Any]) -> dict[str, Any]:
    time.sleep(payload["seconds"])
    return {"index": [], "seconds": payload["seconds"]}


def driver(scheduler_file: str, scheduler_pid: int, seconds: float, timeout: float) -> None:
    """One driver: the CPU of this process and of the scheduler over a wait on 4 tasks."""
    import psutil
    from distributed import Client

    from pipeline.runtime.execute.dask.task_stream import TaskStream
    from pipeline.runtime.execute.stop import StopFlag

    scheduler = psutil.Process(scheduler_pid)
    with Client(scheduler_file=scheduler_file) as client:
        stream = TaskStream(client, _sleep, timeout, StopFlag())
        time.sleep(1.0)  # the connection's own start settles
        cpu0, sched0, wall0 = time.process_time(), sum(scheduler.cpu_times()[:2]), time.time()
        for i in range(4):
            stream.submit(f"t{i}", {"seconds": seconds})
        done = sum(1 for _ in stream)
        cpu1, sched1, wall1 = time.process_time(), sum(scheduler.cpu_times()[:2]), time.time()
        stream.close()
    assert done == 4
    print(
        json.dumps(
            {"driver_cpu": cpu1 - cpu0, "scheduler_cpu": sched1 - sched0, "wall": wall1 - wall0}
        )
    )


def _run_driver(tree: Path, args: argparse.Namespace, sfile: str, pid: int) -> dict[str, float]:
    env = {**os.environ, **ENV, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, __file__, "--driver", sfile, str(pid), str(args.seconds)]
    out = subprocess.run(
        [*cmd, str(args.timeout)], env=env, cwd=tree, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--baseline", type=Path)
    args = parser.parse_args()
    env = {**os.environ, **ENV}
    bindir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        sfile = str(Path(tmp) / "scheduler.json")
        quiet = ["--no-dashboard", "--scheduler-file", sfile]
        procs = [
            subprocess.Popen(
                [str(bindir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0", *quiet],
                env=env,
                stderr=subprocess.DEVNULL,
            )
        ]
        try:
            while not Path(sfile).exists():
                time.sleep(0.1)
            procs += [
                subprocess.Popen(
                    [
                        str(bindir / "dask"),
                        "worker",
                        "--nthreads",
                        "1",
                        *quiet,
                        "--local-directory",
                        tmp,
                    ],
                    env=env,
                    stderr=subprocess.DEVNULL,
                )
                for _ in range(4)
            ]
            time.sleep(8.0)  # the workers connect
            trees = [("this", ROOT)] + ([("baseline", args.baseline)] if args.baseline else [])
            results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in trees}
            for rep in range(args.reps):
                for name, tree in trees:
                    r = _run_driver(tree, args, sfile, procs[0].pid)
                    results[name].append(r)
                    print(f"rep {rep} {name:8s} " + " ".join(f"{k} {v:.4f}" for k, v in r.items()))
                    sys.stdout.flush()
            for name, rows in results.items():
                med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
                print(f"median {name:8s} " + " ".join(f"{k} {v:.4f}" for k, v in med.items()))
        finally:
            for proc in reversed(procs):
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=30)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--driver":
        driver(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]))
    else:
        main()

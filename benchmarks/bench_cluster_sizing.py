"""Tasks sized for an existing cluster's threads (issue 18 item 7): train's wall and task count
on a cluster of more workers than the driver's machine would run, this checkout against another.

One `dask scheduler` and W single-thread `dask worker`s on 127.0.0.1 (PIPELINE_EXTRA_ADAPTERS:
tests/fake_models.py), then `run_train` of the test suite's small study (96 fits of
`fake_quantile`, which sleeps FAKE_SLEEP seconds per fit) against it, with a plan of 2 workers
(what a 2-core driver's probe gives), alternating between this checkout's driver and
`--baseline`'s, each in a fresh output dir. The fits sleep rather than compute, so W workers on
this 2-core machine run side by side as they would on W cores of their own: the wall shows how
well the tasks spread over the workers, which CPU-bound fits here could not. Reported per
train: wall, the driver's CPU (wait4), tasks (the progress store's tasks table).

Usage: python benchmarks/bench_cluster_sizing.py --baseline /tmp/base [--workers 16]
       [--sleep 1.0] [--repeats 3] [--out /tmp/bench_cluster_sizing]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench_scaleout import free_port, stop  # the same cluster helpers

ROOT = Path(__file__).resolve().parents[1]
DASK = str(Path(sys.executable).with_name("dask"))

DRIVER = """
import copy, json, sys, time
sys.path.insert(0, sys.argv[1] + "/tests")
from conftest import SMALL_STUDY, make_config
from pipeline.runtime.sizing.plan import ModelPlan, Plan
from pipeline.runtime.store.progress import db_path, read_table
from pipeline.stages.prepare import prepare
from pipeline.stages.train import run_train

d = copy.deepcopy(SMALL_STUDY)
d["runtime"].update({"output_dir": sys.argv[2], "scheduler_address": sys.argv[3],
                     "task_seconds": 5.0})
config = make_config(d)
prepare(config, sys.argv[1])
plan = Plan(n_workers=2, memory_limit_mb=2048,
            models={"fake_quantile": ModelPlan(0, seconds_per_fit=float(sys.argv[4]))})
t0 = time.perf_counter()
summary = run_train(config, "fake_quantile", plan)
wall = time.perf_counter() - t0
tasks = read_table(db_path(config.output_dir), "tasks")
print(json.dumps({"train_wall_s": round(wall, 2), "trained": summary.trained,
                  "tasks": int((tasks["model"] == "fake_quantile").sum())}))
"""


def fake_models(tree: Path) -> str:
    return str(tree / "tests" / "fake_models.py")


def train(tree: Path, out: Path, address: str, sleep: float, script: Path) -> dict[str, Any]:
    """One driver of `tree` in a fresh output dir: its train's wall, tasks and CPU."""
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(tree), "PIPELINE_EXTRA_ADAPTERS": fake_models(tree)}
    cmd = [sys.executable, str(script), str(tree), str(out), address, str(sleep)]
    proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    text = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    if status:
        raise RuntimeError(f"driver of {tree} failed ({status})")
    row = json.loads(text.strip().splitlines()[-1])
    return {**row, "driver_cpu_s": round(usage.ru_utime + usage.ru_stime, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, required=True, help="another qpipe checkout")
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--sleep", type=float, default=1.0, help="FAKE_SLEEP: seconds per fit")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_cluster_sizing"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    script = args.out / "driver.py"
    script.write_text(DRIVER)
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PIPELINE_EXTRA_ADAPTERS": fake_models(ROOT),
        "FAKE_SLEEP": str(args.sleep),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    quiet: dict[str, Any] = {"env": env, "cwd": ROOT, "stdout": subprocess.DEVNULL}
    quiet["stderr"] = subprocess.DEVNULL
    procs = [
        subprocess.Popen(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            **quiet,
        )
    ]
    rows: dict[str, list[dict[str, Any]]] = {"this": [], "base": []}
    try:
        worker = ["--nthreads", "1", "--memory-limit", "1GiB", "--no-dashboard"]
        procs += [
            subprocess.Popen([DASK, "worker", address, *worker, "--host", "127.0.0.1"], **quiet)
            for _ in range(args.workers)
        ]
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(args.workers, timeout=300)
        time.sleep(2.0)
        trees = {"this": ROOT, "base": args.baseline}
        for r in range(args.repeats):
            for name, tree in trees.items():
                row = train(tree, args.out / f"{name}{r}", address, args.sleep, script)
                rows[name].append(row)
                print(name, r, row, flush=True)
    finally:
        stop(procs[1:])
        stop(procs[:1])
    summary = {
        name: {
            key: statistics.median(row[key] for row in runs)
            for key in ("train_wall_s", "driver_cpu_s", "tasks")
        }
        for name, runs in rows.items()
    }
    print(json.dumps({"workers": args.workers, "sleep": args.sleep, "runs": rows, **summary}))


if __name__ == "__main__":
    main()

"""Train's driver memory and CPU by phase, for the rw study of N countries (N x 912 fits).

Prepares the study into OUT (a fresh directory), then runs `run_train` in this process on a
LocalCluster of W workers with tasks of FPT fits (runtime.in_process_below_s=0), and prints
per phase the driver's peak RSS (VmHWM, reset through /proc/self/clear_refs at each phase's
start, so each peak is that phase's own), its RSS at the phase's end and its CPU seconds. The
phases are the calls run_train makes: the groups (the plan), the progress store's sync, the
cache's load, the task loop, the forecast table's build and write, the run's finish.
`TM=1` adds tracemalloc's live and peak bytes (Python and numpy, not Arrow) per phase;
`EXTRA="key=value ..."` adds config overrides.

Usage: python benchmarks/train_phases.py N FPT OUT [W]
(issue 18, "Train's driver memory at 10M fits": 1100 65536 and 2400 131072, 2 workers)
"""

from __future__ import annotations

import json
import os
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    import bench_scale as bs

    import pipeline.runtime.execute.train_loop as train_loop
    import pipeline.stages.train as train
    from pipeline.config import validate
    from pipeline.config.compose import compose_dict
    from pipeline.runtime.sizing.plan import ModelPlan, Plan
    from pipeline.runtime.store.progress import ProgressStore
    from pipeline.stages.prepare import prepare

    n, fpt, out = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    workers = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    traced = bool(os.environ.get("TM"))
    if traced:
        tracemalloc.start()
    phases: list[tuple[str, float, float, float]] = []
    current = ["start"]

    def mark(name: str) -> None:
        if traced:
            live, peak = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            print(f"  traced {current[0]:22s} live {live / 2**20:6.0f} peak {peak / 2**20:6.0f}")
        phases.append((current[0], _status_mb("VmHWM"), _status_mb("VmRSS"), time.process_time()))
        Path("/proc/self/clear_refs").write_text("5")
        current[0] = name

    def wrap(owner: Any, attr: str, name: str) -> None:
        inner = getattr(owner, attr)

        def phase(*args: Any, **kwargs: Any) -> Any:
            mark(name)
            try:
                return inner(*args, **kwargs)
            finally:
                mark("after " + name)

        setattr(owner, attr, phase)

    wrap(train, "fit_groups", "fit_groups")
    wrap(ProgressStore, "sync", "sync")
    wrap(train_loop.RunState, "load_cached", "load_cached")
    wrap(train_loop.RunState, "train", "task loop")
    wrap(train, "write_parquet_tables", "forecast table")
    wrap(train, "_finish", "finish")
    overrides = [
        *bs.rw_overrides(n, out),
        "runtime.in_process_below_s=0",
        *os.environ.get("EXTRA", "").split(),
    ]
    model = ModelPlan(0, fits_per_task=fpt, seconds_per_fit=3e-5)
    plan = Plan(n_workers=workers, memory_limit_mb=1024, models={"rw": model})
    config = validate(compose_dict(overrides))
    prepare(config, Path.cwd())
    mark("run_train")
    t0 = time.process_time()
    summary = train.run_train(config, "rw", plan)
    cpu = time.process_time() - t0
    mark("end")
    print(json.dumps({"fits": summary.fits, "cpu_s": cpu, "us_per_fit": 1e6 * cpu / summary.fits}))
    before = phases[0][3]
    for name, peak, rss, at in phases:
        print(
            f"{name:22s} peak {peak:7.0f} MiB  RSS at its end {rss:7.0f}  CPU {at - before:5.2f} s"
        )
        before = at


if __name__ == "__main__":  # the LocalCluster's workers spawn: they import this module
    main()

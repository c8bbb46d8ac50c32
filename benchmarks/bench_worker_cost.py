"""Benchmark: what a Dask worker costs beside a long CPU-bound task (issue 19), setting by setting.

A LocalCluster as `make_client` starts it (TLS with temporary credentials, a dashboard, one
thread per worker, the workers' pre-spawn environment) runs one ensemble_nn task per worker at
once (`--workers 2`: the seed study's two trainers side by side): G of the seed's windows
through `train_predict_windows`, as `bench_ensemble_nn.py` trains them. Each variant is a set
of Dask config values (or the GIL switch interval) on top of that cluster; the variants take
turns, round after round, so all are measured under the same load.

Measured inside each worker, around the training call only (imports and data excluded):
- `exec`: CPU of the executor thread (`time.thread_time`): the task's own work;
- `worker`: CPU of the whole worker process (every thread: `/proc/self/task/*/stat`), and
  `others` = worker - exec: the event loop and monitor threads;
- `wall`: the task's wall time;
and in the driver over the same span: its own CPU (client, scheduler, nannies: a
LocalCluster's nannies run in the driver process). The summary gives the worker's other
threads and the driver as % of a core (CPU per wall second: their callbacks run on a clock),
and the executor threads' CPU summed over all tasks (the same work in every variant).

Run from the repository root (the load is printed before and after):
    .venv/bin/python benchmarks/bench_worker_cost.py --windows 4 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}

# What each variant sets on top of the cluster's config ("switch": sys.setswitchinterval in
# the worker for the task's duration; CPython's default is 5 ms).
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "no-profiler": {"distributed.worker.profile.enabled": False},
    "slow-monitors": {
        "distributed.worker.memory.monitor-interval": "1s",
        "distributed.admin.system-monitor.interval": "2s",
    },
    "switch-50ms": {"switch": 0.05},
    "bare": {},  # no Dask: the task in a plain process (as bench_ensemble_nn's child)
    "no-profiler+slow-monitors": {
        "distributed.worker.profile.enabled": False,
        "distributed.worker.memory.monitor-interval": "1s",
        "distributed.admin.system-monitor.interval": "2s",
    },
}


def thread_cpu() -> dict[str, float]:
    """CPU seconds of each thread of this process, by '<name>/<tid>' (/proc: utime + stime)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
        except FileNotFoundError:  # the thread ended
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        out[f"{name}/{tid}"] = (int(fields[11]) + int(fields[12])) / tick
    return out


def train_task(windows: list[Any], switch: float | None) -> dict[str, Any]:
    """The measured task, run on a worker."""
    import torch
    from bench_ensemble_nn import SEED_PARAMS

    from pipeline.models.solvers._batched_mlp import train_predict_windows
    from pipeline.models.solvers._nn_data import check_nn_params

    torch.set_num_threads(1)
    spec = check_nn_params(**SEED_PARAMS)
    old_switch = sys.getswitchinterval()
    if switch is not None:
        sys.setswitchinterval(switch)
    try:
        threads0, p0 = thread_cpu(), time.process_time()
        w0, t0 = time.perf_counter(), time.thread_time()
        res = train_predict_windows(windows, spec, torch.device("cpu"))
        wall, exec_cpu = time.perf_counter() - w0, time.thread_time() - t0
        worker_cpu, threads1 = time.process_time() - p0, thread_cpu()
    finally:
        sys.setswitchinterval(old_switch)
    per_thread = {k: round(v - threads0.get(k, 0.0), 2) for k, v in threads1.items()}
    return {
        "wall_s": wall,
        "exec_cpu_s": exec_cpu,
        "worker_cpu_s": worker_cpu,
        "others_cpu_s": worker_cpu - exec_cpu,
        "threads": {k: v for k, v in per_thread.items() if v > 0},
        "member_epochs": int(sum(int(r.epochs.sum()) for r in res)),
    }


def warm(_: int) -> int:
    """Import torch and the trainer in the worker before anything is timed."""
    import torch  # noqa: F401

    import pipeline.models.solvers._batched_mlp  # noqa: F401

    return os.getpid()


def run_bare(blocks: list[list[Any]], picks: list[int], n: int) -> list[dict[str, Any]]:
    """The same tasks in plain processes, no Dask (as bench_ensemble_nn's child), side by side."""
    env = {**os.environ, **THREAD_ENV}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--bare-child"]
    procs = [
        subprocess.Popen(
            [*cmd, str(i), str(n), *map(str, picks)], env=env, stdout=subprocess.PIPE, text=True
        )
        for i in range(len(blocks))
    ]
    outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    for r in outs:
        r["driver_cpu_s"], r["span_s"] = 0.0, max(o["wall_s"] for o in outs)
    return outs


def run_variant(name: str, blocks: list[list[Any]]) -> list[dict[str, Any]]:
    """One cluster with the variant's config, one task per worker at once."""
    import dask
    from distributed import Client, LocalCluster
    from distributed.security import Security

    from pipeline.runtime.execute.dask.settings import worker_environ

    settings = dict(VARIANTS[name])
    switch = settings.pop("switch", None)
    config = {
        "distributed.nanny.pre-spawn-environ": worker_environ(),
        "distributed.scheduler.worker-saturation": 1.0,
        **settings,
    }
    n = len(blocks)
    with dask.config.set(config):
        security = Security.temporary()
        with (
            LocalCluster(
                n_workers=n,
                threads_per_worker=1,
                processes=True,
                memory_limit=2 * 2**30,
                host="127.0.0.1",
                scheduler_port=0,
                protocol="tls://",
                security=security,
                dashboard_address="127.0.0.1:0",
            ) as cluster,
            Client(cluster, security=security) as client,
        ):
            client.wait_for_workers(n)
            workers = sorted(client.scheduler_info()["workers"])
            client.gather([client.submit(warm, i, workers=[w]) for i, w in enumerate(workers)])
            d0, w0 = time.process_time(), time.perf_counter()
            futures = [
                client.submit(train_task, block, switch, workers=[w], pure=False)
                for block, w in zip(blocks, workers, strict=True)
            ]
            results = client.gather(futures)
            driver = time.process_time() - d0
            span = time.perf_counter() - w0
    for r in results:
        r["driver_cpu_s"] = driver
        r["span_s"] = span
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=4, help="seed windows per task (G)")
    parser.add_argument("--workers", type=int, default=2, help="workers, one task each")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=None, help="write results as JSON here")
    parser.add_argument("--bare-child", type=int, nargs="+", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    # the workers import bench_ensemble_nn (the seed's settings) and this tree's pipeline
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(HERE)])
    from bench_ensemble_nn import load_panel, seed_windows
    from reference_checkouts import machine_load

    windows = seed_windows(load_panel())
    if args.bare_child is not None:  # index, workers, picked window indices
        index, n, *picks = args.bare_child
        warm(0)
        print(json.dumps(train_task([windows[i] for i in picks[index::n]], None)))
        return
    step = len(windows) // (args.windows * args.workers)
    picks = list(range(0, len(windows), step))[: args.windows * args.workers]
    blocks = [[windows[i] for i in picks[w :: args.workers]] for w in range(args.workers)]
    results: dict[str, Any] = {"load_before": machine_load(), "windows": args.windows}
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in args.variants}
    for _ in range(args.rounds):
        for name in args.variants:
            done = (
                run_bare(blocks, picks, args.workers)
                if name == "bare"
                else run_variant(name, blocks)
            )
            for r in done:
                runs[name].append(r)
                print(name, json.dumps(r), flush=True)
    summary = {}
    for name, rs in runs.items():
        med = {
            k: statistics.median(r[k] for r in rs)
            for k in ("wall_s", "exec_cpu_s", "worker_cpu_s", "others_cpu_s", "driver_cpu_s")
        }
        # per wall second: the event loop's callbacks run on a clock, so under load (a task
        # stretched in wall time) their share of the task's CPU grows while this does not
        med["others_pct_of_a_core"] = 100 * statistics.median(
            r["others_cpu_s"] / r["wall_s"] for r in rs
        )
        med["driver_pct_of_a_core"] = 100 * statistics.median(
            r["driver_cpu_s"] / r["span_s"] for r in rs
        )
        med["exec_cpu_s_sum"] = sum(r["exec_cpu_s"] for r in rs)
        med["wall_per_exec"] = statistics.median(r["wall_s"] / r["exec_cpu_s"] for r in rs)
        summary[name] = med
        print(name, json.dumps({k: round(v, 3) for k, v in med.items()}), flush=True)
    results.update(runs=runs, medians=summary, load_after=machine_load())
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Scale-out at the same cost (issue 18 item 7): an rw study on an existing Dask cluster of W
workers, each in its own mount namespace with an empty tmpfs over the output dir (no view of
the driver's disk, like tests/test_runtime.py's remote workers).

One `dask scheduler` and W `dask worker`s (one thread each) on 127.0.0.1, then one
`python -m pipeline run` of bench_scale's rw study (`data.synthetic.n_countries=N`: N x 912
fits) with `runtime.scheduler_address` set. Measured, as CPU seconds (not wall: this machine
has 2 cores for W workers, a scheduler and the driver, so wall time says nothing of a real
cluster):

- the driver: `os.wait4` rusage of the command (the driver and the children it reaped: its
  probe child and its worker-like child);
- the scheduler and the workers: psutil CPU times of each process tree (nanny, worker and the
  children they reaped), read just before they are stopped;
- overhead = (driver + scheduler) / workers, the issue's target being under 5 %;
- per fit: each of the three in microseconds; the driver's peak memory (VmHWM) and the
  scheduler's task count (the number of task-stream records the driver logged).

`--ar-qr K [K ...]` runs the seed grid's ar_qr study (real HICP, ar_qr alone, the series
replicated K times as bench_scale's factor study does: about 10.6k x K fits) on the same kind
of cluster, one DVC stage at a time (`python -m pipeline stage ...` from a composed
params.yaml), so that each stage's driver CPU (wait4 of the stage command) stands beside the
scheduler's and the workers' CPU spent while it ran. rw does about 25 us of arithmetic per fit,
so its ratio measures the driver against almost nothing; ar_qr's solver is real work, and the
train stage's ratio is the overhead a user of a cluster pays.

`--rw-staged N` runs the rw study of N countries the same way, stage by stage. For either
staged study, `--train-repeats R` trains R times (each from an empty cache and progress store,
on the same cluster and prepared data; medians reported), `--baseline DIR` alternates each
train's driver between this checkout and another (DIR: e.g. `git archive` of main's HEAD), so
that a before/after shares one cluster, one hour and one load; `--driver-dask KEY=VALUE` sets
a Dask setting for this checkout's train drivers alone (with `--baseline` naming this checkout
too: an A/B of the setting; e.g. `distributed.client.direct-to-workers=True`, the results
fetched from the workers, not relayed by the scheduler), and `--profile` runs each
train's driver under benchmarks/profile_driver.py (its CPU by thread, a cProfile of the main
thread). `--baseline` runs the other checkout's driver against this checkout's workers, so the
two must share the task payload and result contract; across a change of it (issue 18's second
pass: keys as raw digests, results by position) run each checkout's own bench in turn, in the
same hour, instead. Before the stages the cluster sits idle for IDLE_S seconds: the scheduler's and the
workers' own CPU per second (their ticks and heartbeats), which the study does not control;
`scheduler_less_idle_cpu_s` is the scheduler's CPU in train less that rate times train's wall.

Requires root and util-linux `unshare` (mount namespaces).

Usage: python benchmarks/bench_scaleout.py --n 250 [--workers 4] [--out /tmp/bench_scaleout]
       [--json results.json]
       python benchmarks/bench_scaleout.py --ar-qr 3 [--workers 4]
       python benchmarks/bench_scaleout.py --ar-qr 10 --train-repeats 3 --baseline /tmp/base
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import psutil
from bench_scale import RW_ONLY, replicated_data, rw_command, timed_run
from study_overrides import AR_QR_ONLY, QUIET

ROOT = Path(__file__).resolve().parents[1]
IDLE_S = 10.0  # the cluster's own CPU per second, measured before the study
DASK = str(Path(sys.executable).with_name("dask"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tree_cpu_seconds(proc: psutil.Process) -> float:
    """CPU seconds of a process, its live descendants and the children each of them reaped."""
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


# `--worker-profiler off`: the workers started as docs/SCALE.md advises, without Dask's
# statistical profiler (a LocalCluster's default since issue 19; Dask's own default is on)
WORKER_PROFILER = {"on": "True", "off": "False"}


def bench_environ(base: Path, profiler: str = "on", settings: str = "dask") -> dict[str, str]:
    """The environment of the cluster and the study: one math thread, the bench's probe cache;
    `settings` "qpipe": the cluster's processes tick and sample their system monitor as the
    study's own LocalCluster does (runtime/execute/dask/settings.py: OBSERVER_INTERVALS), "dask":
    Dask's defaults."""
    from pipeline.runtime.execute.dask.settings import OBSERVER_INTERVALS

    observers = dask_environ(tuple(f"{key}={value}" for key, value in OBSERVER_INTERVALS.items()))
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "QPIPE_PROBE_CACHE": str(base / "probe-cache"),
        "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": WORKER_PROFILER[profiler],
        **(observers if settings == "qpipe" else {}),
    }


def start_cluster(
    address: str, port: int, n_workers: int, out: Path, env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], list[subprocess.Popen[bytes]]]:
    scheduler = subprocess.Popen(
        [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    target = shlex.quote(str(out.resolve()))
    worker = (
        f'mount -t tmpfs tmpfs {target} && test -z "$(ls -A {target})" && exec '
        f"{shlex.quote(DASK)} worker {address} --nthreads 1 --memory-limit 2GiB "
        "--no-dashboard --host 127.0.0.1"
    )
    workers = [
        subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "bash", "-c", worker],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(n_workers)
    ]
    from distributed import Client

    with Client(address, timeout=60) as client:
        client.wait_for_workers(n_workers, timeout=120)
    return scheduler, workers


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run(n: int, n_workers: int, base: Path, profiler: str = "on") -> dict[str, Any]:
    out = base / f"rw{n}_w{n_workers}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = bench_environ(base, profiler)
    scheduler, workers = start_cluster(address, port, n_workers, out, env)
    try:
        cmd = rw_command(n, out, f"runtime.scheduler_address={address}")
        wall, hwm_mb, usage = timed_run(cmd, base / f"rw{n}_w{n_workers}.log", env)
        scheduler_cpu = tree_cpu_seconds(psutil.Process(scheduler.pid))
        worker_cpu = [tree_cpu_seconds(psutil.Process(w.pid)) for w in workers]
        alive = all(w.poll() is None for w in workers)
    finally:
        stop([*workers, scheduler])
    table = pd.read_parquet(out / "train" / "rw.parquet", columns=["QUANTILE"])
    fits = len(table) // table["QUANTILE"].nunique()
    timings = json.loads((out / "logs" / "timings.json").read_text())
    driver_cpu = usage.ru_utime + usage.ru_stime
    workers_cpu = sum(worker_cpu)
    return {
        "countries": n,
        "workers": n_workers,
        "workers_stayed_up": alive,
        "fits": fits,
        "wall_s": round(wall, 1),
        "stages_s": {name: round(t["seconds"], 1) for name, t in timings.items()},
        "driver_cpu_s": round(driver_cpu, 2),
        "scheduler_cpu_s": round(scheduler_cpu, 2),
        "workers_cpu_s": round(workers_cpu, 2),
        "per_worker_cpu_s": [round(c, 2) for c in worker_cpu],
        "overhead_percent": round(100.0 * (driver_cpu + scheduler_cpu) / workers_cpu, 1),
        "driver_us_per_fit": round(1e6 * driver_cpu / fits, 1),
        "scheduler_us_per_fit": round(1e6 * scheduler_cpu / fits, 1),
        "workers_us_per_fit": round(1e6 * workers_cpu / fits, 1),
        "driver_peak_mb": round(hwm_mb, 1),
    }


@dataclass(frozen=True)
class Staged:
    """How a staged study runs its train stage: `repeats` trains (each from an empty cache
    and store), each driver under benchmarks/profile_driver.py with `profile`, and with
    `baseline` (another checkout of qpipe) the trains alternate between this tree's driver
    and that tree's (this tree first), on the same cluster and prepared data."""

    repeats: int = 1
    profile: bool = False
    baseline: Path | None = None
    settings: str = "dask"  # the cluster's tick and system-monitor intervals (bench_environ)
    driver_dask: tuple[str, ...] = ()  # KEY=VALUE Dask settings of this checkout's drivers


def run_ar_qr(
    k: int, n_workers: int, base: Path, profiler: str = "on", staged: Staged = Staged()
) -> dict[str, Any]:
    """The ar_qr study x k on an existing cluster, stage by stage; CPU per stage and process."""
    data = replicated_data(base / f"hicp_x{k}.csv", k)
    overrides = [*AR_QR_ONLY, f"data.path={data}", *QUIET]
    label = f"ar_qr_x{k}"
    return {"factor": k, **run_staged(label, overrides, "ar_qr", n_workers, base, profiler, staged)}


def run_rw_staged(
    n: int, n_workers: int, base: Path, profiler: str = "on", staged: Staged = Staged()
) -> dict[str, Any]:
    """bench_scale's rw study of N countries on an existing cluster, stage by stage."""
    overrides = [*RW_ONLY, f"data.synthetic.n_countries={n}", *QUIET]
    label = f"rw{n}_staged"
    return {"countries": n, **run_staged(label, overrides, "rw", n_workers, base, profiler, staged)}


# what a train of the model leaves in the output dir: removed before each repeat of train, so
# that it trains every fit again (the cache, the progress store, the table)
TRAIN_OUTPUTS = ("models", "progress", "train")


def run_staged(
    label: str,
    overrides: list[str],
    model: str,
    n_workers: int,
    base: Path,
    profiler: str = "on",
    staged: Staged = Staged(),
) -> dict[str, Any]:
    """One study on an existing cluster, one DVC stage at a time, train as `staged` says.

    Before the stages, the scheduler's and the workers' idle CPU over IDLE_S seconds (their
    heartbeats and ticks with no client: the cluster's own cost per second, not the study's).
    Each train's row also gives the scheduler's CPU less that idle rate times train's wall:
    what the study itself cost the scheduler.
    """
    out = base / f"{label}_w{n_workers}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = bench_environ(base, profiler, staged.settings)
    params = out / "params.yaml"
    overrides = [*overrides, f"runtime.output_dir={out}", f"runtime.scheduler_address={address}"]
    python = [sys.executable, "-m", "pipeline"]
    subprocess.run([*python, "compose", *overrides, "--output", str(params)], cwd=ROOT, check=True)
    trees = {"this": ROOT} if staged.baseline is None else {"this": ROOT, "base": staged.baseline}
    order = [name for _ in range(staged.repeats) for name in trees]
    stages = [
        ("prepare", ["stage", "prepare"], "this"),
        ("probe", ["stage", "probe"], "this"),
        *[(f"train{r}-{t}", ["stage", "train", "--model", model], t) for r, t in enumerate(order)],
        ("assemble", ["stage", "assemble"], "this"),
    ]
    scheduler, workers = start_cluster(address, port, n_workers, out, env)
    rows: dict[str, dict[str, float]] = {}
    try:
        procs = [psutil.Process(p.pid) for p in [scheduler, *workers]]
        before = [tree_cpu_seconds(p) for p in procs]
        time.sleep(IDLE_S)
        after = [tree_cpu_seconds(p) for p in procs]
        idle = {
            "scheduler_cpu_per_s": round((after[0] - before[0]) / IDLE_S, 4),
            "workers_cpu_per_s": round((sum(after[1:]) - sum(before[1:])) / IDLE_S, 4),
        }
        before = after
        for name, args, tree in stages:
            train = name.startswith("train")
            if train and not name.startswith("train0"):
                for sub in TRAIN_OUTPUTS:
                    shutil.rmtree(out / sub, ignore_errors=True)
            cmd = [*python, *args, "--params", str(params)]
            if staged.profile and train:
                cmd = [sys.executable, str(ROOT / "benchmarks" / "profile_driver.py")]
                cmd += [str(base / f"{label}_{name}"), *args, "--params", str(params)]
            root = trees[tree]
            extra = dask_environ(staged.driver_dask) if train and tree == "this" else {}
            wall, hwm_mb, usage = timed_run(
                cmd,
                base / f"{label}_{name}.log",
                {**env, **extra, "PYTHONPATH": str(root)},
                cwd=root,
            )
            after = [tree_cpu_seconds(p) for p in procs]
            rows[name] = {
                "wall_s": round(wall, 2),
                "driver_cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
                "scheduler_cpu_s": round(after[0] - before[0], 2),
                "scheduler_less_idle_cpu_s": round(
                    after[0] - before[0] - idle["scheduler_cpu_per_s"] * wall, 2
                ),
                "workers_cpu_s": round(sum(after[1:]) - sum(before[1:]), 2),
                "driver_peak_mb": round(hwm_mb, 1),
            }
            before = after
        alive = all(w.poll() is None for w in workers)
    finally:
        stop([*workers, scheduler])
    table = pd.read_parquet(out / "train" / f"{model}.parquet", columns=["QUANTILE"])
    fits = len(table) // table["QUANTILE"].nunique()
    result: dict[str, Any] = {
        "workers": n_workers,
        "workers_stayed_up": alive,
        "fits": fits,
        "idle": idle,
        "stages": rows,
    }
    for tree in trees:
        trains = [rows[name] for name, _, t in stages if name.startswith("train") and t == tree]
        median = {key: round(statistics.median(t[key] for t in trains), 3) for key in trains[0]}
        result[f"train_{tree}"] = {
            "median": median,
            "overhead_percent": [overhead(t) for t in trains],
            "overhead_percent_median": overhead(median),
            "overhead_less_idle_percent_median": overhead(median, "scheduler_less_idle_cpu_s"),
            "driver_us_per_fit": round(1e6 * median["driver_cpu_s"] / fits, 1),
            "scheduler_us_per_fit": round(1e6 * median["scheduler_cpu_s"] / fits, 1),
            "workers_us_per_fit": round(1e6 * median["workers_cpu_s"] / fits, 1),
        }
    once = [rows["prepare"], rows["probe"], rows[stages[2][0]], rows["assemble"]]
    whole = {
        key: round(sum(r[key] for r in once), 2)
        for key in ("driver_cpu_s", "scheduler_cpu_s", "workers_cpu_s")
    }
    return {**result, "whole": whole, "whole_overhead_percent": overhead(whole)}


def dask_environ(settings: tuple[str, ...]) -> dict[str, str]:
    """`KEY=VALUE` Dask settings as the environment variables Dask reads them from."""
    out = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key:
            sys.exit(f"--driver-dask wants KEY=VALUE, got {item!r}")
        out["DASK_" + key.upper().replace(".", "__").replace("-", "_")] = value
    return out


def overhead(r: dict[str, float], scheduler: str = "scheduler_cpu_s") -> float:
    """(driver + scheduler) CPU as a percentage of the workers' CPU."""
    return round(100.0 * (r["driver_cpu_s"] + r[scheduler]) / r["workers_cpu_s"], 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[])
    parser.add_argument("--ar-qr", type=int, nargs="+", default=[], metavar="K")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_scaleout"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--rw-staged", type=int, nargs="+", default=[], metavar="N")
    parser.add_argument("--train-repeats", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="profile each train's driver")
    parser.add_argument(
        "--baseline", type=Path, help="another qpipe checkout: trains alternate with its driver"
    )
    parser.add_argument("--worker-profiler", choices=list(WORKER_PROFILER), default="on")
    parser.add_argument(
        "--cluster-settings",
        choices=("dask", "qpipe"),
        default="dask",
        help="staged studies: the cluster's tick and system-monitor intervals (Dask's defaults "
        "or those the study's own LocalCluster uses)",
    )
    parser.add_argument(
        "--driver-dask",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="staged studies: a Dask setting for this checkout's train drivers only (repeatable)",
    )
    parser.add_argument(
        "--precompile",
        action="store_true",
        help="compile each measured checkout's pipeline/ to bytecode first (what an installed "
        "package has, and what a run leaves unless PYTHONDONTWRITEBYTECODE is set: without "
        "it, each stage process compiles its ~80 modules from source, ~0.1 CPU-s)",
    )
    args = parser.parse_args()
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        sys.exit("bench_scaleout needs root and util-linux unshare (mount namespaces)")
    if args.precompile:
        for tree in [ROOT, *([args.baseline] if args.baseline else [])]:
            subprocess.run(
                [sys.executable, "-m", "compileall", "-q", str(Path(tree) / "pipeline")], check=True
            )
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    if not args.n and not args.ar_qr and not args.rw_staged:
        args.n = [250]
    settings = (args.cluster_settings, tuple(args.driver_dask))
    staged = (Staged(args.train_repeats, args.profile, args.baseline, *settings),)
    jobs = [(run, n, ()) for n in args.n]
    jobs += [(run_ar_qr, k, staged) for k in args.ar_qr]
    jobs += [(run_rw_staged, n, staged) for n in args.rw_staged]
    for job, size, extra in jobs:
        result = job(size, args.workers, args.out, args.worker_profiler, *extra)
        print(json.dumps(result), flush=True)
        results.append(result)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

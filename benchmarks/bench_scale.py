"""How the cost grows with the work: the seed grid for ar_qr at 1x, 3x and 10x fits (issue 13).

The seed grid (window 60, origins 2018-01..2023-12, horizons 1, 3, 6, 12, quantiles
0.1/0.5/0.9) on the shipped real data with its 38 countries replicated `k` times (copy r of a
country is `<code>_<r>`, its values shifted by r x 1e-4 so every fit has its own key): about
10.6k x k ar_qr fits (rw, climatology, lqr, ensemble_nn and the combo off). For each k, one
`python -m pipeline run` in a fresh output dir (the probe measures at each k: the task shape,
the fits of the probed group, differs) measures:

- train@ar_qr and assemble wall time (logs/timings.json) and the whole command's wall time;
- the driver's peak memory: `os.wait4` on the child (ru_maxrss: the largest of the driver and
  the children it reaped, i.e. an upper bound) and the driver's own VmHWM from /proc, polled
  every 0.2 s until it exits (the kernel's high-water mark, so only growth in the last 0.2 s
  can be missed);
- the progress store's size (progress.sqlite plus its -wal file).

Targets: time linear in the fits, driver memory < 1 GB at 10x.

Usage: python benchmarks/bench_scale.py [--factors 1 3 10] [--out /tmp/bench_scale]
       [--json results.json]

`--rw N [N ...]` (issue 18) measures the runtime's own cost instead: synthetic studies of the
trivial `rw` model alone (`data.synthetic.n_countries=N`, combo off, origins 2005-01..2023-12,
4 horizons, 3 quantiles: N x 912 fits), each run twice in the same dir: the first run trains
everything, the second is a no-op rerun. Per N: train wall time and microseconds per fit
(whole train stage: the rw arithmetic is about 10 us per fit, the rest is bookkeeping), the
no-op rerun's wall time, the driver peak (VmHWM) of both runs, the progress store's bytes per
fit and `monitor`'s latency on the store.

Train's cost **outside the solver** (issue 18's "at most 25 us per fit"): after the first run,
the same tasks (the fit plan and task size the run logged) are solved again in the bench's own
process, one after another, the model's `fit_batch` alone timed (CPU seconds: the solver's
own arithmetic, one core). Then

    outside us/fit = (train@rw wall - solver CPU s / workers) / fits

i.e. the wall train took beyond its solver's arithmetic spread over the run's workers: what the
runtime adds (the plan and keys, the cluster's start, payloads, the workers' task function
beyond the fit, results, shards, the progress store, the forecast table and the export). The
workers' whole task function (`run_task`) is timed the same way, so the part of the excess
spent in the workers beside the solver shows too.

Usage: python benchmarks/bench_scale.py --rw 125 500 [--out /tmp/bench_scale]

`--driver N` measures the driver's own CPU per fit (time.process_time of the driver process:
a loaded machine stretches it far less than wall time, and the workers' CPU, where the solver
runs, is not in it): prepare, then `run_train` for the same rw study on a local cluster (no
probe: the default plan), then a second `run_train` that loads everything from the cache, then
assemble's expected fits. What the driver spends is bookkeeping: keys, progress rows, the
store, cache shards, payloads, the forecast table, plus the cluster's start. The solver's own
CPU on the same tasks (as for `--rw`) and train's wall outside it are given as well, and
`runtime_cpu_us_per_fit`: the CPU of every process of train (the driver, and its reaped
children: workers, nannies, the driver's child) less the solver's, per fit. Run it with
PYTHONPATH at the tree to measure, the same N and machine, before and after a change.

`--fits-per-task K` runs that train on a 2-worker cluster in tasks of K fits (a real run's
probe gives rw about 8,192), so per-task costs weigh as they do in `--rw`. It also gives the
driver's peak memory during each `run_train` alone (VmHWM, reset before it through
/proc/self/clear_refs): train's own peak, without prepare's or assemble's. `--no-reload`
stops after the first `run_train` (a million fits' reload is minutes on a loaded machine).

Usage: python benchmarks/bench_scale.py --driver 125 [--fits-per-task 8192] [--out /tmp/bench_scale]

`--stages N [N ...]`: the rw study's run stage by stage (each stage's wall, the driver's CPU and
peak VmHWM), the output dir's and the plan cache's bytes, the no-op rerun and `monitor`:
benchmarks/scale_stages.py (the 10M-fit point of docs/SCALE.md: `--stages 1100 2400 11000`).

`--resume N [--incremental] [--profile PATH]`: a run SIGKILLed half-way, then resumed (and
then a later end date): benchmarks/scale_resume.py.
`--monthly N [--repeats R] [--baseline TREE] [--profile PATH]`: the monthly update (a later end
date) of a finished study, the whole `run` by stage: benchmarks/scale_resume.py.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from study_overrides import AR_QR_ONLY, QUIET, only

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "eurostat" / "hicp_manr.csv.gz"
TARGET = "prc_hicp_manr_CP00"


def replicated_data(path: Path, k: int) -> Path:
    import pandas as pd

    base = pd.read_csv(DATA, usecols=["TIME", "COUNTRY", TARGET])
    parts = [base]
    for r in range(1, k):
        part = base.copy()
        part["COUNTRY"] = part["COUNTRY"] + f"_{r}"
        part[TARGET] = part[TARGET] + r * 1e-4
        parts.append(part)
    pd.concat(parts, ignore_index=True).to_csv(path, index=False)
    return path


def vm_hwm_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        return None
    return None


def run_one(k: int, base: Path, cache: Path) -> dict[str, Any]:
    data = replicated_data(base / f"hicp_x{k}.csv", k)
    out = base / f"x{k}"
    cmd = [
        sys.executable,
        "-m",
        "pipeline",
        "run",
        *AR_QR_ONLY,
        f"data.path={data}",
        f"runtime.output_dir={out}",
        *QUIET,
    ]
    env = {**os.environ, "QPIPE_PROBE_CACHE": str(cache)}
    wall, hwm_mb, usage = timed_run(cmd, base / f"x{k}.log", env)
    timings = json.loads((out / "logs" / "timings.json").read_text())
    db = out / "progress" / "progress.sqlite"
    store_mb = sum(p.stat().st_size for p in db.parent.glob("progress.sqlite*")) / 2**20
    from pipeline.runtime.store.progress import db_path, read_table

    runs = read_table(db_path(out), "runs")
    fits = int(runs.loc[runs["model"] == "ar_qr", "fits"].max())
    return {
        "factor": k,
        "fits": fits,
        "wall_s": wall,
        "stages": {name: t["seconds"] for name, t in timings.items()},
        "driver_maxrss_wait4_mb": usage.ru_maxrss / 1024.0,
        "driver_vmhwm_mb": hwm_mb,
        "progress_store_mb": store_mb,
    }


# the rw study: rw alone (a new built-in model stays out), no combination
RW_ONLY = [
    *only("rw"),
    "evaluation.combo.enabled=false",
    "rolling_window.start_date=2005-01-01",
    "rolling_window.end_date=2023-12-01",
    "data.horizons=[1,3,6,12]",
]


def timed_run(
    cmd: list[str], log_path: Path, env: dict[str, str], cwd: Path = ROOT
) -> tuple[float, float, os.struct_rusage]:
    """Wall seconds, driver VmHWM (MiB, polled every 0.2 s) and rusage of one command."""
    with open(log_path, "w") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        hwm = {"mb": 0.0}
        stop = threading.Event()

        def poll() -> None:
            while not stop.is_set():
                value = vm_hwm_mb(proc.pid)
                if value is not None:
                    hwm["mb"] = max(hwm["mb"], value)
                stop.wait(0.2)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        stop.set()
        poller.join()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd} failed: see {log_path}")
    return wall, hwm["mb"], usage


def rw_overrides(n: int, out: Path) -> list[str]:
    """The rw study of N countries (N x 912 fits) into `out`."""
    return [*RW_ONLY, f"data.synthetic.n_countries={n}", f"runtime.output_dir={out}", *QUIET]


def rw_command(n: int, out: Path, *extra: str) -> list[str]:
    """`python -m pipeline run` of the rw study of N countries into `out`."""
    return [sys.executable, "-m", "pipeline", "run", *rw_overrides(n, out), *extra]


TASKS_LINE = re.compile(
    r"train (?P<model>\S+): (?P<tasks>\d+) tasks of <= (?P<fpt>\d+) fits "
    r"(?:on (?P<workers>\d+) workers|in the driver)"
)


def task_shape(out: Path, model: str) -> tuple[int, int]:
    """(fits per task, workers) of the first train of `model` logged under `out` (the
    driver's child counts as one worker)."""
    for path in sorted((out / "logs").glob(f"train-{model}-*.log")):
        for line in path.read_text().splitlines():
            m = TASKS_LINE.search(line)
            if m and m["model"] == model:
                return int(m["fpt"]), int(m["workers"] or 1)
    raise RuntimeError(f"no task line of {model} in {out}/logs")


# above this many fits the solver is timed on evenly spaced tasks and scaled to all of them
# (rw's tasks are alike: a 10M-fit study would otherwise be solved again for ~10 minutes)
SOLVER_SAMPLE_FITS = 1_100_000


def solver_alone(
    overrides: list[str], model: str, fits_per_task: int, sample_fits: int = SOLVER_SAMPLE_FITS
) -> dict[str, float]:
    """CPU seconds of the study's tasks solved again here, one after another: the model's
    `fit_batch` alone (the solver's arithmetic) and the workers' whole task function
    (`run_task`: the windows built from the compact payload, the fit, checks, results).
    Beyond `sample_fits`, evenly spaced tasks of about that many fits are timed and their CPU
    scaled by all fits / timed fits (`solver_fits` is then the number timed)."""
    import numpy as np

    from pipeline.config import validate
    from pipeline.config.compose import compose_dict
    from pipeline.data.prepared import load_panel
    from pipeline.models.plugins.registry import adapter_for, task_adapter
    from pipeline.runtime.execute.worker import run_task
    from pipeline.runtime.fits.fit_groups import build_groups
    from pipeline.runtime.fits.tasks import make_tasks, task_payload, with_data

    config = validate(compose_dict(overrides))
    adapter = adapter_for(config, model)
    groups = build_groups(load_panel(config.output_dir), config, adapter)
    tasks = make_tasks(groups, [np.arange(len(g)) for g in groups], fits_per_task)
    total = sum(t.index.size for t in tasks)
    every = max(1, -(-total // max(sample_fits, 1)))  # ceil: every k-th task
    params = adapter.params(config)
    solver = task = 0.0
    fits = 0
    for t in tasks[::every]:
        payload = task_payload(
            groups[t.group], t.index, params=params, quantiles=config.data.quantiles,
            seed=config.seed, extra=adapter.payload, compact=True,
        )  # fmt: skip
        full = with_data(payload)
        fit = task_adapter(full)
        t0 = time.process_time()
        fit.fit_batch(full)
        solver += time.process_time() - t0
        t0 = time.process_time()
        run_task(payload)
        task += time.process_time() - t0
        fits += t.index.size
    scale = total / max(fits, 1)
    return {"solver_cpu_s": solver * scale, "task_cpu_s": task * scale, "solver_fits": fits}


def outside_solver(train_wall_s: float, solver_cpu_s: float, workers: int, fits: int) -> float:
    """Microseconds per fit of train's wall beyond the solver's CPU spread over the workers."""
    return 1e6 * (train_wall_s - solver_cpu_s / max(workers, 1)) / fits


def run_rw(n: int, base: Path, cache: Path) -> dict[str, Any]:
    out = base / f"rw{n}"
    cmd = rw_command(n, out)
    env = {**os.environ, "QPIPE_PROBE_CACHE": str(cache)}
    wall, hwm, _ = timed_run(cmd, base / f"rw{n}.log", env)
    stages = {
        k: t["seconds"] for k, t in json.loads((out / "logs" / "timings.json").read_text()).items()
    }
    fpt, workers = task_shape(out, "rw")
    alone = solver_alone(rw_overrides(n, out), "rw", fpt)
    noop_wall, noop_hwm, _ = timed_run(cmd, base / f"rw{n}-noop.log", env)
    noop = {
        k: t["seconds"] for k, t in json.loads((out / "logs" / "timings.json").read_text()).items()
    }
    store = sum(p.stat().st_size for p in (out / "progress").glob("progress.sqlite*"))
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pipeline", "monitor", "--output-dir", str(out)],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    monitor_s = time.perf_counter() - t0
    fits = n * 912  # N countries x 228 origins x 4 horizons (rw: every fit exists)
    return {
        "countries": n,
        "fits": fits,
        "wall_s": wall,
        "stages": stages,
        "train_us_per_fit": 1e6 * stages["train@rw"] / fits,
        "fits_per_task": fpt,
        "workers": workers,
        **alone,
        "solver_us_per_fit": 1e6 * alone["solver_cpu_s"] / fits,
        "task_us_per_fit": 1e6 * alone["task_cpu_s"] / fits,
        "outside_us_per_fit": outside_solver(
            stages["train@rw"], alone["solver_cpu_s"], workers, fits
        ),
        "driver_vmhwm_mb": hwm,
        "noop_wall_s": noop_wall,
        "noop_stages": noop,
        "noop_vmhwm_mb": noop_hwm,
        "progress_bytes_per_fit": store / fits,
        "monitor_s": monitor_s,
    }


def run_driver(
    n: int, base: Path, fits_per_task: int | None = None, reload: bool = True
) -> dict[str, Any]:
    """CPU seconds of the driver's own work for an rw study of N countries (in-process).

    `fits_per_task`: tasks of that size on a 2-worker cluster (what the probe gives a real
    run: ~8k rw fits per task), instead of the default plan's (~250)."""
    from pipeline.config import validate
    from pipeline.config.compose import compose_dict
    from pipeline.data.prepared import load_panel
    from pipeline.runtime.sizing.plan import ModelPlan, Plan
    from pipeline.stages.prepare import prepare
    from pipeline.stages.train import run_train

    out = base / f"driver{n}"
    overrides = rw_overrides(n, out)
    plan = None
    if fits_per_task:  # the cluster always (the work is below runtime.in_process_below_s)
        overrides.append("runtime.in_process_below_s=0")
        model = ModelPlan(0, fits_per_task=fits_per_task, seconds_per_fit=3e-5)
        plan = Plan(n_workers=2, memory_limit_mb=1024, models={"rw": model})
    config = validate(compose_dict(overrides))
    prepare(config, ROOT)
    base_mb = reset_peak()
    kids0 = children_cpu_s()
    t0, w0 = time.process_time(), time.perf_counter()
    summary = run_train(config, "rw", plan)
    first, first_wall = time.process_time() - t0, time.perf_counter() - w0
    kids = children_cpu_s() - kids0  # the workers and nannies (reaped when the cluster closed)
    train_peak = vm_hwm_mb(os.getpid())
    fpt, workers = task_shape(out, "rw")
    alone = solver_alone(overrides, "rw", fpt)
    row = {
        "countries": n,
        "fits": summary.fits,
        "train_cpu_s": first,
        "train_wall_s": first_wall,
        "driver_us_per_fit": 1e6 * first / summary.fits,
        "fits_per_task": fpt,
        "workers": workers,
        **alone,
        "solver_us_per_fit": 1e6 * alone["solver_cpu_s"] / summary.fits,
        "task_us_per_fit": 1e6 * alone["task_cpu_s"] / summary.fits,
        "outside_us_per_fit": outside_solver(
            first_wall, alone["solver_cpu_s"], workers, summary.fits
        ),
        # every process's CPU in train (driver, workers, nannies, the driver's child) less
        # the solver's: what the runtime costs in CPU, far less load-sensitive than wall
        "children_cpu_s": kids,
        "runtime_cpu_us_per_fit": 1e6 * (first + kids - alone["solver_cpu_s"]) / summary.fits,
        # the driver's peak RSS during run_train (VmHWM reset before it) and its RSS before it
        # (the panel, the imports: what prepare left)
        "train_peak_mb": train_peak,
        "train_start_mb": base_mb,
    }
    if not reload:
        return row
    reload_base_mb = reset_peak()
    t0 = time.process_time()
    run_train(config, "rw", plan)
    again = time.process_time() - t0
    reload_peak = vm_hwm_mb(os.getpid())
    import pipeline.stages.study as study

    t0 = time.process_time()
    study.expected_fits(config, load_panel(out))
    expected = time.process_time() - t0
    return {
        **row,
        "reload_cpu_s": again,
        "reload_us_per_fit": 1e6 * again / summary.fits,
        "expected_fits_cpu_s": expected,
        "reload_peak_mb": reload_peak,
        "reload_start_mb": reload_base_mb,
    }


def children_cpu_s() -> float:
    """CPU seconds of this process's reaped children (and theirs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def reset_peak() -> float:
    """Reset this process's VmHWM to its current RSS (Linux: /proc/self/clear_refs "5");
    returns that RSS in MiB, so the next VmHWM is the peak of what runs after."""
    Path("/proc/self/clear_refs").write_text("5")
    return vm_hwm_mb(os.getpid()) or 0.0


def report_rw(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| fits (N) | whole run s | train@rw s | train us/fit | solver CPU us/fit (task fn) "
        "| **outside the solver us/fit** | assemble s | driver peak MiB "
        "| no-op rerun s (driver MiB) | progress B/fit | monitor s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        st = r["stages"]
        lines.append(
            f"| {r['fits']:,} ({r['countries']}) | {r['wall_s']:.1f} | {st['train@rw']:.1f} | "
            f"{r['train_us_per_fit']:.0f} | {r['solver_us_per_fit']:.1f} "
            f"({r['task_us_per_fit']:.1f}) | {r['outside_us_per_fit']:.1f} | "
            f"{st['assemble']:.1f} | {r['driver_vmhwm_mb']:.0f} | "
            f"{r['noop_wall_s']:.1f} ({r['noop_vmhwm_mb']:.0f}) | "
            f"{r['progress_bytes_per_fit']:.0f} | {r['monitor_s']:.2f} |"
        )
    return "\n".join(lines)


def report_stages(rows: list[dict[str, Any]]) -> str:
    """scale_stages.run_stages' rows: one line per stage of the first run, then one per size."""
    lines = [
        "| fits (N) | stage | wall s | driver CPU s (us/fit) | driver peak MiB |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        for st in r["first"]["stages"]:
            cpu = st["driver_cpu_s"] or 0.0
            lines.append(
                f"| {r['fits']:,} ({r['countries']}) | {st['stage']} | {st['seconds']:.1f} | "
                f"{cpu:.1f} ({1e6 * cpu / r['fits']:.2f}) | {st['driver_peak_mb']:,.0f} |"
            )
    lines += [
        "",
        "| fits (N) | whole s | every process CPU s | no-op s (driver CPU s, MiB) | monitor s "
        "| progress B/fit | output dir MiB | plan cache MiB | least MemAvailable MiB |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        first, noop = r["first"], r["noop"]
        # a no-op run records its skipped stages at once: its CPU and peak as one
        parts = [*noop["stages"], noop["after_last_stage"]]
        noop_cpu = sum(p["driver_cpu_s"] or 0.0 for p in parts)
        noop_mb = max(p["driver_peak_mb"] for p in parts)
        dirs = ", ".join(f"{k} {v / 2**20:,.0f}" for k, v in r["output_dir_bytes"].items())
        lines.append(
            f"| {r['fits']:,} ({r['countries']}) | {first['wall_s']:.1f} | "
            f"{first['wait4_cpu_s']:.1f} | {noop['wall_s']:.2f} ({noop_cpu:.2f}, {noop_mb:,.0f}) | "
            f"{r['monitor_s']:.2f} | {r['progress_bytes_per_fit']:.0f} | {dirs} | "
            f"{r['plan_cache_bytes'] / 2**20:,.0f} | {first['min_mem_available_mb']:,.0f} |"
        )
    return "\n".join(lines)


def report(rows: list[dict[str, Any]]) -> str:
    first = rows[0]
    per_fit0 = first["stages"]["train@ar_qr"] / first["fits"]
    lines = [
        "| fits (x) | whole run s | probe s | train@ar_qr s | train ms/fit (vs 1x) "
        "| assemble s | driver peak MiB (wait4 / VmHWM) | progress.sqlite MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        st = r["stages"]
        per_fit = st["train@ar_qr"] / r["fits"]
        lines.append(
            f"| {r['fits']:,} ({r['factor']}x) | {r['wall_s']:.1f} | {st.get('probe', 0):.1f} | "
            f"{st['train@ar_qr']:.1f} | {1000 * per_fit:.2f} ({per_fit / per_fit0:.2f}) | "
            f"{st['assemble']:.1f} | {r['driver_maxrss_wait4_mb']:.0f} / "
            f"{r['driver_vmhwm_mb']:.0f} | {r['progress_store_mb']:.1f} |"
        )
    return "\n".join(lines)


def run_all(run: Any, sizes: list[int], table: Any, base: Path, json_path: str | None) -> None:
    """`run(size, base, probe cache)` per size, a JSON line each, then the table (and the
    rows as JSON to `json_path`)."""
    rows = []
    for size in sizes:
        rows.append(run(size, base, base / "probe-cache"))
        print(json.dumps(rows[-1]), flush=True)
    print(table(rows))
    if json_path:
        Path(json_path).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--factors", nargs="+", type=int, default=[1, 3, 10])
    parser.add_argument("--out", default="/tmp/bench_scale")
    parser.add_argument("--json", default=None)
    parser.add_argument("--rw", nargs="+", type=int, default=None, help="rw study sizes N")
    parser.add_argument("--driver", type=int, default=None, help="rw study size N, in-process")
    parser.add_argument("--fits-per-task", type=int, default=None, help="with --driver")
    parser.add_argument(
        "--no-reload", action="store_true", help="with --driver: the first run_train only"
    )
    parser.add_argument("--resume", type=int, default=None, help="rw N: kill half-way, resume")
    parser.add_argument(
        "--incremental", action="store_true", help="with --resume: then a later end date"
    )
    parser.add_argument("--profile", default=None, help="with --resume: cProfile stats file")
    parser.add_argument("--monthly", type=int, default=None, help="rw N: the monthly update")
    parser.add_argument("--repeats", type=int, default=3, help="with --monthly")
    parser.add_argument("--baseline", default=None, help="with --monthly: another tree")
    parser.add_argument(
        "--stages", nargs="+", type=int, default=None, help="rw N: each stage's driver peak"
    )
    args = parser.parse_args()
    base = Path(args.out)
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    if args.driver:
        row = run_driver(args.driver, base, args.fits_per_task, reload=not args.no_reload)
        print(json.dumps(row), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(row, indent=2))
        sys.exit(0)
    if args.monthly:  # scale_resume.py: the monthly update, the whole run by stage
        from scale_resume import run_monthly

        baseline = Path(args.baseline) if args.baseline else None
        row = run_monthly(args.monthly, base, args.repeats, baseline, args.profile)
        print(json.dumps(row), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(row, indent=2))
        sys.exit(0)
    if args.resume:  # scale_resume.py: issue 18's resume and incremental paths
        from scale_resume import run_resume

        row = run_resume(args.resume, base, args.incremental, args.profile)
        print(json.dumps(row), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(row, indent=2))
        sys.exit(0)
    if args.stages:  # scale_stages.py: the driver's peak and CPU per stage, disk, no-op
        from scale_stages import run_stages

        run_all(run_stages, args.stages, report_stages, base, args.json)
        sys.exit(0)
    if args.rw:
        run_all(run_rw, args.rw, report_rw, base, args.json)
    else:
        run_all(run_one, args.factors, report, base, args.json)

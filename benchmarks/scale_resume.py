"""bench_scale.py's `--resume N` and `--incremental N` modes (issue 18 items 1 and 3): the
paths between a fresh run and a no-op rerun, on the rw study of N countries (N x 912 fits).

`--resume N`: `python -m pipeline run` of the study (prepare, probe, train with the probe's
task size), SIGKILLed (its whole process group: driver, workers, nannies) once about half of
the fits are in the cache's shards; then `run_train` resumed in a fresh Python process (a
driver as a run starts it), measured as `--driver` measures it: the driver's CPU
(time.process_time: the workers' CPU is not in it), wall, its peak (VmHWM reset after the
imports and prepare, so the panel and imports are in it, prepare's own peak is not), and the
CPU of the reload itself, i.e. of the cache's lookup (`FitCache.verify` before,
`FitCache.lookup` after) and `RunState.load_cached`, per reloaded fit. `--incremental` then
resumes the finished study with a later end date (`rolling_window.end_date`, a few more
origins: most fits cached, some new) the same way.
`--profile PATH` writes the resumed train's cProfile stats there (and prints the top).

`--monthly N [--repeats R] [--baseline TREE] [--profile PATH]`: the monthly update of a finished
study, end to end. The study is run once to the end (`python -m pipeline run`, its probe and
plan caches in a directory of its own); that output dir and caches are copied aside. Each
repeat restores them and runs `python -m pipeline run` with the later end date in a fresh
Python process (`cli.main` in-process), recording the driver's CPU (process_time) and wall
between the stages' records (prepare, with the start-up before it, probe, train@rw,
assemble), its children's CPU (the probe child, the workers) and its peak. With `--baseline
TREE` (e.g. `git archive` of main with the native .so copied in) the same is done for that
tree, alternating with this one, repeat by repeat (compare CPU seconds on a shared machine).

The fresh run's driver cost per fit, to compare with: `--driver N --no-reload
--fits-per-task K` on the same tree (K: the task size printed here).
"""

from __future__ import annotations

import cProfile
import functools
import hashlib
import io
import json
import os
import pstats
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench_scale import ROOT, reset_peak, rw_command, rw_overrides, task_shape, vm_hwm_mb

N_FIELD = re.compile(rb'"n": (\d+)')
LATER_END = "rolling_window.end_date=2024-06-01"


def stored_fits(shards: Path, seen: dict[str, int]) -> int:
    """Fits in the shards whose index exists (an index is written last, whole; `.idx` since
    the cache's format 3, `.json` before: both begin with their JSON, which holds `n`)."""
    indexes = [p for s in ("*.idx", "*.json") for p in shards.glob(s)] if shards.is_dir() else []
    for path in indexes:
        if path.name not in seen:
            m = N_FIELD.search(path.read_bytes())
            seen[path.name] = int(m[1]) if m else 0
    return sum(seen.values())


def killed_half_way(n: int, out: Path, log_path: Path, share: float = 0.5) -> dict[str, Any]:
    """Run the whole study as a user would; SIGKILL its process group once `share` of the
    fits are stored. Returns what was stored when it died."""
    fits = n * 912
    shards = out / "models" / "rw" / "shards"
    seen: dict[str, int] = {}
    with open(log_path, "w") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            rw_command(n, out),
            cwd=ROOT,
            env=dict(os.environ),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: the kill takes the workers too
        )
        while proc.poll() is None and stored_fits(shards, seen) < share * fits:
            time.sleep(0.05)
        if proc.poll() is not None:
            raise RuntimeError(f"the run ended before {share:.0%} of its fits: see {log_path}")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return {"killed_after_s": time.perf_counter() - t0, "stored_at_kill": stored_fits(shards, {})}


class ReloadTimer:
    """CPU seconds spent in the cache's lookup and RunState.load_cached (whichever of the
    tree's functions exist: `verify` before this branch, `lookup` after)."""

    def __init__(self) -> None:
        from pipeline.runtime.execute.train_loop import RunState
        from pipeline.runtime.store.fit_cache import FitCache

        self.cpu = 0.0
        self.patched: list[tuple[Any, str, Any]] = []
        for owner, name in ((FitCache, "verify"), (FitCache, "lookup"), (RunState, "load_cached")):
            if hasattr(owner, name):
                self._wrap(owner, name)

    def _wrap(self, owner: Any, name: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                self.cpu += time.process_time() - t0

        setattr(owner, name, timed)
        self.patched.append((owner, name, original))

    def close(self) -> None:
        for owner, name, original in self.patched:
            setattr(owner, name, original)


def resumed_train(overrides: list[str], profile: str | None = None) -> dict[str, Any]:
    """`run_train` of rw in this process on what the output dir holds; driver CPU, wall, peak."""
    from pipeline.config import validate
    from pipeline.config.compose import compose_dict
    from pipeline.stages.prepare import prepare
    from pipeline.stages.train import run_train

    config = validate(compose_dict(overrides))
    prepare(config, ROOT)
    timer = ReloadTimer()
    start_mb = reset_peak()
    profiler = cProfile.Profile(time.process_time) if profile else None
    t0, w0 = time.process_time(), time.perf_counter()
    try:
        if profiler:
            profiler.enable()
        summary = run_train(config, "rw")
    finally:
        if profiler:
            profiler.disable()
        timer.close()
    cpu, wall = time.process_time() - t0, time.perf_counter() - w0
    row = {
        "fits": summary.fits,
        "loaded": summary.loaded,
        "trained": summary.trained,
        "train_cpu_s": cpu,
        "train_wall_s": wall,
        "driver_us_per_fit": 1e6 * cpu / summary.fits,
        "reload_cpu_s": timer.cpu,
        "reload_us_per_loaded_fit": 1e6 * timer.cpu / max(summary.loaded, 1),
        "train_peak_mb": vm_hwm_mb(os.getpid()),
        "train_start_mb": start_mb,
    }
    if profiler and profile:
        profiler.dump_stats(profile)
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(40)
        row["profile"] = profile
        print(text.getvalue(), flush=True)
    return row


def resumed_in_child(overrides: list[str], profile: str | None) -> dict[str, Any]:
    """resumed_train in a fresh Python process (its JSON row is the last line it prints)."""
    cmd = [sys.executable, __file__, json.dumps(overrides), profile or ""]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"resumed train failed:\n{done.stderr[-3000:]}")
    lines = done.stdout.strip().splitlines()
    print("\n".join(lines[:-1]), flush=True)  # the profile's top, when asked
    return json.loads(lines[-1])


def run_resume(
    n: int, base: Path, incremental: bool = False, profile: str | None = None
) -> dict[str, Any]:
    """Kill the study half-way, resume it here; with `incremental`, then a later end date."""
    out = base / f"resume{n}"
    killed = killed_half_way(n, out, base / f"resume{n}.log")
    fpt, workers = task_shape(out, "rw")
    row: dict[str, Any] = {"countries": n, **killed, "fits_per_task": fpt, "workers": workers}
    row["resume"] = resumed_in_child(rw_overrides(n, out), profile)
    if incremental:
        inc_profile = f"{profile}.incremental" if profile else None
        row["incremental"] = resumed_in_child([*rw_overrides(n, out), LATER_END], inc_profile)
    return row


def monthly_run(overrides: list[str], profile: str | None = None) -> dict[str, Any]:
    """`python -m pipeline run` in this process, the driver's CPU and wall per stage."""
    t0, w0 = time.process_time(), time.perf_counter()
    from pipeline.cli import main
    from pipeline.runtime.store import timings

    marks: list[tuple[str, str, float, float]] = []
    record = timings.record_stage

    def marked(output_dir: Path, stage: str, seconds: float, status: str = "ok") -> None:
        marks.append((stage, status, time.process_time(), time.perf_counter()))
        record(output_dir, stage, seconds, status)

    timings.record_stage = marked  # runner and timed_stage look it up at call time
    profiler = cProfile.Profile(time.process_time) if profile else None
    if profiler:
        profiler.enable()
    rc = main(["run", *overrides])
    if profiler:
        profiler.disable()
    cpu, wall = time.process_time() - t0, time.perf_counter() - w0
    stages, last_cpu, last_wall = {}, t0, w0
    for stage, status, at_cpu, at_wall in marks:
        stages[stage] = {
            "status": status,
            "driver_cpu_s": round(at_cpu - last_cpu, 3),
            "wall_s": round(at_wall - last_wall, 3),
        }
        last_cpu, last_wall = at_cpu, at_wall
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    row = {
        "rc": rc,
        "driver_cpu_s": round(cpu, 3),
        "wall_s": round(wall, 3),
        "children_cpu_s": round(children.ru_utime + children.ru_stime, 3),
        "driver_peak_mb": vm_hwm_mb(os.getpid()),
        "stages": stages,
    }
    if profiler and profile:
        profiler.dump_stats(profile)
        row["profile"] = profile
    return row


def _tree_env(tree: Path, cache: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree), "QPIPE_PROBE_CACHE": str(cache)}


def run_monthly(
    n: int, base: Path, repeats: int = 3, baseline: Path | None = None, profile: str | None = None
) -> dict[str, Any]:
    """The monthly update of a finished study, `repeats` times per tree, alternating."""
    trees = {"this": ROOT, **({"baseline": baseline} if baseline else {})}
    row: dict[str, Any] = {"countries": n, "fits": n * 912, "trees": {}}
    for name, tree in trees.items():  # each tree's finished study, kept aside
        kept, cache = base / f"{name}-kept" / "out", base / f"{name}-kept" / "cache"
        w0 = time.perf_counter()
        with open(base / f"{name}-fresh.log", "w") as log:
            subprocess.run(
                [sys.executable, "-m", "pipeline", "run", *rw_overrides(n, kept)],
                cwd=tree, env=_tree_env(tree, cache), stdout=log, stderr=subprocess.STDOUT,
                check=True,
            )  # fmt: skip
        row["trees"][name] = {"tree": str(tree), "fresh_wall_s": time.perf_counter() - w0}
        row["trees"][name]["runs"] = []
    for r in range(repeats):
        for name, tree in trees.items():
            work = base / f"{name}-work"
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(base / f"{name}-kept", work, symlinks=True)
            overrides = [*rw_overrides(n, work / "out"), LATER_END]
            prof = f"{profile}.{name}.{r}" if profile else ""
            cmd = [sys.executable, __file__, "--monthly", json.dumps(overrides), prof]
            done = subprocess.run(
                cmd, cwd=tree, env=_tree_env(tree, work / "cache"), capture_output=True,
                text=True,
            )  # fmt: skip
            if done.returncode:
                raise RuntimeError(f"monthly update failed ({name}):\n{done.stderr[-3000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            result["load_1min"] = os.getloadavg()[0]
            table = work / "out" / "train" / "rw.parquet"  # the same forecasts in every tree
            result["train_sha256"] = hashlib.sha256(table.read_bytes()).hexdigest()[:16]
            row["trees"][name]["runs"].append(result)
            print(name, json.dumps(result), flush=True)
    return row


if __name__ == "__main__":
    if sys.argv[1] == "--monthly":  # the child of run_monthly: overrides as JSON, profile path
        row = monthly_run(json.loads(sys.argv[2]), sys.argv[3] or None)
    else:  # the child of resumed_in_child: overrides as JSON, profile path
        row = resumed_train(json.loads(sys.argv[1]), sys.argv[2] or None)
    print(json.dumps(row), flush=True)

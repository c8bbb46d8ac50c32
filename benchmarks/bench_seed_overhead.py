"""Per train stage: the share of its wall time spent outside the solvers (issue 13, item 5).

Reads a finished study's output dir (nothing is run unless --run is given):

- stage wall time: `logs/timings.json` (train@<model>, as `python -m pipeline run` recorded it);
- solver time: the progress store's tasks of that stage's run (`runs` table: the last run of
  each model; per task (worker, started, finished): the task function's wall time on its
  worker, which is the batched solver plus bisection bookkeeping; the driver's cache writes,
  store updates, keys and parquet are not in it);
- workers W: the run's `n_workers` (1 when it trained in the driver).

outside = 1 - sum(task seconds) / (W x stage wall), split into before the first task starts
(keys, cache verify, cluster start), the task loop's idle worker time (scheduling, result
handling, imbalance) and after the last task ends (forecast table, parquet, export, cluster
stop is outside the stage). Target: outside <= 15 % of each train stage.

Usage:
  python benchmarks/bench_seed_overhead.py --output-dir studies/seed_calibrated
  python benchmarks/bench_seed_overhead.py --run --output-dir /tmp/seed8 \\
      -- experiment=seed 'data.countries=[DE,FR,IT,ES,NL,BE,AT,PT]'
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def stage_overheads(output_dir: Path) -> list[dict[str, Any]]:
    from pipeline.runtime.store.progress import db_path, read_table
    from pipeline.runtime.store.timings import read_timings

    timings = read_timings(output_dir)
    runs = read_table(db_path(output_dir), "runs")
    progress = read_table(db_path(output_dir), "progress")
    rows = []
    for stage, t in sorted(timings.items()):
        if not stage.startswith("train@"):
            continue
        model = stage.split("@", 1)[1]
        mine = runs[runs["model"] == model].sort_values("started")
        if mine.empty:
            continue
        run = mine.iloc[-1]
        wall = float(t["seconds"])
        done = progress[(progress["run_id"] == run["run_id"]) & (progress["status"] == "done")]
        tasks = done.drop_duplicates(["worker", "started", "finished"])
        workers = int(run["n_workers"] or 0)
        row: dict[str, Any] = {
            "stage": stage,
            "wall_s": wall,
            "trained": int(run["trained"] or 0),
            "loaded": int(run["loaded"] or 0),
            "workers": workers,
            "tasks": len(tasks),
        }
        if tasks.empty or not workers:
            row.update(solver_s=0.0, outside=1.0, before_s=wall, idle_s=0.0, after_s=0.0)
            rows.append(row)
            continue
        busy = float((tasks["finished"] - tasks["started"]).sum())
        first, last = float(tasks["started"].min()), float(tasks["finished"].max())
        span = last - first
        before = first - float(run["started"])
        after = max(wall - before - span, 0.0)
        row.update(
            solver_s=busy,
            outside=1.0 - busy / (workers * wall),
            before_s=before,
            idle_s=workers * span - busy,  # worker-seconds
            after_s=after,
        )
        rows.append(row)
    return rows


def report(rows: list[dict[str, Any]], timings: dict[str, Any]) -> str:
    lines = [
        "| stage | wall s | trained | loaded | workers | tasks | solver s (sum) "
        "| before first task s | loop idle worker-s | after last task s | outside solvers |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['stage']} | {r['wall_s']:.1f} | {r['trained']} | {r['loaded']} | "
            f"{r['workers']} | {r['tasks']} | {r['solver_s']:.1f} | {r['before_s']:.1f} | "
            f"{r['idle_s']:.1f} | {r['after_s']:.1f} | {100 * r['outside']:.1f} % "
            f"({'met' if r['outside'] <= 0.15 else 'MISSED'}) |"
        )
    total = sum(float(t["seconds"]) for t in timings.values())
    stages = ", ".join(f"{k} {float(v['seconds']):.1f}" for k, v in sorted(timings.items()))
    lines += ["", f"Stages (s): {stages}; sum {total:.1f} s."]
    return "\n".join(lines)


def run_study(output_dir: Path, overrides: list[str]) -> float:
    cmd = [
        sys.executable,
        "-m",
        "pipeline",
        "run",
        *overrides,
        f"runtime.output_dir={output_dir}",
        "runtime.progress_bar=false",
        "runtime.dashboard_port=0",
    ]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    return time.perf_counter() - t0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output-dir", required=True)
    parser.add_argument(
        "--run", action="store_true", help="run the study first (overrides after --)"
    )
    parser.add_argument("--json", default=None)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    out = Path(args.output_dir)
    wall = run_study(out, args.overrides) if args.run else None
    from pipeline.runtime.store.timings import read_timings

    timings = read_timings(out)
    rows = stage_overheads(out)
    print(report(rows, timings))
    if wall is not None:
        print(f"Whole `python -m pipeline run` wall time: {wall:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "wall_s": wall}, indent=2))

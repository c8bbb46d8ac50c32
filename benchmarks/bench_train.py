"""End-to-end `train` on the real Eurostat panel with the seed grid (ar_qr and lqr).

Measures, in one process and one run of this script:
- wall time of run_train per model with 1 and with 2 workers (fresh output and model cache each),
  parallel efficiency = T(1) / (2 * T(2));
- scheduling overhead share = 1 - (sum of task seconds) / (workers x time the task loop ran),
  where the loop runs from the first task's start to the last task's end (cluster start and
  stop are reported separately, as "cluster" seconds);
- the same share over the whole train wall time (cluster start and stop included);
- a no-op rerun (everything in the cache): wall time of run_train.

Usage: python benchmarks/bench_train.py [--models ar_qr lqr] [--workers 1 2] [--end 2023-12-01]
       [--repeats 1] [--out /tmp/bench_train]   (prints a markdown table and writes results.json)
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from pipeline.config import StudyConfig, validate
from pipeline.config.defaults import with_defaults
from pipeline.models.plugins import registry
from pipeline.runtime.sizing.plan import ModelPlan, Plan
from pipeline.runtime.store.progress import db_path, read_table
from pipeline.stages.prepare import prepare
from pipeline.stages.probe import run_probe
from pipeline.stages.train import run_train

DATA = Path(__file__).resolve().parents[1] / "data" / "eurostat" / "hicp_manr.csv.gz"
ROOT = Path(__file__).resolve().parents[1]


def seed_config(out: Path, end: str, models: list[str], workers: int | None) -> StudyConfig:
    return validate(
        with_defaults(
            {
                "name": "bench",
                "data": {
                    "source": "eurostat",
                    "path": str(DATA),
                    "target": "prc_hicp_manr_CP00",
                    "lags": [1, 2, 3, 6, 12],
                    "horizons": [1, 3, 6, 12],
                    "quantiles": [0.1, 0.5, 0.9],
                },
                "rolling_window": {
                    "size": 60,
                    "step": 1,
                    "start_date": "2018-01-01",
                    "end_date": end,
                },
                "runtime": {"output_dir": str(out), "progress_bar": False, "max_workers": workers},
                # the models measured, beside the benchmarks every study scores against (a new
                # built-in model stays out)
                "models": registry.only_entries(*models, "rw", "climatology"),
            }
        )
    )


def loop_stats(config: StudyConfig, model: str, run_id: str) -> tuple[float, float]:
    """(sum of task seconds, loop span) of one run, from the progress store."""
    table = read_table(db_path(config.output_dir), "progress")
    rows = table[(table["model"] == model) & (table["run_id"] == run_id)]
    tasks = rows.drop_duplicates(["worker", "started", "finished"])
    busy = float((tasks["finished"] - tasks["started"]).sum())
    span = float(tasks["finished"].max() - tasks["started"].min())
    return busy, span


def run(args: argparse.Namespace) -> dict[str, Any]:
    base = Path(args.out)
    shutil.rmtree(base, ignore_errors=True)
    probe_cfg = seed_config(base / "probe", args.end, args.models, None)
    t0 = time.perf_counter()
    prepare(probe_cfg, ROOT)
    prepare_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    plan = run_probe(probe_cfg)
    probe_s = time.perf_counter() - t0
    results: dict[str, Any] = {
        "prepare_s": prepare_s,
        "probe_s": probe_s,
        "plan": plan.rounded(),
        "measurements": plan.measurements(),
        "runs": [],
    }
    for repeat in range(args.repeats):
        for workers in args.workers:
            out = base / f"w{workers}-r{repeat}"
            config = seed_config(out, args.end, args.models, workers)
            shutil.copytree(base / "probe" / "data", out / "data")
            for model in args.models:
                mp = plan.models[model]
                run_plan = Plan(
                    workers,
                    plan.memory_limit_mb,
                    1,
                    {model: ModelPlan(mp.n_fits, mp.fits_per_task, mp.n_tasks, mp.seconds_per_fit)},
                )
                t0 = time.perf_counter()
                summary = run_train(config, model, run_plan)
                wall = time.perf_counter() - t0
                busy, span = loop_stats(config, model, summary.run_id)
                t0 = time.perf_counter()
                noop = run_train(config, model, run_plan)
                noop_s = time.perf_counter() - t0
                assert noop.trained == 0 and noop.loaded == summary.trained
                row = {
                    "model": model,
                    "workers": workers,
                    "repeat": repeat,
                    "fits": summary.fits,
                    "failed": summary.failed,
                    "wall_s": wall,
                    "task_s": busy,
                    "loop_s": span,
                    "cluster_s": wall - span,
                    "overhead_share": 1 - busy / (workers * span),
                    "overhead_share_with_cluster": 1 - busy / (workers * wall),
                    "noop_s": noop_s,
                }
                results["runs"].append(row)
                print(json.dumps(row), flush=True)
    (base / "results.json").write_text(json.dumps(results, indent=2))
    return results


def report(results: dict[str, Any]) -> str:
    runs = results["runs"]
    lines = [
        "| model | workers | fits | wall s | loop s | cluster start+stop s | task s "
        "| overhead in loop | overhead incl. cluster | no-op rerun s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    med: dict[tuple[str, int], float] = {}
    for model in sorted({r["model"] for r in runs}):
        for workers in sorted({r["workers"] for r in runs}):
            rs = [r for r in runs if r["model"] == model and r["workers"] == workers]
            m = {
                k: statistics.median(r[k] for r in rs)
                for k in (
                    "wall_s",
                    "loop_s",
                    "cluster_s",
                    "task_s",
                    "overhead_share",
                    "overhead_share_with_cluster",
                    "noop_s",
                )
            }
            med[(model, workers)] = m["wall_s"]
            lines.append(
                f"| {model} | {workers} | {rs[0]['fits']} | {m['wall_s']:.1f} | {m['loop_s']:.1f} | {m['cluster_s']:.1f} | "
                f"{m['task_s']:.1f} | {100 * m['overhead_share']:.1f} % | "
                f"{100 * m['overhead_share_with_cluster']:.1f} % | {m['noop_s']:.2f} |"
            )
    lines.append("")
    for model in sorted({r["model"] for r in runs}):
        if (model, 1) in med and (model, 2) in med:
            lines.append(
                f"{model}: parallel efficiency T1/(2*T2) = {med[(model, 1)] / (2 * med[(model, 2)]):.2f}"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["ar_qr", "lqr"])
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument(
        "--end", default="2023-12-01", help="last origin (the seed's is 2023-12-01)"
    )
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", default="/tmp/bench_train")
    print(report(run(parser.parse_args())))

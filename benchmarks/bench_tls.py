"""The cost of the study's TLS LocalCluster (issue 22, item 4): train wall time with TLS (as
shipped) vs the same cluster on plain TCP (the baseline, as before issue 22), same run.

The study: the synthetic 4-country panel, 12 origins, 2 horizons, ar_qr (96 fits) on 2 workers
(no in-driver shortcut), a fresh output dir and model cache per run, so each run starts a
cluster, trains every fit and closes it. TLS and TCP runs alternate; medians of the repeats.
The TCP baseline is the shipped code with `protocol`/`security` dropped from LocalCluster and
Client (patched here only).

Usage: python benchmarks/bench_tls.py [--repeats 5] [--out /tmp/bench_tls]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import distributed

import pipeline.runtime.execute.dask.cluster as cluster
from pipeline.config import validate
from pipeline.config.defaults import with_defaults
from pipeline.models.plugins import registry
from pipeline.runtime.sizing.plan import ModelPlan, Plan
from pipeline.stages.prepare import prepare
from pipeline.stages.train import run_train

ROOT = Path(__file__).resolve().parents[1]
STUDY: dict[str, Any] = {
    "name": "bench_tls",
    "seed": 0,
    "data": {
        "source": "synthetic",
        "synthetic": {"n_countries": 4, "start": "2012-01-01", "end": "2019-12-01", "seed": 0},
        "lags": [1, 2],
        "horizons": [1, 3],
        "quantiles": [0.1, 0.5, 0.9],
    },
    "rolling_window": {"size": 24, "step": 1, "start_date": "2018-01-01", "end_date": "2018-12-01"},
    "runtime": {"progress_bar": False, "task_seconds": 0.5, "in_process_below_s": 0.0},
    # ar_qr alone (a new built-in model stays out)
    "models": {**registry.only_entries("ar_qr"), "ar_qr": {"p": 3}},
}


def _plain_cluster(*args: Any, protocol: Any = None, security: Any = None, **kw: Any) -> Any:
    return distributed.LocalCluster(*args, **kw)


def _plain_client(*args: Any, security: Any = None, **kw: Any) -> Any:
    return distributed.Client(*args, **kw)


def one_run(out: Path, tls: bool) -> float:
    shutil.rmtree(out, ignore_errors=True)
    d = {**STUDY, "runtime": {**STUDY["runtime"], "output_dir": str(out)}}
    config = validate(with_defaults(d))
    prepare(config, ROOT)
    plan = Plan(n_workers=2, memory_limit_mb=2048, models={"ar_qr": ModelPlan(0, 8, 0)})
    saved = cluster.LocalCluster, cluster.Client
    if not tls:
        cluster.LocalCluster, cluster.Client = _plain_cluster, _plain_client
    try:
        t0 = time.perf_counter()
        summary = run_train(config, "ar_qr", plan)
        wall = time.perf_counter() - t0
    finally:
        cluster.LocalCluster, cluster.Client = saved
    assert summary.trained == summary.fits == 96 and summary.dashboard is not None
    return wall


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_tls"))
    args = parser.parse_args()
    one_run(args.out / "warmup", tls=True)  # imports and page cache, not timed
    walls: dict[str, list[float]] = {"tcp": [], "tls": []}
    for _ in range(args.repeats):
        for mode in ("tcp", "tls"):
            walls[mode].append(one_run(args.out / mode, tls=mode == "tls"))
    tcp, tls = statistics.median(walls["tcp"]), statistics.median(walls["tls"])
    print(f"load average (1, 5, 15 min): {os.getloadavg()}")
    print("| cluster | runs | median train wall (s) | vs TCP |")
    print("|---|---:|---:|---:|")
    print(f"| TCP (baseline, before issue 22) | {args.repeats} | {tcp:.2f} | 1.00x |")
    print(f"| TLS, temporary credentials | {args.repeats} | {tls:.2f} | {tls / tcp:.2f}x |")
    print("all walls:", {k: [round(v, 2) for v in vs] for k, vs in walls.items()})


if __name__ == "__main__":
    main()

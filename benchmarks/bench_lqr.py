"""Benchmark: lqr fits at the seed's settings, this checkout vs a reference commit.

Real Eurostat data (data/eurostat/hicp_manr.csv.gz, target prc_hicp_manr_CP00), the seed's
window (60 months), features y_t and lags 1, 2, 3, 6, 12, one horizon per fit as the study's
per-country groups have (rows t = T-59 .. T-1, the target y_{t+h} known where t + h <= T:
59, 57, 54, 48 training rows for h = 1, 3, 6, 12, fewer for countries whose series start
late), the seed's lqr settings (7 alphas, validation 12, huberized, 1000 random Fourier
features, median bandwidth, 3 quantiles). A task is FITS fits of one horizon (the study's
fits, every k-th: all countries, origins spread over the seed's 72), as the train stage
sends them; the figure is CPU seconds per fit over one task per horizon.

Each version runs in its own child process with PYTHONPATH at its checkout (a reference is a
temporary `git worktree` of its commit; REFERENCE is lqr before issue 19), one thread
(OMP/MKL/torch = 1, as a worker runs), taking turns, so all are measured in one run under the
same load. CPU seconds are the child's own (process_time around the fit calls only).

Run from the repository root:
    .venv/bin/python benchmarks/bench_lqr.py                    # 256 fits per task, 3 rounds
    .venv/bin/python benchmarks/bench_lqr.py --fits 64 --rounds 1
    .venv/bin/python benchmarks/bench_lqr.py --profile          # pyinstrument, this checkout
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

import numpy as np
import pandas as pd
from reference_checkouts import machine_load, reference_checkouts

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "eurostat" / "hicp_manr.csv.gz"
TARGET = "prc_hicp_manr_CP00"
LAGS = (1, 2, 3, 6, 12)
HORIZONS = (1, 3, 6, 12)
WINDOW = 60
SEED_PARAMS = dict(
    quantiles=(0.1, 0.5, 0.9),
    alphas=(7.5, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0),
    solver="huberized",
    rff_features=1000,
    rff_bandwidth="median",
    validation_size=12,
    penalize_first_lag=True,
    seed=0,
)
REFERENCE = "8eb985b"  # lqr before issue 19 (model version 2)


def load_panel(path: Path = DATA) -> pd.DataFrame:
    """Month x country matrix of the target (float, NaN where missing)."""
    frame = pd.read_csv(path, usecols=["TIME", "COUNTRY", TARGET])
    wide = frame.pivot(index="TIME", columns="COUNTRY", values=TARGET)
    wide.index = pd.PeriodIndex(wide.index, freq="M")
    return wide.sort_index()


def task_arrays(wide: pd.DataFrame, h: int, fits: int) -> dict[str, np.ndarray]:
    """`fits` per-country fits of horizon h: X (B, 59, 6), y (B, 59), w (B, 59), X_new (B, 1, 6).

    Every (country, origin) the study fits (features complete at the origin, at least
    validation_size + 2 complete rows: late-starting countries such as AL, ME, XK have a
    different row count at each origin), taken every k-th so they span countries and the
    seed's 72 origins (2018-01 .. 2023-12)."""
    origins = pd.period_range("2018-01", "2023-12", freq="M")
    n = WINDOW - 1
    X, y, w, X_new = [], [], [], []
    for c in wide.columns:
        s = wide[c].to_numpy()
        for o in origins:
            T = wide.index.get_loc(o)
            ts = np.arange(T - WINDOW + 1, T - WINDOW + 1 + n)
            feats = np.stack([s[ts]] + [s[ts - lag] for lag in LAGS], axis=1)
            tgt = np.where(ts + h <= T, s[np.minimum(ts + h, T)], np.nan)
            ok = np.isfinite(feats).all(1) & np.isfinite(tgt)
            x_new = [s[T]] + [s[T - lag] for lag in LAGS]
            if ok.sum() < SEED_PARAMS["validation_size"] + 2 or not np.isfinite(x_new).all():
                continue
            X.append(feats)
            y.append(tgt)
            w.append(ok.astype(np.float64))
            X_new.append([x_new])
    pick = np.arange(len(X))[:: max(1, len(X) // fits)][:fits]
    return {
        "X": np.stack(X)[pick],
        "y": np.stack(y)[pick],
        "w": np.stack(w)[pick],
        "X_new": np.asarray(X_new)[pick],
    }


def fit_tasks(tasks: list[dict[str, np.ndarray]]) -> list:
    from pipeline.models.solvers.lqr import fit_predict_lqr_batch

    return [
        fit_predict_lqr_batch(t["X"], t["y"], t["X_new"], w=t["w"], **SEED_PARAMS) for t in tasks
    ]


def child(fits: int, out: Path | None) -> None:
    """Fit one task per horizon with whatever `pipeline` is on PYTHONPATH; print one JSON line
    (and save the forecasts to `out` as .npy, to compare versions)."""
    import torch

    torch.set_num_threads(1)
    wide = load_panel()
    tasks = [task_arrays(wide, h, fits) for h in HORIZONS]
    fit_tasks([{k: v[:2] for k, v in tasks[0].items()}])  # warm-up: imports, first calls
    w0, c0 = time.perf_counter(), time.process_time()
    res = fit_tasks(tasks)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    n = sum(len(t["X"]) for t in tasks)
    if out is not None:
        np.save(out, np.concatenate([r.pred for r in res]))
    print(json.dumps({"fits": n, "wall_s": wall, "cpu_s": cpu, "cpu_ms_per_fit": 1e3 * cpu / n}))


def run_child(checkout: Path, fits: int, out: Path | None = None) -> dict[str, float]:
    env = {
        **os.environ,
        "PYTHONPATH": str(checkout),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(fits)]
    if out is not None:
        cmd += ["--save", str(out)]
    res = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(res.strip().splitlines()[-1])


def profile(fits: int) -> None:
    """pyinstrument profile of this checkout's fits (one thread), printed as text."""
    import torch
    from pyinstrument import Profiler

    torch.set_num_threads(1)
    wide = load_panel()
    tasks = [task_arrays(wide, h, fits) for h in HORIZONS]
    fit_tasks([{k: v[:2] for k, v in tasks[0].items()}])
    prof = Profiler(interval=0.0005)
    with prof:
        fit_tasks(tasks)
    print(prof.output_text(unicode=False, color=False, show_all=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fits", type=int, default=256, help="fits per task (one per horizon)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--reference", nargs="+", default=[REFERENCE], help="reference commits")
    parser.add_argument("--out", type=Path, default=None, help="write results as JSON here")
    parser.add_argument("--profile", action="store_true", help="profile this checkout only")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--save", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.save)
        return
    if args.profile:
        profile(args.fits)
        return
    with tempfile.TemporaryDirectory() as tmp, reference_checkouts(args.reference) as checkouts:
        results: dict[str, object] = {"references": args.reference, "load_before": machine_load()}
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in checkouts}
        for r in range(args.rounds):
            for name, checkout in checkouts.items():
                save = Path(tmp) / f"{name}.npy" if r == 0 else None
                runs[name].append(run_child(checkout, args.fits, save))
                print(name, json.dumps(runs[name][-1]), flush=True)
        med = {k: statistics.median(r["cpu_ms_per_fit"] for r in v) for k, v in runs.items()}
        wall = {
            k: statistics.median(1e3 * r["wall_s"] / r["fits"] for r in v) for k, v in runs.items()
        }
        new = np.load(Path(tmp) / "new.npy")
        results.update(
            runs=runs,
            cpu_ms_per_fit_median=med,
            wall_ms_per_fit_median=wall,
            speedup_cpu_vs={ref: med[ref] / med["new"] for ref in args.reference},
            max_abs_forecast_diff_vs={
                ref: float(np.abs(np.load(Path(tmp) / f"{ref}.npy") - new).max())
                for ref in args.reference
            },
            load_after=machine_load(),
        )
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

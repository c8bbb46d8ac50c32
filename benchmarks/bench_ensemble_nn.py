"""Benchmark: ensemble_nn training at the seed's settings, this checkout vs a reference commit.

Real Eurostat data (data/eurostat/hicp_manr.csv.gz, target prc_hicp_manr_CP00), the seed's
window (60 months), features y_t and lags 1, 2, 3, 6, 12, horizons 1, 3, 6, 12 in one head,
every country complete over the window (35-37 of the 38; the seed study, which fills gaps,
trains 36-38; `--countries 25`: the first 25, as measured before 2026-12-05, which took
~1/3 fewer steps per epoch than the study), 10 members, one thread,
1500 epochs with patience 50. G windows (spread over the seed's 72 origins, as the
round-robin blocks are) train as one batch; the figure is CPU seconds per window.

This checkout trains with the native kernel where it is built (`setup.py build_ext
--inplace`), else torch; a reference checkout has no built kernel, so it trains with torch;
each child reports its backend. Each trainer runs in its own child process with PYTHONPATH at its checkout (each reference is
a temporary `git worktree` of its commit; REFERENCE is model version 3), taking
turns, so all are measured in one run under the same load. CPU seconds are the child's own
(getrusage of the child, imports excluded: the child times its training call itself).

Run from the repository root:
    .venv/bin/python benchmarks/bench_ensemble_nn.py                 # G = 36, 2 rounds
    .venv/bin/python benchmarks/bench_ensemble_nn.py --sizes 9 36 --rounds 1
    .venv/bin/python benchmarks/bench_ensemble_nn.py --reference db7c48e 4c0e85c --rounds 1
    .venv/bin/python benchmarks/bench_ensemble_nn.py --countries 25   # the earlier windows
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

import numpy as np
import pandas as pd
import torch
from reference_checkouts import machine_load, reference_checkouts

from pipeline.models.solvers._nn_data import WindowData, check_nn_params, prepare_window

DATA = Path(__file__).resolve().parents[1] / "data" / "eurostat" / "hicp_manr.csv.gz"
TARGET = "prc_hicp_manr_CP00"
LAGS = (1, 2, 3, 6, 12)
HORIZONS = (1, 3, 6, 12)
WINDOW = 60
N_COUNTRIES = None  # every country complete over the window, like the seed study
SEED_PARAMS = dict(
    quantiles=(0.1, 0.5, 0.9),
    units_per_layer=(32,) * 5,
    learning_rate=5e-5,
    epochs=1500,
    batch_size=32,
    patience=50,
    parallel_models=10,
    seed=0,
    validation_fraction=0.2,
    scale="per_country",
)


def load_panel(path: Path = DATA) -> pd.DataFrame:
    """Month x country matrix of the target (float, NaN where missing)."""
    frame = pd.read_csv(path, usecols=["TIME", "COUNTRY", TARGET])
    wide = frame.pivot(index="TIME", columns="COUNTRY", values=TARGET)
    wide.index = pd.PeriodIndex(wide.index, freq="M")
    return wide.sort_index()


def make_window(
    wide: pd.DataFrame, origin: str, n_countries: int | None = N_COUNTRIES
) -> WindowData:
    """Training pairs (features_t, y_{t+h}) for t in [T-W+1, T-1] as DESIGN.md defines them."""
    T = wide.index.get_loc(pd.Period(origin, freq="M"))
    start = T - WINDOW + 1
    block = wide.iloc[start - max(LAGS) : T + 1]
    countries = [c for c in block.columns if block[c].notna().all()][:n_countries]
    X, Y, C, TM = [], [], [], []
    X_new = []
    for code, c in enumerate(countries):
        s = wide[c].to_numpy()
        ts = np.arange(start, T)  # rows with at least the h=1 target inside the window
        feats = np.stack([s[ts]] + [s[ts - lag] for lag in LAGS], axis=1)
        tgt = np.stack(
            [np.where(ts + h <= T, s[np.minimum(ts + h, T)], np.nan) for h in HORIZONS], axis=1
        )
        X.append(feats)
        Y.append(tgt)
        C.append(np.full(ts.size, code))
        TM.append(ts)
        X_new.append([s[T]] + [s[T - lag] for lag in LAGS])
    return WindowData(
        X=np.concatenate(X),
        y=np.concatenate(Y),
        country=np.concatenate(C),
        X_new=np.asarray(X_new),
        country_new=np.arange(len(countries)),
        time=np.concatenate(TM),
    )


def seed_windows(wide: pd.DataFrame, n_countries: int | None = N_COUNTRIES) -> list[WindowData]:
    """The seed's 72 origins 2018-01 .. 2023-12."""
    origins = pd.period_range("2018-01", "2023-12", freq="M")
    return [make_window(wide, str(o), n_countries) for o in origins]


# the trainer of model version 3 (3.04 CPU-s per window on 25 countries): the oldest commit
# this file still runs (db7c48e, version 1, predates the models/solvers/ split)
REFERENCE = "8eb985b"
ROOT = Path(__file__).resolve().parents[1]


def spread(windows: list[WindowData], G: int) -> list[WindowData]:
    """G of the windows, every (len / G)-th: one round-robin block of the study."""
    return windows[:: max(1, len(windows) // G)][:G]


def child(G: int, n_countries: int | None) -> None:
    """Train G windows with whatever `pipeline` is on PYTHONPATH; print one JSON line."""
    torch.set_num_threads(1)
    from pipeline.models.solvers._batched_mlp import train_predict_windows

    windows = spread(seed_windows(load_panel(), n_countries), G)
    spec = check_nn_params(**SEED_PARAMS)
    w0, c0 = time.perf_counter(), time.process_time()
    res = train_predict_windows(windows, spec, torch.device("cpu"))
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    # a member's epoch is ceil(training rows / batch_size) steps: the work is member-steps
    steps = [
        int(r.epochs @ [-(-t.size // spec.batch_size) for t in prepare_window(w, spec).train_rows])
        for w, r in zip(windows, res, strict=True)
    ]
    epochs = np.concatenate([r.epochs for r in res])
    out = {"G": G, "wall_s": wall, "cpu_s": cpu, "member_epochs": int(epochs.sum())}
    out.update(member_steps=sum(steps), countries=windows[0].X_new.shape[0], backend=backend())
    print(json.dumps(out))


def backend() -> str:
    """What trained float32 on the CPU: the native kernel where this checkout has it built."""
    try:
        from pipeline.models.solvers.native import available
    except ImportError:  # a checkout from before the kernel
        return "torch"
    return "native" if available() else "torch"


def run_child(checkout: Path, G: int, n_countries: int | None) -> dict[str, float]:
    env = {
        **os.environ,
        "PYTHONPATH": str(checkout),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(G)]
    cmd += [] if n_countries is None else ["--countries", str(n_countries)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    result["cpu_s_per_window"] = result["cpu_s"] / G
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[36], help="windows per batch")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per size")
    parser.add_argument(
        "--reference", nargs="+", default=[REFERENCE], help="commits of the reference trainers"
    )
    parser.add_argument("--out", type=Path, default=None, help="write results as JSON here")
    parser.add_argument(
        "--countries", type=int, default=None, help="the first N complete countries (default: all)"
    )
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.countries)
        return
    with reference_checkouts(args.reference) as checkouts:
        results: dict[str, object] = {
            "references": args.reference,
            "countries": args.countries or "all",
            "load_before": machine_load(),
        }
        for G in args.sizes:
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in checkouts}
            for _ in range(args.rounds):
                for name, checkout in checkouts.items():
                    runs[name].append(run_child(checkout, G, args.countries))
                    print(name, json.dumps(runs[name][-1]), flush=True)
            med = {k: statistics.median(r["cpu_s_per_window"] for r in v) for k, v in runs.items()}
            speedup = {ref: med[ref] / med["new"] for ref in args.reference}
            results[f"G={G}"] = {
                "runs": runs,
                "cpu_s_per_window_median": med,
                "speedup_vs": speedup,
            }
            print(f"G={G}", json.dumps(med), "speed-up", json.dumps(speedup), flush=True)
        results["load_after"] = machine_load()
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
